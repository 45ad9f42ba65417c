//! The lean GET data plane (`--fetch-engine lean`, the default).
//!
//! aws-sdk-s3's GetObject costs ~150–200 µs of CPU per small object (orchestrator, config
//! merge, interceptors, endpoint and auth resolution per call, allocations). The lean engine
//! keeps what is correct about the SDK and drops the per-call machinery:
//!
//! - **Endpoint:** resolved once per bucket by the SDK's own endpoint rules
//!   ([`crate::s3::Control::bucket_endpoint`]): virtual-hosted or path style, FIPS, dual-stack
//!   and custom endpoints are exactly the SDK's. Keys are appended, percent-encoded as the SDK
//!   does (everything but unreserved characters and `/`).
//! - **Credentials:** the SDK's provider chain, cached and refreshed before expiry
//!   ([`crate::s3::Identities`]); `--no-sign-request` sends unsigned requests.
//! - **Signing:** `aws-sigv4`, with S3's settings (single percent-encoding, no path
//!   normalisation, `x-amz-content-sha256`), session tokens included.
//! - **HTTP:** hyper HTTP/1.1 keep-alive connections in one pool shared by all fetch tasks
//!   ([`Pool`]): a GET takes an idle one; when none is idle and fewer are open than GETs want
//!   one, it starts opening one in the background and takes whichever comes first, that one
//!   or one another GET gives back, so a handshake delays a GET by at most the time until the
//!   next answer. Connections therefore follow the GETs in flight ([`crate::fetch::window`]), not
//!   `--workers`; one is closed only when the server closes it or a request on it fails (a
//!   response not read whole). TLS by rustls (aws-lc-rs) with the platform's roots (or
//!   `--ca-bundle`), through our own stream on rustls' unbuffered API ([`super::tls`]); one
//!   client configuration for all connections, so every connection after the first few
//!   resumes a session from a ticket of an earlier one (TLS 1.3 PSK with a
//!   fresh key exchange: no certificate sent or checked). Connections opened and handshakes
//!   resumed are counted. An HTTP proxy named by the environment is used as the SDK would
//!   ([`super::proxy`]): a `CONNECT` tunnel for HTTPS, absolute-form requests for HTTP.
//! - **Responses:** 200 → the body in one buffer (a single-frame body over 32 KiB is passed on
//!   without a copy; a smaller one is copied so it does not pin hyper's read buffer), its
//!   length checked against Content-Length; anything else → the S3 error body's
//!   `Code` and `Message`, turned into the same one-line message and retry class as the SDK
//!   engine ([`crate::s3::service_error`], [`super::store::classify`]).
//!
//! - **Lists:** ListObjectsV2 pages on the same connections and signer ([`ListObjects`]),
//!   read by [`crate::s3::parse_list_page`] instead of the SDK's XML decoder, which cost
//!   ~14 µs of CPU per listed key.
//!
//! GET retries are not here: both engines return one attempt's outcome and the fetcher's
//! retry loop applies one policy to both. A list request, which nothing above would try
//! again, is retried here with the same `--retries` and backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, sign};
use aws_smithy_runtime_api::client::dns::ResolveDns;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::proxy::Proxy;
use super::store::{
    ByteRange, Fetched, GetError, GetFuture, ObjectStore, PartInfo, Retry, check_length, classify, content_range_total,
};
use super::tls::TlsStream;
use crate::report::Report;
use crate::s3::{BucketEndpoint, CachingResolver, Identities, ListObjects, ListQuery, Page, PageFuture};

/// TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Request sent to response headers (first byte).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole list request, sent to the last byte of its answer.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Single-frame bodies up to this size are copied out of hyper's read buffer (see `read_body`).
const SMALL_BODY_COPY: usize = 32 * 1024;
/// Error bodies are read up to this size.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// A list page is at most this large: 1,000 keys of 1,024 bytes with their XML come to
/// ~1.5 MiB; a server that sends more is not believed, and the page is asked again.
const LIST_PAGE_MAX: u64 = 16 << 20;
/// At most this much of a body is allocated ahead of its bytes (by Content-Length); a larger
/// body grows its buffer as it arrives.
const PREALLOCATE_MAX: usize = 64 << 20;
const CHECKSUM_MODE: &str = "x-amz-checksum-mode";
const USER_AGENT: &str = concat!("s3uring/", env!("CARGO_PKG_VERSION"));

