//! Everything that talks to S3 through aws-sdk-s3 — the control plane: building the client
//! (credentials, region, endpoint, HTTP settings), listing, resolving a bucket's endpoint and
//! credentials for the lean data plane ([`crate::fetch::lean`]), and the reference GetObject
//! (`--fetch-engine sdk`). The only module that calls SDK operations. Listing has a seam
//! ([`ListObjects`]): the lean engine sends list requests itself and reads them with
//! [`parse_list_page`].
//!
//! HTTP settings that matter at hundreds of concurrent small GETs:
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
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::config::{Credentials, S3Settings};

/// Idle connections are dropped after this (S3 closes them after ~20 s).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long DNS answers are reused.
const DNS_TTL: Duration = Duration::from_secs(30);

/// Host name → (when resolved, addresses).
type DnsCache = HashMap<String, (Instant, Vec<IpAddr>)>;

/// A DNS resolver that reuses answers for [`DNS_TTL`], so a burst of new connections to
/// one endpoint costs one lookup.
#[derive(Debug, Clone, Default)]
pub(crate) struct CachingResolver {
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

/// The control plane: the SDK client (listing, credentials, region, endpoint rules) and what
/// the data plane needs from it.
#[derive(Debug, Clone)]
pub struct Control {
    pub client: Client,
    /// The same client with retries off: our own retry loop (shared by both fetch engines)
    /// decides what to retry, so the SDK engine's GETs use this one.
    pub client_no_retry: Client,
    /// What the endpoint rules need besides the bucket.
    endpoint: EndpointBase,
    /// The provider chain aws-config resolved (`None`: anonymous).
    credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
}

#[derive(Debug, Clone)]
struct EndpointBase {
    region: String,
    endpoint_url: Option<String>,
    force_path_style: bool,
    use_fips: bool,
    use_dual_stack: bool,
}

/// Where and how to send a bucket's GETs, as the SDK's endpoint rules resolved them.
#[derive(Debug, Clone)]
pub struct BucketEndpoint {
    /// `scheme://authority[/path]`: keys are appended to it (`/bucket` in path style).
    pub url: String,
    pub signing_region: String,
    pub signing_name: String,
}

impl Control {
    /// The endpoint URL in use (`None`: AWS's own, by region) and whether buckets are
    /// addressed path style.
    pub fn endpoint_in_use(&self) -> (Option<String>, bool) {
        (self.endpoint.endpoint_url.clone(), self.endpoint.force_path_style)
    }

    /// The client with the SDK's standard retry mode at `retries` + 1 attempts (`--retries`,
    /// for list requests under `--fetch-engine sdk`); the control client keeps the SDK's 3.
    pub fn client_with_retries(&self, retries: u32) -> Client {
        let conf = self.client.config().to_builder();
        Client::from_conf(
            conf.retry_config(RetryConfig::standard().with_max_attempts(retries.saturating_add(1))).build(),
        )
    }

    /// Resolves the endpoint of `bucket` once, with the client's own resolver, so
    /// virtual-hosted and path style, FIPS, dual-stack and custom endpoints are exactly the
    /// SDK's. Fails for endpoints that need another signing scheme than SigV4.
    pub async fn bucket_endpoint(&self, bucket: &str) -> Result<BucketEndpoint, String> {
        use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint as _};
        let b = &self.endpoint;
        let params = Params::builder()
            .bucket(bucket)
            .region(b.region.clone())
            .use_fips(b.use_fips)
            .use_dual_stack(b.use_dual_stack)
            .force_path_style(b.force_path_style)
            .set_endpoint(b.endpoint_url.clone())
            .build()
            .map_err(|e| format!("endpoint parameters: {e}"))?;
        // The client is built with the SDK's default rules (no custom resolver is ever set).
        let ep = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(|e| format!("cannot resolve the endpoint of bucket '{bucket}': {}", chain(&*e)))?;
        let mut out = BucketEndpoint {
            url: ep.url().trim_end_matches('/').to_owned(),
            signing_region: b.region.clone(),
            signing_name: "s3".to_owned(),
        };
        if let Some(aws_smithy_types::Document::Array(schemes)) = ep.properties().get("authSchemes")
            && let Some(aws_smithy_types::Document::Object(scheme)) = schemes.first()
        {
            let text = |k: &str| match scheme.get(k) {
                Some(aws_smithy_types::Document::String(s)) => Some(s.clone()),
                _ => None,
            };
            match text("name").as_deref() {
                Some("sigv4") | None => {}
                Some(other) => return Err(format!("the endpoint of bucket '{bucket}' needs {other} signing")),
            }
            if let Some(r) = text("signingRegion") {
                out.signing_region = r;
            }
            if let Some(n) = text("signingName") {
                out.signing_name = n;
            }
        }
        Ok(out)
    }

    /// The credentials the SDK resolved, cached for a signer (`None`: anonymous requests).
    pub fn identities(&self) -> Option<Identities> {
        self.credentials.clone().map(Identities::new)
    }
}

/// Credentials are fetched again this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// A failed refresh is tried again after this long at first, doubling up to a minute.
const REFRESH_RETRY_FIRST: Duration = Duration::from_secs(2);
const REFRESH_RETRY_MAX: Duration = Duration::from_secs(60);

