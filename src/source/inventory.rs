//! `--manifest`: an S3 Inventory report as the list of keys to copy.
//!
//! S3 Inventory publishes, per run, a `manifest.json` naming the source bucket, the CSV
//! column order (`fileSchema`) and the gzip-compressed CSV data files holding one row per
//! object. Reading it replaces the listing: no ListObjectsV2 at all, which for 100 million
//! keys saves hours of paging. The manifest is read from a local file or from S3
//! (`s3://bucket/…/manifest.json`, its data files then from the inventory's destination
//! bucket); locally, data files are found by their key under the manifest's directory or any
//! directory above it (the layout `aws s3 sync` of the inventory prefix gives).
//!
//! Rows are streamed — gzip-decoded and parsed on a blocking thread, 1,000 keys a page into
//! the same bounded queue as a listing — so memory does not grow with the inventory. Keys
//! are URL-encoded in inventory CSV (form encoding: `+` is a space) and are decoded here.
//! Rows of older versions (`IsLatest` false) and delete markers are left out; keys outside
//! SOURCE's prefix are left out and counted (`inventory_left_out`). Size and LastModifiedDate feed the
//! skip check exactly like a listing's; the ETag lets that check recognise, by MD5, a file
//! whose size matches but whose mtime does not (a file restored by another tool).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::config::Location;
use crate::queue::KEYS_PER_PAGE;
use crate::report::Report;
use crate::s3::ListedObject;

/// The parts of `manifest.json` this tool uses.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson {
    source_bucket: String,
    #[serde(default)]
    destination_bucket: Option<String>,
    file_format: String,
    file_schema: String,
    files: Vec<DataFile>,
}

#[derive(Debug, serde::Deserialize)]
struct DataFile {
    key: String,
}

/// Column positions, from `fileSchema`.
#[derive(Debug, Clone, Copy)]
struct Columns {
    key: usize,
    size: Option<usize>,
    last_modified: Option<usize>,
    etag: Option<usize>,
    is_latest: Option<usize>,
    is_delete_marker: Option<usize>,
}

impl Columns {
    fn from_schema(schema: &str) -> Result<Columns, String> {
        let names: Vec<&str> = schema.split(',').map(str::trim).collect();
        let at = |name: &str| names.iter().position(|n| n.eq_ignore_ascii_case(name));
        Ok(Columns {
            key: at("Key").ok_or_else(|| format!("its fileSchema has no Key column: '{schema}'"))?,
            size: at("Size"),
            last_modified: at("LastModifiedDate"),
            etag: at("ETag"),
            is_latest: at("IsLatest"),
            is_delete_marker: at("IsDeleteMarker"),
        })
    }
}

/// A parsed manifest, ready to stream its rows.
pub struct Manifest {
    location: Location,
    /// Bucket holding the data files (for an S3 manifest).
    data_bucket: String,
    columns: Columns,
    files: Vec<String>,
}

impl Manifest {
    /// Reads and checks `manifest.json`: CSV format, a Key column, and a source bucket that
    /// is SOURCE's.
    pub async fn open(
        location: Location,
        client: &aws_sdk_s3::Client,
        source_bucket: &str,
    ) -> Result<Manifest, String> {
        let text = match &location {
            Location::Local(p) => {
                std::fs::read(p).map_err(|e| format!("cannot read --manifest '{}': {e}", p.display()))?
            }
            Location::S3 { bucket, key } => get_all(client, bucket, key).await?,
        };
        let bad = |why: String| format!("--manifest '{location}': {why}");
        let m: ManifestJson =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not an S3 Inventory manifest.json ({e})")))?;
        if !m.file_format.eq_ignore_ascii_case("CSV") {
            return Err(bad(format!(
                "its data files are {}; only CSV inventories can be read (configure the inventory with CSV output)",
                m.file_format
            )));
        }
        if m.source_bucket != source_bucket {
            return Err(bad(format!("it lists bucket '{}', but SOURCE is bucket '{source_bucket}'", m.source_bucket)));
        }
        let columns = Columns::from_schema(&m.file_schema).map_err(bad)?;
        let data_bucket = match (&location, &m.destination_bucket) {
            // "arn:aws:s3:::bucket" (any partition).
            (_, Some(arn)) => arn.rsplit(":::").next().unwrap_or(arn).to_owned(),
            (Location::S3 { bucket, .. }, None) => bucket.clone(),
            (Location::Local(_), None) => String::new(),
        };
        Ok(Manifest { location, data_bucket, columns, files: m.files.into_iter().map(|f| f.key).collect() })
    }