type Sender = SendRequest<Empty<Bytes>>;

/// The lean GET engine for one bucket; shared by all fetch tasks.
pub struct Lean {
    bucket: String,
    host_header: HeaderValue,
    /// Path before the key: `/bucket` in path style, empty in virtual-hosted style.
    path_prefix: String,
    pool: Arc<Pool>,
    signer: Option<Signer>,
    /// `--verify`: ask for checksums and keep the ETag.
    verify: bool,
    /// `--request-payer requester`.
    requester_pays: bool,
    /// `--retries`, for list requests (GETs are retried by the fetcher's loop).
    list_retries: u32,
    /// Through an HTTP proxy to a plain-HTTP endpoint: requests name `http://host` before the
    /// path (absolute form) and carry the proxy's credentials ([`super::proxy`]).
    via_proxy: Option<(String, Option<HeaderValue>)>,
}

struct Signer {
    identities: Identities,
    region: String,
    name: String,
    /// The usual GET, signed without the generic signer's per-request cost.
    fast: crate::fetch::sigv4::GetSigner,
    /// The service's clock minus ours, in milliseconds, once it refused a request as
    /// `RequestTimeTooSkewed`: requests are signed with the service's time.
    skew_ms: std::sync::atomic::AtomicI64,
}

impl ObjectStore for Lean {
    fn name(&self) -> &'static str {
        "lean"
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        version: Option<&'a str>,
        range: Option<&'a ByteRange>,
        most: u64,
        first_byte: &'a std::sync::atomic::AtomicBool,
    ) -> GetFuture<'a> {
        Box::pin(self.attempt(key, version, range, most, first_byte))
    }
}

impl ListObjects for Lean {
    fn list_page<'a>(&'a self, q: ListQuery<'a>) -> PageFuture<'a> {
        Box::pin(self.list(q))
    }
}