/// The SDK's credentials provider (aws-config's chain: environment, profiles, SSO, web
/// identity, IMDS …), cached and refreshed [`REFRESH_BEFORE_EXPIRY`] before expiry, so every
/// signature uses current credentials and the provider is asked once per refresh (by one
/// task, the others wait), not per GET. A refresh that fails (STS or IMDS throttled while
/// many pods refresh at once) keeps the cached credentials while they are valid and is tried
/// again with backoff; only credentials that have expired fail a GET, and then as a
/// transient failure.
pub struct Identities {
    provider: aws_sdk_s3::config::SharedCredentialsProvider,
    current: std::sync::RwLock<Option<Cached>>,
    refresh: tokio::sync::Mutex<Duration>,
}

#[derive(Clone)]
struct Cached {
    identity: Identity,
    /// Ask the provider again from then on.
    refresh_at: Option<SystemTime>,
    /// The credentials' own expiry.
    expires: Option<SystemTime>,
    /// Why the last refresh failed, while it is backing off.
    failed: Option<String>,
}

impl Identities {
    fn new(provider: aws_sdk_s3::config::SharedCredentialsProvider) -> Identities {
        Identities { provider, current: std::sync::RwLock::new(None), refresh: tokio::sync::Mutex::new(Duration::ZERO) }
    }

    /// The cached identity, unless it is time to refresh it: `Err` when it has expired and
    /// the last refresh failed moments ago (the provider is not asked again before its
    /// backoff ends, and nothing is signed with expired credentials).
    fn cached(&self) -> Option<Result<Identity, CredentialsError>> {
        let guard = self.current.read().ok()?;
        let c = guard.as_ref()?;
        if c.refresh_at.is_some_and(|at| SystemTime::now() >= at) {
            return None;
        }
        match (&c.failed, c.expires) {
            (Some(why), Some(t)) if t <= SystemTime::now() => Some(Err(CredentialsError::passing(format!(
                "the credentials expired and refreshing them failed: {why}"
            )))),
            _ => Some(Ok(c.identity.clone())),
        }
    }
}

/// No credentials to sign with: `permanent` when there never were any (a setup problem),
/// else a passing failure to refresh them.
#[derive(Debug, Clone)]
pub struct CredentialsError {
    pub reason: String,
    pub permanent: bool,
}

impl CredentialsError {
    fn passing(reason: String) -> CredentialsError {
        CredentialsError { reason, permanent: false }
    }
}

impl Identities {
    /// Current credentials as a signing identity.
    pub async fn get(&self) -> Result<Identity, CredentialsError> {
        if let Some(cached) = self.cached() {
            return cached;
        }
        let mut backoff = self.refresh.lock().await;
        if let Some(cached) = self.cached() {
            return cached;
        }
        use aws_sdk_s3::config::ProvideCredentials as _;
        match self.provider.provide_credentials().await {
            Ok(creds) => {
                *backoff = Duration::ZERO;
                let expires = creds.expiry();
                let refresh_at = expires.map(|t| t.checked_sub(REFRESH_BEFORE_EXPIRY).unwrap_or(t));
                let identity = Identity::from(creds);
                if let Ok(mut cur) = self.current.write() {
                    *cur = Some(Cached { identity: identity.clone(), refresh_at, expires, failed: None });
                }
                Ok(identity)
            }
            Err(e) => {
                // One line: the provider chain's per-provider report is multi-line.
                let why = chain(&e).lines().next().unwrap_or_default().trim_end_matches(" Attempted:").to_owned();
                let now = SystemTime::now();
                let mut cur =
                    self.current.write().map_err(|_| CredentialsError::passing("credentials cache poisoned".into()))?;
                let Some(c) = cur.as_mut() else {
                    // Never had any: a setup problem, not a passing one.
                    return Err(CredentialsError { reason: format!("{NO_CREDENTIALS}: {why}"), permanent: true });
                };
                *backoff = (*backoff * 2).clamp(REFRESH_RETRY_FIRST, REFRESH_RETRY_MAX);
                c.failed = Some(why.clone());
                if c.expires.is_none_or(|t| t > now) {
                    if *backoff == REFRESH_RETRY_FIRST {
                        tracing::warn!(
                            "refreshing the credentials failed ({why}); the current ones are used until they expire"
                        );
                    }
                    c.refresh_at = Some(now + *backoff);
                    return Ok(c.identity.clone());
                }
                c.refresh_at = Some(now + *backoff);
                Err(CredentialsError::passing(format!("the credentials expired and refreshing them failed: {why}")))
            }
        }
    }
}

const NO_CREDENTIALS: &str = "no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
     AWS_PROFILE or --profile, or use --no-sign-request for a public bucket)";

