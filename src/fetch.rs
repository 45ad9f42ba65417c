//! Fetching one object: the chosen engine (`--fetch-engine lean|sdk`) and the retry policy
//! both share.
//!
//! Retry policy (`--retries N`): a transient failure (5xx, reset, timeout, short body) or a
//! throttling answer (SlowDown, 503, 429) is tried again after an exponential backoff with
//! full jitter — a random wait in `[0, min(cap, base · 2^attempt))` — so many tasks failing
//! together do not come back together. Permanent errors (NoSuchKey, AccessDenied, …) fail
//! the key at once. Every retry is counted in the summary, throttled ones separately.
//!
//! Throttling slows the whole run instead of burning retries ([`Throttle`]): GETs in flight
//! are limited by a target that is cut to ¾ on a throttling answer (at most once per
//! [`CUT_INTERVAL`], so one burst of 503s counts once) and grows by one per `target / 4`
//! successes back up to `--workers` (AIMD, as TCP does with loss).
//!
//! Hedging (`--hedge-after MS`): an attempt of a small object that has not completed after
//! the threshold is sent again on a new connection, and the first answer wins (AWS's advice
//! for S3 tail latency); the loser is dropped with its connection.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Config, FetchEngine};
use crate::lean::{Conn, Lean};
use crate::report::Report;
use crate::s3::{self, ByteRange, Control, Fetched, GetError, Retry};

/// First backoff bound; doubles per attempt up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// The throttle's target is cut at most this often.
const CUT_INTERVAL: Duration = Duration::from_millis(250);
/// The throttle never goes below this many GETs in flight.
const MIN_IN_FLIGHT: usize = 4;
/// Objects above this size are not hedged (a second copy of a large body is not cheap).
const HEDGE_MAX_SIZE: u64 = 8 << 20;

/// The engine all fetch tasks share, and whether bodies are verified (`--verify`).
pub struct Engine {
    kind: Kind,
    verify: bool,
    throttle: Throttle,
    /// `--hedge-after`; `None`: no hedging.
    hedge_after: Option<Duration>,
    /// `--version-id` (single-object copies only).
    version_id: Option<String>,
}

enum Kind {
    Lean(Box<Lean>),
    Sdk { client: aws_sdk_s3::Client, bucket: String, requester_pays: bool },
}