impl Lean {
    /// The engine for `bucket` at `endpoint`; `identities` is `None` for unsigned requests.
    pub fn new(
        bucket: &str,
        endpoint: &BucketEndpoint,
        identities: Option<Identities>,
        report: Arc<Report>,
        verify: bool,
        s3: &crate::config::S3Settings,
    ) -> Result<Lean, String> {
        let bad = |why: &str| format!("endpoint '{}' {why}", endpoint.url);
        let uri: http::Uri = endpoint.url.parse().map_err(|e| bad(&format!("is not a URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("is neither http:// nor https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|_| bad("has an invalid host"))?;
        let tls = if https { Some((tls_config(s3.ca_bundle.as_ref())?, server_name(&host)?)) } else { None };
        let proxy = if s3.proxies { Proxy::for_endpoint(&uri)? } else { None };
        if let Some(p) = &proxy {
            tracing::info!("connecting to {} through proxy {}", authority.as_str(), p.shown);
        }
        let via_proxy = match &proxy {
            Some(p) if !https => Some((format!("http://{}", authority.as_str()), p.auth.clone())),
            _ => None,
        };
        let signer = identities.map(|identities| Signer {
            identities,
            region: endpoint.signing_region.clone(),
            name: endpoint.signing_name.clone(),
            fast: crate::fetch::sigv4::GetSigner::new(&endpoint.signing_region, &endpoint.signing_name),
            skew_ms: std::sync::atomic::AtomicI64::new(0),
        });
        let dial = Dial {
            host,
            port,
            tls,
            proxy,
            resolver: CachingResolver::default(),
            next_addr: AtomicUsize::new(0),
            report,
        };
        Ok(Lean {
            bucket: bucket.to_owned(),
            host_header,
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
            pool: Arc::new(Pool::new(dial)),
            signer,
            verify,
            requester_pays: s3.requester_pays,
            list_retries: 0,
            via_proxy,
        })
    }

    /// List requests that failed transiently are tried again `retries` times (none unless set).
    pub fn with_list_retries(mut self, retries: u32) -> Lean {
        self.list_retries = retries;
        self
    }

    /// One GET attempt for `key`, on a connection of the pool.
    async fn attempt(
        &self,
        key: &str,
        version: Option<&str>,
        range: Option<&ByteRange>,
        most: u64,
        first_byte: &std::sync::atomic::AtomicBool,
    ) -> Result<Fetched, GetError> {
        let req = self.request(key, version, range).await?;
        let (resp, conn, sent) = self.send(req).await?;
        let headers = Instant::now();
        first_byte.store(true, std::sync::atomic::Ordering::Relaxed);
        let content_length = header_str(&resp, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        let framed = content_length.is_some()
            || header_str(&resp, header::TRANSFER_ENCODING).is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let last_modified = header_str(&resp, header::LAST_MODIFIED).and_then(parse_http_date);
        let integrity = self.verify.then(|| integrity(&resp));
        let part = range.map(|_| PartInfo {
            etag: header_str(&resp, header::ETAG).map(str::to_owned),
            total: header_str(&resp, header::CONTENT_RANGE).and_then(content_range_total),
        });
        let ok = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
        if let Some(n) = content_length.filter(|&n| n > most && resp.status() == ok) {
            // Not read: the connection goes with the answer.
            return Err(super::store::larger(n, most));
        }
        let body = self.body_or_error(resp, conn, sent, (ok, most), content_length).await?;
        Ok(Fetched { body, last_modified, ttfb: headers - sent, body_time: headers.elapsed(), integrity, part, framed })
    }

    /// Sends `req` on a connection of the pool: the response's headers, the connection it
    /// came on (reusable once its body was read whole) and when it was sent.
    async fn send(
        &self,
        req: Request<Empty<Bytes>>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Checkout, Instant), GetError> {
        let mut conn = self.pool.take().await?;
        // A kept-alive connection the server has just closed shows up here, before sending:
        // closed, and another one taken (once more at most).
        let mut tries = 0;
        while let Err(e) = conn.sender().ready().await {
            tries += 1;
            if tries > 2 {
                return Err(transport("connection failed", &e));
            }
            conn = self.pool.take().await?;
        }
        let sent = Instant::now();
        match tokio::time::timeout(READ_TIMEOUT, conn.sender().send_request(req)).await {
            Ok(Ok(resp)) => Ok((resp, conn, sent)),
            Ok(Err(e)) => Err(transport("request failed", &e)),
            Err(_) => Err(GetError::transient(format!("no response within {}s", READ_TIMEOUT.as_secs()))),
        }
    }

    /// ListObjectsV2 on the pool's connections, after the fetcher's backoff when it failed:
    /// transient failures spend `--retries`, throttled answers do not (as for GETs) but stop
    /// after [`super::LIST_ATTEMPTS_THROTTLED`]; the listing cannot go on without the page.
    async fn list(&self, q: ListQuery<'_>) -> Result<Page, String> {
        let (mut attempt, mut transient, mut throttled) = (0, 0, 0);
        loop {
            let result = match tokio::time::timeout(LIST_TIMEOUT, self.list_attempt(&q)).await {
                Ok(r) => r,
                Err(_) => Err(GetError::transient(format!("no whole answer within {}s", LIST_TIMEOUT.as_secs()))),
            };
            let err = match result {
                Ok(page) => return Ok(page),
                Err(e) => e,
            };
            let spent = match err.retry {
                Retry::No => true,
                Retry::Throttled => {
                    throttled += 1;
                    throttled >= super::LIST_ATTEMPTS_THROTTLED
                }
                Retry::Transient | Retry::Corrupt | Retry::Larger => {
                    transient += 1;
                    transient > self.list_retries
                }
            };
            if spent {
                return Err(q.failed(&err.reason));
            }
            attempt += 1;
            tracing::debug!(reason = %err.reason, attempt, "list request failed; trying again");
            tokio::time::sleep(super::backoff(attempt - 1)).await;
        }
    }

    async fn list_attempt(&self, q: &ListQuery<'_>) -> Result<Page, GetError> {
        let mut path = String::with_capacity(128 + q.prefix.len() * 3 + q.token.map_or(0, str::len) * 3);
        path.push_str(if self.path_prefix.is_empty() { "/" } else { &self.path_prefix });
        // Keys URL-encoded, as the AWS CLI asks: a key with a control character is otherwise
        // sent as an XML character reference that XML parsers refuse.
        path.push_str("?list-type=2&encoding-type=url");
        let params = [
            ("prefix", (!q.prefix.is_empty()).then_some(q.prefix)),
            ("delimiter", q.delimiter.then_some("/")),
            ("continuation-token", q.token),
            ("start-after", if q.token.is_none() { q.start_after } else { None }),
        ];
        for (name, value) in params {
            if let Some(v) = value {
                path.push('&');
                path.push_str(name);
                path.push('=');
                encode_query_value(v, &mut path);
            }
        }
        // Archived objects: is a restored copy readable?
        let req = self.get(&path).header("x-amz-optional-object-attributes", HeaderValue::from_static("RestoreStatus"));
        let req = self.signed(req, &path, q.requester_pays).await?;
        let (resp, conn, sent) = self.send(req).await?;
        let content_length = header_str(&resp, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        let body = self.body_or_error(resp, conn, sent, (StatusCode::OK, LIST_PAGE_MAX), content_length).await?;
        // An unreadable page may be one cut short on the way: tried again like a transport error.
        crate::s3::parse_list_page(&body).map_err(GetError::transient)
    }

    async fn request(
        &self,
        key: &str,
        version: Option<&str>,
        range: Option<&ByteRange>,
    ) -> Result<Request<Empty<Bytes>>, GetError> {
        let mut path = String::with_capacity(self.path_prefix.len() + 1 + key.len() * 3 / 2);
        path.push_str(&self.path_prefix);
        path.push('/');
        encode_key(key, &mut path);
        if let Some(v) = version {
            // Signed as part of the canonical query string.
            path.push_str("?versionId=");
            encode_query_value(v, &mut path);
        }
        let mut req = self.get(&path);
        if let Some(r) = range {
            let bad =
                |_| GetError { reason: "cannot build the request: bad range or ETag".to_owned(), retry: Retry::No };
            req = req.header(header::RANGE, HeaderValue::try_from(r.header()).map_err(bad)?);
            if let Some(etag) = &r.if_match {
                req = req.header(header::IF_MATCH, HeaderValue::try_from(etag.as_str()).map_err(bad)?);
            }
        } else if self.verify {
            req = req.header(CHECKSUM_MODE, HeaderValue::from_static("ENABLED"));
        }
        self.signed(req, &path, self.requester_pays).await
    }

    /// A GET of `path` (with its query) to the bucket's host.
    fn get(&self, path: &str) -> http::request::Builder {
        let req = match &self.via_proxy {
            None => Request::get(path),
            Some((origin, _)) => Request::get(format!("{origin}{path}")),
        };
        req.header(header::HOST, self.host_header.clone())
            .header(header::USER_AGENT, HeaderValue::from_static(USER_AGENT))
    }

    /// The request, with the requester-pays header when asked, signed unless anonymous.
    async fn signed(
        &self,
        mut req: http::request::Builder,
        path: &str,
        requester_pays: bool,
    ) -> Result<Request<Empty<Bytes>>, GetError> {
        if requester_pays {
            req = req.header("x-amz-request-payer", HeaderValue::from_static("requester"));
        }
        let mut req = req
            .body(Empty::new())
            .map_err(|e| GetError { reason: format!("cannot build the request: {e}"), retry: Retry::No })?;
        if let Some(signer) = &self.signer {
            signer.sign(&mut req, path).await?;
        }
        // After signing: a proxy drops this header before forwarding the request.
        if let Some((_, Some(auth))) = &self.via_proxy {
            req.headers_mut().insert(header::PROXY_AUTHORIZATION, auth.clone());
        }
        Ok(req)
    }

    /// The rest of a response whose headers came: its body when the status is `ok` (of at
    /// most `most` bytes: [`Retry::Larger`] beyond), checked against `content_length`; else
    /// the service's error, and its clock learned when it said ours is off. A body read whole
    /// keeps the connection.
    async fn body_or_error(
        &self,
        resp: http::Response<hyper::body::Incoming>,
        mut conn: Checkout,
        sent: Instant,
        (ok, most): (StatusCode, u64),
        content_length: Option<u64>,
    ) -> Result<Bytes, GetError> {
        let status = resp.status();
        let bucket_region = header_str(&resp, "x-amz-bucket-region").map(str::to_owned);
        let date = (status == StatusCode::FORBIDDEN)
            .then(|| header_str(&resp, header::DATE).and_then(parse_http_date))
            .flatten();
        let limit = if status == ok { usize::try_from(most).unwrap_or(usize::MAX) } else { MAX_ERROR_BODY };
        let body = read_body(resp.into_body(), content_length, limit).await?;
        // The whole response was read: the connection can carry the next request.
        conn.reusable = body.len() <= limit;
        drop(conn);
        if status == ok {
            if body.len() > limit {
                return Err(super::store::larger(body.len() as u64, most));
            }
            check_length(body.len(), content_length)?;
            return Ok(body);
        }
        let err = self.error_response(status, &body, bucket_region.as_deref());
        if err.reason.starts_with("RequestTimeTooSkewed")
            && let (Some(signer), Some(server)) = (&self.signer, date)
        {
            // Sign with the service's clock from now on, as the SDK does, and try again.
            signer.learn_skew(server, sent);
            return Err(GetError { retry: Retry::Transient, ..err });
        }
        Err(err)
    }

    /// S3's error body → the same message and retry class as the SDK engine.
    fn error_response(&self, status: StatusCode, body: &[u8], bucket_region: Option<&str>) -> GetError {
        let text = String::from_utf8_lossy(body);
        let code = xml_text(&text, "Code");
        let message = xml_text(&text, "Message").unwrap_or_default();
        let code = code.unwrap_or_else(|| match status {
            StatusCode::NOT_FOUND => "NoSuchKey".to_owned(),
            StatusCode::FORBIDDEN => "AccessDenied".to_owned(),
            StatusCode::MOVED_PERMANENTLY => "PermanentRedirect".to_owned(),
            s => format!("HTTP {}", s.as_u16()),
        });
        let mut reason = crate::s3::service_error(&code, &message, Some(&self.bucket));
        if let Some(region) = bucket_region
            && status.is_redirection()
        {
            reason.push_str(&format!(" [bucket region: {region}]"));
        }
        GetError { reason, retry: classify(status.as_u16(), &code) }
    }
}

/// Where connections go and how they are opened.
struct Dial {
    /// The endpoint's host (DNS name or IP literal) and port.
    host: String,
    port: u16,
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    /// Connect to this proxy instead: through a tunnel to the endpoint for TLS, else to send
    /// it requests in absolute form.
    proxy: Option<Proxy>,
    resolver: CachingResolver,
    next_addr: AtomicUsize,
    report: Arc<Report>,
}

impl Dial {
    /// A new keep-alive connection (addresses of the host taken in turn).
    async fn connect(&self) -> Result<Sender, GetError> {
        let (host, port) = match &self.proxy {
            Some(p) => (&p.host, p.port),
            None => (&self.host, self.port),
        };
        let what = || match &self.proxy {
            Some(p) => format!("cannot connect to {}:{} through proxy {}", self.host, self.port, p.shown),
            None => format!("cannot connect to {}:{}", self.host, self.port),
        };
        let addrs = self.resolver.resolve_dns(host).await.map_err(|e| transport(&what(), &e))?;
        if addrs.is_empty() {
            return Err(GetError::transient(format!("{}: no address", what())));
        }
        let ip = addrs[self.next_addr.fetch_add(1, Ordering::Relaxed) % addrs.len()];
        let addr = SocketAddr::new(ip, port);
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| transport(&what(), &e))?;
            let _ = tcp.set_nodelay(true);
            if let (Some(proxy), Some(_)) = (&self.proxy, &self.tls) {
                let target = match self.host.contains(':') {
                    true => format!("[{}]:{}", self.host, self.port),
                    false => format!("{}:{}", self.host, self.port),
                };
                proxy.tunnel(&mut tcp, &target).await.map_err(|e| GetError::transient(format!("{}: {e}", what())))?;
            }
            match &self.tls {
                None => Ok::<_, GetError>((handshake(tcp).await?, false)),
                Some((config, name)) => {
                    let conn = rustls::client::UnbufferedClientConnection::new(config.clone(), name.clone())
                        .map_err(|e| transport(&what(), &e))?;
                    let tls = TlsStream::connect(tcp, conn).await.map_err(|e| transport(&what(), &e))?;
                    let resumed = tls.tls().handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    Ok((handshake(tls).await?, resumed))
                }
            }
        })
        .await;
        let (sender, resumed) = match connected {
            Ok(r) => r?,
            Err(_) => return Err(GetError::transient(format!("{}: timed out", what()))),
        };
        self.report.connection_opened(resumed);
        Ok(sender)
    }
}

/// Idle keep-alive connections shared by all fetch tasks, and how many are open.
///
/// The channel carries idle connections and wake-ups (`None`): a GET that waits without
/// a connection being opened for it is woken when one it counted on was closed, to open
/// one itself.
struct Pool {
    dial: Dial,
    idle_tx: async_channel::Sender<Option<Sender>>,
    idle_rx: async_channel::Receiver<Option<Sender>>,
    /// Connections open or being opened.
    open: AtomicUsize,
    /// GETs holding or waiting for a connection.
    wanted: AtomicUsize,
}

/// A GET's hold on the pool: its connection once it has one. Dropped, the connection goes
/// back to the pool if the response was read whole (`reusable`), else it is closed.
struct Checkout {
    pool: Arc<Pool>,
    sender: Option<Sender>,
    reusable: bool,
}

impl Checkout {
    fn sender(&mut self) -> &mut Sender {
        match &mut self.sender {
            Some(s) => s,
            None => unreachable!("a checkout is handed out with its connection"),
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.pool.wanted.fetch_sub(1, Ordering::Relaxed);
        match self.sender.take() {
            Some(s) if self.reusable => self.pool.put(s),
            Some(_) => self.pool.lost(),
            None => {}
        }
    }
}

impl Pool {
    fn new(dial: Dial) -> Pool {
        let (idle_tx, idle_rx) = async_channel::unbounded();
        Pool { dial, idle_tx, idle_rx, open: AtomicUsize::new(0), wanted: AtomicUsize::new(0) }
    }

    /// A connection: an idle one, or the first to come of one opened for this GET and one
    /// given back by another.
    async fn take(self: &Arc<Self>) -> Result<Checkout, GetError> {
        self.wanted.fetch_add(1, Ordering::Relaxed);
        let mut conn = Checkout { pool: self.clone(), sender: None, reusable: false };
        loop {
            let got = match self.idle_rx.try_recv() {
                Ok(got) => got,
                Err(_) if self.reserve() => {
                    let (tx, mut opened) = tokio::sync::oneshot::channel();
                    let pool = self.clone();
                    tokio::spawn(async move {
                        let r = pool.dial.connect().await;
                        // Nobody waits for it any more: it serves the next GET.
                        if let Err(r) = tx.send(r) {
                            pool.settle(r);
                        }
                    });
                    tokio::select! {
                        biased;
                        r = &mut opened => match r {
                            Ok(Ok(s)) => Some(s),
                            Ok(Err(e)) => {
                                self.lost();
                                return Err(e);
                            }
                            Err(_) => {
                                self.lost();
                                return Err(GetError::transient("connecting was cancelled".to_owned()));
                            }
                        },
                        got = self.idle_rx.recv() => {
                            opened.close();
                            if let Ok(r) = opened.try_recv() {
                                self.settle(r);
                            }
                            // The pool holds a sender: the channel never closes.
                            got.ok().flatten()
                        }
                    }
                }
                Err(_) => self.idle_rx.recv().await.ok().flatten(),
            };
            match got {
                Some(s) if !s.is_closed() => {
                    conn.sender = Some(s);
                    return Ok(conn);
                }
                // Closed by the server while idle.
                Some(_) => self.lost(),
                // A wake-up: look again.
                None => {}
            }
        }
    }

    /// Counts one more connection as opening if fewer are open than GETs want one.
    fn reserve(&self) -> bool {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < self.wanted.load(Ordering::Relaxed)).then_some(open + 1)
            })
            .is_ok()
    }

