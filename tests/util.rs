//! Test helpers: an embedded endpoint on 127.0.0.1, the real `s3uring` binary run against it
//! through the real aws-sdk-s3 client, and tree comparison.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use s3uring::endpoint::{BucketSpec, Contents, Endpoint, EndpointConfig};

pub const AK: &str = "test-access-key";
pub const SK: &str = "test-secret-key";

/// One combination of engines a test body runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engines {
    pub io: &'static str,
    pub fetch: &'static str,
}

impl Engines {
    pub fn args(self) -> [&'static str; 4] {
        ["--io-engine", self.io, "--fetch-engine", self.fetch]
    }
}

impl std::fmt::Display for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "io {} / fetch {}", self.io, self.fetch)
    }
}

// Tests that count GETs at the endpoint exactly pass `--hedge-after 0`: on a loaded machine
// a GET can take longer than the default 2 s threshold and be hedged, which adds a GET.

/// Says that a test (or part of it) is skipped, and why, so that `cargo test` shows it even
/// when the test passes: libtest captures `eprintln!`, not writes to the stderr handle.
pub fn skipped(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED in {test}: {why}");
}

/// Every io engine × every fetch engine, to run a test body over. `uring` is left out, with
/// a message, where io_uring is unavailable.
pub fn engines() -> Vec<Engines> {
    let io = match s3uring::writer::uring::available() {
        Ok(()) => vec!["uring", "threads"],
        Err(why) => {
            skipped(&format!("io_uring unavailable here ({why}): testing the threads engine only"));
            vec!["threads"]
        }
    };
    io.into_iter().flat_map(|io| FETCH_ENGINES.map(|fetch| Engines { io, fetch })).collect()
}

/// The fetch engines, for tests whose writer does not matter.
pub const FETCH_ENGINES: [&str; 2] = ["lean", "sdk"];

/// A running endpoint with its own runtime; the binary is run against it.
pub struct Env {
    rt: tokio::runtime::Runtime,
    endpoint: Option<Endpoint>,
    pub url: String,
    pub signed: bool,
}

impl Env {
    /// An endpoint requiring SigV4 with [`AK`]/[`SK`].
    pub fn new(buckets: Vec<BucketSpec>) -> Env {
        Env::start(buckets, true)
    }

    /// An endpoint serving anonymous requests.
    pub fn anonymous(buckets: Vec<BucketSpec>) -> Env {
        Env::start(buckets, false)
    }

    fn start(buckets: Vec<BucketSpec>, signed: bool) -> Env {
        Env::with_config(EndpointConfig { buckets, ..Default::default() }, signed)
    }

    /// Any endpoint configuration (latency, faults); `signed` sets the credentials.
    pub fn with_config(mut config: EndpointConfig, signed: bool) -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        config.credentials = signed.then(|| (AK.to_owned(), SK.to_owned()));
        let endpoint = rt.block_on(Endpoint::start(config)).unwrap();
        let url = endpoint.url();
        Env { rt, endpoint: Some(endpoint), url, signed }
    }

    pub fn fault_counts(&self) -> s3uring::endpoint::FaultCounts {
        self.endpoint.as_ref().map(|e| e.fault_counts()).unwrap_or_default()
    }

    /// Waits until the endpoint has seen `n` more GETs than `before` (at most a minute: a
    /// liveness bound, not a timing): a run is that far along, whatever the machine's speed,
    /// and has long installed its signal handlers and read the file system's clock.
    pub fn wait_for_gets(&self, before: u64, n: u64) {
        let arrived = within_a_minute(|| self.fault_counts().gets >= before + n);
        assert!(arrived, "fewer than {n} GETs arrived within a minute");
    }

    /// List requests served (`gets`) and faults injected into them.
    pub fn list_fault_counts(&self) -> s3uring::endpoint::FaultCounts {
        self.endpoint.as_ref().map(|e| e.list_fault_counts()).unwrap_or_default()
    }

    /// Connections the endpoint accepted and serves now.
    pub fn connections_served(&self) -> usize {
        self.endpoint.as_ref().map_or(0, |e| e.connections_served())
    }

    /// What each of the endpoint's rate limits let through and refused, by prefix.
    pub fn rate_limit_counts(&self) -> Vec<s3uring::endpoint::RateLimitCounts> {
        self.endpoint.as_ref().map(|e| e.rate_limit_counts()).unwrap_or_default()
    }

    /// What the endpoint's in-flight cap let through and refused (`None`: no cap).
    pub fn inflight_counts(&self) -> Option<s3uring::endpoint::InflightCounts> {
        self.endpoint.as_ref().and_then(|e| e.inflight_counts())
    }

    /// `s3uring --endpoint-url URL` with credentials in the environment and nothing else
    /// of the machine's AWS configuration.
    pub fn cmd(&self) -> Command {
        self.cmd_for(None)
    }

    /// `s3uring check` against the endpoint.
    pub fn check_cmd(&self) -> Command {
        self.cmd_for(Some("check"))
    }

    fn cmd_for(&self, subcommand: Option<&str>) -> Command {
        let mut c = bare_cmd();
        c.args(subcommand);
        c.arg("--endpoint-url").arg(&self.url);
        if self.signed {
            c.env("AWS_ACCESS_KEY_ID", AK).env("AWS_SECRET_ACCESS_KEY", SK);
        } else {
            c.arg("--no-sign-request");
        }
        c
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        self.endpoint.take();
    }
}

