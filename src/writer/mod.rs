//! Writers: they take finished bodies from the fetchers and put them on disk atomically.
//!
//! Two engines behind one interface ([`start`]): `uring` (one thread, one io_uring, a linked
//! chain per file, many files per submit; see [`uring`]) and `threads` (a bounded pool doing
//! plain syscalls; the fallback). Both follow the same rules:
//!
//! - **Never outside DEST.** Every directory is opened one component at a time relative to
//!   its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY` ([`DirCache`]); a symlink or a
//!   file where a directory must go fails that key. Files are created with `O_EXCL` under a
//!   temporary name and renamed within the same directory descriptor, so no symlink is ever
//!   followed, whatever DEST already holds.
//! - **Complete or absent.** Data goes to `.s3uring-tmp.<run id>.<seq>` (short, so it fits
//!   NAME_MAX beside a 255-byte final name; the prefix is refused for keys, so it never
//!   collides) and is renamed to the final name only after every byte is written. A failed
//!   file's temporary is unlinked.
//! - **Never over another key's file.** The rename asks for `RENAME_NOREPLACE`; a file found
//!   at the name is replaced only if it changed before this run started (by the file
//!   system's clock) or holds the same object, and otherwise the key fails
//!   ([`settle_rename`]): on a directory that ignores case or Unicode normalisation, or
//!   beside another program, two keys never silently become one file.
//! - **Another run's temporaries are its own.** The run id is random (not a pid, which
//!   repeats across containers and hosts); while it runs, the run holds an `flock` on
//!   `DEST/.s3uring-tmp.<run id>.run`, which the kernel (or the NFS server) releases when the
//!   process dies, however it dies. A run removes the temporaries of runs whose lock it can
//!   take or that have no lock file, and leaves all others alone ([`RunLock`]).
//! - **Per-file failures never stop the loop.** Each ends as one [`Report::fail`] line naming
//!   the key and the cause.
//! - **mtime = the object's LastModified** (the listing's, at the precision the store keeps:
//!   milliseconds on MinIO and Ceph), and the object's ETag in the `user.s3uring.etag`
//!   extended attribute, so a later run can tell a complete, current file from anything
//!   else without reading it ([`crate::existing::Existing`]). A file system that refuses either still gets
//!   the file, with one warning ([`set_meta`]).
//! - **No file-system syscall on a tokio thread.** Directory creation happens here, cached,
//!   so each directory is created once.
//! - **Writer threads never preempt the fetchers.** They run under `SCHED_BATCH`
//!   ([`batch_scheduling`]), so handing a job to a parked writer does not switch the CPU to it
//!   at once: it runs when the fetchers' thread waits, and then writes everything queued.

pub mod uring;

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use tokio::sync::OwnedSemaphorePermit;

use crate::config::IoEngine;
use crate::config::RING_IO_WORKERS;
use crate::keymap::{CHECKSUM_XATTR, ETAG_XATTR, TMP_PREFIX, Target, run_id};
use crate::report::Report;
use crate::report::stats::{Recorder, Stage};

/// A downloaded object, ready to be written.
pub struct FileJob {
    /// The S3 key, for messages.
    pub key: String,
    pub target: Target,
    pub body: Bytes,
    /// Holds the object's share of the buffer budget until the file is written.
    pub permit: Option<OwnedSemaphorePermit>,
    /// When a fetcher picked the key (start of the `total` stage).
    pub picked: Instant,
    /// When the body was complete (start of the `handoff` stage).
    pub fetched: Instant,
    /// The object's LastModified and ETag.
    pub meta: Meta,
}

/// What a file keeps of its object besides the bytes.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// LastModified: becomes the file's mtime (and atime).
    pub mtime: Option<SystemTime>,
    /// The ETag (without quotes): the `user.s3uring.etag` extended attribute.
    pub etag: Option<String>,
    /// The checksum the content was checked against (`ALGORITHM:BASE64`): the
    /// `user.s3uring.checksum` extended attribute.
    pub checksum: Option<String>,
}

/// Set once a file system refused timestamps or extended attributes: warned about once,
/// and (for attributes) not tried again.
static TIMES_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static XATTRS_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Where to set a file's [`Meta`]: its open descriptor, or its name in a directory.
pub(crate) enum MetaAt<'a> {
    Fd(std::os::fd::BorrowedFd<'a>),
    Name(&'a OwnedFd, &'a std::ffi::CStr),
}

/// Sets mtime and the ETag and checksum attributes. A file system that refuses them (some
/// FUSE and network mounts, ramfs for attributes) costs one warning for the run, never the
/// key: the file is still complete, and a later run compares what it can (size, then mtime
/// when there is one).
pub(crate) fn set_meta(at: MetaAt<'_>, meta: &Meta, rel: &dyn Fn() -> String) {
    match at {
        MetaAt::Fd(fd) => set_meta_fd(fd, meta, rel),
        // One lookup from the directory, then the descriptor's calls (a path through the
        // directory's /proc link per attribute cost a lookup of four components each). Not
        // followed: someone who can write into DEST could have swapped the temporary for a
        // link, and the time would land on whatever it points to.
        MetaAt::Name(dir, name) => {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            match rustix::fs::openat(dir.as_fd(), name, flags, Mode::empty()) {
                Ok(fd) => set_meta_fd(fd.as_fd(), meta, rel),
                Err(e) => {
                    if !TIMES_REFUSED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "cannot open '{}' to set its time and attributes ({}): a re-run copies it again",
                            rel(),
                            io::Error::from(e)
                        );
                    }
                }
            }
        }
    }
}

fn set_meta_fd(fd: std::os::fd::BorrowedFd<'_>, meta: &Meta, rel: &dyn Fn() -> String) {
    if let Some(ts) = meta.mtime.and_then(timestamps)
        && let Err(e) = rustix::fs::futimens(fd, &ts)
        && !TIMES_REFUSED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            "cannot set the modification time of '{}' ({}): files here keep the time they were written, so a \
             re-run cannot recognise them by time and copies them again",
            rel(),
            io::Error::from(e)
        );
    }
    let attrs = [(ETAG_XATTR, &meta.etag), (CHECKSUM_XATTR, &meta.checksum)];
    for (attr, value) in attrs.into_iter().filter_map(|(a, v)| Some((a, v.as_deref()?))) {
        if XATTRS_REFUSED.load(Ordering::Relaxed) {
            return;
        }
        let set = rustix::fs::fsetxattr(fd, attr, value.as_bytes(), rustix::fs::XattrFlags::empty());
        if let Err(e) = set
            && !XATTRS_REFUSED.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "cannot keep the ETag and checksum with '{}' in {attr} ({}): files are recognised by size and \
                 time alone, and `s3uring check` cannot check their content without --checksum",
                rel(),
                io::Error::from(e)
            );
        }
    }
}

