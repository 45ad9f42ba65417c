//! Unit tests of the fetch path through its [`ObjectStore`] seam: an in-memory store that
//! serves objects and byte ranges as S3 does (ETag, Content-Range, `If-Match`, no range of
//! an empty object) and answers with scripted failures first, driving the retry loop, the
//! rate limiter, hedging, the byte budget and the large-object part scheduler in
//! milliseconds. The integration tests run the same paths over HTTP against real servers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::store::{ByteRange, Fetched, GetError, GetFuture, ObjectStore, PartInfo, Retry};
use super::{Engine, task};
use crate::config::{Config, Parts, S3Settings};
use crate::queue::{Listed, Room};
use crate::report::Report;
use crate::s3::UNKNOWN_SIZE;
use crate::stop::Stop;
use crate::writer::Job;

/// What the store does with the next attempt of a key, before serving it.
enum Script {
    /// Answer with this error.
    Fail(GetError),
    /// Send no headers for this long, then serve.
    Late(Duration),
    /// Serve, then replace the object with this body (a new version).
    Replace(Bytes),
}

#[derive(Default)]
struct Memory {
    /// Key → (body, ETag with its quotes, as S3 sends it).
    objects: Mutex<HashMap<String, (Bytes, String)>>,
    script: Mutex<HashMap<String, VecDeque<Script>>>,
    /// Every attempt: key and range asked.
    asked: Mutex<Vec<(String, Option<ByteRange>)>>,
    /// How long each attempt takes to answer.
    delay: Duration,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts an attempt in flight until it is answered or dropped (a hedge's loser).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Memory {
    fn with_delay(delay: Duration) -> Arc<Memory> {
        Arc::new(Memory { delay, ..Memory::default() })
    }

    fn put(&self, key: &str, body: Bytes) {
        let etag = format!("\"etag-{}-{}\"", key.len(), body.len());
        self.objects.lock().expect("objects").insert(key.to_owned(), (body, etag));
    }

    fn then(&self, key: &str, step: Script) {
        self.script.lock().expect("script").entry(key.to_owned()).or_default().push_back(step);
    }

    fn attempts(&self, key: &str) -> usize {
        self.asked.lock().expect("asked").iter().filter(|(k, _)| k == key).count()
    }

    async fn serve(&self, key: &str, range: Option<&ByteRange>, first_byte: &AtomicBool) -> Result<Fetched, GetError> {
        self.asked.lock().expect("asked").push((key.to_owned(), range.cloned()));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _counted = InFlight(&self.in_flight);
        tokio::time::sleep(self.delay).await;
        let step = self.script.lock().expect("script").get_mut(key).and_then(VecDeque::pop_front);
        let replace = match step {
            Some(Script::Fail(e)) => return Err(e),
            Some(Script::Late(d)) => {
                tokio::time::sleep(d).await;
                None
            }
            Some(Script::Replace(new)) => Some(new),
            None => None,
        };
        let fail = |reason: &str, status: u16, code: &str| GetError {
            reason: reason.to_owned(),
            retry: super::store::classify(status, code),
        };
        let Some((body, etag)) = self.objects.lock().expect("objects").get(key).cloned() else {
            return Err(fail("NoSuchKey", 404, "NoSuchKey"));
        };
        if let Some(new) = replace {
            self.put(key, new);
        }
        first_byte.store(true, Ordering::Relaxed);
        let (body, part) = match range {
            None => (body, None),
            Some(r) => {
                if r.if_match.as_ref().is_some_and(|m| *m != etag) {
                    return Err(fail("PreconditionFailed", 412, "PreconditionFailed"));
                }
                if body.is_empty() {
                    return Err(fail("InvalidRange: the object is empty", 416, "InvalidRange"));
                }
                let size = body.len() as u64;
                let end = (r.first + r.len).min(size);
                let part = PartInfo { etag: Some(etag), total: Some(size) };
                (body.slice(r.first as usize..end as usize), Some(part))
            }
        };
        let (ttfb, body_time) = (Duration::ZERO, Duration::ZERO);
        Ok(Fetched { body, last_modified: None, ttfb, body_time, integrity: None, part, framed: true })
    }
}

impl ObjectStore for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        _version: Option<&'a str>,
        range: Option<&'a ByteRange>,
        _most: u64,
        first_byte: &'a AtomicBool,
    ) -> GetFuture<'a> {
        Box::pin(self.serve(key, range, first_byte))
    }
}

