//! The fetch tasks: `--workers` long-lived tasks that take keys from the queue, hold their
//! share of the byte budget, fetch through the [`Engine`], and hand bodies to the writer.
//! Large objects (and those of unknown size) come in ranged parts, scheduled here.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use super::Engine;
use super::parked::{PARKED_LOOK, Parked};
use super::store::{ByteRange, Fetched, LARGER_THAN_LISTED, MAX_OBJECT_SIZE, PartInfo};
use crate::config::Config;
use crate::queue::{Listed, Room};
use crate::report::Report;
use crate::report::stats::Stage;
use crate::s3;
use crate::stop::Stop;
use crate::writer::{FileJob, Job, LargeFile, Meta};

/// Budget unit: one permit is this many bytes.
const BUDGET_UNIT: u64 = 1024;

/// The first range asked of an object of unknown size: most small objects fit whole.
const UNKNOWN_FIRST_RANGE: u64 = 256 << 10;

/// Starts `--workers` fetch tasks on the key queue `keys`; they end when the queue is closed
/// and empty, or when the run stops.
pub fn start(
    engine: &Arc<Engine>,
    cfg: &Config,
    keys: async_channel::Receiver<Listed>,
    room: &Arc<Room>,
    jobs: &async_channel::Sender<Job>,
    report: &Arc<Report>,
    stop: &Stop,
) -> Vec<tokio::task::JoinHandle<()>> {
    let budget_units = (cfg.buffer_bytes / BUDGET_UNIT).clamp(1, u64::from(u32::MAX)) as u32;
    let budget = Arc::new(Semaphore::new(budget_units as usize));
    let parked = Arc::new(Parked::default());
    (0..cfg.workers.max(1))
        .map(|_| {
            let f = Fetcher {
                engine: engine.clone(),
                parts: cfg.parts,
                retries: cfg.retries,
                keys: keys.clone(),
                parked: parked.clone(),
                room: room.clone(),
                jobs: jobs.clone(),
                budget: budget.clone(),
                budget_units,
                report: report.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(f.run())
        })
        .collect()
}

/// One long-lived fetch task.
struct Fetcher {
    engine: Arc<Engine>,
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
                if item.size > 0 && item.size != s3::UNKNOWN_SIZE {
                    // A directory marker with bytes: the directory takes its name, and its
                    // bytes would vanish without a word.
                    let why = format!(
                        "a key ending in '/' is a directory here, and this one holds {} bytes that no file can take",
                        item.size
                    );
                    self.report.fail(&item.key, &why);
                    continue;
                }
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
                        let checksum = self.engine.kept_checksum(&fetched);
                        Job::File(FileJob {
                            key: item.key,
                            target: item.target,
                            body: fetched.body,
                            permit: Some(permit),
                            picked,
                            fetched: Instant::now(),
                            // The listing's time: it has the precision the store keeps (the
                            // header has whole seconds) and is what a re-run compares with.
                            meta: Meta {
                                mtime: item.last_modified.or(fetched.last_modified),
                                etag: item.etag,
                                checksum,
                            },
                        })
                    }
                    Err(reason) if reason.starts_with(LARGER_THAN_LISTED) => {
                        // Changed since it was listed (or a server that lies): fetched as an
                        // object of unknown size, in parts the budget bounds, with the time
                        // and ETag its answers give, not the listing's.
                        drop(permit);
                        tracing::debug!(key = item.key, reason, "larger than listed: fetched in parts");
                        let item = Listed { size: s3::UNKNOWN_SIZE, last_modified: None, etag: None, ..item };
                        if self.fetch_large(item, picked).await.is_break() {
                            break;
                        }
                        continue;
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
        let head = ByteRange { first: 0, len: head_len, if_match: None, windowed: unknown };
        let (first, permit) = match self.part(key, &head).await {
            None => return ControlFlow::Break(()),
            // S3 cannot serve a range of an empty object: that is what it is.
            Some(Err(reason)) if unknown && reason.starts_with("InvalidRange") => {
                let Ok(permit) = self.budget.clone().acquire_many_owned(1).await else {
                    return ControlFlow::Break(());
                };
                let part = Some(PartInfo { etag: None, total: Some(0) });
                let empty = Fetched {
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
            (Some(total), _) if total > MAX_OBJECT_SIZE => {
                let why = format!("the server says the object has {total} bytes, more than S3's maximum of 5 TiB");
                self.report.fail(key, &why);
                return ControlFlow::Continue(());
            }
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
            checksum: None,
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
                        if let Err(reason) = self.engine.unchecked(how) {
                            self.report.fail(key, &reason);
                            return ControlFlow::Continue(());
                        }
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
        // S3 keeps no checksum of a byte range. A full-object CRC (from a HEAD) is what the
        // ranges' CRCs combine into; else an ETag that is the content's MD5 is checked by the
        // writer, which reads the file back once every part is in (the parts are tied to one
        // version by If-Match). A multipart ETag or an encrypted object's is no MD5.
        let crc = self.engine.whole_crc(key, info.etag.as_deref()).await;
        let md5 = (self.engine.verifies() && crc.is_none())
            .then(|| first.integrity.as_ref().and_then(crate::verify::etag_md5))
            .flatten();
        if self.engine.verifies() && md5.is_none() && crc.is_none() {
            let why = crate::verify::unverifiable(&first.integrity.clone().unwrap_or_default());
            let how = crate::verify::Verified::Unverifiable(why);
            self.report.verified(how);
            if let Err(reason) = self.engine.unchecked(how) {
                self.report.fail(key, &format!("{reason} (fetched in ranges, which carry no checksum)"));
                return ControlFlow::Continue(());
            }
        }
        // Set only once the check passed (the attributes are set after it).
        let meta = Meta { checksum: crc.map(|c| c.kept()), ..meta };
        let file = LargeFile::new(item.key.clone(), item.target, size, parts, meta, picked, (md5, crc));
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
                let range = ByteRange { first, len, if_match: info.etag.clone(), windowed: false };
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
        got: Fetched,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), String> {
        if got.body.len() as u64 != len {
            return Err(format!("{} bytes came instead of {len}", got.body.len()));
        }
        if let Some(crc) = &file.crc {
            file.range_crc(offset, len, crc.of_range(&got.body));
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
    ) -> Option<Result<(Fetched, tokio::sync::OwnedSemaphorePermit), String>> {
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
