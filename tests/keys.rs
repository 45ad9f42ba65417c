//! Keys that are awkward (copied exactly) and keys that are hostile (refused, with nothing
//! written outside DEST and the rest of the bucket copied).

use bytes::Bytes;

use crate::util::*;

#[test]
fn unusual_keys_are_copied_exactly() {
    let long = "L".repeat(255);
    let keys = [
        "with space/file name.txt".to_owned(),
        "ünïcødé/日本語/файл.txt".to_owned(),
        "plus+sign=equals".to_owned(),
        "percent%20not-decoded%2F".to_owned(),
        "hash#frag".to_owned(),
        "question?x=1&y=2".to_owned(),
        "semi;colon,comma'quote\"dq".to_owned(),
        "tilde~star*paren(1)[2]{3}".to_owned(),
        "...three-dots".to_owned(),
        ".hidden/.also".to_owned(),
        format!("d/{long}"),
        format!("{long}/{long}"),
        "emoji-😀/x".to_owned(),
    ];
    let objs: Vec<(String, Bytes)> = keys.iter().map(|k| (k.clone(), content(k, 333))).collect();
    let env = Env::new(vec![bucket("unusual", objs.clone())]);
    copy_each_engine(&env, &[], "s3://unusual", 0, &expected_tree(&objs, ""), |_, _, _| {});
}

#[test]
fn hostile_keys_are_refused_and_nothing_escapes_dest() {
    let hostile = [
        "../x".to_owned(),
        "a/../../x".to_owned(),
        "/abs".to_owned(),
        "a//b".to_owned(),
        ".".to_owned(),
        "./dot".to_owned(),
        "dir/..".to_owned(),
        "x".repeat(256),
        format!("ok/{}", "y".repeat(256)),
        ".s3uring-tmp.1.1".to_owned(),
    ];
    let good = ["fine/one.txt", "fine/two.txt", "top.txt"];
    let mut objs: Vec<(String, Bytes)> = hostile.iter().map(|k| (k.clone(), content(k, 17))).collect();
    objs.extend(good.iter().map(|k| (k.to_string(), content(k, 17))));
    let env = Env::new(vec![bucket("hostile", objs.clone())]);
    let good_objs: Vec<_> = objs.iter().filter(|(k, _)| good.contains(&k.as_str())).cloned().collect();
    copy_each_engine(&env, &[], "s3://hostile", 1, &expected_tree(&good_objs, ""), |_, err, scratch| {
        for k in &hostile {
            let shown = if k.len() > 200 { &k[..100] } else { k.as_str() };
            assert!(err.contains(&format!("failed '{shown}")), "{k} not reported in {err}");
        }
        assert!(err.contains("unsafe key"), "{err}");
        assert!(err.contains(&format!("{} failed", hostile.len())), "{err}");
        assert!(scratch.outside_dest().is_empty(), "{:?}", scratch.outside_dest());
    });
}

