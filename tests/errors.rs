//! Bad input and broken surroundings: one clear line, the right exit code, nothing lost.

use crate::util::*;

fn small_env() -> Env {
    Env::new(vec![bucket("there", vec![("k".to_owned(), content("k", 10))])])
}

fn assert_one_line_error(out: &std::process::Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code));
    let err = stderr(out);
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("RUST_BACKTRACE"), "{err}");
}

#[test]
fn a_missing_bucket_is_named() {
    let env = small_env();
    let scratch = Scratch::new();
    let out = run(env.cmd().arg("s3://not-there").arg(scratch.dest()));
    assert_one_line_error(&out, 2, "bucket 'not-there' does not exist");
    assert_eq!(stderr(&out).lines().count(), 1);
    assert!(!scratch.dest().exists(), "a failed setup left DEST behind");
}

#[test]
fn wrong_credentials_are_rejected_clearly() {
    let env = small_env();
    let scratch = Scratch::new();
    let out = run(env.cmd().env("AWS_SECRET_ACCESS_KEY", "wrong-secret").arg("s3://there").arg(scratch.dest()));
    assert_one_line_error(&out, 2, "credentials were rejected");
    let out = run(env.cmd().env("AWS_ACCESS_KEY_ID", "nobody").arg("s3://there").arg(scratch.dest()));
    assert_one_line_error(&out, 2, "credentials were rejected");
    // Anonymous requests to a bucket that requires signing.
    let out = run(env.cmd().arg("--no-sign-request").arg("s3://there").arg(scratch.dest()));
    assert_one_line_error(&out, 2, "AccessDenied");
}

#[test]
fn missing_credentials_say_how_to_provide_them() {
    let env = small_env();
    let scratch = Scratch::new();
    let out = run(bare_cmd().args(["--endpoint-url", &env.url, "s3://there"]).arg(scratch.dest()));
    assert_one_line_error(&out, 2, "no usable AWS credentials");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn an_unreachable_endpoint_is_named() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let scratch = Scratch::new();
    let out = run(bare_cmd()
        .env("AWS_ACCESS_KEY_ID", AK)
        .env("AWS_SECRET_ACCESS_KEY", SK)
        .args(["--endpoint-url", &format!("http://127.0.0.1:{port}"), "s3://b"])
        .arg(scratch.dest()));
    assert_one_line_error(&out, 2, "cannot connect");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2_before_any_request() {
    let scratch = Scratch::new();
    let file = scratch.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // No endpoint exists at all: these must fail before trying one.
    let url = ["--endpoint-url", "http://127.0.0.1:9"];
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["bucket/prefix".into(), "d".into()], "is not an s3:// URL"),
        (vec!["s3://".into(), "d".into()], "has no bucket name"),
        (vec!["s3://b".into(), file.to_str().unwrap().into()], "exists and is not a directory"),
        (vec!["--workers".into(), "0".into(), "s3://b".into(), "d".into()], "--workers"),
        (vec!["--queue".into(), "0".into(), "s3://b".into(), "d".into()], "--queue"),
        (vec!["--io-engine".into(), "magic".into(), "s3://b".into(), "d".into()], "--io-engine"),
        (vec!["--endpoint-url".into(), "localhost:9000".into(), "s3://b".into(), "d".into()], "not an http"),
        (vec!["s3://b".into()], "DEST"),
    ];
    for (args, needle) in cases {
        let mut c = bare_cmd();
        c.current_dir(scratch.dir.path());
        if !args.contains(&"--endpoint-url".to_owned()) {
            c.args(url);
        }
        let out = run(c.args(&args));
        assert_one_line_error(&out, 2, needle);
    }
    assert!(!scratch.dir.path().join("d").exists(), "a usage error created DEST");
}

/// A read-only subtree inside DEST (a read-only tmpfs mounted at DEST/ro: root ignores
/// permission bits): its keys fail with the path and the cause, the others are copied.
#[test]
fn a_read_only_subtree_fails_its_keys_with_the_path_and_the_rest_is_copied() {
    let ok: Vec<_> = (0..10).map(|i| format!("ok/k{i}")).map(|k| (k.clone(), content(&k, 10))).collect();
    let ro: Vec<_> = (0..5)
        .map(|i| format!("ro/k{i}"))
        .chain((0..5).map(|i| format!("ro/sub/k{i}")))
        .map(|k| (k.clone(), content(&k, 10)))
        .collect();
    let env = Env::new(vec![bucket("read-only", ok.iter().chain(&ro).cloned().collect())]);
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        std::fs::create_dir_all(dest.join("ro")).unwrap();
        let Some(_mount) = Mount::tmpfs(&dest.join("ro"), "ro,size=1m") else {
            skipped("cannot mount a read-only tmpfs here (needs root and mount permission)");
            return;
        };
        let out = run(env.cmd().args(engine.args()).args(["s3://read-only"]).arg(&dest));
        assert_eq!(out.status.code(), Some(1), "{engine}");
        let err = stderr(&out);
        assert!(err.contains("10 files written, 0 directories, 0 skipped, 10 failed"), "{engine}: {err}");
        assert!(err.contains("'ro/k3': read-only file system"), "the file's path is named: {err}");
        assert!(err.contains("cannot create directory 'ro/sub': read-only file system"), "{err}");
        let mut want = expected_tree(&ok, "");
        want.insert("ro".to_owned(), None); // the mount point itself, empty
        assert_same_tree(&read_tree(&dest), &want);
    }
}

