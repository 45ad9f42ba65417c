//! The embedded endpoint as an instrument: faults and latency really happen on the wire, as
//! the real SDK sees them.

use std::time::Duration;

use bytes::Bytes;
use s3uring::endpoint::{EndpointConfig, Faults};

use crate::util::*;

fn objects(n: usize) -> Vec<(String, Bytes)> {
    (0..n).map(|i| format!("f/k{i:03}")).map(|k| (k.clone(), content(&k, 2000))).collect()
}

fn faulty(faults: Faults) -> Env {
    Env::with_config(
        EndpointConfig { buckets: vec![bucket("faulty", objects(20))], faults, ..Default::default() },
        true,
    )
}

#[test]
fn every_fault_kind_reaches_the_client() {
    // SlowDown to every GET: throttling fails no key, so the run stops when nothing has
    // succeeded for --stall-timeout, naming the service's answer.
    for fetch in FETCH_ENGINES {
        let env = faulty(Faults { slowdown: 1.0, ..Faults::default() });
        let scratch = Scratch::new();
        let out = run(env
            .cmd()
            .args([
                "--fetch-engine",
                fetch,
                "--retries",
                "0",
                "--hedge-after",
                "0",
                "--stall-timeout",
                "1",
                "s3://faulty",
            ])
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(1), "{fetch}");
        let err = stderr(&out);
        assert!(err.contains("SlowDown") && err.contains("(--stall-timeout)"), "{fetch}: {err}");
        assert!(read_tree(&scratch.dest()).values().all(Option::is_none));
        let c = env.fault_counts();
        assert!(c.slowdown == c.gets && c.gets >= 20, "{fetch}: {c:?}");
    }
    let cases: Vec<(Faults, &str)> = vec![
        (Faults { internal: 1.0, ..Faults::default() }, "InternalError"),
        // The fault itself named, in each engine's words (hyper's, under both).
        (Faults { reset: 1.0, ..Faults::default() }, "connection closed before message completed"),
        (Faults { truncate: 1.0, ..Faults::default() }, "connection closed before message completed"),
    ];
    for (faults, needle) in cases {
        for fetch in FETCH_ENGINES {
            let env = faulty(faults.clone());
            let scratch = Scratch::new();
            let out = run(env
                .cmd()
                .args([
                    "--io-engine",
                    "threads",
                    "--fetch-engine",
                    fetch,
                    "--retries",
                    "0",
                    "--hedge-after",
                    "0",
                    "s3://faulty",
                ])
                .arg(scratch.dest()));
            assert_eq!(out.status.code(), Some(1), "{fetch} {faults:?}");
            let err = stderr(&out);
            assert!(err.contains("20 failed") && err.contains(needle), "{fetch} {faults:?}: {err}");
            // Nothing partial was written for any of them.
            assert!(read_tree(&scratch.dest()).values().all(Option::is_none), "{faults:?}");
            let c = env.fault_counts();
            let injected = c.slowdown + c.internal + c.reset + c.truncate;
            assert!(injected == 20 && injected == c.gets, "{fetch}: {c:?}");
        }
    }
}

#[test]
fn fractions_and_slow_first_bytes_are_honoured() {
    let env = faulty(Faults { slow: 0.5, slow_delay: Duration::from_millis(300), ..Faults::default() });
    let scratch = Scratch::new();
    let json = scratch.dir.path().join("stats.json");
    let out = run(env.cmd().arg("--stats-json").arg(&json).arg("s3://faulty").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    // The slow first bytes show in the ttfb histogram, the others stay fast.
    let doc = stats(&json);
    assert!(doc["stages"]["ttfb"]["max_us"].as_u64().unwrap() >= 300_000, "{}", doc["stages"]["ttfb"]);
    let c = env.fault_counts();
    assert_eq!(c.gets, 20);
    assert!((3..=17).contains(&c.slow), "{c:?}");
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objects(20), ""));
}

