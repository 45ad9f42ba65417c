//! The reference fetch engine, `--fetch-engine sdk`: GetObject through aws-sdk-s3.

use std::time::{Instant, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use std::sync::atomic::AtomicBool;

use super::store::{
    ByteRange, Fetched, GetError, GetFuture, ObjectStore, PartInfo, Retry, check_length, classify, content_range_total,
};
use crate::s3::{ListObjects, ListQuery, Page, PageFuture, chain, describe};

/// The SDK engine: what every GET of a run through aws-sdk-s3 shares.
pub struct Sdk {
    /// [`crate::s3::Control::client_no_retry`]: retries are the caller's.
    pub client: Client,
    pub bucket: String,
    /// `--verify`: ask for checksums.
    pub verify: bool,
    pub requester_pays: bool,
}

impl ObjectStore for Sdk {
    fn name(&self) -> &'static str {
        "sdk"
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        version: Option<&'a str>,
        range: Option<&'a ByteRange>,
        most: u64,
        first_byte: &'a AtomicBool,
    ) -> GetFuture<'a> {
        Box::pin(get(self, key, version, range, most, first_byte))
    }
}

/// The SDK engine's list requests: ListObjectsV2 through a client whose retry mode spends
/// `--retries` on every failure ([`crate::s3::Control::client_with_retries`]).
pub struct SdkLists {
    pub client: Client,
}

impl ListObjects for SdkLists {
    fn list_page<'a>(&'a self, q: ListQuery<'a>) -> PageFuture<'a> {
        Box::pin(list_page(&self.client, q))
    }
}

/// One page. S3 counts list requests with its GETs, so a listing under a rate limit is
/// throttled too: a page the SDK gave up on because it was throttled is asked for again after
/// the fetcher's backoff, without spending `--retries` (as the lean engine does), up to
/// [`super::LIST_ATTEMPTS_THROTTLED`] times.
async fn list_page(client: &Client, q: ListQuery<'_>) -> Result<Page, String> {
    let mut throttled = 0;
    loop {
        match crate::s3::list_page(client, q).await {
            Err(SdkError::ServiceError(se))
                if classify(se.raw().status().as_u16(), se.err().code().unwrap_or_default()) == Retry::Throttled
                    && throttled + 1 < super::LIST_ATTEMPTS_THROTTLED =>
            {
                tracing::debug!(code = se.err().code(), throttled, "list request throttled; asking again");
                tokio::time::sleep(super::backoff(throttled)).await;
                throttled += 1;
            }
            result => return result.map_err(|e| q.failed(&describe(&e, Some(q.bucket)))),
        }
    }
}

/// GETs one object through aws-sdk-s3 (the reference fetch engine, `--fetch-engine sdk`) and
/// collects its body, checking its length against Content-Length; `first_byte` is set when
/// the response's headers are in.
async fn get(
    sdk: &Sdk,
    key: &str,
    version: Option<&str>,
    range: Option<&ByteRange>,
    most: u64,
    first_byte: &AtomicBool,
) -> Result<Fetched, GetError> {
    let Sdk { client, bucket, verify, requester_pays } = sdk;
    let (verify, requester_pays) = (*verify, *requester_pays);
    let sent = Instant::now();
    let mut req = client.get_object().bucket(bucket).key(key).set_version_id(version.map(str::to_owned));
    if requester_pays {
        req = req.request_payer(aws_sdk_s3::types::RequestPayer::Requester);
    }
    if let Some(r) = range {
        req = req.range(r.header()).set_if_match(r.if_match.clone());
    }
    // A part has no checksum of its own (S3 sends none for a range); its ETag and encryption
    // are still kept, for a first range that turns out to hold the whole object.
    if verify && range.is_none() {
        req = req.checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled);
    }
    let out = req.send().await.map_err(|e| {
        let retry = match &e {
            SdkError::ServiceError(se) => classify(se.raw().status().as_u16(), se.err().code().unwrap_or("")),
            SdkError::DispatchFailure(df) if df.is_user() => Retry::No,
            SdkError::ConstructionFailure(_) => Retry::No,
            _ => Retry::Transient,
        };
        GetError { reason: describe(&e, Some(bucket)), retry }
    })?;
    let headers = Instant::now();
    first_byte.store(true, std::sync::atomic::Ordering::Relaxed);
    let expected = out.content_length.and_then(|n| u64::try_from(n).ok());
    let last_modified = out.last_modified.and_then(|t| SystemTime::try_from(t).ok());
    let integrity = verify.then(|| {
        let values = [
            out.checksum_crc64_nvme.clone(),
            out.checksum_crc32_c.clone(),
            out.checksum_crc32.clone(),
            out.checksum_sha256.clone(),
            out.checksum_sha1.clone(),
        ];
        integrity(out.e_tag.clone(), out.server_side_encryption.as_ref(), out.sse_customer_algorithm.is_some(), values)
    });
    let part = range.map(|_| PartInfo {
        etag: out.e_tag.clone(),
        total: out.content_range.as_deref().and_then(content_range_total),
    });
    if let Some(n) = expected.filter(|&n| n > most) {
        return Err(super::store::larger(n, most));
    }
    let body = collect_at_most(out.body, most).await?;
    check_length(body.len(), expected)?;
    // The SDK does not say how the body was framed: without a Content-Length, assume nothing.
    let framed = expected.is_some();
    Ok(Fetched { body, last_modified, ttfb: headers - sent, body_time: headers.elapsed(), integrity, part, framed })
}

