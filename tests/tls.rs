//! HTTPS end to end: the embedded endpoint behind TLS with a private CA, trusted
//! through `--ca-bundle` or `AWS_CA_BUNDLE` by both fetch engines and the control plane.

use bytes::Bytes;
use s3uring::endpoint::EndpointConfig;

use crate::util::*;

fn objects() -> Vec<(String, Bytes)> {
    let mut objs: Vec<(String, Bytes)> = (0..200)
        .map(|i| {
            let key = format!("d{}/f{i:03}", i % 7);
            let data = content(&key, 100 + i * 13);
            (key, data)
        })
        .collect();
    // Large enough to go in parts with the default threshold.
    objs.push(("big.bin".to_owned(), content("big.bin", 17 << 20)));
    objs
}

fn https_env(objs: Vec<(String, Bytes)>) -> (Env, Scratch, std::path::PathBuf) {
    https_env_with(EndpointConfig { buckets: vec![bucket("tls", objs)], ..Default::default() })
}

/// `config` served over HTTPS with a private CA; the CA's PEM file is in the scratch dir.
fn https_env_with(config: EndpointConfig) -> (Env, Scratch, std::path::PathBuf) {
    let (identity, ca_pem) = private_ca();
    let env = Env::with_config(EndpointConfig { tls: Some(identity), ..config }, true);
    assert!(env.url.starts_with("https://127.0.0.1:"), "{}", env.url);
    let keep = Scratch::new();
    let ca = keep.dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    (env, keep, ca)
}

