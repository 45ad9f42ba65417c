//! Promises kept outside our own endpoint's habits: the failed-keys loop, what SOURCE means,
//! keys that XML cannot carry, stores with sub-second timestamps.

use std::time::Duration;

use bytes::Bytes;
use s3uring::endpoint::EndpointConfig;

use crate::util::*;

fn objects(n: usize) -> Vec<(String, Bytes)> {
    (0..n).map(|i| format!("d{}/obj-{i:05}", i % 5)).map(|k| (k.clone(), content(&k, 500 + k.len()))).collect()
}

fn keys_in(list: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(list).unwrap();
    let mut keys: Vec<String> = text.lines().map(|l| l.split('\t').next().unwrap().to_owned()).collect();
    keys.sort();
    keys
}

#[test]
fn the_failed_keys_loop_on_one_file_shrinks_to_empty() {
    let objs = objects(40);
    let (denied, vanished) = (objs[3].0.clone(), objs[11].0.clone());
    let with = |denied: Vec<String>, vanished: Vec<String>| {
        let config =
            EndpointConfig { buckets: vec![bucket("loop", objs.clone())], denied, vanished, ..Default::default() };
        Env::with_config(config, true)
    };
    let (broken, half, healed) =
        (with(vec![denied.clone()], vec![vanished.clone()]), with(vec![denied.clone()], vec![]), with(vec![], vec![]));
    for e in engines() {
        let scratch = Scratch::new();
        let list = scratch.dir.path().join("failed.txt");
        let copy = |env: &Env, from_list: bool| {
            let mut c = env.cmd();
            c.args(e.args()).args(["--hedge-after", "0", "--failed-keys"]).arg(&list);
            if from_list {
                c.arg("--keys-from").arg(&list);
            }
            run(c.arg("s3://loop").arg(scratch.dest()))
        };
        let out = copy(&broken, false);
        assert_eq!(out.status.code(), Some(1), "{e}");
        let mut want = vec![denied.clone(), vanished.clone()];
        want.sort();
        assert_eq!(keys_in(&list), want, "{e}");
        // The same file read and written: read first, replaced at the end.
        let out = copy(&half, true);
        assert_eq!(out.status.code(), Some(1), "{e}");
        assert!(stderr(&out).contains("2 keys listed: 1 files written"), "{e}: {}", stderr(&out));
        assert_eq!(keys_in(&list), vec![denied.clone()], "{e}: the list shrinks to what still fails");
        let out = copy(&healed, true);
        assert_eq!(out.status.code(), Some(0), "{e}");
        assert!(stderr(&out).contains("1 keys listed: 1 files written"), "{e}: {}", stderr(&out));
        assert_eq!(std::fs::read_to_string(&list).unwrap(), "", "{e}: nothing left to retry");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let leftovers: Vec<_> = std::fs::read_dir(scratch.dir.path())
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{e}: {leftovers:?}");
    }
}

#[test]
fn a_dry_run_or_a_setup_error_leaves_the_failed_keys_file_alone() {
    let objs = objects(10);
    let env = Env::new(vec![bucket("alone", objs.clone())]);
    let scratch = Scratch::new();
    let list = scratch.dir.path().join("failed.txt");
    let old = format!("{}\tAccessDenied\n{}\tNoSuchKey\n", objs[1].0, objs[2].0);
    std::fs::write(&list, &old).unwrap();
    let dry = run(env
        .cmd()
        .args(["--dry-run", "--keys-from"])
        .arg(&list)
        .arg("--failed-keys")
        .arg(&list)
        .arg("s3://alone")
        .arg(scratch.dest()));
    assert_eq!(dry.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("(dryrun) download"), "the dry run read the list");
    assert_eq!(std::fs::read_to_string(&list).unwrap(), old, "a dry run copies nothing and keeps the list");
    // A setup error (DEST is a file): nothing copied, the list kept.
    let file_dest = scratch.dir.path().join("a-file");
    std::fs::write(&file_dest, b"x").unwrap();
    let bad = run(env
        .cmd()
        .args(["--keys-from"])
        .arg(&list)
        .arg("--failed-keys")
        .arg(&list)
        .arg("s3://alone")
        .arg(&file_dest));
    assert_eq!(bad.status.code(), Some(2), "a setup error");
    assert_eq!(std::fs::read_to_string(&list).unwrap(), old, "a setup error keeps the list");
    // Every key failing (the bucket is gone) is not a setup error, and loses no key either.
    let gone = run(env
        .cmd()
        .args(["--keys-from"])
        .arg(&list)
        .arg("--failed-keys")
        .arg(&list)
        .arg("s3://no-such-bucket")
        .arg(scratch.dest()));
    assert_eq!(gone.status.code(), Some(1));
    assert_eq!(keys_in(&list), vec![objs[1].0.clone(), objs[2].0.clone()]);
    assert!(std::fs::read_to_string(&list).unwrap().contains("NoSuchBucket"));
}

