//! A server that lies: answers no S3 sends must fail the key (or the listing) with a reason and
//! end the run with its summary and a non-zero exit, never abort the process. The server is a
//! few lines of HTTP/1.1 on 127.0.0.1 here, since no S3 implementation answers like this.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use crate::util::*;

/// One key, `k`, of 10 bytes (its MD5 as ETag).
const LISTING: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#,
    "<Name>lying</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>",
    r#"<Contents><Key>k</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"781e5e245d69b566979b86e28d23f2c7"</ETag>"#,
    "<Size>10</Size><StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"
);

/// The same page, truncated, naming as the next page's the token it was asked with (or, for
/// the first request, the one every later request then sends).
const STUCK_LISTING: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#,
    "<Name>lying</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>",
    "<NextContinuationToken>again</NextContinuationToken>",
    r#"<Contents><Key>k</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"781e5e245d69b566979b86e28d23f2c7"</ETag>"#,
    "<Size>10</Size><StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"
);

/// Starts the server; `get` answers the GET of `k` on the connection (and may close it),
/// given the request's `Range` (first and last byte) if it had one.
fn lying_server(get: fn(&mut TcpStream, Option<(u64, u64)>)) -> String {
    lying_lister(get, |_, _| Some(LISTING))
}

/// Starts the server with `listing(n, target)` as the answer to the `n`th list request (from
/// 0), of that request target: a page, or `None` for a `500 InternalError`.
fn lying_lister(
    get: fn(&mut TcpStream, Option<(u64, u64)>),
    listing: fn(usize, &str) -> Option<&'static str>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        let lists = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for stream in listener.incoming().flatten() {
            let lists = lists.clone();
            std::thread::spawn(move || serve(stream, get, listing, &lists));
        }
    });
    format!("http://{addr}")
}

/// Answers requests on one connection: list requests with `listing`, the GET of `k` with
/// `get`, anything else (HeadBucket) with an empty 200.
fn serve(
    mut stream: TcpStream,
    get: fn(&mut TcpStream, Option<(u64, u64)>),
    listing: fn(usize, &str) -> Option<&'static str>,
    lists: &std::sync::atomic::AtomicUsize,
) {
    let Ok(read) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut range) = (0, None);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if let Some((first, last)) = lower.strip_prefix("range: bytes=").and_then(|r| r.trim().split_once('-')) {
                range = first.parse().ok().zip(last.parse().ok());
            }
        }
        let _ = reader.read_exact(&mut vec![0; length]);
        let mut words = request.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let answer = if method == "GET" && target.contains("list-type=2") {
            let n = lists.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match listing(n, target) {
                Some(page) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{page}",
                    page.len()
                ),
                None => {
                    let error =
                        "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>";
                    format!(
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{error}",
                        error.len()
                    )
                }
            }
        } else if method == "GET" && target.starts_with("/lying/k") {
            return get(&mut stream, range);
        } else {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()
        };
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Copies from the server with each fetch engine; the key must fail, named, with the summary
/// printed, exit 1 and no file at its name.
fn fails_the_key(url: &str) {
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let (out, err) = copy(url, fetch, "1", "1", &scratch);
        assert_eq!(out.status.code(), Some(1), "{fetch}: {err}");
        assert!(err.contains("s3uring: failed 'k': "), "{fetch}: {err}");
        assert!(err.contains("1 keys listed: 0 files written, 0 directories, 0 skipped, 1 failed"), "{fetch}: {err}");
        assert!(!scratch.dest().join("k").exists(), "{fetch}");
    }
}

/// `s3uring` copying `s3://lying/` from the server at `url` into `scratch`, with `fetch`,
/// `--list-workers` and `--retries` as given: its output and stderr.
fn copy(
    url: &str,
    fetch: &str,
    list_workers: &str,
    retries: &str,
    scratch: &Scratch,
) -> (std::process::Output, String) {
    let mut cmd = bare_cmd();
    cmd.env("AWS_ACCESS_KEY_ID", AK).env("AWS_SECRET_ACCESS_KEY", SK);
    let out = run(cmd
        .args(["--endpoint-url", url, "--fetch-engine", fetch, "--list-workers", list_workers, "--retries", retries])
        .args(["--hedge-after", "0", "s3://lying/"])
        .arg(scratch.dest()));
    let err = stderr(&out);
    (out, err)
}

#[test]
fn a_body_promised_at_100_tb_fails_the_key_and_the_run_ends_with_its_summary() {
    // Headers promise 100 TB; 10 bytes come in two writes (two frames at the client), then
    // the connection closes. Allocating what the header promised aborted the process.
    let url = lying_server(|stream, _| {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000000000000\r\nETag: \"781e5e245d69b566979b86e28d23f2c7\"\r\n\
                    Last-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n01234";
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.flush();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let _ = stream.write_all(b"56789");
        let _ = stream.shutdown(std::net::Shutdown::Both);
    });
    fails_the_key(&url);
}

