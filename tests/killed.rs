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
    // Runs are told apart by the lock each holds on DEST/.s3uring-tmp.<id>.run, not by pids.
    let (gone, unlocked, live) = ("00000000deadbeef", "1111111111111111", "2222222222222222");
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        let unlocked_lock = format!("{TMP}{unlocked}.run");
        let live_lock = format!("{TMP}{live}.run");
        let live_temps = [format!("{TMP}{live}.3"), format!("sub/{TMP}{live}.4")];
        let dead_temps = [
            format!("{TMP}{gone}.1"),
            format!("sub/{TMP}{gone}.2"),
            format!("{TMP}{unlocked}.5"),
            format!("sub/{TMP}{unlocked}.6"),
            // The case probe's second name: a run killed between creating and removing it.
            format!("{TMP}{gone}.FFFFFFFFFFFFFFFF"),
        ];
        // Files of the user's that only look like temporaries: not of the form this tool
        // writes (16 lowercase hex digits, a dot, a hex number without leading zeros).
        let users = [
            format!("{TMP}deadbeef.1"),
            format!("sub/{TMP}{gone}.01"),
            format!("{TMP}{}.1", gone.to_uppercase().replace('0', "A")),
            format!("{TMP}{gone}0.1"),
            format!("{TMP}{gone}.12345678901234567"),
            format!("{TMP}deadbeef.run"),
        ];
        for p in dead_temps.iter().chain(&live_temps).chain(&users).chain([&unlocked_lock, &live_lock]) {
            std::fs::write(dest.join(p), b"partial").unwrap();
        }
        // The live run: this test holds its lock for the copy's whole run.
        let held = std::fs::File::options().write(true).open(dest.join(&live_lock)).unwrap();
        held.lock().unwrap();
        let out = run(env.cmd().args(engine.args()).args(["s3://stale"]).arg(&dest));
        assert_eq!(out.status.code(), Some(0));
        let tree = read_tree(&dest);
        let mut want: Vec<String> = live_temps.iter().chain(&users).cloned().chain([live_lock.clone()]).collect();
        want.sort();
        assert_eq!(
            temporaries(&tree),
            want,
            "{engine}: only the live run's temporaries and lock, and the user's files, stay"
        );
        assert_eq!(tree.get("sub/a"), Some(&Some(content("sub/a", 64).to_vec())));
        drop(held);
    }
}

/// Six objects copied in parts, slowly enough to be killed mid-copy.
fn large_slow_env(name: &str) -> (Env, Vec<(String, Bytes)>) {
    let objs: Vec<(String, Bytes)> =
        (0..6).map(|i| format!("big/d{}/o{i}", i % 2)).map(|k| (k.clone(), content(&k, 3 << 20))).collect();
    let config = EndpointConfig {
        buckets: vec![bucket(name, objs.clone())],
        get_latency: Duration::from_millis(150),
        ..Default::default()
    };
    (Env::with_config(config, true), objs)
}

const PARTS: [&str; 6] = ["--multipart-threshold", "256KiB", "--part-size", "256KiB", "--part-concurrency", "1"];