fn config(workers: usize) -> Config {
    let mut cfg = Config::new("s3://bucket/".parse().expect("a URL"), "/nonexistent".into(), S3Settings::default());
    cfg.workers = workers;
    cfg.hedge_after_ms = 0;
    cfg
}

fn error(retry: Retry, reason: &str) -> GetError {
    GetError { reason: reason.to_owned(), retry }
}

fn body(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// What the writer was handed, without the budget permits (dropped at once, as the writer
/// does once a file is on disk).
#[derive(Debug)]
enum Handed {
    File { key: String, body: Bytes },
    Part { key: String, offset: u64, body: Bytes, size: u64 },
    Abandon { key: String, parts: u64, reason: Option<String> },
}

/// Runs the fetch tasks over `keys` (key, size from the listing) to the end.
async fn restore(store: &Arc<Memory>, cfg: &Config, keys: &[(&str, u64)]) -> (Vec<Handed>, Arc<Report>) {
    let engine = Arc::new(Engine::with_store(store.clone(), cfg));
    let report = Arc::new(Report::silent());
    let (keys_tx, keys_rx) = async_channel::bounded(cfg.queue.max(1));
    let room = Room::new(cfg.queue.max(1));
    let (jobs_tx, jobs_rx) = async_channel::bounded(8);
    let tasks = task::start(&engine, cfg, keys_rx, &room, &jobs_tx, &report, &Stop::never());
    drop(jobs_tx);
    let listed: Vec<Listed> = keys
        .iter()
        .map(|&(key, size)| Listed {
            key: key.to_owned(),
            size,
            last_modified: None,
            etag: None,
            target: crate::keymap::map_key(key).expect("a safe key"),
            listed_at: Instant::now(),
        })
        .collect();
    let feed = tokio::spawn(async move {
        for item in listed {
            keys_tx.send(item).await.expect("fetch tasks are running");
        }
    });
    let mut handed = Vec::new();
    while let Ok(job) = jobs_rx.recv().await {
        handed.push(match job {
            Job::File(f) => Handed::File { key: f.key, body: f.body },
            Job::Part { file, offset, body, .. } => {
                Handed::Part { key: file.key.clone(), offset, body, size: file.size }
            }
            Job::Abandon { file, parts, reason } => Handed::Abandon { key: file.key.clone(), parts, reason },
            Job::Dir { key, .. } => panic!("no directory marker was listed: {key}"),
        });
    }
    feed.await.expect("feeding keys");
    for t in tasks {
        t.await.expect("a fetch task");
    }
    (handed, report)
}

#[tokio::test]
async fn throttling_answers_lower_the_rate_and_spend_no_retries() {
    let store = Memory::with_delay(Duration::ZERO);
    store.put("a", body(10));
    for _ in 0..3 {
        store.then("a", Script::Fail(error(Retry::Throttled, "SlowDown")));
    }
    let mut cfg = config(4);
    cfg.retries = 0;
    let engine = Engine::with_store(store.clone(), &cfg);
    let report = Report::silent();
    // A run cuts its rate once it has sent enough GETs to know the throttled fraction before
    // the cut.
    store.put("first", body(10));
    store.then("first", Script::Fail(error(Retry::Throttled, "SlowDown")));
    engine.fetch("first", 10, None, cfg.retries, &report).await.expect("throttling is not a failure");
    for i in 0..64 {
        let key = format!("k{i}");
        store.put(&key, body(10));
        engine.fetch(&key, 10, None, cfg.retries, &report).await.expect("no fault");
    }
    let got = engine.fetch("a", 10, None, cfg.retries, &report).await.expect("throttling is not a failure");
    assert_eq!(got.body, body(10));
    assert_eq!(store.attempts("a"), 4);
    let fetch = report.summary(Duration::from_secs(1), "threads", "memory").fetch.counts;
    assert_eq!((fetch.retries, fetch.throttled), (4, 4));
    let limits = engine.throttle_stats();
    assert_eq!(limits.throttled, 4);
    let root = limits.partitions.first().expect("the root partition is limited now");
    assert!(root.cuts >= 1 && root.rate.is_some(), "{root:?}");
}

#[tokio::test]
async fn permanent_errors_fail_at_once_and_transient_ones_spend_the_retries() {
    let store = Memory::with_delay(Duration::ZERO);
    store.put("flaky", body(10));
    store.put("denied", body(10));
    store.then("denied", Script::Fail(error(Retry::No, "AccessDenied")));
    for _ in 0..5 {
        store.then("flaky", Script::Fail(error(Retry::Transient, "InternalError")));
    }
    let mut cfg = config(4);
    cfg.retries = 2;
    let engine = Engine::with_store(store.clone(), &cfg);
    let report = Report::silent();
    let denied = engine.fetch("denied", 10, None, cfg.retries, &report).await.expect_err("permanent");
    assert_eq!((denied.as_str(), store.attempts("denied")), ("AccessDenied", 1));
    let missing = engine.fetch("missing", 10, None, cfg.retries, &report).await.expect_err("no such key");
    assert_eq!((missing.as_str(), store.attempts("missing")), ("NoSuchKey", 1));
    let flaky = engine.fetch("flaky", 10, None, cfg.retries, &report).await.expect_err("out of retries");
    assert_eq!((flaky.as_str(), store.attempts("flaky")), ("InternalError (after 3 attempts)", 3));
    let fetch = report.summary(Duration::from_secs(1), "threads", "memory").fetch.counts;
    assert_eq!((fetch.retries, fetch.throttled), (2, 0));
    // Two more transient failures are left in the script: a run with enough retries gets it.
    cfg.retries = 4;
    let engine = Engine::with_store(store.clone(), &cfg);
    assert_eq!(engine.fetch("flaky", 10, None, cfg.retries, &report).await.expect("fourth attempt").body, body(10));
}

#[tokio::test]
async fn a_service_that_only_throttles_fails_the_key_and_stops_the_run_after_the_stall_timeout() {
    let store = Memory::with_delay(Duration::ZERO);
    store.put("a", body(10));
    for _ in 0..10_000 {
        store.then("a", Script::Fail(error(Retry::Throttled, "SlowDown")));
    }
    let mut cfg = config(4);
    cfg.stall_timeout = Duration::from_millis(200);
    let engine = Engine::with_store(store.clone(), &cfg);
    let report = Report::silent();
    let err = engine.fetch("a", 10, None, cfg.retries, &report).await.expect_err("stalled");
    assert!(err.contains("--stall-timeout"), "{err}");
    assert!(report.aborted().is_some_and(|why| why.contains("no GET succeeded")), "{:?}", report.aborted());
    assert!(store.attempts("a") > 1);
}

#[tokio::test]
async fn an_attempt_without_an_answer_is_hedged_and_the_spare_can_win() {
    let store = Memory::with_delay(Duration::ZERO);
    store.put("a", body(10));
    store.then("a", Script::Late(Duration::from_secs(30)));
    let mut cfg = config(4);
    cfg.hedge_after_ms = 20;
    let engine = Engine::with_store(store.clone(), &cfg);
    let report = Report::silent();
    let got = engine.fetch("a", 10, None, cfg.retries, &report).await.expect("the spare answers");
    assert_eq!(got.body, body(10));
    let fetch = report.summary(Duration::from_secs(1), "threads", "memory").fetch.counts;
    assert_eq!((fetch.hedged, fetch.hedge_won), (1, 1));
    assert_eq!(store.in_flight.load(Ordering::SeqCst), 0, "the late attempt was dropped");
}

#[tokio::test]
async fn the_byte_budget_bounds_the_bytes_in_flight_whatever_the_workers() {
    let store = Memory::with_delay(Duration::from_millis(2));
    let keys: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
    for k in &keys {
        store.put(k, body(4096));
    }
    let mut cfg = config(16);
    cfg.buffer_bytes = 8192; // two objects of 4 KiB
    let listed: Vec<(&str, u64)> = keys.iter().map(|k| (k.as_str(), 4096)).collect();
    let (handed, report) = restore(&store, &cfg, &listed).await;
    assert_eq!(handed.iter().filter(|h| matches!(h, Handed::File { body, .. } if body.len() == 4096)).count(), 40);
    assert_eq!(report.counts().failed, 0);
    assert_eq!(store.max_in_flight.load(Ordering::SeqCst), 2, "16 workers, budget for 2 objects");
}

#[tokio::test]
async fn a_large_object_comes_in_parts_of_one_version_at_most_part_concurrency_at_once() {
    let store = Memory::with_delay(Duration::from_millis(2));
    let size = 100_000;
    store.put("big", body(size));
    let mut cfg = config(8);
    cfg.parts = Parts { threshold: 16 << 10, part_size: 16 << 10, concurrency: 3 };
    let (handed, report) = restore(&store, &cfg, &[("big", size as u64)]).await;
    assert_eq!(report.counts().failed, 0);
    let mut file = vec![None; size];
    for h in &handed {
        let Handed::Part { key, offset, body, size: announced } = h else { panic!("only parts: {h:?}") };
        assert_eq!((key.as_str(), *announced), ("big", size as u64));
        for (i, b) in body.iter().enumerate() {
            assert!(file[*offset as usize + i].replace(*b).is_none(), "byte {} twice", *offset as usize + i);
        }
    }
    let whole: Vec<u8> = file.into_iter().map(|b| b.expect("every byte came")).collect();
    assert_eq!(whole, body(size));
    assert_eq!(handed.len(), 7, "ceil(100,000 / 16 KiB) parts");
    let asked = store.asked.lock().expect("asked").clone();
    assert!(asked[0].1.as_ref().is_some_and(|r| r.first == 0 && r.if_match.is_none()), "{:?}", asked[0]);
    let etag = store.objects.lock().expect("objects")["big"].1.clone();
    assert!(asked[1..].iter().all(|(_, r)| r.as_ref().and_then(|r| r.if_match.as_ref()) == Some(&etag)));
    let most = store.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=3).contains(&most), "parts in flight at once: {most}");
}