    /// Streams the rows as pages of keys under `prefix` (blocking thread; S3 data files are
    /// read through `client` on the current runtime).
    pub fn start(
        self,
        client: aws_sdk_s3::Client,
        prefix: String,
        report: Arc<Report>,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<ListedObject>, String>> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut page = Vec::with_capacity(KEYS_PER_PAGE);
            for file in &self.files {
                let read = self.open_data(file, &client, &handle).and_then(|input| {
                    self.rows(input, &prefix, &report, &mut |o| {
                        page.push(o);
                        if page.len() == KEYS_PER_PAGE {
                            return tx.blocking_send(Ok(std::mem::take(&mut page))).is_ok();
                        }
                        true
                    })
                    .map_err(|e| format!("inventory data file '{file}': {e}"))
                });
                match read {
                    Ok(true) => {}
                    Ok(false) => return, // the pipeline stopped listening
                    Err(e) => {
                        if !page.is_empty() {
                            let _ = tx.blocking_send(Ok(std::mem::take(&mut page)));
                        }
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            if !page.is_empty() {
                let _ = tx.blocking_send(Ok(page));
            }
        });
        rx
    }

    /// A data file's bytes, gzip-decoded.
    fn open_data(
        &self,
        key: &str,
        client: &aws_sdk_s3::Client,
        handle: &tokio::runtime::Handle,
    ) -> Result<Box<dyn Read + Send>, String> {
        let raw: Box<dyn Read + Send> = match &self.location {
            Location::Local(manifest) => {
                let path = find_local(manifest, key).ok_or_else(|| {
                    format!(
                        "inventory data file '{key}' not found under '{}' or a directory above it",
                        manifest.parent().unwrap_or(Path::new(".")).display()
                    )
                })?;
                Box::new(std::fs::File::open(&path).map_err(|e| format!("cannot read '{}': {e}", path.display()))?)
            }
            Location::S3 { .. } => {
                let bucket = &self.data_bucket;
                let out = handle.block_on(client.get_object().bucket(bucket).key(key).send()).map_err(|e| {
                    format!("cannot read s3://{bucket}/{key}: {}", crate::s3::describe(&e, Some(bucket)))
                })?;
                let body = out.body.into_async_read();
                Box::new(tokio_util::io::SyncIoBridge::new_with_handle(body, handle.clone()))
            }
        };
        let gz = key.ends_with(".gz");
        Ok(if gz { Box::new(flate2::read::MultiGzDecoder::new(raw)) } else { raw })
    }

    /// Parses rows, handing each object to `emit` (which returns false to stop); `Ok(false)`
    /// when stopped.
    fn rows(
        &self,
        input: Box<dyn Read + Send>,
        prefix: &str,
        report: &Report,
        emit: &mut dyn FnMut(ListedObject) -> bool,
    ) -> Result<bool, String> {
        let c = self.columns;
        let mut csv = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(input);
        let mut record = csv::StringRecord::new();
        let mut left_out = 0u64;
        let mut line = 0u64;
        loop {
            match csv.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(format!("row {}: {e}", line + 1)),
            }
            line += 1;
            let field = |i: Option<usize>| i.and_then(|i| record.get(i)).map(str::trim).filter(|v| !v.is_empty());
            if field(c.is_delete_marker).is_some_and(|v| v.eq_ignore_ascii_case("true"))
                || field(c.is_latest).is_some_and(|v| v.eq_ignore_ascii_case("false"))
            {
                left_out += 1;
                continue;
            }
            let raw = field(Some(c.key)).ok_or_else(|| format!("row {line} has no key"))?;
            let key = crate::s3::url_decode(raw)
                .ok_or_else(|| format!("row {line}: key '{raw}' is not valid URL-encoded UTF-8"))?;
            if !key.starts_with(prefix) {
                left_out += 1;
                continue;
            }
            let size = match field(c.size) {
                Some(v) => v.parse().map_err(|_| format!("row {line}: size '{v}' is not a number"))?,
                None => crate::s3::UNKNOWN_SIZE,
            };
            let last_modified = field(c.last_modified).and_then(|v| {
                let t = aws_smithy_types::DateTime::from_str(v, aws_smithy_types::date_time::Format::DateTime).ok()?;
                std::time::SystemTime::try_from(t).ok()
            });
            let etag = field(c.etag).map(|v| v.trim_matches('"').to_owned());
            if !emit(ListedObject { key, size, last_modified, archived: None, etag }) {
                report.inventory_left_out(left_out);
                return Ok(false);
            }
        }
        report.inventory_left_out(left_out);
        Ok(true)
    }
}

