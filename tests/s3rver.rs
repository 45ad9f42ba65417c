//! Against a second S3 implementation this project did not write: s3rver (npm: `s3rver`, a
//! Node.js server keeping objects in files, which `.ci/run` installs), started by the tests on
//! 127.0.0.1. It differs from S3 and from moto where a copier can trip: it ignores
//! `encoding-type=url` and so sends every key raw in the listing XML — a control character included, which XML 1.0 cannot carry — lists with milliseconds,
//! and has its own namespace, pagination tokens and range handling. It knows access key ids
//! but does not check V4 signatures.

use std::process::Command;

use bytes::Bytes;

use crate::util::*;

/// s3rver's fixed credentials.
const CREDS: (&str, &str) = ("S3RVER", "S3RVER");

/// An s3rver on a free port with its own data directory, stopped on drop.
struct S3rver {
    _server: Server,
    url: String,
    _data: tempfile::TempDir,
}

impl S3rver {
    /// `None`, having said why, where s3rver is not installed.
    fn start() -> Option<S3rver> {
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let mut cmd = Command::new(std::env::var_os("S3RVER").unwrap_or_else(|| "s3rver".into()));
        cmd.arg("--directory").arg(data.path());
        cmd.args(["--address", "127.0.0.1", "--port", &port.to_string(), "--silent"]);
        // Its continuation tokens are DES-encrypted, which OpenSSL 3 (Node.js 17 and later)
        // keeps in its legacy provider: without it every truncated listing is a 500.
        cmd.env("NODE_OPTIONS", "--openssl-legacy-provider");
        let child = start_server(&mut cmd, port, "s3rver (npm)")?;
        Some(S3rver { _server: child, url: format!("http://127.0.0.1:{port}"), _data: data })
    }

    fn cmd(&self) -> Command {
        let mut c = bare_cmd();
        c.arg("--endpoint-url").arg(&self.url);
        c.env("AWS_ACCESS_KEY_ID", CREDS.0).env("AWS_SECRET_ACCESS_KEY", CREDS.1);
        c
    }

    fn fill(&self, bucket: &str, objects: &[(String, Bytes)]) {
        put_objects(&self.url, CREDS, None, bucket, objects);
    }
}

#[test]
fn s3rver_raw_keys_in_the_listing_pages_resume_and_verify() {
    let Some(store) = S3rver::start() else { return };
    // Past one page of 1,000 keys: s3rver's own continuation tokens, and ranges for parallel
    // listing. The odd keys come back raw: a space, '+', '%41' and '&<>' as they are, the
    // control character as a bare U+0001 in the XML.
    let mut keys: Vec<String> = (0..1100).map(|i| format!("p{}/k{i:05}", i % 3)).collect();
    keys.extend(
        ["odd/sp ace/ü n.txt", "odd/plus+sign", "odd/pct%41", "odd/ctl\u{1}key", "odd/tab\tkey", "odd/amp&<lt>"]
            .map(String::from),
    );
    let objs: Vec<(String, Bytes)> = keys.iter().map(|k| (k.clone(), content(k, 100 + k.len()))).collect();
    store.fill("raw-keys", &objs);
    let want = expected_tree(&objs, "");
    let n = objs.len();
    for (i, e) in engines().into_iter().enumerate() {
        let list_workers = if i % 2 == 0 { "1" } else { "16" };
        let scratch = Scratch::new();
        let copy = |extra: &[&str]| {
            run(store
                .cmd()
                .args(e.args())
                .args(["--list-workers", list_workers])
                .args(extra)
                .arg("s3://raw-keys")
                .arg(scratch.dest()))
        };
        let out = copy(&["--verify"]);
        assert_eq!(out.status.code(), Some(0), "{e}, {list_workers} list workers: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &want);
        assert!(summary_counts(&out).starts_with(&format!("{n} keys listed: {n} files written")), "{}", stderr(&out));
        assert!(stderr(&out).contains(&format!("verified {n} bodies")), "{e}: {}", stderr(&out));
        // Listed with milliseconds, written with them: a complete tree is skipped whole.
        let out = copy(&[]);
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert!(
            summary_counts(&out).contains(&format!("0 files written, 0 directories, {n} skipped")),
            "{}",
            stderr(&out)
        );
        // A prefix holding only the odd keys, as SOURCE.
        let sub = Scratch::new();
        let out = run(store.cmd().args(e.args()).arg("s3://raw-keys/odd/").arg(sub.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        let odd: Vec<_> = objs.iter().filter(|(k, _)| k.starts_with("odd/")).cloned().collect();
        assert_same_tree(&read_tree(&sub.dest()), &expected_tree(&odd, "odd/"));
        // By key list: sizes unknown, so each object goes by a first range through the window
        // (a key with a tab cannot be a line of the list).
        let listed: Vec<_> = objs.iter().filter(|(k, _)| !k.contains('\t')).cloned().collect();
        let by_list = Scratch::new();
        let keys = by_list.keys_file(&listed);
        let out =
            run(store.cmd().args(e.args()).arg("--keys-from").arg(&keys).arg("s3://raw-keys").arg(by_list.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert_same_tree(&read_tree(&by_list.dest()), &expected_tree(&listed, ""));
    }
}

#[test]
fn s3rver_large_objects_in_ranged_parts_verified_empty_objects_and_directory_markers() {
    let Some(store) = S3rver::start() else { return };
    let mut objs: Vec<(String, Bytes)> =
        (0..3).map(|i| format!("big/o{i}")).map(|k| (k.clone(), content(&k, (3 << 20) + 12_345))).collect();
    objs.push(("small/empty".to_owned(), Bytes::new()));
    objs.push(("small/one".to_owned(), content("small/one", 1)));
    // A directory marker (an empty key ending in '/'), as consoles create: a directory, no file.
    objs.push(("markers/dir/".to_owned(), Bytes::new()));
    store.fill("large", &objs);
    let want = expected_tree(&objs, "");
    for e in engines() {
        let scratch = Scratch::new();
        let parts = ["--multipart-threshold", "1MiB", "--part-size", "1MiB"];
        // --verify: its ETags are MD5s, so the large files are read back and checked too.
        let out = run(store.cmd().args(e.args()).args(parts).arg("--verify").arg("s3://large").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &want);
        assert!(
            stderr(&out).contains("verified 5 bodies (0 by x-amz-checksum, 5 by ETag MD5); 0 had nothing"),
            "{e}: {}",
            stderr(&out)
        );
        std::fs::remove_file(scratch.dest().join("big/o1")).unwrap();
        let out = run(store.cmd().args(e.args()).args(parts).arg("s3://large").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{e}: {}", stderr(&out));
        assert!(summary_counts(&out).starts_with("6 keys listed: 1 files written"), "{}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &want);
    }
}

/// Keys that differ only in case, listed by s3rver (which keeps them apart in its own
/// directory), copied onto exFAT, which does not: one of each pair lands, the other fails.
#[test]
fn s3rver_keys_differing_only_in_case_onto_a_case_insensitive_dest() {
    let Some(store) = S3rver::start() else { return };
    store.fill("case", &crate::keys::case_objects());
    let _ = crate::keys::case_pairs_onto_exfat(&|| store.cmd(), "s3://case");
}