    /// A connection opened for a GET that took another one.
    fn settle(&self, r: Result<Sender, GetError>) {
        match r {
            Ok(s) => self.put(s),
            Err(e) => {
                tracing::debug!(reason = %e.reason, "a connection opened ahead failed");
                self.lost();
            }
        }
    }

    fn put(&self, s: Sender) {
        if self.idle_tx.try_send(Some(s)).is_err() {
            self.lost();
        }
    }

    /// A connection was closed (or failed to open): a GET waiting on it is woken.
    fn lost(&self) {
        let open = self.open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        if open < self.wanted.load(Ordering::Relaxed) {
            let _ = self.idle_tx.try_send(None);
        }
    }
}

impl Signer {
    /// The service answered at `server` (its `Date` header) a request sent at `sent`.
    fn learn_skew(&self, server: SystemTime, sent: Instant) {
        let ours = SystemTime::now() - sent.elapsed() / 2;
        let skew = match server.duration_since(ours) {
            Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
            Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
        };
        let before = self.skew_ms.swap(skew, std::sync::atomic::Ordering::Relaxed);
        if (skew - before).abs() > 60_000 {
            tracing::warn!(
                "this machine's clock is {:.0} s {} the service's: signing with the service's time",
                (skew as f64 / 1000.0).abs(),
                if skew > 0 { "behind" } else { "ahead of" }
            );
        }
    }

