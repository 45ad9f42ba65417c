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
//!
//! This file holds the configuration, the generated content, the server (TLS, the clock
//! check, fault and rate-limit drawing per request); `store.rs` the buckets and the S3
//! operations on them; `faults.rs` the faults and rate limits.

mod faults;
mod store;

use faults::{Drawn, Fault, FaultState, InflightCap, Io, Limits};
pub use faults::{FaultCounts, Faults, InflightCounts, RateLimit, RateLimitCounts};
use store::build_store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use s3s::dto::Timestamp;
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

/// The checksums objects were uploaded with, as a GET returns them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Checksums {
    /// CRC64NVME for every object: what S3 stores for an upload that sent no checksum (since
    /// December 2024).
    #[default]
    Crc64Nvme,
    /// CRC32C for every object.
    Crc32c,
    /// Objects uploaded by several clients: each key's one of CRC64NVME, CRC32C, CRC32,
    /// SHA-256 and SHA-1, by a hash of the key.
    Mixed,
    /// None (uploaded without a checksum: only the ETag's MD5 is there to verify against).
    None,
}

impl Checksums {
    /// The checksum header the object at `key` carries, and its algorithm.
    pub fn of(self, key: &str) -> Option<(&'static str, aws_smithy_checksums::ChecksumAlgorithm)> {
        let all = crate::verify::CHECKSUM_HEADERS;
        match self {
            Checksums::Crc64Nvme => all.into_iter().find(|(name, _)| *name == "x-amz-checksum-crc64nvme"),
            Checksums::Crc32c => all.into_iter().find(|(name, _)| *name == "x-amz-checksum-crc32c"),
            // FNV-1a: the same key gets the same algorithm in every run.
            Checksums::Mixed => {
                let hash =
                    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
                Some(all[(hash % all.len() as u64) as usize])
            }
            Checksums::None => None,
        }
    }
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
    /// Keys whose stored bytes changed after upload while their ETag and checksums stayed
    /// (rot on the store's disks, a broken copy): every GET, whole or ranged, gets the same
    /// wrong byte in the middle of the object, so no retry mends it.
    pub rotten: Vec<String>,
    /// Older versions: (key, version id, content), readable with `versionId`.
    pub versions: Vec<(String, String, Bytes)>,
    /// Archived objects: key → (storage class, restored). Listed with their class and restore
    /// status; a GET of one not restored answers `403 InvalidObjectState`, as S3 does.
    pub archived: Vec<(String, String, bool)>,
    /// Buckets that answer `403 AccessDenied` to requests without `x-amz-request-payer:
    /// requester` (Requester Pays buckets).
    pub requester_pays: Vec<String>,
    /// Which `x-amz-checksum-*` a GET that asks for one gets (`x-amz-checksum-mode:
    /// ENABLED`, whole objects only): the algorithm the object was uploaded with.
    pub checksums: Checksums,
    /// Serve HTTPS with this certificate chain and private key (both PEM) instead of HTTP.
    pub tls: Option<TlsIdentity>,
    /// Request-rate limits, as S3 has per prefix partition: GETs and HEADs of a rule's keys,
    /// and list requests that start among them, above its rate are answered `503 SlowDown`.
    /// The longest matching prefix applies.
    pub rate_limits: Vec<RateLimit>,
    /// At most this many GETs served at once: a GET arriving while that many are being served
    /// is answered `503 SlowDown` at once (Ceph RGW's `rgw_max_concurrent_requests`, MinIO's
    /// request cap, a gateway shedding load).
    pub max_inflight: Option<usize>,
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
    /// The region the buckets are in: a request signed for another is refused with `400
    /// AuthorizationHeaderMalformed` naming this one, as S3 does (`None`: any region).
    pub region: Option<String>,
    /// A connection that sends no whole request head within this long is closed (`None`:
    /// [`HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Option<Duration>,
    /// Connections served at once (`None`: [`MAX_CONNECTIONS`]); more wait in the accept
    /// queue until one ends.
    pub max_connections: Option<usize>,
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

/// How far from the service's clock a signed request may be.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// A connection that sends no whole request head within this long (idle between requests
/// included, as S3 closes idle connections after about 20 s) is closed: a client that opens
/// connections and sends nothing cannot hold them for ever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A TLS handshake not done within this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the accept queue until one ends (each holds a
/// descriptor and a task: this bounds what a flood of connections costs).
const MAX_CONNECTIONS: usize = 16_384;

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

/// S3's answer to a request signed for a region other than `expected`: `None` when it was
/// signed for that one, or not signed.
fn wrong_region(req: &http::Request<hyper::body::Incoming>, expected: &str) -> Option<http::Response<s3s::Body>> {
    // `Credential=AKID/20261207/us-east-1/s3/aws4_request` in the Authorization header, or
    // URL-encoded in a presigned URL's `X-Amz-Credential`.
    let header = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let credential = header.and_then(|h| h.split("Credential=").nth(1)).map(str::to_owned).or_else(|| {
        let query = req.uri().query()?;
        let value = query.split('&').find_map(|kv| kv.strip_prefix("X-Amz-Credential="))?;
        Some(value.replace("%2F", "/").replace("%2f", "/"))
    })?;
    let region = credential.split('/').nth(2)?;
    if region == expected {
        return None;
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AuthorizationHeaderMalformed</Code>\
         <Message>The authorization header is malformed; the region '{region}' is wrong; expecting \
         '{expected}'</Message><Region>{expected}</Region></Error>"
    );
    let mut resp = http::Response::new(s3s::Body::from(body));
    *resp.status_mut() = http::StatusCode::BAD_REQUEST;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/xml"));
    Some(resp)
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
    inflight: Option<Arc<InflightCap>>,
    /// Places for connections being served, and how many there are.
    connections: (Arc<tokio::sync::Semaphore>, usize),
}

impl Endpoint {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: EndpointConfig) -> std::io::Result<Endpoint> {
        let store = build_store(&config);
        let faults = store.faults.clone();
        let list_faults = store.list_faults.clone();
        let limits = store.limits.clone();
        let inflight = store.inflight.clone();
        let mut builder = s3s::service::S3ServiceBuilder::new(store);
        if let Some((ak, sk)) = &config.credentials {
            builder.set_auth(s3s::auth::SimpleAuth::from_single(ak.clone(), sk.clone()));
        }
        let clock = config.clock_offset_s;
        let region: Option<Arc<str>> = config.region.as_deref().map(Arc::from);
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
        let places = config.max_connections.unwrap_or(MAX_CONNECTIONS);
        let connections = Arc::new(tokio::sync::Semaphore::new(places));
        let served = (connections.clone(), places);
        let header_read_timeout = config.header_read_timeout.unwrap_or(HEADER_READ_TIMEOUT);
        let task = tokio::spawn(async move {
            loop {
                // At the cap, new connections wait in the accept queue until one ends.
                let Ok(place) = connections.clone().acquire_owned().await else { return };
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of descriptors, say: the error would come back at once, so
                        // the loop would spin; connections being served end meanwhile.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let (faults, list_faults) = fault_state.clone();
                let (tls, region) = (tls.clone(), region.clone());
                tokio::spawn(async move {
                    let _place = place;
                    let io: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => Box::new(s),
                                // A failed handshake (the client sees why), or none within the time.
                                _ => return,
                            }
                        }
                    };
                    let io = hyper_util::rt::TokioIo::new(io);
                    // Draw each GET's fate here: a reset must drop the connection before
                    // any answer, which only this layer can do.
                    let proxied = Arc::new(std::sync::OnceLock::new());
                    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                        let service = service.clone();
                        let wrong_region = region.as_deref().and_then(|r| wrong_region(&req, r));
                        // A forwarding proxy marks the first request of a connection it
                        // opened (`Via`); proxy.py passes later ones on as they are.
                        let via = *proxied.get_or_init(|| req.headers().contains_key(http::header::VIA));
                        let drawn = if is_get_object(&req) {
                            faults.draw(via)
                        } else if is_list(&req) {
                            list_faults.draw(via)
                        } else {
                            None
                        };
                        req.extensions_mut().insert(Drawn(drawn));
                        async move {
                            if drawn == Some(Fault::Reset) {
                                return Err(s3s::HttpError::new(Box::new(std::io::Error::other("injected reset"))));
                            }
                            if let Some(refused) = wrong_region {
                                return Ok(refused);
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
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(header_read_timeout)
                        .keep_alive(true)
                        .writev(!https)
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Ok(Endpoint { addr, https, task, faults, list_faults, limits, inflight, connections: served })
    }

    /// Connections accepted and being served now.
    pub fn connections_served(&self) -> usize {
        let (places, all) = &self.connections;
        all - places.available_permits()
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

    /// What the in-flight cap let through and refused so far (`None`: no cap).
    pub fn inflight_counts(&self) -> Option<InflightCounts> {
        self.inflight.as_ref().map(|c| c.counts())
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
}
