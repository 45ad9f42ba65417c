//! The embedded S3 endpoint: an in-memory, S3-compatible server on 127.0.0.1.
//!
//! Tests, the README demo (`s3uring demo`) and benchmarks need a real S3 protocol peer
//! without an AWS account and without a network. The wire protocol (routing, XML, error
//! bodies, SigV4 verification) is the `s3s` crate's; this module only stores objects:
//!
//! - buckets filled from a list of `(key, bytes)` — any key S3 allows, hostile ones included
//!   (`../x`, `a//b`, `/abs`), which a directory-backed server such as `s3s-fs` cannot hold;
//! - generated buckets: N keys of SIZE bytes over P prefixes whose content is derived from the
//!   key ([`generated_content`]), so a copy can be verified without keeping a second copy, and
//!   bodies are never held in memory.
//!
//! It answers ListObjectsV2 (prefix, delimiter, continuation token, start-after, max-keys;
//! sorted; at most 1,000 keys a page) and ListObjects v1 (marker; for peers that still use
//! it), GetObject (with Range and If-Match), HeadObject and HeadBucket, with a quoted-MD5 ETag
//! (multipart-style above 64 MiB for generated objects), Content-Length and Last-Modified;
//! over plain HTTP or, given a certificate, HTTPS ([`TlsIdentity`]). Generated objects are
//! produced per range, so a 1 GiB object costs only the bytes asked for.
//!
//! Like S3, it can limit the request rate ([`RateLimit`]): a token bucket per key prefix taken
//! by GETs, HEADs and the list requests that start under it, `503 SlowDown` when it is empty,
//! with limits that change during a run (S3 raises a partition's limit when it splits it).

mod faults;

use faults::{Drawn, Fault, FaultState, Io, Limits};
pub use faults::{FaultCounts, Faults, RateLimit, RateLimitCounts};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Bound;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt as _;
use md5::{Digest, Md5};
use s3s::dto::{
    ChecksumMode, CommonPrefix, ETag, EncodingType, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput,
    HeadObjectInput, HeadObjectOutput, ListObjectsInput, ListObjectsOutput, ListObjectsV2Input, ListObjectsV2Output,
    Object, ObjectStorageClass, Range, RequestPayer, RestoreStatus, StreamingBlob, Timestamp,
};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use tokio::net::TcpListener;

/// Keys S3 returns per list page at most.
const MAX_KEYS: usize = 1000;

/// What a bucket holds.
#[derive(Debug, Clone)]
pub enum Contents {
    /// Exactly these objects.
    Objects(Vec<(String, Bytes)>),
    /// `count` keys of `size` bytes spread over `prefixes` prefixes; see [`generated_key`].
    Generated { count: u64, size: u64, prefixes: u64, layout: Layout },
}

/// One bucket of the endpoint.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    pub name: String,
    pub contents: Contents,
}