impl Engine {
    /// The configured engine. `lean` falls back to `sdk`, with a warning, for endpoints it
    /// cannot sign for (S3 Express, multi-region access points).
    pub async fn new(cfg: &Config, control: &Control, report: &Arc<Report>) -> Result<Engine, String> {
        let bucket = &cfg.source.bucket;
        let verify = cfg.verify;
        let requester_pays = cfg.s3.requester_pays;
        let sdk = || Kind::Sdk { client: control.client_no_retry.clone(), bucket: bucket.clone(), requester_pays };
        let kind = match cfg.fetch_engine {
            FetchEngine::Sdk => sdk(),
            FetchEngine::Lean => match control.bucket_endpoint(bucket).await {
                Ok(ep) => Kind::Lean(Box::new(Lean::new(
                    bucket,
                    &ep,
                    control.identities(),
                    report.clone(),
                    verify,
                    requester_pays,
                    cfg.s3.ca_bundle.as_ref(),
                )?)),
                Err(why) => {
                    tracing::warn!("{why}: using --fetch-engine sdk");
                    sdk()
                }
            },
        };
        let hedge_after = (cfg.hedge_after_ms > 0).then(|| Duration::from_millis(cfg.hedge_after_ms));
        Ok(Engine {
            kind,
            verify,
            throttle: Throttle::new(cfg.workers.max(1)),
            hedge_after,
            version_id: cfg.version_id.clone(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Lean(_) => "lean",
            Kind::Sdk { .. } => "sdk",
        }
    }

    /// `--verify`: bodies are checked against their checksums.
    pub fn verifies(&self) -> bool {
        self.verify
    }

    /// The fewest GETs the throttle allowed in flight during the run.
    pub fn min_in_flight(&self) -> usize {
        self.throttle.lowest.load(Ordering::Relaxed)
    }

    /// One attempt on `conn`, bounded as a whole by [`attempt_timeout`] (connect and first
    /// byte have their own, shorter bounds inside the engines).
    async fn attempt(
        &self,
        conn: &mut Conn,
        key: &str,
        size: u64,
        range: Option<&ByteRange>,
    ) -> Result<Fetched, GetError> {
        let limit = attempt_timeout(size);
        let got = tokio::time::timeout(limit, async {
            match &self.kind {
                Kind::Lean(lean) => lean.get(conn, key, self.version_id.as_deref(), range).await,
                Kind::Sdk { client, bucket, requester_pays } => {
                    let version = self.version_id.as_deref();
                    s3::get(client, bucket, key, self.verify, *requester_pays, version, range).await
                }
            }
        })
        .await;
        match got {
            Ok(r) => r,
            Err(_) => {
                // The connection is mid-response: never reuse it.
                *conn = Conn::default();
                Err(GetError::transient(format!("attempt timed out after {} s", limit.as_secs())))
            }
        }
    }

    /// One attempt, hedged: if it has not finished after `--hedge-after`, a second one starts
    /// on a new connection and the first to finish wins.
    async fn hedged_attempt(
        &self,
        conn: &mut Conn,
        key: &str,
        size: u64,
        range: Option<&ByteRange>,
        report: &Report,
    ) -> Result<Fetched, GetError> {
        let Some(after) = self.hedge_after.filter(|_| size <= HEDGE_MAX_SIZE) else {
            return self.attempt(conn, key, size, range).await;
        };
        let mut spare = Conn::default();
        let (result, spare_won) = {
            let first = self.attempt(conn, key, size, range);
            tokio::pin!(first);
            tokio::select! {
                biased;
                r = &mut first => (r, false),
                () = tokio::time::sleep(after) => {
                    report.hedged();
                    let second = self.attempt(&mut spare, key, size, range);
                    tokio::pin!(second);
                    tokio::select! {
                        r = &mut first => (r, false),
                        r = &mut second => (r, true),
                    }
                }
            }
        };
        if spare_won {
            report.hedge_won();
            // The first attempt was dropped mid-request: its connection is gone.
            *conn = spare;
        }
        result
    }

    /// GETs `key` (`size` from the listing, 0 if unknown; for a `range`, its length) or the
    /// `range` of it, retrying as
    /// the policy says; the error is the last attempt's reason. A part is not verified here:
    /// S3 has no checksum of a byte range.
    pub async fn fetch(
        &self,
        conn: &mut Conn,
        key: &str,
        size: u64,
        range: Option<&ByteRange>,
        retries: u32,
        report: &Report,
    ) -> Result<Fetched, String> {
        let mut attempt = 0u32;
        loop {
            let got = {
                let _slot = self.throttle.acquire().await;
                self.hedged_attempt(conn, key, size, range, report).await
            };
            match &got {
                Ok(_) => self.throttle.success(),
                Err(e) if e.retry == Retry::Throttled => self.throttle.throttled(),
                Err(_) => {}
            }
            let got = match got {
                Ok(f) if self.verify && range.is_none() => verify(f, report),
                other => other,
            };
            if let Err(e) = &got
                && e.retry == Retry::Corrupt
            {
                report.corrupt();
            }
            match got {
                Ok(f) => return Ok(f),
                Err(e) if e.retry == Retry::No || attempt >= retries => {
                    return Err(if attempt > 0 {
                        format!("{} (after {} attempts)", e.reason, attempt + 1)
                    } else {
                        e.reason
                    });
                }
                Err(e) => {
                    report.retried(e.retry == Retry::Throttled);
                    tracing::debug!(key, attempt, reason = %e.reason, "retrying GET");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// AIMD on GETs in flight (see the module notes).
struct Throttle {
    max: usize,
    target: AtomicUsize,
    in_flight: AtomicUsize,
    successes: AtomicUsize,
    lowest: AtomicUsize,
    last_cut: Mutex<Option<Instant>>,
    freed: tokio::sync::Notify,
}

/// A GET's place under the throttle; released on drop.
struct Slot<'a>(&'a Throttle);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl Throttle {
    fn new(max: usize) -> Throttle {
        Throttle {
            max,
            target: AtomicUsize::new(max),
            in_flight: AtomicUsize::new(0),
            successes: AtomicUsize::new(0),
            lowest: AtomicUsize::new(max),
            last_cut: Mutex::new(None),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Waits until fewer GETs than the target are in flight.
    async fn acquire(&self) -> Slot<'_> {
        loop {
            let cur = self.in_flight.load(Ordering::Acquire);
            if cur < self.target.load(Ordering::Acquire) {
                if self.in_flight.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return Slot(self);
                }
                continue;
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) < self.target.load(Ordering::Acquire) {
                continue;
            }
            freed.await;
        }
    }

    fn success(&self) {
        let target = self.target.load(Ordering::Relaxed);
        if target >= self.max {
            return;
        }
        if self.successes.fetch_add(1, Ordering::Relaxed) + 1 >= (target / 4).max(1) {
            self.successes.store(0, Ordering::Relaxed);
            self.target.fetch_add(1, Ordering::AcqRel);
            self.freed.notify_one();
        }
    }

    fn throttled(&self) {
        let Ok(mut last) = self.last_cut.lock() else { return };
        if last.is_some_and(|t| t.elapsed() < CUT_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        let target = self.target.load(Ordering::Relaxed);
        let cut = (target * 3 / 4).max(MIN_IN_FLIGHT.min(self.max));
        self.target.store(cut, Ordering::Release);
        self.successes.store(0, Ordering::Relaxed);
        self.lowest.fetch_min(cut, Ordering::Relaxed);
        tracing::debug!(target = cut, "throttled: fewer GETs in flight");
    }
}

/// `--verify`: a body that does not match its checksum is [`Retry::Corrupt`] (retried, counted,
/// never written).
fn verify(f: Fetched, report: &Report) -> Result<Fetched, GetError> {
    let integrity = f.integrity.clone().unwrap_or_default();
    match crate::verify::check(&f.body, &integrity) {
        Ok(how) => {
            report.verified(how);
            Ok(f)
        }
        Err(reason) => Err(GetError { reason, retry: Retry::Corrupt }),
    }
}

/// A whole attempt may take 60 s plus one second per MiB (a slow but moving 1 MiB/s).
fn attempt_timeout(size: u64) -> Duration {
    Duration::from_secs(60 + (size >> 20))
}

/// Full-jitter exponential backoff before retry number `attempt + 1`.
fn backoff(attempt: u32) -> Duration {
    let bound = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    bound.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..40 {
            let bound = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
            for _ in 0..50 {
                assert!(backoff(attempt) <= bound);
            }
        }
        assert_eq!(BACKOFF_BASE.saturating_mul(1u32 << 16).min(BACKOFF_CAP), BACKOFF_CAP);
    }
}
