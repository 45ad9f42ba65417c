//! Large objects: fetched in ranged parts in parallel, written at their offsets,
//! complete or absent, with memory bounded by the parts in flight.

use std::io::Read as _;

use bytes::Bytes;
use s3uring::endpoint::{BucketSpec, Contents, EndpointConfig, generated_key, generated_range};

use crate::util::*;

const MIB: usize = 1 << 20;

/// Small parts so that a few MiB make many of them: sizes on and off part boundaries.
const PARTS: [&str; 6] = ["--multipart-threshold", "1MiB", "--part-size", "1MiB", "--part-concurrency", "3"];

#[test]
fn large_objects_are_fetched_in_parts_and_land_byte_for_byte_with_each_engine() {
    let sizes = [("big/odd.bin", 5 * MIB + 12_345), ("big/exact.bin", 4 * MIB), ("big/just-over.bin", MIB + 1)];
    let mut objs: Vec<(String, Bytes)> = sizes.iter().map(|(k, n)| (k.to_string(), content(k, *n))).collect();
    for i in 0..50 {
        let key = format!("small/{i:02}.txt");
        objs.push((key.clone(), content(&key, 3000 + i)));
    }
    // Exactly at the threshold: one plain GET.
    objs.push(("big/at-threshold.bin".to_owned(), content("big/at-threshold.bin", MIB)));
    let env = Env::new(vec![bucket("large", objs.clone())]);
    let want = expected_tree(&objs, "");
    // Parts: 6 + 4 + 2; every other object is one GET.
    let gets_per_run = 6 + 4 + 2 + 50 + 1;
    for engine in engines() {
        let scratch = Scratch::new();
        let before = env.fault_counts().gets;
        let out = run(env
            .cmd()
            .args(engine.args())
            .args(PARTS)
            .args(["--hedge-after", "0", "s3://large"])
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "engine {engine}");
        assert!(stderr(&out).contains("54 files written, 0 directories, 0 skipped, 0 failed"), "{engine}");
        assert_same_tree(&read_tree(&scratch.dest()), &want);
        assert_eq!(env.fault_counts().gets - before, gets_per_run, "GETs with {engine}: one per part");
        // A re-run recognises the large files (mtime set from LastModified before the rename).
        let again = run(env.cmd().args(engine.args()).args(PARTS).args(["s3://large"]).arg(scratch.dest()));
        assert!(stderr(&again).contains("0 files written, 0 directories, 54 skipped, 0 failed"), "{engine}");
    }
}

#[test]
fn a_one_gib_object_is_copied_exactly_in_bounded_memory() {
    // 1 GiB and an odd tail: the endpoint generates each range on demand, so neither side
    // ever holds the whole object.
    let size = (1u64 << 30) + 4097;
    let env = Env::new(vec![BucketSpec {
        name: "huge".to_owned(),
        contents: Contents::Generated { count: 1, size, prefixes: 1, layout: Default::default() },
    }]);
    let key = generated_key(0, 1);
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let stats = scratch.dir.path().join("stats.json");
        let out = run(env
            .cmd()
            .args(["--fetch-engine", fetch, "--buffer-mib", "32", "s3://huge"])
            .arg(scratch.dest())
            .arg("--stats-json")
            .arg(&stats));
        assert_eq!(out.status.code(), Some(0), "fetch {fetch}");
        let file = scratch.dest().join(&key);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
        // Compare 8 MiB at a time against the generator.
        let mut f = std::fs::File::open(&file).unwrap();
        let mut buf = vec![0u8; 8 * MIB];
        let mut at = 0u64;
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            f.read_exact(&mut buf[..n]).unwrap();
            assert!(buf[..n] == generated_range(&key, at, n as u64)[..], "content differs in the 8 MiB at {at}");
            at += n as u64;
        }
        // Memory: the budget (32 MiB) plus the runtime, not the object's 1 GiB.
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
        let rss = doc["cpu"]["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
        assert!(rss < 256 << 20, "peak RSS {} MiB for a 1 GiB object with --buffer-mib 32", rss >> 20);
        // Parts take a connection only once they hold their budget: 32 MiB is 4 parts.
        if fetch == "lean" {
            let conns = doc["fetch"]["connections_opened"].as_u64().expect("connections_opened");
            assert!((1..=8).contains(&conns), "{conns} connections for 4 parts in flight");
        }
        assert!(scratch.outside_dest().iter().all(|n| n == "stats.json"));
    }
}

