//! Both fetch engines (`lean`, `sdk`) against the same endpoint: the same trees, the same
//! error messages, retries that recover every object, connections reused.

use std::collections::BTreeSet;

use bytes::Bytes;
use s3uring::endpoint::{Checksums, EndpointConfig, Faults, RateLimit};

use crate::util::*;

fn objects(n: usize) -> Vec<(String, Bytes)> {
    (0..n).map(|i| format!("d{}/obj-{i:05}", i % 7)).map(|k| (k.clone(), content(&k, 700 + k.len()))).collect()
}

/// The per-key failure lines a run printed, sorted.
fn failure_lines(out: &std::process::Output) -> BTreeSet<String> {
    stderr(out).lines().filter(|l| l.starts_with("s3uring: failed")).map(str::to_owned).collect()
}

#[test]
fn refused_and_vanished_keys_fail_with_identical_messages_in_both_engines() {
    let objs = objects(40);
    let denied = objs[3].0.clone();
    let vanished = objs[11].0.clone();
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("mixed", objs.clone())],
            denied: vec![denied.clone()],
            vanished: vec![vanished.clone()],
            ..Default::default()
        },
        true,
    );
    let survivors: Vec<_> = objs.iter().filter(|(k, _)| *k != denied && *k != vanished).cloned().collect();
    let mut lines = Vec::new();
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let out = run(env.cmd().args(["--fetch-engine", fetch, "s3://mixed"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(1), "{fetch}");
        assert!(stderr(&out).contains("38 files written, 0 directories, 0 skipped, 2 failed"), "{fetch}");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&survivors, ""));
        let failed = failure_lines(&out);
        assert!(
            failed.contains(&format!(
                "s3uring: failed '{denied}': AccessDenied: access denied (check the credentials' permissions) (Access Denied)"
            )),
            "{fetch}: {failed:?}"
        );
        assert!(
            failed.contains(&format!("s3uring: failed '{vanished}': NoSuchKey (The specified key does not exist.)")),
            "{fetch}: {failed:?}"
        );
        lines.push(failed);
    }
    assert_eq!(lines[0], lines[1], "lean and sdk print the same failures");
}

#[test]
fn throttling_resets_and_short_bodies_are_retried_until_every_object_arrives() {
    // SlowDown comes as S3 sends it, from a request-rate limit; the other faults at random.
    // The limit is low enough that a slow machine (a debug build on two busy cores) still
    // exceeds it.
    let objs = objects(2_000);
    let want = expected_tree(&objs, "");
    for engines in engines() {
        let env = Env::with_config(
            EndpointConfig {
                buckets: vec![bucket("flaky", objs.clone())],
                faults: Faults { reset: 0.01, truncate: 0.01, internal: 0.01, ..Faults::default() },
                rate_limits: vec![RateLimit::new("", 300.0)],
                ..Default::default()
            },
            true,
        );
        let scratch = Scratch::new();
        let json = scratch.dir.path().join("stats.json");
        let out = run(env
            .cmd()
            .args(engines.args())
            .args(["--workers", "64", "--retries", "10", "--hedge-after", "0", "--stats-json"])
            .arg(&json)
            .arg("s3://flaky")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{engines}");
        assert_same_tree(&read_tree(&scratch.dest()), &want);
        let c = env.fault_counts();
        let throttled = env.rate_limit_counts()[0].throttled;
        let injected = c.internal + c.reset + c.truncate;
        assert!(throttled > 0 && c.reset > 0 && c.truncate > 0, "{engines}: {c:?}, {throttled} throttled");
        // Every fault and every throttling answer cost exactly one retry, and nothing else did.
        let doc = stats(&json);
        assert_eq!(doc["fetch"]["retries"].as_u64(), Some(injected + throttled), "{engines}: {c:?}");
        assert_eq!(doc["fetch"]["throttled"].as_u64(), Some(throttled), "{engines}: {c:?}");
        assert_eq!(doc["fetch"]["rate_limit"]["throttled"].as_u64(), Some(throttled), "{engines}");
        // The rate limiter took over: the root partition was cut, and GETs waited for it.
        let root = &doc["fetch"]["rate_limit"]["partitions"][0];
        assert_eq!(root["prefix"], "", "{engines}: {doc}");
        assert!(root["cuts"].as_u64().is_some_and(|n| n > 0), "{engines}: {root}");
        assert!(doc["fetch"]["rate_limit"]["limiter_wait_s"].as_f64().is_some_and(|w| w > 0.0), "{engines}");
        assert_eq!(c.gets, 2_000 + injected + throttled, "{engines}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{} GET attempts retried ({throttled} throttled", injected + throttled)),
            "{err}"
        );
    }
}

