//! The io_uring writer: one thread, one ring, one linked chain per file, many files per
//! `io_uring_enter`.
//!
//! Why the `io-uring` crate and not tokio-uring: tokio-uring (0.5, unmaintained since 2024)
//! issues one operation per future and awaits each — a round trip per op — and cannot express
//! linked chains, direct (registered) descriptors or dirfd-relative opens. The whole gain of
//! io_uring here comes from exactly those: a file costs one chain pushed into the SQ, and one
//! `io_uring_enter` carries the chains of every file that is ready.
//!
//! One file, in a directory already opened by [`DirCache`], takes two steps:
//!
//! ```text
//! 1. OPENAT(dirfd, tmp, O_WRONLY|O_CREAT|O_EXCL, → direct slot)  IO_LINK
//!    WRITE(slot, body[chunk], offset) …                            IO_LINK
//!    CLOSE(slot)
//!    — all completed and succeeded: utimensat(dirfd, tmp, LastModified) on this thread —
//! 2. RENAMEAT(dirfd, tmp → dirfd, final, RENAME_NOREPLACE); a file found there is settled
//!    on this thread, as the thread writer does (`super::settle_rename`)
//! ```
//!
//! - The rename is pushed only after the whole first chain succeeded and the temporary has
//!   its final mtime, so a file at its final name is complete *and* carries the object's
//!   LastModified: a killed run never leaves a complete file that the next run cannot
//!   recognise (io_uring has no timestamp op; a synchronous `utimensat` costs ~1–2 µs). The
//!   renames of every file that finished step 1 go out with the next `io_uring_enter`.
//! - A failed open or write (a short write counts as failed for links) cancels the rest of
//!   the chain; the temporary is unlinked and nothing reaches the final name. If a failed
//!   write cancels the close, the next OPENAT into that direct slot replaces (closes) it.
//! - No `IOSQE_CQE_SKIP_SUCCESS`: every SQE posts exactly one CQE (success, error or
//!   `-ECANCELED`), so an entry is finished when its count of outstanding CQEs reaches zero.
//!   This is deterministic whatever the kernel's ordering of completions in a failed chain;
//!   it costs a few CQEs per file that skip flags could save.
//! - `O_CLOEXEC` is not passed: with a direct-descriptor `file_index` the kernel answers
//!   EINVAL, and direct descriptors are never in the process's fd table anyway.
//! - The temporary of a failed file is unlinked (synchronously; failures are rare). A short
//!   write is retried once from scratch, then fails with its reason.
//! - The ring is single-issuer with deferred task work where the kernel allows (6.1+):
//!   completions are processed only inside the writer's own `io_uring_enter`, which measured
//!   +11 % files/s and −14 % CPU per file on tmpfs (bench-results/2026-11-26-2core-ring-setup).
//!
//! Memory safety: the SQEs point into the [`Entry`] of their file (body bytes, the two names)
//! and name its directory descriptor. Each `Entry` lives in a slab slot that is freed only when
//! the last CQE of its chain has been reaped, so everything an SQE references outlives the
//! kernel's use of it. The slab is sized once and never reallocated.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{IoUring, Probe, opcode, squeue, types};

use super::{DirCache, FileJob, Job, LargeFile, c_name, io_reason, tmp_name};

type Permit = tokio::sync::OwnedSemaphorePermit;
use crate::report::Report;
use crate::report::stats::{Recorder, Stage};

/// Submission queue entries.
const SQ_ENTRIES: u32 = 4096;
/// Files in flight at once, and the size of the registered file table.
const SLOTS: u32 = 1024;
/// Largest single WRITE; bigger bodies are written in chunks of this size.
const MAX_WRITE: usize = 1 << 30;
/// io-wq workers per class (bounded: regular-file I/O, unbounded: O_CREAT opens and renames).
const IOWQ_MAX_WORKERS: u32 = crate::config::RING_IO_WORKERS as u32;

const OP_OPEN: u64 = 0;
const OP_WRITE: u64 = 1;
const OP_RENAME: u64 = 2;
const OP_CLOSE: u64 = 3;
const OP_FSYNC: u64 = 4;
/// A part of a large file: one WRITE at its offset, on an ordinary descriptor.
const OP_PART: u64 = 5;
/// Parts of large files in flight at once.
const PART_SLOTS: u32 = 256;

