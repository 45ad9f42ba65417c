//! Parallel listing (`--list-workers`) gives exactly the sequential listing's keys: every key
//! once, over nested "directories", folder markers, large flat ranges that get split at
//! start-after boundaries, and awkward names.

use bytes::Bytes;

use crate::util::*;

fn layout() -> Vec<(String, Bytes)> {
    let mut keys: Vec<String> = Vec::new();
    keys.extend((0..30).map(|i| format!("a/b/c{i}")));
    keys.extend((0..30).map(|i| format!("a/d{i}")));
    keys.extend((0..20).map(|i| format!("x{i}")));
    keys.extend(["a/".into(), "a/b/".into(), "a/b/e/f/g".into(), "sp ace/ü n/ï".into(), "z/".into()]);
    // Flat ranges large enough to be split: digits, letters, mixed.
    keys.extend((0..4500).map(|i| format!("flat/obj{i:05}")));
    keys.extend((0..2600).map(|i| format!("words/{}{}", (b'a' + (i / 100) as u8) as char, i % 100)));
    keys.extend((0..1200).map(|i| format!("mixed/{i:04x}-{}", i % 7)));
    keys.into_iter().map(|k| (k.clone(), content(&k, if k.ends_with('/') { 0 } else { 50 }))).collect()
}

#[test]
fn parallel_listing_lists_every_key_exactly_once() {
    let objs = layout();
    let files = objs.iter().filter(|(k, _)| !k.ends_with('/')).count() as u64;
    let env = Env::new(vec![bucket("layout", objs.clone())]);
    for (source, prefix) in [("s3://layout", ""), ("s3://layout/flat", "flat/"), ("s3://layout/a/", "a/")] {
        let want_objs: Vec<_> = objs.iter().filter(|(k, _)| k.starts_with(prefix)).cloned().collect();
        let want = expected_tree(&want_objs, prefix);
        let want_files = want_objs.iter().filter(|(k, _)| !k.ends_with('/')).count() as u64;
        for workers in ["1", "8", "64"] {
            let scratch = Scratch::new();
            let before = env.fault_counts().gets;
            let json = scratch.dir.path().join("stats.json");
            let out = run(env
                .cmd()
                .args(["--hedge-after", "0", "--list-workers", workers, "--stats-json"])
                .arg(&json)
                .arg(source)
                .arg(scratch.dest()));
            assert_eq!(out.status.code(), Some(0), "{source} {workers}");
            assert_same_tree(&read_tree(&scratch.dest()), &want);
            let gets = env.fault_counts().gets - before;
            assert_eq!(gets, want_files, "{source} --list-workers {workers}: one GET per file");
            let err = stderr(&out);
            assert!(err.contains(&format!("{} keys listed: {want_files} files written", want_objs.len())), "{err}");
            let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            let requests = doc["stages"]["list"]["count"].as_u64().unwrap();
            if prefix == "flat/" && workers != "1" {
                // 4,500 flat keys are 5 sequential pages; split, they are listed in more pieces.
                assert!(requests > 5, "--list-workers {workers}: {requests} list requests");
            }
        }
    }
    assert!(files > 8000);
}