/// Timestamps setting both atime and mtime to `t` (whole seconds and nanoseconds since the
/// epoch; `None` before 1970, which S3 never returns).
pub(crate) fn timestamps(t: SystemTime) -> Option<rustix::fs::Timestamps> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let ts = rustix::fs::Timespec { tv_sec: i64::try_from(d.as_secs()).ok()?, tv_nsec: d.subsec_nanos().into() };
    Some(rustix::fs::Timestamps { last_access: ts, last_modification: ts })
}

/// Work for a writer.
pub enum Job {
    File(FileJob),
    /// A folder marker: make sure the directory exists.
    Dir {
        key: String,
        target: Target,
    },
    /// One part of a large object, to be written at `offset` of its file.
    Part {
        file: Arc<LargeFile>,
        offset: u64,
        body: Bytes,
        /// The part's share of the buffer budget, held until it is written.
        permit: Option<OwnedSemaphorePermit>,
        fetched: Instant,
    },
    /// `parts` parts of a large object that will never come: a GET failed (`reason`), or the
    /// run is stopping (`None`: the key is "not copied", no failure line).
    Abandon {
        file: Arc<LargeFile>,
        parts: u64,
        reason: Option<String>,
    },
}

impl Job {
    /// The S3 key the job belongs to.
    pub fn key(&self) -> &str {
        match self {
            Job::File(f) => &f.key,
            Job::Dir { key, .. } => key,
            Job::Part { file, .. } | Job::Abandon { file, .. } => &file.key,
        }
    }
}

/// A large object written in parts: its byte ranges are fetched in parallel and
/// each is written at its offset as it arrives, in any order. The temporary is created by the
/// first part to reach a writer; once every part is accounted for, the file gets its mtime
/// (and fsync) and is renamed into place — or, if any part failed, the temporary is removed.
/// The same "complete or absent" rule as for small files, with memory bounded by the parts
/// in flight, not by the object's size.
pub struct LargeFile {
    pub key: String,
    pub target: Target,
    pub size: u64,
    pub meta: Meta,
    /// When a fetcher picked the key (start of the `total` stage).
    pub picked: Instant,
    /// Checked, with an ETag that is the content's MD5 and no whole CRC: the assembled file is
    /// read back and must have it before it gets its name.
    pub md5: Option<String>,
    /// Checked, with a full-object CRC: the CRCs of the ranges (taken as they arrived) must
    /// combine into it before the file gets its name.
    pub crc: Option<crate::verify::WholeCrc>,
    state: Mutex<LargeState>,
}

struct LargeState {
    /// Parts not yet written or abandoned.
    left: u64,
    /// The directory, the temporary's name and its descriptor, once created.
    open: Option<(Arc<OwnedFd>, CString, Arc<OwnedFd>)>,
    err: Option<String>,
    /// Abandoned because the run stops: no failure line.
    silent: bool,
    /// First part handed to the writer (start of the `write` stage).
    first: Option<Instant>,
    /// `(offset, length, CRC)` of each range, with [`LargeFile::crc`].
    crcs: Vec<(u64, u64, u64)>,
}

/// A large file read back for `--verify`, this much at a time.
const READ_BACK: u64 = 1 << 20;

/// Temporaries of large files are numbered from here, apart from the writers' own counters.
static LARGE_SEQ: AtomicU64 = AtomicU64::new(1 << 48);

impl LargeFile {
    pub fn new(
        key: String,
        target: Target,
        size: u64,
        parts: u64,
        meta: Meta,
        picked: Instant,
        (md5, crc): (Option<String>, Option<crate::verify::WholeCrc>),
    ) -> Arc<LargeFile> {
        let crcs = Vec::new();
        let state = LargeState { left: parts, open: None, err: None, silent: false, first: None, crcs };
        Arc::new(LargeFile { key, target, size, meta, picked, md5, crc, state: Mutex::new(state) })
    }

