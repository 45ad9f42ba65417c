//! `s3uring check SOURCE DEST`: a restored tree audited against the store without
//! downloading it — missing, changed and extra files named, exit 1; a clean tree passes, each
//! file read against the checksum it kept when it was written (with each io engine), or with
//! `--checksum` against the store's; against the endpoint and moto.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use bytes::Bytes;

use crate::util::*;

/// Objects above 1 MiB are fetched in 1 MiB ranges (their CRCs combined).
const PARTS: [&str; 4] = ["--multipart-threshold", "1MiB", "--part-size", "1MiB"];

fn objects() -> Vec<(String, Bytes)> {
    let mut objs: Vec<(String, Bytes)> =
        (0..40).map(|i| format!("a/k{i:02}")).map(|k| (k.clone(), content(&k, 700 + k.len()))).collect();
    objs.push(("b/large.bin".to_owned(), content("b/large.bin", (2 << 20) + 3)));
    objs.push(("empty-dir/".to_owned(), Bytes::new()));
    objs
}

/// Changes one byte in the middle of `path`, keeping its size and time.
fn flip_a_byte(path: &Path) {
    let before = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    std::io::Read::read_exact(&mut f, &mut byte).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&[byte[0] ^ 0x10]).unwrap();
    f.set_modified(before).unwrap();
}

#[test]
fn check_names_missing_changed_and_extra_files_and_passes_a_clean_tree() {
    let objs = objects();
    let n = objs.len();
    let env = Env::new(vec![bucket("audit", objs.clone())]);
    let mut last = None;
    for e in engines() {
        let scratch = Scratch::new();
        let out = run(env.cmd().args(e.args()).args(PARTS).arg("s3://audit").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        // Clean: every file read against the checksum it kept (each writer keeps one).
        let out = run(env.check_cmd().arg("s3://audit").arg(scratch.dest()));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{e}: {err}");
        let want = format!(
            "checked {n} keys: {n} ok ({} by content, 1 by size and time only), 0 missing, 0 different, 0 extra",
            n - 1
        );
        assert!(err.contains(&want), "{e}: {err}");
        last = Some(scratch);
    }
    let scratch = last.expect("an engine");
    let dest = scratch.dest();
    std::fs::remove_file(dest.join("a/k01")).unwrap();
    flip_a_byte(&dest.join("a/k02"));
    flip_a_byte(&dest.join("b/large.bin"));
    std::fs::OpenOptions::new().append(true).open(dest.join("a/k03")).unwrap().write_all(b"more").unwrap();
    let k04 = std::fs::File::options().write(true).open(dest.join("a/k04")).unwrap();
    k04.set_modified(std::time::SystemTime::now()).unwrap();
    std::fs::create_dir_all(dest.join("c")).unwrap();
    std::fs::write(dest.join("c/new.txt"), "not in the bucket").unwrap();
    for checksum in [false, true] {
        let json = scratch.dir.path().join(format!("audit-{checksum}.json"));
        let out = run(env
            .check_cmd()
            .args(checksum.then_some("--checksum"))
            .arg("--stats-json")
            .arg(&json)
            .arg("s3://audit")
            .arg(&dest));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "--checksum {checksum}: {err}");
        let whose = if checksum { "the store's" } else { "the one kept when it was written" };
        for line in [
            "missing: a/k01".to_owned(),
            format!("different: a/k02: content does not match {whose}"),
            format!("different: b/large.bin: content does not match {whose}"),
            "different: a/k03: 709 bytes, the object has 705".to_owned(),
            "different: a/k04: modified at".to_owned(),
            "extra: c/new.txt".to_owned(),
        ] {
            assert!(err.lines().any(|l| l.starts_with(&line)), "--checksum {checksum}: {line}: {err}");
        }
        assert!(err.contains(&format!("checked {n} keys: {} ok", n - 5)), "{err}");
        let doc = stats(&json);
        let audit = &doc["audit"];
        assert_eq!(audit["missing"], serde_json::json!(["a/k01"]), "{audit}");
        assert_eq!(audit["extra"], serde_json::json!(["c/new.txt"]), "{audit}");
        assert_eq!(audit["different"].as_array().map(Vec::len), Some(4), "{audit}");
    }
    // The same filters as a copy: keys left out are not looked for, and their files are extra.
    let out = run(env.check_cmd().args(["--exclude", "*", "--include", "b/*"]).arg("s3://audit").arg(&dest));
    let err = stderr(&out);
    assert!(err.contains("checked 1 keys: 0 ok") && err.contains("0 missing, 1 different"), "{err}");
    assert!(!err.contains("a/k01") && err.contains("extra: a/k00"), "{err}");
}