/// How to start an [`Endpoint`].
#[derive(Debug, Clone, Default)]
pub struct EndpointConfig {
    pub buckets: Vec<BucketSpec>,
    /// Access key and secret key that requests must be signed with; `None` serves
    /// anonymous requests (a public bucket).
    pub credentials: Option<(String, String)>,
    /// Address to listen on; `None` is 127.0.0.1 with a free port.
    pub listen: Option<SocketAddr>,
    /// Added before each GetObject answers (a timer, not a blocked thread): S3's first byte
    /// for small objects takes ~10–30 ms.
    pub get_latency: Duration,
    /// Added before each ListObjectsV2 page answers.
    pub list_latency: Duration,
    /// Faults injected into a fraction of GETs (what the reliability tests and bench run against).
    pub faults: Faults,
    /// Faults injected into a fraction of ListObjectsV2 requests (S3 throttles and fails
    /// those too): `slowdown`, `internal`, `reset` and `slow` apply; the others are ignored.
    pub list_faults: Faults,
    /// Keys that are listed but whose GET is refused with `403 AccessDenied` (a bucket
    /// policy denying some objects).
    pub denied: Vec<String>,
    /// Keys that are listed but whose GET answers `404 NoSuchKey` (deleted after listing).
    pub vanished: Vec<String>,
    /// Keys overwritten before every GET: each GET sees a new ETag, so a copy in parts tied
    /// by `If-Match` gets `412 PreconditionFailed` for its other parts.
    pub changing: Vec<String>,
    /// Older versions: (key, version id, content), readable with `versionId`.
    pub versions: Vec<(String, String, Bytes)>,
    /// Archived objects: key → (storage class, restored). Listed with their class and restore
    /// status; a GET of one not restored answers `403 InvalidObjectState`, as S3 does.
    pub archived: Vec<(String, String, bool)>,
    /// Buckets that answer `403 AccessDenied` to requests without `x-amz-request-payer:
    /// requester` (Requester Pays buckets).
    pub requester_pays: Vec<String>,
    /// Never send `x-amz-checksum-crc32c`, even when asked (objects uploaded without a
    /// checksum: only the ETag's MD5 is there to verify against).
    pub no_checksums: bool,
    /// Serve HTTPS with this certificate chain and private key (both PEM) instead of HTTP.
    pub tls: Option<TlsIdentity>,
    /// Request-rate limits, as S3 has per prefix partition: GETs and HEADs of a rule's keys,
    /// and list requests that start among them, above its rate are answered `503 SlowDown`.
    /// The longest matching prefix applies.
    pub rate_limits: Vec<RateLimit>,
    /// List like a store that ignores `encoding-type=url` (keys always as they are).
    pub ignore_encoding_type: bool,
    /// List `LastModified` with milliseconds, as MinIO and Ceph RGW do (the GET's
    /// `Last-Modified` header keeps whole seconds, as HTTP dates must).
    pub sub_second_times: bool,
    /// Every object's LastModified (default: when the endpoint started), e.g. to make two
    /// endpoints serve different objects written in the same second.
    pub last_modified: Option<SystemTime>,
    /// A store bug seen in the field: a delimiter listing of a prefix starting with this
    /// returns neither keys nor common prefixes (a flat listing is right).
    pub broken_delimiter_under: Option<String>,
    /// The endpoint's clock, in seconds from this machine's (S3 refuses a request signed more
    /// than 15 minutes away from its own time with `403 RequestTimeTooSkewed`, and every
    /// answer's `Date` header tells its time).
    pub clock_offset_s: i64,
}

/// A server certificate chain and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl TlsIdentity {
    /// A rustls acceptor for this identity.
    fn acceptor(&self) -> std::io::Result<tokio_rustls::TlsAcceptor> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| std::io::Error::other(format!("TLS {what}: {e}"));
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| bad("private key", &e))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("setup", &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("setup", &e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Stateless session tickets, as S3 issues: any number of clients resume without a
        // session cache on this side.
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| bad("tickets", &e))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// How generated keys are named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `p0003/obj00000042`: spread over `prefixes` directories ([`generated_key`]).
    #[default]
    Prefixes,
    /// `obj00000042`: no directory at all.
    Flat,
    /// `d04/e21/obj00004213`: two levels, up to 10,000 directories.
    Nested,
    /// `9e3779b97f4a7c15/data.bin`: one object per "directory", as with a UUID per record.
    PerDirectory,
}

