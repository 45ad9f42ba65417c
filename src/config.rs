//! The resolved, validated configuration of one copy. `cli` turns flags into a [`Config`];
//! the pipeline never sees clap types. Everything here is checked before any request is made.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// `s3://bucket[/prefix]`, with the prefix treated as a directory: `s3://b/images` and
/// `s3://b/images/` both copy the keys under `images/` (as `aws s3 cp --recursive` does), so
/// `images2/x` is never pulled in by accident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
    /// The text after the bucket when it does not end in `/`: it may name one object
    /// (`s3://bucket/key` copies that object when it exists; see the pipeline).
    pub object: Option<String>,
}

impl FromStr for S3Url {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("SOURCE '{s}' is not an s3:// URL (expected s3://bucket[/prefix])"))?;
        let (bucket, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            return Err(format!("SOURCE '{s}' has no bucket name (expected s3://bucket[/prefix])"));
        }
        if bucket.len() > 255
            || !bucket.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return Err(format!("SOURCE '{s}': '{bucket}' is not a valid bucket name"));
        }
        let object = (!prefix.is_empty() && !prefix.ends_with('/')).then(|| prefix.to_owned());
        let mut prefix = prefix.to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Url { bucket: bucket.to_owned(), prefix, object })
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Which writer puts files on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IoEngine {
    /// The thread pool (one thread per core, at most 16: measured cheaper than the ring for
    /// small files, whose creates and renames io_uring always hands to io-wq workers); with
    /// `--fsync` io_uring if this kernel and sandbox allow it (each chain waits on the disk
    /// in its own io-wq worker), else the thread pool (said once).
    Auto,
    /// io_uring linked chains; fail at start if io_uring is unavailable.
    Uring,
    /// A bounded pool of threads doing plain syscalls.
    Threads,
}

/// What sends the GETs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FetchEngine {
    /// hyper keep-alive connections shared by the fetch tasks, opened as the GETs in flight
    /// need them, signed with aws-sigv4 (the SDK's endpoint rules and credentials); ~4× less
    /// CPU per object than `sdk`.
    Lean,
    /// aws-sdk-s3's GetObject: the reference engine.
    Sdk,
}

/// Where credentials come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// aws-config's default chain: environment, profile files, SSO, web identity, IMDS.
    #[default]
    DefaultChain,
    /// `--no-sign-request`: anonymous requests.
    Anonymous,
    /// Fixed keys (the embedded endpoint's demo).
    Static { access_key: String, secret_key: String },
}

/// S3 connection settings: everything the control plane needs to build a client.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub credentials: Credentials,
    /// `--force-path-style`; `None`: on when an endpoint URL is configured (the flag,
    /// `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3` or the profile's `endpoint_url`).
    pub force_path_style: Option<bool>,
    /// `--request-payer`: accept the charges of a Requester Pays bucket.
    pub requester_pays: bool,
    /// `--ca-bundle` / `AWS_CA_BUNDLE`: trust exactly these certificates for HTTPS.
    pub ca_bundle: Option<CaBundle>,
    /// Connect through the proxies `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`
    /// name, as the AWS CLI does (false: always directly, for the demo's in-process endpoint).
    pub proxies: bool,
}

/// A PEM file of trusted CA certificates (`--ca-bundle`, or `AWS_CA_BUNDLE` as the AWS CLI
/// reads it). As in the AWS CLI, it replaces the system's trust store for both engines.
#[derive(Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    /// The certificates, DER-encoded.
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The file as read (the SDK's trust store takes PEM).
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaBundle({}, {} certificates)", self.path.display(), self.certs.len())
    }
}

impl CaBundle {
    /// Reads and checks the file: it must hold at least one PEM certificate, and every one
    /// must parse as a trust anchor.
    pub fn load(path: &std::path::Path) -> Result<CaBundle, String> {
        use rustls::pki_types::pem::PemObject as _;
        let shown = path.display();
        let pem = std::fs::read(path).map_err(|e| format!("cannot read --ca-bundle '{shown}': {e}"))?;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--ca-bundle '{shown}' is not a PEM certificate file: {e}"))?;
        if certs.is_empty() {
            return Err(format!("--ca-bundle '{shown}' holds no PEM certificate"));
        }
        // Every certificate must be usable as a trust anchor: one quietly dropped is a CA
        // the user meant to trust (and the SDK's TLS setup aborts the process on it).
        for (i, cert) in certs.iter().enumerate() {
            rustls::RootCertStore::empty().add(cert.clone()).map_err(|e| {
                format!("--ca-bundle '{shown}': certificate {} of {} cannot be used: {e}", i + 1, certs.len())
            })?;
        }
        Ok(CaBundle { path: path.to_owned(), certs, pem })
    }
}