    /// The CRC of the range at `offset`, `len` bytes long, as it arrived.
    pub fn range_crc(&self, offset: u64, len: u64, crc: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.crcs.push((offset, len, crc));
        }
    }

    /// The descriptor to write a part into, creating the temporary on first use; `None`
    /// once the file has failed (its remaining parts are only counted).
    pub(crate) fn fd(&self, dirs: &DirCache) -> Option<Arc<OwnedFd>> {
        let mut st = self.state.lock().ok()?;
        st.first.get_or_insert_with(Instant::now);
        if st.err.is_some() {
            return None;
        }
        if let Some((_, _, fd)) = &st.open {
            return Some(fd.clone());
        }
        let opened = dirs.get(self.target.dir()).and_then(|dir| {
            let tmp = tmp_name(LARGE_SEQ.fetch_add(1, Ordering::Relaxed));
            // Readable too when it is to be read back.
            let access = if self.md5.is_some() { OFlags::RDWR } else { OFlags::WRONLY };
            let flags = access | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
            rustix::fs::openat(dir.as_fd(), tmp.as_c_str(), flags, Mode::from_raw_mode(0o666))
                .map(|fd| (dir, tmp, Arc::new(fd)))
                .map_err(|e| io_reason("cannot create a temporary file for", &self.target.rel_path(), e.raw_os_error()))
        });
        match opened {
            Ok(open) => {
                let fd = open.2.clone();
                st.open = Some(open);
                Some(fd)
            }
            Err(reason) => {
                st.err = Some(reason);
                None
            }
        }
    }

    /// Accounts for `parts` parts: written, or not (`Err(None)`: abandoned by a stopping
    /// run). The last one finishes the file, on the calling writer thread.
    pub(crate) fn done(
        &self,
        parts: u64,
        result: Result<(), Option<String>>,
        dirs: &DirCache,
        report: &Report,
        rec: &mut Recorder,
        fsync: bool,
    ) {
        let Ok(mut st) = self.state.lock() else {
            return report.fail(&self.key, "internal error: large file state poisoned");
        };
        match result {
            Ok(()) => {}
            Err(None) => st.silent = true,
            Err(Some(reason)) => {
                st.err.get_or_insert(reason);
            }
        }
        st.left = st.left.saturating_sub(parts);
        if st.left > 0 {
            return;
        }
        let open = st.open.take();
        let crcs = std::mem::take(&mut st.crcs);
        let first = st.first.unwrap_or(self.picked);
        let mut err = st.err.take();
        let silent = st.silent;
        drop(st);
        let path = || self.target.rel_path();
        if let Some((dir, tmp, fd)) = open {
            if err.is_none() && !silent {
                err = self
                    .check_crcs(crcs, report)
                    .and_then(|()| self.complete((dirs, &dir), &tmp, fd, fsync, report))
                    .err();
                if err.is_none() {
                    if fsync {
                        dirs.touched(self.target.dir());
                    }
                    rec.record(Stage::Write, first.elapsed());
                    rec.record(Stage::Total, self.picked.elapsed());
                    return report.written(self.size);
                }
            }
            let _ = rustix::fs::unlinkat(dir.as_fd(), tmp.as_c_str(), rustix::fs::AtFlags::empty());
        }
        match err {
            Some(reason) => fail_file(report, &self.key, &reason),
            None if silent => {}
            None => report.fail(&self.key, &format!("internal error: '{}' ended without data", path())),
        }
    }

    /// With a whole CRC: the ranges' CRCs combine into it, or the file gets no name.
    fn check_crcs(&self, crcs: Vec<(u64, u64, u64)>, report: &Report) -> Result<(), String> {
        let Some(crc) = &self.crc else { return Ok(()) };
        match crc.check(crcs, self.size) {
            Ok(()) => {
                report.verified(crate::verify::Verified::Checksum(crc.header));
                Ok(())
            }
            Err(mismatch) => {
                report.corrupt();
                Err(format!("{mismatch}; not kept (run again to fetch it anew)"))
            }
        }
    }

    /// Optional read-back check, mtime, optional fsync, close, rename: the file is complete.
    fn complete(
        &self,
        (dirs, dir): (&DirCache, &OwnedFd),
        tmp: &CString,
        fd: Arc<OwnedFd>,
        fsync: bool,
        report: &Report,
    ) -> Result<(), String> {
        let reason = |what: &str, e: Errno| io_reason(what, &self.target.rel_path(), e.raw_os_error());
        if let Some(md5) = &self.md5 {
            let mut whole = crate::verify::WholeMd5::default();
            let mut buf = vec![0; READ_BACK.min(self.size) as usize];
            let mut at = 0;
            while at < self.size {
                let n = match rustix::io::pread(&fd, &mut buf, at) {
                    Ok(0) => return Err(format!("'{}' is shorter than its object", self.target.rel_path())),
                    Ok(n) => n,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(reason("cannot read back", e)),
                };
                whole.update(&buf[..n]);
                at += n as u64;
            }
            if let Err(mismatch) = whole.check(md5) {
                report.corrupt();
                return Err(format!("{mismatch}; not kept (run again to fetch it anew)"));
            }
            report.verified(crate::verify::Verified::EtagMd5);
        }
        set_meta(MetaAt::Fd(fd.as_fd()), &self.meta, &|| self.target.rel_path());
        if fsync {
            rustix::fs::fdatasync(&fd).map_err(|e| reason("cannot fsync", e))?;
        }
        drop(fd);
        let name = self.target.file_name().ok_or("internal error: file job without a name")?;
        let renamed = rename_new(dir, tmp, name);
        settle_rename(renamed, dirs, (dir, tmp, name), self.size, &self.meta, &|| self.target.rel_path())
    }
}

/// Set once DEST's file system refused `RENAME_NOREPLACE` (some FUSE and network file
/// systems): renames then replace, as plain `rename` does.
static NOREPLACE_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What a rename into place found at the final name.
pub(crate) enum Renamed {
    Done,
    /// `RENAME_NOREPLACE` found something there: see [`settle_rename`].
    Exists,
}

/// Renames temporary `tmp` to `name` in `dir`, never over anything (`RENAME_NOREPLACE`): the
/// common case, a new file, costs one `renameat2`, as a plain rename would.
pub(crate) fn rename_new(dir: &OwnedFd, tmp: &std::ffi::CStr, name: &str) -> Result<Renamed, Errno> {
    use rustix::fs::RenameFlags;
    if NOREPLACE_REFUSED.load(Ordering::Relaxed) {
        return rustix::fs::renameat(dir.as_fd(), tmp, dir.as_fd(), name).map(|()| Renamed::Done);
    }
    match rustix::fs::renameat_with(dir.as_fd(), tmp, dir.as_fd(), name, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(Renamed::Done),
        Err(Errno::EXIST) => Ok(Renamed::Exists),
        Err(e) => noreplace_refused(e, || rustix::fs::renameat(dir.as_fd(), tmp, dir.as_fd(), name)),
    }
}

/// `RENAME_NOREPLACE` failed with `e`: if that may be the flag itself being refused, the plain
/// rename decides, and its success means the file system does not take the flag (remembered
/// for the run). A name the file system refuses (EINVAL on vfat for `a:b`) fails both ways.
pub(crate) fn noreplace_refused(e: Errno, plain: impl FnOnce() -> Result<(), Errno>) -> Result<Renamed, Errno> {
    if !matches!(e, Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) {
        return Err(e);
    }
    plain()?;
    NOREPLACE_REFUSED.store(true, Ordering::Relaxed);
    Ok(Renamed::Done)
}

/// Whether renames still ask for `RENAME_NOREPLACE` (the ring sets the flag on its SQEs).
pub(crate) fn noreplace() -> bool {
    !NOREPLACE_REFUSED.load(Ordering::Relaxed)
}

