//! Whole-tree copies: the destination equals the source byte for byte.

use bytes::Bytes;
use s3uring::endpoint::EndpointConfig;
use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;

use crate::util::*;

/// Nested prefixes, empty objects, folder markers, 10,000 small objects and a few of 1–20 MiB.
fn mixed_bucket() -> Vec<(String, Bytes)> {
    let mut objs = Vec::new();
    for i in 0..10_000usize {
        let key = format!("small/d{:02}/e{:02}/obj-{i:05}.bin", i % 17, i % 5);
        let size = (i * 37) % 9000;
        objs.push((key.clone(), content(&key, size)));
    }
    for (key, size) in [("large/one.bin", 1 << 20), ("large/five.bin", 5 << 20), ("large/twenty.bin", 20 << 20)] {
        objs.push((key.to_owned(), content(key, size)));
    }
    for key in ["empty.txt", "deep/a/b/c/d/e/empty"] {
        objs.push((key.to_owned(), Bytes::new()));
    }
    for key in ["markers/", "markers/only-a-folder/", "deep/a/"] {
        objs.push((key.to_owned(), Bytes::new()));
    }
    objs.push(("top-level.txt".to_owned(), Bytes::from_static(b"hello\n")));
    objs
}

#[test]
fn mixed_bucket_copies_byte_for_byte_with_each_engine() {
    let objs = mixed_bucket();
    let env = Env::new(vec![bucket("mixed", objs.clone())]);
    let want = expected_tree(&objs, "");
    copy_each_engine(&env, &[], "s3://mixed", 0, &want, |engine, err, scratch| {
        assert!(err.contains("10006 files written, 3 directories, 0 skipped, 0 failed"), "{err}");
        let engine_name = if engine.io == "uring" { "io_uring" } else { "threads" };
        assert!(err.contains(&format!("io: {engine_name}")), "{err}");
        assert!(err.contains(&format!("fetch: {}", engine.fetch)), "{err}");
        assert!(scratch.outside_dest().is_empty());
    });
}

#[test]
fn a_prefix_copies_only_that_prefix_relative_to_it() {
    let objs: Vec<(String, Bytes)> =
        ["images/a.jpg", "images/sub/b.jpg", "images/", "images2/c.jpg", "other/d", "imagesx"]
            .iter()
            .map(|k| (k.to_string(), if k.ends_with('/') { Bytes::new() } else { content(k, 100) }))
            .collect();
    let env = Env::new(vec![bucket("bkt", objs.clone())]);
    for source in ["s3://bkt/images", "s3://bkt/images/"] {
        let scratch = Scratch::new();
        let out = run(env.cmd().arg(source).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{source}");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, "images/"));
        assert!(read_tree(&scratch.dest()).contains_key("sub/b.jpg"));
    }
    // A nested prefix.
    let scratch = Scratch::new();
    let out = run(env.cmd().arg("s3://bkt/images/sub").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, "images/sub/"));
}

#[test]
fn extreme_concurrency_settings_give_the_same_tree() {
    let objs: Vec<(String, Bytes)> =
        (0..600).map(|i| format!("p{}/k{i:04}", i % 7)).map(|k| (k.clone(), content(&k, 1000 + k.len()))).collect();
    let env = Env::new(vec![bucket("conc", objs.clone())]);
    let want = expected_tree(&objs, "");
    for engine in engines() {
        for (workers, queue) in [("1", "1"), ("2000", "10")] {
            let scratch = Scratch::new();
            let out = run(env
                .cmd()
                .args(engine.args())
                .args(["--workers", workers, "--queue", queue, "s3://conc"])
                .arg(scratch.dest()));
            assert_eq!(out.status.code(), Some(0), "{engine} {workers}/{queue}");
            assert_same_tree(&read_tree(&scratch.dest()), &want);
        }
    }
}

