//! The fetch path's boundary: [`ObjectStore`], one GET attempt against an object store, what
//! it gives back, and how its failures are classified. The engines (`lean`, `sdk`) implement
//! it; the retry loop, the rate limiter, the window, hedging and the fetch tasks above it
//! see only this trait, so unit tests drive them with scripted stores in milliseconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::s3::CredentialsError;

/// One GET attempt's future.
pub type GetFuture<'a> = Pin<Box<dyn Future<Output = Result<Fetched, GetError>> + Send + 'a>>;

/// An object store as the fetch path sees it: one GET attempt, no retries (those are the
/// caller's, [`super::Engine::fetch`]).
pub trait ObjectStore: Send + Sync {
    /// The engine's name for the summary (`lean`, `sdk`).
    fn name(&self) -> &'static str;

    /// GETs `key` (of `version`, when given) or the `range` of it and collects the body, of
    /// at most `most` bytes (the listed size, or the range's length): a larger answer is
    /// [`Retry::Larger`], not read further. `first_byte` is set once the response's headers
    /// are in (hedging tells an attempt that has not answered from one whose body is slow).
    fn get<'a>(
        &'a self,
        key: &'a str,
        version: Option<&'a str>,
        range: Option<&'a ByteRange>,
        most: u64,
        first_byte: &'a AtomicBool,
    ) -> GetFuture<'a>;
}

/// A downloaded object.
#[derive(Debug)]
pub struct Fetched {
    pub body: Bytes,
    pub last_modified: Option<SystemTime>,
    /// Request sent to response headers parsed.
    pub ttfb: Duration,
    /// Headers to the last body byte.
    pub body_time: Duration,
    /// ETag and checksums, when `--verify` asked for them.
    pub integrity: Option<crate::verify::Integrity>,
    /// For a ranged GET: the object's ETag and its whole size (from Content-Range).
    pub part: Option<PartInfo>,
    /// The body's end was announced (Content-Length, or chunked framing): a connection that
    /// closed early shows as an error. Without it (connection-close framing, as some proxies
    /// answer) a cut body looks complete, so its length is checked against the listing.
    pub framed: bool,
}

/// What a ranged GET says about the whole object.
#[derive(Debug, Clone, Default)]
pub struct PartInfo {
    pub etag: Option<String>,
    pub total: Option<u64>,
}

/// A byte range of an object, for large objects fetched in parts: `len` bytes from `first`,
/// of the object version whose ETag is `if_match` (S3 answers `412 PreconditionFailed` once
/// the object changed, so parts of two versions never make one file).
#[derive(Debug, Clone)]
pub struct ByteRange {
    pub first: u64,
    pub len: u64,
    pub if_match: Option<String>,
    /// The first range of an object of unknown size: most such objects are small and this
    /// GET is all of them, so it takes a place in the window of GETs in flight as a
    /// whole-object GET does (other parts are bounded by the byte budget instead).
    pub windowed: bool,
}

impl ByteRange {
    /// The `Range` header value.
    pub fn header(&self) -> String {
        format!("bytes={}-{}", self.first, self.first + self.len.max(1) - 1)
    }
}

/// The whole size in a `Content-Range: bytes FIRST-LAST/TOTAL` header.
pub fn content_range_total(v: &str) -> Option<u64> {
    v.rsplit_once('/')?.1.trim().parse().ok()
}

/// Whether a failed GET is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Permanent (NoSuchKey, AccessDenied, …): fail the key.
    No,
    /// Transient (5xx, reset, timeout, short body): back off and try again.
    Transient,
    /// The service asks us to slow down (SlowDown, 503, 429).
    Throttled,
    /// The body does not match its checksum (`--verify`): fetch it again.
    Corrupt,
    /// The answer is larger than the object was listed (or than the range asked for): not
    /// read past that, since the byte budget was charged by the listing. The object changed
    /// since it was listed, or the server lies; a whole object is fetched again as one of
    /// unknown size, in parts that the budget bounds ([`crate::fetch::task`]).
    Larger,
}

/// The start of a [`Retry::Larger`] attempt's reason, by which the fetcher tells it.
pub const LARGER_THAN_LISTED: &str = "the answer is larger than";

/// S3's largest object: a size (or Content-Range total) above it is no object of S3's.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// An answer of `got` bytes (or more), where at most `most` were expected.
pub fn larger(got: u64, most: u64) -> GetError {
    GetError {
        reason: format!("{LARGER_THAN_LISTED} the {most} bytes listed or asked for ({got} bytes)"),
        retry: Retry::Larger,
    }
}

/// A failed GET attempt: the one-line reason and whether to retry.
#[derive(Debug, Clone)]
pub struct GetError {
    pub reason: String,
    pub retry: Retry,
}

impl GetError {
    pub fn transient(reason: String) -> GetError {
        GetError { reason, retry: Retry::Transient }
    }
}

/// How S3 error codes and HTTP statuses are retried (the SDK's standard classification).
pub fn classify(status: u16, code: &str) -> Retry {
    match code {
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "ProvisionedThroughputExceededException"
        | "BandwidthLimitExceeded"
        | "EC2ThrottledException" => Retry::Throttled,
        "InternalError"
        | "RequestTimeout"
        | "RequestTimeoutException"
        | "ServiceUnavailable"
        | "PriorRequestNotComplete"
        | "TransactionInProgressException"
        // The local clock is off: both engines learn the service's time from the answer's
        // Date header and sign the next attempt with it.
        | "RequestTimeTooSkewed" => Retry::Transient,
        _ => match status {
            429 | 503 => Retry::Throttled,
            500 | 502 | 504 => Retry::Transient,
            _ => Retry::No,
        },
    }
}

/// The body's length must be the announced one: a short body is transient.
pub fn check_length(got: usize, content_length: Option<u64>) -> Result<(), GetError> {
    match content_length {
        Some(n) if got as u64 != n => {
            Err(GetError::transient(format!("body has {got} bytes, Content-Length said {n}")))
        }
        _ => Ok(()),
    }
}

impl From<CredentialsError> for GetError {
    fn from(e: CredentialsError) -> GetError {
        GetError { reason: e.reason, retry: if e.permanent { Retry::No } else { Retry::Transient } }
    }
}