    /// SigV4 for S3: the SDK's settings, the current credentials.
    async fn sign(&self, req: &mut Request<Empty<Bytes>>, path: &str) -> Result<(), GetError> {
        let identity = self.identities.get().await?;
        let skew = self.skew_ms.load(std::sync::atomic::Ordering::Relaxed);
        let now = if skew >= 0 {
            SystemTime::now() + Duration::from_millis(skew as u64)
        } else {
            SystemTime::now() - Duration::from_millis(skew.unsigned_abs())
        };
        if let Some(creds) = identity.data::<aws_sdk_s3::config::Credentials>()
            && self.fast.sign(req.headers_mut(), path, creds, now).is_some()
        {
            return Ok(());
        }
        // Anything else (a version id's query string, …): aws-sigv4's generic signer.
        let settings = crate::fetch::sigv4::s3_settings();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.name)
            .time(now)
            .settings(settings)
            .build()
            .map_err(|e| GetError { reason: format!("cannot sign the request: {e}"), retry: Retry::No })?
            .into();
        // Every header sent so far is signed (S3 requires it of x-amz-* headers).
        let headers: Vec<(&str, &str)> =
            req.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))).collect();
        let signable = SignableRequest::new(
            "GET",
            path,
            headers.into_iter(),
            SignableBody::Precomputed(crate::fetch::sigv4::EMPTY_SHA256.to_owned()),
        )
        .and_then(|r| sign(r, &params))
        .map_err(|e| GetError { reason: format!("cannot sign the request: {e}"), retry: Retry::No })?;
        let (instructions, _signature) = signable.into_parts();
        instructions.apply_to_request_http1x(req);
        Ok(())
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Empty<Bytes>>, GetError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(|e| transport("HTTP handshake failed", &e))?;
    tokio::spawn(async move {
        // Ends when the server closes the connection or the task drops its sender.
        let _ = connection.await;
    });
    Ok(sender)
}

