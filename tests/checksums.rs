//! Every body is checked by default against the checksum its object carries. Stored bytes
//! that changed after upload, with the checksum and ETag kept, never get a name: for each
//! algorithm S3 has and for the ETag's MD5, whole objects and objects fetched in ranges,
//! with each engine. `--no-verify` writes them; `--verify` fails a key that could not be
//! checked and names why.

use bytes::Bytes;
use s3uring::endpoint::{BucketSpec, Checksums, Contents, EndpointConfig, Layout, generated_key};

use crate::util::*;

const MIB: usize = 1 << 20;
/// Objects above 1 MiB are fetched in 1 MiB ranges.
const PARTS: [&str; 4] = ["--multipart-threshold", "1MiB", "--part-size", "1MiB"];

/// Small objects, large ones, and which of them rotted: under `Mixed` the first small key
/// with each of the five algorithms, and of two large objects for each CRC (fetched in
/// ranges, checked by combining the ranges' CRCs) one; under `None` (ETag MD5 only) two small
/// ones and one large one (read back and checked against its ETag MD5).
fn rotten_store(checksums: Checksums) -> (Vec<(String, Bytes)>, Vec<String>) {
    let mut objs: Vec<(String, Bytes)> = (0..60)
        .map(|i| {
            let k = format!("rot/k{i:03}");
            let body = content(&k, 3000 + 17 * i);
            (k, body)
        })
        .collect();
    let mut rotten: Vec<String> = match checksums {
        Checksums::None => vec![objs[3].0.clone(), objs[40].0.clone()],
        _ => {
            let mut seen = std::collections::BTreeMap::new();
            for (k, _) in &objs {
                if let Some((name, _)) = checksums.of(k) {
                    seen.entry(name).or_insert_with(|| k.clone());
                }
            }
            seen.into_values().collect()
        }
    };
    // Two large objects per CRC the store gives them (one under None).
    let crcs = ["x-amz-checksum-crc64nvme", "x-amz-checksum-crc32c", "x-amz-checksum-crc32"];
    let mut large: std::collections::BTreeMap<Option<&str>, Vec<String>> = Default::default();
    for i in 0..200 {
        let k = format!("rot/large-{i:03}.bin");
        let algo = checksums.of(&k).map(|c| c.0);
        let want = if checksums == Checksums::None { 1 } else { 2 };
        if algo.is_some_and(|a| !crcs.contains(&a)) {
            continue;
        }
        let slot = large.entry(algo).or_default();
        if slot.len() < want {
            slot.push(k);
        }
    }
    for keys in large.values() {
        for (j, k) in keys.iter().enumerate() {
            objs.push((k.clone(), content(k, 2 * MIB + 1000 * j)));
        }
        rotten.push(keys[0].clone());
    }
    (objs, rotten)
}