#[test]
fn https_with_a_private_ca_copies_with_ca_bundle_or_aws_ca_bundle_and_each_engine() {
    let objs = objects();
    let want = expected_tree(&objs, "");
    let (env, _keep, ca) = https_env(objs);
    for engine in engines() {
        let scratch = Scratch::new();
        let out = run(env.cmd().args(engine.args()).arg("--ca-bundle").arg(&ca).arg("s3://tls").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "engine {engine}");
        assert!(stderr(&out).contains("201 files written"), "{engine}");
        assert_same_tree(&read_tree(&scratch.dest()), &want);
    }
    // The AWS CLI's variable works the same way (the Rust SDK alone would ignore it).
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let out =
            run(env.cmd().env("AWS_CA_BUNDLE", &ca).args(["--fetch-engine", fetch, "s3://tls"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "fetch {fetch}");
        assert_same_tree(&read_tree(&scratch.dest()), &want);
    }
}

#[test]
fn https_without_the_ca_fails_at_once_with_the_reason() {
    let (env, keep, _ca) = https_env(objects());
    let scratch = Scratch::new();
    let out = run(env.cmd().arg("s3://tls").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("certificate") && err.contains("--ca-bundle"), "{err}");
    assert!(!scratch.dest().exists());
    // A bundle that is not PEM is refused before any request, naming the file.
    let junk = keep.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let out = run(env.cmd().arg("--ca-bundle").arg(&junk).arg("s3://tls").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("junk.pem") && err.contains("no PEM certificate"), "{err}");
    let missing = keep.dir.path().join("missing.pem");
    let out = run(env.cmd().arg("--ca-bundle").arg(&missing).arg("s3://tls").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.pem"), "{}", stderr(&out));
}

#[test]
fn a_bundle_with_a_certificate_that_does_not_parse_is_refused_by_each_engine() {
    let (env, keep, ca) = https_env(objects());
    // The right CA, then a PEM block whose bytes are no certificate: neither engine may drop
    // it quietly (and the SDK engine may not fall back to the system's roots).
    let mixed = keep.dir.path().join("mixed.pem");
    let mut pem = std::fs::read(&ca).unwrap();
    pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n");
    std::fs::write(&mixed, pem).unwrap();
    for engine in ["lean", "sdk"] {
        let scratch = Scratch::new();
        let out = run(env
            .cmd()
            .args(["--fetch-engine", engine, "--ca-bundle"])
            .arg(&mixed)
            .arg("s3://tls")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(2), "{engine}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("mixed.pem") && err.contains("certificate 2"), "{engine}: {err}");
        assert!(!scratch.dest().exists(), "{engine}");
    }
}

/// `n` small objects under ten prefixes.
fn small_objects(n: usize) -> Vec<(String, Bytes)> {
    (0..n)
        .map(|i| {
            let key = format!("p{}/o{i:05}", i % 10);
            let data = content(&key, 512 + i % 700);
            (key, data)
        })
        .collect()
}

/// A copy of bucket `tls` with `--workers W` (and `extra` flags) and the run's stats.
fn copy_with_stats(env: &Env, ca: &std::path::Path, workers: &str, extra: &[&str], want: &Tree) -> serde_json::Value {
    let scratch = Scratch::new();
    let json = scratch.dir.path().join("stats.json");
    let out = run(env
        .cmd()
        .arg("--ca-bundle")
        .arg(ca)
        .args(["--workers", workers])
        .args(extra)
        .arg("--stats-json")
        .arg(&json)
        .arg("s3://tls")
        .arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_tree(&read_tree(&scratch.dest()), want);
    stats(&json)
}

#[test]
fn at_0_ms_connections_follow_the_gets_in_flight_not_the_workers() {
    let objs = small_objects(3000);
    let want = expected_tree(&objs, "");
    let (env, keep, ca) = https_env(objs.clone());
    let doc = copy_with_stats(&env, &ca, "1024", &[], &want);
    let fetch = &doc["fetch"];
    let opened = fetch["connections_opened"].as_u64().expect("connections_opened");
    let window = fetch["in_flight_window"].as_u64().expect("in_flight_window");
    // An endpoint on the same machine answers in well under a millisecond: the window
    // stops where more GETs would only queue, far below 1,024 workers.
    assert!(window < 1024, "window {window} with 1,024 workers at 0 ms: {fetch}");
    // List requests share the pool: at most the window of GETs plus the list requests in
    // flight (`--list-workers`, 32 by default) want a connection at once.
    assert!((1..=window + 32).contains(&opened), "{opened} connections for a window of {window}: {fetch}");
    // Keys of unknown size (a key list, an inventory without sizes) go by a first range,
    // which is the whole of a small object: the same window bounds them, with no listing.
    let keys = keep.keys_file(&objs);
    let doc = copy_with_stats(&env, &ca, "1024", &["--keys-from", keys.to_str().unwrap()], &want);
    let fetch = &doc["fetch"];
    let opened = fetch["connections_opened"].as_u64().expect("connections_opened");
    let window = fetch["in_flight_window"].as_u64().expect("in_flight_window");
    assert!(window < 1024, "window {window} with 1,024 workers at 0 ms: {fetch}");
    assert!((1..=window).contains(&opened), "--keys-from: {opened} connections for a window of {window}: {fetch}");
}

#[test]
fn with_30_ms_to_the_first_byte_the_window_grows_to_what_the_round_trip_needs() {
    let objs = small_objects(1500);
    let want = expected_tree(&objs, "");
    let (env, _keep, ca) = https_env_with(EndpointConfig {
        buckets: vec![bucket("tls", objs)],
        get_latency: std::time::Duration::from_millis(30),
        ..Default::default()
    });
    let doc = copy_with_stats(&env, &ca, "128", &[], &want);
    let fetch = &doc["fetch"];
    let window = fetch["in_flight_window"].as_u64().expect("in_flight_window");
    let opened = fetch["connections_opened"].as_u64().expect("connections_opened");
    // 16 GETs at 30 ms carry ~500 objects/s; nothing queues, so the window doubles (to the
    // 128 workers on an idle machine: where a loaded one lengthens the first byte, growth may
    // stop sooner, which is the window's rule too), and connections follow it.
    assert!((32..=128).contains(&window), "{fetch}");
    assert!(opened > 16 && opened <= window, "{opened} connections: {fetch}");
    // Connections opened after the first ones resume a session from their tickets.
    let resumed = fetch["connections_resumed"].as_u64().expect("connections_resumed");
    assert!(resumed > 0 && resumed < opened, "{resumed} of {opened} resumed: {fetch}");
}

#[test]
fn connections_reopened_after_resets_resume_their_tls_session() {
    let objs = small_objects(1000);
    let want = expected_tree(&objs, "");
    // 3 % of GETs lose their connection before an answer: each is reopened.
    let (env, _keep, ca) = https_env_with(EndpointConfig {
        buckets: vec![bucket("tls", objs)],
        faults: s3uring::endpoint::Faults { reset: 0.03, ..Default::default() },
        ..Default::default()
    });
    let doc = copy_with_stats(&env, &ca, "8", &[], &want);
    let fetch = &doc["fetch"];
    let opened = fetch["connections_opened"].as_u64().expect("connections_opened");
    let resumed = fetch["connections_resumed"].as_u64().expect("connections_resumed");
    assert!(fetch["retries"].as_u64().expect("retries") > 0, "resets were retried: {fetch}");
    assert!(opened > 8, "resets reopen connections beyond the 8 workers' first ones: {fetch}");
    // At most the first 8 connections need a full handshake.
    assert!(resumed > 0 && resumed + 8 >= opened, "{resumed} of {opened} resumed: {fetch}");
}