/// A transport failure: transient, with its cause chain on one line.
fn transport(what: &str, e: &(dyn std::error::Error + 'static)) -> GetError {
    let cause = crate::s3::chain(e);
    GetError::transient(format!("{what}: {cause}{}", crate::s3::tls_hint(&cause)))
}

fn header_str<B>(resp: &http::Response<B>, name: impl header::AsHeaderName) -> Option<&str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The ETag, encryption and checksum headers of a response, for checking its body: one pass
/// over the headers (a lookup by name parses the name each time, and most are absent).
fn integrity<B>(resp: &http::Response<B>) -> crate::verify::Integrity {
    let mut integrity = crate::verify::Integrity::default();
    for (name, value) in resp.headers() {
        let (name, Ok(value)) = (name.as_str(), value.to_str()) else { continue };
        if name == header::ETAG {
            integrity.etag = Some(value.to_owned());
        } else if name.starts_with("x-amz-checksum-") {
            if let Some((known, _)) = crate::verify::CHECKSUM_HEADERS.iter().find(|(h, _)| *h == name) {
                integrity.checksums.push((known, value.to_owned()));
            }
        } else if name == "x-amz-server-side-encryption" {
            integrity.encrypted |= value.starts_with("aws:kms");
        } else if name == "x-amz-server-side-encryption-customer-algorithm" {
            integrity.encrypted = true;
        }
    }
    integrity
}

fn parse_http_date(s: &str) -> Option<SystemTime> {
    let t = aws_smithy_types::DateTime::from_str(s, aws_smithy_types::date_time::Format::HttpDate).ok()?;
    SystemTime::try_from(t).ok()
}

/// Reads a whole body: a single frame is passed on as it came (no copy) unless it is small;
/// several go into one buffer sized by Content-Length. A stalled body is bounded by the fetcher's timeout
/// on the whole attempt (no timer per frame: one fewer timer per GET on the hot path).
async fn read_body(
    mut body: hyper::body::Incoming,
    content_length: Option<u64>,
    limit: usize,
) -> Result<Bytes, GetError> {
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(transport("reading body", &e)),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        match (&mut first, &mut rest) {
            (_, Some(buf)) => buf.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (Some(one), None) => {
                // Content-Length is the server's word, not a size to allocate at once: a
                // header of 100 TB must fail the key, not abort the process.
                let cap = content_length
                    .map_or(0, |n| n as usize)
                    .min(limit)
                    .min(PREALLOCATE_MAX)
                    .max(one.len() + data.len());
                let mut buf = BytesMut::with_capacity(cap);
                buf.extend_from_slice(one);
                buf.extend_from_slice(&data);
                first = None;
                rest = Some(buf);
            }
        }
        let got = rest.as_ref().map_or_else(|| first.as_ref().map_or(0, Bytes::len), BytesMut::len);
        if got > limit {
            break;
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        // A small body is a slice of hyper's read buffer, whose whole allocation it would
        // keep alive until the file is written (thousands of files in flight): a copy of a
        // few KiB is cheaper than that memory (1 M keys: 78 → 67 MiB peak RSS).
        (Some(one), None) if one.len() <= SMALL_BODY_COPY => Bytes::copy_from_slice(&one),
        (Some(one), None) => one,
        (None, None) => Bytes::new(),
    })
}

