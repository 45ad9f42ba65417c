//! The run's numbers, defined once: the snapshot types that the summary renders and the
//! `--stats-json` document serialises (field names are the JSON's, README "Stats JSON").
//! A new counter is one line in a `counters!` list, its increment where it happens, and,
//! if the summary should say it, a line of [`Summary::render`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::stats::StageStats;
use crate::console::sanitize;

/// A set of `u64` counters: the atomics the stages add to (`$atomics`, inside the report)
/// and their snapshot (`$snap`, serialised as it is). Attributes on a counter (its doc, a
/// `serde(rename)`) go to the snapshot's field.
macro_rules! counters {
    ($(#[$meta:meta])* $snap:ident in $atomics:ident { $( $(#[$m:meta])* $name:ident, )* }) => {
        /// The atomics behind [`
        #[doc = stringify!($snap)]
        /// `].
        #[derive(Debug, Default)]
        pub(super) struct $atomics {
            $( pub(super) $name: AtomicU64, )*
        }

        impl $atomics {
            pub(super) fn load(&self) -> $snap {
                $snap { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct $snap {
            $( $(#[$m])* pub $name: u64, )*
        }
    };
}

counters! {
    /// What became of the keys (the stats JSON's `counters`, with [`Counters`]' flags).
    Counts in CountAtomics {
        listed,
        written,
        dirs,
        skipped,
        failed,
        bytes,
        /// Left out by `--include`/`--exclude`/`--shard` (not counted as listed).
        excluded,
        /// `--manifest` rows not copied (older versions, delete markers, outside SOURCE).
        inventory_left_out,
        /// Skipped because archived (GLACIER, DEEP_ARCHIVE) and not restored.
        archived,
        /// `--dry-run`: keys (and bytes) that would be copied.
        #[serde(rename = "dry_run_planned")]
        planned,
        #[serde(rename = "dry_run_planned_bytes")]
        planned_bytes,
    }
}

counters! {
    /// How fetching went (the stats JSON's `fetch`, with the rate limiters beside).
    FetchCounts in FetchAtomics {
        /// Connections the lean engine opened (0 with the SDK engine, whose pool is not
        /// counted), and how many of their TLS handshakes resumed a session.
        #[serde(rename = "connections_opened")]
        connections,
        #[serde(rename = "connections_resumed")]
        resumed,
        /// The window of whole-object GETs in flight the run ended with (at most `--workers`).
        #[serde(rename = "in_flight_window")]
        window,
        /// GET attempts retried, and how many of those were throttled (SlowDown, 503, 429).
        retries,
        throttled,
        /// The fewest GETs in flight while GETs waited for the rate limiter (equal to
        /// `--workers` when none ever did).
        min_in_flight,
        /// Hedged attempts, and how many answered first.
        hedged,
        hedge_won,
    }
}

counters! {
    /// `--verify` (the stats JSON's `verify`).
    VerifyCounts in VerifyAtomics {
        /// Bodies checked against an `x-amz-checksum-*` header.
        by_checksum,
        /// Bodies checked against the ETag's MD5.
        #[serde(rename = "by_etag_md5")]
        by_md5,
        /// Bodies with nothing to check against.
        unverifiable,
        /// Bodies that did not match: fetched again (a body in memory) or failed (a large
        /// file read back), never kept.
        #[serde(rename = "mismatches")]
        corrupt,
    }
}

counters! {
    /// The io_uring writer's batching (the stats JSON's `writer`).
    WriterCounts in WriterAtomics {
        /// `io_uring_enter` calls that submitted work, and files started.
        ring_submits,
        ring_files,
    }
}

/// What the summary and the stats JSON say about the limiters.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ThrottleStats {
    /// Throttling answers (SlowDown, 503, 429) received.
    pub throttled: u64,
    /// `--max-rate`, if given.
    pub max_rate: Option<f64>,
    /// Seconds GETs spent waiting for their send slot, summed over GETs.
    pub limiter_wait_s: f64,
    /// The limited partitions at the end of the run (empty when nothing was ever limited).
    pub partitions: Vec<PartitionStats>,
    /// Throttling answers that came at random, whatever the rate (`null` when none did).
    pub random_503: Option<RandomThrottling>,
    /// GETs in flight when the GETs answered with throttling were sent (`null` under 32 such
    /// answers): a cap on GETs in flight shows as throttling that begins at about N.
    pub in_flight_when_throttled: Option<InFlightWhenThrottled>,
}

/// Percentiles of the GETs in flight (this one included) when a throttled GET was sent.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct InFlightWhenThrottled {
    pub p10: usize,
    pub p50: usize,
    /// Median round trips of successful and of throttling answers, ms (to a quarter of a
    /// binary order of magnitude).
    pub ok_ms: f64,
    pub throttled_ms: f64,
    /// A cap on GETs in flight near this many (`p10`): the throttling answers came at once,
    /// in half a success's round trip or less, as from a store that refuses above a number
    /// in flight without serving (`null`: they took as long as a GET is served, as a rate
    /// limit's or a store's at random do here).
    pub cap: Option<usize>,
}

/// Throttling that did not depend on the rate: cuts that did not lower the throttled fraction
/// were undone, and that fraction is taken for noise.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RandomThrottling {
    /// The fraction of GETs answered SlowDown/503/429 at any rate (the highest any partition
    /// measured).
    pub fraction: f64,
    /// Rate cuts undone because the fraction stayed the same at the lower rate.
    pub cuts_undone: u64,
}

/// One partition's limiter.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PartitionStats {
    /// The key prefix of the partition (SOURCE's prefix for the root partition).
    pub prefix: String,
    /// Its rate when the run ended (GET/s); `null` once it was unlimited again.
    pub rate: Option<f64>,
    /// The rate at the last cut: what the service accepted when it last throttled.
    pub settled_rate: Option<f64>,
    /// The lowest rate it was cut to.
    pub lowest_rate: Option<f64>,
    /// Cuts made (one per throttling episode round trip, not one per answer).
    pub cuts: u64,
    /// Throttling answers in this partition.
    pub throttled: u64,
}

impl Counts {
    /// Objects written (files and directories).
    pub fn objects(&self) -> u64 {
        self.written + self.dirs
    }
}

/// The stats JSON's `counters`: [`Counts`] and how the run ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    #[serde(flatten)]
    pub counts: Counts,
    /// Listing stopped early (after its first page): not every key was seen.
    pub listing_incomplete: bool,
    /// Stopped by SIGINT/SIGTERM: the keys not yet handled were not copied.
    pub interrupted: bool,
    /// The run stopped on its own (a full disk): the keys not yet handled were not copied.
    pub aborted: Option<String>,
}

/// The stats JSON's `fetch`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fetch {
    #[serde(flatten)]
    pub counts: FetchCounts,
    /// The rate limiters: throttling answers, `--max-rate`, waiting, partitions.
    pub rate_limit: ThrottleStats,
}

