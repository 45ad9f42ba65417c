//! `--fsync`, seen in what the binary asks of the kernel: each file's data is synced before
//! the file is renamed to its final name, and each directory that gained an entry is synced
//! after its last rename, before the run ends. The thread pool's system calls are read with
//! strace; the ring's requests with the kernel's `io_uring:io_uring_submit_req` tracepoint
//! (through perf), since the ring's operations are not system calls.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;

use crate::util::*;

const TMP: &str = ".s3uring-tmp.";

fn installed(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// strace's lines with a call another thread interrupted (`<unfinished ...>`, then
/// `<... name resumed>`) joined into one, at the place it completed.
fn whole_calls(trace: &str) -> Vec<String> {
    let mut pending: HashMap<&str, String> = HashMap::new();
    let mut calls = Vec::new();
    for line in trace.lines() {
        let (pid, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim_start();
        if let Some(start) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, start.to_owned());
        } else if let Some((_, tail)) = rest.split_once(" resumed>") {
            calls.push(format!("{}{tail}", pending.remove(pid).unwrap_or_default()));
        } else {
            calls.push(rest.to_owned());
        }
    }
    calls
}

/// The paths strace's `-y` printed for a call's descriptors (`7</dest/a/.s3uring-tmp.…>`)
/// and its quoted names, in order.
fn paths_and_names(call: &str) -> (Vec<PathBuf>, Vec<String>) {
    let paths = call.split('<').skip(1).filter_map(|p| p.split_once('>')).map(|(p, _)| PathBuf::from(p)).collect();
    let names = call.split('"').skip(1).step_by(2).map(str::to_owned).collect();
    (paths, names)
}

/// Checks a `-f -y` trace of fsync, fdatasync, renameat and renameat2: every rename of a
/// temporary to a final name comes after a sync of that temporary, and every directory that
/// received a file, and each of its ancestors up to DEST, is synced after its last such
/// rename. Returns the renames.
fn check_trace(calls: &[String], dest: &Path) -> usize {
    let (mut synced, mut last_rename, mut last_sync) = (HashSet::new(), HashMap::new(), HashMap::new());
    let mut renames = 0;
    for (at, call) in calls.iter().enumerate().filter(|(_, c)| c.ends_with("= 0")) {
        let (paths, names) = paths_and_names(call);
        let Some(path) = paths.first() else { continue };
        if call.starts_with("fdatasync(") || call.starts_with("fsync(") {
            synced.insert(path.clone());
            last_sync.insert(path.clone(), at);
        } else if call.starts_with("renameat") && names.len() == 2 && names[0].starts_with(TMP) {
            if names[1].starts_with(TMP) {
                continue; // the run's lock file
            }
            assert!(synced.contains(&path.join(&names[0])), "renamed before its data was synced: {call}");
            last_rename.insert(path.clone(), at);
            renames += 1;
        }
    }
    assert!(renames == 0 || last_rename.contains_key(dest), "no rename into {}: {last_rename:?}", dest.display());
    for (dir, renamed) in &last_rename {
        for d in dir.ancestors().take_while(|d| d.starts_with(dest)) {
            let at = last_sync.get(d).copied();
            assert!(
                at.is_some_and(|s| s > *renamed),
                "{} not synced after a rename into {}",
                d.display(),
                dir.display()
            );
        }
    }
    renames
}

fn objects() -> Vec<(String, Bytes)> {
    ["top", "a/f", "a/b/f", "a/b/c/f", "d/f"]
        .iter()
        .flat_map(|p| (0..12).map(move |i| format!("{p}{i}")))
        .map(|k| (k.clone(), content(&k, 500 + k.len())))
        .collect()
}