/// What an answer says about its content, for checking it: the ETag, whether it is an
/// encrypted object's, and the `x-amz-checksum-*` values in [`crate::verify::CHECKSUM_HEADERS`]' order.
fn integrity(
    etag: Option<String>,
    sse: Option<&aws_sdk_s3::types::ServerSideEncryption>,
    sse_c: bool,
    values: [Option<String>; 5],
) -> crate::verify::Integrity {
    use aws_sdk_s3::types::ServerSideEncryption as Sse;
    crate::verify::Integrity {
        etag,
        encrypted: matches!(sse, Some(Sse::AwsKms | Sse::AwsKmsDsse)) || sse_c,
        checksums: crate::verify::CHECKSUM_HEADERS
            .iter()
            .zip(values)
            .filter_map(|((name, _), v)| Some((*name, v?)))
            .collect(),
    }
}

/// HeadObject with checksum mode: what S3 keeps of a whole object (its checksum, ETag and
/// encryption), for one fetched in ranges, which carry no checksum.
pub async fn head_integrity(
    client: &Client,
    bucket: &str,
    key: &str,
    version: Option<&str>,
    requester_pays: bool,
) -> Result<crate::verify::Integrity, String> {
    let out = crate::s3::head_object(client, bucket, key, version, requester_pays, true)
        .await?
        .ok_or_else(|| "NoSuchKey: the object is no longer there".to_owned())?;
    let values =
        [out.checksum_crc64_nvme, out.checksum_crc32_c, out.checksum_crc32, out.checksum_sha256, out.checksum_sha1];
    Ok(integrity(out.e_tag, out.server_side_encryption.as_ref(), out.sse_customer_algorithm.is_some(), values))
}

/// Reads a body of at most `most` bytes: a chunked one that goes on is [`Retry::Larger`],
/// not held whole.
async fn collect_at_most(mut body: aws_sdk_s3::primitives::ByteStream, most: u64) -> Result<bytes::Bytes, GetError> {
    let mut first: Option<bytes::Bytes> = None;
    let mut rest: Option<bytes::BytesMut> = None;
    let mut got = 0u64;
    while let Some(chunk) = body.try_next().await.map_err(body_error)? {
        got += chunk.len() as u64;
        if got > most {
            return Err(super::store::larger(got, most));
        }
        match (&mut first, &mut rest) {
            (_, Some(buf)) => buf.extend_from_slice(&chunk),
            (None, None) => first = Some(chunk),
            (Some(one), None) => {
                let mut buf = bytes::BytesMut::with_capacity(got as usize);
                buf.extend_from_slice(one);
                buf.extend_from_slice(&chunk);
                first = None;
                rest = Some(buf);
            }
        }
    }
    Ok(rest.map(bytes::BytesMut::freeze).or(first).unwrap_or_default())
}

/// A failed body read. With checksum mode on, the SDK validates the checksum while reading:
/// its mismatch is the same [`Retry::Corrupt`] as the lean engine's `--verify` finding.
fn body_error(e: aws_smithy_types::byte_stream::error::Error) -> GetError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.downcast_ref::<aws_smithy_checksums::body::validate::Error>().is_some() {
            return GetError {
                reason: format!("content does not match its checksum: {}", chain(&e)),
                retry: Retry::Corrupt,
            };
        }
        source = s.source();
    }
    GetError::transient(format!("reading body: {}", chain(&e)))
}
