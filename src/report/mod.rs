//! The run's outcome: counters every stage updates, failures printed as they happen (one
//! sanitised line each, naming the key and the cause), and the final summary.
//!
//! Invariant 3: every listed key ends as exactly one of written (a file or a directory),
//! skipped, or failed — [`Summary::unaccounted`] checks it.

pub mod progress;
pub mod stats;

use std::fmt::Write as _;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::console::sanitize;
use stats::{Recorder, StageSink, StageStats};

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

/// How many failures the summary repeats at the end.
const FAILURES_KEPT: usize = 10;

#[derive(Debug, Default)]
pub struct Report {
    listed: AtomicU64,
    written: AtomicU64,
    dirs: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    /// Listed keys left out by `--include`/`--exclude`/`--shard` (not counted as listed).
    excluded: AtomicU64,
    /// `--manifest` rows left out: older versions, delete markers, keys outside SOURCE.
    inventory_left_out: AtomicU64,
    /// Skipped keys whose objects are archived and not restored.
    archived: AtomicU64,
    /// `--dry-run`: keys (and bytes) that would be copied.
    planned: AtomicU64,
    planned_bytes: AtomicU64,
    /// Listing stopped early (after its first page): not every key was seen.
    listing_incomplete: AtomicBool,
    /// Listing has ended (the total is known).
    listing_done: AtomicBool,
    /// The run was stopped (SIGINT/SIGTERM) before every key was handled.
    interrupted: AtomicBool,
    /// io_uring writer: enters that submitted work, and files started.
    ring_submits: AtomicU64,
    ring_files: AtomicU64,
    /// Fetching: connections opened (lean engine), of which with a resumed TLS session,
    /// attempts retried, of which throttled.
    connections: AtomicU64,
    resumed: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    /// Hedged attempts started, and how many of them answered first.
    hedged: AtomicU64,
    hedge_won: AtomicU64,
    /// The fewest GETs in flight while the rate limiter held GETs back.
    min_in_flight: AtomicU64,
    /// The window of GETs in flight at the end ([`crate::fetch::window`]).
    window: AtomicU64,
    /// `--verify`: bodies checked against a checksum header, against the ETag's MD5, with
    /// nothing to check against, and bodies that did not match.
    verified_checksum: AtomicU64,
    verified_md5: AtomicU64,
    unverifiable: AtomicU64,
    corrupt: AtomicU64,
    first_failures: Mutex<Vec<(String, String)>>,
    /// `--failed-keys FILE`: one `KEY<TAB>REASON` line per failed key.
    failed_keys: Mutex<Option<FailedKeys>>,
    /// Why the run stopped on its own (a full disk), and how the pipeline is told.
    abort: Mutex<(Option<String>, Option<tokio::sync::watch::Sender<bool>>)>,
    quiet_failures: bool,
    stages: StageSink,
}

impl Report {
    pub fn new() -> Report {
        Report::default()
    }

    /// A report that keeps failures for the summary but does not print them as they happen.
    pub fn silent() -> Report {
        Report { quiet_failures: true, ..Report::default() }
    }

    /// A buffer for one task's stage latencies (see [`crate::report::stats`]).
    pub fn recorder(&self) -> Recorder {
        self.stages.recorder()
    }