/// The binary with a clean AWS environment: no profile files, no IMDS, a fixed region.
pub fn bare_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_s3uring"));
    for (k, _) in std::env::vars() {
        // The machine's proxies too: the binary honours them, and the endpoint is on 127.0.0.1.
        if k.starts_with("AWS_") || k.to_ascii_uppercase().ends_with("_PROXY") {
            c.env_remove(k);
        }
    }
    c.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env_remove("RUST_LOG");
    c
}

/// `cmd` run as pid 1 of a fresh pid namespace with its own `/proc`, as in a container
/// (`unshare --pid --fork --mount-proc --kill-child`: killing the returned command's process
/// kills everything in the namespace). `None`, having said why, where namespaces are refused.
pub fn in_pid_namespace(cmd: &Command) -> Option<Command> {
    const UNSHARE: [&str; 4] = ["--pid", "--fork", "--mount-proc", "--kill-child"];
    let works = Command::new("unshare").args(UNSHARE).arg("true").output().is_ok_and(|o| o.status.success());
    if !works {
        skipped("cannot run in a fresh pid namespace here (unshare --pid needs root or user namespaces)");
        return None;
    }
    Some(wrapped(&[&["unshare"][..], &UNSHARE[..]].concat(), cmd))
}

/// Looks every 5 ms until `done` says so, for at most a minute (a liveness bound, not a
/// timing): whether it did.
pub fn within_a_minute(mut done: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

/// `cmd` (program, arguments and environment) run under `wrapper` (a program and its
/// arguments: `strace -f …`, `unshare …`).
pub fn wrapped(wrapper: &[&str], cmd: &Command) -> Command {
    let mut c = Command::new(wrapper[0]);
    c.args(&wrapper[1..]).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// Runs and captures; prints stderr so a failing test shows what the tool said.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn s3uring");
    eprintln!("--- {:?} exited {:?}\n{}", cmd.get_args().collect::<Vec<_>>(), out.status.code(), stderr(&out));
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn bucket(name: &str, objects: Vec<(String, Bytes)>) -> BucketSpec {
    BucketSpec { name: name.to_owned(), contents: Contents::Objects(objects) }
}

/// Deterministic content for test objects.
pub fn content(key: &str, size: usize) -> Bytes {
    Bytes::from(s3uring::endpoint::generated_content(key, size as u64))
}

/// A directory tree: relative path → `Some(bytes)` for a file, `None` for a directory.
pub type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// Whether a file (anything but a directory) whose name `wanted` accepts is anywhere under
/// `dir`, which may not exist yet and may change while it is read.
pub fn any_file_named(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| match e.file_type() {
        Ok(t) if t.is_dir() => any_file_named(&e.path(), wanted),
        Ok(_) => wanted(&e.file_name().to_string_lossy()),
        Err(_) => false,
    })
}

/// Reads a whole tree (without following symlinks; a symlink is an error).
pub fn read_tree(root: &Path) -> Tree {
    let mut tree = Tree::new();
    walk(root, root, &mut tree);
    tree
}

fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            tree.insert(rel, None);
            walk(root, &path, tree);
        } else if ft.is_file() {
            tree.insert(rel, Some(std::fs::read(&path).unwrap()));
        } else {
            panic!("unexpected file type at {}", path.display());
        }
    }
}