#[test]
fn fsync_syncs_each_file_before_its_rename_and_each_directory_after_its_last_rename() {
    if !installed("strace") {
        skipped("strace is not installed (.ci/run installs it): --fsync's system calls not checked");
        return;
    }
    let objs = objects();
    let env = Env::new(vec![bucket("durable", objs.clone())]);
    let scratch = Scratch::new();
    // One writer thread: file syncs and renames in one order.
    let trace = scratch.dir.path().join("strace.txt");
    let dest = scratch.dir.path().join("threads");
    let mut cmd = env.cmd();
    cmd.args(["-q", "--io-engine", "threads", "--io-threads", "1", "--fsync", "s3://durable"]).arg(&dest);
    let strace = ["strace", "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,renameat,renameat2", "-o"];
    let out = run(&mut wrapped(&[&strace[..], &[trace.to_str().unwrap()]].concat(), &cmd));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_tree(&read_tree(&dest), &expected_tree(&objs, ""));
    let calls = whole_calls(&std::fs::read_to_string(&trace).unwrap());
    // strace prints paths with symlinks resolved (a TMPDIR may be one).
    assert_eq!(check_trace(&calls, &dest.canonicalize().unwrap()), objs.len(), "one rename per object");
    ring_fsyncs_before_renames(&env, &scratch, &objs);
}

/// The ring: its FSYNC requests are submitted (linked after the file's writes) before the
/// rename of each file, counted on the kernel's tracepoint; directories are synced by system
/// calls, checked with strace as for the thread pool.
fn ring_fsyncs_before_renames(env: &Env, scratch: &Scratch, objs: &[(String, Bytes)]) {
    if let Err(why) = s3uring::writer::uring::available() {
        return skipped(&format!("io_uring unavailable here ({why}): the ring's FSYNCs not checked"));
    }
    if !installed("perf") {
        return skipped("perf is not installed: the ring's FSYNCs not checked");
    }
    let data = scratch.dir.path().join("perf.data");
    let trace = scratch.dir.path().join("ring-strace.txt");
    let dest = scratch.dir.path().join("uring");
    let mut cmd = env.cmd();
    cmd.args(["-q", "--io-engine", "uring", "--fsync", "s3://durable"]).arg(&dest);
    let perf = ["perf", "record", "-q", "-e", "io_uring:io_uring_submit_req", "-o", data.to_str().unwrap(), "--"];
    let strace = ["strace", "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,renameat,renameat2", "-o"];
    let out = run(&mut wrapped(&[&perf[..], &strace[..], &[trace.to_str().unwrap()]].concat(), &cmd));
    if !out.status.success() && !dest.exists() {
        // perf missing, or not allowed to read tracepoints here.
        return skipped(&format!("perf cannot trace io_uring here: the ring's FSYNCs not checked: {}", stderr(&out)));
    }
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_tree(&read_tree(&dest), &expected_tree(objs, ""));
    let calls = whole_calls(&std::fs::read_to_string(&trace).unwrap());
    let dest = dest.canonicalize().unwrap();
    assert_eq!(check_trace(&calls, &dest), 0, "the ring renames files itself, not by system calls");
    let script = Command::new("perf").args(["script", "-i"]).arg(&data).output().unwrap();
    let (mut fsyncs, mut renames) = (0, 0);
    for op in String::from_utf8_lossy(&script.stdout).lines().filter_map(|l| l.split("opcode ").nth(1)) {
        match op.split(',').next() {
            Some("FSYNC") => fsyncs += 1,
            Some("RENAMEAT") => {
                renames += 1;
                assert!(fsyncs >= renames, "rename {renames} submitted before its file's FSYNC");
            }
            _ => {}
        }
    }
    assert_eq!((fsyncs, renames), (objs.len(), objs.len()), "one FSYNC and one rename per file");
    ring_dirs_synced(&calls, &dest);
}

/// Under the ring the renames are not in the trace: every directory of the tree, and DEST,
/// must be synced (the writer syncs them once all files are in place).
fn ring_dirs_synced(calls: &[String], dest: &Path) {
    let synced: HashSet<PathBuf> = calls
        .iter()
        .filter(|c| c.starts_with("fsync(") && c.ends_with("= 0"))
        .flat_map(|c| paths_and_names(c).0)
        .collect();
    for dir in ["", "a", "a/b", "a/b/c", "d"] {
        assert!(synced.contains(&dest.join(dir).components().collect::<PathBuf>()), "'{dir}' never synced");
    }
}
