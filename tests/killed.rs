//! Invariant 2: a file at its final path is complete; a killed run leaves at most temporary
//! files, which the next run cleans up.

use std::time::Duration;

use bytes::Bytes;
use s3uring::endpoint::EndpointConfig;

use crate::util::*;

const TMP: &str = ".s3uring-tmp.";

/// The tree once two reads 100 ms apart agree (at most ~5 s).
fn settled_tree(dest: &std::path::Path) -> Tree {
    let mut last = read_tree(dest);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = read_tree(dest);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

fn temporaries(tree: &Tree) -> Vec<String> {
    tree.keys().filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with(TMP))).cloned().collect()
}

#[test]
fn stale_temporaries_of_dead_runs_are_removed_and_live_ones_kept() {
    let objs: Vec<(String, Bytes)> = ["sub/a", "b"].iter().map(|k| (k.to_string(), content(k, 64))).collect();
    let env = Env::new(vec![bucket("stale", objs.clone())]);
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let live = std::process::id();
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        let dead_top = format!("{TMP}{dead:x}.1");
        let dead_sub = format!("sub/{TMP}{dead:x}.2");
        let live_top = format!("{TMP}{live:x}.3");
        for p in [&dead_top, &dead_sub, &live_top] {
            std::fs::write(dest.join(p), b"partial").unwrap();
        }
        let out = run(env.cmd().args(engine.args()).args(["s3://stale"]).arg(&dest));
        assert_eq!(out.status.code(), Some(0));
        let tree = read_tree(&dest);
        assert_eq!(temporaries(&tree), vec![live_top.clone()], "{engine}: only the live run's temporary stays");
        assert_eq!(tree.get("sub/a"), Some(&Some(content("sub/a", 64).to_vec())));
    }
}

#[test]
fn kill_9_mid_run_leaves_only_complete_files_and_a_rerun_finishes_the_job() {
    let objs: Vec<(String, Bytes)> =
        (0..1500).map(|i| format!("k/d{:02}/o{i:05}", i % 13)).map(|k| (k.clone(), content(&k, 3000))).collect();
    let config = EndpointConfig {
        buckets: vec![bucket("killme", objs.clone())],
        get_latency: Duration::from_millis(30),
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    let want = expected_tree(&objs, "");
    for engine in engines() {
        for kill_after_ms in [150, 500] {
            let scratch = Scratch::new();
            let dest = scratch.dest();
            let mut child = env
                .cmd()
                .args(engine.args())
                .args(["-q", "--workers", "64", "s3://killme"])
                .arg(&dest)
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(kill_after_ms));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            // An exited process's io_uring is torn down by the kernel asynchronously (io-wq
            // may still finish a rename): wait until the tree stops changing.
            let after_kill = settled_tree(&dest);
            for (path, data) in &after_kill {
                if let Some(data) = data
                    && !temporaries(&after_kill).contains(path)
                {
                    assert_eq!(Some(data), want.get(path).and_then(|d| d.as_ref()), "{engine}: {path} is not complete");
                }
            }
            let complete = after_kill.values().filter(|v| v.is_some()).count();
            eprintln!(
                "{engine}, killed after {kill_after_ms} ms: {complete} files, {} temporaries",
                temporaries(&after_kill).len()
            );
            assert!(complete < objs.len(), "{engine}: the kill came too late to test anything");

            let gets_before = env.fault_counts().gets;
            let out = run(env.cmd().args(engine.args()).args(["s3://killme"]).arg(&dest));
            assert_eq!(out.status.code(), Some(0), "{engine}");
            let tree = read_tree(&dest);
            assert!(temporaries(&tree).is_empty(), "{engine}: {:?}", temporaries(&tree));
            assert_same_tree(&tree, &want);
            // The re-run fetched only what was missing: every final file carries its
            // object's mtime (set before the rename), so every one of them is skipped.
            // (GETs are counted at the endpoint too: at least one per written file, more if
            // a loaded machine made the run hedge a slow GET.)
            let finals = complete - temporaries(&after_kill).len();
            let missing = objs.len() - finals;
            let err = stderr(&out);
            assert!(
                err.contains(&format!("{missing} files written, 0 directories, {finals} skipped")),
                "{engine}: {finals} complete files after the kill: {err}"
            );
            assert!(env.fault_counts().gets - gets_before >= missing as u64);
        }
    }
}

fn slow_env(bucket_name: &str, n: usize) -> (Env, Vec<(String, Bytes)>) {
    let objs: Vec<(String, Bytes)> =
        (0..n).map(|i| format!("s/d{:02}/o{i:05}", i % 7)).map(|k| (k.clone(), content(&k, 2000))).collect();
    let config = EndpointConfig {
        buckets: vec![bucket(bucket_name, objs.clone())],
        get_latency: Duration::from_millis(40),
        ..Default::default()
    };
    (Env::with_config(config, true), objs)
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill").args(["-s", sig, &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

#[test]
fn sigint_stops_cleanly_with_exit_130_and_a_rerun_finishes() {
    let (env, objs) = slow_env("sigint", 2000);
    let want = expected_tree(&objs, "");
    for engine in engines() {
        for sig in ["INT", "TERM"] {
            let scratch = Scratch::new();
            let dest = scratch.dest();
            let child = env
                .cmd()
                .args(engine.args())
                .args(["--workers", "32", "s3://sigint"])
                .arg(&dest)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(400));
            signal(&child, sig);
            let out = child.wait_with_output().unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(130), "{engine} {sig}: {err}");
            assert!(err.contains("interrupted") && err.contains("listed keys were not copied"), "{err}");
            let tree = read_tree(&dest);
            // A graceful stop finishes or abandons cleanly: no temporaries, no partial files.
            assert!(temporaries(&tree).is_empty(), "{engine} {sig}: {:?}", temporaries(&tree));
            for (path, data) in tree.iter().filter(|(_, d)| d.is_some()) {
                assert_eq!(data.as_ref(), want.get(path).and_then(|d| d.as_ref()), "{path}");
            }
            assert!(tree.values().filter(|d| d.is_some()).count() < objs.len(), "stopped too late to test");
            let out = run(env.cmd().args(engine.args()).args(["s3://sigint"]).arg(&dest));
            assert_eq!(out.status.code(), Some(0));
            assert_same_tree(&read_tree(&dest), &want);
        }
    }
}

#[test]
fn a_second_sigint_quits_at_once_leaving_no_partial_final_file() {
    let (env, objs) = slow_env("sigint-twice", 2000);
    let want = expected_tree(&objs, "");
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        let child = env
            .cmd()
            .args(engine.args())
            .args(["-q", "--workers", "32", "s3://sigint-twice"])
            .arg(&dest)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        signal(&child, "INT");
        std::thread::sleep(Duration::from_millis(50));
        signal(&child, "INT");
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{engine}");
        std::thread::sleep(Duration::from_millis(100));
        let tree = read_tree(&dest);
        for (path, data) in tree.iter().filter(|(p, d)| d.is_some() && !temporaries(&tree).contains(p)) {
            assert_eq!(data.as_ref(), want.get(path).and_then(|d| d.as_ref()), "{path}");
        }
    }
}