/// ListObjectsV2 and ListObjects (v1) page, delimit and start-after like S3, through the SDK.
#[test]
fn listing_pages_prefixes_and_delimiters_like_s3() {
    let keys: Vec<String> = (0..2500)
        .map(|i| format!("d{}/k{i:05}", i % 3))
        .chain(["top1", "top2", "d1/", "d1/sub/x", "d1/sub/y"].map(String::from))
        .collect();
    let objs: Vec<(String, Bytes)> = keys.iter().map(|k| (k.clone(), Bytes::from_static(b"x"))).collect();
    let env = Env::new(vec![bucket("listing", objs)]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let creds = aws_sdk_s3::config::Credentials::new(AK, SK, None, None, "test");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&env.url)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        let client = aws_sdk_s3::Client::from_conf(conf);
        let mut sorted = keys.clone();
        sorted.sort();

        // v2, all keys, paged by 1,000.
        let (mut got, mut token, mut pages) = (Vec::new(), None, 0);
        loop {
            let out = client.list_objects_v2().bucket("listing").set_continuation_token(token).send().await.unwrap();
            pages += 1;
            got.extend(out.contents().iter().filter_map(|o| o.key().map(String::from)));
            token = out.next_continuation_token().map(String::from);
            if !out.is_truncated().unwrap_or(false) {
                break;
            }
        }
        assert_eq!((got.clone(), pages), (sorted.clone(), 3));

        // v2 with a prefix, a delimiter and start-after.
        let out = client.list_objects_v2().bucket("listing").prefix("d1/").delimiter("/").send().await.unwrap();
        let cps: Vec<&str> = out.common_prefixes().iter().filter_map(|c| c.prefix()).collect();
        assert_eq!(cps, ["d1/sub/"]);
        let d1_keys = (0..2500).filter(|i| i % 3 == 1).count();
        assert_eq!(out.contents().len(), 1 + d1_keys, "d1/ itself and its k* keys");
        let out = client.list_objects_v2().bucket("listing").delimiter("/").send().await.unwrap();
        let cps: Vec<&str> = out.common_prefixes().iter().filter_map(|c| c.prefix()).collect();
        assert_eq!(cps, ["d0/", "d1/", "d2/"]);
        let tops: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(tops, ["top1", "top2"]);
        let out = client.list_objects_v2().bucket("listing").start_after("d2/k02498").send().await.unwrap();
        let rest: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(rest, ["top1", "top2"]);

        // v1, paged by marker, gives the same keys.
        let (mut v1, mut marker) = (Vec::new(), None::<String>);
        loop {
            let out = client.list_objects().bucket("listing").set_marker(marker.clone()).send().await.unwrap();
            v1.extend(out.contents().iter().filter_map(|o| o.key().map(String::from)));
            marker = out.next_marker().map(String::from).or_else(|| v1.last().cloned());
            if !out.is_truncated().unwrap_or(false) {
                break;
            }
        }
        assert_eq!(v1, sorted);
    });
}

#[test]
fn serve_refuses_an_address_other_hosts_reach_unless_allowed() {
    let bin = env!("CARGO_BIN_EXE_s3uring");
    let out = std::process::Command::new(bin)
        .args(["serve", "--objects", "1", "--listen", "0.0.0.0:0"])
        .output()
        .expect("run serve");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.0.0.0:0") && err.contains("--allow-remote"), "{err}");
    // Allowed: it serves, and says the credentials are public. Read until it names its
    // endpoint (the event itself), then stop it.
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--objects", "1", "--listen", "0.0.0.0:0", "--allow-remote"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).expect("read");
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    assert!(first.starts_with("endpoint: http://0.0.0.0:"), "{first}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("public demo credentials"), "{err}");
}

/// A connection that sends no request head is closed, and connections beyond the cap wait
/// for a place: clients that open connections and send nothing cannot exhaust the endpoint.
#[test]
fn connections_that_send_nothing_are_closed_and_more_than_the_cap_wait_for_a_place() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("idle", objects(1))],
            header_read_timeout: Some(Duration::from_millis(300)),
            max_connections: Some(2),
            ..Default::default()
        },
        false,
    );
    let addr = env.url.trim_start_matches("http://").to_owned();
    // Two connections that send nothing take both places.
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).expect("connect")).collect();
    assert!(within_a_minute(|| env.connections_served() >= 2), "the endpoint never took the two connections");
    // A third is accepted by the kernel, but served only once a place is free.
    let mut third = TcpStream::connect(&addr).expect("connect");
    third.write_all(b"GET /idle?list-type=2 HTTP/1.1\r\nHost: idle\r\n\r\n").expect("send");
    third.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut answer = [0u8; 12];
    third.read_exact(&mut answer).expect("an answer once a place is free");
    assert_eq!(&answer, b"HTTP/1.1 200");
    // It was answered because an idle one was closed (end of stream, at once), not before:
    // without the cap it would have been answered while both were still open.
    let closed = idle
        .into_iter()
        .filter(|c| {
            c.set_nonblocking(true).expect("nonblocking");
            let mut byte = [0u8; 1];
            matches!((&*c).read(&mut byte), Ok(0))
        })
        .count();
    assert!(closed >= 1, "the third was served while both idle connections were open");
}
