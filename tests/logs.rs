//! `--log-format json`: everything a copy writes to stderr is one JSON object per line, with
//! the fields the README documents, for log shippers.

use crate::util::*;

/// Every stderr line of `out`, parsed: each must be a JSON object with `timestamp` and `level`.
fn events(err: &str) -> Vec<serde_json::Value> {
    err.lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
            assert!(v["level"].is_string(), "{line}");
            v
        })
        .collect()
}

fn of<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

#[test]
fn a_copy_with_a_failure_writes_only_json_lines() {
    // A key whose name a terminal would misread: escaped in text, carried as is in JSON.
    let odd = "odd\u{1b}[31m/no";
    let mut objs: Vec<_> = (0..300).map(|i| format!("k/{i:03}")).map(|k| (k.clone(), content(&k, 100))).collect();
    objs.push((odd.to_owned(), content(odd, 10)));
    let config = s3uring::endpoint::EndpointConfig {
        buckets: vec![bucket("logs", objs)],
        denied: vec![odd.to_owned()],
        get_latency: std::time::Duration::from_millis(20),
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let out = run(env
            .cmd()
            .args(["--log-format", "json", "--progress-interval", "0.05", "--workers", "4", "--fetch-engine", fetch])
            .arg("s3://logs")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(1), "{fetch}: one key failed");
        let err = stderr(&out);
        let all = events(&err);
        let failed = of(&all, "failed");
        assert_eq!(failed.len(), 1, "{fetch}: {err}");
        assert_eq!(failed[0]["key"], odd, "{fetch}: the key as it is");
        assert!(failed[0]["reason"].as_str().is_some_and(|r| r.contains("AccessDenied")), "{fetch}: {err}");
        assert_eq!(failed[0]["level"], "ERROR");
        // 300 keys at 4 in flight and 20 ms take about 1.5 s: progress every 50 ms.
        let progress = of(&all, "progress");
        assert!(!progress.is_empty(), "{fetch}: {err}");
        assert!(progress.iter().all(|p| p["listed"].is_u64() && p["objects_per_s"].is_f64()), "{fetch}: {err}");
        let summary = of(&all, "summary");
        assert_eq!(summary.len(), 1, "{fetch}: {err}");
        assert_eq!(summary[0]["stats"]["counters"]["failed"], 1, "{fetch}: {}", summary[0]);
        assert_eq!(summary[0]["stats"]["counters"]["written"], 300, "{fetch}: {}", summary[0]);
        assert!(summary[0]["message"].as_str().is_some_and(|m| m.contains("1 failed")), "{fetch}");
        assert_eq!(all.last().map(|e| &e["event"]), Some(&serde_json::json!("summary")), "{fetch}: last");
    }
}

#[test]
fn a_setup_error_is_a_json_error_event() {
    let env = Env::new(vec![bucket("there", vec![("k".to_owned(), content("k", 1))])]);
    let scratch = Scratch::new();
    let out = run(env.cmd().args(["--log-format", "json"]).arg("s3://not-there").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    let all = events(&stderr(&out));
    let errors = of(&all, "error");
    assert_eq!(errors.len(), 1, "{all:?}");
    assert_eq!(errors[0]["level"], "ERROR");
    assert!(errors[0]["message"].as_str().is_some_and(|m| m.contains("not-there")), "{all:?}");
}
