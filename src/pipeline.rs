//! The copy pipeline:
//!
//! ```text
//! lister ──keys──▶ [bounded queue: --queue] ──▶ --workers fetch tasks ──▶ [hand-off] ──▶ writer
//!   ListObjectsV2 pages,                           GetObject, body           bounded in jobs
//!   key → path mapping                             collected                 and in bytes
//! ```
//!
//! - The lister maps each key to its path as it lists (refused keys fail right there, with
//!   no request) and streams keys into the queue, so the first GET starts after the first
//!   page, not after the whole listing.
//! - `--workers` long-lived tasks pull from the queue: no task per key, so nothing grows with
//!   the bucket.
//! - Before a GET, a fetcher takes the object's size (known from the listing) out of a byte
//!   budget; the permit travels with the body and is released when the file is on disk. So
//!   memory is bounded by the budget, plus the queue of keys, whatever the bucket holds.
//! - A listing error on the first page is fatal (wrong bucket, credentials, endpoint); a later
//!   one stops listing, lets what was listed finish, and fails the run.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::existing::{Existing, ExistingMode};
use crate::keymap::{Target, map_key};
use crate::report::{Report, Summary};
use crate::s3;
use crate::s3::ByteRange;
use crate::stats::Stage;
use crate::writer::{self, FileJob, Job, LargeFile, Meta};

/// Budget unit: one permit is this many bytes.
const BUDGET_UNIT: u64 = 1024;

/// The first range asked of an object of unknown size: most small objects fit whole.
const UNKNOWN_FIRST_RANGE: u64 = 256 << 10;

/// A fatal error: the run could not start or could not go on. Per-key failures are not
/// fatal; they are counted in the [`Report`].
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// Bad configuration or an unusable source/destination, found before copying (exit 2).
    #[error("{0}")]
    Setup(String),
    /// Something broke inside the tool (exit 1).
    #[error("{0}")]
    Internal(String),
}

/// A key on its way from the lister to a fetcher.
struct Listed {
    key: String,
    size: u64,
    last_modified: Option<std::time::SystemTime>,
    /// The listing's ETag (without quotes): for the skip check, and kept with the file.
    etag: Option<String>,
    target: Target,
    listed_at: Instant,
}

/// The key queue's low-water signal. When listing outruns fetching, the queue is full and a
/// lister blocked in `send` is woken by every single receive — a task wake-up per key, ~6 µs
/// of CPU per object measured against a fast endpoint. Instead the lister waits here until
/// the queue has room for a page and then hands it on at once: one wake-up per page.
/// Consumers signal after each receive that leaves the queue at or below the mark.
struct Room {
    notify: tokio::sync::Notify,
    low: usize,
}

impl Room {
    /// The mark leaves room for a whole page (1,000 keys) where the queue is large enough,
    /// so it stays nearly full; else it is half the queue.
    fn new(capacity: usize) -> Arc<Room> {
        let low = (capacity / 2).max(capacity.saturating_sub(KEYS_PER_PAGE));
        Arc::new(Room { notify: tokio::sync::Notify::new(), low })
    }

    /// A consumer took a key; `len` is what the queue holds now.
    fn took(&self, len: usize) {
        if len <= self.low {
            self.notify.notify_one();
        }
    }

    /// Waits until `queue` is at or below the mark.
    async fn wait(&self, queue: &async_channel::Sender<Listed>) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if queue.len() <= self.low || queue.receiver_count() == 0 {
                return;
            }
            // The timeout only guards against consumers that are gone without a signal.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), notified).await;
        }
    }
}

/// Keys set aside because their partition's rate limiter is crowded (more GETs waiting at
/// its gate than it needs to keep its rate), so that the fetchers serve other partitions
/// instead of all waiting for one: S3 limits each prefix partition on its own. Parked keys
/// are grouped by partition and first path component, and taken round-robin whenever their
/// partition has room again, so that a limited partition's GETs mix keys of every prefix
/// under it — which is how the limiter learns which of them is limited (see
/// [`crate::throttle`]). At most [`PARKED_MAX`] keys are parked; beyond, fetchers wait at
/// the gate.
#[derive(Default)]
struct Parked {
    groups: std::sync::Mutex<ParkedGroups>,
    count: std::sync::atomic::AtomicUsize,
}

/// Parked keys by first path component (`prefix/component/`, or SOURCE's prefix).
#[derive(Default)]
struct ParkedGroups {
    groups: Vec<(Box<str>, std::collections::VecDeque<Listed>)>,
    /// Where the next round-robin look starts.
    next: usize,
}