/// Builds the S3 client from the settings: aws-config's provider chain for credentials and
/// region (like the AWS CLI), our HTTP client settings on top. Fails only for a
/// `--ca-bundle` the SDK refuses.
pub async fn client(settings: &S3Settings) -> Result<Control, String> {
    let proxies = settings.proxies;
    let mut tls_context = None;
    if let Some(ca) = &settings.ca_bundle {
        // The Rust SDK ignores AWS_CA_BUNDLE; the AWS CLI trusts the bundle alone.
        let store = tls::TrustStore::empty().with_native_roots(false).with_pem_certificate(ca.pem.clone());
        // The bundle was checked when loaded (a certificate that does not parse makes the
        // connector panic); a bundle the SDK still refuses stops the run rather than letting
        // it trust the system's roots instead.
        let ctx = tls::TlsContext::builder().with_trust_store(store).build();
        tls_context = Some(ctx.map_err(|e| format!("--ca-bundle '{}': {e}", ca.path.display()))?);
    }
    // The SDK's client builder leaves proxies off; its connector builder takes them. Built per
    // client the way the builder would, plus HTTP(S)_PROXY / NO_PROXY as the AWS CLI reads them.
    let http_client = aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
        let mut conn = aws_smithy_http_client::Connector::builder().pool_idle_timeout(POOL_IDLE_TIMEOUT).proxy_config(
            match proxies {
                true => aws_smithy_http_client::proxy::ProxyConfig::from_env(),
                false => aws_smithy_http_client::proxy::ProxyConfig::disabled(),
            },
        );
        conn.set_connector_settings(settings.cloned());
        conn.set_sleep_impl(components.and_then(|c| c.sleep_impl()));
        let conn = conn.tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc));
        match &tls_context {
            Some(ctx) => conn.tls_context(ctx.clone()),
            None => conn,
        }
        .build_with_resolver(CachingResolver::default())
    });

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
                // A whole attempt of a request whose answer the SDK reads itself (a list page,
                // HEAD): a body dribbling a byte at a time passes every read timeout. For a
                // GET it ends with the headers, the body being read by us.
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    // Like the AWS CLI: without a configured region, start at us-east-1; S3 names the
    // bucket's real region in its error if that is wrong.
    let region = sdk.region().map_or_else(|| "us-east-1".to_owned(), |r| r.to_string());
    b = b.region(Region::new(region.clone()));
    // The endpoint the S3 client would use, which the lean engine must use too: the flag, else
    // S3's own setting (AWS_ENDPOINT_URL_S3, the profile's `services` section), else the one
    // for every service (AWS_ENDPOINT_URL, the profile's `endpoint_url`).
    let endpoint_url = settings.endpoint_url.clone().or_else(|| configured_endpoint(&sdk));
    if let Some(url) = &endpoint_url {
        b = b.endpoint_url(url.clone());
    }
    let force_path_style = settings.force_path_style.unwrap_or(endpoint_url.is_some());
    b = b.force_path_style(force_path_style);
    let conf = b.build();
    let no_retry = conf.to_builder().retry_config(RetryConfig::disabled()).build();
    Ok(Control {
        client: Client::from_conf(conf),
        client_no_retry: Client::from_conf(no_retry),
        credentials: sdk.credentials_provider(),
        endpoint: EndpointBase {
            region,
            endpoint_url,
            force_path_style,
            use_fips: sdk.use_fips().unwrap_or(false),
            use_dual_stack: sdk.use_dual_stack().unwrap_or(false),
        },
    })
}

/// The S3 endpoint URL the environment or profile configures, read as the SDK's S3 client
/// reads it.
fn configured_endpoint(sdk: &aws_config::SdkConfig) -> Option<String> {
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("S3")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .ok()?;
    sdk.service_config().and_then(|c| c.load_config(key)).or_else(|| sdk.endpoint_url().map(str::to_owned))
}

/// HeadObject: `Ok(Some((size, last_modified)))` when `key` (at `version`) exists and can be
/// read, `Ok(None)` when the service says it does not exist (404), and the reason for any
/// other answer (403, 5xx, a network failure): only a 404 means "not an object".
pub async fn head(
    client: &Client,
    bucket: &str,
    key: &str,
    version: Option<&str>,
    requester_pays: bool,
) -> Result<Option<(u64, Option<SystemTime>)>, String> {
    Ok(head_object(client, bucket, key, version, requester_pays, false).await?.map(|out| {
        (
            out.content_length.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            out.last_modified.and_then(|t| SystemTime::try_from(t).ok()),
        )
    }))
}

/// HeadObject's whole answer, with the object's checksums when `checksums` (checksum mode);
/// `Ok(None)` on a 404, and the reason for any other failure, as [`head`].
pub async fn head_object(
    client: &Client,
    bucket: &str,
    key: &str,
    version: Option<&str>,
    requester_pays: bool,
    checksums: bool,
) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>, String> {
    let mut req = client.head_object().bucket(bucket).key(key).set_version_id(version.map(str::to_owned));
    if requester_pays {
        req = req.request_payer(aws_sdk_s3::types::RequestPayer::Requester);
    }
    if checksums {
        req = req.checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled);
    }
    match req.send().await {
        Ok(out) => Ok(Some(out)),
        Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => Ok(None),
        Err(e) => {
            // A HEAD answer has no body: name the status when the SDK found no code.
            let status = match &e {
                SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
                _ => None,
            };
            let why = describe(&e, Some(bucket));
            Err(match status {
                Some(s) if why.starts_with(UNKNOWN_CODE) => status_reason(s, bucket),
                _ => why,
            })
        }
    }
}