/// The stats JSON's `writer`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Writer {
    #[serde(flatten)]
    pub counts: WriterCounts,
    /// Files started per `io_uring_enter` (io_uring engine only).
    pub files_per_submit: Option<f64>,
}

/// Objects and bytes per second over the whole run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Throughput {
    pub objects_per_s: f64,
    pub mib_per_s: f64,
}

/// The whole process's CPU and peak RSS at the end of the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    pub user_s: f64,
    pub sys_s: f64,
    /// Client CPU (user + sys) per object written, in microseconds.
    pub us_per_object: f64,
    pub peak_rss_bytes: u64,
}

/// A failed key and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub key: String,
    pub reason: String,
}

/// The numbers of a finished run: what the summary prints and, with the run's configuration
/// and machine, the `--stats-json` document.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    #[serde(rename = "io_engine")]
    pub engine: String,
    /// The fetch engine (`lean` or `sdk`).
    pub fetch_engine: String,
    pub counters: Counters,
    pub fetch: Fetch,
    pub verify: VerifyCounts,
    pub writer: Writer,
    #[serde(rename = "elapsed_s", serialize_with = "seconds")]
    pub elapsed: Duration,
    pub throughput: Throughput,
    pub cpu: Option<Cpu>,
    /// Latency percentiles per stage (an object by stage name).
    #[serde(serialize_with = "by_stage")]
    pub stages: Vec<StageStats>,
    /// The first failures (up to ten), in the order they happened.
    pub first_failures: Vec<Failure>,
    /// What happened to the `--failed-keys` file, if one was asked for.
    #[serde(skip)]
    pub failed_keys: Option<String>,
    /// `--dry-run`: nothing was fetched or written.
    #[serde(skip)]
    pub dry_run: bool,
    /// `--retries` and `--hedge-after` (ms) of the run (in the JSON's `config`).
    #[serde(skip)]
    pub retries_allowed: u32,
    #[serde(skip)]
    pub hedge_after_ms: u64,
    /// The endpoint URL the run used (the flag, or the environment's or profile's) and whether
    /// it addressed buckets path style (in the JSON's `config`); `None`: not known.
    #[serde(skip)]
    pub endpoint: Option<(Option<String>, bool)>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn by_stage<S: serde::Serializer>(stages: &[StageStats], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(stages.iter().map(|st| (st.stage, st)))
}