/// Waits until DEST holds a temporary file (at most ~10 s), looking while the run changes it.
fn wait_for_temporaries(dest: &std::path::Path) -> bool {
    let temporary = |name: &str| name.starts_with(TMP) && !name.ends_with(".run") && !name.ends_with(".new");
    for _ in 0..200 {
        if any_file_named(dest, &temporary) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_run_killed_as_pid_1_of_a_container_is_cleaned_up_by_the_next_container() {
    let (env, objs) = large_slow_env("pidns");
    let want = expected_tree(&objs, "");
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        let mut copy = env.cmd();
        copy.args(engine.args()).args(PARTS).args(["-q", "s3://pidns"]).arg(&dest);
        let Some(mut first) = in_pid_namespace(&copy) else { return };
        let mut child = first.spawn().unwrap();
        assert!(wait_for_temporaries(&dest), "{engine}: the first run wrote no temporary");
        signal(&child, "KILL");
        child.wait().unwrap();
        let killed = settled_tree(&dest);
        assert!(!temporaries(&killed).is_empty(), "{engine}: the kill left nothing to clean up");
        // Another container: the same pid 1, a fresh /proc.
        let out = run(&mut in_pid_namespace(&copy).unwrap());
        assert_eq!(out.status.code(), Some(0), "{engine}");
        let tree = read_tree(&dest);
        assert!(temporaries(&tree).is_empty(), "{engine}: left {:?}", temporaries(&tree));
        assert_same_tree(&tree, &want);
    }
}

#[test]
fn two_runs_in_two_containers_into_one_dest_leave_each_other_alone() {
    let (env, objs) = large_slow_env("twopods");
    let want = expected_tree(&objs, "");
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        let shard = |i: u32| {
            let mut c = env.cmd();
            c.args(engine.args()).args(PARTS).args(["-q", "--shard", &format!("{i}/2"), "s3://twopods"]).arg(&dest);
            c
        };
        let Some(mut first) = in_pid_namespace(&shard(0)) else { return };
        let first = first.stderr(std::process::Stdio::piped()).spawn().unwrap();
        // The second starts while the first has temporaries in the directories both use.
        assert!(wait_for_temporaries(&dest), "{engine}: the first run wrote no temporary");
        let second = run(&mut in_pid_namespace(&shard(1)).unwrap());
        let first = first.wait_with_output().unwrap();
        assert_eq!(second.status.code(), Some(0), "{engine}: {}", stderr(&second));
        assert_eq!(first.status.code(), Some(0), "{engine}: {}", stderr(&first));
        let tree = read_tree(&dest);
        assert!(temporaries(&tree).is_empty(), "{engine}: left {:?}", temporaries(&tree));
        assert_same_tree(&tree, &want);
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
        // Killed as the first GET arrives, and a fifth of the way through.
        for kill_after_gets in [1, 300] {
            let scratch = Scratch::new();
            let dest = scratch.dest();
            let gets_at_start = env.fault_counts().gets;
            let mut child = env
                .cmd()
                .args(engine.args())
                .args(["-q", "--workers", "64", "s3://killme"])
                .arg(&dest)
                .spawn()
                .unwrap();
            env.wait_for_gets(gets_at_start, kill_after_gets);
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
                "{engine}, killed after {kill_after_gets} GETs: {complete} files, {} temporaries",
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

/// Waits (at most a minute: a liveness bound) until a file is at its final name in `dest`
/// (the objects of [`slow_env`] are named `o…`; temporaries start with a dot).
fn wait_for_a_final_file(dest: &std::path::Path) {
    let arrived = within_a_minute(|| any_file_named(dest, &|name| name.starts_with('o')));
    assert!(arrived, "no file reached its final name within a minute");
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
            let gets_at_start = env.fault_counts().gets;
            let child = env
                .cmd()
                .args(engine.args())
                .args(["--workers", "32", "s3://sigint"])
                .arg(&dest)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            env.wait_for_gets(gets_at_start, 64);
            wait_for_a_final_file(&dest);
            signal(&child, sig);
            let out = child.wait_with_output().unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(130), "{engine} {sig}: {err}");
            assert!(err.contains("interrupted") && err.contains("listed keys were not copied"), "{err}");
            let tree = read_tree(&dest);
            // A graceful stop finishes or abandons cleanly: no temporaries, no partial files.
            assert!(temporaries(&tree).is_empty(), "{engine} {sig}: {:?}", temporaries(&tree));
            let files: Vec<_> = tree.iter().filter(|(_, d)| d.is_some()).collect();
            for (path, data) in &files {
                assert_eq!(data.as_ref(), want.get(*path).and_then(|d| d.as_ref()), "{path}");
            }
            assert!(!files.is_empty(), "{engine} {sig}: the file seen before the signal is gone");
            assert!(files.len() < objs.len(), "stopped too late to test");
            let out = run(env.cmd().args(engine.args()).args(["s3://sigint"]).arg(&dest));
            assert_eq!(out.status.code(), Some(0));
            assert_same_tree(&read_tree(&dest), &want);
        }
    }
}