/// A fetcher with parked keys waiting looks at them at least this often (the limiter's
/// signal that a gate has room is the usual wake-up; this bounds a missed one).
const PARKED_LOOK: std::time::Duration = std::time::Duration::from_millis(100);

/// Parked keys at most (~100 bytes each plus the key).
const PARKED_MAX: usize = 100_000;

impl Parked {
    fn is_empty(&self) -> bool {
        self.count.load(std::sync::atomic::Ordering::Relaxed) == 0
    }

    /// Parks `item` in `group`; gives it back when the parking is full.
    #[allow(clippy::result_large_err)] // the key goes back to its caller, not into an error
    fn park(&self, group: &str, item: Listed) -> Result<(), Listed> {
        use std::sync::atomic::Ordering;
        let Ok(mut p) = self.groups.lock() else { return Err(item) };
        if self.count.load(Ordering::Relaxed) >= PARKED_MAX {
            return Err(item);
        }
        match p.groups.iter_mut().find(|(g, _)| **g == *group) {
            Some((_, q)) => q.push_back(item),
            None => p.groups.push((group.into(), std::collections::VecDeque::from([item]))),
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A parked key of a group whose partition has room at its gate now (`crowded` tells;
    /// `None`: any group), from the groups in turn.
    fn take(&self, crowded: Option<&dyn Fn(&str) -> bool>) -> Option<Listed> {
        use std::sync::atomic::Ordering;
        if self.is_empty() {
            return None;
        }
        let mut p = self.groups.lock().ok()?;
        let n = p.groups.len();
        let at = (0..n).map(|i| (p.next + i) % n).find(|&i| crowded.is_none_or(|c| !c(&p.groups[i].0)))?;
        let item = p.groups[at].1.pop_front();
        if p.groups[at].1.is_empty() {
            p.groups.swap_remove(at);
        }
        p.next = at + 1;
        self.count.fetch_sub(1, Ordering::Relaxed);
        item
    }
}

/// Runs one copy to the end. Failures of single keys are in the summary; the error is for
/// the run as a whole.
pub async fn run(cfg: &Config, report: Arc<Report>) -> Result<Summary, Fatal> {
    run_until(cfg, report, Stop::never()).await
}

/// Asks a running copy to stop: listing and fetching end, files already fetched are still
/// written (or fail cleanly), and the summary says the run was interrupted.
#[derive(Debug, Clone)]
pub struct Stop {
    rx: tokio::sync::watch::Receiver<bool>,
    /// The run's own stop (a full disk: [`Report::abort`]).
    abort: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Stop {
    /// A stop and the handle that triggers it.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Stop) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Stop { rx, abort: None })
    }

    fn never() -> Stop {
        Stop::new().1
    }

    fn requested(&self) -> bool {
        *self.rx.borrow() || self.abort.as_ref().is_some_and(|a| *a.borrow())
    }

    /// Resolves once a stop is requested (never, if the triggers are dropped unused).
    async fn requested_wait(&mut self) {
        async fn wait(rx: &mut tokio::sync::watch::Receiver<bool>) {
            if rx.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        match &mut self.abort {
            None => wait(&mut self.rx).await,
            Some(abort) => tokio::select! {
                () = wait(&mut self.rx) => {}
                () = wait(abort) => {}
            },
        }
    }
}

/// [`run`], stopping early when `stop` is triggered.
pub async fn run_until(cfg: &Config, report: Arc<Report>, mut stop: Stop) -> Result<Summary, Fatal> {
    let started = Instant::now();
    let (abort_tx, abort_rx) = tokio::sync::watch::channel(false);
    report.on_abort(abort_tx);
    stop.abort = Some(abort_rx);
    // One SDK client (credentials, region, endpoint rules) serves the whole run.
    let control = s3::client(&cfg.s3).await;
    let resolved = single_object(cfg, &control).await?;
    let cfg = resolved.as_ref().unwrap_or(cfg);
    if cfg.dry_run {
        // A dry run copies nothing, so it leaves the --failed-keys file alone.
        return dry_run(cfg, &control, report, stop, started).await;
    }
    if let Some(path) = &cfg.failed_keys {
        report.write_failed_keys(path).map_err(Fatal::Setup)?;
    }
    let created_dest = prepare_dest(cfg).inspect_err(|_| report.discard_failed_keys())?;
    let result = copy(cfg, &control, report.clone(), started, stop, created_dest).await;
    if result.is_err() {
        report.discard_failed_keys();
    }
    if created_dest && matches!(result, Err(Fatal::Setup(_))) {
        // Nothing was copied: don't leave an empty DEST behind (fails if not empty).
        let _ = std::fs::remove_dir(&cfg.dest);
    }
    result
}

async fn copy(
    cfg: &Config,
    control: &s3::Control,
    report: Arc<Report>,
    started: Instant,
    stop: Stop,
    created_dest: bool,
) -> Result<Summary, Fatal> {
    let writer_options = writer::WriterOptions {
        engine: cfg.io_engine,
        io_threads: cfg.io_threads,
        hand_off: cfg.workers.clamp(64, 4096),
        files_per_submit: usize::MAX,
        fsync: cfg.fsync,
    };
    let writer = writer::start(&writer_options, &cfg.dest, report.clone()).map_err(Fatal::Setup)?;
    let engine = writer.engine;
    let client = control.client.clone();
    let fetch = Arc::new(crate::fetch::Engine::new(cfg, control, &report).await.map_err(Fatal::Setup)?);

    let (keys_tx, keys_rx) = async_channel::bounded::<Listed>(cfg.queue.max(1));
    let room = Room::new(cfg.queue.max(1));
    let budget_units = (cfg.buffer_bytes / BUDGET_UNIT).clamp(1, u64::from(u32::MAX)) as u32;
    let budget = Arc::new(Semaphore::new(budget_units as usize));
    let mut fetchers = Vec::with_capacity(cfg.workers);
    let parked = Arc::new(Parked::default());
    for _ in 0..cfg.workers.max(1) {
        let f = Fetcher {
            engine: fetch.clone(),
            parts: cfg.parts,
            retries: cfg.retries,
            keys: keys_rx.clone(),
            parked: parked.clone(),
            room: room.clone(),
            jobs: writer.jobs.clone(),
            budget: budget.clone(),
            budget_units,
            report: report.clone(),
            stop: stop.clone(),
        };
        fetchers.push(tokio::spawn(f.run()));
    }
    drop(keys_rx);

    // A DEST this run created holds nothing to compare against.
    let existing = match cfg.existing {
        ExistingMode::Overwrite => None,
        _ if created_dest => None,
        mode => Some(Existing::open(&cfg.dest, mode).map_err(Fatal::Setup)?),
    };
    let listed = list(cfg, &client, (&keys_tx, &room), &report, stop.clone(), existing).await;
    report.listing_done();
    drop(keys_tx);
    for f in fetchers {
        let _ = f.await;
    }
    let finished = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(|e| Fatal::Internal(format!("internal error: {e}")))?;
    finished.map_err(Fatal::Internal)?;
    listed?;
    if stop.requested() && report.aborted().is_none() {
        report.interrupted();
    }
    report.set_min_in_flight(fetch.min_in_flight() as u64);
    report.set_window(fetch.window() as u64);
    let mut summary = report.summary(started.elapsed(), engine, fetch.name());
    summary.failed_keys = report.finish_failed_keys();
    summary.throttle = fetch.throttle_stats();
    summary.retries_allowed = cfg.retries;
    summary.hedge_after_ms = cfg.hedge_after_ms;
    Ok(summary)
}

/// `s3://bucket/key` naming one existing object (HeadObject answers) copies that object, as
/// `aws s3 cp` does: into DEST when DEST is a directory or ends in `/`, else to the file DEST
/// (its directory is created when missing). Otherwise SOURCE is a prefix, as always. Returns
/// the configuration for a single-object copy, `None` for a prefix.
async fn single_object(cfg: &Config, control: &s3::Control) -> Result<Option<Config>, Fatal> {
    let key = match (&cfg.source.object, &cfg.keys_from) {
        (Some(key), None) => key,
        _ if cfg.version_id.is_some() => {
            return Err(Fatal::Setup("--version-id needs SOURCE to name one object (s3://bucket/key)".to_owned()));
        }
        _ => return Ok(None),
    };
    let version = cfg.version_id.as_deref();
    let bucket = &cfg.source.bucket;
    // Only a 404 means "not an object, so a prefix": a 403, a 5xx or an SSE-C refusal taken
    // as "prefix" would end as "0 keys listed", exit 0, and an empty directory.
    let head = s3::head(&control.client, bucket, key, version, cfg.s3.requester_pays)
        .await
        .map_err(|e| Fatal::Setup(format!("cannot look at s3://{bucket}/{key}: {e}")))?;
    let Some((size, last_modified)) = head else {
        return match version {
            Some(v) => Err(Fatal::Setup(format!("s3://{bucket}/{key} has no version '{v}'"))),
            None => Ok(None),
        };
    };
    if version.is_none() {
        // An object that is also a "directory" of other keys: say which is meant, never pick.
        let page = s3::list_page(&control.client, bucket, &format!("{key}/"), false, None, None, cfg.s3.requester_pays)
            .await
            .map_err(Fatal::Setup)?;
        if let Some(other) = page.objects.first() {
            return Err(Fatal::Setup(format!(
                "s3://{bucket}/{key} is an object and also a prefix of other keys (s3://{bucket}/{}): \
                 end SOURCE with '/' to copy the keys under {key}/, or name the object in a --keys-from file \
                 to copy it alone",
                crate::report::sanitize(&other.key)
            )));
        }
    }
    let base = key.rsplit('/').next().unwrap_or(key);
    let into_dir = cfg.dest.is_dir() || cfg.dest.as_os_str().to_string_lossy().ends_with('/');
    let (dir, name) = if into_dir {
        (cfg.dest.clone(), base.to_owned())
    } else {
        let name = cfg.dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| base.to_owned());
        let dir =
            cfg.dest.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| ".".into(), |p| p.to_path_buf());
        (dir, name)
    };
    let mut single = cfg.clone();
    single.dest = dir;
    single.single = Some(crate::config::Single { key: key.clone(), name, size, last_modified });
    Ok(Some(single))
}

/// `--dry-run`: lists (with the selection and the existing-file check, when DEST exists) and
/// prints `(dryrun) download: s3://bucket/key to path` per key to stdout, like the AWS CLI.
/// No GET, no write, DEST untouched.
async fn dry_run(
    cfg: &Config,
    control: &s3::Control,
    report: Arc<Report>,
    stop: Stop,
    started: Instant,
) -> Result<Summary, Fatal> {
    let existing = match cfg.existing {
        ExistingMode::Overwrite => None,
        _ if !cfg.dest.is_dir() => None,
        mode => Some(Existing::open(&cfg.dest, mode).map_err(Fatal::Setup)?),
    };
    let (tx, rx) = async_channel::bounded::<Listed>(cfg.queue.max(1));
    let room = Room::new(cfg.queue.max(1));
    let printer_room = room.clone();
    let (dest, bucket, rep) = (cfg.dest.clone(), cfg.source.bucket.clone(), report.clone());
    let printer = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        while let Ok(item) = rx.recv_blocking() {
            printer_room.took(rx.len());
            let path = dest.join(item.target.rel_path());
            let key = crate::report::sanitize(&item.key);
            // A closed stdout (`| head`) must not stop the count.
            let _ = writeln!(out, "(dryrun) download: s3://{bucket}/{key} to {}", path.display());
            rep.planned(if item.size == s3::UNKNOWN_SIZE { 0 } else { item.size });
        }
        let _ = out.flush();
    });
    let listed = list(cfg, &control.client, (&tx, &room), &report, stop, existing).await;
    report.listing_done();
    drop(tx);
    printer.await.map_err(|e| Fatal::Internal(format!("internal error: {e}")))?;
    listed?;
    let mut summary = report.summary(started.elapsed(), "none", "none");
    summary.dry_run = true;
    Ok(summary)
}

