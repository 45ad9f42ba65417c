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

#[test]
fn one_object_copies_to_a_file_or_into_a_directory_and_by_version() {
    let objs = mixed();
    let key = "data/img/f3.jpg";
    let old = Bytes::from_static(b"the old version");
    let env = Env::with_config(
        s3uring::endpoint::EndpointConfig {
            buckets: vec![bucket("one", objs.clone())],
            versions: vec![(key.to_owned(), "v1".to_owned(), old.clone())],
            ..Default::default()
        },
        true,
    );
    let want = objs.iter().find(|(k, _)| k == key).map(|(_, b)| b.to_vec()).unwrap();
    for e in engines() {
        let scratch = Scratch::new();
        // Into an existing directory: its base name.
        std::fs::create_dir_all(scratch.dest()).unwrap();
        let out = run(env.cmd().args(e.args()).arg(format!("s3://one/{key}")).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}");
        assert_eq!(std::fs::read(scratch.dest().join("f3.jpg")).unwrap(), want);
        assert_eq!(read_tree(&scratch.dest()).len(), 1, "only that object");
        // To a file path (its directory created), and an older version by id.
        let file = scratch.dir.path().join("new/dir/photo.jpg");
        let out = run(env.cmd().args(e.args()).arg(format!("s3://one/{key}")).arg(&file));
        assert_eq!(out.status.code(), Some(0), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), want);
        let out = run(env.cmd().args(e.args()).args(["--version-id", "v1"]).arg(format!("s3://one/{key}")).arg(&file));
        assert_eq!(out.status.code(), Some(0), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), old.to_vec(), "{e}: the old version");
    }
    // A prefix is still a prefix; --version-id needs an object.
    let scratch = Scratch::new();
    let out = run(env.cmd().arg("s3://one/data/img").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(read_tree(&scratch.dest()).len(), 24);
    let out = run(env.cmd().args(["--version-id", "v9"]).arg(format!("s3://one/{key}")).arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has no version 'v9'"), "{}", stderr(&out));
}