/// Where a rename into place ended: done, refused with the rename's error, or a file found at
/// the name. That file is replaced if it was there before this run (a stale copy the
/// existing-file check chose to fetch again, or `--overwrite`) or holds this same object (a
/// key listed twice); otherwise the key fails ([`written_by_another`]).
pub(crate) fn settle_rename(
    renamed: Result<Renamed, Errno>,
    dirs: &DirCache,
    (dir, tmp, name): (&OwnedFd, &std::ffi::CStr, &str),
    size: u64,
    meta: &Meta,
    rel: &dyn Fn() -> String,
) -> Result<(), String> {
    let refused = match renamed {
        Ok(Renamed::Done) => return Ok(()),
        Ok(Renamed::Exists) if written_by_another(dirs, dir, name, size, meta) => {
            return Err(format!(
                "a file appeared at '{}' during this run: another key the file system takes for the same name (a \
                 directory that ignores case or Unicode normalisation), or another program; not replaced",
                rel()
            ));
        }
        Ok(Renamed::Exists) => {
            keep_mode(dir, tmp, name);
            match rustix::fs::renameat(dir.as_fd(), tmp, dir.as_fd(), name) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    // The temporary is there, so the name is what the file system refused: exFAT through
    // FUSE says ENOENT, vfat EINVAL, either of which alone reads as nonsense here.
    let tmp_there = || rustix::fs::statat(dir.as_fd(), tmp, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok();
    if matches!(refused, Errno::NOENT | Errno::INVAL) && tmp_there() {
        return Err(format!(
            "cannot rename into place '{}': the file system at DEST does not accept this name (exFAT, vfat and \
             SMB refuse \" * : < > ? \\ | and control characters)",
            rel()
        ));
    }
    Err(io_reason("cannot rename into place", &rel(), refused.raw_os_error()))
}

/// A regular file about to be replaced by a newer copy passes its permissions on to the
/// temporary (created 0666 less the umask), as `cp` onto an existing file keeps them: a
/// user's 0600 stays 0600. Only the permission bits: set-user-ID and the like are not given
/// to bytes they were not set for. The temporary is opened without following links (the
/// directory may be writable by others) and changed through its descriptor; a file system
/// that refuses leaves the temporary's mode, the copy itself being what matters.
fn keep_mode(dir: &OwnedFd, tmp: &std::ffi::CStr, name: &str) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(old) = rustix::fs::statat(dir.as_fd(), name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) else { return };
    if rustix::fs::FileType::from_raw_mode(old.st_mode) != rustix::fs::FileType::RegularFile {
        return;
    }
    let tmp = Path::new(std::ffi::OsStr::from_bytes(tmp.to_bytes()));
    let Ok(fd) = crate::existing::open_regular(dir.as_fd(), tmp) else { return };
    let want = old.st_mode & 0o777;
    if rustix::fs::fstat(&fd).is_ok_and(|st| st.st_mode & 0o7777 == want) {
        return;
    }
    let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(want));
}

/// Whether the regular file at `name` was written during this run (changed at or after the
/// start probe, by the file system's clock) and holds another object than the one of `size`
/// and `meta`: another key that the file system takes for the same name (a directory that
/// ignores case or Unicode normalisation, which the [`crate::keymap::CaseGuard`] does not
/// see), or another program. Replacing it would silently lose that file. Anything else at
/// the name (a directory in the way) is left to the plain rename's own error.
fn written_by_another(dirs: &DirCache, dir: &OwnedFd, name: &str, size: u64, meta: &Meta) -> bool {
    let Ok(st) = rustix::fs::statat(dir.as_fd(), name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) else { return false };
    let during_run = dirs.started.is_some_and(|started| (st.st_ctime, st.st_ctime_nsec) >= started);
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile || !during_run {
        return false;
    }
    let same_object = st.st_size as u64 == size
        && match (&meta.etag, crate::existing::kept_etag(dir, name)) {
            (Some(ours), Some(theirs)) => *ours == theirs,
            // No attributes here: the same size and the same time, as a re-run would compare.
            _ => meta.mtime.and_then(timestamps).is_some_and(|ts| {
                (st.st_mtime, Some(st.st_mtime_nsec))
                    == (ts.last_modification.tv_sec, u64::try_from(ts.last_modification.tv_nsec).ok())
            }),
        };
    !same_object
}

/// Writes all of `buf` at `offset` with plain `pwrite` calls.
pub(crate) fn pwrite_all(fd: &OwnedFd, mut buf: &[u8], mut offset: u64) -> Result<(), Errno> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, offset) {
            Ok(0) => return Err(Errno::NOSPC),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The running writer: send jobs, then drop the sender and [`Writer::finish`].
pub struct Writer {
    pub jobs: async_channel::Sender<Job>,
    pub engine: &'static str,
    /// DEST does not tell upper from lower case ([`DirCache::probe`]).
    pub folds_case: bool,
    threads: Vec<JoinHandle<()>>,
    dirs: Arc<DirCache>,
}

impl Writer {
    /// Waits for every job sent so far to be written or failed. Call after dropping all
    /// senders (clones of [`Writer::jobs`]); blocking, so from a blocking context.
    pub fn finish(self) -> Result<(), String> {
        drop(self.jobs);
        let mut ok = true;
        for t in self.threads {
            ok &= t.join().is_ok();
        }
        if !ok {
            return Err("internal error: a writer thread panicked".to_owned());
        }
        self.dirs.sync_touched()
    }
}

/// How to run a writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub engine: IoEngine,
    /// Threads of the `threads` engine and the cap on the ring's io-wq workers; `None`: one
    /// thread per core (at most 16) for the pool, 16 io-wq workers for the ring (a synced file
    /// holds its worker while it waits on the disk, so the ring keeps its own default).
    pub io_threads: Option<usize>,
    /// Jobs waiting for the writer, at most.
    pub hand_off: usize,
    /// `--fsync`: file data durable before the rename, directories at the end.
    pub fsync: bool,
    /// `uring`: new files started per `io_uring_enter`, at most (`usize::MAX`: all that are
    /// ready). 1 reproduces one-file-per-submit, for measuring what batching buys.
    pub files_per_submit: usize,
}

/// Starts the chosen engine in DEST (opened by [`crate::existing::open_dest`]).
pub fn start(opts: &WriterOptions, dest: Arc<OwnedFd>, report: Arc<Report>) -> Result<Writer, String> {
    raise_nofile_limit();
    let mut dirs = DirCache::open(dest);
    if opts.fsync {
        dirs.touched = Some(Mutex::new(std::collections::HashSet::new()));
    }
    let folds_case = dirs.probe();
    let dirs = Arc::new(dirs);
    let (tx, rx) = async_channel::bounded(opts.hand_off.max(1));
    let new_ring = || {
        uring::UringWriter::new().map(|w| {
            w.files_per_submit(opts.files_per_submit)
                .io_workers(opts.io_threads.unwrap_or(RING_IO_WORKERS).min(u32::MAX as usize) as u32)
                .fsync(opts.fsync)
        })
    };
    let uring = match opts.engine {
        IoEngine::Threads => None,
        IoEngine::Uring => Some(new_ring().map_err(|e| format!("--io-engine uring: {e}"))?),
        // Small files: plain syscalls from one thread per core cost less than the ring,
        // whose O_CREAT opens and renames always go to io-wq workers (two hand-offs per file):
        // on 2 cores, tmpfs, signed, two threads vs the ring: 38 vs 41.5 µs of client CPU per
        // object at 0 ms, 40 vs 44 at 10 ms (bench-results/2026-11-26-2core-io-engine).
        IoEngine::Auto if !opts.fsync => None,
        IoEngine::Auto => match new_ring() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("io_uring is unavailable ({e}); using the thread-pool writer");
                None
            }
        },
    };
    if let Some(w) = uring {
        let ring_dirs = dirs.clone();
        let t = std::thread::Builder::new()
            .name("s3uring-uring".into())
            .spawn(move || {
                batch_scheduling();
                w.run(rx, &ring_dirs, &report)
            })
            .map_err(|e| format!("cannot start the writer thread: {e}"))?;
        return Ok(Writer { jobs: tx, engine: "io_uring", folds_case, threads: vec![t], dirs });
    }
    let seq = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for i in 0..opts.io_threads.unwrap_or_else(crate::config::default_io_threads).max(1) {
        let (rx, dirs, report, seq) = (rx.clone(), dirs.clone(), report.clone(), seq.clone());
        let fsync = opts.fsync;
        let t = std::thread::Builder::new()
            .name(format!("s3uring-io-{i}"))
            .spawn(move || {
                batch_scheduling();
                let mut rec = report.recorder();
                while let Ok(job) = rx.recv_blocking() {
                    run_job_sync(job, &dirs, &report, &seq, &mut rec, fsync);
                }
            })
            .map_err(|e| format!("cannot start writer threads: {e}"))?;
        threads.push(t);
    }
    Ok(Writer { jobs: tx, engine: "threads", folds_case, threads, dirs })
}