/// A tmpfs too small for the bucket: the files that fit are complete, the run stops at the
/// first "no space left on device" instead of failing every remaining key one by one, no
/// partial file has a final name, no temporary is left, exit 1.
#[test]
fn a_full_disk_stops_the_run_quickly_and_leaves_no_partial_file() {
    let n = 300;
    let objs: Vec<(String, bytes::Bytes)> =
        (0..n).map(|i| format!("f{i:03}")).map(|k| (k.clone(), content(&k, 100 * 1024))).collect();
    let env = Env::new(vec![bucket("full-disk", objs.clone())]);
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        std::fs::create_dir_all(&dest).unwrap();
        let Some(_mount) = Mount::tmpfs(&dest, "size=1m") else {
            skipped("cannot mount a small tmpfs here (needs root and mount permission)");
            return;
        };
        let out = run(env.cmd().args(engine.args()).args(["--workers", "8", "s3://full-disk"]).arg(&dest));
        let tree = read_tree(&dest);
        assert_eq!(out.status.code(), Some(1), "{engine}");
        let err = stderr(&out);
        assert!(err.contains("s3uring: stopping: ") && err.contains("no space left on device"), "{err}");
        let written = tree.len();
        assert!(written > 0 && written < 20, "{written} files fit");
        let failed: usize = err
            .lines()
            .find_map(|l| l.strip_suffix(" failed").and_then(|l| l.rsplit(", ").next()).and_then(|v| v.parse().ok()))
            .expect("summary line");
        // Only what was already in flight fails; the rest is not even fetched.
        assert!(failed > 0 && failed < 100, "{engine}: {failed} failed one by one");
        let not_copied = n - written - failed;
        assert!(err.contains(&format!("{not_copied} listed keys were not copied")), "{engine}: {err}");
        for (path, data) in &tree {
            assert!(!path.starts_with(".s3uring-tmp."), "temporary left: {path}");
            assert_eq!(data.as_deref(), Some(&content(path, 100 * 1024)[..]), "{path} is partial");
        }
    }
}

#[test]
fn the_secret_key_appears_in_no_output_even_at_debug_level() {
    // Debug logs, the stats JSON and the failed-keys list of a run with failures, retries and
    // a rejected secret: none holds the secret (signatures are derived from it, and are in
    // no output either).
    let objs = vec![("ok".to_owned(), content("ok", 10)), ("no".to_owned(), content("no", 10))];
    let config = s3uring::endpoint::EndpointConfig {
        buckets: vec![bucket("secret", objs)],
        denied: vec!["no".to_owned()],
        faults: s3uring::endpoint::Faults { internal: 0.3, ..Default::default() },
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let (json, list) = (scratch.dir.path().join("stats.json"), scratch.dir.path().join("failed.txt"));
        let out = run(env
            .cmd()
            .env("RUST_LOG", "debug")
            .args(["-vv", "--fetch-engine", fetch, "--stats-json"])
            .arg(&json)
            .arg("--failed-keys")
            .arg(&list)
            .arg("s3://secret")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(1), "{fetch}");
        let rejected = run(env
            .cmd()
            .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
            .arg("-vv")
            .arg("s3://secret")
            .arg(scratch.dest()));
        let texts = [
            stderr(&out),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            std::fs::read_to_string(&json).unwrap_or_default(),
            std::fs::read_to_string(&list).unwrap_or_default(),
            stderr(&rejected),
        ];
        assert!(texts[0].len() > 1000, "{fetch}: debug logging was on: {}", texts[0]);
        for text in texts {
            assert!(!text.contains(SK) && !text.contains("wrong-secret-value"), "{fetch}: the secret in {text}");
            assert!(!text.contains("Signature="), "{fetch}: a signature in {text}");
        }
    }
}