#[tokio::test]
async fn a_part_of_another_version_abandons_the_file_with_the_reason() {
    let store = Memory::with_delay(Duration::ZERO);
    store.put("big", body(40_000));
    // The object is replaced once its first part was served: If-Match fails the next one.
    store.then("big", Script::Replace(body(39_999)));
    let mut cfg = config(2);
    cfg.parts = Parts { threshold: 16 << 10, part_size: 16 << 10, concurrency: 1 };
    let (handed, _) = restore(&store, &cfg, &[("big", 40_000)]).await;
    let abandoned: Vec<_> = handed.iter().filter(|h| matches!(h, Handed::Abandon { .. })).collect();
    let [Handed::Abandon { key, parts, reason: Some(reason) }] = abandoned[..] else { panic!("{handed:?}") };
    assert_eq!((key.as_str(), *parts), ("big", 2));
    assert!(reason.starts_with("part 2 of 3") && reason.contains("PreconditionFailed"), "{reason}");
}

#[tokio::test]
async fn a_key_of_unknown_size_is_told_by_its_first_range() {
    let store = Memory::with_delay(Duration::ZERO);
    store.put("small", body(1000));
    store.put("empty", Bytes::new());
    store.put("large", body(300_000));
    let cfg = config(4);
    let keys = [("small", UNKNOWN_SIZE), ("empty", UNKNOWN_SIZE), ("large", UNKNOWN_SIZE)];
    let (handed, report) = restore(&store, &cfg, &keys).await;
    assert_eq!(report.counts().failed, 0);
    let file = |name: &str| {
        handed.iter().find_map(|h| match h {
            Handed::File { key, body } if key == name => Some(body.clone()),
            _ => None,
        })
    };
    assert_eq!(file("small"), Some(body(1000)), "a small object is one file job");
    assert_eq!(file("empty"), Some(Bytes::new()), "no range of an empty object: it is empty");
    let parts: u64 = handed
        .iter()
        .filter_map(|h| match h {
            Handed::Part { key, body, size, .. } if key == "large" => Some((body.len() as u64, *size)),
            _ => None,
        })
        .map(|(len, size)| {
            assert_eq!(size, 300_000);
            len
        })
        .sum();
    assert_eq!(parts, 300_000, "the rest of a larger one follows in parts");
    let first = store.asked.lock().expect("asked").iter().find(|(k, _)| k == "small").and_then(|(_, r)| r.clone());
    assert_eq!(first.map(|r| (r.first, r.len)), Some((0, 256 << 10)));
}