#[test]
fn a_continuation_token_that_does_not_move_fails_the_listing_instead_of_listing_forever() {
    let url = lying_lister(
        ten_bytes,
        // After 50 requests, the plain page, so that a client that keeps asking still ends.
        |n, _| Some(if n < 50 { STUCK_LISTING } else { LISTING }),
    );
    for fetch in FETCH_ENGINES {
        for workers in ["1", "32"] {
            let scratch = Scratch::new();
            let (out, err) = copy(&url, fetch, workers, "0", &scratch);
            assert_eq!(out.status.code(), Some(1), "{fetch}, {workers}: {err}");
            assert!(err.contains("s3uring: listing stopped after 1 keys: "), "{fetch}, {workers}: {err}");
            assert!(err.contains("with the same token as the next page's"), "{fetch}, {workers}: {err}");
        }
    }
}

/// The object `k` as it is now, 3 MiB, where the listing says 10 bytes: whole, or the range
/// asked for (206, with its Content-Range), `total` being the size the server claims.
fn grown(stream: &mut TcpStream, range: Option<(u64, u64)>, total: u64) {
    const SIZE: u64 = 3 << 20;
    let body: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let (status, first, last) = match range {
        Some((first, last)) => ("206 Partial Content", first, last.min(SIZE - 1)),
        None => ("200 OK", 0, SIZE - 1),
    };
    // The ETag is the MD5 of what is served, as S3's is of a single-part upload's content.
    use md5::Digest as _;
    let md5: String = md5::Md5::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"{md5}\"\r\n\
         Last-Modified: Fri, 02 Jan 2026 00:00:00 GMT\r\n",
        last + 1 - first
    );
    if range.is_some() {
        head.push_str(&format!("Content-Range: bytes {first}-{last}/{total}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body[first as usize..=last as usize]);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_body_larger_than_listed_is_fetched_in_parts_at_its_real_size() {
    // The budget was charged 10 bytes: 512 such answers held whole would be gigabytes. The
    // object changed since the listing (or the server lies): fetched again as an object of
    // unknown size, in parts, and written as it is now, with its own time.
    let url = lying_server(|stream, range| grown(stream, range, 3 << 20));
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let (out, err) = copy(&url, fetch, "1", "1", &scratch);
        assert_eq!(out.status.code(), Some(0), "{fetch}: {err}");
        assert!(err.contains("1 keys listed: 1 files written"), "{fetch}: {err}");
        let file = scratch.dest().join("k");
        let got = std::fs::read(&file).expect("k written");
        assert_eq!(got.len(), 3 << 20, "{fetch}");
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "{fetch}: the bytes as served");
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        let want = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_312_000);
        assert_eq!(mtime, want, "{fetch}: the answer's Last-Modified, not the listing's");
    }
}

#[test]
fn a_size_above_s3s_maximum_fails_the_key_by_name() {
    let url = lying_server(|stream, range| grown(stream, range, 6 << 40));
    fails_the_key(&url);
    let scratch = Scratch::new();
    let (_, err) = copy(&url, "lean", "1", "1", &scratch);
    assert!(err.contains("more than S3's maximum of 5 TiB"), "{err}");
}

/// The GET of `k`: its 10 bytes.
fn ten_bytes(stream: &mut TcpStream, _: Option<(u64, u64)>) {
    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: \"781e5e245d69b566979b86e28d23f2c7\"\r\n\
                  Last-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n0123456789";
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_listing_that_fails_part_way_stops_with_exit_1_and_keeps_the_untried_failed_keys() {
    // The first page (with `k`) and then 500s for the next: the listing cannot go on. What was listed
    // is copied; the run says where the listing stopped and why, exits 1, and an old
    // failed-keys list keeps what this run never got to.
    let url = lying_lister(ten_bytes, |_, target| (!target.contains("continuation-token")).then_some(STUCK_LISTING));
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let list = scratch.dir.path().join("failed.txt");
        std::fs::write(&list, "untried\tan earlier failure\n").unwrap();
        let mut cmd = bare_cmd();
        cmd.env("AWS_ACCESS_KEY_ID", AK).env("AWS_SECRET_ACCESS_KEY", SK);
        let out = run(cmd
            .args(["--endpoint-url", &url, "--fetch-engine", fetch, "--retries", "1", "--hedge-after", "0"])
            .arg("--failed-keys")
            .arg(&list)
            .args(["s3://lying/"])
            .arg(scratch.dest()));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{fetch}: {err}");
        assert!(err.contains("listing stopped after 1 keys: "), "{fetch}: {err}");
        assert!(err.contains("InternalError"), "{fetch}: the store's answer named: {err}");
        assert_eq!(std::fs::read(scratch.dest().join("k")).ok().as_deref(), Some(&b"0123456789"[..]), "{fetch}");
        let kept = std::fs::read_to_string(&list).unwrap();
        assert!(kept.starts_with("untried\t"), "{fetch}: the old list's untried key kept: {kept:?}");
    }
}
