//! The run's outcome: counters every stage updates, failures printed as they happen (one
//! sanitised line each, naming the key and the cause), and the final summary.
//!
//! Invariant 3: every listed key ends as exactly one of written (a file or a directory),
//! skipped, or failed — [`Summary::unaccounted`] checks it.

mod json;
pub mod progress;
pub mod stats;
mod summary;

pub use json::stats_json;
use summary::{CountAtomics, FetchAtomics, VerifyAtomics, WriterAtomics};
pub use summary::{
    Counters, Counts, Cpu, Failure, Fetch, FetchCounts, InFlightWhenThrottled, PartitionStats, RandomThrottling,
    Summary, ThrottleStats, Throughput, VerifyCounts, Writer, WriterCounts,
};

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::console::sanitize;
use stats::{Recorder, StageSink};

/// How many failures the summary repeats at the end.
const FAILURES_KEPT: usize = 10;

#[derive(Debug, Default)]
pub struct Report {
    counts: CountAtomics,
    fetch: FetchAtomics,
    verify: VerifyAtomics,
    writer: WriterAtomics,
    /// Listing stopped early (after its first page): not every key was seen.
    listing_incomplete: AtomicBool,
    /// Listing has ended (the total is known).
    listing_done: AtomicBool,
    /// The run was stopped (SIGINT/SIGTERM) before every key was handled.
    interrupted: AtomicBool,
    first_failures: Mutex<Vec<Failure>>,
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
        self.counts.listed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn written(&self, bytes: u64) {
        self.counts.written.fetch_add(1, Ordering::Relaxed);
        self.counts.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn dir_done(&self) {
        self.counts.dirs.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` listed keys were left out by the selection.
    pub fn excluded(&self, n: u64) {
        self.counts.excluded.fetch_add(n, Ordering::Relaxed);
    }

    /// `--manifest`: `n` inventory rows were not copied (older versions, delete markers,
    /// keys outside SOURCE's prefix).
    pub fn inventory_left_out(&self, n: u64) {
        self.counts.inventory_left_out.fetch_add(n, Ordering::Relaxed);
    }

    /// `--dry-run`: this key would be copied.
    pub fn planned(&self, bytes: u64) {
        self.counts.planned.fetch_add(1, Ordering::Relaxed);
        self.counts.planned_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn skipped(&self) {
        self.counts.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// A key skipped because its object is archived (GLACIER, DEEP_ARCHIVE) and not restored.
    pub fn archived(&self, key: &str, class: &str) {
        self.skipped();
        self.counts.archived.fetch_add(1, Ordering::Relaxed);
        if !self.quiet_failures {
            let text = format!(
                "s3uring: skipped '{}': in {class} and not restored (restore it first, e.g. aws s3api restore-object)",
                sanitize(key)
            );
            let fields = serde_json::json!({ "key": key, "reason": "archived", "storage_class": class });
            crate::console::event("WARN", "skipped", &text, object(fields));
        }
    }

    /// Records a failed key and prints it: `s3uring: failed 'KEY': REASON`.
    pub fn fail(&self, key: &str, reason: &str) {
        self.counts.failed.fetch_add(1, Ordering::Relaxed);
        if !self.quiet_failures {
            let text = format!("s3uring: failed '{}': {}", sanitize(key), sanitize(reason));
            let fields = serde_json::json!({ "key": key, "reason": reason });
            crate::console::event("ERROR", "failed", &text, object(fields));
        }
        if let Ok(mut f) = self.failed_keys.lock()
            && let Some(f) = f.as_mut()
        {
            f.add(key, reason);
        }
        if let Ok(mut v) = self.first_failures.lock()
            && v.len() < FAILURES_KEPT
        {
            v.push(Failure { key: key.to_owned(), reason: reason.to_owned() });
        }
    }

    pub fn listing_incomplete(&self, reason: &str) {
        self.listing_incomplete.store(true, Ordering::Relaxed);
        let fields = object(serde_json::json!({ "reason": reason }));
        crate::console::event("ERROR", "listing_incomplete", &format!("s3uring: {}", sanitize(reason)), fields);
    }

    /// The io_uring writer's batching: `submits` enters carried `files` files.
    pub fn ring_batches(&self, submits: u64, files: u64) {
        self.writer.ring_submits.fetch_add(submits, Ordering::Relaxed);
        self.writer.ring_files.fetch_add(files, Ordering::Relaxed);
    }

    /// The lean fetch engine opened a connection; `resumed`: its TLS handshake resumed a
    /// session.
    pub fn connection_opened(&self, resumed: bool) {
        self.fetch.connections.fetch_add(1, Ordering::Relaxed);
        if resumed {
            self.fetch.resumed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A GET attempt failed and is tried again; `throttled` when the service asked to slow down.
    pub fn retried(&self, throttled: bool) {
        self.fetch.retries.fetch_add(1, Ordering::Relaxed);
        if throttled {
            self.fetch.throttled.fetch_add(1, Ordering::Relaxed);
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
            match read_old_list(&f.path) {
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
        self.fetch.hedged.fetch_add(1, Ordering::Relaxed);
    }

    /// The second attempt answered first.
    pub fn hedge_won(&self) {
        self.fetch.hedge_won.fetch_add(1, Ordering::Relaxed);
    }

    /// The fewest GETs in flight while the rate limiter held GETs back, recorded at the end
    /// of the run.
    pub fn set_min_in_flight(&self, n: u64) {
        self.fetch.min_in_flight.store(n, Ordering::Relaxed);
    }

    /// The window of GETs in flight the run ended with.
    pub fn set_window(&self, n: u64) {
        self.fetch.window.store(n, Ordering::Relaxed);
    }

    /// `--verify` checked a body.
    pub fn verified(&self, how: crate::verify::Verified) {
        use crate::verify::Verified;
        let c = match how {
            Verified::Checksum(_) => &self.verify.by_checksum,
            Verified::EtagMd5 => &self.verify.by_md5,
            Verified::Unverifiable(_) => &self.verify.unverifiable,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `--verify` found a body that does not match its checksum.
    pub fn corrupt(&self) {
        self.verify.corrupt.fetch_add(1, Ordering::Relaxed);
    }

    /// The run was stopped early on request.
    pub fn interrupted(&self) {
        self.interrupted.store(true, Ordering::Relaxed);
    }

    /// Listing has ended; the progress display can show a total and an ETA.
    pub fn listing_done(&self) {
        self.listing_done.store(true, Ordering::Relaxed);
    }

    /// The key counters right now.
    pub fn counts(&self) -> Counts {
        self.counts.load()
    }

    /// Whether listing has ended (the total is known).
    pub fn listing_ended(&self) -> bool {
        self.listing_done.load(Ordering::Relaxed)
    }

    /// The numbers so far; `engine` and `fetch_engine`: the io and fetch engines that ran.
    pub fn summary(&self, elapsed: Duration, engine: &str, fetch_engine: &str) -> Summary {
        let counts = self.counts();
        let writer = self.writer.load();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let objects = counts.objects();
        let cpu = ProcessCpu::now().map(|c| Cpu {
            user_s: c.user.as_secs_f64(),
            sys_s: c.sys.as_secs_f64(),
            us_per_object: (c.user + c.sys).as_secs_f64() * 1e6 / objects.max(1) as f64,
            peak_rss_bytes: c.peak_rss,
        });
        Summary {
            engine: engine.to_owned(),
            fetch_engine: fetch_engine.to_owned(),
            counters: Counters {
                counts,
                listing_incomplete: self.listing_incomplete.load(Ordering::Relaxed),
                interrupted: self.interrupted.load(Ordering::Relaxed),
                aborted: self.aborted(),
            },
            fetch: Fetch { counts: self.fetch.load(), rate_limit: ThrottleStats::default() },
            verify: self.verify.load(),
            writer: Writer {
                counts: writer,
                files_per_submit: (writer.ring_submits > 0)
                    .then(|| writer.ring_files as f64 / writer.ring_submits as f64),
            },
            elapsed,
            throughput: Throughput {
                objects_per_s: objects as f64 / secs,
                mib_per_s: counts.bytes as f64 / (1 << 20) as f64 / secs,
            },
            cpu,
            stages: self.stages.snapshot(),
            first_failures: self.first_failures.lock().map(|v| v.clone()).unwrap_or_default(),
            failed_keys: None,
            dry_run: false,
            retries_allowed: 0,
            hedge_after_ms: 0,
            endpoint: None,
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

/// The fields of a JSON object (`json!({...})` is always one).
pub(crate) fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
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
        assert_eq!(s.first_failures, vec![Failure { key: "k".to_owned(), reason: "why".to_owned() }]);
        assert!(s.render().contains("1 failed"));
    }
}

#[cfg(test)]
mod json_tests {
    use super::*;

    /// Each counter lands under its documented name (README, "Stats JSON").
    #[test]
    fn counters_come_out_under_their_json_names() {
        let r = Report::silent();
        r.listed(3);
        r.written(100);
        r.planned(7);
        r.connection_opened(true);
        r.connection_opened(false);
        r.retried(true);
        r.set_window(64);
        r.verified(crate::verify::Verified::EtagMd5);
        r.corrupt();
        r.ring_batches(2, 6);
        r.fail("k", "why");
        let mut summary = r.summary(Duration::from_secs(2), "io_uring", "lean");
        summary.fetch.rate_limit.throttled = 5;
        let cfg = crate::config::Config::new(
            "s3://b/p/".parse().expect("a URL"),
            "/tmp/d".into(),
            crate::config::S3Settings::default(),
        );
        let j = stats_json(&summary, &cfg);
        let at = |path: &str| j.pointer(path).cloned().unwrap_or_else(|| panic!("{path} missing in {j:#}"));
        let n = |v: u64| serde_json::Value::from(v);
        assert_eq!(at("/counters/listed"), n(3));
        assert_eq!(at("/counters/bytes"), n(100));
        assert_eq!(at("/counters/dry_run_planned"), n(1));
        assert_eq!(at("/counters/dry_run_planned_bytes"), n(7));
        assert_eq!(at("/counters/failed"), n(1));
        assert_eq!(at("/fetch/connections_opened"), n(2));
        assert_eq!(at("/fetch/connections_resumed"), n(1));
        assert_eq!(at("/fetch/in_flight_window"), n(64));
        assert_eq!(at("/fetch/throttled"), n(1));
        assert_eq!(at("/fetch/rate_limit/throttled"), n(5));
        assert_eq!(at("/verify/by_etag_md5"), n(1));
        assert_eq!(at("/verify/mismatches"), n(1));
        assert_eq!(at("/writer/files_per_submit"), serde_json::Value::from(3.0));
        assert_eq!(at("/throughput/mib_per_s"), serde_json::Value::from(100.0 / 1048576.0 / 2.0));
        assert_eq!(at("/elapsed_s"), serde_json::Value::from(2.0));
        assert_eq!(at("/io_engine"), serde_json::Value::from("io_uring"));
        assert_eq!(at("/config/io_threads"), n(crate::config::RING_IO_WORKERS as u64));
        assert_eq!(at("/first_failures/0/key"), serde_json::Value::from("k"));
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

/// The old `--failed-keys` file, read as the file at that name: not through a link put
/// there (its target's lines would be copied into the new list), and only if it is a regular
/// file (a FIFO would block the run's end for good).
fn read_old_list(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let fd = crate::existing::open_regular(rustix::fs::CWD, path)?;
    let mut old = String::new();
    std::fs::File::from(fd).read_to_string(&mut old)?;
    Ok(old)
}

#[cfg(test)]
mod failed_keys_tests {
    use super::Report;

    /// An interrupted run keeps the old list's keys: read from the file itself, never from
    /// what a link put at its name points to (which would be copied into the new list).
    #[test]
    fn the_old_list_is_not_read_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "password=hunter2\n").unwrap();
        let list = dir.path().join("failed.txt");
        std::os::unix::fs::symlink(&secret, &list).unwrap();
        let report = Report::new();
        report.write_failed_keys(&list).unwrap();
        report.fail("k", "AccessDenied");
        report.interrupted();
        let line = report.finish_failed_keys().unwrap_or_default();
        // Not read, and nothing replaced: the summary says why.
        assert!(line.contains("symbolic link") && line.contains("left as it was"), "{line}");
        assert!(std::fs::symlink_metadata(&list).unwrap().file_type().is_symlink(), "{line}");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "password=hunter2\n");
    }

    #[test]
    fn an_old_list_that_is_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("failed.txt");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            list.as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let report = Report::new();
            report.write_failed_keys(&list).unwrap();
            report.fail("k", "AccessDenied");
            report.interrupted();
            tx.send(report.finish_failed_keys())
        });
        let line = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("reading the old list blocked");
        assert!(line.is_some_and(|l| l.contains("not a regular file")));
    }
}
