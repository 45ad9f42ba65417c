//! Stores that answer 503 SlowDown for other reasons than a request-rate limit, with each
//! engine pair: at random (a gateway shedding load, a shared partition), above a number of
//! GETs in flight (Ceph RGW's `rgw_max_concurrent_requests`, MinIO's request cap), both on
//! top of a rate limit, and rate limits whose buckets are 20 ms and 1 s deep. Every key
//! arrives, no retry is spent on throttling, and the summary and stats JSON name what was
//! seen. How fast is for `benches/throttle.rs`.

use bytes::Bytes;
use s3uring::endpoint::{EndpointConfig, Faults, RateLimit};

use crate::util::*;

fn objects(n: usize) -> Vec<(String, Bytes)> {
    (0..n).map(|i| format!("p{}/obj-{i:05}", i % 5)).map(|k| (k.clone(), content(&k, 300))).collect()
}

/// Copies `bucket` with each engine pair, `--retries 0` (throttling must spend none) and
/// `--stats-json`; every key must arrive. `check` gets the stderr and the stats.
fn copy_all(
    env: &Env,
    objs: &[(String, Bytes)],
    bucket: &str,
    mut check: impl FnMut(Engines, &str, serde_json::Value),
) {
    let want = expected_tree(objs, "");
    for engines in engines() {
        let scratch = Scratch::new();
        let json = scratch.dir.path().join("stats.json");
        let out = run(env
            .cmd()
            .args(engines.args())
            .args(["--retries", "0", "--hedge-after", "0", "--stats-json"])
            .arg(&json)
            .arg(format!("s3://{bucket}"))
            .arg(scratch.dest()));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{engines}: {err}");
        assert_same_tree(&read_tree(&scratch.dest()), &want);
        check(engines, &err, stats(&json));
    }
}

#[test]
fn throttling_at_random_is_retried_unlimited_and_named_as_noise() {
    let objs = objects(4_000);
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("noisy", objs.clone())],
            faults: Faults { slowdown: 0.05, ..Faults::default() },
            ..Default::default()
        },
        true,
    );
    let mut injected = 0;
    copy_all(&env, &objs, "noisy", |engines, err, doc| {
        let c = env.fault_counts();
        let slowdowns = c.slowdown - injected;
        injected = c.slowdown;
        assert!(slowdowns > 0, "{engines}: {c:?}");
        assert_eq!(doc["fetch"]["throttled"].as_u64(), Some(slowdowns), "{engines}: every 503 retried once");
        let random = &doc["fetch"]["rate_limit"]["random_503"];
        assert!(random["cuts_undone"].as_u64().is_some_and(|n| n >= 1), "{engines}: {doc}");
        let fraction = random["fraction"].as_f64().unwrap_or_default();
        assert!((0.02..0.10).contains(&fraction), "{engines}: noise taken as {fraction}");
        assert!(err.contains("random 503s: ") && err.contains("whatever the rate (not a limit: "), "{engines}: {err}");
    });
}

#[test]
fn a_cap_on_gets_in_flight_is_held_and_loses_no_key() {
    // Enough keys for the few dozen refusals a cap is named on.
    let objs = objects(2_500);
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("capped", objs.clone())],
            get_latency: std::time::Duration::from_millis(5),
            max_inflight: Some(8),
            ..Default::default()
        },
        true,
    );
    let mut refused = 0;
    copy_all(&env, &objs, "capped", |engines, err, doc| {
        let c = env.inflight_counts().expect("a cap");
        let now = c.refused - refused;
        refused = c.refused;
        assert!(now > 0, "{engines}: the cap was met: {c:?}");
        assert!(c.peak <= 8, "{engines}: the endpoint served {} at once", c.peak);
        assert_eq!(doc["fetch"]["throttled"].as_u64(), Some(now), "{engines}: every refusal retried once");
        // Held as the rate it allows: the limiter paced the GETs.
        let root = &doc["fetch"]["rate_limit"]["partitions"][0];
        assert!(root["cuts"].as_u64().is_some_and(|n| n > 0), "{engines}: {doc}");
        assert!(err.contains("rate limit of ''"), "{engines}: {err}");
        // Named: refused at once, to GETs sent with about 8 in flight (this process counts a
        // GET a little longer than the store does, or, on a loaded machine, a little shorter:
        // the store still sends the body of one whose answer is in).
        let seen = &doc["fetch"]["rate_limit"]["in_flight_when_throttled"];
        assert!(seen["cap"].as_u64().is_some_and(|n| (2..=16).contains(&n)), "{engines}: {seen}");
        assert!(err.contains("in-flight cap near "), "{engines}: {err}");
    });
}

#[test]
fn throttling_at_random_on_top_of_a_rate_limit_loses_no_key() {
    let objs = objects(2_000);
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("both", objs.clone())],
            faults: Faults { slowdown: 0.02, ..Faults::default() },
            rate_limits: vec![RateLimit::new("", 400.0)],
            ..Default::default()
        },
        true,
    );
    copy_all(&env, &objs, "both", |engines, err, doc| {
        assert!(env.rate_limit_counts()[0].throttled > 0, "{engines}: the limit was met");
        assert!(doc["fetch"]["rate_limit"]["in_flight_when_throttled"]["cap"].is_null(), "{engines}: {doc}");
        // The limit is held: the root partition ends the run paced near it.
        let root = &doc["fetch"]["rate_limit"]["partitions"][0];
        assert!(root["cuts"].as_u64().is_some_and(|n| n > 0), "{engines}: {doc}");
        assert!(err.contains("rate limit of ''"), "{engines}: {err}");
    });
}

#[test]
fn a_rate_limit_of_any_bucket_depth_loses_no_key() {
    // S3 does not say how deep its buckets are: a shallow one refuses bursts well below the
    // rate, a deep one serves a second of it at once and then refuses.
    let objs = objects(1_200);
    for depth_ms in [20, 1_000] {
        let limit = RateLimit { burst: std::time::Duration::from_millis(depth_ms), ..RateLimit::new("", 400.0) };
        let env = Env::with_config(
            EndpointConfig {
                buckets: vec![bucket("deep", objs.clone())],
                rate_limits: vec![limit],
                ..Default::default()
            },
            true,
        );
        let mut refused = 0;
        copy_all(&env, &objs, "deep", |engines, err, doc| {
            let counts = &env.rate_limit_counts()[0];
            let now = counts.throttled - refused;
            refused = counts.throttled;
            assert!(now > 0, "{engines}, {depth_ms} ms: the limit was met: {counts:?}");
            assert_eq!(
                doc["fetch"]["throttled"].as_u64(),
                Some(now),
                "{engines}, {depth_ms} ms: each 503 retried once"
            );
            // A rate limit answers after serving's latency, as a GET: not a cap.
            let seen = &doc["fetch"]["rate_limit"]["in_flight_when_throttled"];
            assert!(seen.is_null() || seen["cap"].is_null(), "{engines}, {depth_ms} ms: {seen}");
            assert!(!err.contains("in-flight cap"), "{engines}, {depth_ms} ms: {err}");
        });
    }
}
