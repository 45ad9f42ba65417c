//! Through an HTTP proxy this project did not write: proxy.py (PyPI: `proxy.py`, which
//! `.ci/run` installs), started by the tests on 127.0.0.1 and named by `HTTPS_PROXY` /
//! `HTTP_PROXY`, as users behind a corporate or VPC proxy set them for the AWS CLI. The proxy's
//! access log shows each tunnel (`CONNECT host:port`, HTTPS); the endpoint counts the GETs
//! on connections the proxy opened, whose first request carries its `Via` header (HTTP).

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use s3uring::endpoint::EndpointConfig;

use crate::util::*;

/// A proxy.py on a free port, logging to a file, stopped on drop.
struct ProxyPy {
    _server: Server,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProxyPy {
    /// `None`, having said why, where proxy.py is not installed.
    fn start() -> Option<ProxyPy> {
        ProxyPy::start_with(&[])
    }

    /// With more of proxy.py's flags (`--basic-auth user:password`).
    fn start_with(flags: &[&str]) -> Option<ProxyPy> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let dir = tempfile::tempdir().ok()?;
        let log = dir.path().join("proxy.log");
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "proxy", "--hostname", "127.0.0.1", "--port", &port.to_string()])
            .args(["--num-acceptors", "1", "--num-workers", "2"])
            .args(flags)
            .arg("--log-file")
            .arg(&log);
        let child = start_server(&mut cmd, port, "proxy.py")?;
        Some(ProxyPy { _server: child, url: format!("http://127.0.0.1:{port}"), log, _dir: dir })
    }

    /// The access log's lines so far that start with `what` (`CONNECT 127.0.0.1:PORT`, …).
    /// proxy.py writes one line per client connection, when it closes.
    fn logged(&self, what: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.split(" - ").any(|part| part.starts_with(what))).count()
    }

    /// [`Self::logged`] once it reached `at_least` (the proxy logs a connection after it
    /// noticed the close), or after a minute: a liveness bound, the caller's assertion says
    /// what was missing.
    fn reached(&self, what: &str, at_least: usize) -> usize {
        within_a_minute(|| self.logged(what) >= at_least);
        self.logged(what)
    }
}

fn objects() -> Vec<(String, Bytes)> {
    (0..60)
        .map(|i| {
            let key = format!("p{}/o{i:02}", i % 3);
            let data = content(&key, 200 + i * 31);
            (key, data)
        })
        .collect()
}

#[test]
fn https_goes_through_a_connect_tunnel_of_the_proxy_in_https_proxy_with_each_engine() {
    let Some(proxy) = ProxyPy::start() else { return };
    let objs = objects();
    let want = expected_tree(&objs, "");
    let (identity, ca_pem) = private_ca();
    let env = Env::with_config(
        EndpointConfig { buckets: vec![bucket("via", objs)], tls: Some(identity), ..Default::default() },
        true,
    );
    let scratch = Scratch::new();
    let ca = scratch.dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let target = format!("CONNECT {}", env.url.trim_start_matches("https://"));
    for fetch in FETCH_ENGINES {
        let before = proxy.logged(&target);
        let dest = scratch.dir.path().join(format!("dest-{fetch}"));
        let json = scratch.dir.path().join(format!("stats-{fetch}.json"));
        let out = run(env
            .cmd()
            .env("HTTPS_PROXY", &proxy.url)
            .args(["--fetch-engine", fetch, "--ca-bundle"])
            .arg(&ca)
            .arg("--stats-json")
            .arg(&json)
            .arg("s3://via")
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&dest), &want);
        // Every connection of the lean engine was a tunnel, as were the SDK's (control plane;
        // all requests with --fetch-engine sdk).
        let lean = stats(&json)["fetch"]["connections_opened"].as_u64().expect("connections_opened") as usize;
        let tunnels = proxy.reached(&target, before + lean.max(1)) - before;
        assert!(tunnels >= lean.max(1), "{fetch}: {tunnels} tunnels for {lean} lean connections");
    }
}

#[test]
fn http_requests_are_forwarded_by_the_proxy_in_http_proxy_and_no_proxy_bypasses_it() {
    let Some(proxy) = ProxyPy::start() else { return };
    let objs = objects();
    let want = expected_tree(&objs, "");
    let env = Env::new(vec![bucket("via", objs.clone())]);
    // proxy.py adds `Via: 1.1 proxy.py …` to what it forwards; the endpoint counts the GETs
    // that carry one.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for fetch in FETCH_ENGINES {
        let before = env.fault_counts();
        let scratch = Scratch::new();
        let out = run(env
            .cmd()
            .env("HTTP_PROXY", &proxy.url)
            .args(["--fetch-engine", fetch, "s3://via"])
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &want);
        let after = env.fault_counts();
        assert!(after.gets - before.gets >= objs.len() as u64, "{fetch}: {after:?}");
        assert_eq!(after.proxied - before.proxied, after.gets - before.gets, "{fetch}: every GET through the proxy");
        // NO_PROXY names the endpoint's host: the proxy (here a port nobody listens on) is
        // never used.
        let before = env.fault_counts();
        let scratch = Scratch::new();
        let out = run(env
            .cmd()
            .env("HTTP_PROXY", format!("http://127.0.0.1:{closed}"))
            .env("NO_PROXY", "localhost,127.0.0.1")
            .args(["--fetch-engine", fetch, "s3://via"])
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "{fetch}: NO_PROXY bypasses the proxy: {}", stderr(&out));
        assert_same_tree(&read_tree(&scratch.dest()), &want);
        assert_eq!(env.fault_counts().proxied, before.proxied, "{fetch}");
    }
}