impl Layout {
    /// The key of generated object `i`.
    pub fn key(self, i: u64, prefixes: u64) -> String {
        match self {
            Layout::Prefixes => generated_key(i, prefixes),
            Layout::Flat => format!("obj{i:08}"),
            Layout::Nested => format!("d{:02}/e{:02}/obj{i:08}", (i / 1000) % 100, (i / 10) % 100),
            // An odd multiplier is a bijection on u64: every object its own directory.
            Layout::PerDirectory => format!("{:016x}/data.bin", (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }
    }
}

/// The key of generated object `i` among `prefixes` prefixes: `p0003/obj00000042`.
pub fn generated_key(i: u64, prefixes: u64) -> String {
    let p = i % prefixes.max(1);
    format!("p{p:04}/obj{i:08}")
}

/// The content of a generated object: `size` bytes of a pseudo-random stream seeded by the
/// key, so any copy can be checked against the key alone.
pub fn generated_content(key: &str, size: u64) -> Vec<u8> {
    generated_range(key, 0, size)
}

/// Bytes `first .. first + len` of [`generated_content`], computed without the bytes before
/// them (each 8-byte word is a hash of the key's seed and the word's index), so a range of a
/// 1 GiB object costs only its own length.
pub fn generated_range(key: &str, first: u64, len: u64) -> Vec<u8> {
    // FNV-1a for the seed, the SplitMix64 finaliser per word: cheap, deterministic, seekable.
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        seed = (seed ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let skip = (first % 8) as usize;
    let words = (skip as u64 + len).div_ceil(8);
    let mut out = Vec::with_capacity((words * 8) as usize);
    for w in first / 8..first / 8 + words {
        let mut z = seed.wrapping_add(w.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    if skip > 0 {
        out.drain(..skip);
    }
    out.truncate(len as usize);
    out
}

/// Generated objects above this size get a multipart-style ETag (`"…-N"`, as S3 gives
/// objects uploaded in parts) instead of the MD5 of their content, which would cost a pass
/// over the whole object.
const MULTIPART_ETAG_ABOVE: u64 = 64 << 20;

#[derive(Debug)]
enum Body {
    Stored(Bytes),
    Generated(u64),
}

#[derive(Debug)]
struct Obj {
    body: Body,
    etag: OnceLock<String>,
    last_modified: SystemTime,
}

impl Obj {
    fn size(&self) -> u64 {
        match &self.body {
            Body::Stored(b) => b.len() as u64,
            Body::Generated(n) => *n,
        }
    }

    /// Bytes `first ..= last`.
    fn range(&self, key: &str, first: u64, last: u64) -> Bytes {
        match &self.body {
            Body::Stored(b) => b.slice(first as usize..=last as usize),
            Body::Generated(_) => Bytes::from(generated_range(key, first, last + 1 - first)),
        }
    }

    fn etag(&self, key: &str) -> ETag {
        let hex = self.etag.get_or_init(|| match &self.body {
            Body::Generated(n) if *n > MULTIPART_ETAG_ABOVE => {
                let hex = crate::verify::hex(&Md5::digest(format!("{key}:{n}")));
                format!("{hex}-{}", n.div_ceil(8 << 20))
            }
            _ => {
                let size = self.size();
                crate::verify::hex(&Md5::digest(if size == 0 { Bytes::new() } else { self.range(key, 0, size - 1) }))
            }
        });
        ETag::Strong(hex.clone())
    }
}

type Bucket = BTreeMap<String, Obj>;

#[derive(Debug, Default)]
struct MemS3 {
    buckets: HashMap<String, Bucket>,
    get_latency: Duration,
    list_latency: Duration,
    faults: Arc<FaultState>,
    list_faults: Arc<FaultState>,
    denied: std::collections::HashSet<String>,
    vanished: std::collections::HashSet<String>,
    /// `changing` keys, and how often each was overwritten (`None`: no such keys, no lock
    /// per GET).
    changing: Option<std::sync::Mutex<HashMap<String, u64>>>,
    no_checksums: bool,
    requester_pays: std::collections::HashSet<String>,
    archived: HashMap<String, (String, bool)>,
    versions: HashMap<(String, String), Bytes>,
    limits: Option<Arc<Limits>>,
    ignore_encoding_type: bool,
    broken_delimiter_under: Option<String>,
}

async fn delay(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

impl MemS3 {
    /// An older version's content.
    fn version(&self, key: &str, version: &str) -> S3Result<Bytes> {
        self.versions.get(&(key.to_owned(), version.to_owned())).cloned().ok_or_else(|| s3_error!(NoSuchVersion))
    }

    /// A Requester Pays bucket refuses requests that do not accept the charges.
    fn check_payer(&self, bucket: &str, payer: Option<&RequestPayer>) -> S3Result<()> {
        if self.requester_pays.contains(bucket) && payer.is_none_or(|p| p.as_str() != RequestPayer::REQUESTER) {
            return Err(s3_error!(AccessDenied, "Requester Pays: the request must set x-amz-request-payer: requester"));
        }
        Ok(())
    }

    /// One page of either ListObjects version, after the list latency: a token of the rate
    /// limit of the key it starts at taken, Requester Pays checked, archived objects marked
    /// with their storage class and restore status.
    async fn list_page(
        &self,
        bucket: &str,
        payer: Option<&RequestPayer>,
        prefix: &Option<String>,
        delimiter: &Option<String>,
        after: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<Page> {
        let start = after.as_deref().or(prefix.as_deref()).unwrap_or_default();
        let admitted = self.limits.as_ref().is_none_or(|l| l.admit_other(start));
        delay(self.list_latency).await;
        if !admitted {
            return Err(s3_error!(SlowDown, "Please reduce your request rate."));
        }
        self.check_payer(bucket, payer)?;
        if let (Some(broken), Some(_)) = (&self.broken_delimiter_under, delimiter)
            && prefix.as_deref().unwrap_or_default().starts_with(broken.as_str())
        {
            return Ok(Page { contents: Vec::new(), common: Vec::new(), last: None, truncated: false, max_keys: 1000 });
        }
        let mut page = Page::walk(self.bucket(bucket)?, prefix.as_deref(), delimiter.as_deref(), after, max_keys);
        self.mark_archived(&mut page.contents);
        Ok(page)
    }

    /// Storage class and restore status of archived objects in a listing.
    fn mark_archived(&self, contents: &mut [Object]) {
        for o in contents.iter_mut() {
            if let Some((class, restored)) = o.key.as_ref().and_then(|k| self.archived.get(k)) {
                o.storage_class = Some(ObjectStorageClass::from(class.clone()));
                o.restore_status = Some(RestoreStatus {
                    is_restore_in_progress: Some(false),
                    restore_expiry_date: restored
                        .then(|| Timestamp::from(std::time::SystemTime::now() + Duration::from_secs(86_400))),
                });
            }
        }
    }

    fn bucket(&self, name: &str) -> S3Result<&Bucket> {
        self.buckets.get(name).ok_or_else(|| s3_error!(NoSuchBucket))
    }

    fn object(&self, bucket: &str, key: &str) -> S3Result<&Obj> {
        self.bucket(bucket)?.get(key).ok_or_else(|| s3_error!(NoSuchKey))
    }
}

/// Resolves an HTTP range against an object of `len` bytes: `(first, last)` inclusive.
fn resolve_range(range: &Range, len: u64) -> S3Result<(u64, u64)> {
    let bad = || s3_error!(InvalidRange, "range not satisfiable for {len} bytes");
    match *range {
        Range::Int { first, last } => {
            if first >= len {
                return Err(bad());
            }
            let last = last.map_or(len - 1, |l| l.min(len - 1));
            if last < first {
                return Err(bad());
            }
            Ok((first, last))
        }
        Range::Suffix { length } => {
            if length == 0 || len == 0 {
                return Err(bad());
            }
            Ok((len - length.min(len), len - 1))
        }
    }
}

/// A key as S3 sends it with `encoding-type=url`: form encoding (`+` for a space), `/` and
/// the unreserved characters as they are.
fn url_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Continuation tokens are the hex of the last key returned: opaque, URL-safe, any key.
fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> S3Result<String> {
    let bad = || s3_error!(InvalidArgument, "invalid continuation token");
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// One page of a listing: what both ListObjects versions answer.
struct Page {
    contents: Vec<Object>,
    common: Vec<String>,
    /// The last key this page covered (a common prefix covers its last key): where the next
    /// page continues.
    last: Option<String>,
    truncated: bool,
    max_keys: usize,
}

impl Page {
    /// Walks `bucket` in key order from after `after` (or from `prefix`), keys under `prefix`,
    /// rolling keys that contain `delimiter` past the prefix into common prefixes.
    fn walk(
        bucket: &Bucket,
        prefix: Option<&str>,
        delimiter: Option<&str>,
        after: Option<String>,
        max_keys: Option<i32>,
    ) -> Page {
        let prefix = prefix.unwrap_or_default();
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let max_keys = max_keys.map_or(MAX_KEYS, |m| (m.max(0) as usize).min(MAX_KEYS));
        let lower = match after {
            Some(a) if a.as_str() >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix.to_owned()),
        };
        let mut page = Page { contents: Vec::new(), common: Vec::new(), last: None, truncated: false, max_keys };
        let mut iter = bucket.range((lower, Bound::Unbounded)).peekable();
        while let Some((key, obj)) = iter.next() {
            if !key.starts_with(prefix) {
                break;
            }
            if page.contents.len() + page.common.len() >= max_keys {
                page.truncated = true;
                break;
            }
            if let Some(d) = delimiter
                && let Some(pos) = key[prefix.len()..].find(d)
            {
                // Roll every key under this common prefix into one entry.
                let cp = key[..prefix.len() + pos + d.len()].to_owned();
                let mut last = key;
                while let Some((k, _)) = iter.next_if(|(k, _)| k.starts_with(&cp)) {
                    last = k;
                }
                page.common.push(cp);
                page.last = Some(last.clone());
                continue;
            }
            page.contents.push(Object {
                key: Some(key.clone()),
                size: Some(obj.size() as i64),
                e_tag: Some(obj.etag(key)),
                last_modified: Some(Timestamp::from(obj.last_modified)),
                ..Default::default()
            });
            page.last = Some(key.clone());
        }
        if max_keys == 0 {
            page.truncated = bucket
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .next()
                .is_some_and(|(k, _)| k.starts_with(prefix));
        }
        page
    }
}

#[async_trait::async_trait]
impl S3 for MemS3 {
    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = &req.input;
        if !self.limits.as_ref().is_none_or(|l| l.admit_other(&input.key)) {
            return Err(s3_error!(SlowDown, "Please reduce your request rate."));
        }
        // A policy that denies GetObject denies HeadObject too; HEAD answers carry no body.
        if self.denied.contains(&input.key) {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        let obj = self.object(&input.bucket, &input.key)?;
        let size = match &input.version_id {
            Some(v) => self.version(&input.key, v)?.len(),
            None => obj.size() as usize,
        };
        let out = HeadObjectOutput {
            content_length: Some(size as i64),
            e_tag: Some(obj.etag(&input.key)),
            last_modified: Some(Timestamp::from(obj.last_modified)),
            ..Default::default()
        };
        Ok(S3Response::new(out))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        // The connection layer drew this request's fate (and already handled resets).
        let fault = req.extensions.get::<Drawn>().and_then(|d| d.0);
        // A token is taken when the request arrives (a request with an injected fault has
        // that fate alone, and takes none); the answer comes after the latency either way.
        let admitted = fault.is_some() || self.limits.as_ref().is_none_or(|l| l.admit(&req.input.key));
        delay(self.get_latency).await;
        if !admitted {
            return Err(s3_error!(SlowDown, "Please reduce your request rate."));
        }
        match fault {
            Some(Fault::SlowDown) => return Err(s3_error!(SlowDown, "injected: please reduce your request rate")),
            Some(Fault::Internal) => return Err(s3_error!(InternalError, "injected: internal error")),
            Some(Fault::Slow) => delay(self.faults.faults.slow_delay).await,
            _ => {}
        }
        let input = &req.input;
        self.check_payer(&input.bucket, input.request_payer.as_ref())?;
        if self.denied.contains(&input.key) {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        if let Some((class, false)) = self.archived.get(&input.key)
            && matches!(class.as_str(), "GLACIER" | "DEEP_ARCHIVE")
        {
            return Err(s3_error!(
                InvalidObjectState,
                "The operation is not valid for the object's storage class {class}"
            ));
        }
        if self.vanished.contains(&input.key) {
            return Err(s3_error!(NoSuchKey, "The specified key does not exist."));
        }
        let obj = self.object(&input.bucket, &input.key)?;
        let version = match &input.version_id {
            Some(v) => Some(self.version(&input.key, v)?),
            None => None,
        };
        let total = version.as_ref().map_or_else(|| obj.size(), |v| v.len() as u64);
        let mut content_range = None;
        let (first, last) = match &input.range {
            Some(range) => {
                let (first, last) = resolve_range(range, total)?;
                content_range = Some(format!("bytes {first}-{last}/{total}"));
                (first, last)
            }
            None => (0, total.saturating_sub(1)),
        };
        let mut etag = obj.etag(&input.key);
        if let Some(Ok(mut changing)) = self.changing.as_ref().map(|c| c.lock())
            && let Some(version) = changing.get_mut(&input.key)
        {
            *version += 1;
            etag = ETag::Strong(format!("{}{version}", etag.as_strong().unwrap_or_default()));
        }
        // If-Match: a part of a version that is no longer the current one is refused.
        if let Some(s3s::dto::ETagCondition::ETag(want)) = &input.if_match
            && want.as_strong() != etag.as_strong()
        {
            return Err(s3_error!(PreconditionFailed, "At least one of the pre-conditions you specified did not hold"));
        }
        let mut data = match (&version, total) {
            (_, 0) => Bytes::new(),
            (Some(v), _) => v.slice(first as usize..=last as usize),
            (None, _) => obj.range(&input.key, first, last),
        };
        // Like S3 for an object uploaded with a CRC32C checksum: sent when asked for.
        let asked = input.checksum_mode.as_ref().is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let checksum_crc32c = (asked && !self.no_checksums && input.range.is_none()).then(|| {
            use aws_smithy_checksums::ChecksumAlgorithm;
            let mut c = ChecksumAlgorithm::Crc32c.into_impl();
            c.update(&data);
            c.header_value().to_str().unwrap_or_default().to_owned()
        });
        if fault == Some(Fault::Corrupt) && !data.is_empty() {
            let mut bad = data.to_vec();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x20;
            data = Bytes::from(bad);
        }
        let out = GetObjectOutput {
            content_length: Some(data.len() as i64),
            content_range: content_range.clone(),
            checksum_crc32c,
            e_tag: Some(etag),
            last_modified: Some(Timestamp::from(obj.last_modified)),
            body: Some(if fault == Some(Fault::Truncate) {
                // Half the body, then a broken stream: hyper aborts the connection.
                let half = data.slice(..data.len() / 2);
                let parts: Vec<Result<Bytes, std::io::Error>> =
                    vec![Ok(half), Err(std::io::Error::other("injected: body cut short"))];
                StreamingBlob::wrap(futures_util::stream::iter(parts))
            } else if fault == Some(Fault::SlowBody) && !data.is_empty() {
                // The headers now, the first byte of the body after the delay.
                let late = self.faults.faults.slow_delay;
                let (head, rest) = (data.slice(..1), data.slice(1..));
                let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
                    futures_util::stream::once(async move {
                        tokio::time::sleep(late).await;
                        Ok(rest)
                    }),
                );
                StreamingBlob::wrap(body)
            } else {
                StreamingBlob::from(s3s::Body::from(data))
            }),
            ..Default::default()
        };
        let mut resp = S3Response::new(out);
        if content_range.is_some() {
            resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(resp)
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        // The connection layer drew this request's fate (and already handled resets).
        match req.extensions.get::<Drawn>().and_then(|d| d.0) {
            Some(Fault::SlowDown) => return Err(s3_error!(SlowDown, "injected: please reduce your request rate")),
            Some(Fault::Internal) => return Err(s3_error!(InternalError, "injected: internal error")),
            Some(Fault::Slow) => delay(self.list_faults.faults.slow_delay).await,
            _ => {}
        }
        let input = &req.input;
        // Continue strictly after the token's key, else after start-after.
        let after = match &input.continuation_token {
            Some(t) => Some(decode_token(t)?),
            None => input.start_after.clone(),
        };
        let page = self
            .list_page(
                &input.bucket,
                input.request_payer.as_ref(),
                &input.prefix,
                &input.delimiter,
                after,
                input.max_keys,
            )
            .await?;
        // encoding-type=url: every key-like field URL-encoded, as S3 does (unless this store
        // is one that ignores the parameter).
        let url = !self.ignore_encoding_type
            && input.encoding_type.as_ref().is_some_and(|t| t.as_str().eq_ignore_ascii_case("url"));
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let mut contents = page.contents;
        if url {
            for o in &mut contents {
                o.key = o.key.take().map(enc);
            }
        }
        let out = ListObjectsV2Output {
            name: Some(input.bucket.clone()),
            prefix: input.prefix.clone().map(enc),
            delimiter: input.delimiter.clone().map(enc),
            max_keys: Some(page.max_keys as i32),
            key_count: Some((contents.len() + page.common.len()) as i32),
            continuation_token: input.continuation_token.clone(),
            start_after: input.start_after.clone().map(enc),
            is_truncated: Some(page.truncated),
            next_continuation_token: if page.truncated { page.last.as_deref().map(encode_token) } else { None },
            contents: Some(contents),
            common_prefixes: Some(page.common.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect()),
            encoding_type: url.then(|| EncodingType::from_static(EncodingType::URL)),
            ..Default::default()
        };
        Ok(S3Response::new(out))
    }

    /// ListObjects (v1), for peers that still use it (rclone's default for other providers).
    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = &req.input;
        let page = self
            .list_page(
                &input.bucket,
                input.request_payer.as_ref(),
                &input.prefix,
                &input.delimiter,
                input.marker.clone(),
                input.max_keys,
            )
            .await?;
        let out = ListObjectsOutput {
            name: Some(input.bucket.clone()),
            prefix: input.prefix.clone(),
            delimiter: input.delimiter.clone(),
            marker: input.marker.clone(),
            max_keys: Some(page.max_keys as i32),
            is_truncated: Some(page.truncated),
            // S3 sends NextMarker only with a delimiter; we always do, which clients accept.
            next_marker: if page.truncated { page.last } else { None },
            contents: Some(page.contents),
            common_prefixes: Some(page.common.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
            ..Default::default()
        };
        Ok(S3Response::new(out))
    }
}

fn build_store(config: &EndpointConfig) -> MemS3 {
    let specs = &config.buckets;
    let now = config.last_modified.unwrap_or_else(SystemTime::now);
    // S3 keeps whole seconds; MinIO and Ceph keep milliseconds (never .000 here, so that a
    // test cannot pass by luck).
    let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let millis = if config.sub_second_times { u64::from(since.subsec_millis()).max(1) } else { 0 };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs()) + Duration::from_millis(millis);
    let mut buckets = HashMap::new();
    for spec in specs {
        let mut bucket = Bucket::new();
        match &spec.contents {
            Contents::Objects(objs) => {
                for (k, v) in objs {
                    bucket.insert(
                        k.clone(),
                        Obj { body: Body::Stored(v.clone()), etag: OnceLock::new(), last_modified: now },
                    );
                }
            }
            Contents::Generated { count, size, prefixes, layout } => {
                for i in 0..*count {
                    bucket.insert(
                        layout.key(i, *prefixes),
                        Obj { body: Body::Generated(*size), etag: OnceLock::new(), last_modified: now },
                    );
                }
            }
        }
        buckets.insert(spec.name.clone(), bucket);
    }
    MemS3 {
        buckets,
        get_latency: config.get_latency,
        denied: config.denied.iter().cloned().collect(),
        vanished: config.vanished.iter().cloned().collect(),
        changing: (!config.changing.is_empty())
            .then(|| std::sync::Mutex::new(config.changing.iter().map(|k| (k.clone(), 0)).collect())),
        no_checksums: config.no_checksums,
        requester_pays: config.requester_pays.iter().cloned().collect(),
        versions: config.versions.iter().map(|(k, v, b)| ((k.clone(), v.clone()), b.clone())).collect(),
        archived: config.archived.iter().map(|(k, c, r)| (k.clone(), (c.clone(), *r))).collect(),
        list_latency: config.list_latency,
        faults: Arc::new(FaultState::new(config.faults.clone())),
        list_faults: Arc::new(FaultState::new(config.list_faults.clone())),
        limits: Limits::new(&config.rate_limits).map(Arc::new),
        ignore_encoding_type: config.ignore_encoding_type,
        broken_delimiter_under: config.broken_delimiter_under.clone(),
    }
}

/// How far from the service's clock a signed request may be.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// This machine's time moved by `offset_s` seconds.
fn offset_now(offset_s: i64) -> SystemTime {
    let now = SystemTime::now();
    let by = Duration::from_secs(offset_s.unsigned_abs());
    if offset_s >= 0 { now + by } else { now - by }
}

/// `x-amz-date` (`20261130T224500Z`) as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// An HTTP `Date` header value for `t`.
fn http_date(t: SystemTime) -> Option<http::HeaderValue> {
    let mut buf = Vec::new();
    Timestamp::from(t).format(s3s::dto::TimestampFormat::HttpDate, &mut buf).ok()?;
    http::HeaderValue::from_bytes(&buf).ok()
}

/// S3's answer to a request signed too far from its clock.
fn too_skewed() -> http::Response<s3s::Body> {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>RequestTimeTooSkewed</Code>\
                <Message>The difference between the request time and the current time is too large.</Message></Error>";
    let mut resp = http::Response::new(s3s::Body::from(body.to_owned()));
    *resp.status_mut() = http::StatusCode::FORBIDDEN;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/xml"));
    resp
}

/// Is this HTTP request a GetObject (path style `/bucket/key`, or virtual-hosted `/key`,
/// without a sub-resource query)?
fn is_get_object(req: &http::Request<hyper::body::Incoming>) -> bool {
    req.method() == http::Method::GET
        && req.uri().query().is_none_or(|q| !q.contains("list-type") && !q.contains("location"))
        && req.uri().path().trim_start_matches('/').contains('/')
}

/// Is this HTTP request a ListObjectsV2?
fn is_list(req: &http::Request<hyper::body::Incoming>) -> bool {
    req.method() == http::Method::GET && req.uri().query().is_some_and(|q| q.contains("list-type=2"))
}

/// A running endpoint. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    https: bool,
    task: tokio::task::JoinHandle<()>,
    faults: Arc<FaultState>,
    list_faults: Arc<FaultState>,
    limits: Option<Arc<Limits>>,
}

impl Endpoint {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: EndpointConfig) -> std::io::Result<Endpoint> {
        let store = build_store(&config);
        let faults = store.faults.clone();
        let list_faults = store.list_faults.clone();
        let limits = store.limits.clone();
        let mut builder = s3s::service::S3ServiceBuilder::new(store);
        if let Some((ak, sk)) = &config.credentials {
            builder.set_auth(s3s::auth::SimpleAuth::from_single(ak.clone(), sk.clone()));
        }
        let clock = config.clock_offset_s;
        if clock != 0 {
            // The skew is checked against this endpoint's clock below, not s3s's.
            let mut s3s_config = s3s::config::S3Config::default();
            s3s_config.presigned_url_max_skew_time_secs = u32::MAX;
            builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(s3s_config))));
        }
        let service = builder.build();
        let listen = config.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        // A deep accept queue: clients open hundreds of connections at once, and std's
        // backlog of 128 overflows, dropping SYNs that the client resends only after 1 s.
        let socket = if listen.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener: TcpListener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        let tls = config.tls.as_ref().map(TlsIdentity::acceptor).transpose()?;
        let https = tls.is_some();
        let fault_state = (faults.clone(), list_faults.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let (faults, list_faults) = fault_state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let io: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => Box::new(s),
                            Err(_) => return, // a failed handshake: the client sees why
                        },
                    };
                    let io = hyper_util::rt::TokioIo::new(io);
                    // Draw each GET's fate here: a reset must drop the connection before
                    // any answer, which only this layer can do.
                    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                        let service = service.clone();
                        let drawn = if is_get_object(&req) {
                            faults.draw()
                        } else if is_list(&req) {
                            list_faults.draw()
                        } else {
                            None
                        };
                        req.extensions_mut().insert(Drawn(drawn));
                        async move {
                            if drawn == Some(Fault::Reset) {
                                return Err(s3s::HttpError::new(Box::new(std::io::Error::other("injected reset"))));
                            }
                            if clock == 0 {
                                return service.call(req.map(s3s::Body::from)).await;
                            }
                            let now = offset_now(clock);
                            let skewed = req
                                .headers()
                                .get("x-amz-date")
                                .and_then(|v| v.to_str().ok())
                                .and_then(parse_amz_date)
                                .is_some_and(|t| t.duration_since(now).unwrap_or_else(|e| e.duration()) > MAX_SKEW);
                            let mut resp =
                                if skewed { too_skewed() } else { service.call(req.map(s3s::Body::from)).await? };
                            if let Some(date) = http_date(now) {
                                resp.headers_mut().insert(http::header::DATE, date);
                            }
                            Ok(resp)
                        }
                    });
                    // Under TLS, headers and a small body go out as one record: rustls turns
                    // each buffer of a vectored write into a record of its own, which the
                    // client then decrypts (and copies out) twice.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .writev(!https)
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Ok(Endpoint { addr, https, task, faults, list_faults, limits })
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// GETs served and faults injected so far.
    pub fn fault_counts(&self) -> FaultCounts {
        self.faults.counts()
    }