#[test]
fn a_file_and_a_directory_of_the_same_name_fail_clearly() {
    // Sorted listing order puts "a" before "a/b"; both orders are raced by the writer.
    let objs: Vec<(String, Bytes)> =
        ["a", "a/b", "c/d", "c", "ok"].iter().map(|k| (k.to_string(), content(k, 40))).collect();
    let env = Env::new(vec![bucket("clash", objs.clone())]);
    for engine in engines() {
        let scratch = Scratch::new();
        let out = run(env.cmd().args(engine.args()).args(["--workers", "1", "s3://clash"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(1), "{engine}");
        let err = stderr(&out);
        assert!(err.contains("2 failed"), "{err}");
        assert!(err.contains("is in the way"), "{err}");
        let tree = read_tree(&scratch.dest());
        // Exactly one of each pair landed, complete; the other failed; never overwritten.
        for (file, nested) in [("a", "a/b"), ("c", "c/d")] {
            let as_file = tree.get(file) == Some(&Some(content(file, 40).to_vec()));
            let as_dir = tree.get(nested) == Some(&Some(content(nested, 40).to_vec()));
            assert!(as_file ^ as_dir, "{file} vs {nested}: {tree:?}");
        }
        assert_eq!(tree.get("ok"), Some(&Some(content("ok", 40).to_vec())));
    }
}

#[test]
fn symlinks_already_in_dest_are_never_followed() {
    let objs: Vec<(String, Bytes)> = ["link/escape.txt", "filelink", "deep/link/x", "plain"]
        .iter()
        .map(|k| (k.to_string(), content(k, 21)))
        .collect();
    let env = Env::new(vec![bucket("symlinks", objs.clone())]);
    for engine in engines() {
        let scratch = Scratch::new();
        let outside = scratch.dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"original").unwrap();
        let dest = scratch.dest();
        std::fs::create_dir_all(dest.join("deep")).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("deep/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), dest.join("filelink")).unwrap();

        let out = run(env.cmd().args(engine.args()).args(["s3://symlinks"]).arg(&dest));
        assert_eq!(out.status.code(), Some(1), "{engine}");
        let err = stderr(&out);
        assert!(err.contains("symbolic link"), "{err}");
        assert!(err.contains("2 failed"), "{err}");
        // Nothing was written through the links.
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"original");
        // The final-name symlink was replaced by the object, not followed.
        let meta = std::fs::symlink_metadata(dest.join("filelink")).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(std::fs::read(dest.join("filelink")).unwrap(), content("filelink", 21).to_vec());
        assert_eq!(std::fs::read(dest.join("plain")).unwrap(), content("plain", 21).to_vec());
    }
}

/// Keys for [`case_pairs_onto_exfat`]: groups that are one file where case is not told apart,
/// and a name exFAT refuses, as vfat and SMB do.
const CASE_GROUPS: [&[&str]; 4] = [&["A.txt", "a.txt"], &["Dir/x", "dir/x"], &["dir/y"], &["plain"]];
const CASE_REFUSED: &str = "at 12:00.txt";

pub fn case_objects() -> Vec<(String, Bytes)> {
    CASE_GROUPS.iter().flat_map(|g| g.iter()).chain([&CASE_REFUSED]).map(|k| (k.to_string(), content(k, 40))).collect()
}

/// On a destination that does not tell upper from lower case (exFAT here; also vfat, SMB
/// shares, casefold directories), `A.txt` and `a.txt` are one file: the second key's rename
/// would replace the first key's file and both would count as copied. With each engine pair,
/// copying `source` (holding [`case_objects`]) with `cmd`: each such pair must land once, with
/// the other key failed and named, and a re-run must say so again rather than report a
/// complete copy. A name the file system refuses fails with a reason that says so. False when
/// exFAT cannot be mounted here (the test is skipped, and says so).
pub fn case_pairs_onto_exfat(cmd: &dyn Fn() -> std::process::Command, source: &str) -> bool {
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        std::fs::create_dir(&dest).unwrap();
        let _mount = match Mount::exfat(&dest) {
            Ok(m) => m,
            Err(why) => {
                skipped(&format!("cannot mount exFAT (exfatprogs, exfat-fuse, a loop device): {why}"));
                return false;
            }
        };
        for attempt in ["first run", "re-run"] {
            let out = run(cmd().args(engine.args()).arg(source).arg(&dest));
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{engine}, {attempt}: {err}");
            assert!(err.contains("3 failed"), "{engine}, {attempt}: {err}");
            let line = format!(
                "failed '{CASE_REFUSED}': cannot rename into place '{CASE_REFUSED}': the file system at DEST does \
                 not accept this name"
            );
            assert!(err.contains(&line), "{engine}, {attempt}: {err}");
            let tree = read_tree(&dest);
            assert!(tree.keys().all(|p| !p.contains(".s3uring-tmp.")), "{engine}, {attempt}: {tree:?}");
            for group in CASE_GROUPS {
                let folded = group[0].to_lowercase();
                let files: Vec<_> = tree.iter().filter(|(p, c)| c.is_some() && p.to_lowercase() == folded).collect();
                assert_eq!(files.len(), 1, "{engine}, {attempt}, {group:?}: {tree:?}");
                let (_, Some(got)) = files[0] else { unreachable!() };
                // The file holds one key's object; every other key of the group failed, named.
                let landed: Vec<_> = group.iter().filter(|k| content(k, 40).as_ref() == got.as_slice()).collect();
                assert_eq!(landed.len(), 1, "{engine}, {attempt}, {group:?}: no key's content");
                for other in group.iter().filter(|k| k != &landed[0]) {
                    let line = format!("failed '{other}': ");
                    assert!(err.contains(&line), "{engine}, {attempt}: no failure for {other}: {err}");
                    assert!(err.contains("upper from lower case"), "{engine}, {attempt}: {err}");
                }
            }
        }
    }
    true
}

#[test]
fn keys_differing_only_in_case_never_land_on_one_file_of_a_case_insensitive_dest() {
    let env = Env::new(vec![bucket("case", case_objects())]);
    let _ = case_pairs_onto_exfat(&|| env.cmd(), "s3://case");
}