#[test]
fn retries_under_max_rate_without_throttling_claim_no_lowered_window() {
    // --max-rate paces the GETs, so at times none is in flight while one waits for its slot;
    // that is not throttling, and the retry line must not say GETs in flight were lowered.
    let objs = objects(600);
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("paced", objs.clone())],
            faults: Faults { reset: 0.03, ..Faults::default() },
            ..Default::default()
        },
        true,
    );
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let resets = env.fault_counts().reset;
        let out = run(env
            .cmd()
            .args(["--fetch-engine", fetch, "--max-rate", "1200", "--retries", "10", "s3://paced"])
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let err = stderr(&out);
        assert!(env.fault_counts().reset > resets, "{fetch}: no reset was injected");
        assert!(
            err.contains("GET attempts retried (0 throttled by the service, spending no retries; --retries 10"),
            "{fetch}: {err}"
        );
        assert!(!err.contains("lowered"), "{fetch}: {err}");
    }
}

#[test]
fn a_rate_limited_endpoint_loses_no_key_in_either_engine() {
    // Far more GETs in flight than the limit allows (16 at 10 ms are already 1,600/s), and
    // fewer retries than throttling answers: throttling must spend none of them.
    let objs = objects(2_000);
    for fetch in FETCH_ENGINES {
        let env = Env::with_config(
            EndpointConfig {
                buckets: vec![bucket("limited", objs.clone())],
                get_latency: std::time::Duration::from_millis(10),
                rate_limits: vec![RateLimit::new("", 400.0)],
                ..Default::default()
            },
            true,
        );
        let scratch = Scratch::new();
        let json = scratch.dir.path().join("stats.json");
        let out = run(env
            .cmd()
            .args(["--fetch-engine", fetch, "--workers", "512", "--retries", "1", "--hedge-after", "0", "--stats-json"])
            .arg(&json)
            .arg("s3://limited")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let limit = &env.rate_limit_counts()[0];
        assert_eq!(limit.served, 2_000, "{fetch}: every key once");
        assert!(limit.throttled > 1, "{fetch}: the GETs in flight meet the limit: {limit:?}");
        let doc = stats(&json);
        assert_eq!(doc["counters"]["failed"], 0, "{fetch}");
        assert_eq!(doc["fetch"]["throttled"].as_u64(), Some(limit.throttled), "{fetch}");
        assert!(doc["fetch"]["min_in_flight"].as_u64().is_some_and(|n| n < 512), "{fetch}: {doc}");
    }
}

#[test]
fn throttled_list_requests_are_asked_again_without_spending_retries_in_either_engine() {
    // S3 counts list requests with the GETs of their partition. Here the bucket holds a single
    // token, the GETs keep the rate at the limit, and the short key queue makes the lister
    // ask for each of the many pages while they do: list requests meet the limit too.
    let objs = objects(10_000);
    for fetch in FETCH_ENGINES {
        let mut limit = RateLimit::new("", 1_500.0);
        limit.burst = std::time::Duration::ZERO;
        let env = Env::with_config(
            EndpointConfig {
                buckets: vec![bucket("listed", objs.clone())],
                rate_limits: vec![limit],
                ..Default::default()
            },
            true,
        );
        let scratch = Scratch::new();
        let out = run(env
            .cmd()
            .args([
                "--fetch-engine",
                fetch,
                "--workers",
                "64",
                "--queue",
                "100",
                "--retries",
                "1",
                "--hedge-after",
                "0",
            ])
            .arg("s3://listed")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let limit = &env.rate_limit_counts()[0];
        assert_eq!(limit.served, 10_000, "{fetch}: every key once");
        assert!(limit.others_throttled > 0, "{fetch}: list requests met the limit: {limit:?}");
    }
}

#[test]
fn keys_of_a_crowded_partition_are_parked_while_the_others_are_served() {
    // Listed first, the limited partition's keys would hold every fetcher at its gate: the
    // other partition's keys, listed after them, would wait for all of them.
    let objs: Vec<(String, Bytes)> = (0..1_200)
        .map(|i| format!("{}/obj-{i:05}", if i < 600 { "a-hot" } else { "b-cold" }))
        .map(|k| (k.clone(), content(&k, 300)))
        .collect();
    for fetch in FETCH_ENGINES {
        let env = Env::with_config(
            EndpointConfig {
                buckets: vec![bucket("parked", objs.clone())],
                get_latency: std::time::Duration::from_millis(5),
                rate_limits: vec![RateLimit::new("a-hot/", 100.0), RateLimit::new("b-cold/", 0.0)],
                ..Default::default()
            },
            true,
        );
        let scratch = Scratch::new();
        let out = run(env
            .cmd()
            .args(["--fetch-engine", fetch, "--workers", "32", "--hedge-after", "0", "s3://parked"])
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let counts = env.rate_limit_counts();
        let (hot, cold) = (&counts[0], &counts[1]);
        assert_eq!((hot.served, cold.served), (600, 600), "{fetch}: {counts:?}");
        // By the endpoint's clock: when the last cold key was served, the hot partition had
        // served at most the seconds up to then (its GETs of that second included).
        let hot_by_then: u64 = hot.per_second.iter().take(cold.last_s as usize + 1).sum();
        assert!(hot_by_then < 400, "{fetch}: cold finished after {hot_by_then} of 600 hot keys: {counts:?}");
    }
}

#[test]
fn a_partition_throttled_alone_leaves_the_others_unthrottled_and_every_key_arrives() {
    let objs: Vec<(String, Bytes)> = (0..4_000)
        .map(|i| format!("{}/obj-{i:05}", if i % 2 == 0 { "hot" } else { "cold" }))
        .map(|k| (k.clone(), content(&k, 300)))
        .collect();
    for fetch in FETCH_ENGINES {
        let env = Env::with_config(
            EndpointConfig {
                buckets: vec![bucket("parts", objs.clone())],
                get_latency: std::time::Duration::from_millis(5),
                rate_limits: vec![RateLimit::new("hot/", 400.0), RateLimit::new("cold/", 0.0)],
                ..Default::default()
            },
            true,
        );
        let scratch = Scratch::new();
        // No hedging: on a slow machine a GET waiting 2 s would be sent twice, and counted.
        let out =
            run(env.cmd().args(["--fetch-engine", fetch, "--hedge-after", "0", "s3://parts"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let counts = env.rate_limit_counts();
        let (cold, hot) = (&counts[0], &counts[1]);
        assert_eq!((cold.prefix.as_str(), hot.prefix.as_str()), ("cold/", "hot/"));
        assert_eq!((cold.served, hot.served), (2_000, 2_000), "{fetch}: {counts:?}");
        assert_eq!(cold.throttled, 0, "{fetch}");
        assert!(hot.throttled > 0, "{fetch}: {counts:?}");
    }
}

#[test]
fn max_rate_paces_gets_below_a_limit_it_never_meets() {
    let objs = objects(1_500);
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("gentle", objs.clone())],
            // A limit well above --max-rate, with a small burst: a client that paces at the
            // cap meets it only through timer jitter.
            rate_limits: vec![RateLimit::new("", 1000.0)],
            ..Default::default()
        },
        true,
    );
    let scratch = Scratch::new();
    let json = scratch.dir.path().join("stats.json");
    let out =
        run(env.cmd().args(["--max-rate", "500", "--stats-json"]).arg(&json).arg("s3://gentle").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
    let limit = &env.rate_limit_counts()[0];
    assert!(limit.throttled * 100 <= limit.served, "paced at half the limit: {limit:?}");
    // Paced at the cap over the run, by the endpoint's clock: slots follow a schedule, so a
    // stalled client (a loaded machine) can only send less on average, never more. (No
    // single second is asserted: a timer that fires late crowds one second and empties the
    // next without changing the rate.)
    let span = limit.last_s - limit.first_s;
    assert!(limit.served as f64 <= 500.0 * span + 50.0, "{} GETs in {span:.2} s: {limit:?}", limit.served);
    let doc = stats(&json);
    assert_eq!(doc["config"]["max_rate"], 500.0);
    assert_eq!(doc["fetch"]["rate_limit"]["max_rate"], 500.0);
    assert!(stderr(&out).contains("--max-rate 500 GET/s"), "{}", stderr(&out));
}

#[test]
fn max_rate_counts_hedges_and_the_parts_of_large_objects() {
    // Small objects, 5 % of them answered late (hedged after 100 ms), and 1 MiB objects
    // fetched in 128 KiB parts: every one of those GETs takes a send slot.
    let mut objs = objects(200);
    objs.extend((0..8).map(|i| format!("big/{i}")).map(|k| (k.clone(), content(&k, 1 << 20))));
    let env = || {
        Env::with_config(
            EndpointConfig {
                buckets: vec![bucket("mixed", objs.clone())],
                faults: Faults { slow: 0.05, slow_delay: std::time::Duration::from_secs(2), ..Faults::default() },
                // Far above --max-rate: here only to count what arrived when, by the endpoint's clock.
                rate_limits: vec![RateLimit::new("", 100_000.0)],
                ..Default::default()
            },
            true,
        )
    };
    for fetch in FETCH_ENGINES {
        // An endpoint per run: its clock and counts are this run's alone.
        let env = env();
        let scratch = Scratch::new();
        let json = scratch.dir.path().join("stats.json");
        let out = run(env
            .cmd()
            .args(["--fetch-engine", fetch, "--max-rate", "150", "--hedge-after", "100"])
            .args(["--multipart-threshold", "256KiB", "--part-size", "128KiB", "--stats-json"])
            .arg(&json)
            .arg("s3://mixed")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let hedged = stats(&json)["fetch"]["hedged"].as_u64().unwrap();
        // The endpoint counts every GET; the rule, those not answered late (a GET given a
        // fault has that fate alone), and when the first and last of them came.
        let gets = env.fault_counts().gets;
        assert!(hedged > 0, "{fetch}: nothing was hedged");
        assert_eq!(gets, 200 + 8 * 8 + hedged, "{fetch}: one GET per small object and part, plus the hedges");
        let limit = &env.rate_limit_counts()[0];
        // Slots follow a schedule with no burst: one at the start, then one each 1/150 s (a
        // few more for the GETs answered late, which may lie outside the rule's span).
        let span = limit.last_s - limit.first_s;
        assert!(gets as f64 <= 150.0 * span + 10.0, "{fetch}: {gets} GETs in {span:.2} s");
    }
}

#[test]
fn a_service_that_only_throttles_stops_the_run_after_the_stall_timeout() {
    let objs = objects(200);
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("stuck", objs)],
            faults: Faults { slowdown: 1.0, ..Faults::default() },
            ..Default::default()
        },
        true,
    );
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let out =
            run(env.cmd().args(["--fetch-engine", fetch, "--stall-timeout", "1", "s3://stuck"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(1), "{fetch}");
        let err = stderr(&out);
        assert!(
            err.contains("no GET succeeded for 1 s while the service kept throttling (--stall-timeout)"),
            "{fetch}: {err}"
        );
        assert!(err.contains("stopped early"), "{fetch}: {err}");
    }
}

#[test]
fn the_lean_engine_keeps_one_connection_per_worker() {
    let objs = objects(600);
    let env = Env::new(vec![bucket("reuse", objs.clone())]);
    let scratch = Scratch::new();
    let json = scratch.dir.path().join("stats.json");
    let out = run(env.cmd().args(["--workers", "8", "--stats-json"]).arg(&json).arg("s3://reuse").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
    let doc = stats(&json);
    assert_eq!(doc["fetch_engine"], "lean");
    let opened = doc["fetch"]["connections_opened"].as_u64().expect("counted");
    assert_eq!(doc["fetch"]["min_in_flight"], 8, "never throttled, never lowered");
    assert_eq!(doc["fetch"]["rate_limit"]["partitions"], serde_json::json!([]), "nothing was ever limited");
    assert!((1..=8).contains(&opened), "600 GETs by 8 workers opened {opened} connections");
}

#[test]
fn anonymous_requests_work_in_both_engines() {
    let objs = objects(50);
    let env = Env::anonymous(vec![bucket("public", objs.clone())]);
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let out = run(env.cmd().args(["--fetch-engine", fetch, "s3://public"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
    }
}

#[test]
fn failed_keys_written_then_fed_back_retry_exactly_those() {
    let objs = objects(60);
    let (denied, vanished) = (objs[5].0.clone(), objs[17].0.clone());
    let broken = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("retry", objs.clone())],
            denied: vec![denied.clone()],
            vanished: vec![vanished.clone()],
            ..Default::default()
        },
        true,
    );
    let healed = Env::new(vec![bucket("retry", objs.clone())]);
    for e in engines() {
        let scratch = Scratch::new();
        let list = scratch.dir.path().join("failed.txt");
        let out = run(broken
            .cmd()
            .args(["--fetch-engine", e.fetch, "--io-engine", e.io, "--hedge-after", "0", "--failed-keys"])
            .arg(&list)
            .arg("s3://retry")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(1), "{e}");
        assert!(stderr(&out).contains(&format!("2 failed keys written to '{}'", list.display())), "{e}");
        let text = std::fs::read_to_string(&list).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(lines.len(), 2, "{text}");
        // Every line ends with a newline, the last too: `wc -l` counts them all.
        assert_eq!(text.matches('\n').count(), 2, "{text:?}");
        assert!(lines.iter().any(|l| l.starts_with(&format!("{denied}\tAccessDenied"))), "{text}");
        assert!(lines.iter().any(|l| l.starts_with(&format!("{vanished}\tNoSuchKey"))), "{text}");

        // Fed back against the healed bucket: exactly those two are fetched.
        let gets = healed.fault_counts().gets;
        let out = run(healed
            .cmd()
            .args(["--fetch-engine", e.fetch, "--io-engine", e.io, "--hedge-after", "0", "--keys-from"])
            .arg(&list)
            .arg("s3://retry")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}");
        assert!(stderr(&out).contains("2 keys listed: 2 files written"), "{e}");
        assert_eq!(healed.fault_counts().gets - gets, 2);
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
    }
}

#[test]
fn keys_from_stdin_copies_those_keys_relative_to_the_prefix() {
    let objs = objects(30);
    let env = Env::new(vec![bucket("pick", objs.clone())]);
    let scratch = Scratch::new();
    let picked: Vec<_> = objs.iter().filter(|(k, _)| k.starts_with("d3/")).cloned().collect();
    let mut input: String = picked.iter().map(|(k, _)| format!("{k}\n")).collect();
    input.push_str("\nd4/obj-00004\n"); // an empty line, and a key outside the prefix
    let mut child = env
        .cmd()
        .args(["--keys-from", "-", "s3://pick/d3/"])
        .arg(scratch.dest())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", stderr(&out));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("'d4/obj-00004': not under the source prefix 'd3/'"), "{}", stderr(&out));
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&picked, "d3/"));
}

#[test]
fn keys_from_a_slow_pipe_are_copied_as_they_arrive() {
    // A producer that writes a few keys and then waits (a query still running, `tail -f`):
    // those keys must be copied while it waits, not when a page of them has gathered or the
    // pipe closes.
    let objs = objects(30);
    let env = Env::new(vec![bucket("trickle", objs.clone())]);
    let scratch = Scratch::new();
    let mut child = env
        .cmd()
        .args(["--keys-from", "-", "s3://trickle"])
        .arg(scratch.dest())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write as _;
    let first: Vec<_> = objs[..3].to_vec();
    for (k, _) in &first {
        writeln!(stdin, "{k}").unwrap();
    }
    stdin.flush().unwrap();
    // The pipe stays open: wait (up to a minute, far beyond any copy of three keys) for the files.
    let landed =
        || first.iter().all(|(k, body)| std::fs::read(scratch.dest().join(k)).ok().as_deref() == Some(&body[..]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !landed() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let arrived = landed();
    for (k, _) in &objs[3..] {
        writeln!(stdin, "{k}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(arrived, "the first keys were not copied while the pipe stayed open: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
}

#[test]
fn corrupted_bodies_are_fetched_again_and_never_written_by_default() {
    let objs = objects(400);
    let want = expected_tree(&objs, "");
    // CRC64NVME or CRC32C for every object; each of S3's five algorithms for some; none (the
    // ETag's MD5).
    let mixed: std::collections::BTreeSet<_> =
        objs.iter().filter_map(|(k, _)| Checksums::Mixed.of(k)).map(|c| c.0).collect();
    assert_eq!(mixed.len(), 5, "{mixed:?}");
    for checksums in [Checksums::Crc64Nvme, Checksums::Crc32c, Checksums::Mixed, Checksums::None] {
        let env = Env::with_config(
            EndpointConfig {
                buckets: vec![bucket("bitrot", objs.clone())],
                faults: Faults { corrupt: 0.05, ..Faults::default() },
                checksums,
                ..Default::default()
            },
            true,
        );
        // With --no-verify the corruption is real and lands on disk: the fault is not a no-op.
        let scratch = Scratch::new();
        let out = run(env.cmd().arg("--no-verify").arg("s3://bitrot").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0));
        assert_ne!(read_tree(&scratch.dest()), want, "corrupted bodies were written with --no-verify");
        // Default flags and strict mode (every object here can be checked) alike.
        for (e, mode) in engines().into_iter().zip([None, Some("--verify")].into_iter().cycle()) {
            let scratch = Scratch::new();
            let json = scratch.dir.path().join("stats.json");
            let before = env.fault_counts().corrupt;
            let out = run(env
                .cmd()
                .args(mode)
                .args([
                    "--retries",
                    "10",
                    "--hedge-after",
                    "0",
                    "--fetch-engine",
                    e.fetch,
                    "--io-engine",
                    e.io,
                    "--stats-json",
                ])
                .arg(&json)
                .arg("s3://bitrot")
                .arg(scratch.dest()));
            assert_eq!(out.status.code(), Some(0), "{e} {mode:?}");
            assert_same_tree(&read_tree(&scratch.dest()), &want);
            let corrupted = env.fault_counts().corrupt - before;
            assert!(corrupted > 5, "{corrupted}");
            let doc = stats(&json);
            let v = &doc["verify"];
            assert_eq!(v["mismatches"].as_u64(), Some(corrupted), "{e}: {v}");
            let (by_checksum, by_md5) = if checksums == Checksums::None { (0, 400) } else { (400, 0) };
            assert_eq!(v["by_checksum"].as_u64(), Some(by_checksum), "{e}: {v}");
            assert_eq!(v["by_etag_md5"].as_u64(), Some(by_md5), "{e}: {v}");
            assert!(stderr(&out).contains("did not match and were not kept"), "{e}");
        }
    }
}

#[test]
fn gets_not_answered_in_time_are_hedged_and_the_spare_wins() {
    // ~2 % of first bytes take 3 s, far past --hedge-after 200 ms: each such GET is sent
    // again, one GET more each, and spares answered at once win. How much of the tail that
    // cuts is a matter of time, measured by benches, not here.
    let objs = objects(500);
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("tail", objs.clone())],
            faults: Faults { slow: 0.02, slow_delay: std::time::Duration::from_secs(3), ..Faults::default() },
            ..Default::default()
        },
        true,
    );
    for e in engines() {
        let mut runs = Vec::new();
        for hedge in ["0", "200"] {
            let scratch = Scratch::new();
            let json = scratch.dir.path().join("stats.json");
            let before = env.fault_counts();
            let out = run(env
                .cmd()
                .args(["--workers", "64", "--fetch-engine", e.fetch, "--io-engine", e.io, "--hedge-after", hedge])
                .arg("--stats-json")
                .arg(&json)
                .arg("s3://tail")
                .arg(scratch.dest()));
            assert_eq!(out.status.code(), Some(0), "{e}");
            assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
            let after = env.fault_counts();
            runs.push((stats(&json), after.gets - before.gets, after.slow - before.slow));
        }
        let ((plain, plain_gets, _), (hedged, hedged_gets, slow)) = (&runs[0], &runs[1]);
        let count = |doc: &serde_json::Value, field: &str| doc["fetch"][field].as_u64().unwrap_or(u64::MAX);
        assert_eq!((count(plain, "hedged"), *plain_gets), (0, 500), "{e}: no hedging, one GET a key");
        let h = count(hedged, "hedged");
        assert_eq!(*hedged_gets, 500 + h, "{e}: each hedge is one more GET");
        // Every slow first attempt was hedged; of the slow answers, at most `h` were spares.
        assert!(*slow > 0 && 2 * h >= *slow, "{e}: {h} hedged, {slow} answers slow");
        assert!(count(hedged, "hedge_won") >= 1, "{e}: {}", hedged["fetch"]);
    }
}

#[test]
fn a_slow_body_after_a_prompt_answer_is_not_hedged() {
    // Every answer's headers come at once and its body 3 s later: a slow link, which a
    // second copy of the GET would only compete with. Hedging after 1 s leaves a loaded
    // machine a second to read headers that come at once, and the body two more.
    let objs = objects(40);
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("slow-body", objs.clone())],
            faults: Faults { slow_body: 1.0, slow_delay: std::time::Duration::from_secs(3), ..Faults::default() },
            ..Default::default()
        },
        true,
    );
    for e in engines() {
        let scratch = Scratch::new();
        let json = scratch.dir.path().join("stats.json");
        let out = run(env
            .cmd()
            .args(["--fetch-engine", e.fetch, "--io-engine", e.io, "--hedge-after", "1000", "--stats-json"])
            .arg(&json)
            .arg("s3://slow-body")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        assert_eq!(stats(&json)["fetch"]["hedged"], 0, "{e}: a GET already answered is not sent again");
    }
}