/// Puts the calling writer thread under `SCHED_BATCH`, keeping its nice value (so its share
/// of the CPU is unchanged). A normal thread woken by a futex usually preempts the thread that
/// woke it; for a writer that means one switch to it and one back for nearly every object
/// handed over, since each hand-off finds it parked again. A batch thread is not run ahead of
/// the waker, so it takes the queue when the fetchers' thread waits for the network, many jobs
/// per wake-up. With the client on one core, 20,000 × 4 KiB over HTTPS went from ~31,000
/// context switches to under 1,000, and from 33 to 30 µs of CPU per object at 11 % more
/// objects/s (bench-results/2026-12-05-2core-batch-writers). Where the kernel refuses (a
/// seccomp filter), the thread stays as it was.
fn batch_scheduling() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    // The crate sets a normal policy's nice value from a 0..=99 scale: find the value that maps
    // to the thread's own nice, so that only the policy changes.
    let nice = rustix::process::getpriority_process(None).unwrap_or(0);
    let same_nice = (0..=99u8)
        .filter_map(|p| ThreadPriorityValue::try_from(p).ok().map(ThreadPriority::Crossplatform))
        .find(|p| p.to_posix(policy).ok() == Some(nice));
    let result = match same_nice {
        Some(priority) => set_thread_priority_and_policy(thread_native_id(), priority, policy),
        None => return tracing::debug!("writer thread left under its scheduling policy (nice {nice})"),
    };
    if let Err(e) = result {
        tracing::debug!("writer thread left under its scheduling policy: {e:?}");
    }
}

/// The temporary name for sequence number `seq`: at most 13 + 16 + 1 + 16 = 46 bytes.
pub(crate) fn tmp_name(seq: u64) -> CString {
    static PREFIX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("{TMP_PREFIX}{}.", run_id()));
    let name = format!("{}{seq:x}", *PREFIX);
    // No NUL can appear in a formatted prefix and two hex numbers.
    CString::new(name).unwrap_or_default()
}

/// A key's final name as a C string. Keys with NUL are refused by the keymap.
pub(crate) fn c_name(name: &str) -> Result<CString, String> {
    CString::new(name).map_err(|_| "name contains a NUL byte".to_owned())
}

const NO_SPACE: &str = "no space left on device";
const NO_QUOTA: &str = "disk quota exceeded";

/// Fails a file. A full disk or quota also stops the run: every later file would
/// fail the same way, so fetching them is waste; the summary says how many were not copied.
pub(crate) fn fail_file(report: &Report, key: &str, reason: &str) {
    report.fail(key, reason);
    if reason.ends_with(NO_SPACE) || reason.ends_with(NO_QUOTA) {
        report.abort(reason);
    }
}

/// The one-line reason for an errno while doing `what` to `path`.
pub(crate) fn io_reason(what: &str, path: &str, errno: i32) -> String {
    let cause = match errno {
        libc::EISDIR | libc::ENOTEMPTY => {
            "a directory is in the way (another key uses this path as a directory)".to_owned()
        }
        libc::ENOSPC => NO_SPACE.to_owned(),
        libc::EDQUOT => NO_QUOTA.to_owned(),
        libc::EROFS => "read-only file system".to_owned(),
        libc::EACCES | libc::EPERM => "permission denied".to_owned(),
        _ => io::Error::from_raw_os_error(errno).to_string(),
    };
    format!("{what} '{path}': {cause}")
}

/// Opened directories under DEST, by relative path. Directories are opened one component at
/// a time with `O_NOFOLLOW`, relative to the parent's descriptor, and created when missing.
/// Bounded: past `cap` entries, those no in-flight file uses are closed.
pub struct DirCache {
    root: Arc<OwnedFd>,
    /// This run's lock, and what is known of other runs.
    runs: RunLock,
    map: Mutex<HashMap<String, Arc<OwnedFd>>>,
    cap: usize,
    /// `--fsync`: directories that received files, synced at the end.
    touched: Option<Mutex<std::collections::HashSet<String>>>,
    /// The change time of a file created in DEST as the writer started, by the file system's
    /// own clock (which on a network mount is the server's): a file changed at or after it
    /// was written during this run ([`rename_into_place`]). `None` until probed, or when the
    /// probe could not be made.
    started: Option<(i64, u64)>,
}

impl DirCache {
    pub fn open(root: Arc<OwnedFd>) -> DirCache {
        let runs = RunLock::take(&root);
        remove_stale_temps(&root, "", &runs);
        runs.remove_dead_locks();
        DirCache { root, runs, map: Mutex::new(HashMap::new()), cap: dir_cache_cap(), touched: None, started: None }
    }

    /// Probes DEST with a temporary: records the file system's time now ([`DirCache::started`])
    /// and says whether it takes a name in other case for the same file (exFAT, vfat, SMB, a
    /// casefold directory). The temporary is created, then created again under the same name
    /// with its sequence number's hex letters in upper case, which such a file system refuses
    /// as existing. (Comparing inode numbers would not do: a path-based FUSE file system
    /// numbers each name it is asked for.) `false` when the probe cannot be made; the files
    /// will then fail on their own, naming the cause.
    pub fn probe(&mut self) -> bool {
        // Only the sequence number changes case (`…ffff` → `…FFFF`): the name stays one of this
        // run's temporaries, which a later run removes if this one is killed here.
        let lower = tmp_name(u64::MAX);
        let mut upper = lower.to_bytes().to_vec();
        let seq_at = upper.len() - PROBE_UPPER.len();
        upper[seq_at..].make_ascii_uppercase();
        let Ok(upper) = CString::new(upper) else { return false };
        let create = |name: &CString| {
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
            rustix::fs::openat(self.root.as_fd(), name.as_c_str(), flags, Mode::from_raw_mode(0o600))
        };
        let remove =
            |name: &CString| rustix::fs::unlinkat(self.root.as_fd(), name.as_c_str(), rustix::fs::AtFlags::empty());
        let Ok(fd) = create(&lower) else { return false };
        let started = rustix::fs::fstat(&fd).ok().map(|st| (st.st_ctime, st.st_ctime_nsec));
        let folds = match create(&upper) {
            Ok(_) => {
                let _ = remove(&upper);
                false
            }
            Err(e) => e == Errno::EXIST,
        };
        drop(fd);
        let _ = remove(&lower);
        self.started = started;
        folds
    }