/// The same under a request-rate limit that throttles list requests and GETs: a retried
/// listing page brings its keys to the case guard again.
#[test]
fn keys_differing_only_in_case_are_told_apart_under_a_rate_limit() {
    let config = s3uring::endpoint::EndpointConfig {
        buckets: vec![bucket("case-limited", case_objects())],
        rate_limits: vec![s3uring::endpoint::RateLimit::new("", 20.0)],
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    if !case_pairs_onto_exfat(&|| env.cmd(), "s3://case-limited") {
        // Skipped, and said so: nothing was copied, so nothing was throttled.
        return;
    }
    let throttled: u64 = env.rate_limit_counts().iter().map(|c| c.throttled + c.others_throttled).sum();
    assert!(throttled > 0, "the limit never throttled: {:?}", env.rate_limit_counts());
}

/// A file that something else writes at a key's path while the run fetches that key (another
/// program, or another key that a directory ignoring case or Unicode normalisation takes for
/// the same name) is not replaced: that key fails, naming the path, and the file keeps what
/// it holds. A stale file that was there before the run is still replaced, as always.
#[test]
fn a_file_written_at_a_keys_path_during_the_run_is_not_replaced() {
    let objs: Vec<(String, Bytes)> = [("x/taken", 300), ("x/stale", 300), ("x/ok", 300), ("big", 3 << 20)]
        .iter()
        .map(|(k, n)| (k.to_string(), content(k, *n)))
        .collect();
    let config = s3uring::endpoint::EndpointConfig {
        buckets: vec![bucket("during", objs.clone())],
        get_latency: std::time::Duration::from_millis(2000),
        ..Default::default()
    };
    let env = Env::with_config(config, true);
    let parts = ["--multipart-threshold", "1MiB", "--part-size", "1MiB", "--hedge-after", "0"];
    for engine in engines() {
        let scratch = Scratch::new();
        let dest = scratch.dest();
        std::fs::create_dir_all(dest.join("x")).unwrap();
        std::fs::write(dest.join("x/stale"), "from before the run").unwrap();
        let mut cmd = env.cmd();
        cmd.args(engine.args()).args(parts).arg("s3://during").arg(&dest);
        let gets_at_start = env.fault_counts().gets;
        let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        // The writer starts (and reads the file system's clock) before any GET is sent; the
        // endpoint counts a GET as it arrives, and answers it 2 s later, so these land after
        // the clock was read and well before any rename.
        env.wait_for_gets(gets_at_start, 1);
        std::fs::write(dest.join("x/taken"), "another program's").unwrap();
        std::fs::write(dest.join("big"), "another program's big").unwrap();
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{engine}: {err}");
        assert!(err.contains("2 failed"), "{engine}: {err}");
        for path in ["x/taken", "big"] {
            let line = format!("failed '{path}': a file appeared at '{path}' during this run");
            assert!(err.contains(&line), "{engine}: {err}");
        }
        let tree = read_tree(&dest);
        assert_eq!(tree.get("x/taken"), Some(&Some(b"another program's".to_vec())), "{engine}");
        assert_eq!(tree.get("big"), Some(&Some(b"another program's big".to_vec())), "{engine}");
        for key in ["x/stale", "x/ok"] {
            assert_eq!(tree.get(key), Some(&Some(content(key, 300).to_vec())), "{engine}: {key}");
        }
        assert!(tree.keys().all(|p| !p.contains(".s3uring-tmp.")), "{engine}: {tree:?}");
    }
}

#[test]
fn a_key_ending_in_a_slash_that_holds_bytes_fails_naming_them() {
    // `dir/` uploaded with content: its name is a directory here, so its bytes have no file.
    // Empty markers are directories, as always.
    let objs: Vec<(String, Bytes)> = vec![
        ("dir/".to_owned(), content("dir/", 42)),
        ("dir/inside.txt".to_owned(), content("dir/inside.txt", 10)),
        ("empty-marker/".to_owned(), Bytes::new()),
    ];
    let env = Env::new(vec![bucket("markers", objs.clone())]);
    let want = expected_tree(&objs[1..], "");
    copy_each_engine(&env, &[], "s3://markers", 1, &want, |e, err, scratch| {
        assert!(err.lines().any(|l| l.contains("failed 'dir/'") && l.contains("holds 42 bytes")), "{e}: {err}");
        assert!(scratch.dest().join("empty-marker").is_dir(), "{e}");
    });
}
