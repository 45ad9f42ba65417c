//! The lean engine's TLS client stream: rustls' unbuffered connection over a tokio
//! `TcpStream`, as hyper's transport.
//!
//! tokio-rustls drives rustls' buffered connection, which reads the socket 4 KiB at a time
//! into a buffer it grows for any record longer than that and shrinks again once the
//! record is consumed: a 4 KiB object's answer is such a record, so every response cost two
//! reallocations, a 4 KiB memset and two reads (or, behind a `BufReader`, a copy), and every
//! request was encrypted into a fresh `Vec` before being written. Here the socket is read
//! straight into one buffer the stream owns, rustls decrypts records where they lie, and
//! requests are encrypted straight into one reused output buffer: 36.5 → 33.5 µs of client CPU
//! per 4 KiB object over HTTPS (pinned client; HTTP costs 29.5).
//!
//! rustls hands decrypted application data out one record at a time; what the reader's
//! buffer cannot take, and records that arrive while a request is being written, wait in
//! `plain`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::client::UnbufferedClientConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room for two full records (16 KiB of payload each) before the buffer must be compacted.
const IN_START: usize = 34 * 1024;
/// A handshake message (a certificate chain) must fit whole; rustls itself allows 64 KiB.
const IN_MAX: usize = 256 * 1024;
/// A signed GET request fits in one record of this size.
const OUT_START: usize = 4 * 1024;

/// A TLS client connection, handshake done.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedClientConnection,
    incoming: Incoming,
    out: Outgoing,
    /// Decrypted bytes not yet read: `plain[plain_pos..]`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// The peer closed its side with close_notify: reads return end of stream.
    read_closed: bool,
    /// The socket returned end of file.
    eof: bool,
    close_notify_sent: bool,
}

/// Bytes read from the socket that rustls has not consumed: `buf[start..end]`.
struct Incoming {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Encrypted bytes not yet written to the socket: `buf[pos..end]`.
struct Outgoing {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

/// What a call into the connection is for.
enum Goal<'a, 'b> {
    Handshake,
    Read(&'a mut ReadBuf<'b>),
    Write(&'a [u8]),
    Close,
}

/// What to do after one state of the connection was handled (and its input discarded).
enum Next {
    Again,
    /// rustls needs more bytes from the socket.
    NeedData,
    /// The goal is reached; for a write, this many bytes were taken.
    Done(usize),
    Pending,
    Fail(io::Error),
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// Runs the handshake on `tcp` (an established connection).
    pub async fn connect(tcp: TcpStream, conn: UnbufferedClientConnection) -> io::Result<TlsStream> {
        let mut stream = TlsStream {
            tcp,
            conn,
            incoming: Incoming { buf: vec![0; IN_START], start: 0, end: 0 },
            out: Outgoing { buf: vec![0; OUT_START], pos: 0, end: 0 },
            plain: Vec::new(),
            plain_pos: 0,
            read_closed: false,
            eof: false,
            close_notify_sent: false,
        };
        std::future::poll_fn(|cx| stream.drive(cx, &mut Goal::Handshake)).await?;
        Ok(stream)
    }

    /// The connection's TLS state (negotiated version, whether the session was resumed).
    pub fn tls(&self) -> &rustls::CommonState {
        &self.conn
    }