#[test]
fn requester_pays_buckets_need_request_payer_in_lists_and_gets() {
    let objs = objects(120);
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("payer", objs.clone())],
            requester_pays: vec!["payer".to_owned()],
            ..Default::default()
        },
        true,
    );
    let scratch = Scratch::new();
    let out = run(env.cmd().arg("s3://payer").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("AccessDenied"), "{}", stderr(&out));
    for workers in ["1", "32"] {
        let args = ["--request-payer", "requester", "--list-workers", workers];
        copy_each_engine(&env, &args, "s3://payer", 0, &expected_tree(&objs, ""), |_, _, _| {});
    }
}

#[test]
fn archived_objects_are_skipped_with_a_reason_unless_restored() {
    let objs = objects(30);
    let (frozen, deep, restored, instant) = (&objs[2].0, &objs[9].0, &objs[14].0, &objs[20].0);
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("cold", objs.clone())],
            archived: vec![
                (frozen.clone(), "GLACIER".into(), false),
                (deep.clone(), "DEEP_ARCHIVE".into(), false),
                (restored.clone(), "DEEP_ARCHIVE".into(), true),
                (instant.clone(), "GLACIER_IR".into(), false),
            ],
            ..Default::default()
        },
        true,
    );
    let readable: Vec<_> = objs.iter().filter(|(k, _)| k != frozen && k != deep).cloned().collect();
    for workers in ["1", "32"] {
        let want = expected_tree(&readable, "");
        copy_each_engine(&env, &["--list-workers", workers], "s3://cold", 0, &want, |_, err, _| {
            assert!(err.contains(&format!("skipped '{frozen}': in GLACIER and not restored")), "{err}");
            assert!(err.contains(&format!("skipped '{deep}': in DEEP_ARCHIVE and not restored")), "{err}");
            assert!(err.contains("28 files written, 0 directories, 2 skipped, 0 failed"), "{err}");
            assert!(err.contains("2 of the skipped objects are in GLACIER/DEEP_ARCHIVE"), "{err}");
        });
    }
}

