//! Fetching one object: the chosen engine (`--fetch-engine lean|sdk`) and the retry policy
//! both share.
//!
//! Retry policy (`--retries N`): a transient failure (5xx, reset, timeout, short body) or a
//! throttling answer (SlowDown, 503, 429) is tried again after an exponential backoff with
//! full jitter — a random wait in `[0, min(cap, base · 2^attempt))` — so many tasks failing
//! together do not come back together. Permanent errors (NoSuchKey, AccessDenied, …) fail
//! the key at once. Every retry is counted in the summary, throttled ones separately.
//!
//! Throttling slows the whole run instead of failing keys ([`crate::fetch::throttle`]): a
//! SlowDown/503/429 answer lowers the rate of GETs of that key's partition, and the key is
//! tried again without spending `--retries` — as long as the run makes progress: when no GET
//! at all has succeeded for `--stall-timeout`, the key fails and the run stops.
//!
//! Hedging (`--hedge-after MS`): an attempt of a small object whose response has not begun
//! (no headers) after the threshold is sent again on a new connection, and the first answer
//! wins (AWS's advice for S3 tail latency: a late first byte); the loser is dropped with its
//! connection. A body that is merely slow to arrive is not duplicated. The timer starts once the
//! first request has its send slot, and the second request takes a slot of its own: hedges
//! obey the rate limit like every GET.

pub mod lean;
mod parked;
mod proxy;
pub mod sdk;
mod sigv4;
pub mod store;
pub mod task;
pub mod throttle;
#[cfg(test)]
mod timeouts;
mod tls;
pub mod window;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{Config, FetchEngine, Verify};
use crate::report::Report;
use crate::report::ThrottleStats;
use crate::s3::{self, Control};
use crate::verify::Verified;
use lean::Lean;
use store::{ByteRange, Fetched, GetError, ObjectStore, Retry};
use throttle::{Answer, Limiter, Throttle, Ticket};
use window::{Slot, Window};

/// First backoff bound; doubles per attempt up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// The bound of the jittered pause before a key throttled at random (its partition unlimited)
/// is tried again.
const NOISE_BACKOFF: Duration = Duration::from_millis(10);
/// Objects above this size are not hedged (a second copy of a large body is not cheap).
const HEDGE_MAX_SIZE: u64 = 8 << 20;

/// The engine all fetch tasks share, and how bodies are verified.
pub struct Engine {
    store: Arc<dyn ObjectStore>,
    verify: Verify,
    throttle: Throttle,
    /// Whole-object GETs in flight at once: as many as the round trip needs.
    window: Window,
    /// `--workers`: GETs in flight when nothing held them back.
    workers: usize,
    /// `--stall-timeout`: how long throttling may go on with no GET succeeding.
    stall_timeout: Duration,
    /// `--hedge-after`; `None`: no hedging.
    hedge_after: Option<Duration>,
    /// `--version-id` (single-object copies only).
    version_id: Option<String>,
    /// HeadObject for the whole checksum of an object fetched in ranges (`None`: not asked).
    heads: Option<Heads>,
}

/// Where HeadObject requests go: the control plane's client (they are one per large
/// object, and its retries are `--retries`).
pub struct Heads {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    pub requester_pays: bool,
}

/// The configured engine's two faces: GETs, and list requests.
pub struct Stores {
    pub objects: Arc<dyn ObjectStore>,
    pub lists: Arc<dyn s3::ListObjects>,
}

/// The configured fetch engine. `lean` falls back to `sdk`, with a warning, for endpoints it
/// cannot sign for (S3 Express, multi-region access points). The lean engine lists on its
/// own connections too (reading a page costs it a tenth of the SDK's CPU); `sdk` lists
/// through the SDK.
pub async fn stores(cfg: &Config, control: &Control, report: &Arc<Report>) -> Result<Stores, String> {
    let bucket = &cfg.source.bucket;
    let verify = cfg.verify.checks();
    let requester_pays = cfg.s3.requester_pays;
    let sdk = || Stores {
        objects: Arc::new(sdk::Sdk {
            client: control.client_no_retry.clone(),
            bucket: bucket.clone(),
            verify,
            requester_pays,
        }),
        lists: Arc::new(sdk::SdkLists { client: control.client_with_retries(cfg.retries) }),
    };
    Ok(match cfg.fetch_engine {
        FetchEngine::Sdk => sdk(),
        FetchEngine::Lean => match control.bucket_endpoint(bucket).await {
            Ok(ep) => {
                let lean = Arc::new(
                    Lean::new(bucket, &ep, control.identities(), report.clone(), verify, &cfg.s3)?
                        .with_list_retries(cfg.retries),
                );
                Stores { objects: lean.clone(), lists: lean }
            }
            Err(why) => {
                tracing::warn!("{why}: using --fetch-engine sdk");
                sdk()
            }
        },
    })
}