/// What an HTTP status alone says, for answers without an S3 error code (HEAD has no body).
fn status_reason(status: u16, bucket: &str) -> String {
    match status {
        403 => service_error("AccessDenied", "", Some(bucket)),
        400 => "400 Bad Request (an SSE-C object needs its key, or the request was malformed)".to_owned(),
        301 => service_error("PermanentRedirect", "", Some(bucket)),
        s => format!("HTTP {s}"),
    }
}

/// [`ListedObject::size`] when the key source does not tell it (`--keys-from`, an inventory
/// without a Size column): such an object is fetched in ranged parts, the first of which
/// tells the size (Content-Range), so memory stays within the budget whatever it holds.
pub const UNKNOWN_SIZE: u64 = u64::MAX;

/// One listed object.
#[derive(Debug, Clone)]
pub struct ListedObject {
    pub key: String,
    /// Bytes, or [`UNKNOWN_SIZE`].
    pub size: u64,
    pub last_modified: Option<SystemTime>,
    /// Set when the object is in an archive storage class (GLACIER, DEEP_ARCHIVE) and not
    /// restored: a GET would fail with InvalidObjectState.
    pub archived: Option<String>,
    /// The ETag, without quotes: for the skip check, and kept with the file.
    pub etag: Option<String>,
}

/// The archive class of a listed object that cannot be read without a restore: in GLACIER or
/// DEEP_ARCHIVE, and no restored copy (a restore not in progress, with an expiry date).
fn archived(class: Option<&str>, in_progress: Option<bool>, expires: bool) -> Option<String> {
    let class = class?;
    if !matches!(class, "GLACIER" | "DEEP_ARCHIVE") {
        return None;
    }
    let restored = in_progress != Some(true) && expires;
    (!restored).then(|| class.to_owned())
}

/// One ListObjectsV2 page of a parallel listing ([`crate::source::listing`]).
#[derive(Debug, Default)]
pub struct Page {
    pub objects: Vec<ListedObject>,
    /// With a delimiter: the "directories" on this page.
    pub common_prefixes: Vec<String>,
    /// Continuation token of the next page, if the listing is truncated.
    pub next: Option<String>,
}

/// One ListObjectsV2 request: keys under `prefix` (grouped at `/` when `delimiter`), after
/// `start_after` or from continuation `token`.
#[derive(Debug, Clone, Copy)]
pub struct ListQuery<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub delimiter: bool,
    pub start_after: Option<&'a str>,
    pub token: Option<&'a str>,
    pub requester_pays: bool,
}

impl ListQuery<'_> {
    /// The failure message for this listing: `cannot list s3://bucket/prefix: why`.
    pub fn failed(&self, why: &str) -> String {
        format!("cannot list s3://{}/{}: {why}", self.bucket, self.prefix)
    }
}

/// A list page's future.
pub type PageFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Page, String>> + Send + 'a>>;

/// Where list requests go: the SDK's client ([`list_page`]), or the lean engine's connections,
/// which read the answer with [`parse_list_page`] at a fraction of the SDK's cost. Either
/// retries transient failures itself (both implementations are in [`crate::fetch`]).
pub trait ListObjects: Send + Sync {
    fn list_page<'a>(&'a self, q: ListQuery<'a>) -> PageFuture<'a>;
}

/// The SDK's error for a ListObjectsV2 request.
pub type ListError = SdkError<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error, HttpResponse>;

/// One ListObjectsV2 request through the SDK (and its retry mode); the SDK engine's list
/// requests ([`crate::fetch`]) decide what a failure means.
pub async fn list_page(client: &Client, q: ListQuery<'_>) -> Result<Page, ListError> {
    let mut req = client.list_objects_v2().bucket(q.bucket);
    if q.requester_pays {
        req = req.request_payer(aws_sdk_s3::types::RequestPayer::Requester);
    }
    if !q.prefix.is_empty() {
        req = req.prefix(q.prefix);
    }
    if q.delimiter {
        req = req.delimiter("/");
    }
    // Archived objects: is a restored copy readable?
    req = req.optional_object_attributes(aws_sdk_s3::types::OptionalObjectAttributes::RestoreStatus);
    // Keys URL-encoded, as the AWS CLI asks: a key with a control character is otherwise sent
    // as an XML character reference that no XML parser accepts, and the page fails.
    req = req.encoding_type(aws_sdk_s3::types::EncodingType::Url);
    match (q.token, q.start_after) {
        (Some(token), _) => req = req.continuation_token(token),
        (None, Some(after)) => req = req.start_after(after),
        (None, None) => {}
    }
    let out = match req.send().await {
        Ok(out) => out,
        // The SDK's XML reader refuses a 200 that is not well-formed XML 1.0: a store that
        // ignores encoding-type=url sends a key's control character bare (s3rver does), and
        // the whole listing would stop there. The lean engine's reader takes such a page, and
        // so it is read here too; a page that reader cannot read either stays the SDK's error.
        Err(SdkError::ServiceError(se)) if se.raw().status().is_success() => {
            match se.raw().body().bytes().map(parse_list_page) {
                Some(Ok(page)) => return Ok(page),
                _ => return Err(SdkError::ServiceError(se)),
            }
        }
        Err(e) => return Err(e),
    };
    let truncated = out.is_truncated.unwrap_or(false);
    let decode = decoder(out.encoding_type.as_ref().map(|t| t.as_str()));
    Ok(Page {
        objects: out
            .contents
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| {
                let restore = o.restore_status.as_ref();
                Some(ListedObject {
                    archived: archived(
                        o.storage_class.as_ref().map(|c| c.as_str()),
                        restore.and_then(|r| r.is_restore_in_progress),
                        restore.is_some_and(|r| r.restore_expiry_date.is_some()),
                    ),
                    key: decode(o.key?),
                    size: o.size.unwrap_or(0).max(0) as u64,
                    last_modified: o.last_modified.and_then(|t| SystemTime::try_from(t).ok()),
                    etag: o.e_tag.map(|t| t.trim_matches('"').to_owned()),
                })
            })
            .collect(),
        common_prefixes: out
            .common_prefixes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.prefix.map(&decode))
            .collect(),
        next: if truncated { out.next_continuation_token } else { None },
    })
}