    /// `--fsync`: a file was renamed into directory `rel`. Its ancestors are synced too: each
    /// may have gained the entry of a directory created on the way, and a crash must not lose
    /// a subtree whose files were synced.
    pub(crate) fn touched(&self, rel: &str) {
        if let Some(t) = &self.touched
            && let Ok(mut t) = t.lock()
        {
            let mut dir = rel;
            while !dir.is_empty() && t.insert(dir.to_owned()) {
                dir = dir.rsplit_once('/').map_or("", |(parent, _)| parent);
            }
        }
    }

    /// `--fsync`: the directories [`DirCache::sync_touched`] syncs, in order (`""` is DEST);
    /// none without `--fsync`.
    fn to_sync(&self) -> Vec<String> {
        let Some(t) = &self.touched else { return Vec::new() };
        let mut dirs: Vec<String> = t.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default();
        dirs.push(String::new());
        dirs.sort();
        dirs
    }

    /// `--fsync`: makes the renames durable, one fsync per directory that received files
    /// (and DEST, which may have gained directories).
    fn sync_touched(&self) -> Result<(), String> {
        for rel in self.to_sync() {
            let fd = self.get(&rel)?;
            rustix::fs::fsync(fd.as_fd()).map_err(|e| {
                io_reason("cannot fsync directory", if rel.is_empty() { "DEST" } else { &rel }, e.raw_os_error())
            })?;
        }
        Ok(())
    }

    /// The descriptor of directory `rel` (`""` is DEST), created if missing.
    pub fn get(&self, rel: &str) -> Result<Arc<OwnedFd>, String> {
        if rel.is_empty() {
            return Ok(self.root.clone());
        }
        let mut map = self.map.lock().map_err(|_| "internal error: directory cache poisoned".to_owned())?;
        self.get_locked(&mut map, rel)
    }

    fn get_locked(&self, map: &mut HashMap<String, Arc<OwnedFd>>, rel: &str) -> Result<Arc<OwnedFd>, String> {
        if rel.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some(fd) = map.get(rel) {
            return Ok(fd.clone());
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent_fd = self.get_locked(map, parent)?;
        let (fd, existed) = open_or_create_dir(&parent_fd, name).map_err(|e| dir_error(&parent_fd, name, rel, e))?;
        if existed {
            remove_stale_temps(&fd, rel, &self.runs);
        }
        let fd = Arc::new(fd);
        if map.len() >= self.cap {
            map.retain(|_, v| Arc::strong_count(v) > 1);
        }
        map.insert(rel.to_owned(), fd.clone());
        Ok(fd)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as s5cmd does), so the directory cache
/// and the thread engine never meet EMFILE on systems whose soft limit is 1024. Best effort.
pub fn raise_nofile_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum || (lim.current.is_some() && lim.maximum.is_none()) {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: lim.maximum, maximum: lim.maximum });
    }
}

/// How many directory descriptors to keep open: half the soft RLIMIT_NOFILE, up to 4096.
fn dir_cache_cap() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1024);
    ((soft / 2) as usize).clamp(16, 4096)
}

fn dir_error(parent: &OwnedFd, name: &str, rel: &str, e: Errno) -> String {
    // `O_NOFOLLOW | O_DIRECTORY` on a symlink answers ENOTDIR (or ELOOP): tell them apart.
    let is_symlink = || {
        rustix::fs::statat(parent.as_fd(), name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink)
    };
    match e {
        Errno::LOOP | Errno::NOTDIR if is_symlink() => {
            format!("cannot use directory '{rel}': it is a symbolic link; refusing to follow it")
        }
        Errno::NOTDIR => format!("cannot create directory '{rel}': a file is in the way (another key is a file there)"),
        e => io_reason("cannot create directory", rel, e.raw_os_error()),
    }
}

/// Opens directory `name` under `parent`, creating it when missing; `true` if it existed.
fn open_or_create_dir(parent: &OwnedFd, name: &str) -> Result<(OwnedFd, bool), Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(parent.as_fd(), name, flags, Mode::empty()) {
        Err(Errno::NOENT) => {}
        other => return other.map(|fd| (fd, true)),
    }
    match rustix::fs::mkdirat(parent.as_fd(), name, Mode::from_raw_mode(0o777)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    rustix::fs::openat(parent.as_fd(), name, flags, Mode::empty()).map(|fd| (fd, false))
}

/// This run's liveness, as other runs into the same DEST see it: an exclusive `flock` on
/// `DEST/.s3uring-tmp.<run id>.run`, held until the process exits (the kernel drops it when
/// the process dies, in any pid namespace; on NFS the server does when the client's lease
/// ends). The file is created as `….new`, locked, then renamed, so no other run can ever take
/// the lock of a live run. Removed when the run ends; a killed run's is removed by the next.
pub(crate) struct RunLock {
    root: Arc<OwnedFd>,
    /// Held for the lock; `None` when the file system refused the file or the lock (then
    /// other runs see no live lock either, but cannot take one: they leave our files alone
    /// only if they too cannot lock; see [`RunLock::dead`]).
    held: Option<std::fs::File>,
    /// Runs looked at: id → dead.
    seen: Mutex<HashMap<String, bool>>,
}

const LOCK_SUFFIX: &str = ".run";
const NEW_LOCK_SUFFIX: &str = ".new";