impl Engine {
    /// An engine over any object store (the configured engines, or a scripted one in tests),
    /// with `cfg`'s retry, rate, window, hedging and verify settings.
    pub fn with_store(store: Arc<dyn ObjectStore>, cfg: &Config) -> Engine {
        let hedge_after = (cfg.hedge_after_ms > 0).then(|| Duration::from_millis(cfg.hedge_after_ms));
        Engine {
            store,
            verify: cfg.verify,
            throttle: Throttle::new(&cfg.source.prefix, cfg.max_rate),
            window: Window::new(cfg.workers),
            workers: cfg.workers.max(1),
            stall_timeout: cfg.stall_timeout,
            hedge_after,
            version_id: cfg.version_id.clone(),
            heads: None,
        }
    }

    /// Asks `heads` for the whole checksum of objects fetched in ranges.
    pub fn with_heads(mut self, heads: Heads) -> Engine {
        self.heads = Some(heads);
        self
    }

    /// The full-object CRC of `key`, which the CRCs of its ranges combine into, when it has
    /// one and checking is on. `etag` is the one its first range came with: a HEAD that
    /// sees another version is no use (the other ranges are tied to `etag` by If-Match).
    pub async fn whole_crc(&self, key: &str, etag: Option<&str>) -> Option<crate::verify::WholeCrc> {
        let heads = self.heads.as_ref().filter(|_| self.verify.checks())?;
        let version = self.version_id.as_deref();
        match sdk::head_integrity(&heads.client, &heads.bucket, key, version, heads.requester_pays).await {
            Ok(integrity) if integrity.etag.as_deref() == etag => crate::verify::WholeCrc::of(&integrity),
            Ok(_) => None,
            Err(why) => {
                tracing::debug!(key, %why, "no whole checksum: HeadObject failed");
                None
            }
        }
    }

