//! Against an S3 implementation this project did not write: moto's server (PyPI: `moto[server]`,
//! which `.ci/run` installs), started by the tests on 127.0.0.1. Objects are uploaded through
//! aws-sdk-s3, then copied by the real binary: list pagination, keys that need
//! `encoding-type=url`, ranged large objects, resume and `--verify`, each fetch engine.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::util::*;

/// A moto server on a free port, stopped on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    /// `None`, having said why, where moto is not installed.
    fn start() -> Option<Moto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                skipped(&format!("cannot start python3 -m moto.server ({e}); .ci/run installs moto[server]"));
                return None;
            }
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = child.try_wait() {
                skipped(&format!(
                    "moto.server exited at once ({status}): is moto[server] installed? .ci/run installs it"
                ));
                return None;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Moto { child, url: format!("http://127.0.0.1:{port}") });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("moto.server did not listen on port {port} within 30 s");
    }

    fn cmd(&self) -> Command {
        let mut c = bare_cmd();
        c.arg("--endpoint-url").arg(&self.url);
        c.env("AWS_ACCESS_KEY_ID", "testing").env("AWS_SECRET_ACCESS_KEY", "testing");
        c
    }

    /// Creates `bucket` holding `objects`, through aws-sdk-s3.
    fn fill(&self, bucket: &str, objects: &[(String, Bytes)]) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "tests");
            let conf = aws_sdk_s3::Config::builder()
                .behavior_version_latest()
                .endpoint_url(&self.url)
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .credentials_provider(creds)
                .force_path_style(true)
                .build();
            let client = aws_sdk_s3::Client::from_conf(conf);
            client.create_bucket().bucket(bucket).send().await.expect("create bucket");
            for chunk in objects.chunks(64) {
                let puts: Vec<_> = chunk
                    .iter()
                    .map(|(k, v)| {
                        let req = client.put_object().bucket(bucket).key(k).body(v.clone().into());
                        tokio::spawn(async move { req.send().await.map(|_| ()).map_err(|e| format!("{e:?}")) })
                    })
                    .collect();
                for (p, (k, _)) in puts.into_iter().zip(chunk) {
                    p.await.unwrap().unwrap_or_else(|e| panic!("put {k:?}: {e}"));
                }
            }
        });
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn summary_counts(out: &std::process::Output) -> String {
    stderr(out).lines().find(|l| l.contains("keys listed:")).unwrap_or_default().to_owned()
}

#[test]
fn moto_lists_pages_and_odd_keys_resumes_and_verifies() {
    let Some(moto) = Moto::start() else { return };
    // Past one page of 1,000 keys: pagination, and ranges for parallel listing.
    let mut keys: Vec<String> = (0..1300).map(|i| format!("p{}/k{i:05}", i % 3)).collect();
    keys.extend(
        ["odd/sp ace/ü n.txt", "odd/plus+sign", "odd/pct%41", "odd/ctl\u{1}key", "odd/tab\tkey", "odd/amp&<lt>"]
            .map(String::from),
    );
    let objs: Vec<(String, Bytes)> = keys.iter().map(|k| (k.clone(), content(k, 200 + k.len()))).collect();
    moto.fill("moto-odd", &objs);
    let want = expected_tree(&objs, "");
    // moto answers in milliseconds: each engine pair once, sequential and parallel listing alternating.
    for (i, e) in engines().into_iter().enumerate() {
        {
            let list_workers = if i % 2 == 0 { "1" } else { "16" };
            let scratch = Scratch::new();
            let copy = |extra: &[&str]| {
                run(moto
                    .cmd()
                    .args(e.args())
                    .args(["--list-workers", list_workers])
                    .args(extra)
                    .arg("s3://moto-odd")
                    .arg(scratch.dest()))
            };
            let out = copy(&["--verify"]);
            assert_eq!(out.status.code(), Some(0), "{e} {list_workers}: {}", stderr(&out));
            assert_same_tree(&read_tree(&scratch.dest()), &want);
            let n = objs.len();
            assert!(
                summary_counts(&out).starts_with(&format!("{n} keys listed: {n} files written")),
                "{}",
                stderr(&out)
            );
            // A complete tree: nothing is fetched again.
            let out = copy(&[]);
            assert_eq!(out.status.code(), Some(0));
            assert!(
                summary_counts(&out).contains(&format!("0 files written, 0 directories, {n} skipped")),
                "{}",
                stderr(&out)
            );
        }
    }
}

#[test]
fn moto_large_objects_in_ranged_parts_and_a_resume() {
    let Some(moto) = Moto::start() else { return };
    let objs: Vec<(String, Bytes)> =
        (0..4).map(|i| format!("big/o{i}")).map(|k| (k.clone(), content(&k, (3 << 20) + 12_345))).collect();
    moto.fill("moto-large", &objs);
    for e in engines() {
        let scratch = Scratch::new();
        let parts = ["--multipart-threshold", "1MiB", "--part-size", "1MiB"];
        let out = run(moto.cmd().args(e.args()).args(parts).arg("s3://moto-large").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        std::fs::remove_file(scratch.dest().join("big/o2")).unwrap();
        let out = run(moto.cmd().args(e.args()).args(parts).arg("s3://moto-large").arg(scratch.dest()));
        assert!(summary_counts(&out).contains("1 files written, 0 directories, 3 skipped"), "{}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
    }
}
