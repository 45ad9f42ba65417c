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

/// Small objects, one large one, and which of them rotted: under `Mixed` the first small key
/// with each of the five algorithms, under `None` (ETag MD5 only) two; the large one always
/// (ranges carry no checksum: it is checked against its ETag MD5 as it is read back).
fn rotten_store(checksums: Checksums) -> (Vec<(String, Bytes)>, Vec<String>) {
    let mut objs: Vec<(String, Bytes)> = (0..60)
        .map(|i| {
            let k = format!("rot/k{i:03}");
            let body = content(&k, 3000 + 17 * i);
            (k, body)
        })
        .collect();
    objs.push(("rot/large.bin".to_owned(), content("rot/large.bin", 3 * MIB + 5)));
    let mut rotten: Vec<String> = match checksums {
        Checksums::None => vec![objs[3].0.clone(), objs[40].0.clone()],
        _ => {
            let mut seen = std::collections::BTreeMap::new();
            for (k, _) in &objs[..60] {
                if let Some((name, _)) = checksums.of(k) {
                    seen.entry(name).or_insert_with(|| k.clone());
                }
            }
            seen.into_values().collect()
        }
    };
    rotten.push("rot/large.bin".to_owned());
    (objs, rotten)
}

#[test]
fn rotten_objects_never_get_a_name_by_default_with_each_checksum_and_engine() {
    for checksums in [Checksums::Mixed, Checksums::None] {
        let (objs, rotten) = rotten_store(checksums);
        if checksums == Checksums::Mixed {
            assert_eq!(rotten.len(), 6, "each of the five algorithms, and the large object: {rotten:?}");
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
            let mismatches = doc["verify"]["mismatches"].as_u64().unwrap_or(0);
            // Small ones are fetched twice (--retries 1); the large one is read back once.
            assert!(mismatches >= rotten.len() as u64, "{e} {checksums:?}: {}", doc["verify"]);
            assert_eq!(doc["config"]["verify_mode"], "on", "{e}");
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

#[test]
fn strict_verify_fails_a_key_that_could_not_be_checked_and_says_why() {
    // A generated object above 64 MiB has a multipart ETag (no MD5), and its ranges carry no
    // checksum: by default it is written and counted as unverifiable; with --verify it fails.
    let big = BucketSpec {
        name: "big".into(),
        contents: Contents::Generated { count: 1, size: 65 << 20, prefixes: 1, layout: Layout::Prefixes },
    };
    let key = generated_key(0, 1);
    let env = Env::with_config(EndpointConfig { buckets: vec![big], ..Default::default() }, true);
    for e in engines() {
        let copy = |mode: &[&str]| {
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
            let written = scratch.dest().join(&key).exists();
            (out, stats(&json), written)
        };
        let (out, doc, written) = copy(&[]);
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert!(written, "{e}");
        assert_eq!(doc["verify"]["unverifiable"], 1, "{e}: {}", doc["verify"]);
        let (out, doc, written) = copy(&["--verify"]);
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
}