#[test]
fn a_rerun_skips_complete_files_and_rewrites_stale_ones() {
    let objs: Vec<(String, Bytes)> = (0..50).map(|i| format!("d/k{i}")).map(|k| (k.clone(), content(&k, 64))).collect();
    let env = Env::new(vec![bucket("rerun", objs.clone())]);
    let want = expected_tree(&objs, "");
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        std::fs::create_dir_all(dest.join("d")).unwrap();
        std::fs::write(dest.join("d/k1"), b"stale").unwrap();
        // A file fetched again keeps the permissions its owner gave it, as `cp` onto an
        // existing file does (the new copy is created under another name, then renamed).
        let mode = |rel: &str| std::fs::metadata(dest.join(rel)).unwrap().permissions().mode() & 0o7777;
        let set_mode = |rel: &str, m: u32| std::fs::set_permissions(dest.join(rel), Permissions::from_mode(m)).unwrap();
        set_mode("d/k1", 0o600);
        let gets = || env.fault_counts().gets;
        let copy = |extra: &[&str]| {
            let before = gets();
            let out = run(env
                .cmd()
                .args(engine.args())
                .args(["--hedge-after", "0"])
                .args(extra)
                .arg("s3://rerun")
                .arg(&dest));
            assert_eq!(out.status.code(), Some(0), "{engine} {extra:?}");
            assert_same_tree(&read_tree(&dest), &want);
            (stderr(&out), gets() - before)
        };
        // First run: everything fetched, the stale file replaced.
        let (err, n) = copy(&[]);
        assert!(err.contains("50 files written, 0 directories, 0 skipped"), "{engine}: {err}");
        assert_eq!(n, 50);
        assert_eq!(mode("d/k1"), 0o600, "{engine}: the stale file's mode");
        assert_ne!(mode("d/k2"), 0o600, "{engine}: a new file's mode is the umask's");
        // Re-run: size and mtime match for every file, nothing is fetched.
        let (err, n) = copy(&[]);
        assert!(err.contains("0 files written, 0 directories, 50 skipped"), "{engine}: {err}");
        assert_eq!(n, 0, "{engine}");
        // Same size, other content and mtime: the mtime tells, only that one is fetched.
        std::fs::write(dest.join("d/k7"), vec![b'x'; 64]).unwrap();
        set_mode("d/k7", 0o640);
        let (err, n) = copy(&[]);
        assert!(err.contains("1 files written, 0 directories, 49 skipped"), "{engine}: {err}");
        assert_eq!(n, 1, "{engine}");
        assert_eq!(mode("d/k7"), 0o640, "{engine}");
        // --overwrite rewrites everything, the modes kept; --skip-existing trusts names alone.
        set_mode("d/k9", 0o4755);
        let (_, n) = copy(&["--overwrite"]);
        assert_eq!(n, 50, "{engine}");
        assert_eq!((mode("d/k1"), mode("d/k7")), (0o600, 0o640), "{engine}");
        assert_eq!(mode("d/k9"), 0o755, "{engine}: permissions kept, set-user-ID not");
        std::fs::remove_file(dest.join("d/k3")).unwrap();
        let (err, n) = copy(&["--skip-existing"]);
        assert!(err.contains("1 files written, 0 directories, 49 skipped"), "{engine}: {err}");
        assert_eq!(n, 1, "{engine}");
    }
}

#[test]
fn a_dest_that_is_a_symlink_to_a_directory_is_followed_in_every_mode() {
    // As `cp -r src link/` writes into the link's directory; below DEST no link is followed.
    let objs: Vec<(String, Bytes)> = (0..20).map(|i| format!("d/k{i}")).map(|k| (k.clone(), content(&k, 64))).collect();
    let env = Env::new(vec![bucket("linked", objs.clone())]);
    let want = expected_tree(&objs, "");
    let scratch = Scratch::new();
    let real = scratch.dest();
    std::fs::create_dir_all(&real).unwrap();
    let link = scratch.dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for (extra, written) in [(&[][..], 20), (&[][..], 0), (&["--overwrite"][..], 20), (&["--skip-existing"][..], 0)] {
        let out = run(env.cmd().args(extra).arg("s3://linked").arg(&link));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {err}");
        assert!(err.contains(&format!("{written} files written")), "{extra:?}: {err}");
        assert_same_tree(&read_tree(&real), &want);
    }
}