/// The tree a bucket's objects should produce under DEST (keys relative to `prefix`).
pub fn expected_tree(objects: &[(String, Bytes)], prefix: &str) -> Tree {
    let mut tree = Tree::new();
    for (key, data) in objects {
        let Some(rel) = key.strip_prefix(prefix) else { continue };
        if rel.is_empty() {
            continue;
        }
        let (path, is_dir) = match rel.strip_suffix('/') {
            Some(p) => (p, true),
            None => (rel, false),
        };
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            tree.insert(parts[..i].join("/"), None);
        }
        tree.insert(path.to_owned(), if is_dir { None } else { Some(data.to_vec()) });
    }
    tree
}

/// Compares trees and reports the first differences by path (not megabytes of bytes).
pub fn assert_same_tree(got: &Tree, want: &Tree) {
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => diffs.push(format!("missing: {k}")),
            Some(g) if g != v => diffs.push(format!("differs: {k}")),
            _ => {}
        }
    }
    for k in got.keys() {
        if !want.contains_key(k) {
            diffs.push(format!("unexpected: {k}"));
        }
    }
    assert!(diffs.is_empty(), "{} differences, first: {:?}", diffs.len(), &diffs[..diffs.len().min(10)]);
}

/// A fresh temporary directory; `dest()` is a not-yet-existing directory inside it, so
/// tests can also check that nothing appeared beside DEST.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().unwrap() }
    }

    pub fn dest(&self) -> PathBuf {
        self.dir.path().join("dest")
    }

    /// A `--keys-from` file beside DEST listing `objects`' keys, one per line.
    pub fn keys_file(&self, objects: &[(String, Bytes)]) -> PathBuf {
        let list = self.dir.path().join("keys.txt");
        std::fs::write(&list, objects.iter().map(|(k, _)| format!("{k}\n")).collect::<String>()).unwrap();
        list
    }

    /// Everything in the scratch dir except DEST.
    pub fn outside_dest(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "dest")
            .collect()
    }
}

/// A tmpfs mounted for a test, unmounted on drop (also when the test fails). `None` where
/// mounting is not permitted (not root, no CAP_SYS_ADMIN): the caller skips with a message.
pub struct Mount {
    path: PathBuf,
    /// The loop device behind a file system made in an image file, detached on drop.
    device: Option<String>,
}

impl Mount {
    pub fn tmpfs(path: &Path, options: &str) -> Option<Mount> {
        Mount::new("tmpfs", path, options)
    }

    /// A file system of type `fstype` (`ramfs`: no extended attributes).
    pub fn new(fstype: &str, path: &Path, options: &str) -> Option<Mount> {
        let ok = std::process::Command::new("mount")
            .args(["-t", fstype, "-o", options, fstype])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount { path: path.to_owned(), device: None })
    }

    /// exFAT (Debian's exfatprogs and exfat-fuse), made in a 64 MiB image file beside `path`
    /// on a loop device: a file system this project did not write that does not tell upper
    /// from lower case (it keeps the case a name was created with), and keeps no extended
    /// attributes. `Err` says what is missing, for the caller's skip message.
    pub fn exfat(path: &Path) -> Result<Mount, String> {
        let sh = |cmd: &mut std::process::Command| -> Result<String, String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            match out.status.success() {
                true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
                false => Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim())),
            }
        };
        let image = path.with_extension("exfat.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).map_err(|e| format!("image: {e}"))?;
        sh(std::process::Command::new("mkfs.exfat").arg(&image))?;
        let device = sh(std::process::Command::new("losetup").args(["-f", "--show"]).arg(&image))?;
        // A root mount of exfat-fuse is a fuseblk mount, which wants a block device.
        if let Err(e) = sh(std::process::Command::new("mount.exfat-fuse").arg(&device).arg(path)) {
            let _ = std::process::Command::new("losetup").arg("-d").arg(&device).status();
            return Err(e);
        }
        Ok(Mount { path: path.to_owned(), device: Some(device) })
    }

    fn unmount(&self) {
        // An exited process's io_uring is torn down asynchronously by the kernel, so the
        // mount can stay busy for a moment: retry, then detach lazily.
        for _ in 0..40 {
            let ok = std::process::Command::new("umount")
                .arg(&self.path)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
        if let Some(device) = &self.device {
            let _ = std::process::Command::new("losetup").arg("-d").arg(device).status();
        }
    }
}