    pub fn name(&self) -> &'static str {
        self.store.name()
    }

    /// Bodies are checked against their checksums (unless `--no-verify`).
    pub fn verifies(&self) -> bool {
        self.verify.checks()
    }

    /// What a file keeps of the checksum its body was checked against, if it was.
    pub fn kept_checksum(&self, f: &Fetched) -> Option<String> {
        self.verifies().then(|| f.integrity.as_ref().and_then(crate::verify::kept_checksum)).flatten()
    }

    /// `--verify`: a key whose body could not be checked fails. `Err` names why, for a body
    /// found unverifiable.
    pub fn unchecked(&self, how: Verified) -> Result<(), String> {
        match how {
            Verified::Unverifiable(why) if self.verify == Verify::Strict => {
                Err(format!("could not be checked (--verify): {why}"))
            }
            _ => Ok(()),
        }
    }

    /// A body that does not match its checksum is [`Retry::Corrupt`] (retried, counted, never
    /// written); under `--verify` one that could not be checked fails the key.
    fn verify(&self, f: Fetched, report: &Report) -> Result<Fetched, GetError> {
        let none = crate::verify::Integrity::default();
        match crate::verify::check(&f.body, f.integrity.as_ref().unwrap_or(&none)) {
            Ok(how) => {
                report.verified(how);
                self.unchecked(how).map_err(|reason| GetError { reason, retry: Retry::No })?;
                Ok(f)
            }
            Err(reason) => Err(GetError { reason, retry: Retry::Corrupt }),
        }
    }

    /// The fewest GETs in flight while GETs waited for the rate limiter (`--workers` when
    /// none ever did).
    pub fn min_in_flight(&self) -> usize {
        self.throttle.min_in_flight().unwrap_or(self.workers).min(self.workers)
    }

    /// Whole-object GETs allowed in flight now.
    pub fn window(&self) -> usize {
        self.window.size()
    }

    /// The rate limiters' figures for the summary.
    pub fn throttle_stats(&self) -> ThrottleStats {
        self.throttle.stats()
    }

    /// The key's first path component (its parking group), when the gate of its
    /// partition's limiter is crowded: the key is better parked than waited for.
    pub fn crowded(&self, key: &str) -> Option<Box<str>> {
        self.throttle.crowded(key)
    }

    /// Completes when a parked key's partition may have room at its gate again.
    pub async fn parked_room(&self) {
        self.throttle.room().await
    }

    /// Whether the partition of keys in parking group `group` is crowded now.
    pub fn group_crowded(&self, group: &str) -> bool {
        self.throttle.lane(group).crowded()
    }

    /// A place in the window of GETs in flight, then the rate limiter's send slot. A part
    /// needs no place (see [`crate::fetch::window`]) unless it is the first range of an object
    /// of unknown size ([`ByteRange::windowed`]), nor does a GET of a partition whose limiter
    /// paces it (or when `--max-rate` caps the run): the limiter then bounds GETs in flight,
    /// and a paced GET queued behind unlimited ones would miss its slot. A partition that
    /// is unlimited again (its throttling was found to be noise, or the limit was lifted)
    /// uses the window again. The send slot comes last, right before sending: a GET that
    /// waited for its place while the service began to throttle is paced like the rest, not
    /// let go unpaced with a slot taken before.
    async fn go(&self, lane: &Arc<Limiter>, range: Option<&ByteRange>) -> (Ticket<'_>, Option<Slot<'_>>) {
        let whole = range.is_none_or(|r| r.windowed);
        let slot = if whole && !lane.is_limited() { Some(self.window.acquire().await) } else { None };
        let ticket = self.throttle.acquire(lane.clone()).await;
        (ticket, slot)
    }

    /// One request, bounded as a whole by [`attempt_timeout`] (connect and first byte have
    /// their own, shorter bounds inside the engines).
    async fn send(
        &self,
        slot: Option<Slot<'_>>,
        key: &str,
        size: u64,
        range: Option<&ByteRange>,
        first_byte: &AtomicBool,
    ) -> Result<Fetched, GetError> {
        let limit = attempt_timeout(size);
        let most = range.map_or(size, |r| r.len);
        let got = tokio::time::timeout(limit, async {
            self.store.get(key, self.version_id.as_deref(), range, most, first_byte).await
        })
        .await;
        // Only objects answered measure the round trip: a 503 SlowDown or an error comes back
        // at once, and its time would pass for the path's least time to first byte.
        if let (Some(slot), Ok(Ok(f))) = (slot, &got) {
            slot.answered(f.ttfb);
        }
        // Timed out: the request was dropped with its connection, mid-response.
        got.unwrap_or_else(|_| Err(GetError::transient(format!("attempt timed out after {} s", limit.as_secs()))))
    }

    /// One request that already has its send slot and its place in the window; its answer
    /// goes back to the limiter.
    async fn sent(
        &self,
        (ticket, slot): (Ticket<'_>, Option<Slot<'_>>),
        key: &str,
        size: u64,
        range: Option<&ByteRange>,
        first_byte: &AtomicBool,
    ) -> Result<Fetched, GetError> {
        let got = self.send(slot, key, size, range, first_byte).await;
        let answer = match &got {
            Ok(_) => Answer::Ok,
            Err(e) if e.retry == Retry::Throttled => Answer::Throttled,
            Err(_) => Answer::Other,
        };
        self.throttle.answered(ticket, key, answer);
        got
    }

    /// One attempt, hedged: if no answer (headers) has come `--hedge-after` after it was
    /// sent, a second one starts on another connection (with a send slot of its own) and the
    /// first to finish wins; the loser is dropped with its connection.
    async fn attempt(
        &self,
        key: &str,
        size: u64,
        range: Option<&ByteRange>,
        lane: &Arc<Limiter>,
        report: &Report,
    ) -> Result<Fetched, GetError> {
        // The hedge timer starts once the request may go.
        let go = self.go(lane, range).await;
        let first_byte = AtomicBool::new(false);
        let Some(after) = self.hedge_after.filter(|_| size <= HEDGE_MAX_SIZE) else {
            return self.sent(go, key, size, range, &first_byte).await;
        };
        let (result, spare_won) = {
            let first = self.sent(go, key, size, range, &first_byte);
            tokio::pin!(first);
            tokio::select! {
                biased;
                r = &mut first => (r, false),
                () = tokio::time::sleep(after) => {
                    if first_byte.load(Ordering::Relaxed) {
                        // Answered: the body is on its way, and a second copy would only
                        // race it over the same link (the attempt's timeout still bounds it).
                        (first.await, false)
                    } else {
                    let second = async {
                        let go = self.go(lane, range).await;
                        // Counted once sent: under a rate limit the first may answer while
                        // the spare still waits for its slot, and then it never goes.
                        report.hedged();
                        self.sent(go, key, size, range, &AtomicBool::new(false)).await
                    };
                    tokio::pin!(second);
                    tokio::select! {
                        r = &mut first => (r, false),
                        r = &mut second => (r, true),
                    }
                    }
                }
            }
        };
        if spare_won {
            report.hedge_won();
        }
        result
    }

    /// GETs `key` (`size` from the listing, 0 if unknown; for a `range`, its length) or the
    /// `range` of it, retrying as
    /// the policy says; the error is the last attempt's reason. A part is not verified here:
    /// S3 has no checksum of a byte range.
    pub async fn fetch(
        &self,
        key: &str,
        size: u64,
        range: Option<&ByteRange>,
        retries: u32,
        report: &Report,
    ) -> Result<Fetched, String> {
        let mut attempt = 0u32;
        loop {
            // Each attempt asks again: the key's partition may have been split off meanwhile.
            let lane = self.throttle.lane(key);
            let got = self.attempt(key, size, range, &lane, report).await;
            let got = match got {
                // Connection-close framing: a cut body can only be told by its length.
                Ok(f) if !f.framed && range.is_none() && size != s3::UNKNOWN_SIZE && f.body.len() as u64 != size => {
                    Err(GetError::transient(format!(
                        "the answer had no Content-Length and ended after {} bytes; the object has {size}",
                        f.body.len()
                    )))
                }
                other => other,
            };
            let got = match got {
                Ok(f) if self.verify.checks() && range.is_none() => self.verify(f, report),
                other => other,
            };
            if let Err(e) = &got
                && e.retry == Retry::Corrupt
            {
                report.corrupt();
            }
            match got {
                Ok(f) => return Ok(f),
                Err(e) if e.retry == Retry::Throttled => {
                    // The service asks for a lower rate, which the limiter now sends at: not
                    // a fault of this key, so no retry is spent — unless nothing succeeds.
                    let stalled = self.throttle.since_last_success();
                    if stalled >= self.stall_timeout {
                        let why = format!(
                            "no GET succeeded for {} s while the service kept throttling (--stall-timeout)",
                            stalled.as_secs()
                        );
                        report.abort(&why);
                        return Err(format!("{} ({why})", e.reason));
                    }
                    report.retried(true);
                    tracing::debug!(key, reason = %e.reason, "throttled: trying again");
                    // Under a limit the pause spreads the retries over the limiter's slots;
                    // where the partition runs unlimited (throttling at random, taken for
                    // noise) a shorter one keeps a key from waiting long for nothing.
                    let pause = if lane.is_limited() { backoff(0) } else { NOISE_BACKOFF.mul_f64(fastrand::f64()) };
                    tokio::time::sleep(pause).await;
                }
                // Not the key's fault, nor one a retry mends: the caller fetches it otherwise.
                Err(e) if e.retry == Retry::Larger => return Err(e.reason),
                Err(e) if e.retry == Retry::No || attempt >= retries => {
                    return Err(if attempt > 0 {
                        format!("{} (after {} attempts)", e.reason, attempt + 1)
                    } else {
                        e.reason
                    });
                }
                Err(e) => {
                    report.retried(false);
                    tracing::debug!(key, attempt, reason = %e.reason, "retrying GET");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// A whole attempt may take 60 s plus one second per MiB (a slow but moving 1 MiB/s).
fn attempt_timeout(size: u64) -> Duration {
    Duration::from_secs(60 + (size >> 20))
}

/// Throttled answers to one list request before the listing gives up (in both engines they
/// do not spend `--retries`).
const LIST_ATTEMPTS_THROTTLED: u32 = 20;

/// Full-jitter exponential backoff before retry number `attempt + 1`.
fn backoff(attempt: u32) -> Duration {
    let bound = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    bound.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod scripted;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_attempt_with_full_jitter_up_to_five_seconds() {
        // (attempt, bound): 50 ms doubling, capped at 5 s.
        for (attempt, bound_ms) in [(0, 50), (1, 100), (3, 400), (6, 3_200), (7, 5_000), (30, 5_000)] {
            let waits: Vec<Duration> = (0..200).map(|_| backoff(attempt)).collect();
            let bound = Duration::from_millis(bound_ms);
            assert!(waits.iter().all(|w| *w < bound), "attempt {attempt}: {waits:?}");
            // Full jitter: spread over the whole range (200 uniform draws all in one half
            // has a chance of 2^-199).
            assert!(waits.iter().any(|w| *w > bound / 2), "attempt {attempt}: {waits:?}");
            assert!(waits.iter().any(|w| *w < bound / 2), "attempt {attempt}: {waits:?}");
        }
    }
}
