//! Key → path mapping: "parse, don't validate".
//!
//! An S3 key is any UTF-8 string of up to 1,024 bytes. A file system path is not: `..`
//! climbs, a leading `/` escapes, empty components collapse, NUL ends the string and each
//! component is limited to `NAME_MAX` (255) bytes. [`map_key`] turns a key (relative to the
//! copy's prefix) into a [`Target`] whose components are each guaranteed to be a single,
//! plain, non-reserved file name — or refuses it with a [`KeyRefused`] reason. The writers
//! only ever see [`Target`]s, and open every component relative to a directory descriptor
//! without following symlinks, so nothing can land outside DEST (invariant 1).
//!
//! What is refused (the rules of mountpoint-s3's `SEMANTICS.md`, plus ours):
//! - NUL anywhere, an empty key, empty components (`a//b`, a leading `/`);
//! - `.` and `..` components;
//! - a component longer than 255 bytes;
//! - a component starting with [`TMP_PREFIX`], the prefix of our own temporary names, in any
//!   case (a DEST that does not tell case apart would see `.S3URING-TMP.` as ours), so a
//!   temporary file can never collide with (or be mistaken for) a key's file.
//!
//! A key ending in `/` is a folder marker: it maps to a directory and writes no file.
//!
//! Accepted keys map to distinct paths, byte for byte. A DEST that does not tell upper from
//! lower case (exFAT, vfat, SMB shares, casefold directories) joins some of them: there the
//! copy keeps a [`CaseGuard`], which lets only the first key of each such group through.

use std::fmt;

/// Longest file name component Linux accepts (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Prefix of the temporary names the writers use. Keys with a component starting with it
/// are refused, which is what makes temporary names collision-free.
pub const TMP_PREFIX: &str = ".s3uring-tmp.";

/// The extended attribute holding a file's object's ETag (written by the writer, read by
/// the existing-file check).
pub const ETAG_XATTR: &str = "user.s3uring.etag";

/// The extended attribute holding the checksum a file's content was checked against when it
/// was written, `ALGORITHM:BASE64` (`crc32c:yZRlqg==`; read by `s3uring check`).
pub const CHECKSUM_XATTR: &str = "user.s3uring.checksum";

/// This run's id: 16 random hex digits, the same for all its temporary files.
pub fn run_id() -> &'static str {
    static ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        // fastrand's global generator is seeded from the OS's random hash keys.
        format!("{:016x}", fastrand::u64(..))
    });
    &ID
}

/// Where a key lands, relative to DEST. Every component is a valid single file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The directory part, `/`-joined (empty for DEST itself). Validated component by component.
    dir: String,
    /// The final file name, or empty for a folder marker (the target is `dir` itself).
    name: String,
}

impl Target {
    /// The directory holding the file, relative to DEST, `/`-separated; `""` is DEST.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The file name within [`Target::dir`]; `None` for a folder marker.
    pub fn file_name(&self) -> Option<&str> {
        if self.name.is_empty() { None } else { Some(&self.name) }
    }

    /// The whole relative path, for messages.
    pub fn rel_path(&self) -> String {
        match (self.dir.is_empty(), self.name.is_empty()) {
            (true, _) => self.name.clone(),
            (false, true) => self.dir.clone(),
            (false, false) => format!("{}/{}", self.dir, self.name),
        }
    }
}

/// Why a key cannot be written under DEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefused {
    /// The key (after removing the prefix) is empty: nothing to name a file by.
    Empty,
    /// The key contains a NUL byte.
    Nul,
    /// An empty component: `a//b` or a leading `/`.
    EmptyComponent,
    /// A `.` or `..` component.
    DotComponent(&'static str),
    /// A component longer than [`NAME_MAX`] bytes.
    ComponentTooLong(usize),
    /// A component uses the prefix reserved for temporary files.
    Reserved,
}