    /// Moves the connection towards `goal` until it is reached or the socket would block.
    fn drive(&mut self, cx: &mut Context<'_>, goal: &mut Goal<'_, '_>) -> Poll<io::Result<usize>> {
        let TlsStream { tcp, conn, incoming, out, plain, plain_pos, read_closed, eof, close_notify_sent } = self;
        loop {
            if let Goal::Read(buf) = goal {
                if *plain_pos < plain.len() {
                    let n = (plain.len() - *plain_pos).min(buf.remaining());
                    buf.put_slice(&plain[*plain_pos..*plain_pos + n]);
                    *plain_pos += n;
                    if *plain_pos == plain.len() {
                        plain.clear();
                        *plain_pos = 0;
                    }
                    return Poll::Ready(Ok(n));
                }
                if *read_closed || buf.remaining() == 0 {
                    return Poll::Ready(Ok(0));
                }
            }
            let status = conn.process_tls_records(&mut incoming.buf[incoming.start..incoming.end]);
            let mut discard = status.discard;
            let next = match status.state {
                Err(e) => Next::Fail(tls_error(e)),
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    // Bytes put in the reader's buffer; 0 would read as end of stream.
                    let mut read = 0;
                    let mut failed = None;
                    while let Some(record) = records.next_record() {
                        let record = match record {
                            Ok(r) => r,
                            Err(e) => {
                                failed = Some(tls_error(e));
                                break;
                            }
                        };
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Goal::Read(buf) = goal {
                            let n = payload.len().min(buf.remaining());
                            buf.put_slice(&payload[..n]);
                            payload = &payload[n..];
                            read += n;
                        }
                        plain.extend_from_slice(payload);
                        if matches!(goal, Goal::Read(buf) if buf.remaining() == 0) {
                            break; // the rest stays with rustls until the next read
                        }
                    }
                    match failed {
                        Some(e) => Next::Fail(e),
                        None if read > 0 => Next::Done(read),
                        None => Next::Again,
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    let needs = |e: &EncodeError| match e {
                        EncodeError::InsufficientSize(s) => Some(s.required_size),
                        EncodeError::AlreadyEncoded => None,
                    };
                    match out.append(|b| data.encode(b), needs) {
                        Ok(()) | Err(EncodeError::AlreadyEncoded) => Next::Again,
                        Err(e) => Next::Fail(io::Error::other(e.to_string())),
                    }
                }
                Ok(ConnectionState::TransmitTlsData(data)) => match out.flush(tcp, cx) {
                    Poll::Ready(Ok(())) => {
                        data.done();
                        Next::Again
                    }
                    Poll::Ready(Err(e)) => Next::Fail(e),
                    Poll::Pending => Next::Pending,
                },
                Ok(ConnectionState::BlockedHandshake) => Next::NeedData,
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match goal {
                    Goal::Handshake => Next::Done(0),
                    Goal::Read(_) => Next::NeedData,
                    Goal::Write(data) => match out.append(|b| traffic.encrypt(data, b), encrypt_needs) {
                        Ok(()) => Next::Done(data.len()),
                        Err(e) => Next::Fail(io::Error::other(e.to_string())),
                    },
                    Goal::Close => match out.append(|b| traffic.queue_close_notify(b), encrypt_needs) {
                        Ok(()) => {
                            *close_notify_sent = true;
                            Next::Done(0)
                        }
                        Err(e) => Next::Fail(io::Error::other(e.to_string())),
                    },
                },
                Ok(ConnectionState::PeerClosed) => {
                    *read_closed = true;
                    Next::Again
                }
                Ok(ConnectionState::Closed) => {
                    *read_closed = true;
                    match goal {
                        Goal::Read(_) | Goal::Close => Next::Done(0),
                        _ => Next::Fail(io::Error::new(io::ErrorKind::BrokenPipe, "TLS connection closed")),
                    }
                }
                Ok(_) => Next::Fail(io::Error::other("unexpected TLS connection state")),
            };
            incoming.start += discard;
            if incoming.start == incoming.end {
                incoming.start = 0;
                incoming.end = 0;
            }
            match next {
                Next::Again => {}
                Next::Done(n) => return Poll::Ready(Ok(n)),
                Next::Pending => return Poll::Pending,
                Next::Fail(e) => return Poll::Ready(Err(e)),
                Next::NeedData => {
                    if *eof {
                        return Poll::Ready(match goal {
                            Goal::Close => Ok(0),
                            _ => Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "peer closed the connection without sending TLS close_notify",
                            )),
                        });
                    }
                    if let Goal::Close = goal {
                        return Poll::Ready(Ok(0)); // nothing more to send while the handshake waits
                    }
                    if ready!(incoming.fill(tcp, cx))? == 0 {
                        *eof = true;
                    }
                }
            }
        }
    }
}

impl Incoming {
    /// Reads what the socket has after the unconsumed bytes; 0 at end of file.
    fn fill(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < IN_MAX {
                self.buf.resize((self.buf.len() * 2).min(IN_MAX), 0);
            } else {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TLS message longer than {} KiB", IN_MAX / 1024),
                )));
            }
        }
        let mut space = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(tcp).poll_read(cx, &mut space))?;
        let n = space.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }
}