    pub fn listed(&self, n: u64) {
        self.listed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn written(&self, bytes: u64) {
        self.written.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn dir_done(&self) {
        self.dirs.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` listed keys were left out by the selection.
    pub fn excluded(&self, n: u64) {
        self.excluded.fetch_add(n, Ordering::Relaxed);
    }

    /// `--manifest`: `n` inventory rows were not copied (older versions, delete markers,
    /// keys outside SOURCE's prefix).
    pub fn inventory_left_out(&self, n: u64) {
        self.inventory_left_out.fetch_add(n, Ordering::Relaxed);
    }

    /// `--dry-run`: this key would be copied.
    pub fn planned(&self, bytes: u64) {
        self.planned.fetch_add(1, Ordering::Relaxed);
        self.planned_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// A key skipped because its object is archived (GLACIER, DEEP_ARCHIVE) and not restored.
    pub fn archived(&self, key: &str, class: &str) {
        self.skipped();
        self.archived.fetch_add(1, Ordering::Relaxed);
        if !self.quiet_failures {
            crate::console::line(&format!(
                "s3uring: skipped '{}': in {class} and not restored (restore it first, e.g. aws s3api restore-object)",
                sanitize(key)
            ));
        }
    }

    /// Records a failed key and prints it: `s3uring: failed 'KEY': REASON`.
    pub fn fail(&self, key: &str, reason: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if !self.quiet_failures {
            crate::console::line(&format!("s3uring: failed '{}': {}", sanitize(key), sanitize(reason)));
        }
        if let Ok(mut f) = self.failed_keys.lock()
            && let Some(f) = f.as_mut()
        {
            f.add(key, reason);
        }
        if let Ok(mut v) = self.first_failures.lock()
            && v.len() < FAILURES_KEPT
        {
            v.push((key.to_owned(), reason.to_owned()));
        }
    }

    pub fn listing_incomplete(&self, reason: &str) {
        self.listing_incomplete.store(true, Ordering::Relaxed);
        crate::console::line(&format!("s3uring: {}", sanitize(reason)));
    }

    /// The io_uring writer's batching: `submits` enters carried `files` files.
    pub fn ring_batches(&self, submits: u64, files: u64) {
        self.ring_submits.fetch_add(submits, Ordering::Relaxed);
        self.ring_files.fetch_add(files, Ordering::Relaxed);
    }

    /// The lean fetch engine opened a connection; `resumed`: its TLS handshake resumed a
    /// session.
    pub fn connection_opened(&self, resumed: bool) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        if resumed {
            self.resumed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A GET attempt failed and is tried again; `throttled` when the service asked to slow down.
    pub fn retried(&self, throttled: bool) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        if throttled {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Collects every failed key from now on for `path`, in a temporary file beside it: `path`
    /// itself is only replaced by [`Report::finish_failed_keys`], after the key source (which
    /// may be the same file) has been read.
    pub fn write_failed_keys(&self, path: &std::path::Path) -> Result<(), String> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = path.with_file_name(format!(".{name}.{}.tmp", crate::keymap::run_id()));
        let file = std::fs::File::create_new(&temp)
            .map_err(|e| format!("cannot create --failed-keys file '{}': {e}", path.display()))?;
        if let Ok(mut f) = self.failed_keys.lock() {
            *f = Some(FailedKeys {
                path: path.to_owned(),
                temp,
                out: std::io::BufWriter::new(file),
                keys: std::collections::HashSet::new(),
                unlisted: 0,
                error: None,
            });
        }
        Ok(())
    }

    /// A run that copied nothing (a setup error): the `--failed-keys` file stays as it was.
    pub fn discard_failed_keys(&self) {
        if let Some(f) = self.failed_keys.lock().ok().and_then(|mut g| g.take()) {
            let _ = std::fs::remove_file(&f.temp);
        }
    }

    /// Replaces the `--failed-keys` file with this run's failures (atomically: a rename). A run
    /// that did not get through its keys (interrupted, stopped early, listing incomplete) also
    /// keeps the keys of the old file, so `--keys-from F --failed-keys F` never loses a key it
    /// did not try. The summary line about it, if there is one.
    pub fn finish_failed_keys(&self) -> Option<String> {
        let complete = !self.interrupted.load(Ordering::Relaxed)
            && !self.listing_incomplete.load(Ordering::Relaxed)
            && self.aborted().is_none();
        let mut f = self.failed_keys.lock().ok()?.take()?;
        let written = f.keys.len();
        let mut kept = 0usize;
        if !complete && f.error.is_none() {
            match std::fs::read_to_string(&f.path) {
                Ok(old) => {
                    for line in old.lines() {
                        let key = line.split('\t').next().unwrap_or(line);
                        if !key.is_empty() && !f.keys.contains(key) {
                            f.line(line);
                            kept += 1;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => f.error = Some(format!("cannot read the old list: {e}")),
            }
        }
        use std::io::Write as _;
        let done = match &f.error {
            Some(e) => Err(e.clone()),
            None => f
                .out
                .flush()
                .and_then(|()| f.out.get_ref().sync_all())
                .and_then(|()| std::fs::rename(&f.temp, &f.path))
                .map_err(|e| e.to_string()),
        };
        let path = f.path.display();
        Some(match done {
            Err(e) => {
                let _ = std::fs::remove_file(&f.temp);
                format!("cannot write --failed-keys file '{path}': {e} (it was left as it was)")
            }
            Ok(()) => {
                let mut line = format!("{written} failed keys written to '{path}'");
                if kept > 0 {
                    line += &format!(" (and {kept} keys of the old list: this run did not get through its keys)");
                }
                if f.unlisted > 0 {
                    line += &format!(" ({} keys containing a tab or a line break are only in the log)", f.unlisted);
                }
                line
            }
        })
    }

    /// Who to tell when the run must stop on its own ([`Report::abort`]).
    pub fn on_abort(&self, trigger: tokio::sync::watch::Sender<bool>) {
        if let Ok(mut a) = self.abort.lock() {
            a.1 = Some(trigger);
        }
    }

    /// Stops the run: nothing more is fetched, the summary gives `reason` (the first one).
    pub fn abort(&self, reason: &str) {
        let Ok(mut a) = self.abort.lock() else { return };
        if a.0.is_none() {
            crate::console::line(&format!("s3uring: stopping: {}", sanitize(reason)));
            a.0 = Some(reason.to_owned());
        }
        if let Some(t) = &a.1 {
            t.send_replace(true);
        }
    }

    /// Why the run stopped on its own, if it did.
    pub fn aborted(&self) -> Option<String> {
        self.abort.lock().ok().and_then(|a| a.0.clone())
    }

    /// A second attempt was started for a slow GET (`--hedge-after`).
    pub fn hedged(&self) {
        self.hedged.fetch_add(1, Ordering::Relaxed);
    }

    /// The second attempt answered first.
    pub fn hedge_won(&self) {
        self.hedge_won.fetch_add(1, Ordering::Relaxed);
    }

    /// The fewest GETs in flight while the rate limiter held GETs back, recorded at the end
    /// of the run.
    pub fn set_min_in_flight(&self, n: u64) {
        self.min_in_flight.store(n, Ordering::Relaxed);
    }

    /// The window of GETs in flight the run ended with.
    pub fn set_window(&self, n: u64) {
        self.window.store(n, Ordering::Relaxed);
    }

    /// `--verify` checked a body.
    pub fn verified(&self, how: crate::verify::Verified) {
        use crate::verify::Verified;
        let c = match how {
            Verified::Checksum(_) => &self.verified_checksum,
            Verified::EtagMd5 => &self.verified_md5,
            Verified::Unverifiable => &self.unverifiable,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `--verify` found a body that does not match its checksum.
    pub fn corrupt(&self) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
    }

    /// The run was stopped early on request.
    pub fn interrupted(&self) {
        self.interrupted.store(true, Ordering::Relaxed);
    }

    /// Listing has ended; the progress display can show a total and an ETA.
    pub fn listing_done(&self) {
        self.listing_done.store(true, Ordering::Relaxed);
    }

    /// The counters right now.
    pub fn counts(&self) -> Counts {
        Counts {
            listed: self.listed.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            dirs: self.dirs.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            excluded: self.excluded.load(Ordering::Relaxed),
            inventory_left_out: self.inventory_left_out.load(Ordering::Relaxed),
            archived: self.archived.load(Ordering::Relaxed),
            planned: self.planned.load(Ordering::Relaxed),
            planned_bytes: self.planned_bytes.load(Ordering::Relaxed),
            listing_done: self.listing_done.load(Ordering::Relaxed),
        }
    }

    /// `engine` and `fetch_engine`: the io and fetch engines that ran.
    pub fn summary(&self, elapsed: Duration, engine: &str, fetch_engine: &str) -> Summary {
        Summary {
            counts: self.counts(),
            listing_incomplete: self.listing_incomplete.load(Ordering::Relaxed),
            interrupted: self.interrupted.load(Ordering::Relaxed),
            aborted: self.aborted(),
            failed_keys: None,
            dry_run: false,
            first_failures: self.first_failures.lock().map(|v| v.clone()).unwrap_or_default(),
            elapsed,
            engine: engine.to_owned(),
            fetch_engine: fetch_engine.to_owned(),
            connections: self.connections.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            window: self.window.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            hedged: self.hedged.load(Ordering::Relaxed),
            hedge_won: self.hedge_won.load(Ordering::Relaxed),
            min_in_flight: self.min_in_flight.load(Ordering::Relaxed),
            throttle: ThrottleStats::default(),
            retries_allowed: 0,
            hedge_after_ms: 0,
            verify: [
                self.verified_checksum.load(Ordering::Relaxed),
                self.verified_md5.load(Ordering::Relaxed),
                self.unverifiable.load(Ordering::Relaxed),
                self.corrupt.load(Ordering::Relaxed),
            ],
            cpu: ProcessCpu::now(),
            stages: self.stages.snapshot(),
            ring_submits: self.ring_submits.load(Ordering::Relaxed),
            ring_files: self.ring_files.load(Ordering::Relaxed),
        }
    }
}

/// This process's CPU time and peak memory, from `/proc/self` (Linux only; `None` elsewhere).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCpu {
    pub user: Duration,
    pub sys: Duration,
    /// Peak resident set size (VmHWM), bytes.
    pub peak_rss: u64,
}

impl ProcessCpu {
    pub fn now() -> Option<ProcessCpu> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| -> Option<Duration> {
            let ticks: u64 = fields.get(i)?.parse().ok()?;
            let hz = rustix::param::clock_ticks_per_second().max(1);
            Some(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz))
        };
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
        let (user, sys) = (tick(11)?, tick(12)?);
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let peak_rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        Some(ProcessCpu { user, sys, peak_rss })
    }
}

/// The `--failed-keys` file, while the run writes it.
#[derive(Debug)]
struct FailedKeys {
    path: std::path::PathBuf,
    /// Where the lines go until the run ends (beside `path`, named for this run).
    temp: std::path::PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    /// The keys written (a key fails once, but a run's list and an old one may overlap).
    keys: std::collections::HashSet<String>,
    /// Keys a line cannot hold (tab, CR or LF in the key).
    unlisted: u64,
    error: Option<String>,
}

impl FailedKeys {
    /// `KEY<TAB>REASON`: `--keys-from` reads the key back up to the tab.
    fn add(&mut self, key: &str, reason: &str) {
        if key.contains(['\t', '\n', '\r']) {
            self.unlisted += 1;
            return;
        }
        if self.keys.insert(key.to_owned()) {
            self.line(&format!("{key}\t{}", sanitize(reason)));
        }
    }

    fn line(&mut self, line: &str) {
        use std::io::Write as _;
        if self.error.is_none()
            && let Err(e) = writeln!(self.out, "{line}")
        {
            self.error = Some(e.to_string());
        }
    }
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub listed: u64,
    pub written: u64,
    pub dirs: u64,
    pub skipped: u64,
    pub failed: u64,
    pub bytes: u64,
    /// Left out by `--include`/`--exclude`/`--shard`.
    pub excluded: u64,
    /// `--manifest` rows not copied (older versions, delete markers, outside SOURCE).
    pub inventory_left_out: u64,
    /// Skipped because archived (GLACIER, DEEP_ARCHIVE) and not restored.
    pub archived: u64,
    /// `--dry-run`: would be copied.
    pub planned: u64,
    pub planned_bytes: u64,
    pub listing_done: bool,
}

/// The numbers of a finished run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The counters at the end of the run.
    pub counts: Counts,
    pub listing_incomplete: bool,
    /// Stopped by SIGINT/SIGTERM: the keys not yet handled were not copied.
    pub interrupted: bool,
    /// The run stopped on its own (a full disk): the keys not yet handled were not copied.
    pub aborted: Option<String>,
    /// What happened to the `--failed-keys` file, if one was asked for.
    pub failed_keys: Option<String>,
    /// `--dry-run`: nothing was fetched or written.
    pub dry_run: bool,
    pub first_failures: Vec<(String, String)>,
    pub elapsed: Duration,
    pub engine: String,
    /// The fetch engine (`lean` or `sdk`).
    pub fetch_engine: String,
    /// Connections the lean engine opened (0 with the SDK engine, whose pool is not counted),
    /// and how many of their TLS handshakes resumed a session.
    pub connections: u64,
    pub resumed: u64,
    /// The window of whole-object GETs in flight the run ended with (at most `--workers`).
    pub window: u64,
    /// GET attempts retried, and how many of those were throttled (SlowDown, 503, 429).
    pub retries: u64,
    pub throttled: u64,
    /// Hedged attempts, and how many answered first.
    pub hedged: u64,
    pub hedge_won: u64,
    /// The fewest GETs in flight while GETs waited for the rate limiter (equal to
    /// `--workers` when none ever did).
    pub min_in_flight: u64,
    /// The rate limiters: throttling answers, `--max-rate`, waiting, partitions.
    pub throttle: ThrottleStats,
    /// `--retries` and `--hedge-after` (ms) of the run.
    pub retries_allowed: u32,
    pub hedge_after_ms: u64,
    /// `--verify`: [by checksum, by ETag MD5, nothing to verify against, mismatches].
    pub verify: [u64; 4],
    /// The whole process's CPU and peak RSS at the end of the run.
    pub cpu: Option<ProcessCpu>,
    /// Latency percentiles per stage.
    pub stages: Vec<StageStats>,
    /// io_uring writer: `io_uring_enter` calls that submitted work, and files started.
    pub ring_submits: u64,
    pub ring_files: u64,
}

impl Summary {
    /// `, 48 connections (40 TLS resumed), at most 64 GETs in flight`: what fetching needed.
    fn fetch_detail(&self) -> String {
        let mut s = String::new();
        if self.connections > 0 {
            s += &format!(", {} connections", self.connections);
            if self.resumed > 0 {
                s += &format!(" ({} TLS resumed)", self.resumed);
            }
        }
        if self.window > 0 {
            s += &format!(", at most {} GETs in flight", self.window);
        }
        s
    }

    /// True when every listed key was written or skipped and the listing completed.
    pub fn success(&self) -> bool {
        self.counts.failed == 0
            && !self.listing_incomplete
            && !self.interrupted
            && self.aborted.is_none()
            && self.unaccounted() == 0
    }

    /// Keys listed but neither written, skipped nor failed: always 0 (invariant 3).
    pub fn unaccounted(&self) -> u64 {
        self.counts.listed.saturating_sub(
            self.counts.written + self.counts.dirs + self.counts.skipped + self.counts.failed + self.counts.planned,
        )
    }

    pub fn objects_per_sec(&self) -> f64 {
        (self.counts.written + self.counts.dirs) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Files started per `io_uring_enter` (io_uring engine only).
    pub fn files_per_submit(&self) -> Option<f64> {
        (self.ring_submits > 0).then(|| self.ring_files as f64 / self.ring_submits as f64)
    }

    /// Client CPU (user + sys) per object written, in microseconds.
    pub fn cpu_us_per_object(&self) -> Option<f64> {
        let cpu = self.cpu?;
        let n = (self.counts.written + self.counts.dirs).max(1) as f64;
        Some((cpu.user + cpu.sys).as_secs_f64() * 1e6 / n)
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.counts.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The one-screen summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} keys listed: {} files written, {} directories, {} skipped, {} failed{}",
            self.counts.listed,
            self.counts.written,
            self.counts.dirs,
            self.counts.skipped,
            self.counts.failed,
            match (self.counts.excluded, self.counts.inventory_left_out) {
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
                self.counts.planned,
                self.counts.planned_bytes as f64 / (1 << 20) as f64,
                self.counts.skipped
            );
            return s;
        }
        let _ = writeln!(
            s,
            "{:.1} MiB in {:.2} s: {:.0} objects/s, {:.1} MiB/s (fetch: {}{}; io: {}{})",
            self.counts.bytes as f64 / (1 << 20) as f64,
            self.elapsed.as_secs_f64(),
            self.objects_per_sec(),
            self.mib_per_sec(),
            self.fetch_engine,
            self.fetch_detail(),
            self.engine,
            self.files_per_submit().map_or(String::new(), |f| format!(", {f:.1} files per submit"))
        );
        if self.counts.archived > 0 {
            let _ = writeln!(
                s,
                "{} of the skipped objects are in GLACIER/DEEP_ARCHIVE and not restored: restore them, then re-run",
                self.counts.archived
            );
        }
        if self.retries > 0 {
            let _ = writeln!(
                s,
                "{} GET attempts retried ({} throttled by the service, spending no retries; GETs in flight lowered to {} \
                 at the least; --retries {}, --hedge-after {} ms)",
                self.retries, self.throttled, self.min_in_flight, self.retries_allowed, self.hedge_after_ms
            );
        }
        self.render_rate_limits(&mut s);
        if self.hedged > 0 {
            let _ = writeln!(
                s,
                "{} slow GETs hedged with a second request ({} answered first)",
                self.hedged, self.hedge_won
            );
        }
        if let (Some(cpu), Some(per)) = (self.cpu, self.cpu_us_per_object()) {
            let _ = writeln!(
                s,
                "CPU {:.2} s user + {:.2} s sys = {per:.0} µs/object, peak RSS {:.0} MiB",
                cpu.user.as_secs_f64(),
                cpu.sys.as_secs_f64(),
                cpu.peak_rss as f64 / (1 << 20) as f64
            );
        }
        let [by_checksum, by_md5, unverifiable, corrupt] = self.verify;
        if by_checksum + by_md5 + unverifiable + corrupt > 0 {
            let _ = writeln!(
                s,
                "verified {} bodies ({by_checksum} by x-amz-checksum, {by_md5} by ETag MD5); {unverifiable} had nothing to \
                 verify against; {corrupt} did not match and were fetched again",
                by_checksum + by_md5
            );
        }
        if self.interrupted {
            let _ = writeln!(
                s,
                "interrupted: {} listed keys were not copied (re-run the same command to finish)",
                self.unaccounted()
            );
        }
        if let Some(reason) = &self.aborted {
            let _ = writeln!(
                s,
                "stopped early: {}: {} listed keys were not copied (fix the cause, then re-run the same command)",
                sanitize(reason),
                self.unaccounted()
            );
        }
        if self.listing_incomplete {
            let _ = writeln!(s, "listing stopped early: keys after the failure were not copied");
        }
        if !self.first_failures.is_empty() {
            let _ = writeln!(s, "first failures:");
            for (k, r) in &self.first_failures {
                let _ = writeln!(s, "  '{}': {}", sanitize(k), sanitize(r));
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
        let t = &self.throttle;
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
        if let Some(max) = t.max_rate {
            let _ = writeln!(s, "--max-rate {max:.0} GET/s");
        }
        if t.limiter_wait_s > 0.0 {
            let _ = writeln!(s, "GETs waited {:.1} s for their send slots (summed over GETs)", t.limiter_wait_s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_accounted_for() {
        let r = Report::silent();
        r.listed(4);
        r.written(10);
        r.dir_done();
        r.skipped();
        r.fail("k", "why");
        let s = r.summary(Duration::from_secs(1), "threads", "lean");
        assert_eq!(s.unaccounted(), 0);
        assert!(!s.success());
        assert_eq!(s.first_failures, vec![("k".to_owned(), "why".to_owned())]);
        assert!(s.render().contains("1 failed"));
    }
}

#[cfg(test)]
mod cpu_tests {
    #[test]
    fn process_cpu_reads_proc() {
        let cpu = super::ProcessCpu::now().expect("/proc/self readable");
        assert!(cpu.peak_rss > 0);
    }
}

/// The `--stats-json` document. Its shape is an interface (README, "Stats JSON"): fields are
/// only ever added, and `schema` changes if one is removed or changes meaning.
pub fn stats_json(summary: &Summary, cfg: &crate::config::Config) -> serde_json::Value {
    use serde_json::json;
    let secs = summary.elapsed.as_secs_f64();
    let cpu = summary.cpu.map(|c| {
        json!({
            "user_s": c.user.as_secs_f64(),
            "sys_s": c.sys.as_secs_f64(),
            "us_per_object": summary.cpu_us_per_object(),
            "peak_rss_bytes": c.peak_rss,
        })
    });
    let stages: serde_json::Map<String, serde_json::Value> = summary
        .stages
        .iter()
        .map(|s| {
            let v = json!({
                "count": s.count, "mean_us": s.mean_us, "p50_us": s.p50_us, "p90_us": s.p90_us,
                "p99_us": s.p99_us, "p999_us": s.p999_us, "max_us": s.max_us,
            });
            (s.stage.to_owned(), v)
        })
        .collect();
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    json!({
        "schema": 1,
        "tool": { "name": "s3uring", "version": env!("CARGO_PKG_VERSION") },
        "source": cfg.source.to_string(),
        "dest": cfg.dest.display().to_string(),
        "config": {
            "workers": cfg.workers,
            "queue": cfg.queue,
            "io_engine": format!("{:?}", cfg.io_engine).to_lowercase(),
            "fetch_engine": format!("{:?}", cfg.fetch_engine).to_lowercase(),
            "retries": cfg.retries,
            "hedge_after_ms": cfg.hedge_after_ms,
            "max_rate": cfg.max_rate,
            "stall_timeout_s": cfg.stall_timeout.as_secs(),
            "list_workers": cfg.list_workers,
            "verify": cfg.verify,
            "fsync": cfg.fsync,
            "existing": format!("{:?}", cfg.existing).to_lowercase(),
            "io_threads": cfg.io_threads.unwrap_or(match summary.engine.as_str() {
                "io_uring" => crate::config::RING_IO_WORKERS,
                _ => crate::config::default_io_threads(),
            }),
            "buffer_bytes": cfg.buffer_bytes,
            "multipart_threshold": cfg.parts.threshold,
            "part_size": cfg.parts.part_size,
            "part_concurrency": cfg.parts.concurrency,
            "manifest": cfg.manifest.as_ref().map(ToString::to_string),
            "endpoint_url": cfg.s3.endpoint_url,
            "region": cfg.s3.region,
            "force_path_style": cfg.s3.force_path_style,
        },
        "io_engine": summary.engine,
        "fetch_engine": summary.fetch_engine,
        "fetch": {
            "connections_opened": summary.connections,
            "connections_resumed": summary.resumed,
            "in_flight_window": summary.window,
            "retries": summary.retries,
            "throttled": summary.throttled,
            "min_in_flight": summary.min_in_flight,
            "hedged": summary.hedged,
            "hedge_won": summary.hedge_won,
            "rate_limit": summary.throttle,
        },
        "verify": {
            "by_checksum": summary.verify[0],
            "by_etag_md5": summary.verify[1],
            "unverifiable": summary.verify[2],
            "mismatches": summary.verify[3],
        },
        "machine": {
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": read("/proc/sys/kernel/osrelease"),
            "hostname": read("/proc/sys/kernel/hostname"),
            "loadavg": read("/proc/loadavg"),
        },
        "elapsed_s": secs,
        "counters": {
            "listed": summary.counts.listed,
            "written": summary.counts.written,
            "dirs": summary.counts.dirs,
            "skipped": summary.counts.skipped,
            "failed": summary.counts.failed,
            "bytes": summary.counts.bytes,
            "listing_incomplete": summary.listing_incomplete,
            "excluded": summary.counts.excluded,
            "inventory_left_out": summary.counts.inventory_left_out,
            "archived": summary.counts.archived,
            "dry_run_planned": summary.counts.planned,
            "dry_run_planned_bytes": summary.counts.planned_bytes,
            "interrupted": summary.interrupted,
            "aborted": summary.aborted,
        },
        "throughput": { "objects_per_s": summary.objects_per_sec(), "mib_per_s": summary.mib_per_sec() },
        "writer": {
            "ring_submits": summary.ring_submits,
            "ring_files": summary.ring_files,
            "files_per_submit": summary.files_per_submit(),
        },
        "cpu": cpu,
        "stages": stages,
        "first_failures": summary.first_failures.iter().map(|(k, r)| json!({"key": k, "reason": r})).collect::<Vec<_>>(),
    })
}