impl fmt::Display for KeyRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRefused::Empty => write!(f, "unsafe key: empty name"),
            KeyRefused::Nul => write!(f, "unsafe key: contains a NUL byte"),
            KeyRefused::EmptyComponent => {
                write!(f, "unsafe key: empty path component ('//' or a leading '/')")
            }
            KeyRefused::DotComponent(c) => write!(f, "unsafe key: '{c}' path component"),
            KeyRefused::ComponentTooLong(n) => {
                write!(f, "unsafe key: a path component is {n} bytes, more than {NAME_MAX}")
            }
            KeyRefused::Reserved => {
                write!(f, "unsafe key: a path component starts with '{TMP_PREFIX}', reserved for temporary files")
            }
        }
    }
}

impl std::error::Error for KeyRefused {}

fn check_component(c: &str) -> Result<(), KeyRefused> {
    match c {
        "" => Err(KeyRefused::EmptyComponent),
        "." => Err(KeyRefused::DotComponent(".")),
        ".." => Err(KeyRefused::DotComponent("..")),
        _ if c.len() > NAME_MAX => Err(KeyRefused::ComponentTooLong(c.len())),
        _ if c.as_bytes().get(..TMP_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(TMP_PREFIX.as_bytes())) => {
            Err(KeyRefused::Reserved)
        }
        _ => Ok(()),
    }
}

/// Maps `rel_key` (the key with the copy's prefix removed) to its [`Target`] under DEST.
pub fn map_key(rel_key: &str) -> Result<Target, KeyRefused> {
    if rel_key.is_empty() {
        return Err(KeyRefused::Empty);
    }
    if rel_key.contains('\0') {
        return Err(KeyRefused::Nul);
    }
    // A folder marker: everything before the trailing '/' is a directory.
    let (path, is_dir) = match rel_key.strip_suffix('/') {
        Some(p) => (p, true),
        None => (rel_key, false),
    };
    if path.is_empty() {
        // The key is exactly "/" (or the prefix's own marker, which the caller skips).
        return Err(KeyRefused::EmptyComponent);
    }
    for c in path.split('/') {
        check_component(c)?;
    }
    if is_dir {
        return Ok(Target { dir: path.to_owned(), name: String::new() });
    }
    let (dir, name) = match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    };
    Ok(Target { dir: dir.to_owned(), name: name.to_owned() })
}

/// For a DEST whose file system does not tell upper from lower case: each file admitted so
/// far, as a hash of its lower-cased path and a hash of its exact path (17–36 bytes a file in
/// the table, not the names, so a run of millions of keys stays small). A second key whose
/// file would be the same file there is refused rather than renamed over the first.
/// Lower-casing is the common part of what such file systems fold (exFAT and SMB up-case by a
/// table, casefold directories also normalise Unicode); a pair it does not join is caught at
/// the rename instead (`writer::settle_rename`). Two different paths with equal 64-bit
/// hashes (about 3 chances in 10^8 at a million files) would fail the second one with this
/// same explanation, never lose it.
#[derive(Debug, Default)]
pub struct CaseGuard {
    seen: std::collections::HashMap<u64, u64>,
}

