//! Which keys a run copies: `--include`/`--exclude` (AWS CLI order semantics), `--shard I/N`
//! (the union of the shards is the bucket, no key twice), `--dry-run` (nothing fetched).

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::util::*;

fn mixed() -> Vec<(String, Bytes)> {
    let mut v = Vec::new();
    for i in 0..12 {
        for (dir, ext) in [("img", "jpg"), ("img", "png"), ("thumbs", "jpg"), ("tmp", "txt")] {
            let k = format!("data/{dir}/f{i}.{ext}");
            v.push((k.clone(), content(&k, 100 + i)));
        }
    }
    v
}

#[test]
fn include_and_exclude_apply_in_order_and_later_rules_win() {
    let objs = mixed();
    let env = Env::new(vec![bucket("filters", objs.clone())]);
    let scratch = Scratch::new();
    let out = run(env
        .cmd()
        .args([
            "--hedge-after",
            "0",
            "--exclude",
            "*",
            "--include",
            "*.jpg",
            "--exclude",
            "thumbs/*",
            "s3://filters/data/",
        ])
        .arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    let want: Vec<_> =
        objs.iter().filter(|(k, _)| k.starts_with("data/img/") && k.ends_with(".jpg")).cloned().collect();
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&want, "data/"));
    let err = stderr(&out);
    assert!(err.contains("12 keys listed: 12 files written") && err.contains("(36 more left out by"), "{err}");
    assert_eq!(env.fault_counts().gets, 12, "excluded keys are never fetched");
}

#[test]
fn shards_split_the_bucket_with_no_key_twice() {
    let objs = mixed();
    let env = Env::new(vec![bucket("sharded", objs.clone())]);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut total = 0;
    let mut shard1 = None;
    for i in 0..3 {
        let scratch = Scratch::new();
        let out = run(env.cmd().args(["--shard", &format!("{i}/3"), "s3://sharded"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0));
        let tree = read_tree(&scratch.dest());
        let files: Vec<String> = tree.iter().filter(|(_, d)| d.is_some()).map(|(p, _)| p.clone()).collect();
        assert!(!files.is_empty() && files.len() < objs.len(), "shard {i} has {} files", files.len());
        total += files.len();
        seen.extend(files);
        if i == 1 {
            shard1 = Some(tree);
        }
    }
    assert_eq!(total, objs.len(), "no key twice");
    assert_eq!(seen, objs.iter().map(|(k, _)| k.clone()).collect::<BTreeSet<_>>(), "every key once");
    // The index can come from a Kubernetes Indexed Job's environment.
    let scratch = Scratch::new();
    let out =
        run(env.cmd().env("JOB_COMPLETION_INDEX", "1").args(["--shard", "env/3", "s3://sharded"]).arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(Some(read_tree(&scratch.dest())), shard1);
    let out = run(env.cmd().args(["--shard", "3/3", "s3://sharded"]).arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--shard '3/3': I = 3 must be below N = 3"), "{}", stderr(&out));
}

#[test]
fn dry_run_lists_what_would_be_copied_and_touches_nothing() {
    let objs = mixed();
    let env = Env::new(vec![bucket("dry", objs.clone())]);
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let out = run(env.cmd().args(["--dry-run", "--include", "*", "--exclude", "tmp/*", "s3://dry/data"]).arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert!(!dest.exists(), "DEST was created");
    assert_eq!(env.fault_counts().gets, 0, "nothing fetched");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 36, "{stdout}");
    let first = format!("(dryrun) download: s3://dry/data/img/f0.jpg to {}", dest.join("img/f0.jpg").display());
    assert!(lines.contains(&first.as_str()), "{stdout}");
    assert!(stderr(&out).contains("dry run: 36 objects"), "{}", stderr(&out));
    // After a real copy, a dry run says everything would be skipped.
    assert_eq!(run(env.cmd().arg("s3://dry/data").arg(&dest)).status.code(), Some(0));
    let out = run(env.cmd().args(["--dry-run", "s3://dry/data"]).arg(&dest));
    assert!(stderr(&out).contains("dry run: 0 objects (0.0 MiB) would be copied, 48 already in DEST would be skipped"));
}
