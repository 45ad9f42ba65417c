//! What the embedded endpoint does to requests besides serving them: a request-rate limit as
//! S3 enforces one (a token bucket per key prefix shared by GET, HEAD and LIST requests,
//! `503 SlowDown` when it is empty, limits that change during a run) and injected faults
//! (SlowDown, InternalError, resets, cut or corrupted bodies, slow answers), and a cap on GETs
//! being served at once (as Ceph RGW's `rgw_max_concurrent_requests` or a gateway shedding
//! load), with the counts a test checks. All three combine: a GET first meets the cap, then its
//! drawn fault, then its rule's bucket.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A token bucket on the GETs of keys under `prefix` (`""`: every key). HEADs of those keys
/// and list requests that start among them take from the same bucket, as S3 counts GET, HEAD
/// and LIST against one request rate per partition.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub prefix: String,
    /// GETs per second; 0: unlimited (the rule only counts).
    pub rate: f64,
    /// The bucket holds this many seconds of the rate: a burst of up to `rate × burst`
    /// GETs passes at once.
    pub burst: Duration,
    /// Changes during the run: after this long since the first GET, the rate becomes this
    /// (as S3 raises a partition's limit when it splits it).
    pub schedule: Vec<(Duration, f64)>,
}

impl RateLimit {
    /// `rate` GET/s under `prefix`, with a burst of 0.1 s of it.
    pub fn new(prefix: &str, rate: f64) -> RateLimit {
        RateLimit { prefix: prefix.to_owned(), rate, burst: Duration::from_millis(100), schedule: Vec::new() }
    }
}

/// What one rate-limit rule let through and refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimitCounts {
    pub prefix: String,
    /// Its rate now (0: unlimited).
    pub rate: f64,
    /// GETs let through and refused.
    pub served: u64,
    pub throttled: u64,
    /// HEAD and list requests let through and refused (they share the GETs' tokens).
    pub others_served: u64,
    pub others_throttled: u64,
    /// Seconds from the first GET of the endpoint to the first and the last GET this rule
    /// let through.
    pub first_s: f64,
    pub last_s: f64,
    /// GETs let through in each second since the first GET of the endpoint.
    pub per_second: Vec<u64>,
}

/// The token buckets of an endpoint.
#[derive(Debug)]
pub(super) struct Limits {
    /// Longest prefix first.
    rules: Vec<(RateLimit, Mutex<TokenBucket>)>,
    first_get: OnceLock<std::time::Instant>,
}

#[derive(Debug, Default)]
pub(super) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Option<std::time::Instant>,
    next_change: usize,
    served: u64,
    throttled: u64,
    others_served: u64,
    others_throttled: u64,
    first: Option<Duration>,
    last_served: Option<Duration>,
    per_second: Vec<u64>,
}

impl Limits {
    pub(super) fn new(rules: &[RateLimit]) -> Option<Limits> {
        if rules.is_empty() {
            return None;
        }
        let mut rules: Vec<_> = rules
            .iter()
            .map(|r| {
                let bucket =
                    TokenBucket { rate: r.rate, tokens: r.rate * r.burst.as_secs_f64(), ..TokenBucket::default() };
                (r.clone(), Mutex::new(bucket))
            })
            .collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.0.prefix.len()));
        Some(Limits { rules, first_get: OnceLock::new() })
    }

    /// Takes a token for a GET of `key`; false when its rule's bucket is empty.
    pub(super) fn admit(&self, key: &str) -> bool {
        self.take(key, true)
    }

    /// Takes a token for a HEAD of `key`, or a list request that starts at `key` (its
    /// continuation or start-after key, else its prefix): S3 serves it from that key's
    /// partition and counts it with the GETs.
    pub(super) fn admit_other(&self, key: &str) -> bool {
        self.take(key, false)
    }

    fn take(&self, key: &str, get: bool) -> bool {
        let now = std::time::Instant::now();
        // Time counts from the first GET: the list requests before it do not start the clock.
        let since = match get {
            true => now.duration_since(*self.first_get.get_or_init(|| now)),
            false => self.first_get.get().map_or(Duration::ZERO, |t| now.duration_since(*t)),
        };
        let Some((rule, bucket)) = self.rules.iter().find(|(r, _)| key.starts_with(r.prefix.as_str())) else {
            return true;
        };
        let Ok(mut b) = bucket.lock() else { return true };
        while let Some(&(at, rate)) = rule.schedule.get(b.next_change)
            && since >= at
        {
            b.rate = rate;
            b.next_change += 1;
        }
        let capacity = (b.rate * rule.burst.as_secs_f64()).max(1.0);
        if let Some(last) = b.last {
            b.tokens = (b.tokens + b.rate * now.duration_since(last).as_secs_f64()).min(capacity);
        }
        b.last = Some(now);
        if b.rate > 0.0 && b.tokens < 1.0 {
            match get {
                true => b.throttled += 1,
                false => b.others_throttled += 1,
            }
            return false;
        }
        b.tokens -= 1.0;
        if !get {
            b.others_served += 1;
            return true;
        }
        b.served += 1;
        b.first.get_or_insert(since);
        b.last_served = Some(since);
        let second = since.as_secs() as usize;
        if b.per_second.len() <= second {
            b.per_second.resize(second + 1, 0);
        }
        b.per_second[second] += 1;
        true
    }

    pub(super) fn set(&self, prefix: &str, rate: f64) -> bool {
        let Some((_, bucket)) = self.rules.iter().find(|(r, _)| r.prefix == prefix) else { return false };
        if let Ok(mut b) = bucket.lock() {
            b.rate = rate;
        }
        true
    }

    pub(super) fn counts(&self) -> Vec<RateLimitCounts> {
        let mut all: Vec<_> = self
            .rules
            .iter()
            .filter_map(|(r, b)| {
                let b = b.lock().ok()?;
                Some(RateLimitCounts {
                    prefix: r.prefix.clone(),
                    rate: b.rate,
                    served: b.served,
                    throttled: b.throttled,
                    others_served: b.others_served,
                    others_throttled: b.others_throttled,
                    first_s: b.first.unwrap_or_default().as_secs_f64(),
                    last_s: b.last_served.unwrap_or_default().as_secs_f64(),
                    per_second: b.per_second.clone(),
                })
            })
            .collect();
        all.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        all
    }
}

