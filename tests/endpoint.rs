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
    let cases: Vec<(Faults, &str)> = vec![
        (Faults { slowdown: 1.0, ..Faults::default() }, "SlowDown"),
        (Faults { internal: 1.0, ..Faults::default() }, "InternalError"),
        (Faults { reset: 1.0, ..Faults::default() }, "failed"),
        (Faults { truncate: 1.0, ..Faults::default() }, "failed"),
    ];
    for (faults, needle) in cases {
        let env = faulty(faults.clone());
        let scratch = Scratch::new();
        let out = run(env.cmd().args(["--io-engine", "threads", "s3://faulty"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(1), "{faults:?}");
        let err = stderr(&out);
        assert!(err.contains("20 failed") && err.contains(needle), "{faults:?}: {err}");
        // Nothing partial was written for any of them.
        assert!(read_tree(&scratch.dest()).values().all(Option::is_none), "{faults:?}");
        let c = env.fault_counts();
        let injected = c.slowdown + c.internal + c.reset + c.truncate;
        assert!(injected >= 20 && injected == c.gets, "{c:?}");
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
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(doc["stages"]["ttfb"]["max_us"].as_u64().unwrap() >= 300_000, "{}", doc["stages"]["ttfb"]);
    let c = env.fault_counts();
    assert_eq!(c.gets, 20);
    assert!((3..=17).contains(&c.slow), "{c:?}");
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objects(20), ""));
}