/// A private CA and a server certificate it signed for 127.0.0.1 and localhost: the
/// endpoint's TLS identity and the CA's PEM, for `--ca-bundle`.
pub fn private_ca() -> (s3uring::endpoint::TlsIdentity, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "s3uring test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &Issuer::from_params(&ca, &ca_key)).unwrap();
    let identity =
        s3uring::endpoint::TlsIdentity { cert_pem: cert.pem().into_bytes(), key_pem: key.serialize_pem().into_bytes() };
    (identity, ca_pem)
}

/// The usual test body: with each engine pair, `source` copied with `args` into a fresh
/// directory exits with `exit` and leaves exactly `want`; `check` then looks at the run's
/// stderr (and anything else it captured) for that engine pair.
pub fn copy_each_engine(
    env: &Env,
    args: &[&str],
    source: &str,
    exit: i32,
    want: &Tree,
    mut check: impl FnMut(Engines, &str, &Scratch),
) {
    for engine in engines() {
        let scratch = Scratch::new();
        let out = run(env.cmd().args(engine.args()).args(args).arg(source).arg(scratch.dest()));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(exit), "{engine}: {err}");
        assert_same_tree(&read_tree(&scratch.dest()), want);
        check(engine, &err, &scratch);
    }
}

/// A server process the tests started ([`start_server`]), killed on drop.
pub struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd`, a server from PyPI or npm (`package`, which `.ci/run` installs), and waits up to 30 s
/// for it to listen on `port` of 127.0.0.1. `None`, having said why, where it cannot start.
pub fn start_server(cmd: &mut Command, port: u16, package: &str) -> Option<Server> {
    let what = format!("{cmd:?}");
    let mut child = match cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => {
            skipped(&format!("cannot start {what} ({e}); .ci/run installs {package}"));
            return None;
        }
    };
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(30) {
        if let Ok(Some(status)) = child.try_wait() {
            skipped(&format!("{what} exited at once ({status}): is {package} installed? .ci/run installs it"));
            return None;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Server(child));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("{what} did not listen on port {port} within 30 s");
}

/// The summary's counts line (`N keys listed: …`) of a run's stderr.
pub fn summary_counts(out: &Output) -> String {
    stderr(out).lines().find(|l| l.contains("keys listed:")).unwrap_or_default().to_owned()
}

/// Creates `bucket` holding `objects` at the S3 endpoint `url` (path style, us-east-1),
/// through aws-sdk-s3 with these credentials, trusting `ca` (PEM) over HTTPS when given:
/// how the tests fill stores this project did not write.
pub fn put_objects(
    url: &str,
    (access, secret): (&str, &str),
    ca: Option<&str>,
    bucket: &str,
    objects: &[(String, Bytes)],
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let creds = aws_sdk_s3::config::Credentials::new(access, secret, None, None, "tests");
        let mut conf = aws_sdk_s3::Config::builder();
        if let Some(ca) = ca {
            use aws_smithy_http_client::tls;
            let store = tls::TrustStore::empty().with_native_roots(false).with_pem_certificate(ca.as_bytes());
            let ctx = tls::TlsContext::builder().with_trust_store(store).build().unwrap();
            conf = conf.http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
                    .tls_context(ctx)
                    .build_https(),
            );
        }
        let conf = conf
            .behavior_version_latest()
            .endpoint_url(url)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        let client = aws_sdk_s3::Client::from_conf(conf);
        client.create_bucket().bucket(bucket).send().await.expect("create bucket");
        for chunk in objects.chunks(64) {
            let puts: Vec<_> = chunk
                .iter()
                .map(|(k, v)| {
                    let req = client.put_object().bucket(bucket).key(k).body(v.clone().into());
                    tokio::spawn(async move { req.send().await.map(|_| ()).map_err(|e| format!("{e:?}")) })
                })
                .collect();
            for (p, (k, _)) in puts.into_iter().zip(chunk) {
                p.await.unwrap().unwrap_or_else(|e| panic!("put {k:?}: {e}"));
            }
        }
    });
}

/// The `--stats-json` document a run wrote to `path`.
pub fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("stats written")).expect("stats are JSON")
}
