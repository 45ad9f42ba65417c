//! Resume and skip: which listed objects are already in DEST.
//!
//! The writer sets every file's mtime to its object's LastModified and keeps its ETag in an
//! extended attribute, so a file whose size, mtime and ETag equal the listing's is the
//! object, exactly, without reading it: re-running a command after a crash or Ctrl-C
//! fetches only what is missing or changed (see [`Existing::is_done`] for the precise rule). A file at a final
//! name is always complete (data lands under a temporary name first), so size + mtime is
//! enough. `--overwrite` rewrites everything, `--skip-existing` skips by name alone.
//!
//! The check is a `fstatat` per key against directory descriptors opened one component at a
//! time with `O_NOFOLLOW` (never through a symlink, like the writer), cached per directory,
//! run on a blocking thread one listing page at a time: ~1–2 µs per key, far below a GET.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::keymap::Target;

/// What to do with a file that already exists at a key's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExistingMode {
    /// Skip it when its size and mtime equal the object's size and LastModified.
    #[default]
    Compare,
    /// Rewrite it (`--overwrite`).
    Overwrite,
    /// Skip it whatever it holds (`--skip-existing`).
    SkipExisting,
}

/// Opens DEST once for the whole run: the existing-file check and the writer share this
/// descriptor, so both see the same directory even if the path is changed during the run.
/// DEST itself, given on the command line, is followed if it is a symlink (as `cp` does);
/// nothing below it ever is.
pub fn open_dest(dest: &Path) -> Result<Arc<OwnedFd>, String> {
    rustix::fs::open(dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map(Arc::new)
        .map_err(|e| format!("cannot open DEST '{}': {}", dest.display(), std::io::Error::from(e)))
}

/// Directories cached at most (then the cache starts over).
const MAX_DIRS: usize = 1024;

/// Looks up existing files under DEST without following symlinks or creating anything.
pub struct Existing {
    root: Arc<OwnedFd>,
    mode: ExistingMode,
    /// Relative directory → its descriptor, `None` when it does not exist (or is not a
    /// plain directory): nothing below it exists for us.
    dirs: HashMap<String, Option<Arc<OwnedFd>>>,
}

impl Existing {
    /// Looks below `root`, DEST as the writer opened it ([`open_dest`]).
    pub fn new(root: Arc<OwnedFd>, mode: ExistingMode) -> Existing {
        Existing { root, mode, dirs: HashMap::new() }
    }

    /// True when the object (`size` bytes, `last_modified`, `etag`) is already at `target`:
    /// same size, and
    /// - the same time at the precision both sides have (the listing may have milliseconds, a
    ///   file system or an older copy whole seconds), and the same ETag when both the listing
    ///   and the file's `user.s3uring.etag` attribute have one (an object overwritten within
    ///   the same second with the same size is not the file);
    /// - or, with another time, a plain-MD5 ETag that the file's bytes hash to (a file copied
    ///   by another tool, or where the file system refused the time).
    pub fn is_done(
        &mut self,
        target: &Target,
        size: u64,
        last_modified: Option<SystemTime>,
        etag: Option<&str>,
    ) -> bool {
        let Some(name) = target.file_name() else { return false };
        if self.mode == ExistingMode::Overwrite {
            return false;
        }
        let Some(dir) = self.dir(target.dir()) else { return false };
        let Ok(st) = rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) else { return false };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return false;
        }
        match self.mode {
            ExistingMode::SkipExisting => true,
            ExistingMode::Overwrite => false,
            ExistingMode::Compare => {
                if st.st_size as u64 != size {
                    return false;
                }
                let file_time = (u64::try_from(st.st_mtime).unwrap_or(u64::MAX), st.st_mtime_nsec as u32);
                let same_time = last_modified.is_some_and(|lm| same_time(file_time, lm));
                if same_time {
                    // The attribute only ever adds a check: a file changed in place keeps it.
                    let kept = etag.and_then(|_| kept_etag(&dir, name));
                    return match (etag, kept) {
                        (Some(want), Some(kept)) => kept == want,
                        _ => true,
                    };
                }
                etag.is_some_and(|want| same_md5(&dir, name, want))
            }
        }
    }

    fn dir(&mut self, rel: &str) -> Option<Arc<OwnedFd>> {
        if rel.is_empty() {
            return Some(self.root.clone());
        }
        if let Some(d) = self.dirs.get(rel) {
            return d.clone();
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let opened = self
            .dir(parent)
            .and_then(|p| rustix::fs::openat(p.as_fd(), name, dir_flags(), Mode::empty()).ok())
            .map(Arc::new);
        if self.dirs.len() >= MAX_DIRS {
            self.dirs.clear();
        }
        self.dirs.insert(rel.to_owned(), opened.clone());
        opened
    }
}