impl RunLock {
    fn take(root: &Arc<OwnedFd>) -> RunLock {
        let name = format!("{TMP_PREFIX}{}{LOCK_SUFFIX}", run_id());
        let new = format!("{TMP_PREFIX}{}{NEW_LOCK_SUFFIX}", run_id());
        let held = (|| -> io::Result<std::fs::File> {
            let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW;
            let fd = rustix::fs::openat(root.as_fd(), new.as_str(), flags, Mode::from_raw_mode(0o644))?;
            let file = std::fs::File::from(fd);
            let locked = file.try_lock().map_err(|e| match e {
                std::fs::TryLockError::Error(e) => e,
                std::fs::TryLockError::WouldBlock => io::Error::from(io::ErrorKind::WouldBlock),
            });
            let renamed = locked
                .and_then(|()| Ok(rustix::fs::renameat(root.as_fd(), new.as_str(), root.as_fd(), name.as_str())?));
            if let Err(e) = renamed {
                let _ = rustix::fs::unlinkat(root.as_fd(), new.as_str(), rustix::fs::AtFlags::empty());
                return Err(e);
            }
            Ok(file)
        })();
        let held = match held {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(
                    "cannot lock '{name}' in DEST ({e}): another run into DEST cannot tell that this one is alive"
                );
                None
            }
        };
        RunLock { root: root.clone(), held, seen: Mutex::new(HashMap::new()) }
    }

    /// Is run `id` certainly dead? True when its lock file is missing or can be locked;
    /// false when it is locked (alive) or cannot be looked at (then nothing of it is touched).
    fn dead(&self, id: &str) -> bool {
        if id == run_id() {
            return false;
        }
        let Ok(mut seen) = self.seen.lock() else { return false };
        if let Some(&dead) = seen.get(id) {
            return dead;
        }
        let name = format!("{TMP_PREFIX}{id}{LOCK_SUFFIX}");
        let flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let dead = match rustix::fs::openat(self.root.as_fd(), name.as_str(), flags, Mode::empty()) {
            Err(Errno::NOENT) => true,
            Err(_) => false,
            // Locked here, it stays locked until this run ends: that run can never come back.
            Ok(fd) => std::fs::File::from(fd).try_lock().is_ok(),
        };
        seen.insert(id.to_owned(), dead);
        dead
    }

    /// Removes the lock files of dead runs in DEST (after their temporaries in DEST: those in
    /// directories not visited yet count as a dead run's, having no lock file), and leftover
    /// `….new` files older than an hour (a run killed while taking its lock).
    fn remove_dead_locks(&self) {
        let Ok(entries) = rustix::fs::Dir::read_from(&*self.root) else { return };
        for entry in entries.flatten() {
            let Some(rest) = entry.file_name().to_str().ok().and_then(|n| n.strip_prefix(TMP_PREFIX)) else { continue };
            let stale = if let Some(id) = rest.strip_suffix(LOCK_SUFFIX).filter(|id| is_run_id(id)) {
                self.dead(id)
            } else if let Some(id) = rest.strip_suffix(NEW_LOCK_SUFFIX).filter(|id| is_run_id(id)) {
                id != run_id()
                    && rustix::fs::statat(&*self.root, entry.file_name(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| {
                            let now =
                                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                            (st.st_mtime as u64) + 3600 < now
                        })
            } else {
                false
            };
            if stale {
                let _ = rustix::fs::unlinkat(self.root.as_fd(), entry.file_name(), rustix::fs::AtFlags::empty());
            }
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if self.held.take().is_some() {
            let name = format!("{TMP_PREFIX}{}{LOCK_SUFFIX}", run_id());
            let _ = rustix::fs::unlinkat(self.root.as_fd(), name.as_str(), rustix::fs::AtFlags::empty());
        }
    }
}

/// The run id of `name` if it is exactly a temporary's name as [`tmp_name`] writes it:
/// `.s3uring-tmp.`, a run id, `.`, a lowercase hex number without leading zeros — or the
/// case probe's second name ([`DirCache::probe`]: `FFFFFFFFFFFFFFFF`, a run killed between
/// creating and removing it leaves it). Anything else in DEST is someone's file, whatever it
/// looks like.
fn temporary_of(name: &str) -> Option<&str> {
    let (id, seq) = name.strip_prefix(TMP_PREFIX)?.split_once('.')?;
    let number = (1..=16).contains(&seq.len()) && (seq == "0" || !seq.starts_with('0')) && lower_hex(seq);
    (is_run_id(id) && (number || seq == PROBE_UPPER)).then_some(id)
}

/// The case probe's name in other case: its sequence number, `u64::MAX`, in upper case.
const PROBE_UPPER: &str = "FFFFFFFFFFFFFFFF";

/// A run id as [`run_id`] makes them: 16 lowercase hex digits.
fn is_run_id(id: &str) -> bool {
    id.len() == 16 && lower_hex(id)
}

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Removes the temporary files a killed run left in a directory this run is about to use
/// (invariant 2: a killed run leaves at most temporaries, which the next run cleans up).
/// Names are `.s3uring-tmp.<run id>.<seq hex>`; a temporary of this run, or of a run that is
/// still alive or cannot be known to be dead (another run into the same DEST, on any host),
/// is left alone ([`RunLock`]). Runs once per directory opened, on a writer thread;
/// directories this run created have nothing to clean.
fn remove_stale_temps(dir: &OwnedFd, rel: &str, runs: &RunLock) {
    let Ok(entries) = rustix::fs::Dir::read_from(dir) else { return };
    let mut removed = 0u64;
    for entry in entries.flatten() {
        let Some(id) = entry.file_name().to_str().ok().and_then(temporary_of) else { continue };
        // Lock files are the runs themselves: see RunLock::remove_dead_locks.
        if !runs.dead(id) {
            continue;
        }
        if rustix::fs::unlinkat(dir.as_fd(), entry.file_name(), rustix::fs::AtFlags::empty()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        let shown = if rel.is_empty() { "DEST" } else { rel };
        tracing::info!("removed {removed} temporary files left by an interrupted run in '{shown}'");
    }
}

/// The thread engine's whole job: plain syscalls, same rules as the ring.
fn run_job_sync(job: Job, dirs: &DirCache, report: &Report, seq: &AtomicU64, rec: &mut Recorder, fsync: bool) {
    match job {
        Job::Dir { key, target } => match dirs.get(target.dir()) {
            Ok(_) => report.dir_done(),
            Err(reason) => report.fail(&key, &reason),
        },
        Job::Part { file, offset, body, permit, fetched } => {
            rec.record(Stage::Handoff, fetched.elapsed());
            let result = match file.fd(dirs) {
                Some(fd) => pwrite_all(&fd, &body, offset)
                    .map_err(|e| Some(io_reason("cannot write", &file.target.rel_path(), e.raw_os_error()))),
                None => Ok(()), // the file already failed; this part is only counted
            };
            drop(permit);
            file.done(1, result, dirs, report, rec, fsync);
        }
        Job::Abandon { file, parts, reason } => file.done(parts, Err(reason), dirs, report, rec, fsync),
        Job::File(job) => {
            let start = Instant::now();
            rec.record(Stage::Handoff, start - job.fetched);
            match write_file_sync(&job, dirs, seq, fsync) {
                Ok(()) => {
                    if fsync {
                        dirs.touched(job.target.dir());
                    }
                    rec.record(Stage::Write, start.elapsed());
                    rec.record(Stage::Total, job.picked.elapsed());
                    report.written(job.body.len() as u64);
                }
                Err(reason) => fail_file(report, &job.key, &reason),
            }
        }
    }
}

fn write_file_sync(job: &FileJob, dirs: &DirCache, seq: &AtomicU64, fsync: bool) -> Result<(), String> {
    let dir = dirs.get(job.target.dir())?;
    let final_name = job.target.file_name().ok_or("internal error: file job without a name")?;
    // The path is only formatted for an error: a successful file allocates nothing for it.
    let reason = |what: &str, errno: i32| io_reason(what, &job.target.rel_path(), errno);
    let tmp = tmp_name(seq.fetch_add(1, Ordering::Relaxed));
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir.as_fd(), tmp.as_c_str(), flags, Mode::from_raw_mode(0o666))
        .map_err(|e| reason("cannot create a temporary file for", e.raw_os_error()))?;
    let mut file = std::fs::File::from(fd);
    let result = file
        .write_all(&job.body)
        .map_err(|e| reason("cannot write", e.raw_os_error().unwrap_or(libc::EIO)))
        .map(|()| set_meta(MetaAt::Fd(file.as_fd()), &job.meta, &|| job.target.rel_path()))
        .and_then(|()| match fsync {
            true => file.sync_data().map_err(|e| reason("cannot fsync", e.raw_os_error().unwrap_or(libc::EIO))),
            false => Ok(()),
        })
        .and_then(|()| {
            let renamed = rename_new(&dir, &tmp, final_name);
            let size = job.body.len() as u64;
            settle_rename(renamed, dirs, (&dir, &tmp, final_name), size, &job.meta, &|| job.target.rel_path())
        });
    drop(file);
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir.as_fd(), tmp.as_c_str(), rustix::fs::AtFlags::empty());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_attributes_set_by_name_never_follow_a_link() {
        let dest = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"mine").unwrap();
        let before = std::fs::metadata(&victim).unwrap().modified().unwrap();
        std::os::unix::fs::symlink(&victim, dest.path().join("tmp")).unwrap();
        let dir = rustix::fs::open(dest.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let then = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        let meta = Meta { mtime: Some(then), etag: Some("e".into()), checksum: Some("crc32c:AAAAAA==".into()) };
        set_meta(MetaAt::Name(&dir, c"tmp"), &meta, &|| "tmp".to_owned());
        assert_eq!(std::fs::metadata(&victim).unwrap().modified().unwrap(), before, "the link's target got the time");
        let mut buf = [0u8; 64];
        for attr in [ETAG_XATTR, CHECKSUM_XATTR] {
            assert!(rustix::fs::getxattr(&victim, attr, &mut buf).is_err(), "the link's target got {attr}");
        }
        // A regular temporary gets them all.
        std::fs::write(dest.path().join("real"), b"x").unwrap();
        set_meta(MetaAt::Name(&dir, c"real"), &meta, &|| "real".to_owned());
        assert_eq!(std::fs::metadata(dest.path().join("real")).unwrap().modified().unwrap(), then);
        let n = rustix::fs::getxattr(dest.path().join("real").as_path(), CHECKSUM_XATTR, &mut buf);
        if let Ok(n) = n {
            assert_eq!(&buf[..n], b"crc32c:AAAAAA==");
        }
    }

    #[test]
    fn only_names_this_tool_writes_are_temporaries() {
        for seq in [0, 1, 0xabc, u64::MAX] {
            let name = tmp_name(seq).into_string().unwrap();
            assert_eq!(temporary_of(&name), Some(run_id()), "{name}");
        }
        // The case probe's second name, which a run killed in the probe leaves.
        let probe = format!("{TMP_PREFIX}{}.{PROBE_UPPER}", run_id());
        assert_eq!(temporary_of(&probe), Some(run_id()), "{probe}");
        for name in [
            ".s3uring-tmp.deadbeef.1",
            ".s3uring-tmp.00000000DEADBEEF.1",
            ".s3uring-tmp.00000000deadbeef.01",
            ".s3uring-tmp.00000000deadbeef.",
            ".s3uring-tmp.00000000deadbeef.1.run",
            ".s3uring-tmp.00000000deadbeef.run",
            ".s3uring-tmp.00000000deadbeef.12345678901234567",
            ".s3uring-tmp.00000000deadbeef0.1",
            "s3uring-tmp.00000000deadbeef.1",
            ".s3uring-tmp.00000000deadbeef.FFFF",
            ".s3uring-tmp.00000000deadbeef.FFFFFFFFFFFFFFFe",
        ] {
            assert_eq!(temporary_of(name), None, "{name}");
        }
    }

    #[test]
    fn fsync_covers_every_directory_on_the_way_to_a_file() {
        let dest = tempfile::tempdir().unwrap();
        let mut dirs = DirCache::open(crate::existing::open_dest(dest.path()).unwrap());
        dirs.touched = Some(Mutex::new(std::collections::HashSet::new()));
        for rel in ["a/b/c", "a/b/d", "e"] {
            dirs.get(rel).unwrap();
            dirs.touched(rel);
        }
        assert_eq!(dirs.to_sync(), ["", "a", "a/b", "a/b/c", "a/b/d", "e"], "DEST and every ancestor");
        dirs.sync_touched().expect("each directory opened and synced");
    }

    /// (policy, nice) of every live thread of this process whose name starts with `prefix`,
    /// from `/proc/self/task/*/stat` (fields 19 and 41; the name, in parentheses, may hold spaces).
    fn sched_of_threads(prefix: &str) -> Vec<(u32, i64)> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            if !comm.starts_with(prefix) {
                continue;
            }
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            // fields[0] is field 3 (state): field n is fields[n - 3].
            found.push((fields[41 - 3].parse().unwrap(), fields[19 - 3].parse().unwrap()));
        }
        found
    }

    #[test]
    fn writer_threads_run_as_batch_threads_at_the_callers_nice() {
        let dest = tempfile::tempdir().unwrap();
        let nice = rustix::process::getpriority_process(None).unwrap() as i64;
        let opts = WriterOptions {
            engine: IoEngine::Threads,
            io_threads: Some(2),
            hand_off: 4,
            fsync: false,
            files_per_submit: usize::MAX,
        };
        let writer = start(&opts, crate::existing::open_dest(dest.path()).unwrap(), Arc::new(Report::new())).unwrap();
        // The threads set their policy as they start: wait until both have.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut got = sched_of_threads("s3uring-io-");
        while got.iter().filter(|(policy, _)| *policy == libc::SCHED_BATCH as u32).count() < 2
            && Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
            got = sched_of_threads("s3uring-io-");
        }
        writer.finish().unwrap();
        // Writers other tests start at the same time are batch threads too: all, and at least two.
        assert!(got.len() >= 2, "(policy, nice) of the writer threads: {got:?}");
        assert!(
            got.iter().all(|t| *t == (libc::SCHED_BATCH as u32, nice)),
            "(policy, nice) of the writer threads: {got:?}"
        );
    }
}