/// The room an encryption asked for, if that is why it failed.
fn encrypt_needs(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

impl Outgoing {
    /// Lets `put` write after what is pending, growing the buffer as often as `needs` finds
    /// it asked for more room; what it wrote is then pending too.
    fn append<E>(
        &mut self,
        mut put: impl FnMut(&mut [u8]) -> Result<usize, E>,
        needs: impl Fn(&E) -> Option<usize>,
    ) -> Result<(), E> {
        loop {
            match put(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) => match needs(&e) {
                    Some(room) => self.buf.resize(self.end + room, 0),
                    None => return Err(e),
                },
            }
        }
    }

    /// Writes everything encrypted so far.
    fn flush(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pos < self.end {
            let n = ready!(Pin::new(&mut *tcp).poll_write(cx, &self.buf[self.pos..self.end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
        self.pos = 0;
        self.end = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.get_mut().drive(cx, &mut Goal::Read(buf)).map_ok(|_| ())
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What was encrypted before goes out first: the output buffer stays one request long.
        ready!(this.out.flush(&mut this.tcp, cx))?;
        this.drive(cx, &mut Goal::Write(data))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.out.flush(&mut this.tcp, cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            ready!(this.drive(cx, &mut Goal::Close))?;
            this.close_notify_sent = true;
        }
        ready!(this.out.flush(&mut this.tcp, cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    struct Pki {
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        cert: CertificateDer<'static>,
    }

    fn pki() -> Pki {
        pki_serving(rustls::DEFAULT_VERSIONS)
    }

    /// A server that speaks only `versions` (some stores still offer TLS 1.2 alone).
    fn pki_serving(versions: &[&'static rustls::SupportedProtocolVersion]) -> Pki {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Pki { server: Arc::new(server), client: Arc::new(client), cert: der }
    }

    /// A server on 127.0.0.1 that runs `serve` on the first connection it accepts.
    async fn server<F, Fut>(config: Arc<rustls::ServerConfig>, serve: F) -> std::net::SocketAddr
    where
        F: FnOnce(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await.unwrap();
            serve(tls).await;
        });
        addr
    }

    async fn client(config: &Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> io::Result<TlsStream> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let conn = UnbufferedClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
        TlsStream::connect(tcp, conn).await
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_megabyte_each_way_through_small_reads_and_writes() {
        echo_a_megabyte(pki()).await;
    }

    #[tokio::test]
    async fn a_server_that_speaks_only_tls_1_2_works_and_resumes_sessions() {
        let mut pki = pki_serving(&[&rustls::version::TLS12]);
        // The lean engine's own client configuration (its session store holds TLS 1.2 sessions
        // apart from TLS 1.3 tickets), trusting the test's certificate.
        let ca = crate::config::CaBundle { path: "test".into(), certs: vec![pki.cert.clone()], pem: Vec::new() };
        pki.client = super::super::lean::tls_config(Some(&ca)).unwrap();
        let versions = two_connections(&pki).await;
        assert_eq!(versions, [Some(rustls::ProtocolVersion::TLSv1_2); 2]);
        echo_a_megabyte(pki).await;
    }

    async fn echo_a_megabyte(pki: Pki) {
        let addr = server(pki.server.clone(), |mut tls| async move {
            let mut got = vec![0; 1 << 20];
            tls.read_exact(&mut got).await.unwrap();
            tls.write_all(&got).await.unwrap();
            tls.shutdown().await.unwrap();
        })
        .await;
        let mut tls = client(&pki.client, addr).await.unwrap();
        let sent = pattern(1 << 20);
        for piece in sent.chunks(10_000) {
            tls.write_all(piece).await.unwrap();
        }
        tls.flush().await.unwrap();
        // Reads of 7 bytes: most records end up split between the reader and `plain`.
        let mut back = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = tls.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        assert_eq!(back.len(), sent.len());
        assert!(back == sent, "the echo differs");
    }

    #[tokio::test]
    async fn a_record_decrypted_while_a_request_is_written_is_kept_for_the_next_read() {
        let pki = pki();
        let (both_sent, sent) = tokio::sync::oneshot::channel();
        let addr = server(pki.server.clone(), |mut tls| async move {
            // Two records in one go: the client's first read takes the first only.
            tls.write_all(b"first").await.unwrap();
            tls.flush().await.unwrap();
            tls.write_all(b" second").await.unwrap();
            tls.flush().await.unwrap();
            let _ = both_sent.send(());
            let mut got = [0u8; 5];
            tls.read_exact(&mut got).await.unwrap();
            tls.write_all(b" answered").await.unwrap();
            tls.shutdown().await.unwrap();
        })
        .await;
        let mut tls = client(&pki.client, addr).await.unwrap();
        // Over loopback, bytes a send returned from are in the receiving socket: the first
        // read below takes both records.
        sent.await.unwrap();
        let mut first = [0u8; 5];
        tls.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"first");
        // The second record is in the stream's buffer, still encrypted: the write must
        // decrypt it to get to the state that encrypts, and keep it.
        tls.write_all(b"hello").await.unwrap();
        tls.flush().await.unwrap();
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b" second answered");
    }

    #[tokio::test]
    async fn a_peer_that_closes_without_close_notify_is_an_error_not_an_end() {
        let pki = pki();
        let addr = server(pki.server.clone(), |mut tls| async move {
            tls.write_all(b"partial").await.unwrap();
            tls.flush().await.unwrap();
            let (tcp, _) = tls.into_inner();
            drop(tcp);
        })
        .await;
        let mut tls = client(&pki.client, addr).await.unwrap();
        let mut all = Vec::new();
        let err = tls.read_to_end(&mut all).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        assert_eq!(all, b"partial");
    }

    #[tokio::test]
    async fn an_untrusted_certificate_fails_the_handshake_with_the_reason() {
        let pki = pki();
        let addr = server(pki.server.clone(), |_tls| async move {}).await;
        let other = super::tests::pki();
        let err = match client(&other.client, addr).await {
            Ok(_) => panic!("a certificate from another CA was accepted"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn a_second_connection_resumes_the_session_of_the_first() {
        two_connections(&pki()).await;
    }

    /// Two connections in turn, each reading one byte to the end: the first a full handshake,
    /// the second resumed from the session the first kept. Their protocol versions.
    async fn two_connections(pki: &Pki) -> Vec<Option<rustls::ProtocolVersion>> {
        let mut versions = Vec::new();
        for round in 0..2 {
            let addr = server(pki.server.clone(), |mut tls| async move {
                tls.write_all(b"x").await.unwrap();
                tls.shutdown().await.unwrap();
            })
            .await;
            let mut tls = client(&pki.client, addr).await.unwrap();
            let mut all = Vec::new();
            tls.read_to_end(&mut all).await.unwrap(); // takes the ticket, too
            assert_eq!(all, b"x");
            let want = if round == 0 { rustls::HandshakeKind::Full } else { rustls::HandshakeKind::Resumed };
            assert_eq!(tls.tls().handshake_kind(), Some(want), "connection {round}");
            versions.push(tls.tls().protocol_version());
        }
        versions
    }
}