/// The whole object (a manifest.json is a few KiB), within a minute.
async fn get_all(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
    const WITHIN: std::time::Duration = std::time::Duration::from_secs(60);
    let what = format!("cannot read --manifest s3://{bucket}/{key}");
    tokio::time::timeout(WITHIN, read_all(client, bucket, key, &what))
        .await
        .unwrap_or_else(|_| Err(format!("{what}: no whole answer within {} s", WITHIN.as_secs())))
}

async fn read_all(client: &aws_sdk_s3::Client, bucket: &str, key: &str, what: &str) -> Result<Vec<u8>, String> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("{what}: {}", crate::s3::describe(&e, Some(bucket))))?;
    let body = out.body.collect().await.map_err(|e| format!("{what}: {}", crate::s3::chain(&e)))?;
    Ok(body.into_bytes().to_vec())
}

/// A data file `key` (`prefix/source/config/data/x.csv.gz`) beside a local manifest: the
/// longest tail of the key (of at least two parts, `data/x.csv.gz`) that exists under the
/// manifest's directory or up to three directories above it, else the bare file name in
/// the manifest's own directory.
fn find_local(manifest: &Path, key: &str) -> Option<PathBuf> {
    let parts: Vec<&str> = key.split('/').filter(|p| !p.is_empty() && *p != "..").collect();
    let here = manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    for dir in here.ancestors().take(4) {
        for start in 0..parts.len().saturating_sub(1) {
            let candidate = parts[start..].iter().fold(dir.to_path_buf(), |p, part| p.join(part));
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let bare = here.join(parts.last()?);
    bare.is_file().then_some(bare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_columns_are_found_by_name() {
        let c = Columns::from_schema("Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag")
            .unwrap();
        assert_eq!((c.key, c.size, c.etag, c.is_latest), (1, Some(5), Some(7), Some(3)));
        assert!(Columns::from_schema("Bucket, Size").is_err());
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("s3://inv/a/manifest.json").unwrap(),
            Location::S3 { bucket: "inv".into(), key: "a/manifest.json".into() }
        );
        assert_eq!(Location::parse("m.json").unwrap(), Location::Local("m.json".into()));
        assert!(Location::parse("s3://inv").is_err());
    }

    #[test]
    fn data_files_are_found_above_a_local_manifest() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("src/cfg");
        std::fs::create_dir_all(base.join("2026-11-25T00-00Z")).unwrap();
        std::fs::create_dir_all(base.join("data")).unwrap();
        std::fs::write(base.join("data/x.csv.gz"), b"").unwrap();
        let m = base.join("2026-11-25T00-00Z/manifest.json");
        assert_eq!(find_local(&m, "inv-prefix/src/cfg/data/x.csv.gz"), Some(base.join("data/x.csv.gz")));
        assert_eq!(find_local(&m, "inv-prefix/src/cfg/data/missing.csv.gz"), None);
    }
}