#[test]
fn an_interrupted_loop_keeps_every_key_it_did_not_copy() {
    let objs = objects(400);
    let config = EndpointConfig {
        buckets: vec![bucket("cut", objs.clone())],
        get_latency: Duration::from_millis(40),
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    let scratch = Scratch::new();
    let list = scratch.dir.path().join("failed.txt");
    let all: String = objs.iter().map(|(k, _)| format!("{k}\tan earlier failure\n")).collect();
    std::fs::write(&list, &all).unwrap();
    let child = env
        .cmd()
        .args(["--workers", "8", "--keys-from"])
        .arg(&list)
        .arg("--failed-keys")
        .arg(&list)
        .arg("s3://cut")
        .arg(scratch.dest())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted once the first file is in place: 400 GETs at 40 ms by 8 workers take 2 s
    // more, so most keys are still to come whatever the machine's speed.
    let started = std::time::Instant::now();
    while !any_file_named(&scratch.dest(), &|name| !name.starts_with(".s3uring-tmp.")) {
        assert!(started.elapsed() < Duration::from_secs(60), "no file was written");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ok = std::process::Command::new("kill").args(["-s", "INT", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let tree = read_tree(&scratch.dest());
    let copied = tree.values().filter(|d| d.is_some()).count();
    assert!(copied > 0 && copied < objs.len(), "interrupted too early or too late: {copied}");
    let kept = keys_in(&list);
    let missing: Vec<&String> = objs
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !tree.contains_key(k.as_str()) && kept.binary_search(k).is_err())
        .collect();
    assert!(missing.is_empty(), "keys neither copied nor kept in the list: {missing:?}");
}

#[test]
fn only_a_404_makes_source_a_prefix_and_an_object_that_is_also_a_prefix_is_not_guessed() {
    let objs: Vec<(String, Bytes)> =
        ["data", "data/x", "data/y/z", "secret", "other"].iter().map(|k| (k.to_string(), content(k, 100))).collect();
    let config = EndpointConfig {
        buckets: vec![bucket("src", objs.clone())],
        denied: vec!["secret".to_owned()],
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    // A 403 on the HEAD is reported, not taken for "a prefix with no keys".
    let scratch = Scratch::new();
    let out = run(env.cmd().arg("s3://src/secret").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot look at s3://src/secret: AccessDenied"), "{}", stderr(&out));
    assert!(!scratch.dest().exists(), "nothing created");
    // An object that is also a "directory": say which.
    let out = run(env.cmd().arg("s3://src/data").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("s3://src/data is an object and also a prefix of other keys (s3://src/data/x)"), "{err}");
    assert!(err.contains("end SOURCE with '/'"), "{err}");
    // A trailing '/' always means the prefix.
    let out = run(env.cmd().arg("s3://src/data/").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs[1..3], "data/"));
    // An object alone is copied as one file, a missing one (404) is a prefix.
    let single = Scratch::new();
    let out = run(env.cmd().arg("s3://src/other").arg(single.dest().join("o")));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(single.dest().join("o")).unwrap(), content("other", 100).to_vec());
}

#[test]
fn a_key_with_a_control_character_is_listed_and_copied_and_the_listing_goes_on() {
    // Keys sort: "a\x01b" < "a b" < "a+b" < "a%41" < "a~" < the ten after them.
    let mut keys: Vec<String> =
        ["k/a\u{1}b", "k/a b", "k/a+b", "k/a%41", "k/a\u{1f}~", "k/é\u{7f}"].map(String::from).to_vec();
    keys.extend((0..10).map(|i| format!("k/z{i}")));
    let objs: Vec<(String, Bytes)> = keys.iter().map(|k| (k.clone(), content(k, 300))).collect();
    let env = Env::new(vec![bucket("ctl", objs.clone())]);
    for list_workers in ["1", "8"] {
        let scratch = Scratch::new();
        let out = run(env.cmd().args(["--list-workers", list_workers, "s3://ctl/k/"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "--list-workers {list_workers}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, "k/"));
    }
    // A store that ignores encoding-type sends keys as they are: nothing is decoded twice.
    let plain: Vec<(String, Bytes)> = objs.iter().filter(|(k, _)| !k.contains(['\u{1}', '\u{1f}'])).cloned().collect();
    let config = EndpointConfig {
        buckets: vec![bucket("raw", plain.clone())],
        ignore_encoding_type: true,
        ..Default::default()
    };
    let raw = Env::with_config(config, true);
    let scratch = Scratch::new();
    let out = run(raw.cmd().args(["s3://raw/k/"]).arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&plain, "k/"));
    // Such a store sends a control character raw, which XML 1.0 does not allow. The lean
    // engine's reader takes the text as it is, and the SDK engine reads a page the SDK's
    // parser refused the same way: every key is listed and copied exactly by both.
    let config = EndpointConfig {
        buckets: vec![bucket("raw-ctl", objs.clone())],
        ignore_encoding_type: true,
        ..Default::default()
    };
    let raw = Env::with_config(config, true);
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let out = run(raw.cmd().args(["--fetch-engine", fetch, "s3://raw-ctl/k/"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "fetch {fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, "k/"));
    }
}

#[test]
fn a_control_character_key_goes_round_the_failed_keys_loop() {
    let objs: Vec<(String, Bytes)> = ["c/x\u{1}y", "c/plain"].iter().map(|k| (k.to_string(), content(k, 50))).collect();
    let config = EndpointConfig {
        buckets: vec![bucket("round-trip", objs.clone())],
        denied: vec!["c/x\u{1}y".into()],
        ..Default::default()
    };
    let (broken, healed) = (Env::with_config(config, true), Env::new(vec![bucket("round-trip", objs.clone())]));
    let scratch = Scratch::new();
    let list = scratch.dir.path().join("failed.txt");
    let out = run(broken.cmd().arg("--failed-keys").arg(&list).arg("s3://round-trip/c/").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("failed 'c/x\\u{1}y': AccessDenied"), "printed safely: {}", stderr(&out));
    assert_eq!(keys_in(&list), vec!["c/x\u{1}y".to_owned()]);
    let out = run(healed
        .cmd()
        .arg("--keys-from")
        .arg(&list)
        .arg("--failed-keys")
        .arg(&list)
        .arg("s3://round-trip/c/")
        .arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, "c/"));
}

/// The skipped and written counts of a run's summary line.
fn written_skipped(out: &std::process::Output) -> (u64, u64) {
    let err = stderr(out);
    let line = err.lines().find(|l| l.contains("keys listed:")).unwrap_or_else(|| panic!("no summary: {err}"));
    let num = |what: &str| -> u64 {
        let before = &line[..line.find(what).unwrap_or_else(|| panic!("no '{what}' in {line}"))];
        before.trim_end().rsplit([' ', ':', ',']).next().unwrap().parse().unwrap()
    };
    (num("files written"), num("skipped"))
}

fn mtime(path: &std::path::Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn a_store_listing_milliseconds_is_resumed_and_skipped() {
    let objs = objects(60);
    let config =
        EndpointConfig { buckets: vec![bucket("millis", objs.clone())], sub_second_times: true, ..Default::default() };
    let env = Env::with_config(config, true);
    for e in engines() {
        let scratch = Scratch::new();
        let copy = || run(env.cmd().args(e.args()).arg("s3://millis").arg(scratch.dest()));
        let out = copy();
        assert_eq!(out.status.code(), Some(0), "{e}");
        let t = mtime(&scratch.dest().join(&objs[0].0));
        let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().subsec_millis();
        assert_ne!(ms, 0, "{e}: the file's mtime is the listing's, with its milliseconds");
        let etag = rustix::fs::getxattr(scratch.dest().join(&objs[0].0).as_path(), "user.s3uring.etag", &mut [0u8; 64]);
        assert_eq!(etag.map(|n| n > 0), Ok(true), "{e}: the ETag is kept with the file");
        // A complete tree: nothing is fetched again.
        let gets = env.fault_counts().gets;
        let out = copy();
        assert_eq!(out.status.code(), Some(0), "{e}");
        assert_eq!(written_skipped(&out), (0, 60), "{e}");
        assert_eq!(env.fault_counts().gets, gets, "{e}: no GET for a complete tree");
        // A resume after a kill: some files missing, the rest skipped.
        for (k, _) in objs.iter().step_by(3) {
            std::fs::remove_file(scratch.dest().join(k)).unwrap();
        }
        let out = copy();
        assert_eq!(written_skipped(&out), (20, 40), "{e}");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
    }
}

#[test]
fn an_object_overwritten_in_the_same_second_with_the_same_size_is_copied_again() {
    let when = std::time::SystemTime::now();
    let before = objects(30);
    // Same keys, same sizes, other bytes, the same LastModified.
    let after: Vec<(String, Bytes)> =
        before.iter().map(|(k, v)| (k.clone(), Bytes::from(v.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>()))).collect();
    let serve = |objs: &Vec<(String, Bytes)>| {
        let config = EndpointConfig {
            buckets: vec![bucket("same-second", objs.clone())],
            last_modified: Some(when),
            ..Default::default()
        };
        Env::with_config(config, true)
    };
    let (old, new) = (serve(&before), serve(&after));
    for e in engines() {
        let scratch = Scratch::new();
        let out = run(old.cmd().args(e.args()).arg("s3://same-second").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}");
        let out = run(new.cmd().args(e.args()).arg("s3://same-second").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}");
        assert_eq!(written_skipped(&out), (30, 0), "{e}: size and time alike, the ETag tells");
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&after, ""));
    }
}

#[test]
fn a_file_system_without_extended_attributes_still_copies_and_resumes() {
    let objs = objects(40);
    let config = EndpointConfig {
        buckets: vec![bucket("no-xattr", objs.clone())],
        sub_second_times: true,
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    for e in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        std::fs::create_dir_all(&dest).unwrap();
        let Some(_mount) = Mount::new("ramfs", &dest, "mode=755") else {
            skipped("cannot mount ramfs here (needs root)");
            return;
        };
        let copy = || run(env.cmd().args(e.args()).arg("s3://no-xattr").arg(&dest));
        let out = copy();
        assert_eq!(out.status.code(), Some(0), "{e}");
        let err = stderr(&out);
        assert_eq!(err.matches("cannot keep the ETag").count(), 1, "{e}: one warning: {err}");
        assert_same_tree(&read_tree(&dest), &expected_tree(&objs, ""));
        // As an older copy left them: whole seconds. Still the same objects.
        for (k, _) in &objs {
            let p = dest.join(k);
            let secs = mtime(&p).duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
        }
        let out = copy();
        assert_eq!(written_skipped(&out), (0, 40), "{e}");
    }
}

#[test]
fn a_closed_stderr_does_not_kill_a_copy_and_absurd_progress_intervals_are_refused() {
    let objs = objects(50);
    let env = Env::new(vec![bucket("closed-stderr", objs.clone())]);
    let scratch = Scratch::new();
    // stderr is a pipe whose reader is gone: every line the copy prints fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = env
        .cmd()
        .args(["--progress-interval", "0.1", "s3://closed-stderr"])
        .arg(scratch.dest())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the copy finished");
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
    for bad in ["1e300", "0.0000001", "-1", "NaN", "inf"] {
        let out =
            run(env.cmd().arg(format!("--progress-interval={bad}")).arg("s3://closed-stderr").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(2), "--progress-interval {bad}");
        assert!(stderr(&out).contains("--progress-interval"), "{}", stderr(&out));
    }
}

#[test]
fn a_clock_twenty_minutes_off_is_learned_from_the_service_and_every_key_arrives() {
    let objs = objects(40);
    for offset in [20 * 60, -20 * 60] {
        let config = EndpointConfig {
            buckets: vec![bucket("skewed", objs.clone())],
            clock_offset_s: offset,
            ..Default::default()
        };
        let env = Env::with_config(config, true);
        let want = expected_tree(&objs, "");
        copy_each_engine(&env, &["--hedge-after", "0"], "s3://skewed", 0, &want, |_, _, _| {});
    }
}

#[test]
fn objects_of_unknown_size_are_fetched_in_parts_within_the_budget() {
    // --keys-from tells no size: a first ranged GET does (Content-Range), as for any large object.
    let size = 200u64 << 20;
    let env = Env::new(vec![
        s3uring::endpoint::BucketSpec {
            name: "unknown-size".to_owned(),
            contents: s3uring::endpoint::Contents::Generated {
                count: 1,
                size,
                prefixes: 1,
                layout: Default::default(),
            },
        },
        bucket("unknown-small", vec![("e/empty".into(), Bytes::new()), ("e/small".into(), content("e/small", 100))]),
    ]);
    let key = s3uring::endpoint::generated_key(0, 1);
    for fetch in ["lean", "sdk"] {
        let scratch = Scratch::new();
        let list = scratch.dir.path().join("keys.txt");
        std::fs::write(&list, format!("{key}\n")).unwrap();
        let stats = scratch.dir.path().join("stats.json");
        let gets = env.fault_counts().gets;
        let out = run(env
            .cmd()
            .args(["--fetch-engine", fetch, "--buffer-mib", "16", "--keys-from"])
            .arg(&list)
            .arg("--stats-json")
            .arg(&stats)
            .arg("s3://unknown-size")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        let file = scratch.dest().join(&key);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
        let data = std::fs::read(&file).unwrap();
        assert!(data[..1 << 20] == s3uring::endpoint::generated_range(&key, 0, 1 << 20)[..]);
        let tail = size - (1 << 20);
        assert!(data[tail as usize..] == s3uring::endpoint::generated_range(&key, tail, 1 << 20)[..]);
        // A first range of 256 KiB (most objects of unknown size are small), then 8 MiB parts.
        assert_eq!(env.fault_counts().gets - gets, 26, "{fetch}: 200 MiB in parts, no whole-object GET");
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
        let rss = doc["cpu"]["peak_rss_bytes"].as_u64().unwrap();
        assert!(
            rss < 150 << 20,
            "{fetch}: peak RSS {} MiB for 200 MiB of unknown size with --buffer-mib 16",
            rss >> 20
        );
        // An empty object (S3 cannot serve a range of it) and a small one.
        let small = Scratch::new();
        std::fs::write(&list, "e/empty\ne/small\n").unwrap();
        let out = run(env
            .cmd()
            .args(["--fetch-engine", fetch, "--keys-from"])
            .arg(&list)
            .arg("s3://unknown-small/e/")
            .arg(small.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_eq!(std::fs::read(small.dest().join("empty")).unwrap(), b"");
        assert_eq!(std::fs::read(small.dest().join("small")).unwrap(), content("e/small", 100).to_vec());
    }
}

#[test]
fn keys_of_unknown_size_are_still_verified_and_refetched_when_corrupt() {
    let objs = objects(60);
    let config = EndpointConfig {
        buckets: vec![bucket("verify-keys", objs.clone())],
        faults: s3uring::endpoint::Faults { corrupt: 0.2, ..Default::default() },
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    for e in engines() {
        let scratch = Scratch::new();
        let list = scratch.keys_file(&objs);
        let json = scratch.dir.path().join("stats.json");
        let out = run(env
            .cmd()
            .args(e.args())
            .args(["--verify", "--retries", "10", "--keys-from"])
            .arg(&list)
            .arg("--stats-json")
            .arg(&json)
            .arg("s3://verify-keys")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(doc["verify"]["by_etag_md5"].as_u64(), Some(60), "{e}: {}", doc["verify"]);
        assert!(doc["verify"]["mismatches"].as_u64().unwrap() > 0, "{e}: {}", doc["verify"]);
    }
}

/// A proxy that frames answers as an HTTP/1.0 proxy does: no Content-Length, the body ends
/// when the connection closes; the first `cut` object GETs get only half their body.
fn close_framing_proxy(upstream: &str, cut: usize) -> String {
    use std::io::{Read, Write};
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(cut));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let (Ok(mut client), upstream, left) = (client, upstream.clone(), left.clone()) else { continue };
            std::thread::spawn(move || {
                // One request per connection: read its head (GETs have no body).
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let request = text.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                let Ok(mut up) = std::net::TcpStream::connect(&upstream) else { return };
                let _ = up.write_all(request.as_bytes());
                let mut answer = Vec::new();
                let _ = up.read_to_end(&mut answer);
                let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else { return };
                let (resp_head, body) = (String::from_utf8_lossy(&answer[..split]).into_owned(), &answer[split + 4..]);
                let kept: Vec<&str> = resp_head
                    .split("\r\n")
                    .filter(|l| {
                        let l = l.to_ascii_lowercase();
                        !l.starts_with("content-length:")
                            && !l.starts_with("connection:")
                            && !l.starts_with("transfer-encoding:")
                    })
                    .collect();
                let object_get =
                    text.starts_with("GET ") && !text.lines().next().unwrap_or_default().contains("list-type");
                let cut_this = object_get
                    && left
                        .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| {
                            n.checked_sub(1)
                        })
                        .is_ok();
                let body = if cut_this { &body[..body.len() / 2] } else { body };
                let _ = client.write_all(format!("{}\r\nConnection: close\r\n\r\n", kept.join("\r\n")).as_bytes());
                let _ = client.write_all(body);
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_body_cut_short_without_content_length_never_gets_a_final_name() {
    let objs = objects(20);
    let env = Env::new(vec![bucket("close-framed", objs.clone())]);
    for e in engines() {
        let proxy = close_framing_proxy(&env.url, 5);
        let scratch = Scratch::new();
        let mut cmd = bare_cmd();
        cmd.arg("--endpoint-url").arg(&proxy).env("AWS_ACCESS_KEY_ID", AK).env("AWS_SECRET_ACCESS_KEY", SK);
        let json = scratch.dir.path().join("stats.json");
        let out = run(cmd
            .args(e.args())
            .args(["--hedge-after", "0", "--stats-json"])
            .arg(&json)
            .arg("s3://close-framed")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert!(
            doc["fetch"]["retries"].as_u64().unwrap() >= 5,
            "{e}: the cut bodies were fetched again: {}",
            doc["fetch"]
        );
    }
}

#[test]
fn keys_of_unknown_size_under_a_rate_limit_all_arrive() {
    // Their ranged GETs go through the same limiter as any GET: throttling spends no retry.
    let objs = objects(600);
    let config = EndpointConfig {
        buckets: vec![bucket("unknown-limited", objs.clone())],
        rate_limits: vec![s3uring::endpoint::RateLimit::new("", 300.0)],
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    for fetch in ["lean", "sdk"] {
        let scratch = Scratch::new();
        let list = scratch.keys_file(&objs);
        let out = run(env
            .cmd()
            .args(["--fetch-engine", fetch, "--workers", "256", "--retries", "1", "--hedge-after", "0", "--keys-from"])
            .arg(&list)
            .arg("s3://unknown-limited")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
    }
    assert!(env.rate_limit_counts()[0].throttled > 0, "the limit was met: {:?}", env.rate_limit_counts());
}

#[test]
fn an_endpoint_named_by_the_environment_is_where_both_engines_go() {
    // AWS_ENDPOINT_URL (every service) and AWS_ENDPOINT_URL_S3 (S3 alone), as the AWS CLI and
    // the SDKs read them; a host name, so addressing follows --endpoint-url's default (path
    // style: `via.localhost` does not resolve).
    let objs = objects(40);
    let want = expected_tree(&objs, "");
    let env = Env::new(vec![bucket("via", objs)]);
    let url = env.url.replace("127.0.0.1", "localhost");
    for var in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"] {
        for fetch in FETCH_ENGINES {
            let scratch = Scratch::new();
            let json = scratch.dir.path().join("stats.json");
            let out = run(bare_cmd()
                .env("AWS_ACCESS_KEY_ID", AK)
                .env("AWS_SECRET_ACCESS_KEY", SK)
                .env(var, &url)
                .args(["--fetch-engine", fetch, "--retries", "1", "--stats-json"])
                .arg(&json)
                .arg("s3://via")
                .arg(scratch.dest()));
            assert_eq!(out.status.code(), Some(0), "{var} {fetch}: {}", stderr(&out));
            assert_same_tree(&read_tree(&scratch.dest()), &want);
            // The stats say where the run went, not only what the flags said.
            let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
            assert_eq!(doc["config"]["endpoint_url"].as_str(), Some(url.as_str()), "{var} {fetch}");
            assert_eq!(doc["config"]["force_path_style"].as_bool(), Some(true), "{var} {fetch}");
        }
    }
}

#[test]
fn keys_a_line_cannot_hold_are_left_out_of_the_failed_keys_file_and_counted() {
    // `KEY<TAB>REASON` per line: a key with a tab or a line break would come back as another
    // key. Such keys fail on stderr (escaped) and the summary counts them.
    let keys = ["c/tab\there", "c/line\nbreak", "c/plain"];
    let objs: Vec<(String, Bytes)> = keys.iter().map(|k| (k.to_string(), content(k, 50))).collect();
    let config = EndpointConfig {
        buckets: vec![bucket("odd", objs)],
        denied: keys.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    let scratch = Scratch::new();
    let list = scratch.dir.path().join("failed.txt");
    let out = run(env.cmd().arg("--failed-keys").arg(&list).arg("s3://odd/c/").arg(scratch.dest()));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(keys_in(&list), vec!["c/plain".to_owned()], "only the key a line can hold");
    assert!(err.contains("failed 'c/tab\\u{9}here': AccessDenied"), "{err}");
    assert!(err.contains("failed 'c/line\\u{a}break': AccessDenied"), "{err}");
    assert!(err.contains("(2 keys containing a tab or a line break are only in the log)"), "{err}");
}