/// Whether a file's mtime `(seconds, nanoseconds)` is `listed`, at the precision both have:
/// exactly, or in the same second when the file has whole seconds only (a file system that
/// keeps no more, or a copy that took the GET's `Last-Modified` header, which has none). A
/// file with a fraction the listing lacks was not given its time by a copy of this object.
pub(crate) fn same_time(file: (u64, u32), listed: SystemTime) -> bool {
    let Ok(lm) = listed.duration_since(SystemTime::UNIX_EPOCH) else { return false };
    file.0 == lm.as_secs() && (file.1 == lm.subsec_nanos() || file.1 == 0)
}

/// The ETag a copy kept with the file (`user.s3uring.etag`), if the file system has it.
pub(crate) fn kept_etag(dir: &OwnedFd, name: &str) -> Option<String> {
    // No *at form of getxattr before Linux 6.13: through the directory's /proc link, which
    // names exactly this directory; the final component is not followed.
    let path = format!("/proc/self/fd/{}/{name}", std::os::fd::AsRawFd::as_raw_fd(dir));
    let mut buf = [0u8; 128];
    let n = rustix::fs::lgetxattr(path.as_str(), crate::keymap::ETAG_XATTR, &mut buf).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// Whether the file's MD5 is `etag` (a plain, 32-hex-digit ETag; multipart ETags never match).
fn same_md5(dir: &OwnedFd, name: &str, etag: &str) -> bool {
    let Some(want) = crate::verify::plain_md5(etag) else { return false };
    // Checked as a regular file before, but it may have been replaced since.
    let Ok(fd) = open_regular(dir.as_fd(), Path::new(name)) else { return false };
    crate::verify::md5_of(std::fs::File::from(fd)).is_ok_and(|md5| md5 == want)
}

/// Opens `path` (relative to `dir`, or absolute) for reading only if it is a regular file at
/// that name: not through a symbolic link, and never blocking on a FIFO or a device put in
/// its place by someone who can write there (`O_NOFOLLOW | O_NONBLOCK`, then `fstat`).
pub(crate) fn open_regular(dir: BorrowedFd<'_>, path: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, path, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP => std::io::Error::other("it is a symbolic link"),
        e => e.into(),
    })?;
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(fd)
}

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keymap::map_key;
    use std::time::Duration;

    #[test]
    fn a_fifo_swapped_in_for_the_file_is_not_read() {
        // The file is checked as a regular file, then opened to hash it: someone who can
        // write into DEST may put a FIFO there in between. Opening it must not block.
        let dir = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("f").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let root = rustix::fs::open(dir.path(), dir_flags(), Mode::empty()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(same_md5(&root, "f", "5d41402abc4b2a76b9719d911017c592")));
        let got = rx.recv_timeout(Duration::from_secs(30));
        assert_eq!(got.ok(), Some(false), "hashing a FIFO blocked (or matched)");
    }

    #[test]
    fn size_and_mtime_decide_and_symlinks_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/f"), b"hello").unwrap();
        std::fs::write(outside.path().join("g"), b"hello").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let lm = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let f = std::fs::File::options().write(true).open(dir.path().join("a/f")).unwrap();
        f.set_modified(lm).unwrap();

        let t = |k: &str| map_key(k).unwrap();
        let open = |mode| Existing::new(open_dest(dir.path()).unwrap(), mode);
        let mut ex = open(ExistingMode::Compare);
        assert!(ex.is_done(&t("a/f"), 5, Some(lm), None));
        assert!(!ex.is_done(&t("a/f"), 6, Some(lm), None), "size differs");
        assert!(!ex.is_done(&t("a/f"), 5, Some(lm + Duration::from_secs(1)), None), "mtime differs");
        assert!(!ex.is_done(&t("a/f"), 5, None, None), "no LastModified: cannot tell");
        let later = Some(lm + Duration::from_secs(1));
        let md5 = "5d41402abc4b2a76b9719d911017c592"; // of "hello"
        assert!(ex.is_done(&t("a/f"), 5, later, Some(&format!("\"{md5}\""))), "mtime differs, MD5 matches");
        assert!(!ex.is_done(&t("a/f"), 5, later, Some("5d41402abc4b2a76b9719d911017c593")), "MD5 differs");
        assert!(!ex.is_done(&t("a/f"), 5, later, Some(&format!("{md5}-2"))), "a multipart ETag is no MD5");
        assert!(!ex.is_done(&t("a/f"), 6, later, Some(md5)), "size first");
        assert!(!ex.is_done(&t("a/missing"), 5, Some(lm), None));
        assert!(!ex.is_done(&t("b/f"), 5, Some(lm), None), "missing directory");
        assert!(!ex.is_done(&t("a"), 0, Some(lm), None), "a directory is not a file");
        assert!(!ex.is_done(&t("link/g"), 5, None, None), "never through a symlink");

        let mut skip = open(ExistingMode::SkipExisting);
        assert!(skip.is_done(&t("a/f"), 999, None, None));
        assert!(!skip.is_done(&t("link/g"), 5, None, None));
        let mut over = open(ExistingMode::Overwrite);
        assert!(!over.is_done(&t("a/f"), 5, Some(lm), None));
    }
}