/// A ring that passed the probe, ready to run on its own thread.
pub struct UringWriter {
    ring: IoUring,
    /// Created disabled (single issuer): the writer thread enables it.
    enable_later: bool,
    files_per_submit: usize,
    /// `--fsync`: FSYNC in each file's chain, before its close.
    fsync: bool,
}

/// Whether io_uring can be used here, and why not.
pub fn available() -> Result<(), String> {
    UringWriter::new().map(|_| ())
}

impl UringWriter {
    /// Sets up the ring and checks everything the writer needs: the opcodes, a sparse
    /// registered file table. Fails (with the reason) on old kernels, with
    /// `kernel.io_uring_disabled`, under seccomp profiles that block io_uring, or when
    /// `S3URING_DISABLE_URING` is set (to exercise the fallback).
    pub fn new() -> Result<UringWriter, String> {
        if std::env::var_os("S3URING_DISABLE_URING").is_some_and(|v| !v.is_empty() && v != "0") {
            return Err("disabled by S3URING_DISABLE_URING".to_owned());
        }
        // Single issuer + deferred task work (Linux 6.1+): completions are processed only when
        // the writer asks for them, on its own thread, without IPIs or wake-ups in between.
        // The ring starts disabled and the writer thread enables it, becoming its one issuer.
        // Older kernels refuse the flags: fall back to a plain ring.
        let fast = std::env::var_os("S3URING_RING_PLAIN").is_none();
        let (ring, enable_later) = match IoUring::builder()
            .setup_cqsize(SQ_ENTRIES * 4)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .build(SQ_ENTRIES)
        {
            Ok(ring) if fast => (ring, true),
            _ => {
                let ring = IoUring::builder()
                    .setup_cqsize(SQ_ENTRIES * 4)
                    .build(SQ_ENTRIES)
                    .map_err(|e| format!("io_uring_setup failed: {e}"))?;
                (ring, false)
            }
        };
        let submitter = ring.submitter();
        let mut probe = Probe::new();
        submitter.register_probe(&mut probe).map_err(|e| format!("probing io_uring opcodes failed: {e}"))?;
        for (code, name) in [
            (opcode::OpenAt::CODE, "OPENAT"),
            (opcode::Write::CODE, "WRITE"),
            (opcode::Close::CODE, "CLOSE"),
            (opcode::RenameAt::CODE, "RENAMEAT"),
        ] {
            if !probe.is_supported(code) {
                return Err(format!("the kernel lacks IORING_OP_{name}"));
            }
        }
        submitter.register_files_sparse(SLOTS).map_err(|e| format!("registering a sparse file table failed: {e}"))?;
        Ok(UringWriter { ring, enable_later, files_per_submit: usize::MAX, fsync: false }.io_workers(IOWQ_MAX_WORKERS))
    }

    /// Bounds the kernel's io-wq threads, which execute the blocking opens and renames
    /// (`--io-threads`). The limit is the ring's and applies to the writer thread's io-wq
    /// when it first submits. Best effort: older kernels lack the call and keep defaults.
    pub fn io_workers(self, n: u32) -> UringWriter {
        let mut max = [n.max(1), n.max(1)];
        let _ = self.ring.submitter().register_iowq_max_workers(&mut max);
        self
    }

    /// Starts at most `n` new files per `io_uring_enter` (see `WriterOptions`).
    pub fn files_per_submit(mut self, n: usize) -> UringWriter {
        self.files_per_submit = n.max(1);
        self
    }

    /// `--fsync`: each file's data is made durable (an FSYNC linked after its writes) before
    /// it is renamed into place.
    pub fn fsync(mut self, on: bool) -> UringWriter {
        self.fsync = on;
        self
    }

    /// Writes every job received until the channel closes and the last file completes.
    pub fn run(self, rx: async_channel::Receiver<Job>, dirs: &DirCache, report: &Report) {
        let broken = match self.enable_later {
            true => self
                .ring
                .submitter()
                .register_enable_rings()
                .err()
                .map(|e| format!("enabling the io_uring failed: {e}")),
            false => None,
        };
        let mut lp = Loop {
            ring: self.ring,
            slab: (0..SLOTS).map(|_| None).collect(),
            free: (0..SLOTS).rev().collect(),
            parts: (0..PART_SLOTS).map(|_| None).collect(),
            free_parts: (0..PART_SLOTS).rev().collect(),
            inflight: 0,
            seq: 0,
            retry: VecDeque::new(),
            to_rename: Vec::new(),
            broken,
            files_per_submit: self.files_per_submit,
            fsync: self.fsync,
            rec: report.recorder(),
            submits: 0,
            files: 0,
            dirs,
            report,
        };
        lp.run(rx);
        report.ring_batches(lp.submits, lp.files);
    }
}