/// One copy, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: S3Url,
    pub dest: PathBuf,
    pub s3: S3Settings,
    /// Concurrent GETs (long-lived fetch tasks).
    pub workers: usize,
    /// Capacity of the key queue between lister and fetchers.
    pub queue: usize,
    pub io_engine: IoEngine,
    pub fetch_engine: FetchEngine,
    /// What to do with files already in DEST (default: skip when size and mtime match).
    pub existing: crate::existing::ExistingMode,
    /// `--hedge-after MS`: re-issue a small GET still unanswered after this long (0: never).
    pub hedge_after_ms: u64,
    /// `--fsync`: every file durable before it counts as written.
    pub fsync: bool,
    /// Whether bodies are checked against their checksum or MD5 ETag: by default where the
    /// object has one, `--verify` insists, `--no-verify` does not check.
    pub verify: Verify,
    /// Retries of a GET that failed transiently before the key fails (throttling answers
    /// spend none: see [`crate::fetch::throttle`]).
    pub retries: u32,
    /// `--max-rate`: GETs per second at most, over the whole run (`None`: as many as the
    /// service accepts).
    pub max_rate: Option<f64>,
    /// `--stall-timeout`: a run whose GETs are all throttled for this long stops.
    pub stall_timeout: std::time::Duration,
    /// `--io-threads`: threads of the portable writer and the ring's io-wq cap; `None`: their
    /// defaults ([`default_io_threads`] for the pool, 16 for the ring).
    pub io_threads: Option<usize>,
    /// Bytes of object bodies held between GET and disk, at most (one larger object may
    /// still pass alone).
    pub buffer_bytes: u64,
    /// Print the summary (off with `--quiet`).
    pub summary: bool,
    /// Live progress display.
    pub progress: crate::console::ProgressMode,
    /// Write the run's statistics here as JSON.
    pub stats_json: Option<PathBuf>,
    /// `--failed-keys FILE`: one failed key per line, with its reason.
    pub failed_keys: Option<PathBuf>,
    /// `--keys-from FILE`: copy these keys instead of listing.
    pub keys_from: Option<PathBuf>,
    /// `--manifest`: copy the keys of this S3 Inventory report instead of listing.
    pub manifest: Option<Location>,
    /// `--include`/`--exclude`/`--shard`: which keys this run copies.
    pub selection: crate::select::Selection,
    /// `--dry-run`: list and print, copy nothing.
    pub dry_run: bool,
    /// `--list-workers`: concurrent ListObjectsV2 requests (1: one sequential listing).
    pub list_workers: usize,
    /// `--version-id`: the version of the single object to copy.
    pub version_id: Option<String>,
    /// Set by the pipeline when SOURCE names one object: that key, and the file it becomes.
    pub single: Option<Single>,
    /// Large objects: above `threshold` bytes, fetched in ranged parts of `part_size` bytes,
    /// `concurrency` parts per object at once.
    pub parts: Parts,
}

/// `--multipart-threshold`, `--part-size`, `--part-concurrency`.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub threshold: u64,
    pub part_size: u64,
    pub concurrency: usize,
}

impl Default for Parts {
    fn default() -> Parts {
        Parts {
            threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            concurrency: DEFAULT_PART_CONCURRENCY,
        }
    }
}

/// A single-object copy: `key` is written as `name` in DEST.
#[derive(Debug, Clone)]
pub struct Single {
    pub key: String,
    pub name: String,
    pub size: u64,
    pub last_modified: Option<std::time::SystemTime>,
}