/// How keys of a page are read back: URL-decoded only when the store says it encoded them
/// (`EncodingType` url). One that ignores the parameter sends keys as they are, and decoding
/// those would turn a '+' or a '%41' in a key into something else.
fn decoder(encoding_type: Option<&str>) -> impl Fn(String) -> String {
    let encoded = encoding_type.is_some_and(|t| t.eq_ignore_ascii_case("url"));
    move |k: String| if encoded { url_decode(&k).unwrap_or(k) } else { k }
}

/// Reads a ListObjectsV2 answer (the XML body of a 200): the fields a restore uses, every
/// other element skipped. Text is taken as it is (entity and character references resolved,
/// no end-of-line folding), as the SDK reads it.
pub fn parse_list_page(xml: &[u8]) -> Result<Page, String> {
    use quick_xml::events::Event;

    /// Elements whose children are read.
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Result,
        Contents,
        CommonPrefixes,
        RestoreStatus,
        Other,
    }
    /// The text being read.
    #[derive(Clone, Copy, PartialEq)]
    enum Text {
        Skip,
        Key,
        Size,
        LastModified,
        ETag,
        StorageClass,
        InProgress,
        Expiry,
        Prefix,
        Truncated,
        Token,
        Encoding,
    }
    #[derive(Default)]
    struct Object {
        key: Option<String>,
        size: i64,
        last_modified: Option<SystemTime>,
        etag: Option<String>,
        class: Option<String>,
        in_progress: Option<bool>,
        expires: bool,
    }

    let bad = |what: &dyn std::fmt::Display| format!("cannot read the ListObjectsV2 answer: {what}");
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut open: Vec<In> = Vec::with_capacity(8);
    let (mut reading, mut text) = (Text::Skip, String::new());
    let (mut object, mut objects, mut prefixes) = (Object::default(), Vec::new(), Vec::new());
    let (mut truncated, mut token, mut encoding) = (false, None, None);
    let mut is_list = false;
    loop {
        let event = reader.read_event().map_err(|e| bad(&format_args!("at byte {}: {e}", reader.error_position())))?;
        let (start, end) = match &event {
            Event::Start(e) => (Some(e.local_name()), false),
            Event::Empty(e) => (Some(e.local_name()), true),
            Event::End(_) => (None, true),
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) if reading == Text::Skip => continue,
            Event::Text(t) => {
                text.push_str(&t.decode().map_err(|e| bad(&e))?);
                continue;
            }
            Event::CData(t) => {
                text.push_str(&t.decode().map_err(|e| bad(&e))?);
                continue;
            }
            Event::GeneralRef(r) => {
                match r.resolve_char_ref().map_err(|e| bad(&e))? {
                    Some(c) => text.push(c),
                    None => {
                        let name = r.decode().map_err(|e| bad(&e))?;
                        let value = quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| bad(&format_args!("unknown entity &{name};")))?;
                        text.push_str(value);
                    }
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        if let Some(name) = start {
            let name = name.as_ref();
            let (element, what) = match (open.last(), name) {
                (None, b"ListBucketResult") => {
                    is_list = true;
                    (In::Result, Text::Skip)
                }
                (Some(In::Result), b"Contents") => {
                    object = Object::default();
                    (In::Contents, Text::Skip)
                }
                (Some(In::Result), b"CommonPrefixes") => (In::CommonPrefixes, Text::Skip),
                (Some(In::Result), b"IsTruncated") => (In::Other, Text::Truncated),
                (Some(In::Result), b"NextContinuationToken") => (In::Other, Text::Token),
                (Some(In::Result), b"EncodingType") => (In::Other, Text::Encoding),
                (Some(In::Contents), b"Key") => (In::Other, Text::Key),
                (Some(In::Contents), b"Size") => (In::Other, Text::Size),
                (Some(In::Contents), b"LastModified") => (In::Other, Text::LastModified),
                (Some(In::Contents), b"ETag") => (In::Other, Text::ETag),
                (Some(In::Contents), b"StorageClass") => (In::Other, Text::StorageClass),
                (Some(In::Contents), b"RestoreStatus") => (In::RestoreStatus, Text::Skip),
                (Some(In::RestoreStatus), b"IsRestoreInProgress") => (In::Other, Text::InProgress),
                (Some(In::RestoreStatus), b"RestoreExpiryDate") => (In::Other, Text::Expiry),
                (Some(In::CommonPrefixes), b"Prefix") => (In::Other, Text::Prefix),
                (None, _) => {
                    return Err(bad(&format_args!(
                        "<{}> instead of <ListBucketResult>",
                        String::from_utf8_lossy(name)
                    )));
                }
                _ => (In::Other, Text::Skip),
            };
            open.push(element);
            reading = what;
            text.clear();
        }
        if !end {
            continue;
        }
        // Text kept as a string is taken; text read as a value is parsed in place, and its
        // buffer serves the next element.
        let value = text.trim();
        match std::mem::replace(&mut reading, Text::Skip) {
            Text::Skip => {}
            Text::Key => object.key = Some(std::mem::take(&mut text)),
            Text::Size => object.size = value.parse().map_err(|_| bad(&format_args!("size '{value}'")))?,
            Text::LastModified => {
                object.last_modified =
                    aws_smithy_types::DateTime::from_str(value, aws_smithy_types::date_time::Format::DateTime)
                        .ok()
                        .and_then(|t| SystemTime::try_from(t).ok())
            }
            Text::ETag => object.etag = Some(text.trim_matches('"').to_owned()),
            Text::StorageClass => object.class = Some(std::mem::take(&mut text)),
            Text::InProgress => object.in_progress = Some(value == "true"),
            Text::Expiry => object.expires = !value.is_empty(),
            Text::Prefix => prefixes.push(std::mem::take(&mut text)),
            Text::Truncated => truncated = value == "true",
            Text::Token => token = Some(std::mem::take(&mut text)),
            Text::Encoding => encoding = Some(std::mem::take(&mut text)),
        }
        text.clear();
        if open.pop() == Some(In::Contents) {
            let o = std::mem::take(&mut object);
            if let Some(key) = o.key {
                objects.push(ListedObject {
                    archived: archived(o.class.as_deref(), o.in_progress, o.expires),
                    key,
                    size: o.size.max(0) as u64,
                    last_modified: o.last_modified,
                    etag: o.etag,
                });
            }
        }
    }
    if !is_list {
        return Err(bad(&"no <ListBucketResult> in it"));
    }
    if !open.is_empty() {
        // Cut short: a page read in part must not pass for the whole page.
        return Err(bad(&"it ends before </ListBucketResult>"));
    }
    let decode = decoder(encoding.as_deref());
    for o in &mut objects {
        o.key = decode(std::mem::take(&mut o.key));
    }
    Ok(Page {
        objects,
        common_prefixes: prefixes.into_iter().map(&decode).collect(),
        next: if truncated { token } else { None },
    })
}

