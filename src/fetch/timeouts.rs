//! The bounds on a GET, against real sockets on 127.0.0.1 with a clock the tests control
//! (tokio's paused time, which jumps to the next timer whenever every task waits): a connect
//! the server never completes and a request it never answers (each fetch engine), a body it
//! never finishes (the attempt's bound, around either engine). Each fails the attempt as
//! transient (retried) after exactly its bound of that clock.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::lean::Lean;
use super::store::{ObjectStore, Retry};
use crate::config::{Config, Credentials, S3Settings, S3Url};
use crate::report::Report;
use crate::s3::BucketEndpoint;

fn lean(addr: std::net::SocketAddr) -> Lean {
    let endpoint = BucketEndpoint {
        url: format!("http://{addr}/b"),
        signing_region: "us-east-1".into(),
        signing_name: "s3".into(),
    };
    Lean::new("b", &endpoint, None, Arc::new(Report::silent()), false, &S3Settings::default()).expect("a lean engine")
}

/// The SDK engine as a run builds it, for an endpoint at `addr`.
async fn sdk(addr: std::net::SocketAddr) -> super::sdk::Sdk {
    let settings = S3Settings {
        endpoint_url: Some(format!("http://{addr}")),
        region: Some("us-east-1".into()),
        credentials: Credentials::Anonymous,
        force_path_style: Some(true),
        ..S3Settings::default()
    };
    let control = crate::s3::client(&settings).await.expect("an SDK client");
    super::sdk::Sdk {
        client: control.client_no_retry.clone(),
        bucket: "b".into(),
        verify: false,
        requester_pays: false,
    }
}

/// A server that reads each request and then answers `answer` (bytes, possibly an
/// incomplete response), keeping every connection open.
async fn server(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(answer).await;
            held.push(conn);
        }
    });
    addr
}

/// A GET from `store` fails, as transient, saying `says`, after `secs` of the paused clock.
async fn fails_after(store: &dyn ObjectStore, secs: u64, says: &str) {
    let started = Instant::now();
    let Err(err) = store.get("k", None, None, 10, &AtomicBool::new(false)).await else {
        panic!("{}: the GET succeeded", store.name())
    };
    assert_eq!(started.elapsed(), Duration::from_secs(secs), "{}: {}", store.name(), err.reason);
    assert_eq!(err.retry, Retry::Transient, "{}", store.name());
    assert!(err.reason.contains(says), "{}: {}", store.name(), err.reason);
}

#[tokio::test(start_paused = true)]
async fn a_request_never_answered_fails_after_the_first_byte_bound() {
    let addr = server(b"").await;
    let stores: [(Box<dyn ObjectStore>, &str); 2] =
        [(Box::new(lean(addr)), "no response within 30s"), (Box::new(sdk(addr).await), "no response in time")];
    for (store, says) in stores {
        fails_after(store.as_ref(), 30, says).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_connect_never_completed_fails_after_the_connect_bound() {
    // A listener that never accepts, its queue full: the kernel drops further SYNs, so a
    // connect hangs as it does to a host that is down.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    while let Ok(conn) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        queued.push(conn);
        assert!(queued.len() < 64, "the listen queue never filled");
    }
    let lean_says = format!("cannot connect to {addr}: timed out");
    let stores: [(Box<dyn ObjectStore>, &str); 2] =
        [(Box::new(lean(addr)), &lean_says), (Box::new(sdk(addr).await), "timed out connecting")];
    for (store, says) in stores {
        fails_after(store.as_ref(), 5, says).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_never_finished_fails_after_the_attempt_bound() {
    // Prompt headers, then 1 of 3 MiB: the first-byte bound is met, the attempt's is not
    // (60 s, plus a second per MiB).
    let addr = server(b"HTTP/1.1 200 OK\r\nContent-Length: 3145728\r\nETag: \"e\"\r\n\r\nx").await;
    let mut cfg = Config::new(
        S3Url { bucket: "b".into(), prefix: String::new(), object: None },
        "/nonexistent".into(),
        S3Settings::default(),
    );
    cfg.hedge_after_ms = 0;
    let engine = super::Engine::with_store(Arc::new(lean(addr)), &cfg);
    let started = Instant::now();
    let Err(err) = engine.send(None, "k", 3 << 20, None, &AtomicBool::new(false)).await else {
        panic!("the GET succeeded")
    };
    assert_eq!(started.elapsed(), Duration::from_secs(63), "{}", err.reason);
    assert_eq!(err.retry, Retry::Transient);
    assert!(err.reason.contains("attempt timed out after 63 s"), "{}", err.reason);
}