/// At most `cap` GETs served at once: a GET arriving while `cap` are being served is answered
/// `503 SlowDown` at once (a store shedding load does not make it wait), and takes no token.
#[derive(Debug)]
pub(super) struct InflightCap {
    cap: usize,
    serving: AtomicUsize,
    served: AtomicU64,
    refused: AtomicU64,
    peak: AtomicUsize,
}

/// What the in-flight cap let through and refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InflightCounts {
    pub cap: usize,
    pub served: u64,
    pub refused: u64,
    /// The most GETs served at once.
    pub peak: usize,
}

/// A GET's place among those being served, given back when its answer is ready.
pub(super) struct Serving<'a>(&'a InflightCap);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InflightCap {
    pub(super) fn new(cap: usize) -> InflightCap {
        InflightCap {
            cap,
            serving: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// A place for one more GET, or `None` when `cap` are being served.
    pub(super) fn enter(&self) -> Option<Serving<'_>> {
        let before = self.serving.fetch_add(1, Ordering::Relaxed);
        if before >= self.cap {
            self.serving.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        self.peak.fetch_max(before + 1, Ordering::Relaxed);
        Some(Serving(self))
    }

    pub(super) fn counts(&self) -> InflightCounts {
        InflightCounts {
            cap: self.cap,
            served: self.served.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
        }
    }
}

/// What fraction of GetObject requests fail, and how. Each GET draws once: at most one
/// fault per request, in the order listed.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answered `503 SlowDown` (S3's throttling).
    pub slowdown: f64,
    /// Answered `500 InternalError`.
    pub internal: f64,
    /// The connection is closed without an answer.
    pub reset: f64,
    /// Headers promise the whole body; the connection breaks after half of it.
    pub truncate: f64,
    /// The first byte comes `slow_delay` late.
    pub slow: f64,
    pub slow_delay: Duration,
    /// The body arrives whole but with one byte changed (ETag and checksum stay right).
    pub corrupt: f64,
    /// The headers come at once, the body `slow_delay` later (a slow link, not a late answer).
    pub slow_body: f64,
}

/// How many faults of each kind an endpoint injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub gets: u64,
    /// Of `gets`, those that came through a proxy: on a connection whose first request had
    /// a `Via` header, which forwarding proxies add (RFC 9110, section 7.6.3).
    pub proxied: u64,
    pub slowdown: u64,
    pub internal: u64,
    pub reset: u64,
    pub truncate: u64,
    pub slow: u64,
    pub corrupt: u64,
    pub slow_body: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    SlowDown,
    Internal,
    Reset,
    Truncate,
    Slow,
    Corrupt,
    SlowBody,
}

/// Draws faults and counts them; shared by the S3 implementation and the connection layer.
#[derive(Debug, Default)]
pub(super) struct FaultState {
    pub(super) faults: Faults,
    rng: AtomicU64,
    gets: AtomicU64,
    proxied: AtomicU64,
    counts: [AtomicU64; 7],
}

impl FaultState {
    pub(super) fn new(faults: Faults) -> FaultState {
        FaultState { faults, rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15), ..FaultState::default() }
    }

    pub(super) fn any(&self) -> bool {
        let f = &self.faults;
        f.slowdown + f.internal + f.reset + f.truncate + f.slow + f.corrupt + f.slow_body > 0.0
    }

    /// A uniform number in [0, 1) from a shared splitmix64 sequence.
    pub(super) fn uniform(&self) -> f64 {
        let mut z = self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Draws the fate of one GET (`via`: it came through a proxy).
    pub(super) fn draw(&self, via: bool) -> Option<Fault> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.proxied.fetch_add(via as u64, Ordering::Relaxed);
        if !self.any() {
            return None;
        }
        let f = &self.faults;
        let mut x = self.uniform();
        for (p, fault) in [
            (f.slowdown, Fault::SlowDown),
            (f.internal, Fault::Internal),
            (f.reset, Fault::Reset),
            (f.truncate, Fault::Truncate),
            (f.slow, Fault::Slow),
            (f.corrupt, Fault::Corrupt),
            (f.slow_body, Fault::SlowBody),
        ] {
            if x < p {
                self.counts[fault as usize].fetch_add(1, Ordering::Relaxed);
                return Some(fault);
            }
            x -= p;
        }
        None
    }

    pub(super) fn counts(&self) -> FaultCounts {
        let c = |f: Fault| self.counts[f as usize].load(Ordering::Relaxed);
        FaultCounts {
            gets: self.gets.load(Ordering::Relaxed),
            proxied: self.proxied.load(Ordering::Relaxed),
            slowdown: c(Fault::SlowDown),
            internal: c(Fault::Internal),
            reset: c(Fault::Reset),
            truncate: c(Fault::Truncate),
            slow: c(Fault::Slow),
            corrupt: c(Fault::Corrupt),
            slow_body: c(Fault::SlowBody),
        }
    }
}

/// A connection, plain or TLS.
pub(super) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The draw for a request that the connection layer made, handed to `get_object`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Drawn(pub(super) Option<Fault>);
