//! The endpoint's objects: buckets held in memory or generated from their keys, and the S3
//! operations on them that s3s routes here (ListObjectsV2 and v1, GetObject, HeadObject,
//! HeadBucket), with the quirks of other stores a test can switch on (see [`super::EndpointConfig`]).

use std::collections::{BTreeMap, HashMap};
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

use super::faults::{Drawn, Fault, FaultState, InflightCap, Limits};
use super::{Checksums, Contents, EndpointConfig, MAX_KEYS, generated_range};

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
    /// The checksum it was uploaded with, as S3 stores it: computed once, when first asked.
    checksum: OnceLock<Option<(&'static str, String)>>,
    last_modified: SystemTime,
}

impl Obj {
    fn new(body: Body, last_modified: SystemTime) -> Obj {
        Obj { body, etag: OnceLock::new(), checksum: OnceLock::new(), last_modified }
    }

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
pub(super) struct MemS3 {
    buckets: HashMap<String, Bucket>,
    get_latency: Duration,
    list_latency: Duration,
    pub(super) faults: Arc<FaultState>,
    pub(super) list_faults: Arc<FaultState>,
    denied: std::collections::HashSet<String>,
    vanished: std::collections::HashSet<String>,
    /// `changing` keys, and how often each was overwritten (`None`: no such keys, no lock
    /// per GET).
    changing: Option<std::sync::Mutex<HashMap<String, u64>>>,
    checksums: Checksums,
    rotten: std::collections::HashSet<String>,
    requester_pays: std::collections::HashSet<String>,
    archived: HashMap<String, (String, bool)>,
    versions: HashMap<(String, String), Bytes>,
    pub(super) limits: Option<Arc<Limits>>,
    pub(super) inflight: Option<Arc<InflightCap>>,
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

    /// The checksum `key` was uploaded with, over its whole content as uploaded (of
    /// `version`, when given), computed a few MiB at a time: `(header, base64 value)`.
    fn whole_checksum(&self, key: &str, obj: &Obj, version: Option<&str>) -> Option<(&'static str, String)> {
        const STEP: u64 = 8 << 20;
        let (name, algorithm) = self.checksums.of(key)?;
        let value = |update: &mut dyn FnMut(&mut Box<dyn aws_smithy_checksums::http::HttpChecksum>)| {
            let mut c = algorithm.into_impl();
            update(&mut c);
            Some((name, c.header_value().to_str().unwrap_or_default().to_owned()))
        };
        match version {
            Some(v) => {
                let body = self.version(key, v).ok()?;
                value(&mut |c| c.update(&body))
            }
            None => obj
                .checksum
                .get_or_init(|| {
                    value(&mut |c| {
                        let size = obj.size();
                        let mut at = 0;
                        while at < size {
                            let last = (at + STEP).min(size) - 1;
                            c.update(&obj.range(key, at, last));
                            at = last + 1;
                        }
                    })
                })
                .clone(),
        }
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
        // Like S3 for an object uploaded with a checksum: the whole object's, when asked for.
        let asked = input.checksum_mode.as_ref().is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let checksum = asked.then(|| self.whole_checksum(&input.key, obj, input.version_id.as_deref())).flatten();
        let checksum_as = |header: &str| checksum.as_ref().filter(|(name, _)| *name == header).map(|(_, v)| v.clone());
        let out = HeadObjectOutput {
            content_length: Some(size as i64),
            e_tag: Some(obj.etag(&input.key)),
            last_modified: Some(Timestamp::from(obj.last_modified)),
            checksum_crc64nvme: checksum_as("x-amz-checksum-crc64nvme"),
            checksum_crc32c: checksum_as("x-amz-checksum-crc32c"),
            checksum_crc32: checksum_as("x-amz-checksum-crc32"),
            checksum_sha256: checksum_as("x-amz-checksum-sha256"),
            checksum_sha1: checksum_as("x-amz-checksum-sha1"),
            ..Default::default()
        };
        Ok(S3Response::new(out))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        // The connection layer drew this request's fate (and already handled resets).
        let fault = req.extensions.get::<Drawn>().and_then(|d| d.0);
        // Over the in-flight cap: refused at once, before any other fate.
        let _serving = match self.inflight.as_deref().map(InflightCap::enter) {
            Some(None) => {
                return Err(s3_error!(SlowDown, "Too many requests in flight; please reduce your request rate."));
            }
            Some(serving) => serving,
            None => None,
        };
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
        // Like S3 for an object uploaded with a checksum: sent when asked for.
        let asked = input.checksum_mode.as_ref().is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let checksum = (asked && input.range.is_none())
            .then(|| self.whole_checksum(&input.key, obj, input.version_id.as_deref()))
            .flatten();
        let checksum_as = |header: &str| checksum.as_ref().filter(|(name, _)| *name == header).map(|(_, v)| v.clone());
        // The stored bytes changed after the checksum and ETag were taken: the object's
        // middle byte is wrong in every answer that holds it.
        if self.rotten.contains(&input.key) && (first..=last).contains(&(total / 2)) && !data.is_empty() {
            let mut bad = data.to_vec();
            bad[(total / 2 - first) as usize] ^= 0x01;
            data = Bytes::from(bad);
        }
        if fault == Some(Fault::Corrupt) && !data.is_empty() {
            let mut bad = data.to_vec();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x20;
            data = Bytes::from(bad);
        }
        let out = GetObjectOutput {
            content_length: Some(data.len() as i64),
            content_range: content_range.clone(),
            checksum_crc64nvme: checksum_as("x-amz-checksum-crc64nvme"),
            checksum_crc32c: checksum_as("x-amz-checksum-crc32c"),
            checksum_crc32: checksum_as("x-amz-checksum-crc32"),
            checksum_sha256: checksum_as("x-amz-checksum-sha256"),
            checksum_sha1: checksum_as("x-amz-checksum-sha1"),
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

pub(super) fn build_store(config: &EndpointConfig) -> MemS3 {
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
                    bucket.insert(k.clone(), Obj::new(Body::Stored(v.clone()), now));
                }
            }
            Contents::Generated { count, size, prefixes, layout } => {
                for i in 0..*count {
                    bucket.insert(layout.key(i, *prefixes), Obj::new(Body::Generated(*size), now));
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
        checksums: config.checksums,
        rotten: config.rotten.iter().cloned().collect(),
        requester_pays: config.requester_pays.iter().cloned().collect(),
        versions: config.versions.iter().map(|(k, v, b)| ((k.clone(), v.clone()), b.clone())).collect(),
        archived: config.archived.iter().map(|(k, c, r)| (k.clone(), (c.clone(), *r))).collect(),
        list_latency: config.list_latency,
        faults: Arc::new(FaultState::new(config.faults.clone())),
        list_faults: Arc::new(FaultState::new(config.list_faults.clone())),
        limits: Limits::new(&config.rate_limits).map(Arc::new),
        inflight: config.max_inflight.map(|n| Arc::new(InflightCap::new(n))),
        ignore_encoding_type: config.ignore_encoding_type,
        broken_delimiter_under: config.broken_delimiter_under.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
