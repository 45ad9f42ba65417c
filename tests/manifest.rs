//! `--manifest`: an S3 Inventory report (manifest.json + gzip CSV) instead of a
//! listing, read from a local directory or from S3.

use std::io::Write as _;
use std::path::Path;

use bytes::Bytes;
use md5::Digest as _;

use crate::util::*;

const SCHEMA: &str = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass";
const RUN: &str = "inv/src/daily/2026-11-25T00-00Z";

/// The bucket: keys under `data/` (some needing URL-encoding) and some outside it.
fn objects() -> Vec<(String, Bytes)> {
    let mut objs: Vec<(String, Bytes)> = (0..2500)
        .map(|i| {
            let key = format!("data/d{}/obj {i:04}+x.bin", i % 9);
            let body = content(&key, 50 + i % 700);
            (key, body)
        })
        .collect();
    for key in ["data/ünï/çödé.txt", "other/not-in-prefix.txt", "top.txt"] {
        objs.push((key.to_owned(), content(key, 333)));
    }
    objs
}

/// Form-encodes a key as S3 Inventory writes it.
fn encode(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        match b {
            b' ' => out.push('+'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One CSV row per object (every field quoted, as S3 writes them), plus an older version
/// and a delete marker that must be left out.
fn rows(objs: &[(String, Bytes)]) -> Vec<String> {
    let row = |key: &str, latest: bool, marker: bool, body: &[u8]| {
        let md5: String = md5::Md5::digest(body).iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "\"src\",\"{}\",\"v1\",\"{latest}\",\"{marker}\",\"{}\",\"2020-01-01T00:00:00.000Z\",\"{md5}\",\"STANDARD\"\n",
            encode(key),
            body.len()
        )
    };
    let mut rows: Vec<String> = objs.iter().map(|(k, b)| row(k, true, false, b)).collect();
    rows.push(row("data/old-version-only.bin", false, false, b"old"));
    rows.push(row("data/deleted.bin", true, true, b""));
    rows
}

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

/// The report's files as (key, bytes): two gzip data files and the manifest.
fn inventory(objs: &[(String, Bytes)], source_bucket: &str, format: &str) -> Vec<(String, Bytes)> {
    let rows = rows(objs);
    let half = rows.len() / 2;
    let data = [rows[..half].concat(), rows[half..].concat()];
    let mut files: Vec<(String, Bytes)> = data
        .iter()
        .enumerate()
        .map(|(i, text)| (format!("inv/src/daily/data/part-{i}.csv.gz"), Bytes::from(gzip(text))))
        .collect();
    let listed: Vec<serde_json::Value> =
        files.iter().map(|(k, b)| serde_json::json!({ "key": k, "size": b.len(), "MD5checksum": "" })).collect();
    let manifest = serde_json::json!({
        "sourceBucket": source_bucket,
        "destinationBucket": "arn:aws:s3:::inv",
        "version": "2016-11-30",
        "creationTimestamp": "1764028800000",
        "fileFormat": format,
        "fileSchema": SCHEMA,
        "files": listed,
    });
    files.push((format!("{RUN}/manifest.json"), Bytes::from(manifest.to_string())));
    files
}

fn write_local(dir: &Path, files: &[(String, Bytes)]) -> std::path::PathBuf {
    for (key, body) in files {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    dir.join(RUN).join("manifest.json")
}

#[test]
fn a_local_inventory_restores_its_latest_objects_under_the_prefix_and_resumes_by_etag() {
    let objs = objects();
    let env = Env::new(vec![bucket("src", objs.clone())]);
    let keep = Scratch::new();
    let manifest = write_local(keep.dir.path(), &inventory(&objs, "src", "CSV"));
    let want = expected_tree(&objs, "data/");
    let in_prefix = objs.iter().filter(|(k, _)| k.starts_with("data/")).count();
    let scratch = Scratch::new();
    let before = env.fault_counts().gets;
    let copy = || {
        run(env
            .cmd()
            .arg("--manifest")
            .arg(&manifest)
            .args(["--hedge-after", "0", "s3://src/data/"])
            .arg(scratch.dest()))
    };
    let out = copy();
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains(&format!("{in_prefix} files written")), "{err}");
    assert!(err.contains("(4 inventory rows left out: older versions, delete markers, outside SOURCE)"), "{err}");
    assert_same_tree(&read_tree(&scratch.dest()), &want);
    assert_eq!(env.fault_counts().gets - before, in_prefix as u64, "one GET per inventoried object, no listing needed");

    // The inventory's LastModifiedDate (2020) is not the files' mtime: the ETag's MD5
    // recognises every file, so a re-run fetches nothing.
    let before = env.fault_counts().gets;
    let out = copy();
    assert!(stderr(&out).contains(&format!("0 files written, 0 directories, {in_prefix} skipped")), "{}", stderr(&out));
    assert_eq!(env.fault_counts().gets, before);

    // Same size, other content: fetched again, and only that one.
    let changed = scratch.dest().join("d3/obj 0003+x.bin");
    let len = std::fs::metadata(&changed).unwrap().len() as usize;
    std::fs::write(&changed, vec![b'x'; len]).unwrap();
    let out = copy();
    assert!(stderr(&out).contains("1 files written"), "{}", stderr(&out));
    assert_same_tree(&read_tree(&scratch.dest()), &want);
}

#[test]
fn an_inventory_in_s3_is_read_through_the_sdk() {
    let objs = objects();
    let env = Env::new(vec![bucket("src", objs.clone()), bucket("inv", inventory(&objs, "src", "CSV"))]);
    let scratch = Scratch::new();
    let url = format!("s3://inv/{RUN}/manifest.json");
    let out = run(env.cmd().args(["--manifest", &url, "s3://src"]).arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(0));
    assert_same_tree(&read_tree(&scratch.dest()), &expected_tree(&objs, ""));
}

#[test]
fn unusable_inventories_are_refused_with_the_reason() {
    let objs = objects();
    let env = Env::new(vec![bucket("src", objs.clone())]);
    let keep = Scratch::new();
    let cases = [
        (inventory(&objs, "another-bucket", "CSV"), "it lists bucket 'another-bucket', but SOURCE is bucket 'src'"),
        (inventory(&objs, "src", "Parquet"), "only CSV inventories"),
        (inventory(&objs, "src", "CSV").split_off(1), "part-0.csv.gz' not found"),
    ];
    for (i, (files, why)) in cases.into_iter().enumerate() {
        let manifest = write_local(&keep.dir.path().join(i.to_string()), &files);
        let scratch = Scratch::new();
        let out = run(env.cmd().arg("--manifest").arg(&manifest).arg("s3://src").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(2), "{why}");
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
    }
    let scratch = Scratch::new();
    let out = run(env.cmd().args(["--manifest", "/nonexistent/manifest.json", "s3://src"]).arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/manifest.json"), "{}", stderr(&out));
}