/// A FIFO nobody reads: writing `--stats-json` into it blocks for ever, so a run that
/// reaches its results cannot end by itself and only an interrupt ends it.
fn fifo(scratch: &Scratch) -> std::path::PathBuf {
    let path = scratch.dir.path().join("stats.fifo");
    let made = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success());
    path
}

/// Waits (at most a minute: a liveness bound) until a thread of the child is blocked opening a
/// FIFO nobody reads (its kernel wait channel is `wait_for_partner`), and says whether it got
/// there; `false` once the child has exited.
fn blocked_on_the_fifo(child: &mut std::process::Child) -> bool {
    let tasks = format!("/proc/{}/task", child.id());
    let blocked = || {
        std::fs::read_dir(&tasks).into_iter().flatten().flatten().any(|task| {
            std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w.trim() == "wait_for_partner")
        })
    };
    within_a_minute(|| blocked() || child.try_wait().unwrap().is_some()) && blocked()
}

/// Waits (at most a minute: a liveness bound, not a timing) for the child to exit: its exit
/// code (`None`: killed after the minute) and its stderr.
fn exited_within_a_minute(child: &mut std::process::Child) -> (Option<i32>, String) {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let mut status = None;
    while status.is_none() && std::time::Instant::now() < until {
        status = child.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.and_then(|s| s.code()), err)
}

#[test]
fn a_second_sigint_quits_at_once_leaving_no_partial_final_file() {
    let (env, objs) = slow_env("sigint-twice", 2000);
    let want = expected_tree(&objs, "");
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        // The graceful stop cannot finish (its stats JSON goes to a FIFO nobody reads): only
        // the second interrupt ends the run.
        let gets_at_start = env.fault_counts().gets;
        let mut child = env
            .cmd()
            .args(engine.args())
            .args(["-q", "--workers", "32", "--stats-json"])
            .arg(fifo(&scratch))
            .arg("s3://sigint-twice")
            .arg(&dest)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        env.wait_for_gets(gets_at_start, 64);
        wait_for_a_final_file(&dest);
        signal(&child, "INT");
        // The graceful stop gets as far as its results, and no further.
        assert!(blocked_on_the_fifo(&mut child), "{engine}: the first interrupt cannot end this run");
        signal(&child, "INT");
        let (code, err) = exited_within_a_minute(&mut child);
        assert_eq!(code, Some(130), "{engine}: {err}");
        assert!(err.contains("interrupted again: quitting now"), "{engine}: {err}");
        let tree = settled_tree(&dest);
        let files: Vec<_> = tree.iter().filter(|(p, d)| d.is_some() && !temporaries(&tree).contains(p)).collect();
        for (path, data) in &files {
            assert_eq!(data.as_ref(), want.get(*path).and_then(|d| d.as_ref()), "{path}");
        }
        assert!(!files.is_empty(), "{engine}: the file seen before the signal is gone");
    }
}

#[test]
fn an_interrupt_while_the_results_are_written_quits_at_once() {
    let objs: Vec<(String, Bytes)> = ["a", "b/c"].iter().map(|k| (k.to_string(), content(k, 100))).collect();
    let env = Env::new(vec![bucket("after", objs)]);
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let mut child = env
        .cmd()
        .args(["--stats-json"])
        .arg(fifo(&scratch))
        .arg("s3://after")
        .arg(&dest)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Both files are written before the results: then the run blocks on the FIFO.
    assert!(blocked_on_the_fifo(&mut child), "the run cannot end by itself");
    assert!(dest.join("a").is_file() && dest.join("b/c").is_file());
    signal(&child, "INT");
    let (code, err) = exited_within_a_minute(&mut child);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted after the run: quitting now"), "{err}");
}