impl Summary {
    /// `, 48 connections (40 TLS resumed), at most 64 GETs in flight`: what fetching needed.
    fn fetch_detail(&self) -> String {
        let f = &self.fetch.counts;
        let mut s = String::new();
        if f.connections > 0 {
            s += &format!(", {} connections", f.connections);
            if f.resumed > 0 {
                s += &format!(" ({} TLS resumed)", f.resumed);
            }
        }
        if f.window > 0 {
            s += &format!(", at most {} GETs in flight", f.window);
        }
        s
    }

    /// True when every listed key was written or skipped and the listing completed.
    pub fn success(&self) -> bool {
        let c = &self.counters;
        c.counts.failed == 0
            && !c.listing_incomplete
            && !c.interrupted
            && c.aborted.is_none()
            && self.unaccounted() == 0
    }

    /// Keys listed but neither written, skipped nor failed: always 0 (invariant 3).
    pub fn unaccounted(&self) -> u64 {
        let c = &self.counters.counts;
        c.listed.saturating_sub(c.written + c.dirs + c.skipped + c.failed + c.planned)
    }

    /// The one-screen summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} keys listed: {} files written, {} directories, {} skipped, {} failed{}",
            self.counters.counts.listed,
            self.counters.counts.written,
            self.counters.counts.dirs,
            self.counters.counts.skipped,
            self.counters.counts.failed,
            match (self.counters.counts.excluded, self.counters.counts.inventory_left_out) {
                (0, 0) => String::new(),
                (n, 0) => format!(" ({n} more left out by --include/--exclude/--shard)"),
                (0, m) => format!(" ({m} inventory rows left out: older versions, delete markers, outside SOURCE)"),
                (n, m) => format!(
                    " ({n} more left out by --include/--exclude/--shard; {m} inventory rows left out: older \
                     versions, delete markers, outside SOURCE)"
                ),
            }
        );
        if self.dry_run {
            let _ = writeln!(
                s,
                "dry run: {} objects ({:.1} MiB) would be copied, {} already in DEST would be skipped; nothing was copied",
                self.counters.counts.planned,
                self.counters.counts.planned_bytes as f64 / (1 << 20) as f64,
                self.counters.counts.skipped
            );
            return s;
        }
        let _ = writeln!(
            s,
            "{:.1} MiB in {:.2} s: {:.0} objects/s, {:.1} MiB/s (fetch: {}{}; io: {}{})",
            self.counters.counts.bytes as f64 / (1 << 20) as f64,
            self.elapsed.as_secs_f64(),
            self.throughput.objects_per_s,
            self.throughput.mib_per_s,
            self.fetch_engine,
            self.fetch_detail(),
            self.engine,
            self.writer.files_per_submit.map_or(String::new(), |f| format!(", {f:.1} files per submit"))
        );
        if self.counters.counts.archived > 0 {
            let _ = writeln!(
                s,
                "{} of the skipped objects are in GLACIER/DEEP_ARCHIVE and not restored: restore them, then re-run",
                self.counters.counts.archived
            );
        }
        if self.fetch.counts.retries > 0 {
            let f = &self.fetch.counts;
            // Only throttling lowers the window of GETs in flight. Without it, the fewest GETs
            // in flight while one waited for its send slot is --max-rate's pacing, not a cut.
            let lowered = match f.throttled {
                0 => String::new(),
                _ => format!("; GETs in flight lowered to {} at the least", f.min_in_flight),
            };
            let _ = writeln!(
                s,
                "{} GET attempts retried ({} throttled by the service, spending no retries{lowered}; --retries {}, \
                 --hedge-after {} ms)",
                f.retries, f.throttled, self.retries_allowed, self.hedge_after_ms
            );
        }
        self.render_rate_limits(&mut s);
        if self.fetch.counts.hedged > 0 {
            let _ = writeln!(
                s,
                "{} slow GETs hedged with a second request ({} answered first)",
                self.fetch.counts.hedged, self.fetch.counts.hedge_won
            );
        }
        if let Some(cpu) = &self.cpu {
            let _ = writeln!(
                s,
                "CPU {:.2} s user + {:.2} s sys = {:.0} µs/object, peak RSS {:.0} MiB",
                cpu.user_s,
                cpu.sys_s,
                cpu.us_per_object,
                cpu.peak_rss_bytes as f64 / (1 << 20) as f64
            );
        }
        let VerifyCounts { by_checksum, by_md5, unverifiable, corrupt } = self.verify;
        if by_checksum + by_md5 + unverifiable + corrupt > 0 {
            let _ = writeln!(
                s,
                "verified {} bodies ({by_checksum} by x-amz-checksum, {by_md5} by ETag MD5); {unverifiable} had nothing to \
                 verify against; {corrupt} did not match and were not kept",
                by_checksum + by_md5
            );
        }
        if self.counters.interrupted {
            let _ = writeln!(
                s,
                "interrupted: {} listed keys were not copied (re-run the same command to finish)",
                self.unaccounted()
            );
        }
        if let Some(reason) = &self.counters.aborted {
            let _ = writeln!(
                s,
                "stopped early: {}: {} listed keys were not copied (fix the cause, then re-run the same command)",
                sanitize(reason),
                self.unaccounted()
            );
        }
        if self.counters.listing_incomplete {
            let _ = writeln!(s, "listing stopped early: keys after the failure were not copied");
        }
        if !self.first_failures.is_empty() {
            let _ = writeln!(s, "first failures:");
            for f in &self.first_failures {
                let _ = writeln!(s, "  '{}': {}", sanitize(&f.key), sanitize(&f.reason));
            }
        }
        if let Some(note) = &self.failed_keys {
            let _ = writeln!(s, "{}", sanitize(note));
        }
        s
    }
}