impl CaseGuard {
    /// Admits `target`'s file, or says why not. Folder markers make directories, which two
    /// keys may share; the same key twice (a key list naming it twice) is one file.
    pub fn admit(&mut self, target: &Target) -> Result<(), String> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        if target.file_name().is_none() {
            return Ok(());
        }
        let hash = |s: &str| BuildHasherDefault::<DefaultHasher>::default().hash_one(s);
        let path = target.rel_path();
        let exact = hash(&path);
        match *self.seen.entry(hash(&path.to_lowercase())).or_insert(exact) {
            first if first == exact => Ok(()),
            _ => Err(format!(
                "another key that differs from it only in case takes the same file, '{path}' (DEST does not tell \
                 upper from lower case); copy to a case-sensitive file system, or --exclude one of them"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_map_to_dir_and_name() {
        let t = map_key("a/b/c.jpg").unwrap();
        assert_eq!((t.dir(), t.file_name()), ("a/b", Some("c.jpg")));
        assert_eq!(t.rel_path(), "a/b/c.jpg");
        let t = map_key("top").unwrap();
        assert_eq!((t.dir(), t.file_name()), ("", Some("top")));
        assert_eq!(t.rel_path(), "top");
    }

    #[test]
    fn folder_markers_are_directories() {
        let t = map_key("a/b/").unwrap();
        assert_eq!((t.dir(), t.file_name()), ("a/b", None));
        assert_eq!(t.rel_path(), "a/b");
    }

    #[test]
    fn unusual_but_safe_names_pass() {
        for k in ["with space", "ünïcødé/ß", "a+b=c", "100%", "#hash", "q?x=1", "...", ".hidden", "a/..x"] {
            assert!(map_key(k).is_ok(), "{k}");
        }
        let long = "x".repeat(255);
        assert!(map_key(&format!("d/{long}")).is_ok());
    }

    #[test]
    fn hostile_keys_are_refused() {
        let cases: &[(&str, KeyRefused)] = &[
            ("", KeyRefused::Empty),
            ("../x", KeyRefused::DotComponent("..")),
            ("a/../../x", KeyRefused::DotComponent("..")),
            ("./x", KeyRefused::DotComponent(".")),
            (".", KeyRefused::DotComponent(".")),
            ("..", KeyRefused::DotComponent("..")),
            ("a/..", KeyRefused::DotComponent("..")),
            ("../", KeyRefused::DotComponent("..")),
            ("/abs", KeyRefused::EmptyComponent),
            ("a//b", KeyRefused::EmptyComponent),
            ("/", KeyRefused::EmptyComponent),
            ("a//", KeyRefused::EmptyComponent),
            ("nul\0x", KeyRefused::Nul),
            (".s3uring-tmp.1.2", KeyRefused::Reserved),
            ("d/.s3uring-tmp.x/y", KeyRefused::Reserved),
            (".S3URING-TMP.0123456789ABCDEF.1", KeyRefused::Reserved),
        ];
        for (k, want) in cases {
            assert_eq!(map_key(k).as_ref(), Err(want), "{k:?}");
        }
        let long = "x".repeat(256);
        assert_eq!(map_key(&long), Err(KeyRefused::ComponentTooLong(256)));
        assert_eq!(map_key(&format!("{long}/a")), Err(KeyRefused::ComponentTooLong(256)));
    }

    /// Reference model: a key is accepted exactly when joining its components under a
    /// root and normalising stays strictly below the root with the same components.
    #[test]
    fn accepted_keys_never_escape() {
        let alphabet = ["a", "b", ".", "..", "/", "", ".s3uring-tmp.", "\0"];
        // Every key of up to 4 symbols from the alphabet.
        let mut keys = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for k in &keys {
                for s in alphabet {
                    next.push(format!("{k}{s}"));
                }
            }
            keys.extend(next);
        }
        for k in keys {
            if let Ok(t) = map_key(&k) {
                let rel = t.rel_path();
                let p = std::path::Path::new(&rel);
                assert!(p.is_relative(), "{k:?}");
                for c in p.components() {
                    assert!(matches!(c, std::path::Component::Normal(_)), "{k:?} -> {rel:?}");
                }
                assert_eq!(rel.split('/').count(), p.components().count(), "{k:?}");
            }
        }
    }

    #[test]
    fn the_case_guard_admits_one_key_per_case_folded_file() {
        let mut guard = CaseGuard::default();
        let mut admit = |k: &str| guard.admit(&map_key(k).unwrap());
        assert_eq!(admit("Dir/A.txt"), Ok(()));
        let err = admit("dir/a.TXT").unwrap_err();
        assert!(
            err.starts_with("another key that differs from it only in case takes the same file, 'dir/a.TXT'"),
            "{err}"
        );
        // The same key twice (a key list naming it twice) is one file, not a clash.
        assert_eq!(admit("Dir/A.txt"), Ok(()));
        // Directories may be shared; other names in them are other files.
        assert_eq!(admit("DIR/"), Ok(()));
        assert_eq!(admit("dir/b.txt"), Ok(()));
        assert_eq!(admit("ÜBER/x"), Ok(()));
        assert!(admit("über/x").is_err());
    }
}