/// DEST must be a directory; it is created when missing (then `true`).
fn prepare_dest(cfg: &Config) -> Result<bool, Fatal> {
    let dest = &cfg.dest;
    match std::fs::metadata(dest) {
        Ok(m) if m.is_dir() => Ok(false),
        Ok(_) => Err(Fatal::Setup(format!("DEST '{}' exists and is not a directory", dest.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dest)
            .map(|()| true)
            .map_err(|e| Fatal::Setup(format!("cannot create DEST '{}': {e}", dest.display()))),
        Err(e) => Err(Fatal::Setup(format!("cannot use DEST '{}': {e}", dest.display()))),
    }
}

/// Lists the source into the queue. Returns an error only if the first page failed.
async fn list(
    cfg: &Config,
    client: &aws_sdk_s3::Client,
    (keys, room): (&async_channel::Sender<Listed>, &Room),
    report: &Arc<Report>,
    mut stop: Stop,
    mut existing: Option<Existing>,
) -> Result<(), Fatal> {
    let prefix = &cfg.source.prefix;
    if let Some(single) = &cfg.single {
        report.listed(1);
        match map_key(&single.name) {
            Ok(target) => {
                let item = Listed {
                    key: single.key.clone(),
                    size: single.size,
                    last_modified: single.last_modified,
                    etag: None,
                    target,
                    listed_at: Instant::now(),
                };
                let _ = keys.send(item).await;
            }
            Err(refused) => report.fail(&single.key, &format!("cannot write it as '{}': {refused}", single.name)),
        }
        return Ok(());
    }
    let mut lister = match (&cfg.keys_from, &cfg.manifest) {
        (Some(path), _) => Pages::Keys(read_keys(path).map_err(Fatal::Setup)?),
        (None, Some(location)) => {
            let manifest = crate::manifest::Manifest::open(location.clone(), client, &cfg.source.bucket)
                .await
                .map_err(Fatal::Setup)?;
            Pages::Keys(manifest.start(client.clone(), prefix.clone(), report.clone()))
        }
        (None, None) if cfg.list_workers > 1 => Pages::Keys(crate::listing::start(
            client.clone(),
            cfg.source.bucket.clone(),
            cfg.source.prefix.clone(),
            cfg.list_workers,
            report.clone(),
            {
                let keys = keys.clone();
                Box::new(move || keys.len() < keys.capacity().unwrap_or(usize::MAX) / 2)
            },
            cfg.s3.requester_pays,
        )),
        (None, None) => Pages::Listing(s3::Lister::new(client, &cfg.source, cfg.s3.requester_pays)),
    };
    let mut rec = report.recorder();
    let mut first = true;
    let mut seen = 0u64;
    loop {
        let asked = Instant::now();
        let page = tokio::select! {
            () = stop.requested_wait() => return Ok(()),
            page = lister.next_page() => page,
        };
        let Some(page) = page else { break };
        let listed_at = Instant::now();
        if matches!(lister, Pages::Listing(_)) {
            // Parallel listers record their own requests.
            rec.record(Stage::List, listed_at - asked);
        }
        let objects = match page {
            Ok(o) => o,
            Err(reason) if first => return Err(Fatal::Setup(reason)),
            Err(reason) => {
                report.listing_incomplete(&format!("listing stopped after {seen} keys: {reason}"));
                return Ok(());
            }
        };
        first = false;
        seen += objects.len() as u64;
        let objects: Vec<s3::ListedObject> = if cfg.selection.is_everything() {
            objects
        } else {
            let total = objects.len();
            let kept: Vec<_> = objects
                .into_iter()
                .filter(|o| cfg.selection.selects(&o.key, o.key.strip_prefix(prefix.as_str()).unwrap_or(&o.key)))
                .collect();
            report.excluded((total - kept.len()) as u64);
            kept
        };
        report.listed(objects.len() as u64);
        let mut items = Vec::with_capacity(objects.len());
        for o in objects {
            let Some(rel) = o.key.strip_prefix(prefix.as_str()) else {
                report.fail(&o.key, &format!("not under the source prefix '{prefix}'"));
                continue;
            };
            if rel.is_empty() {
                // The prefix's own folder marker: DEST itself.
                report.dir_done();
                continue;
            }
            if let Some(class) = &o.archived {
                report.archived(&o.key, class);
                continue;
            }
            match map_key(rel) {
                Ok(target) => {
                    let (key, size, last_modified, etag) = (o.key, o.size, o.last_modified, o.etag);
                    items.push(Listed { key, size, last_modified, etag, target, listed_at })
                }
                Err(refused) => report.fail(&o.key, &refused.to_string()),
            }
        }
        if let Some(ex) = existing.take() {
            // One blocking call per page: no file-system call on a tokio thread.
            let checked = tokio::task::spawn_blocking(move || {
                let mut ex = ex;
                let done: Vec<bool> =
                    items.iter().map(|i| ex.is_done(&i.target, i.size, i.last_modified, i.etag.as_deref())).collect();
                (ex, items, done)
            })
            .await
            .map_err(|e| Fatal::Internal(format!("internal error: {e}")))?;
            let (ex, all, done) = checked;
            existing = Some(ex);
            items = all
                .into_iter()
                .zip(done)
                .filter_map(|(i, d)| {
                    if d {
                        report.skipped();
                        None
                    } else {
                        Some(i)
                    }
                })
                .collect();
        }
        if !items.is_empty() {
            tokio::select! {
                () = stop.requested_wait() => return Ok(()),
                () = room.wait(keys) => {}
            }
        }
        for item in items {
            let sent = tokio::select! {
                () = stop.requested_wait() => return Ok(()),
                sent = keys.send(item) => sent,
            };
            if sent.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Where keys come from: ListObjectsV2 pages, pages of a parallel listing, or `--keys-from`.
enum Pages {
    Listing(s3::Lister),
    Keys(tokio::sync::mpsc::Receiver<Result<Vec<s3::ListedObject>, String>>),
}

impl Pages {
    async fn next_page(&mut self) -> Option<Result<Vec<s3::ListedObject>, String>> {
        match self {
            Pages::Listing(l) => l.next_page().await,
            Pages::Keys(rx) => rx.recv().await,
        }
    }
}

/// Keys per page from a `--keys-from` file or a `--manifest`: a ListObjectsV2 page's worth.
pub(crate) const KEYS_PER_PAGE: usize = 1000;

/// Streams `--keys-from FILE` (`-`: stdin) in pages of keys, read on a blocking thread so the
/// file is never held in memory. A line is a key up to its first tab (so a `--failed-keys`
/// file can be fed back as it is); empty lines are ignored. Sizes and LastModified are not
/// known: such keys are fetched unless `--skip-existing` finds them.
fn read_keys(
    path: &std::path::Path,
) -> Result<tokio::sync::mpsc::Receiver<Result<Vec<s3::ListedObject>, String>>, String> {
    use std::io::BufRead as _;
    let shown = path.display().to_string();
    let input: Box<dyn std::io::Read + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| format!("cannot read --keys-from '{shown}': {e}"))?)
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut page = Vec::with_capacity(KEYS_PER_PAGE);
        for (n, line) in std::io::BufReader::new(input).lines().enumerate() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.blocking_send(Err(format!("reading --keys-from '{shown}' line {}: {e}", n + 1)));
                    return;
                }
            };
            let key = line.split('\t').next().unwrap_or_default();
            if key.is_empty() {
                continue;
            }
            page.push(s3::ListedObject {
                key: key.to_owned(),
                size: s3::UNKNOWN_SIZE,
                last_modified: None,
                archived: None,
                etag: None,
            });
            if page.len() == KEYS_PER_PAGE && tx.blocking_send(Ok(std::mem::take(&mut page))).is_err() {
                return;
            }
        }
        if !page.is_empty() {
            let _ = tx.blocking_send(Ok(page));
        }
    });
    Ok(rx)
}