impl Summary {
    /// One line per limited partition, and the time GETs waited for their send slots.
    fn render_rate_limits(&self, s: &mut String) {
        let t = &self.fetch.rate_limit;
        const SHOWN: usize = 5;
        for p in t.partitions.iter().take(SHOWN) {
            let rate = |r: Option<f64>| r.map_or_else(|| "unlimited".to_owned(), |r| format!("{r:.0} GET/s"));
            let _ = writeln!(
                s,
                "rate limit of '{}': settled at {} ({} cuts, lowest {}, {} at the end; {} throttled answers)",
                sanitize(&p.prefix),
                rate(p.settled_rate),
                p.cuts,
                rate(p.lowest_rate),
                rate(p.rate),
                p.throttled
            );
        }
        if t.partitions.len() > SHOWN {
            let _ = writeln!(s, "({} more rate-limited partitions in --stats-json)", t.partitions.len() - SHOWN);
        }
        if let Some(r) = &t.random_503 {
            let _ = writeln!(
                s,
                "random 503s: {:.1} % of GETs answered SlowDown whatever the rate (not a limit: {} rate cuts undone)",
                100.0 * r.fraction,
                r.cuts_undone
            );
        }
        if let Some(f) = &t.in_flight_when_throttled {
            if let Some(cap) = f.cap {
                let _ = writeln!(
                    s,
                    "in-flight cap near {cap} GETs: throttled GETs were sent with {cap} or more in flight (10th percentile; median {}) and refused at once ({:.1} ms, successes {:.1} ms); held as the rate it allows",
                    f.p50, f.throttled_ms, f.ok_ms
                );
            } else {
                let _ = writeln!(
                    s,
                    "GETs in flight when a throttled GET was sent: {} or more (10th percentile; median {})",
                    f.p10, f.p50
                );
            }
        }
        if let Some(max) = t.max_rate {
            let _ = writeln!(s, "--max-rate {max:.0} GET/s");
        }
        if t.limiter_wait_s > 0.0 {
            let _ = writeln!(s, "GETs waited {:.1} s for their send slots (summed over GETs)", t.limiter_wait_s);
        }
    }
}