#[test]
fn an_object_that_changes_between_parts_fails_cleanly() {
    let key = "big/changing.bin";
    let objs = vec![(key.to_owned(), content(key, 3 * MIB)), ("ok.txt".to_owned(), content("ok.txt", 10))];
    let config =
        EndpointConfig { buckets: vec![bucket("chg", objs)], changing: vec![key.to_owned()], ..Default::default() };
    let env = Env::with_config(config, true);
    for engine in engines() {
        // The endpoint's ETag changes after the first GET of the key: every later part is
        // refused with 412, so the file must never appear; run twice with each engine.
        let scratch = Scratch::new();
        let out = run(env.cmd().args(engine.args()).args(PARTS).args(["s3://chg"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(1), "engine {engine}");
        let err = stderr(&out);
        assert!(err.contains(key) && err.contains("changed while it was being copied"), "{err}");
        assert!(err.contains("1 files written, 0 directories, 0 skipped, 1 failed"), "{err}");
        // Neither the file nor its temporary: the directory the key needed is all there is.
        let tree = read_tree(&scratch.dest());
        assert_eq!(tree.keys().cloned().collect::<Vec<_>>(), ["big", "ok.txt"], "{engine}");
    }
}

#[test]
fn verify_reads_a_large_file_back_against_its_etag_md5_and_never_names_a_corrupt_one() {
    let objs: Vec<(String, Bytes)> =
        [("big/a.bin", 3 * MIB + 777), ("big/b.bin", 2 * MIB)].map(|(k, n)| (k.to_owned(), content(k, n))).to_vec();
    let want = expected_tree(&objs, "");
    // Stored objects have an ETag that is the MD5 of their content, as single-part uploads do,
    // and no checksum (uploaded without one): the MD5 is all there is to check against.
    let none = s3uring::endpoint::Checksums::None;
    let clean = EndpointConfig { buckets: vec![bucket("whole", objs.clone())], checksums: none, ..Default::default() };
    let clean = Env::with_config(clean, true);
    let config = EndpointConfig {
        buckets: vec![bucket("whole", objs.clone())],
        faults: s3uring::endpoint::Faults { corrupt: 1.0, ..Default::default() },
        checksums: none,
        ..Default::default()
    };
    let rotten = Env::with_config(config, true);
    for engine in engines() {
        let scratch = Scratch::new();
        let json = scratch.dir.path().join("stats.json");
        let out = run(clean
            .cmd()
            .args(engine.args())
            .args(PARTS)
            .args(["--verify", "--stats-json"])
            .arg(&json)
            .arg("s3://whole")
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{engine}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &want);
        let doc = stats(&json);
        let v = &doc["verify"];
        assert_eq!((v["by_etag_md5"].as_u64(), v["unverifiable"].as_u64()), (Some(2), Some(0)), "{engine}: {v}");
        // Every part comes back with a flipped byte: with --no-verify that lands on disk ...
        let scratch = Scratch::new();
        let out =
            run(rotten.cmd().args(engine.args()).args(PARTS).arg("--no-verify").arg("s3://whole").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{engine}: {}", stderr(&out));
        assert_ne!(read_tree(&scratch.dest()), want, "{engine}: the fault corrupts");
        // ... by default, neither file gets its name, no temporary is left, and both keys fail
        // naming the mismatch.
        let scratch = Scratch::new();
        let out = run(rotten.cmd().args(engine.args()).args(PARTS).arg("s3://whole").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(1), "{engine}: {}", stderr(&out));
        let err = stderr(&out);
        for (key, _) in &objs {
            assert!(
                err.lines().any(|l| l.contains(key.as_str()) && l.contains("does not match its ETag MD5")),
                "{engine}: {err}"
            );
        }
        assert!(err.contains("0 files written, 0 directories, 0 skipped, 2 failed"), "{engine}: {err}");
        let tree = read_tree(&scratch.dest());
        assert_eq!(tree.keys().cloned().collect::<Vec<_>>(), ["big"], "{engine}");
    }
}
