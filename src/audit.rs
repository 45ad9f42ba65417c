//! `s3uring check SOURCE DEST`: audits a restored tree against the store without downloading
//! it. Every selected key must have a file of its size and time (a directory for a key
//! ending in `/`); a file that kept the checksum it was checked against when written
//! (`user.s3uring.checksum`) is read and must still have it; with `--checksum`, every file is
//! read and compared with the checksum a HeadObject returns (or its ETag's MD5). Files under
//! DEST that no selected key names are extra. What an operator runs after a restore.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::keymap::{CHECKSUM_XATTR, TMP_PREFIX};
use crate::s3::{Control, ListedObject};
use crate::source::listing::Lister;

/// What `check` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Audit {
    /// Selected keys listed.
    pub keys: u64,
    /// Keys whose file (or directory) is there and matches.
    pub ok: u64,
    /// Files whose content was read and matched a checksum (kept, or the store's).
    pub content_checked: u64,
    /// Files that matched by size and time only (no checksum to read them against).
    pub content_unchecked: u64,
    /// Paths of keys with no file.
    pub missing: Vec<String>,
    /// Paths whose file differs, and how.
    pub different: Vec<Different>,
    /// Files under DEST that no selected key names.
    pub extra: Vec<String>,
    /// Keys that cannot be a path here (refused as a copy refuses them).
    pub refused: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Different {
    pub path: String,
    pub reason: String,
}

impl Audit {
    /// Nothing missing, different or extra.
    pub fn clean(&self) -> bool {
        self.missing.is_empty() && self.different.is_empty() && self.extra.is_empty()
    }
}

/// Lists SOURCE and compares DEST with it (`checksum`: read every file against the store's
/// checksum from a HEAD). `Err` is a setup or listing failure: the audit is not complete.
pub async fn check(cfg: &Config, control: &Control, checksum: bool) -> Result<Audit, String> {
    let lists = Arc::new(crate::fetch::sdk::SdkLists { client: control.client_with_retries(cfg.retries) });
    let mut lister = Lister::new(lists, &cfg.source, cfg.s3.requester_pays);
    let head = control.client_with_retries(cfg.retries);
    let mut audit = Audit::default();
    let mut expected = HashSet::new();
    while let Some(page) = lister.next_page().await {
        for o in page? {
            let Some(rel) = o.key.strip_prefix(cfg.source.prefix.as_str()).filter(|r| !r.is_empty()) else { continue };
            if !cfg.selection.selects(&o.key, rel) {
                continue;
            }
            audit.keys += 1;
            let target = match crate::keymap::map_key(rel) {
                Ok(t) => t,
                Err(_) => {
                    audit.refused.push(o.key.clone());
                    continue;
                }
            };
            let path = target.rel_path();
            expected.insert(path.clone());
            let store_checksum = match (checksum, target.file_name()) {
                (true, Some(_)) => Some(store_checksum(&head, cfg, &o).await),
                _ => None,
            };
            let dest = cfg.dest.clone();
            let is_dir = target.file_name().is_none();
            let verdict = tokio::task::spawn_blocking(move || compare(&dest, &path, is_dir, &o, store_checksum))
                .await
                .map_err(|e| format!("internal error: {e}"))?;
            audit.count(target.rel_path(), verdict);
        }
    }
    let dest = cfg.dest.clone();
    audit.extra = tokio::task::spawn_blocking(move || extra_files(&dest, &expected))
        .await
        .map_err(|e| format!("internal error: {e}"))??;
    Ok(audit)
}

/// How one key's file compared.
enum Verdict {
    Missing,
    Different(String),
    /// Matches; its content was read against a checksum.
    Checked,
    /// Matches by size and time; nothing to read it against.
    Unchecked,
}

impl Audit {
    fn count(&mut self, path: String, verdict: Verdict) {
        match verdict {
            Verdict::Missing => self.missing.push(path),
            Verdict::Different(reason) => self.different.push(Different { path, reason }),
            Verdict::Checked => {
                self.ok += 1;
                self.content_checked += 1;
            }
            Verdict::Unchecked => {
                self.ok += 1;
                self.content_unchecked += 1;
            }
        }
    }
}