#[test]
fn quiet_prints_nothing_on_success() {
    let objs = vec![("a".to_owned(), content("a", 10))];
    let env = Env::new(vec![bucket("quiet", objs)]);
    let scratch = Scratch::new();
    let out = run(env.cmd().args(["-q", "s3://quiet"]).arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), "");
    assert!(out.stdout.is_empty());
}

/// The dotted paths of an object's fields, recursively (`stages.*.p50_us`: one stage's fields
/// stand for all; arrays are leaves, their elements described in the README's prose).
fn json_paths(v: &serde_json::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    let Some(map) = v.as_object() else { return };
    for (key, child) in map {
        let path = match prefix {
            "" => key.clone(),
            "stages" => "stages.*".to_owned(),
            _ => format!("{prefix}.{key}"),
        };
        if key != "..." {
            out.insert(path.clone());
            json_paths(child, &path, out);
        }
    }
}

#[test]
fn stats_json_and_progress_lines_describe_the_run() {
    let objs: Vec<(String, Bytes)> =
        (0..300).map(|i| format!("s/k{i:03}")).map(|k| (k.clone(), content(&k, 500))).collect();
    let env = Env::new(vec![bucket("stats", objs)]);
    let scratch = Scratch::new();
    let json_path = scratch.dir.path().join("stats.json");
    let out = run(env
        .cmd()
        .args(["--progress-interval", "0.001", "--stats-json"])
        .arg(&json_path)
        .arg("s3://stats")
        .arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    // Not a terminal: plain progress lines, then the summary and the stage table.
    assert!(err.lines().any(|l| l.starts_with("progress: ") && l.contains("objects")), "{err}");
    assert!(err.contains("stage        count"), "{err}");
    let doc = stats(&json_path);
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["counters"]["written"], 300);
    assert_eq!(doc["counters"]["failed"], 0);
    // The defaults a run reports are the ones the README's flag table documents.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let documented_default = |flag: &str| -> u64 {
        let row = readme.lines().find(|l| l.starts_with(&format!("| `{flag} N` |"))).expect(flag);
        row.split('|').nth(2).and_then(|d| d.trim().parse().ok()).unwrap_or_else(|| panic!("{row}"))
    };
    assert_eq!(doc["config"]["workers"], documented_default("--workers"));
    assert!(doc["io_engine"].is_string());
    assert_eq!(doc["fetch_engine"], "lean");
    assert_eq!(doc["config"]["retries"], documented_default("--retries"));
    assert!(doc["fetch"]["connections_opened"].as_u64().unwrap() >= 1);
    assert!(doc["throughput"]["objects_per_s"].as_f64().unwrap() > 0.0);
    for stage in ["queue", "ttfb", "body", "handoff", "write", "total"] {
        assert_eq!(doc["stages"][stage]["count"], 300, "{stage}");
        let s = &doc["stages"][stage];
        let us = |p: &str| s[p].as_u64().unwrap_or_else(|| panic!("stages.{stage}.{p}: {s}"));
        assert!(us("p50_us") <= us("p99_us") && us("p99_us") <= us("max_us"), "{stage}: {s}");
    }
    // Every field is documented, and every documented field is there: the README's example
    // is the list scripts rely on.
    let example = readme
        .split("### Stats JSON")
        .nth(1)
        .and_then(|rest| rest.split("```json").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the README's Stats JSON example");
    let documented: serde_json::Value = serde_json::from_str(example).expect("the README's example is JSON");
    let (mut have, mut want) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    json_paths(&doc, "", &mut have);
    json_paths(&documented, "", &mut want);
    let missing: Vec<_> = want.difference(&have).collect();
    let undocumented: Vec<_> = have.difference(&want).collect();
    assert!(missing.is_empty() && undocumented.is_empty(), "missing: {missing:?}; undocumented: {undocumented:?}");
    // One request per "directory" scope of the parallel listing (at least the root).
    assert!(doc["stages"]["list"]["count"].as_u64().unwrap() >= 1);
    assert_eq!(doc["config"]["list_workers"], documented_default("--list-workers"));
    // The quiet run prints no progress.
    let out =
        run(env.cmd().args(["-q", "--progress-interval", "0.001", "s3://stats"]).arg(scratch.dir.path().join("q")));
    assert_eq!(stderr(&out), "");
}

