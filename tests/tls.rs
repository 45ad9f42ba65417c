//! HTTPS end to end: the embedded endpoint behind TLS with a private CA, trusted
//! through `--ca-bundle` or `AWS_CA_BUNDLE` by both fetch engines and the control plane.

use bytes::Bytes;
use s3uring::endpoint::EndpointConfig;

use crate::util::*;

fn objects() -> Vec<(String, Bytes)> {
    let mut objs: Vec<(String, Bytes)> = (0..200)
        .map(|i| {
            let key = format!("d{}/f{i:03}", i % 7);
            let data = content(&key, 100 + i * 13);
            (key, data)
        })
        .collect();
    // Large enough to go in parts with the default threshold.
    objs.push(("big.bin".to_owned(), content("big.bin", 17 << 20)));
    objs
}

fn https_env(objs: Vec<(String, Bytes)>) -> (Env, Scratch, std::path::PathBuf) {
    let (identity, ca_pem) = private_ca();
    let config = EndpointConfig { buckets: vec![bucket("tls", objs)], tls: Some(identity), ..Default::default() };
    let env = Env::with_config(config, true);
    assert!(env.url.starts_with("https://127.0.0.1:"), "{}", env.url);
    let keep = Scratch::new();
    let ca = keep.dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    (env, keep, ca)
}

#[test]
fn https_with_a_private_ca_copies_with_ca_bundle_or_aws_ca_bundle_and_each_engine() {
    let objs = objects();
    let want = expected_tree(&objs, "");
    let (env, _keep, ca) = https_env(objs);
    for engine in engines() {
        let scratch = Scratch::new();
        let out = run(env.cmd().args(engine.args()).arg("--ca-bundle").arg(&ca).arg("s3://tls").arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "engine {engine}");
        assert!(stderr(&out).contains("201 files written"), "{engine}");
        assert_same_tree(&read_tree(&scratch.dest()), &want);
    }
    // The AWS CLI's variable works the same way (the Rust SDK alone would ignore it).
    for fetch in FETCH_ENGINES {
        let scratch = Scratch::new();
        let out =
            run(env.cmd().env("AWS_CA_BUNDLE", &ca).args(["--fetch-engine", fetch, "s3://tls"]).arg(scratch.dest()));
        assert_eq!(out.status.code(), Some(0), "fetch {fetch}");
        assert_same_tree(&read_tree(&scratch.dest()), &want);
    }
}

#[test]
fn https_without_the_ca_fails_at_once_with_the_reason() {
    let (env, keep, _ca) = https_env(objects());
    let scratch = Scratch::new();
    let out = run(env.cmd().arg("s3://tls").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("certificate") && err.contains("--ca-bundle"), "{err}");
    assert!(!scratch.dest().exists());
    // A bundle that is not PEM is refused before any request, naming the file.
    let junk = keep.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let out = run(env.cmd().arg("--ca-bundle").arg(&junk).arg("s3://tls").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("junk.pem") && err.contains("no PEM certificate"), "{err}");
    let missing = keep.dir.path().join("missing.pem");
    let out = run(env.cmd().arg("--ca-bundle").arg(&missing).arg("s3://tls").arg(scratch.dest()));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.pem"), "{}", stderr(&out));
}