/// One part of a large file in flight: the SQE points into `body` and names `fd`.
struct PartEntry {
    file: Arc<LargeFile>,
    fd: Arc<OwnedFd>,
    offset: u64,
    body: bytes::Bytes,
    permit: Option<Permit>,
}

/// One file in flight.
struct Entry {
    job: FileJob,
    /// Keeps the directory descriptor the SQEs name open.
    dir: Arc<OwnedFd>,
    tmp: CString,
    name: CString,
    /// CQEs still to come for this chain.
    pending: u32,
    open_ok: bool,
    closed: bool,
    /// Step 2 (the rename) has been pushed.
    rename_pushed: bool,
    renamed: bool,
    short_write: bool,
    err: Option<String>,
    attempt: u8,
    /// When the chain was pushed (start of the `write` stage).
    pushed: Instant,
}

struct Loop<'a> {
    ring: IoUring,
    /// Indexed by file slot: slot `i` of the registered table belongs to `slab[i]`.
    slab: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Parts of large files, indexed by their own slots.
    parts: Vec<Option<PartEntry>>,
    free_parts: Vec<u32>,
    /// Files and parts in flight.
    inflight: usize,
    seq: u64,
    /// Files to write again (after a short write).
    retry: VecDeque<(FileJob, u8)>,
    /// Slots whose first step succeeded: their renames go out with the next enter.
    to_rename: Vec<u32>,
    /// Set when io_uring_enter itself fails: every later job fails with this reason.
    broken: Option<String>,
    files_per_submit: usize,
    fsync: bool,
    /// `io_uring_enter` calls that submitted SQEs, and files started: their ratio is the
    /// batching the ring achieved.
    submits: u64,
    files: u64,
    rec: Recorder,
    dirs: &'a DirCache,
    report: &'a Report,
}

