//! Everything that talks to S3 through aws-sdk-s3: building the client (credentials,
//! region, endpoint, HTTP settings), listing, and GetObject. The only module that imports
//! `aws_sdk_s3`.
//!
//! HTTP settings that matter at hundreds of concurrent small GETs (issue #2):
//! - response checksum validation `WhenRequired`: no CRC over every body unless asked;
//! - stalled-stream protection off (it adds a throughput monitor to every body), replaced by
//!   a read timeout on the connection;
//! - the connection pool's idle timeout under S3's ~20 s, so we never reuse a connection S3
//!   is about to close;
//! - a caching DNS resolver, so hundreds of new connections don't mean hundreds of lookups.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;

use crate::config::{Credentials, S3Settings, S3Url};

/// Idle connections are dropped after this (S3 closes them after ~20 s).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long DNS answers are reused.
const DNS_TTL: Duration = Duration::from_secs(30);

/// Host name → (when resolved, addresses).
type DnsCache = HashMap<String, (Instant, Vec<IpAddr>)>;

/// A DNS resolver that reuses answers for [`DNS_TTL`], so a burst of new connections to
/// one endpoint costs one lookup.
#[derive(Debug, Clone, Default)]
struct CachingResolver {
    cache: Arc<Mutex<DnsCache>>,
}

impl ResolveDns for CachingResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            if let Ok(cache) = self.cache.lock()
                && let Some((at, addrs)) = cache.get(name)
                && at.elapsed() < DNS_TTL
            {
                return Ok(addrs.clone());
            }
            let addrs: Vec<IpAddr> =
                tokio::net::lookup_host((name, 0)).await.map_err(ResolveDnsError::new)?.map(|a| a.ip()).collect();
            if let Ok(mut cache) = self.cache.lock() {
                cache.insert(name.to_owned(), (Instant::now(), addrs.clone()));
            }
            Ok(addrs)
        })
    }
}

/// Builds the S3 client from the settings: aws-config's provider chain for credentials and
/// region (like the AWS CLI), our HTTP client settings on top.
pub async fn client(settings: &S3Settings) -> Client {
    let http_client = aws_smithy_http_client::Builder::new()
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
        .build_with_resolver(CachingResolver::default());

    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client);
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    match &settings.credentials {
        Credentials::DefaultChain => {}
        Credentials::Anonymous => loader = loader.no_credentials(),
        Credentials::Static { access_key, secret_key } => {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                access_key.clone(),
                secret_key.clone(),
                None,
                None,
                "s3uring-static",
            ));
        }
    }
    let sdk = loader.load().await;

    let mut b = aws_sdk_s3::config::Builder::from(&sdk)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(30))
                .build(),
        )
        .force_path_style(settings.force_path_style);
    if sdk.region().is_none() {
        // Like the AWS CLI: without a configured region, start at us-east-1; S3 names the
        // bucket's real region in its error if that is wrong.
        b = b.region(Region::new("us-east-1"));
    }
    if let Some(url) = &settings.endpoint_url {
        b = b.endpoint_url(url.clone());
    }
    Client::from_conf(b.build())
}

/// One listed object.
#[derive(Debug, Clone)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

/// Streams the keys under a prefix, one ListObjectsV2 page at a time.
pub struct Lister {
    client: Client,
    source: S3Url,
    token: Option<String>,
    done: bool,
}

impl Lister {
    pub fn new(client: &Client, source: &S3Url) -> Lister {
        Lister { client: client.clone(), source: source.clone(), token: None, done: false }
    }

    /// The next page, `None` after the last one.
    pub async fn next_page(&mut self) -> Option<Result<Vec<ListedObject>, String>> {
        if self.done {
            return None;
        }
        let mut req = self.client.list_objects_v2().bucket(&self.source.bucket);
        if !self.source.prefix.is_empty() {
            req = req.prefix(&self.source.prefix);
        }
        let out = match req.set_continuation_token(self.token.take()).send().await {
            Ok(out) => out,
            Err(e) => {
                self.done = true;
                return Some(Err(format!("cannot list {}: {}", self.source, describe(&e, Some(&self.source.bucket)))));
            }
        };
        self.token = out.next_continuation_token;
        self.done = !out.is_truncated.unwrap_or(false) || self.token.is_none();
        Some(Ok(out
            .contents
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| {
                Some(ListedObject {
                    key: o.key?,
                    size: o.size.unwrap_or(0).max(0) as u64,
                    last_modified: o.last_modified.and_then(|t| SystemTime::try_from(t).ok()),
                })
            })
            .collect()))
    }
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
}

/// GETs one object and collects its body, checking its length against Content-Length.
pub async fn get(client: &Client, bucket: &str, key: &str) -> Result<Fetched, String> {
    let sent = Instant::now();
    let out = client.get_object().bucket(bucket).key(key).send().await.map_err(|e| describe(&e, Some(bucket)))?;
    let headers = Instant::now();
    let expected = out.content_length;
    let last_modified = out.last_modified.and_then(|t| SystemTime::try_from(t).ok());
    let body = out.body.collect().await.map_err(|e| format!("reading body: {}", chain(&e)))?.into_bytes();
    if let Some(n) = expected
        && n >= 0
        && body.len() as u64 != n as u64
    {
        return Err(format!("body has {} bytes, Content-Length said {n}", body.len()));
    }
    Ok(Fetched { body, last_modified, ttfb: headers - sent, body_time: headers.elapsed() })
}

/// The error and its sources on one line: `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}

/// One line for an SDK error: the S3 error code and message when the service answered,
/// otherwise the root cause of the transport failure.
pub fn describe<E, R>(e: &SdkError<E, R>, bucket: Option<&str>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("unknown error");
            let msg = err.message().unwrap_or("");
            let hint = match (code, bucket) {
                ("NoSuchBucket", Some(b)) => format!(": bucket '{b}' does not exist"),
                (
                    "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "NotSignedUp" | "InvalidToken" | "ExpiredToken",
                    _,
                ) => ": the credentials were rejected (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile)"
                    .to_owned(),
                ("AccessDenied", _) => ": access denied (check the credentials' permissions)".to_owned(),
                ("PermanentRedirect" | "AuthorizationHeaderMalformed", _) => {
                    ": the bucket is in another region (set --region)".to_owned()
                }
                _ => String::new(),
            };
            if msg.is_empty() { format!("{code}{hint}") } else { format!("{code}{hint} ({msg})") }
        }
        SdkError::DispatchFailure(df) => {
            let what = if df.is_timeout() {
                "timed out connecting"
            } else if df.is_io() {
                "cannot connect"
            } else {
                "request failed"
            };
            let cause = df.as_connector_error().map(|ce| chain(ce)).unwrap_or_default();
            if cause.contains("loading credentials") || cause.contains("credential provider") {
                // One line: the provider chain's per-provider report is multi-line.
                let cause = cause.lines().next().unwrap_or_default().trim_end_matches(" Attempted:");
                // The identity resolver failed before any request was sent.
                return format!(
                    "no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                     AWS_PROFILE or --profile, or use --no-sign-request for a public bucket): {cause}"
                );
            }
            if cause.is_empty() { what.to_owned() } else { format!("{what}: {cause}") }
        }
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        SdkError::ResponseError(_) => format!("bad response: {}", chain(e)),
        SdkError::ConstructionFailure(_) => format!("cannot build the request: {}", chain(e)),
        _ => chain(e),
    }
}