    /// List requests served (in `gets`) and faults injected into them so far.
    pub fn list_fault_counts(&self) -> FaultCounts {
        self.list_faults.counts()
    }

    /// What each rate-limit rule let through and refused so far.
    pub fn rate_limit_counts(&self) -> Vec<RateLimitCounts> {
        self.limits.as_ref().map(|l| l.counts()).unwrap_or_default()
    }

    /// Changes the rate of the rule for `prefix` now (0: unlimited); false if there is none.
    pub fn set_rate_limit(&self, prefix: &str, rate: f64) -> bool {
        self.limits.as_ref().is_some_and(|l| l.set(prefix, rate))
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_content_is_deterministic_and_key_dependent() {
        let a = generated_content("p0001/obj00000001", 4096);
        assert_eq!(a.len(), 4096);
        assert_eq!(a, generated_content("p0001/obj00000001", 4096));
        assert_ne!(a, generated_content("p0001/obj00000002", 4096));
        assert_eq!(generated_content("k", 13).len(), 13);
        assert!(generated_content("k", 0).is_empty());
    }

    #[test]
    fn tokens_round_trip_any_key() {
        for k in ["", "a/b", "ünï/../x y+%#?", "a//b"] {
            assert_eq!(decode_token(&encode_token(k)).unwrap(), k);
        }
        assert!(decode_token("zz").is_err());
        assert!(decode_token("abc").is_err());
    }

    #[test]
    fn ranges_resolve_like_s3() {
        let r = |first, last| Range::Int { first, last };
        assert_eq!(resolve_range(&r(0, Some(9)), 100).unwrap(), (0, 9));
        assert_eq!(resolve_range(&r(90, Some(200)), 100).unwrap(), (90, 99));
        assert_eq!(resolve_range(&r(10, None), 100).unwrap(), (10, 99));
        assert_eq!(resolve_range(&Range::Suffix { length: 10 }, 100).unwrap(), (90, 99));
        assert_eq!(resolve_range(&Range::Suffix { length: 1000 }, 100).unwrap(), (0, 99));
        assert!(resolve_range(&r(100, None), 100).is_err());
        assert!(resolve_range(&r(0, None), 0).is_err());
    }
}