#[test]
fn rotten_objects_never_get_a_name_by_default_with_each_checksum_and_engine() {
    for checksums in [Checksums::Mixed, Checksums::None] {
        let (objs, rotten) = rotten_store(checksums);
        if checksums == Checksums::Mixed {
            assert_eq!(rotten.len(), 8, "each of the five algorithms, and a large object per CRC: {rotten:?}");
        }
        let env = Env::with_config(
            EndpointConfig {
                buckets: vec![bucket("rot", objs.clone())],
                checksums,
                rotten: rotten.clone(),
                ..Default::default()
            },
            true,
        );
        let sound: Vec<_> = objs.iter().filter(|(k, _)| !rotten.contains(k)).cloned().collect();
        for e in engines() {
            let scratch = Scratch::new();
            let json = scratch.dir.path().join("stats.json");
            let out = run(env
                .cmd()
                .args(e.args())
                .args(PARTS)
                .args(["--retries", "1", "--stats-json"])
                .arg(&json)
                .arg("s3://rot")
                .arg(scratch.dest()));
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{e} {checksums:?}: {err}");
            for key in &rotten {
                assert!(
                    err.lines().any(|l| l.contains(&format!("'{key}'")) && l.contains("does not match")),
                    "{e} {checksums:?}: {key} not named: {err}"
                );
            }
            // The sound files, and nothing else: no rotten file at its name, no temporary.
            assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&sound, ""));
            let doc = stats(&json);
            let v = &doc["verify"];
            let mismatches = v["mismatches"].as_u64().unwrap_or(0);
            // Small ones are fetched twice (--retries 1); large ones are checked once.
            assert!(mismatches >= rotten.len() as u64, "{e} {checksums:?}: {v}");
            assert_eq!(doc["config"]["verify_mode"], "on", "{e}");
            let large_rotten = rotten.iter().filter(|k| k.contains("large"));
            if checksums == Checksums::Mixed {
                // Every large one checked by its CRC, none read back.
                assert_eq!(v["by_etag_md5"], 0, "{e}: {v}");
                for key in large_rotten {
                    assert!(
                        err.lines().any(|l| l.contains(&format!("'{key}'")) && l.contains("combined over its ranges")),
                        "{e}: {key}: {err}"
                    );
                }
                assert_eq!(v["by_checksum"].as_u64(), Some((sound.len()) as u64), "{e}: {v}");
            } else {
                for key in large_rotten {
                    assert!(
                        err.lines().any(|l| l.contains(&format!("'{key}'")) && l.contains("ETag MD5")),
                        "{e}: {key}: {err}"
                    );
                }
            }
        }
        // --no-verify checks nothing: the rotten bytes land (the fault is real).
        let scratch = Scratch::new();
        let out = run(env.cmd().args(PARTS).arg("--no-verify").arg("s3://rot").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{checksums:?}: {}", stderr(&out));
        let tree = read_tree(&scratch.dest());
        let want = expected_tree(&objs, "");
        assert_eq!(tree.len(), want.len(), "{checksums:?}");
        for key in &rotten {
            assert_ne!(tree.get(key), want.get(key), "{checksums:?}: {key} was not rotten");
        }
    }
}

/// One generated object above 64 MiB (a multipart ETag, no MD5), uploaded with `checksums`.
fn big_store(checksums: Checksums) -> Env {
    let big = BucketSpec {
        name: "big".into(),
        contents: Contents::Generated { count: 1, size: 65 << 20, prefixes: 1, layout: Layout::Prefixes },
    };
    Env::with_config(EndpointConfig { buckets: vec![big], checksums, ..Default::default() }, true)
}

/// Copies the big object in 16 MiB parts: the output, the stats, and whether it got its name.
fn copy_big(env: &Env, e: Engines, mode: &[&str]) -> (std::process::Output, serde_json::Value, bool) {
    let scratch = Scratch::new();
    let json = scratch.dir.path().join("stats.json");
    let out = run(env
        .cmd()
        .args(e.args())
        .args(["--part-size", "16MiB", "--stats-json"])
        .arg(&json)
        .args(mode)
        .arg("s3://big")
        .arg(scratch.dest()));
    let written = scratch.dest().join(generated_key(0, 1)).exists();
    (out, stats(&json), written)
}

#[test]
fn strict_verify_fails_a_key_that_could_not_be_checked_and_says_why() {
    // Uploaded without a checksum, nothing is there to check its ranges against: by default
    // it is written and counted as unverifiable; with --verify it fails.
    let env = big_store(Checksums::None);
    let key = generated_key(0, 1);
    for e in engines() {
        let (out, doc, written) = copy_big(&env, e, &[]);
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert!(written, "{e}");
        assert_eq!(doc["verify"]["unverifiable"], 1, "{e}: {}", doc["verify"]);
        let (out, doc, written) = copy_big(&env, e, &["--verify"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{e}: {err}");
        assert!(!written, "{e}: an unchecked file got its name under --verify");
        assert!(
            err.lines()
                .any(|l| l.contains(&key) && l.contains("could not be checked (--verify)") && l.contains("multipart")),
            "{e}: {err}"
        );
        assert_eq!(doc["config"]["verify_mode"], "strict", "{e}");
    }
    // Uploaded with a (full-object) CRC32C, the same object passes --verify: its ranges' CRCs
    // combine into the checksum a HEAD returns, and nothing is read back.
    let env = big_store(Checksums::Crc32c);
    for e in engines() {
        let (out, doc, written) = copy_big(&env, e, &["--verify"]);
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert!(written, "{e}");
        let v = &doc["verify"];
        assert_eq!((v["by_checksum"].as_u64(), v["by_etag_md5"].as_u64()), (Some(1), Some(0)), "{e}: {v}");
    }
}
