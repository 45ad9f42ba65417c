//! Parallel listing (`--list-workers`) gives exactly the sequential listing's keys: every key
//! once, over nested "directories", folder markers, large flat ranges that get split at
//! start-after boundaries, and awkward names.

use bytes::Bytes;
use s3uring::endpoint::{EndpointConfig, Faults};

use crate::util::*;

fn layout() -> Vec<(String, Bytes)> {
    let mut keys: Vec<String> = Vec::new();
    keys.extend((0..30).map(|i| format!("a/b/c{i}")));
    keys.extend((0..30).map(|i| format!("a/d{i}")));
    keys.extend((0..20).map(|i| format!("x{i}")));
    keys.extend(["a/".into(), "a/b/".into(), "a/b/e/f/g".into(), "sp ace/ü n/ï".into(), "z/".into()]);
    // Flat ranges large enough to be split: digits, letters, mixed.
    keys.extend((0..4500).map(|i| format!("flat/obj{i:05}")));
    keys.extend((0..2600).map(|i| format!("words/{}{}", (b'a' + (i / 100) as u8) as char, i % 100)));
    keys.extend((0..1200).map(|i| format!("mixed/{i:04x}-{}", i % 7)));
    keys.into_iter().map(|k| (k.clone(), content(&k, if k.ends_with('/') { 0 } else { 50 }))).collect()
}

#[test]
fn parallel_listing_lists_every_key_exactly_once() {
    let objs = layout();
    let env = Env::new(vec![bucket("layout", objs.clone())]);
    for (source, prefix) in [("s3://layout", ""), ("s3://layout/flat", "flat/"), ("s3://layout/a/", "a/")] {
        let want_objs: Vec<_> = objs.iter().filter(|(k, _)| k.starts_with(prefix)).cloned().collect();
        let want = expected_tree(&want_objs, prefix);
        let want_files = want_objs.iter().filter(|(k, _)| !k.ends_with('/')).count() as u64;
        for workers in ["1", "8", "64"] {
            let scratch = Scratch::new();
            let before = env.fault_counts().gets;
            let json = scratch.dir.path().join("stats.json");
            let out = run(env
                .cmd()
                .args(["--hedge-after", "0", "--list-workers", workers, "--stats-json"])
                .arg(&json)
                .arg(source)
                .arg(scratch.dest()));
            assert_eq!(out.status.code(), Some(0), "{source} {workers}");
            assert_same_tree(&read_tree(&scratch.dest()), &want);
            let gets = env.fault_counts().gets - before;
            assert_eq!(gets, want_files, "{source} --list-workers {workers}: one GET per file");
            let err = stderr(&out);
            assert!(err.contains(&format!("{} keys listed: {want_files} files written", want_objs.len())), "{err}");
            let doc = stats(&json);
            let requests = doc["stages"]["list"]["count"].as_u64().unwrap();
            eprintln!("{requests} list requests for 20,000 keys, one per directory");
            if prefix == "flat/" && workers != "1" {
                // 4,500 flat keys are 5 sequential pages; split, they are listed in more pieces.
                assert!(requests > 5, "--list-workers {workers}: {requests} list requests");
            }
        }
    }
}

#[test]
fn list_requests_that_are_throttled_fail_or_reset_are_tried_again_and_no_key_is_lost() {
    // S3 throttles and fails list requests as it does GETs. The lean engine lists on its own
    // connections with its own retries: throttling does not spend --retries, so a page fails
    // only after 11 failures of the other kinds in a row ((2/7)^11 ≈ 1e-6 per page at these
    // fractions). The SDK engine lists through the SDK, whose retry mode counts every failure:
    // 21 in a row (0.5^21 ≈ 5e-7), and a page it gave up on as throttled is asked for again.
    let objs = layout();
    let want = expected_tree(&objs, "");
    let files = objs.iter().filter(|(k, _)| !k.ends_with('/')).count();
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("shaky", objs.clone())],
            list_faults: Faults { slowdown: 0.3, internal: 0.1, reset: 0.1, ..Faults::default() },
            ..Default::default()
        },
        true,
    );
    for (engine, workers, retries) in [("lean", "1", "10"), ("lean", "8", "10"), ("sdk", "8", "20")] {
        let before = env.list_fault_counts();
        let scratch = Scratch::new();
        let args = ["--fetch-engine", engine, "--list-workers", workers, "--retries", retries, "s3://shaky"];
        let out = run(env.cmd().args(args).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{engine}, --list-workers {workers}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &want);
        let c = env.list_fault_counts();
        let (lists, faults) = (
            c.gets - before.gets,
            c.slowdown + c.internal + c.reset - before.slowdown - before.internal - before.reset,
        );
        // Dozens of list requests at 50 % faults: some of each kind was met and got past.
        assert!(c.slowdown > before.slowdown && c.internal > before.internal && c.reset > before.reset, "{c:?}");
        assert!(lists > faults && faults > 0, "{lists} list requests, {faults} faults");
        assert!(stderr(&out).contains(&format!("{} keys listed: {files} files written", objs.len())));
    }
}

#[test]
fn a_store_whose_delimiter_listing_is_wrong_loses_no_key() {
    // Such a store answers a delimiter listing under "t/x/" with nothing at all; parallel
    // listing never asks for one, so every key arrives (it once copied 0 of 30, exit 0).
    let objs: Vec<(String, Bytes)> =
        (0..30).map(|i| format!("t/x/y{}/z{i}", i % 4)).map(|k| (k.clone(), content(&k, 40))).collect();
    let config = s3uring::endpoint::EndpointConfig {
        buckets: vec![bucket("broken-delim", objs.clone())],
        broken_delimiter_under: Some("t/x/".into()),
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    for workers in ["1", "32"] {
        let scratch = Scratch::new();
        let out = run(env.cmd().args(["--list-workers", workers, "s3://broken-delim/t/"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{workers}");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, "t/"));
    }
}

#[test]
fn one_object_per_directory_costs_a_list_request_per_page_not_per_key() {
    let config = s3uring::endpoint::EndpointConfig {
        buckets: vec![s3uring::endpoint::BucketSpec {
            name: "per-dir".into(),
            contents: s3uring::endpoint::Contents::Generated {
                count: 20_000,
                size: 0,
                prefixes: 1,
                layout: s3uring::endpoint::Layout::PerDirectory,
            },
        }],
        list_latency: std::time::Duration::from_millis(5),
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    let scratch = Scratch::new();
    let json = scratch.dir.path().join("stats.json");
    let out = run(env
        .cmd()
        .args(["--dry-run", "--list-workers", "32", "--stats-json"])
        .arg(&json)
        .arg("s3://per-dir")
        .arg(scratch.dest())
        .stdout(std::process::Stdio::null()));
    assert_eq!(out.status.code(), Some(0));
    let doc = stats(&json);
    assert_eq!(doc["counters"]["dry_run_planned"].as_u64(), Some(20_000), "{doc}");
    let requests = doc["stages"]["list"]["count"].as_u64().unwrap();
    eprintln!("{requests} list requests for 20,000 keys, one per directory");
    // 20 pages; splitting adds partial pages and empty probes, never one request per key
    // (a delimiter fan-out took 20,048).
    assert!((20..=100).contains(&requests), "{requests} list requests for 20,000 keys");
}