#[test]
fn gets_of_more_than_8_mib_are_never_hedged() {
    // Every first byte takes 3 s, far past --hedge-after 200 ms. A 4 KiB object and the 9 MiB
    // parts of a large one wait alike; only the small GET is sent twice (a second copy of a
    // large body would double its bytes on the same link).
    let objs = vec![("small".to_owned(), content("small", 4096)), ("large".to_owned(), content("large", 18 << 20))];
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("sizes", objs.clone())],
            faults: Faults { slow: 1.0, slow_delay: std::time::Duration::from_secs(3), ..Faults::default() },
            ..Default::default()
        },
        true,
    );
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let json = scratch.dir.path().join("stats.json");
        let before = env.fault_counts().gets;
        let out = run(env
            .cmd()
            .args(["--fetch-engine", fetch, "--hedge-after", "200", "--multipart-threshold", "9MiB"])
            .args(["--part-size", "9MiB", "--stats-json"])
            .arg(&json)
            .arg("s3://sizes")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let hedged = stats(&json)["fetch"]["hedged"].as_u64().unwrap_or(u64::MAX);
        // The small object's GET, and its spare (slow too) once more: 1 or 2, never a part's.
        assert!((1..=2).contains(&hedged), "{fetch}: {hedged} hedged");
        let gets = env.fault_counts().gets - before;
        assert_eq!(gets, 1 + 2 + hedged, "{fetch}: one GET for the small object, one per 9 MiB part, and the hedges");
    }
}