/// One long-lived fetch task.
struct Fetcher {
    engine: Arc<crate::fetch::Engine>,
    parts: crate::config::Parts,
    retries: u32,
    keys: async_channel::Receiver<Listed>,
    parked: Arc<Parked>,
    room: Arc<Room>,
    jobs: async_channel::Sender<Job>,
    budget: Arc<Semaphore>,
    budget_units: u32,
    report: Arc<Report>,
    stop: Stop,
}

impl Fetcher {
    async fn run(self) {
        let mut rec = self.report.recorder();
        // One stop waiter for the task's whole life: a waiter made per select registered in
        // (and removed from) the stop channel's shared list twice per object.
        let mut stop = self.stop.clone();
        let stopping = stop.requested_wait();
        tokio::pin!(stopping);
        loop {
            let crowded = |group: &str| self.engine.group_crowded(group);
            let item = match self.parked.take(Some(&crowded)) {
                Some(item) => item,
                None => {
                    let got = if self.parked.is_empty() {
                        tokio::select! {
                            biased;
                            () = &mut stopping => break,
                            item = self.keys.recv() => item,
                        }
                    } else {
                        // Parked keys wait for their partition's gate to have room (the
                        // limiter signals it); the timeout only bounds a missed signal.
                        tokio::select! {
                            biased;
                            () = &mut stopping => break,
                            () = self.engine.parked_room() => continue,
                            item = tokio::time::timeout(PARKED_LOOK, self.keys.recv()) => match item {
                                Ok(item) => item,
                                Err(_) => continue,
                            },
                        }
                    };
                    match got {
                        Ok(item) => {
                            self.room.took(self.keys.len());
                            if item.size <= self.parts.threshold
                                && let Some(group) = self.engine.crowded(&item.key)
                            {
                                match self.parked.park(&group, item) {
                                    Ok(()) => continue,
                                    Err(item) => item,
                                }
                            } else {
                                item
                            }
                        }
                        // No more keys: what is parked is left to fetch.
                        Err(_) => match self.parked.take(None) {
                            Some(item) => item,
                            None => break,
                        },
                    }
                }
            };
            let picked = Instant::now();
            rec.record(Stage::Queue, picked - item.listed_at);
            let job = if item.target.file_name().is_none() {
                Job::Dir { key: item.key, target: item.target }
            } else if item.size > self.parts.threshold {
                if self.fetch_large(item, picked).await.is_break() {
                    break;
                }
                continue;
            } else {
                // An object larger than the whole budget passes alone.
                let units = item.size.div_ceil(BUDGET_UNIT).clamp(1, u64::from(self.budget_units)) as u32;
                let Ok(permit) = self.budget.clone().acquire_many_owned(units).await else {
                    self.report.fail(&item.key, "internal error: buffer budget closed");
                    continue;
                };
                let got = tokio::select! {
                    // An interrupted GET is abandoned: its key stays "not copied".
                    () = &mut stopping => break,
                    got = self.engine.fetch(&item.key, item.size, None, self.retries, &self.report) => got,
                };
                match got {
                    Ok(fetched) => {
                        rec.record(Stage::Ttfb, fetched.ttfb);
                        rec.record(Stage::Body, fetched.body_time);
                        Job::File(FileJob {
                            key: item.key,
                            target: item.target,
                            body: fetched.body,
                            permit: Some(permit),
                            picked,
                            fetched: Instant::now(),
                            // The listing's time: it has the precision the store keeps (the
                            // header has whole seconds) and is what a re-run compares with.
                            meta: Meta { mtime: item.last_modified.or(fetched.last_modified), etag: item.etag },
                        })
                    }
                    Err(reason) => {
                        self.report.fail(&item.key, &reason);
                        continue;
                    }
                }
            };
            if let Err(async_channel::SendError(job)) = self.jobs.send(job).await {
                self.report.fail(job.key(), "the writer stopped");
            }
        }
    }