#[test]
fn tune_sweeps_a_grid_and_writes_csv_markdown_and_svg() {
    let objs: Vec<(String, Bytes)> =
        (0..200).map(|i| format!("t/k{i:03}")).map(|k| (k.clone(), content(&k, 300))).collect();
    let env = Env::new(vec![bucket("tune-me", objs)]);
    let scratch = Scratch::new();
    let out_dir = scratch.dir.path().join("results");
    let mut cmd = bare_cmd();
    cmd.env("AWS_ACCESS_KEY_ID", AK).env("AWS_SECRET_ACCESS_KEY", SK);
    let out = run(cmd
        .args(["tune", "--endpoint-url", &env.url, "--workers", "4,32", "--queue", "1,100", "--repeat", "2", "--out"])
        .arg(&out_dir)
        .arg("s3://tune-me")
        .arg(scratch.dir.path().join("scratch")));
    assert_eq!(out.status.code(), Some(0));
    let csv = std::fs::read_to_string(out_dir.join("tune.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 8, "2 workers × 2 queues × 2 repeats: {csv}");
    for row in &rows {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!((f[3], f[4]), ("200", "0"), "every cell copied all 200 objects: {row}");
    }
    let md = std::fs::read_to_string(out_dir.join("tune.md")).unwrap();
    assert!(md.contains("**best**") && md.contains("| 32 | 100 |"), "{md}");
    let svg = std::fs::read_to_string(out_dir.join("tune.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("--queue 100"), "{}", &svg[..200.min(svg.len())]);
    // Cells clean up after themselves.
    let left = std::fs::read_dir(scratch.dir.path().join("scratch")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0);
}

#[test]
fn without_io_uring_auto_falls_back_once_and_uring_refuses_clearly() {
    let objs: Vec<(String, Bytes)> =
        (0..30).map(|i| format!("fb/k{i}")).map(|k| (k.clone(), content(&k, 100))).collect();
    let env = Env::new(vec![bucket("fallback", objs.clone())]);
    let scratch = Scratch::new();
    // S3URING_DISABLE_URING makes the probe fail as on a kernel or sandbox without io_uring.
    // `auto` only wants the ring with --fsync; a plain copy uses the thread pool unprobed.
    let out = run(env.cmd().env("S3URING_DISABLE_URING", "1").arg("s3://fallback").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert_eq!(err.matches("io_uring is unavailable").count(), 0, "{err}");
    assert!(err.contains("io: threads"), "{err}");
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));

    let synced = scratch.dir.path().join("synced");
    let out = run(env.cmd().env("S3URING_DISABLE_URING", "1").args(["--fsync", "s3://fallback"]).arg(&synced));
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert_eq!(err.matches("io_uring is unavailable").count(), 1, "{err}");
    assert!(err.contains("io: threads"), "{err}");
    assert_same_tree(&read_tree(&synced), &expected_tree(&objs, ""));

    let other = scratch.dir.path().join("other");
    let out =
        run(env.cmd().env("S3URING_DISABLE_URING", "1").args(["--io-engine", "uring", "s3://fallback"]).arg(&other));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--io-engine uring: disabled by S3URING_DISABLE_URING"), "{}", stderr(&out));
    assert!(!other.exists(), "a setup error left DEST behind");
}

#[test]
fn fsync_and_verify_give_the_same_tree_with_each_engine() {
    let objs: Vec<(String, Bytes)> =
        (0..300).map(|i| format!("s{}/f{i}", i % 9)).map(|k| (k.clone(), content(&k, 1000 + k.len()))).collect();
    let env = Env::new(vec![bucket("durable", objs.clone())]);
    for engine in engines() {
        let scratch = Scratch::new();
        let json = scratch.dir.path().join("stats.json");
        let out = run(env
            .cmd()
            .args(engine.args())
            .args(["--fsync", "--verify", "--stats-json"])
            .arg(&json)
            .arg("s3://durable")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{engine}");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let doc = stats(&json);
        assert_eq!(doc["verify"]["by_checksum"], 300, "{engine}");
    }
}

#[test]
fn a_named_profile_supplies_the_region_the_endpoint_and_the_credentials() {
    // As `aws --profile restore s3 cp` would: nothing on the command line but the profile.
    let objs: Vec<(String, Bytes)> =
        (0..10).map(|i| format!("p/k{i}")).map(|k| (k.clone(), content(&k, 100))).collect();
    // Signed for any region but the profile's, the endpoint refuses, as S3 does.
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("profiled", objs.clone())],
            region: Some("us-east-1".into()),
            ..Default::default()
        },
        true,
    );
    let scratch = Scratch::new();
    let config = scratch.dir.path().join("config");
    let profile = format!(
        "[default]\nregion = eu-west-3\n\n[profile restore]\nregion = us-east-1\nendpoint_url = {}\n\
         aws_access_key_id = {AK}\naws_secret_access_key = {SK}\n",
        env.url
    );
    std::fs::write(&config, profile).unwrap();
    for fetch in FETCH_ENGINES {
        let dest = scratch.dir.path().join(fetch);
        let mut cmd = bare_cmd();
        cmd.env("AWS_CONFIG_FILE", &config).env_remove("AWS_REGION");
        let out = run(cmd.args(["--profile", "restore", "--fetch-engine", fetch, "s3://profiled"]).arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&dest), &expected_tree(&objs, ""));
        // Without the profile: no credentials (the default profile has none), said so.
        let mut cmd = bare_cmd();
        cmd.env("AWS_CONFIG_FILE", &config).env_remove("AWS_REGION");
        let out = run(cmd.args(["--fetch-engine", fetch, "s3://profiled"]).arg(scratch.dir.path().join("none")));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{fetch}: {err}");
        assert!(err.contains("no usable AWS credentials"), "{fetch}: {err}");
        assert!(!err.trim_end().ends_with("Attempted:"), "{fetch}: a sentence that ends: {err}");
    }
}

#[test]
fn the_region_signed_for_is_the_given_one_and_a_wrong_one_is_named() {
    let objs: Vec<(String, Bytes)> =
        (0..10).map(|i| format!("r/k{i}")).map(|k| (k.clone(), content(&k, 100))).collect();
    let env = Env::with_config(
        EndpointConfig {
            buckets: vec![bucket("regional", objs.clone())],
            region: Some("eu-west-1".into()),
            ..Default::default()
        },
        true,
    );
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        // The environment's AWS_REGION (us-east-1): refused, and the run says what to do.
        let out = run(env.cmd().args(["--fetch-engine", fetch, "s3://regional"]).arg(scratch.dest()));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{fetch}: {err}");
        assert!(err.contains("the bucket is in another region (set --region)"), "{fetch}: {err}");
        assert!(err.contains("expecting 'eu-west-1'"), "{fetch}: the right region named: {err}");
        // --region wins over the environment.
        let out = run(env
            .cmd()
            .args(["--region", "eu-west-1", "--fetch-engine", fetch, "s3://regional"])
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
    }
}