impl Config {
    /// Defaults for everything but source and destination; used by the demo and tests.
    pub fn new(source: S3Url, dest: PathBuf, s3: S3Settings) -> Config {
        Config {
            source,
            dest,
            s3,
            workers: DEFAULT_WORKERS,
            queue: DEFAULT_QUEUE,
            io_engine: IoEngine::Auto,
            fetch_engine: FetchEngine::Lean,
            existing: crate::existing::ExistingMode::Compare,
            retries: DEFAULT_RETRIES,
            max_rate: None,
            stall_timeout: std::time::Duration::from_secs(DEFAULT_STALL_TIMEOUT_S),
            verify: Verify::On,
            fsync: false,
            hedge_after_ms: DEFAULT_HEDGE_AFTER_MS,
            io_threads: None,
            buffer_bytes: DEFAULT_BUFFER_MIB << 20,
            summary: true,
            progress: crate::console::ProgressMode::Off,
            stats_json: None,
            failed_keys: None,
            keys_from: None,
            manifest: None,
            selection: crate::select::Selection::default(),
            dry_run: false,
            list_workers: DEFAULT_LIST_WORKERS,
            version_id: None,
            single: None,
            parts: Parts::default(),
        }
    }
}

/// Where `--manifest` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 { bucket: String, key: String },
}

impl Location {
    pub fn parse(s: &str) -> Result<Location, String> {
        match s.strip_prefix("s3://") {
            Some(rest) => match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                    Ok(Location::S3 { bucket: bucket.to_owned(), key: key.to_owned() })
                }
                _ => Err(format!("--manifest '{s}' must be s3://bucket/key/of/manifest.json or a local file")),
            },
            None => Ok(Location::Local(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// Default `--workers`: see the README's tuning section and `bench-results/`.
pub const DEFAULT_WORKERS: usize = 512;
/// Default `--queue`.
pub const DEFAULT_QUEUE: usize = 4096;
/// Default `--retries`: with backoff up to ~1.6 s, a key survives ~3 s of errors.
pub const DEFAULT_RETRIES: u32 = 4;
/// Default `--hedge-after`: AWS's advice for small objects is to retry a GET that has not
/// started answering after ~2 s.
pub const DEFAULT_HEDGE_AFTER_MS: u64 = 2000;
/// Default `--stall-timeout`: five minutes of nothing but throttling answers.
pub const DEFAULT_STALL_TIMEOUT_S: u64 = 300;
/// Default `--list-workers`.
pub const DEFAULT_LIST_WORKERS: usize = 32;
/// Default `--io-threads`: one per core, at most 16.
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16)
}
/// Default `--buffer-mib`.
/// The ring's io-wq workers unless `--io-threads` says otherwise.
pub const RING_IO_WORKERS: usize = 16;

pub const DEFAULT_BUFFER_MIB: u64 = 256;
/// Default `--multipart-threshold`: objects above it are fetched in parts.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Default `--part-size` (the AWS CLI's `multipart_chunksize`).
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// Default `--part-concurrency`: ranged GETs of one object at once.
pub const DEFAULT_PART_CONCURRENCY: usize = 8;

/// A size such as `8MiB`, `16M`, `1GiB`, `512KiB` or `4096` (bytes). As in the AWS CLI's
/// configuration, `KB`/`MB`/`GB` are binary units too.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size (e.g. 8MiB, 16M, 1GiB, 4096)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("'{s}' has an unknown unit (use KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_parse_with_directory_prefixes() {
        let u: S3Url = "s3://bucket".parse().unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("bucket", ""));
        let u: S3Url = "s3://bucket/".parse().unwrap();
        assert_eq!(u.prefix, "");
        let u: S3Url = "s3://bucket/images".parse().unwrap();
        assert_eq!(u.prefix, "images/");
        let u: S3Url = "s3://bucket/a/b/".parse().unwrap();
        assert_eq!(u.prefix, "a/b/");
        assert_eq!(u.to_string(), "s3://bucket/a/b/");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("8MB"), Ok(8 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert!(parse_size("8 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn bad_s3_urls_say_why() {
        for bad in ["bucket/x", "http://x", "s3://", "s3:///x", "s3://bad bucket/x", "/tmp/x"] {
            let err = bad.parse::<S3Url>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}

/// How bodies are checked against the checksums their objects carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verify {
    /// `--no-verify`: no checksum asked for, nothing checked (for a store that sends wrong
    /// checksums).
    Off,
    /// The default: every body with a checksum or a plain-MD5 ETag is checked; one with
    /// neither is written unchecked and counted.
    #[default]
    On,
    /// `--verify`: a key whose body could not be checked fails, naming why.
    Strict,
}

impl Verify {
    /// Checksums are asked for and bodies checked.
    pub fn checks(self) -> bool {
        self != Verify::Off
    }

    /// The stats JSON's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Verify::Off => "off",
            Verify::On => "on",
            Verify::Strict => "strict",
        }
    }
}