/// The text of the first `<tag>…</tag>` in an S3 error document, unescaped.
fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = doc.find(&open)? + open.len();
    let end = start + doc[start..].find(&format!("</{tag}>"))?;
    let raw = &doc[start..end];
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// Appends a query value percent-encoded (everything but unreserved characters).
fn encode_query_value(v: &str, out: &mut String) {
    percent_encode(v, out, b"");
}

/// Appends `key` percent-encoded for a URL path as S3 and the SDK expect: unreserved
/// characters and `/` as they are, every other byte as `%XX`.
fn encode_key(key: &str, out: &mut String) {
    percent_encode(key, out, b"/");
}

/// Unreserved characters (and those in `keep`) as they are, every other byte as `%XX`.
fn percent_encode(s: &str, out: &mut String, keep: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// TLS with the system's trust store, or exactly the `--ca-bundle` certificates.
pub(super) fn tls_config(ca_bundle: Option<&crate::config::CaBundle>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_bundle {
        Some(ca) => {
            // Each parsed when the bundle was loaded: all of them, or none is trusted.
            for (i, cert) in ca.certs.iter().enumerate() {
                roots.add(cert.clone()).map_err(|e| {
                    format!("--ca-bundle '{}': certificate {} cannot be used: {e}", ca.path.display(), i + 1)
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err("no trusted root certificates found on this system".to_owned());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::store(Arc::new(Tickets::default()));
    Ok(Arc::new(config))
}

/// TLS 1.3 tickets per server: rustls' own store keeps 8, but connections open in bursts
/// (the window doubles: dozens at once), and each ticket resumes one connection only.
const TICKETS_PER_SERVER: usize = 1024;

/// The client's resumable sessions: as rustls' in-memory store, with room for a burst.
#[derive(Debug, Default)]
struct Tickets {
    servers: std::sync::Mutex<std::collections::HashMap<rustls::pki_types::ServerName<'static>, Sessions>>,
}

#[derive(Debug, Default)]
struct Sessions {
    kx_hint: Option<rustls::NamedGroup>,
    tls12: Option<rustls::client::Tls12ClientSessionValue>,
    /// Oldest first.
    tls13: std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
}

impl Tickets {
    fn with<T>(&self, name: &rustls::pki_types::ServerName<'_>, f: impl FnOnce(&mut Sessions) -> T) -> Option<T> {
        let mut servers = self.servers.lock().ok()?;
        let name = name.to_owned();
        Some(f(servers.entry(name).or_default()))
    }
}

impl rustls::client::ClientSessionStore for Tickets {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.with(&name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.with(name, |s| s.kx_hint).flatten()
    }

    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.with(&name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.with(name, |s| s.tls12.clone()).flatten()
    }

    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.with(name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.with(&name, |s| {
            if s.tls13.len() >= TICKETS_PER_SERVER {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        // The newest: the likeliest to be still valid.
        self.with(name, |s| s.tls13.pop_back()).flatten()
    }
}

fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("'{host}' is not a TLS server name: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_like_the_sdk() {
        let mut s = String::new();
        encode_key("a b/ü+%?#&=~._-/x", &mut s);
        assert_eq!(s, "a%20b/%C3%BC%2B%25%3F%23%26%3D~._-/x");
    }

    #[test]
    fn s3_error_documents_are_read() {
        let doc = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>a &amp; b &lt;c&gt;</Message></Error>";
        assert_eq!(xml_text(doc, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(xml_text(doc, "Message").as_deref(), Some("a & b <c>"));
        assert_eq!(xml_text(doc, "RequestId"), None);
    }

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("parses");
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).ok(), Some(1_445_412_480));
    }
}