    /// A large object, or one of unknown size, in ranged parts: the first part alone (it
    /// tells the whole size and the ETag), then the rest, `--part-concurrency` at a time, each with
    /// `If-Match: ETag` so that every part comes from the same version. Each part is handed
    /// to the writer as it arrives and holds its share of the budget until written, so
    /// memory is bounded by the parts in flight. Parts that will never come (a failed GET,
    /// a stopping run) are abandoned in one job, so the writer removes the temporary.
    /// `Break` when the run is stopping.
    async fn fetch_large(&self, item: Listed, picked: Instant) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        let part_size = self.parts.part_size;
        let key = item.key.as_str();
        let unknown = item.size == s3::UNKNOWN_SIZE;
        // Of unknown size, most objects are small: a small first range holds a small share of
        // the budget (an 8 MiB one for each of 512 workers would let 32 run at once).
        let head_len = if unknown { UNKNOWN_FIRST_RANGE } else { part_size.min(item.size) };
        let head = ByteRange { first: 0, len: head_len, if_match: None };
        let (first, permit) = match self.part(key, &head).await {
            None => return ControlFlow::Break(()),
            // S3 cannot serve a range of an empty object: that is what it is.
            Some(Err(reason)) if unknown && reason.starts_with("InvalidRange") => {
                let Ok(permit) = self.budget.clone().acquire_many_owned(1).await else {
                    return ControlFlow::Break(());
                };
                let part = Some(s3::PartInfo { etag: None, total: Some(0) });
                let empty = s3::Fetched {
                    body: bytes::Bytes::new(),
                    last_modified: None,
                    ttfb: std::time::Duration::ZERO,
                    body_time: std::time::Duration::ZERO,
                    integrity: None,
                    part,
                    framed: true,
                };
                (empty, permit)
            }
            Some(Err(reason)) => {
                self.report.fail(key, &reason);
                return ControlFlow::Continue(());
            }
            Some(Ok(got)) => got,
        };
        let info = first.part.clone().unwrap_or_default();
        let size = match (info.total, unknown) {
            (Some(total), _) => total,
            (None, false) => item.size,
            (None, true) => {
                self.report.fail(key, "the answer to a ranged GET did not tell the object's size (no Content-Range)");
                return ControlFlow::Continue(());
            }
        };
        // Part 0 is the first range; the rest follow it in `part_size` steps.
        let head_len = head_len.min(size);
        let parts = 1 + (size - head_len).div_ceil(part_size);
        let meta = Meta {
            mtime: item.last_modified.or(first.last_modified),
            etag: item.etag.clone().or_else(|| info.etag.as_ref().map(|t| t.trim_matches('"').to_owned())),
        };
        if unknown && parts == 1 && first.body.len() as u64 == size {
            // The first range held it all (a small object): verified against its ETag when
            // asked (S3 sends no checksum for a range) and written like any small file.
            let (mut first, mut permit) = (first, permit);
            let mut tries = 0;
            while self.engine.verifies() {
                match crate::verify::check(&first.body, &first.integrity.clone().unwrap_or_default()) {
                    Ok(how) => {
                        self.report.verified(how);
                        break;
                    }
                    Err(reason) => {
                        self.report.corrupt();
                        tries += 1;
                        if tries > self.retries {
                            self.report.fail(key, &reason);
                            return ControlFlow::Continue(());
                        }
                        drop(permit);
                        match self.part(key, &head).await {
                            None => return ControlFlow::Break(()),
                            Some(Err(reason)) => {
                                self.report.fail(key, &reason);
                                return ControlFlow::Continue(());
                            }
                            Some(Ok(got)) => (first, permit) = got,
                        }
                    }
                }
            }
            let job = Job::File(FileJob {
                key: item.key,
                target: item.target,
                body: first.body,
                permit: Some(permit),
                picked,
                fetched: Instant::now(),
                meta,
            });
            if let Err(async_channel::SendError(job)) = self.jobs.send(job).await {
                self.report.fail(job.key(), "the writer stopped");
            }
            return ControlFlow::Continue(());
        }
        let file = LargeFile::new(item.key.clone(), item.target, size, parts, meta, picked);
        if self.engine.verifies() {
            // S3 keeps no checksum of a byte range, and a whole-object checksum cannot be
            // checked before every part is in: the parts are tied together by If-Match.
            self.report.verified(crate::verify::Verified::Unverifiable);
        }
        let (stopped, failure) = (AtomicBool::new(false), std::sync::Mutex::new(None::<String>));
        let failed = || failure.lock().map_or(true, |f| f.is_some());
        let fail = |reason: String| {
            if let Ok(mut f) = failure.lock() {
                f.get_or_insert(reason);
            }
        };
        let sent = AtomicU64::new(0);
        match self.hand_on(&file, 0, head_len, first, permit).await {
            Ok(()) => _ = sent.fetch_add(1, Ordering::Relaxed),
            Err(reason) => fail(format!("part 1 of {parts}: {reason}")),
        }
        let next = AtomicU64::new(1);
        let lanes = (1..parts.min(self.parts.concurrency as u64 + 1)).map(|_| async {
            while !failed() && !stopped.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= parts {
                    break;
                }
                let first = head_len + (i - 1) * part_size;
                let len = part_size.min(size - first);
                let range = ByteRange { first, len, if_match: info.etag.clone() };
                let got = match self.part(key, &range).await {
                    None => {
                        stopped.store(true, Ordering::Relaxed);
                        continue;
                    }
                    Some(got) => got,
                };
                let handed = match got {
                    Ok((got, permit)) => self.hand_on(&file, first, len, got, permit).await,
                    Err(reason) => Err(reason),
                };
                match handed {
                    Ok(()) => _ = sent.fetch_add(1, Ordering::Relaxed),
                    Err(reason) => {
                        fail(format!("part {} of {parts} (bytes {first}-{}): {reason}", i + 1, first + len - 1))
                    }
                }
            }
        });
        futures_util::future::join_all(lanes).await;
        let unsent = parts - sent.load(Ordering::Relaxed);
        let reason = failure.into_inner().ok().flatten();
        if unsent > 0
            && let Err(async_channel::SendError(Job::Abandon { reason: Some(reason), .. })) =
                self.jobs.send(Job::Abandon { file, parts: unsent, reason }).await
        {
            // No writer left to report it.
            self.report.fail(key, &reason);
        }
        if stopped.load(Ordering::Relaxed) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }

    /// Hands a fetched part to the writer, after checking that it is `len` bytes long.
    async fn hand_on(
        &self,
        file: &Arc<LargeFile>,
        offset: u64,
        len: u64,
        got: crate::s3::Fetched,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), String> {
        if got.body.len() as u64 != len {
            return Err(format!("{} bytes came instead of {len}", got.body.len()));
        }
        let job =
            Job::Part { file: file.clone(), offset, body: got.body, permit: Some(permit), fetched: Instant::now() };
        self.jobs.send(job).await.map_err(|_| "the writer stopped".to_owned())
    }

    /// One part under the buffer budget; `None` when the run stops first.
    async fn part(
        &self,
        key: &str,
        range: &ByteRange,
    ) -> Option<Result<(crate::s3::Fetched, tokio::sync::OwnedSemaphorePermit), String>> {
        let units = range.len.div_ceil(BUDGET_UNIT).clamp(1, u64::from(self.budget_units)) as u32;
        let mut stop = self.stop.clone();
        let permit = tokio::select! {
            () = stop.requested_wait() => return None,
            p = self.budget.clone().acquire_many_owned(units) => match p {
                Ok(p) => p,
                Err(_) => return Some(Err("internal error: buffer budget closed".to_owned())),
            },
        };
        // A part takes a connection of the engine's pool only once it holds its budget, so
        // connections are bounded by the GETs in flight (each idle connection keeps its read
        // buffer), not by workers × `--part-concurrency`.
        let got = tokio::select! {
            () = stop.requested_wait() => return None,
            got = self.engine.fetch(key, range.len, Some(range), self.retries, &self.report) => got,
        };
        Some(got.map(|f| (f, permit)))
    }
}
