//! The lean engine through an HTTP proxy, as `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and
//! `NO_PROXY` (or their lower-case forms) ask, read the way curl, the AWS CLI and the SDK's
//! own connector read them (hyper-util's matcher, which the SDK uses too).
//!
//! An HTTPS endpoint is reached through a `CONNECT` tunnel: TLS runs end to end inside it, so
//! the proxy sees only the host name. A plain-HTTP endpoint is asked in absolute form
//! (`GET http://host/key`) on keep-alive connections to the proxy, as HTTP proxies expect.
//! Either way `Proxy-Authorization` carries the credentials of the proxy URL, if any, and is
//! never signed (a proxy drops it before forwarding).

use http::HeaderValue;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Largest answer to CONNECT read before giving up on it.
const MAX_CONNECT_ANSWER: usize = 16 * 1024;
/// The end of an answer's headers.
const END: &[u8] = b"\r\n\r\n";

/// An HTTP proxy on the way to the endpoint.
pub(super) struct Proxy {
    /// Host (DNS name or IP literal, without brackets) and port to connect to.
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization: Basic …` from the proxy URL's user and password.
    pub auth: Option<HeaderValue>,
    /// The proxy URL without credentials, for messages.
    pub shown: String,
}

impl Proxy {
    /// The proxy the environment names for `endpoint`; `None`: connect directly.
    pub(super) fn for_endpoint(endpoint: &http::Uri) -> Result<Option<Proxy>, String> {
        let Some(intercept) = hyper_util::client::proxy::matcher::Matcher::from_env().intercept(endpoint) else {
            return Ok(None);
        };
        // The matcher keeps the URL's credentials apart (`basic_auth`): this one has none.
        let uri = intercept.uri();
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let shown = format!("{}://{authority}", uri.scheme_str().unwrap_or("http"));
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "proxy '{shown}' for {endpoint}: the lean engine speaks to http:// proxies only \
                     (--fetch-engine sdk speaks TLS to the proxy too)"
                ));
            }
            _ => {
                return Err(format!(
                    "proxy '{shown}' for {endpoint}: only HTTP proxies are supported \
                     (name an http:// proxy, or the endpoint's host in NO_PROXY)"
                ));
            }
        }
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(format!("proxy '{shown}' for {endpoint} has no host"));
        }
        let auth = intercept.basic_auth().cloned().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        Ok(Some(Proxy { host, port: uri.port_u16().unwrap_or(80), auth, shown }))
    }

    /// Asks the proxy, on `tcp`, for a tunnel to `target` (`host:port`) and reads its answer's
    /// headers to their end; any status but 2xx is an error naming it.
    pub(super) async fn tunnel(&self, tcp: &mut TcpStream, target: &str) -> Result<(), String> {
        let mut ask = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
        if let Some(auth) = &self.auth {
            ask.extend_from_slice(b"Proxy-Authorization: ");
            ask.extend_from_slice(auth.as_bytes());
            ask.extend_from_slice(b"\r\n");
        }
        ask.extend_from_slice(b"\r\n");
        tcp.write_all(&ask).await.map_err(|e| format!("sending CONNECT: {e}"))?;
        // The server speaks only after our TLS hello, so whatever comes now is the answer; it
        // is read until its blank line and never past it.
        let mut answer = Vec::with_capacity(256);
        let mut chunk = [0u8; END.len()];
        while !answer.ends_with(END) {
            if answer.len() > MAX_CONNECT_ANSWER {
                return Err(format!("answer to CONNECT longer than {MAX_CONNECT_ANSWER} bytes"));
            }
            // No more than could complete the blank line: what of it the answer already ends with.
            let begun = (1..=3).rev().find(|&k| answer.ends_with(&END[..k])).unwrap_or(0);
            let want = END.len() - begun;
            let n = tcp.read(&mut chunk[..want]).await.map_err(|e| format!("reading the answer to CONNECT: {e}"))?;
            if n == 0 {
                return Err("the proxy closed the connection instead of answering CONNECT".to_owned());
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        let status_line = answer.split(|b| *b == b'\r').next().unwrap_or_default();
        let status_line = String::from_utf8_lossy(status_line);
        match status_line.split(' ').nth(1) {
            Some(code) if code.starts_with('2') => Ok(()),
            _ => Err(format!("CONNECT {target} refused: {}", status_line.trim())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener answering one CONNECT with `answer`, returning what it was asked.
    async fn one_answer(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut asked = Vec::new();
            let mut buf = [0u8; 1024];
            while !asked.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                asked.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            asked
        });
        (port, task)
    }

    fn proxy(port: u16, auth: Option<&'static str>) -> Proxy {
        Proxy {
            host: "127.0.0.1".into(),
            port,
            auth: auth.map(HeaderValue::from_static),
            shown: format!("http://127.0.0.1:{port}"),
        }
    }

    #[tokio::test]
    async fn a_tunnel_is_asked_for_with_credentials_and_its_answer_read_to_the_blank_line_only() {
        let (port, asked) = one_answer(b"HTTP/1.1 200 Connection established\r\nVia: p\r\n\r\nTLS").await;
        let p = proxy(port, Some("Basic dTpw"));
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        p.tunnel(&mut tcp, "s3.example:443").await.unwrap();
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"TLS", "bytes after the answer belong to the tunnel");
        let asked = String::from_utf8(asked.await.unwrap()).unwrap();
        assert_eq!(
            asked,
            "CONNECT s3.example:443 HTTP/1.1\r\nHost: s3.example:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_refused_tunnel_names_the_proxys_answer() {
        let (port, _) = one_answer(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n").await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let err = proxy(port, None).tunnel(&mut tcp, "s3.example:443").await.unwrap_err();
        assert_eq!(err, "CONNECT s3.example:443 refused: HTTP/1.1 407 Proxy Authentication Required");
    }
}