#[test]
fn a_proxy_that_is_not_listening_fails_the_run_naming_the_proxy() {
    let objs = objects();
    let env = Env::new(vec![bucket("via", objs)]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let out = run(env
            .cmd()
            .env("HTTP_PROXY", format!("http://127.0.0.1:{closed}"))
            .args(["--fetch-engine", fetch, "--retries", "0", "--stall-timeout", "2", "s3://via"])
            .arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(2), "{fetch}: a setup error: {}", stderr(&out));
        assert!(scratch.outside_dest().is_empty());
        let err = stderr(&out);
        assert!(err.contains(&format!("127.0.0.1:{closed}")), "{fetch}: the proxy is named: {err}");
    }
}

#[test]
fn credentials_in_the_proxy_url_are_sent_and_a_refusal_names_the_proxys_answer() {
    let Some(proxy) = ProxyPy::start_with(&["--basic-auth", "restore:s3cret"]) else { return };
    let objs = objects();
    let want = expected_tree(&objs, "");
    let (identity, ca_pem) = private_ca();
    let https = Env::with_config(
        EndpointConfig { buckets: vec![bucket("via", objs.clone())], tls: Some(identity), ..Default::default() },
        true,
    );
    let http = Env::new(vec![bucket("via", objs)]);
    let scratch = Scratch::new();
    let ca = scratch.dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let with_password = |password: &str| proxy.url.replace("http://", &format!("http://restore:{password}@"));
    for fetch in FETCH_ENGINES {
        for (env, var) in [(&https, "HTTPS_PROXY"), (&http, "HTTP_PROXY")] {
            let dest = scratch.dir.path().join(format!("{fetch}-{var}"));
            let out = run(env
                .cmd()
                .env(var, with_password("s3cret"))
                .args(["--fetch-engine", fetch, "--ca-bundle"])
                .arg(&ca)
                .arg("s3://via")
                .arg(&dest));
            assert_eq!(out.status.code(), Some(0), "{fetch} {var}: {}", stderr(&out));
            assert_same_tree(&read_tree(&dest), &want);
        }
        // The wrong password: the run fails, saying the proxy asked for credentials.
        let dest = scratch.dir.path().join(format!("{fetch}-refused"));
        let out = run(https
            .cmd()
            .env("HTTPS_PROXY", with_password("wrong"))
            .args(["--fetch-engine", fetch, "--retries", "0", "--ca-bundle"])
            .arg(&ca)
            .arg("s3://via")
            .arg(&dest));
        assert_eq!(out.status.code(), Some(2), "{fetch}: a setup error: {}", stderr(&out));
        let err = stderr(&out);
        // Lean: `CONNECT … refused: HTTP/1.1 407 …`; the SDK: `proxy authorization required`.
        assert!(
            err.contains("407 Proxy Authentication Required") || err.contains("proxy authorization required"),
            "{fetch}: the proxy's answer is named: {err}"
        );
        assert!(!err.contains("s3cret") && !err.contains("wrong"), "{fetch}: no password in messages: {err}");
    }
}

#[test]
fn the_demo_connects_to_its_own_endpoint_directly_whatever_proxy_the_machine_sets() {
    // The README's first command, on a machine whose shell names a proxy: the demo's endpoint
    // is in its own process, which no proxy can reach.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let scratch = Scratch::new();
    let out = run(bare_cmd()
        .env("HTTP_PROXY", format!("http://127.0.0.1:{closed}"))
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{closed}"))
        .args(["demo", "--objects", "300", "--dest"])
        .arg(scratch.dest()));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("verified: all 300 files are byte-identical"), "{all}");
}

#[test]
fn a_proxy_the_lean_engine_cannot_speak_to_stops_the_run_saying_what_to_do() {
    let objs = objects();
    let env = Env::new(vec![bucket("via", objs)]);
    for (proxy, says) in [
        ("https://127.0.0.1:3129", "--fetch-engine sdk speaks TLS to the proxy too"),
        ("socks5://127.0.0.1:1080", "only HTTP proxies are supported"),
    ] {
        let scratch = Scratch::new();
        let out =
            run(env.cmd().env("HTTP_PROXY", proxy).args(["--fetch-engine", "lean", "s3://via"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(2), "{proxy}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(says) && err.contains(proxy), "{proxy}: {err}");
        assert!(!scratch.dest().exists() || read_tree(&scratch.dest()).is_empty(), "{proxy}: nothing written");
    }
}