/// The store's word on an object's content: a whole-object checksum (`ALGORITHM:BASE64`),
/// else its ETag when that is an MD5 (`md5:HEX`); `Err` when the HEAD failed.
async fn store_checksum(client: &aws_sdk_s3::Client, cfg: &Config, o: &ListedObject) -> Result<Option<String>, String> {
    let integrity =
        crate::fetch::sdk::head_integrity(client, &cfg.source.bucket, &o.key, None, cfg.s3.requester_pays).await?;
    Ok(crate::verify::kept_checksum(&integrity)
        .or_else(|| crate::verify::etag_md5(&integrity).map(|md5| format!("md5:{md5}"))))
}

/// Compares the file at `rel` under `dest` with the listed object.
fn compare(
    dest: &Path,
    rel: &str,
    is_dir: bool,
    o: &ListedObject,
    store: Option<Result<Option<String>, String>>,
) -> Verdict {
    let path = dest.join(rel);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Verdict::Missing,
        Err(e) => return Verdict::Different(format!("cannot stat it: {e}")),
    };
    if is_dir {
        return if meta.is_dir() { Verdict::Unchecked } else { Verdict::Different("not a directory".into()) };
    }
    if !meta.file_type().is_file() {
        return Verdict::Different("not a regular file".into());
    }
    if meta.len() != o.size && o.size != crate::s3::UNKNOWN_SIZE {
        return Verdict::Different(format!("{} bytes, the object has {}", meta.len(), o.size));
    }
    let file_time = (u64::try_from(meta.mtime()).unwrap_or(u64::MAX), meta.mtime_nsec() as u32);
    if let Some(lm) = o.last_modified
        && !crate::existing::same_time(file_time, lm)
    {
        return Verdict::Different(format!("modified at {}, the object at {}", time(file_time), rfc3339(lm)));
    }
    let (want, whose) = match store {
        Some(Err(why)) => return Verdict::Different(format!("cannot ask the store for its checksum: {why}")),
        Some(Ok(Some(sum))) => (sum, "the store's"),
        Some(Ok(None)) => return Verdict::Unchecked,
        None => match kept(&path) {
            Some(sum) => (sum, "the one kept when it was written"),
            None => return Verdict::Unchecked,
        },
    };
    match content_matches(&path, &want) {
        Ok(true) => Verdict::Checked,
        Ok(false) => Verdict::Different(format!("content does not match {whose} {want}")),
        Err(why) => Verdict::Different(why),
    }
}

/// The checksum a file kept in `user.s3uring.checksum`.
fn kept(path: &Path) -> Option<String> {
    let mut buf = [0u8; 256];
    let n = rustix::fs::lgetxattr(path, CHECKSUM_XATTR, &mut buf).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// Whether the file's content has checksum `want` (`ALGORITHM:BASE64`, or `md5:HEX`).
fn content_matches(path: &Path, want: &str) -> Result<bool, String> {
    let file = crate::existing::open_regular(rustix::fs::CWD, path).map_err(|e| format!("cannot open it: {e}"))?;
    let file = std::fs::File::from(file);
    let unreadable = |e: std::io::Error| format!("cannot read it: {e}");
    if let Some(md5) = want.strip_prefix("md5:") {
        return Ok(crate::verify::md5_of(file).map_err(unreadable)? == md5);
    }
    let Some((algorithm, _, value)) = crate::verify::parse_kept(want) else {
        return Err(format!("kept checksum '{want}' is not one this version knows"));
    };
    Ok(crate::verify::checksum_of(algorithm, file).map_err(unreadable)? == value)
}

/// Files and links under `dest` (links not followed) that no expected path names; a copy's
/// temporaries are extra too.
fn extra_files(dest: &Path, expected: &HashSet<String>) -> Result<Vec<String>, String> {
    let mut extra = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let entries = std::fs::read_dir(dest.join(&rel))
            .map_err(|e| format!("cannot read directory '{}': {e}", dest.join(&rel).display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read directory '{}': {e}", dest.join(&rel).display()))?;
            let path = rel.join(entry.file_name());
            let name = path.to_string_lossy().into_owned();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                dirs.push(path);
            } else if !expected.contains(&name) {
                extra.push(name);
            }
        }
    }
    extra.sort();
    Ok(extra)
}

fn rfc3339(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| format!("{t:?}"))
}

fn time((secs, nanos): (u64, u32)) -> String {
    rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
}
