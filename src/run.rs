//! The copy as a whole: start the stages, stop, abort, dry run, one named object, and the
//! summary at the end.
//!
//! ```text
//! source ──keys──▶ [queue: --queue] ──▶ --workers fetch tasks ──▶ [hand-off] ──▶ writer
//!   ListObjectsV2 pages,                   GetObject, body          bounded in jobs
//!   key → path mapping                     collected                and in bytes
//! ```
//!
//! - The source maps each key to its path as it lists (refused keys fail right there, with
//!   no request) and streams keys into the queue ([`crate::source`], [`crate::queue`]), so
//!   the first GET starts after the first page, not after the whole listing.
//! - `--workers` long-lived fetch tasks pull from the queue ([`crate::fetch::task`]): no task
//!   per key, so nothing grows with the bucket; each holds an object's size of a byte budget
//!   until its file is on disk, so memory is bounded whatever the bucket holds.
//! - A listing error on the first page is fatal (wrong bucket, credentials, endpoint); a later
//!   one stops listing, lets what was listed finish, and fails the run.

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::console::sanitize;
pub use crate::error::Fatal;
use crate::existing::{self, Existing, ExistingMode};
use crate::fetch::{self, Engine, task};
use crate::keymap::CaseGuard;
use crate::queue::{Listed, Room};
use crate::report::{Report, Summary};
use crate::s3;
use crate::source;
pub use crate::stop::Stop;
use crate::writer;

/// Runs one copy to the end. Failures of single keys are in the summary; the error is for
/// the run as a whole.
pub async fn run(cfg: &Config, report: Arc<Report>) -> Result<Summary, Fatal> {
    run_until(cfg, report, Stop::never()).await
}

/// [`run`], stopping early when `stop` is triggered.
pub async fn run_until(cfg: &Config, report: Arc<Report>, mut stop: Stop) -> Result<Summary, Fatal> {
    let started = Instant::now();
    let (abort_tx, abort_rx) = tokio::sync::watch::channel(false);
    report.on_abort(abort_tx);
    stop.abort_with(abort_rx);
    // One SDK client (credentials, region, endpoint rules) serves the whole run.
    let control = s3::client(&cfg.s3).await.map_err(Fatal::Setup)?;
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
    // Whatever can fail at setup comes before the writer starts: its threads hold the run's
    // lock file in DEST until they end, which an early return would not wait for.
    let stores = fetch::stores(cfg, control, &report).await.map_err(Fatal::Setup)?;
    let dest = existing::open_dest(&cfg.dest).map_err(Fatal::Setup)?;
    // A DEST this run created holds nothing to compare against.
    let existing = match cfg.existing {
        ExistingMode::Overwrite => None,
        _ if created_dest => None,
        mode => Some(Existing::new(dest.clone(), mode)),
    };
    let writer = writer::start(&writer_options, dest, report.clone()).map_err(Fatal::Setup)?;
    let engine = writer.engine;
    let case = writer.folds_case.then(|| {
        tracing::info!(
            "DEST does not tell upper from lower case: of keys that differ only in case, the first is copied"
        );
        CaseGuard::default()
    });
    let heads = fetch::Heads {
        client: control.client_with_retries(cfg.retries),
        bucket: cfg.source.bucket.clone(),
        requester_pays: cfg.s3.requester_pays,
    };
    let fetch = Arc::new(Engine::with_store(stores.objects, cfg).with_heads(heads));

    let (keys_tx, keys_rx) = async_channel::bounded::<Listed>(cfg.queue.max(1));
    let room = Room::new(cfg.queue.max(1));
    let fetchers = task::start(&fetch, cfg, keys_rx, &room, &writer.jobs, &report, &stop);
    let listed =
        source::list(cfg, &control.client, &stores.lists, (&keys_tx, &room), &report, stop.clone(), (existing, case))
            .await;
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
    summary.fetch.rate_limit = fetch.throttle_stats();
    summary.retries_allowed = cfg.retries;
    summary.hedge_after_ms = cfg.hedge_after_ms;
    summary.endpoint = Some(control.endpoint_in_use());
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
        let prefix = format!("{key}/");
        let query = s3::ListQuery {
            bucket,
            prefix: &prefix,
            delimiter: false,
            start_after: None,
            token: None,
            requester_pays: cfg.s3.requester_pays,
        };
        let page = s3::list_page(&control.client, query)
            .await
            .map_err(|e| Fatal::Setup(query.failed(&s3::describe(&e, Some(bucket)))))?;
        if let Some(other) = page.objects.first() {
            return Err(Fatal::Setup(format!(
                "s3://{bucket}/{key} is an object and also a prefix of other keys (s3://{bucket}/{}): \
                 end SOURCE with '/' to copy the keys under {key}/, or name the object in a --keys-from file \
                 to copy it alone",
                sanitize(&other.key)
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
        mode => Some(Existing::new(existing::open_dest(&cfg.dest).map_err(Fatal::Setup)?, mode)),
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
            let key = sanitize(&item.key);
            // A closed stdout (`| head`) must not stop the count.
            let _ = writeln!(out, "(dryrun) download: s3://{bucket}/{key} to {}", path.display());
            rep.planned(if item.size == s3::UNKNOWN_SIZE { 0 } else { item.size });
        }
        let _ = out.flush();
    });
    // Listed as a copy lists: through the configured engine.
    let lists = fetch::stores(cfg, control, &report).await.map_err(Fatal::Setup)?.lists;
    let listed = source::list(cfg, &control.client, &lists, (&tx, &room), &report, stop, (existing, None)).await;
    report.listing_done();
    drop(tx);
    printer.await.map_err(|e| Fatal::Internal(format!("internal error: {e}")))?;
    listed?;
    let mut summary = report.summary(started.elapsed(), "none", "none");
    summary.dry_run = true;
    summary.endpoint = Some(control.endpoint_in_use());
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
