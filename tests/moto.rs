//! Against an S3 implementation this project did not write: moto's server (PyPI: `moto[server]`,
//! which `.ci/run` installs), started by the tests on 127.0.0.1. Objects are uploaded through
//! aws-sdk-s3, then copied by the real binary: list pagination, keys that need
//! `encoding-type=url`, ranged large objects, resume and `--verify`, each fetch engine; and
//! the same over HTTPS, where OpenSSL (Python's `ssl`) rather than rustls is the server.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;

use crate::util::*;

/// A moto server on a free port, stopped on drop.
struct Moto {
    _server: Server,
    url: String,
    /// The CA's PEM text, when served over HTTPS.
    ca: Option<String>,
}

impl Moto {
    /// `None`, having said why, where moto is not installed.
    fn start() -> Option<Moto> {
        Moto::start_with(None)
    }

    /// Over HTTPS when given a certificate and its key (PEM files): moto's `--ssl-cert`,
    /// served by Python's `ssl` module (OpenSSL), not rustls.
    fn start_with(tls: Option<(&Path, &Path)>) -> Option<Moto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let mut args = vec!["-m".into(), "moto.server".into(), "-H".into(), "127.0.0.1".into()];
        args.extend(["-p".into(), port.to_string()]);
        if let Some((cert, key)) = tls {
            args.extend(["-c".into(), cert.display().to_string(), "-k".into(), key.display().to_string()]);
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let child = start_server(Command::new("python3").args(&args), port, "moto[server]")?;
        Some(Moto { _server: child, url: format!("{scheme}://127.0.0.1:{port}"), ca: None })
    }

    fn cmd(&self) -> Command {
        self.cmd_for(None)
    }

    fn cmd_for(&self, subcommand: Option<&str>) -> Command {
        let mut c = bare_cmd();
        c.args(subcommand);
        c.arg("--endpoint-url").arg(&self.url);
        c.env("AWS_ACCESS_KEY_ID", "testing").env("AWS_SECRET_ACCESS_KEY", "testing");
        c
    }

    /// Creates `bucket` holding `objects`, through aws-sdk-s3.
    fn fill(&self, bucket: &str, objects: &[(String, Bytes)]) {
        put_objects(&self.url, ("testing", "testing"), self.ca.as_deref(), bucket, objects);
    }
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
            // Every body checked (moto returns each object's checksum), none unverifiable.
            let err = stderr(&out);
            let verified = err.lines().find(|l| l.starts_with("verified ")).unwrap_or_default();
            assert!(
                verified.starts_with(&format!("verified {n} bodies"))
                    && verified.contains("; 0 had nothing to verify against"),
                "{e} {list_workers}: {err}"
            );
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

#[test]
fn moto_over_https_with_openssl_resumes_reopened_connections() {
    // Python's ssl module (OpenSSL) terminates TLS here, not rustls as in our endpoint.
    let keep = Scratch::new();
    let (identity, ca_pem) = private_ca();
    let (cert, key, ca) =
        (keep.dir.path().join("cert.pem"), keep.dir.path().join("key.pem"), keep.dir.path().join("ca.pem"));
    std::fs::write(&cert, &identity.cert_pem).unwrap();
    std::fs::write(&key, &identity.key_pem).unwrap();
    std::fs::write(&ca, &ca_pem).unwrap();
    let Some(mut moto) = Moto::start_with(Some((&cert, &key))) else { return };
    moto.ca = Some(ca_pem);
    let mut keys: Vec<String> = (0..400).map(|i| format!("t{}/k{i:04}", i % 5)).collect();
    keys.extend(["odd/sp ace/ü.txt", "odd/ctl\u{1}key", "odd/amp&<lt>"].map(String::from));
    let mut objs: Vec<(String, Bytes)> = keys.iter().map(|k| (k.clone(), content(k, 300 + k.len()))).collect();
    objs.push(("big/o".to_owned(), content("big/o", (2 << 20) + 777)));
    moto.fill("moto-tls", &objs);
    let want = expected_tree(&objs, "");
    let n = objs.len();
    for e in engines() {
        let scratch = Scratch::new();
        let json = keep.dir.path().join(format!("stats-{e}.json").replace([' ', '/'], "_"));
        let out = run(moto
            .cmd()
            .args(e.args())
            .arg("--ca-bundle")
            .arg(&ca)
            .args(["--workers", "16", "--multipart-threshold", "1MiB", "--part-size", "1MiB", "--verify"])
            .arg("--stats-json")
            .arg(&json)
            .arg("s3://moto-tls")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &want);
        assert!(summary_counts(&out).starts_with(&format!("{n} keys listed: {n} files written")), "{}", stderr(&out));
        let doc = stats(&json);
        // Every body checked against moto's own checksums (the SDK uploads with CRC32), the
        // large one by combining its parts' CRCs into the one a HEAD returns: none read back.
        let v = &doc["verify"];
        assert_eq!((v["by_checksum"].as_u64(), v["by_etag_md5"].as_u64()), (Some(n as u64), Some(0)), "{e}: {v}");
        let fetch = &doc["fetch"];
        if e.fetch == "lean" {
            // moto's server closes the connection after every answer, so nearly every GET
            // opens one; all but the first few (16 GETs and the list at once, before any
            // session ticket arrived) resume a session from OpenSSL's tickets.
            let opened = fetch["connections_opened"].as_u64().expect("connections_opened");
            let resumed = fetch["connections_resumed"].as_u64().expect("connections_resumed");
            assert!(opened as usize > n / 2, "moto closes after each answer: {fetch}");
            assert!(resumed > 0 && opened - resumed <= 17, "{resumed} of {opened} resumed: {fetch}");
        }
    }
    // The AWS CLI's variable instead of the flag, with each fetch engine.
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let out = run(moto
            .cmd()
            .env("AWS_CA_BUNDLE", &ca)
            .args(["--fetch-engine", fetch, "s3://moto-tls"])
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "fetch {fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &want);
    }
}

#[test]
fn moto_check_reads_a_restored_tree_against_its_checksums() {
    // `s3uring check --checksum`: every file against the checksum moto's HEAD returns (CRC32:
    // the SDK uploads with one), a changed file named.
    let Some(moto) = Moto::start() else { return };
    let mut objs: Vec<(String, Bytes)> =
        (0..30).map(|i| format!("c/k{i:02}")).map(|k| (k.clone(), content(&k, 900))).collect();
    objs.push(("c/big".to_owned(), content("c/big", (2 << 20) + 11)));
    moto.fill("moto-check", &objs);
    let scratch = Scratch::new();
    let out = run(moto
        .cmd()
        .args(["--multipart-threshold", "1MiB", "--part-size", "1MiB", "s3://moto-check"])
        .arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let check =
        |flag: Option<&str>| run(moto.cmd_for(Some("check")).args(flag).arg("s3://moto-check").arg(scratch.dest()));
    for flag in [None, Some("--checksum")] {
        let out = check(flag);
        assert_eq!(out.status.code(), Some(0), "{flag:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("checked 31 keys: 31 ok (31 by content"), "{flag:?}: {}", stderr(&out));
    }
    let path = scratch.dest().join("c/k07");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut body = std::fs::read(&path).unwrap();
    body[450] ^= 1;
    std::fs::write(&path, &body).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    let out = check(Some("--checksum"));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.lines().any(|l| l.starts_with("different: c/k07: content does not match the store's crc32:")), "{err}");
}