impl Loop<'_> {
    fn run(&mut self, rx: async_channel::Receiver<Job>) {
        let mut closed = false;
        loop {
            if let Some(reason) = &self.broken {
                while let Ok(job) = rx.recv_blocking() {
                    self.report.fail(job.key(), reason);
                }
                return;
            }
            self.push_renames();
            // Take everything that is ready (block only when nothing is in flight), so one
            // enter carries as many chains as possible.
            let mut started = 0;
            while !self.free.is_empty() && !self.free_parts.is_empty() && started < self.files_per_submit {
                started += 1;
                let job = if let Some((job, attempt)) = self.retry.pop_front() {
                    self.start(job, attempt);
                    continue;
                } else if closed {
                    break;
                } else if self.inflight == 0 {
                    match rx.recv_blocking() {
                        Ok(j) => j,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                } else {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(async_channel::TryRecvError::Empty) => break,
                        Err(async_channel::TryRecvError::Closed) => {
                            closed = true;
                            break;
                        }
                    }
                };
                match job {
                    Job::File(f) => self.start(f, 0),
                    Job::Dir { key, target } => match self.dirs.get(target.dir()) {
                        Ok(_) => self.report.dir_done(),
                        Err(reason) => self.report.fail(&key, &reason),
                    },
                    Job::Part { file, offset, body, permit, fetched } => {
                        self.rec.record(Stage::Handoff, fetched.elapsed());
                        self.start_part(file, offset, body, permit);
                    }
                    Job::Abandon { file, parts, reason } => {
                        file.done(parts, Err(reason), self.dirs, self.report, &mut self.rec, self.fsync);
                    }
                }
            }
            if self.inflight == 0 {
                if closed && self.retry.is_empty() {
                    return;
                }
                continue;
            }
            match self.ring.submit_and_wait(1) {
                Ok(n) => self.submits += u64::from(n > 0),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR | libc::EAGAIN)) => {}
                Err(e) => {
                    // The ring itself is unusable: fail what is in flight rather than spin.
                    self.abort_all(&format!("io_uring_enter failed: {e}"));
                    continue;
                }
            }
            self.reap();
        }
    }

    /// Pushes one file's chain. Per-file problems fail the file, never the loop.
    fn start(&mut self, job: FileJob, attempt: u8) {
        let dir = match self.dirs.get(job.target.dir()) {
            Ok(d) => d,
            Err(reason) => return self.report.fail(&job.key, &reason),
        };
        let name = match job.target.file_name().map(c_name) {
            Some(Ok(n)) => n,
            Some(Err(reason)) => return self.report.fail(&job.key, &reason),
            None => {
                return self.report.fail(&job.key, "internal error: file job without a name");
            }
        };
        if attempt == 0 {
            self.rec.record(Stage::Handoff, job.fetched.elapsed());
        }
        let Some(slot) = self.free.pop() else {
            // Callers only start files while a slot is free.
            return self.report.fail(&job.key, "internal error: no free file slot");
        };
        self.seq += 1;
        let n_writes = job.body.len().div_ceil(MAX_WRITE);
        let entry = Entry {
            tmp: tmp_name(self.seq),
            name,
            dir,
            pending: (2 + n_writes + usize::from(self.fsync)) as u32,
            open_ok: false,
            closed: false,
            rename_pushed: false,
            renamed: false,
            short_write: false,
            err: None,
            attempt,
            pushed: Instant::now(),
            job,
        };
        let idx = slot as usize;
        self.slab[idx] = Some(entry);
        self.inflight += 1;
        self.files += 1;
        let Some(e) = self.slab[idx].as_ref() else {
            return;
        };

        let ud = |op: u64| (u64::from(slot) << 8) | op;
        let dirfd = types::Fd(e.dir.as_fd().as_raw_fd());
        let Ok(dest) = types::DestinationSlot::try_from_slot_target(slot) else {
            return self.report.fail(&e.job.key, "internal error: bad file slot");
        };
        let mut sqes = Vec::with_capacity(2 + n_writes);
        sqes.push(
            opcode::OpenAt::new(dirfd, e.tmp.as_ptr())
                .flags(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
                .mode(0o666)
                .file_index(Some(dest))
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(ud(OP_OPEN)),
        );
        for (i, chunk) in e.job.body.chunks(MAX_WRITE).enumerate() {
            sqes.push(
                opcode::Write::new(types::Fixed(slot), chunk.as_ptr(), chunk.len() as u32)
                    .offset((i * MAX_WRITE) as u64)
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(ud(OP_WRITE) | ((chunk.len() as u64) << 32)),
            );
        }
        if self.fsync {
            sqes.push(
                opcode::Fsync::new(types::Fixed(slot)).build().flags(squeue::Flags::IO_LINK).user_data(ud(OP_FSYNC)),
            );
        }
        sqes.push(opcode::Close::new(types::Fixed(slot)).build().user_data(ud(OP_CLOSE)));
        self.push_chain(&sqes);
    }

    /// One part of a large file: a single WRITE at its offset (not linked; the file's
    /// temporary is created synchronously by its first part, once per large object).
    fn start_part(&mut self, file: Arc<LargeFile>, offset: u64, body: bytes::Bytes, permit: Option<Permit>) {
        let Some(fd) = file.fd(self.dirs) else {
            // The file already failed: this part is only counted.
            return file.done(1, Ok(()), self.dirs, self.report, &mut self.rec, self.fsync);
        };
        let Some(slot) = self.free_parts.pop() else {
            // Callers only take jobs while a part slot is free.
            let reason = Some("internal error: no free part slot".to_owned());
            return file.done(1, Err(reason), self.dirs, self.report, &mut self.rec, self.fsync);
        };
        let len = body.len().min(MAX_WRITE);
        let sqe = opcode::Write::new(types::Fd(fd.as_raw_fd()), body.as_ptr(), len as u32)
            .offset(offset)
            .build()
            .user_data((u64::from(slot) << 8) | OP_PART | ((len as u64) << 32));
        self.parts[slot as usize] = Some(PartEntry { file, fd, offset, body, permit });
        self.inflight += 1;
        self.push_chain(&[sqe]);
    }

    /// A part's WRITE completed with `res`: the rest of a short (or over-long) part is written
    /// with plain `pwrite` (rare), then the part counts as done.
    fn finish_part(&mut self, slot: u32, res: i32) {
        let Some(p) = self.parts.get_mut(slot as usize).and_then(Option::take) else {
            return tracing::error!("internal error: completion for an empty part slot {slot}");
        };
        self.free_parts.push(slot);
        self.inflight -= 1;
        let path = || p.file.target.rel_path();
        let result = if res < 0 {
            Err(Some(io_reason("cannot write", &path(), -res)))
        } else {
            let done = res as usize;
            super::pwrite_all(&p.fd, &p.body[done..], p.offset + done as u64)
                .map_err(|e| Some(io_reason("cannot write", &path(), e.raw_os_error())))
        };
        drop(p.permit);
        p.file.done(1, result, self.dirs, self.report, &mut self.rec, self.fsync);
    }

    /// Step 2 for every file whose first chain succeeded: one RENAMEAT each.
    fn push_renames(&mut self) {
        while let Some(slot) = self.to_rename.pop() {
            let Some(e) = self.slab.get(slot as usize).and_then(Option::as_ref) else { continue };
            let dirfd = types::Fd(e.dir.as_fd().as_raw_fd());
            // Never over a file (see `super::rename_new`): `RENAME_NOREPLACE` unless refused.
            let flags = if super::noreplace() { libc::RENAME_NOREPLACE } else { 0 };
            let sqe = opcode::RenameAt::new(dirfd, e.tmp.as_ptr(), dirfd, e.name.as_ptr())
                .flags(flags)
                .build()
                .user_data((u64::from(slot) << 8) | OP_RENAME);
            self.push_chain(&[sqe]);
        }
    }

    /// Pushes a whole chain into the SQ, submitting first if it does not fit.
    fn push_chain(&mut self, sqes: &[squeue::Entry]) {
        loop {
            let room = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if room >= sqes.len() {
                break;
            }
            let submitted = self.ring.submit();
            if let Ok(n) = submitted {
                self.submits += u64::from(n > 0);
            }
            if let Err(e) = submitted {
                if !matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR | libc::EAGAIN)) {
                    tracing::warn!("io_uring submit failed: {e}");
                }
                // Make room by reaping what has completed.
                self.reap();
            }
        }
        let mut sq = self.ring.submission();
        // SAFETY: every pointer in these SQEs (the body bytes, the temporary and final names)
        // points into the `Entry` stored in `self.slab` for this chain's slot (or, for a part,
        // into the `PartEntry` in `self.parts`), and the descriptors they name are kept open
        // by that entry's `Arc<OwnedFd>`s. An entry is removed only in `reap`, after the last
        // CQE of its chain, so the memory and descriptors stay valid for as long as the
        // kernel may use them. The room check above guarantees the push succeeds, so the
        // chain is never split.
        unsafe {
            if sq.push_multiple(sqes).is_err() {
                // Unreachable after the room check; keep the chain whole by not pushing.
                tracing::error!("internal error: submission queue full after room check");
            }
        }
    }

    fn reap(&mut self) {
        let mut done = Vec::new();
        let mut parts_done = Vec::new();
        for cqe in self.ring.completion() {
            let ud = cqe.user_data();
            let (slot, op, want) = ((ud >> 8) as u32 & 0x00ff_ffff, ud & 0xff, ud >> 32);
            let res = cqe.result();
            if op == OP_PART {
                parts_done.push((slot, res));
                continue;
            }
            let Some(e) = self.slab.get_mut(slot as usize).and_then(Option::as_mut) else {
                tracing::error!("internal error: completion for an empty slot {slot}");
                continue;
            };
            // The path is only formatted for an error: a successful file allocates nothing here.
            let target = &e.job.target;
            match op {
                OP_OPEN if res >= 0 => e.open_ok = true,
                OP_OPEN => {
                    e.err.get_or_insert_with(|| {
                        io_reason("cannot create a temporary file for", &target.rel_path(), -res)
                    });
                }
                OP_WRITE if res >= 0 && (res as u64) < want => {
                    e.short_write = true;
                    e.err.get_or_insert_with(|| {
                        format!("short write to '{}': {res} of {want} bytes", target.rel_path())
                    });
                }
                OP_RENAME if res == 0 => e.renamed = true,
                OP_RENAME if res < 0 && res != -libc::ECANCELED => {
                    // Rare: settled here, synchronously, as the thread writer does.
                    let (dir, tmp) = (&e.dir, &e.tmp);
                    let name = e.job.target.file_name().unwrap_or_default();
                    let renamed = match res {
                        r if r == -libc::EEXIST => Ok(super::Renamed::Exists),
                        r => super::noreplace_refused(rustix::io::Errno::from_raw_os_error(-r), || {
                            rustix::fs::renameat(dir.as_fd(), tmp.as_c_str(), dir.as_fd(), name)
                        }),
                    };
                    let size = e.job.body.len() as u64;
                    let rel = || target.rel_path();
                    match super::settle_rename(renamed, self.dirs, (dir, tmp, name), size, &e.job.meta, &rel) {
                        Ok(()) => e.renamed = true,
                        Err(reason) => {
                            e.err.get_or_insert(reason);
                        }
                    }
                }
                OP_CLOSE if res >= 0 => e.closed = true,
                OP_CLOSE if res < 0 && e.open_ok => {
                    e.err.get_or_insert_with(|| io_reason("cannot close", &target.rel_path(), -res));
                }
                _ if res < 0 && res != -libc::ECANCELED && op != OP_CLOSE => {
                    let what = match op {
                        OP_WRITE => "cannot write",
                        OP_FSYNC => "cannot fsync",
                        _ => "cannot rename into place",
                    };
                    e.err.get_or_insert_with(|| io_reason(what, &target.rel_path(), -res));
                }
                _ => {}
            }
            e.pending -= 1;
            if e.pending == 0 {
                done.push(slot);
            }
        }
        for slot in done {
            self.finish(slot);
        }
        for (slot, res) in parts_done {
            self.finish_part(slot, res);
        }
    }

    fn finish(&mut self, slot: u32) {
        if let Some(e) = self.slab[slot as usize].as_mut()
            && !e.rename_pushed
            && e.err.is_none()
            && e.open_ok
            && e.closed
        {
            // Step 1 done: the temporary gets its mtime and ETag attribute (here, not in the
            // chain: io_uring has no timestamp op), then step 2.
            super::set_meta(super::MetaAt::Name(&e.dir, &e.tmp), &e.job.meta, &|| e.job.target.rel_path());
            e.rename_pushed = true;
            e.pending = 1;
            self.to_rename.push(slot);
            return;
        }
        let Some(e) = self.slab[slot as usize].take() else {
            return;
        };
        self.free.push(slot);
        self.inflight -= 1;
        if e.renamed && e.err.is_none() {
            if self.fsync {
                self.dirs.touched(e.job.target.dir());
            }
            self.rec.record(Stage::Write, e.pushed.elapsed());
            self.rec.record(Stage::Total, e.job.picked.elapsed());
            return self.report.written(e.job.body.len() as u64);
        }
        if e.open_ok && !e.renamed {
            let _ = rustix::fs::unlinkat(e.dir.as_fd(), e.tmp.as_c_str(), rustix::fs::AtFlags::empty());
        }
        if e.short_write && !e.renamed && e.attempt == 0 {
            self.retry.push_back((e.job, 1));
            return;
        }
        let reason = e.err.unwrap_or_else(|| "internal error: chain ended without rename".to_owned());
        super::fail_file(self.report, &e.job.key, &reason);
    }

    /// Last resort when the ring stops working: drain what can be drained and fail the rest.
    fn abort_all(&mut self, reason: &str) {
        self.reap();
        for slot in 0..self.slab.len() {
            if let Some(e) = self.slab[slot].take() {
                // The kernel may still own these buffers: leak them rather than free memory
                // it could write into. This path only runs when io_uring_enter itself fails.
                self.report.fail(&e.job.key, reason);
                std::mem::forget(e);
                self.inflight -= 1;
            }
        }
        for slot in 0..self.parts.len() {
            if let Some(p) = self.parts[slot].take() {
                // As above: the kernel may still read this part's buffer.
                self.report.fail(&p.file.key, reason);
                std::mem::forget(p);
                self.inflight -= 1;
            }
        }
        for (job, _) in self.retry.drain(..) {
            self.report.fail(&job.key, reason);
        }
        self.broken = Some(reason.to_owned());
    }
}