/// Decodes a key S3 sent URL-encoded (a listing with `encoding-type=url`, an inventory):
/// `%XX` escapes and `+` for a space (form encoding; a literal `+` is written `%2B`).
pub fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The error and its sources on one line: `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
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

/// The start of [`describe`]'s line for an answer that carries no S3 error code.
const UNKNOWN_CODE: &str = "unreadable answer";

/// One line for an SDK error: the S3 error code and message when the service answered,
/// otherwise the root cause of the transport failure.
pub fn describe<E>(e: &SdkError<E, HttpResponse>, bucket: Option<&str>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            match err.code() {
                Some(code) => service_error(code, err.message().unwrap_or(""), bucket),
                // No S3 error code: an answer the SDK could not read (a page it failed to
                // parse) or one without a body. Say what came back and why it failed.
                None => format!("{UNKNOWN_CODE} (HTTP {}): {}", se.raw().status().as_u16(), chain(err)),
            }
        }
        SdkError::DispatchFailure(df) => {
            let cause = df.as_connector_error().map(|ce| chain(ce)).unwrap_or_default();
            let what = if df.is_timeout() && cause.contains("read timeout") {
                // Connected and sent: the answer did not come in time.
                "no response in time"
            } else if df.is_timeout() {
                "timed out connecting"
            } else if df.is_io() {
                "cannot connect"
            } else {
                "request failed"
            };
            if cause.contains("loading credentials") || cause.contains("credential provider") {
                // One line: the provider chain's per-provider report is multi-line.
                let cause = cause.lines().next().unwrap_or_default().trim_end_matches(" Attempted:");
                // The identity resolver failed before any request was sent.
                return format!("{NO_CREDENTIALS}: {cause}");
            }
            let proxies = proxy_hint();
            if cause.is_empty() {
                format!("{what}{proxies}")
            } else {
                format!("{what}: {cause}{}{proxies}", tls_hint(&cause))
            }
        }
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        SdkError::ResponseError(_) => format!("bad response: {}", chain(e)),
        SdkError::ConstructionFailure(_) => format!("cannot build the request: {}", chain(e)),
        _ => chain(e),
    }
}

/// For a failed connection: the proxy variables set, which the SDK's connections follow unless
/// `NO_PROXY` names the host (credentials in a proxy URL left out).
fn proxy_hint() -> String {
    let set: Vec<String> = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .filter_map(|var| {
            let url = std::env::var(var).ok().filter(|v| !v.is_empty())?;
            let shown = match url.parse::<http::Uri>() {
                Ok(u) => match (u.scheme_str(), u.host()) {
                    (Some(scheme), Some(host)) => {
                        format!("{scheme}://{host}{}", u.port().map(|p| format!(":{p}")).unwrap_or_default())
                    }
                    _ => url.rsplit('@').next().unwrap_or_default().to_owned(),
                },
                Err(_) => url.rsplit('@').next().unwrap_or_default().to_owned(),
            };
            Some(format!("{var}={shown}"))
        })
        .collect();
    match set.is_empty() {
        true => String::new(),
        false => format!(" (proxy settings: {})", set.join(", ")),
    }
}

/// A hint for a TLS failure caused by an untrusted server certificate.
pub fn tls_hint(cause: &str) -> &'static str {
    if cause.contains("invalid peer certificate") {
        " (the endpoint's certificate is not trusted here: give its CA with --ca-bundle FILE)"
    } else {
        ""
    }
}

/// One line for an error S3 answered with: `Code: hint (Message)`. Both fetch engines use it,
/// so their messages are identical.
pub fn service_error(code: &str, msg: &str, bucket: Option<&str>) -> String {
    let hint = match (code, bucket) {
        ("NoSuchBucket", Some(b)) => format!(": bucket '{b}' does not exist"),
        ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "NotSignedUp" | "InvalidToken" | "ExpiredToken", _) => {
            ": the credentials were rejected (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile)".to_owned()
        }
        ("AccessDenied", _) => ": access denied (check the credentials' permissions)".to_owned(),
        ("PreconditionFailed", _) => ": the object changed while it was being copied in parts".to_owned(),
        ("PermanentRedirect" | "AuthorizationHeaderMalformed", _) => {
            ": the bucket is in another region (set --region)".to_owned()
        }
        _ => String::new(),
    };
    if msg.is_empty() { format!("{code}{hint}") } else { format!("{code}{hint} ({msg})") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials that expire `expires_in` seconds from now (negative: already expired),
    /// then a provider that fails, as STS does when throttled. Counts its calls.
    #[derive(Debug, Default)]
    struct Flaky {
        calls: std::sync::atomic::AtomicUsize,
        expires_in: i64,
    }

    impl Flaky {
        fn calls(&self) -> usize {
            self.calls.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl aws_sdk_s3::config::ProvideCredentials for Flaky {
        fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            aws_credential_types::provider::future::ProvideCredentials::ready(if n == 0 {
                let expiry = match self.expires_in {
                    s @ 0.. => SystemTime::now() + Duration::from_secs(s as u64),
                    s => SystemTime::now() - Duration::from_secs(s.unsigned_abs()),
                };
                Ok(aws_sdk_s3::config::Credentials::new("AKID", "secret", None, Some(expiry), "test"))
            } else {
                Err(aws_credential_types::provider::error::CredentialsError::provider_error("throttled"))
            })
        }
    }

    /// A provider shared with the test, which counts its calls.
    #[derive(Debug)]
    struct Shared<P>(std::sync::Arc<P>);

    impl<P: aws_sdk_s3::config::ProvideCredentials> aws_sdk_s3::config::ProvideCredentials for Shared<P> {
        fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.0.provide_credentials()
        }
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_valid_credentials_and_backs_off() {
        // Valid for two more minutes: inside the refresh window.
        let flaky = std::sync::Arc::new(Flaky { expires_in: 120, ..Flaky::default() });
        let ids = Identities::new(aws_sdk_s3::config::SharedCredentialsProvider::new(Shared(flaky.clone())));
        let first = ids.get().await.expect("first credentials");
        // Inside the refresh window: the provider is asked, fails, the cached ones serve.
        let second = ids.get().await.expect("still valid");
        assert_eq!(
            format!("{:?}", first.data::<aws_sdk_s3::config::Credentials>().map(|c| c.access_key_id().to_owned())),
            format!("{:?}", second.data::<aws_sdk_s3::config::Credentials>().map(|c| c.access_key_id().to_owned()))
        );
        assert_eq!(flaky.calls(), 2);
        // Backing off: not asked again at once, by any of many tasks.
        for _ in 0..100 {
            ids.get().await.expect("still valid");
        }
        assert_eq!(flaky.calls(), 2);
    }

    #[tokio::test]
    async fn expired_credentials_that_fail_to_refresh_fail_each_get_as_passing_and_are_never_used() {
        let expired = std::sync::Arc::new(Flaky { expires_in: -1, ..Flaky::default() });
        let ids = Identities::new(aws_sdk_s3::config::SharedCredentialsProvider::new(Shared(expired.clone())));
        ids.get().await.expect("the credentials as issued");
        // Expired: refreshed at once, which fails; then, while the refresh backs off, every
        // GET fails the same way (a transient failure, retried), and none is signed with them.
        for _ in 0..100 {
            let Err(e) = ids.get().await else { panic!("signed with expired credentials") };
            assert!(!e.permanent, "{}", e.reason);
            assert!(e.reason.starts_with("the credentials expired and refreshing them failed: "), "{}", e.reason);
            assert!(e.reason.ends_with("throttled"), "{}", e.reason);
        }
        assert_eq!(expired.calls(), 2, "the provider asked once per backoff");
    }

    #[test]
    fn url_encoded_keys_decode() {
        assert_eq!(url_decode("a/b%2Bc+d.txt").as_deref(), Some("a/b+c d.txt"));
        assert_eq!(url_decode("%C3%BC%2F").as_deref(), Some("ü/"));
        assert_eq!(url_decode("plain"), Some("plain".to_owned()));
        assert_eq!(url_decode("bad%2"), None);
        assert_eq!(url_decode("bad%zz"), None);
        assert_eq!(url_decode("%FF"), None, "not UTF-8");
    }

    #[test]
    fn list_answers_are_read_as_s3_writes_them() {
        // As S3 answers with encoding-type=url: keys and prefixes encoded, an owner and
        // checksum fields to skip, an archived object, one restored, dates with and without
        // milliseconds, a quoted ETag written with entities.
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p%2F</Prefix>
<KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<Contents><Key>p/a+b%2Bc%01</Key><LastModified>2026-11-30T10:20:30.123Z</LastModified>
<ETag>&quot;0123abc&quot;</ETag><ChecksumAlgorithm>CRC32</ChecksumAlgorithm><Size>42</Size>
<Owner><ID>x</ID><DisplayName>Size</DisplayName></Owner><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>p/cold</Key><LastModified>2026-11-30T10:20:30Z</LastModified><ETag>"e1"</ETag><Size>7</Size>
<StorageClass>GLACIER</StorageClass></Contents>
<Contents><Key>p/warm</Key><Size>0</Size><StorageClass>DEEP_ARCHIVE</StorageClass><RestoreStatus>
<IsRestoreInProgress>false</IsRestoreInProgress><RestoreExpiryDate>2026-12-30T00:00:00.000Z</RestoreExpiryDate>
</RestoreStatus></Contents>
<CommonPrefixes><Prefix>p/d%20ir/</Prefix></CommonPrefixes>
<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken></ListBucketResult>"#;
        let page = parse_list_page(xml).expect("a valid answer");
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["p/a b+c\u{1}", "p/cold", "p/warm"]);
        let o = &page.objects[0];
        assert_eq!((o.size, o.etag.as_deref(), o.archived.as_deref()), (42, Some("0123abc"), None));
        let at = |s: &str| {
            SystemTime::try_from(
                aws_smithy_types::DateTime::from_str(s, aws_smithy_types::date_time::Format::DateTime).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(o.last_modified, Some(at("2026-11-30T10:20:30.123Z")));
        assert_eq!(page.objects[1].last_modified, Some(at("2026-11-30T10:20:30Z")));
        assert_eq!(page.objects[1].etag.as_deref(), Some("e1"));
        assert_eq!(page.objects[1].archived.as_deref(), Some("GLACIER"));
        assert_eq!(page.objects[2].archived, None, "restored");
        assert_eq!(page.common_prefixes, ["p/d ir/"]);
        assert_eq!(page.next.as_deref(), Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="));
    }

    #[test]
    fn list_answers_without_encoding_keep_keys_as_they_are() {
        // A store that ignores encoding-type: '+' and '%41' are part of the key; character
        // references and entities resolve; the last page has no token to follow.
        let xml = b"<ListBucketResult><IsTruncated>false</IsTruncated><NextContinuationToken>t</NextContinuationToken>\
            <Contents><Key>a+b%41 &amp; &lt;&#x1F;&#233;</Key><Size>1</Size></Contents>\
            <Contents><Key><![CDATA[c<d]]></Key></Contents><Contents><Size>3</Size></Contents></ListBucketResult>";
        let page = parse_list_page(xml).expect("a valid answer");
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["a+b%41 & <\u{1f}\u{e9}", "c<d"], "an object without a key is skipped");
        assert_eq!(page.next, None, "not truncated");
    }

    #[test]
    fn unreadable_list_answers_fail_with_the_reason() {
        for (xml, why) in [
            (&b"<Error><Code>x</Code></Error>"[..], "<Error> instead of <ListBucketResult>"),
            (b"", "no <ListBucketResult>"),
            (b"<ListBucketResult><Contents><Key>a</Key></Contents>", "ends before </ListBucketResult>"),
            (b"<ListBucketResult><Contents><Size>x</Size></Contents></ListBucketResult>", "size 'x'"),
            (b"<ListBucketResult><Contents><Key>&bogus;</Key></Contents></ListBucketResult>", "&bogus;"),
        ] {
            let err = parse_list_page(xml).expect_err(why);
            assert!(err.starts_with("cannot read the ListObjectsV2 answer") && err.contains(why), "{err}");
        }
    }
}
