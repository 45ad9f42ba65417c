//! End-to-end benchmark: the real `s3uring` binary restoring generated objects from the
//! embedded endpoint (`s3uring serve`, a separate process, so client and server CPU are
//! measured apart) into tmpfs and into a disk directory, with each io engine, repeated and
//! interleaved so that drift on a shared machine hits every configuration alike (the order
//! of the runs rotates by one each rep). The `bare-loop` engine is the file system's floor,
//! without S3: this process creating the same tree with plain syscalls on one thread
//! (temporary name, write, rename).
//!
//! ```text
//! cargo bench --bench e2e -- [--objects 20000] [--size 4096] [--repeat 5]
//!     [--engines uring,threads,bare-loop,s5cmd,rclone,rclone-fast-list,aws] [--dests /dev/shm,target/bench-disk] [--workers 512] [--queue 4096]
//!     [--latency-ms 0] [--anonymous] [--extra "more s3uring flags"]
//!     [--schemes http,https] [--pin] [--clean-each] [--out bench-results/DATE-MACHINE]
//! ```
//!
//! An s3uring engine may carry one more flag: `threads+no-verify` runs `threads` with
//! `--no-verify`.
//!
//! `--schemes http,https` (the default) starts one endpoint per scheme (the HTTPS one with a certificate
//! from a private CA made for the run) and interleaves them; HTTPS rows are labelled
//! `ENGINE@https`. Every client is given the CA the way it takes one: s3uring `--ca-bundle`,
//! rclone `--ca-cert`, s5cmd `AWS_CA_BUNDLE`, the AWS CLI `--ca-bundle`. `--pin` runs the
//! endpoint on the last core and every client on the others (`taskset`), so that client and
//! server do not take turns on one core. `--clean-each` deletes each
//! run's tree right after it is measured (for large objects that would not fit twice; for
//! many small files it makes ext4's allocator crawl in the next run, so it is off by default).
//!
//! s3uring engines are `IO[-sdk]`: `uring`/`threads` with the lean fetch engine, `uring-sdk`/
//! `threads-sdk` with aws-sdk-s3's GetObject. `--anonymous` serves unsigned requests and runs
//! every client with its no-sign-request option (the server's SigV4 check costs it 26–45
//! µs/object of the same two cores).
//!
//! Writes `raw.csv` (one row per run) and `summary.md` (medians, and the ratio of each
//! engine against `threads` on the same destination, measured in the same run).

#[path = "common.rs"]
mod common;

use common::{Table, bare_loop, median, proc_cpu, self_cpu, sh};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// The real binary against `s3uring serve`, each io engine and the peers, interleaved.
#[derive(clap::Parser)]
struct Opts {
    #[arg(long, default_value_t = 20_000)]
    objects: u64,
    #[arg(long, default_value_t = 4096)]
    size: u64,
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Clients (default: s3uring's engines, the bare loop and the peers installed).
    #[arg(long, value_delimiter = ',')]
    engines: Vec<String>,
    #[arg(long, value_delimiter = ',', default_values = ["/dev/shm", "target/bench-disk"])]
    dests: Vec<PathBuf>,
    #[arg(long, default_value = "512")]
    workers: String,
    #[arg(long, default_value = "4096")]
    queue: String,
    #[arg(long, default_value = "0")]
    latency_ms: String,
    /// Unsigned requests, every client with its no-sign-request option.
    #[arg(long)]
    anonymous: bool,
    /// More s3uring flags, in one argument.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    extra: String,
    /// Directory for raw.csv and summary.md.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Real S3 speaks HTTPS: every comparison runs over both unless told otherwise.
    #[arg(long, value_delimiter = ',', default_values = ["http", "https"])]
    schemes: Vec<String>,
    /// The endpoint on the last core, the clients on the others.
    #[arg(long)]
    pin: bool,
    /// Delete each run's tree right after it is measured.
    #[arg(long)]
    clean_each: bool,
    /// Another s3uring build to compare with in the same run: engines named `base:ENGINE`
    /// (e.g. `base:threads`) run it, the others this build.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

/// Writes and deletes `bytes` (at most half the available memory) in each tmpfs destination
/// before the runs. A VM's memory may be backed by the host only when first touched (these
/// Firecracker machines: writing 8 GB into tmpfs took 24 s the first time, 3.6 s the next):
/// without this, a run that gets fresh pages pays several times the kernel's write cost of a
/// run that reuses pages an earlier one freed, which favours whichever engine runs first.
fn warm_tmpfs(dests: &[PathBuf], bytes: u64) {
    let available_kib = sh("awk '/MemAvailable/ {print $2}' /proc/meminfo").parse::<u64>().unwrap_or(0);
    let available = available_kib * 1024;
    let bytes = bytes.min(available / 2);
    let chunk = vec![1u8; 1 << 20];
    for d in dests.iter().filter(|d| sh(&format!("findmnt -no FSTYPE -T {} | head -1", d.display())) == "tmpfs") {
        let path = d.join(format!("s3uring-bench-warm-{}", std::process::id()));
        let t = Instant::now();
        let mut f = std::fs::File::create(&path).expect("create the warm-up file");
        for _ in 0..bytes.div_ceil(chunk.len() as u64) {
            if std::io::Write::write_all(&mut f, &chunk).is_err() {
                break;
            }
        }
        drop(f);
        let _ = std::fs::remove_file(&path);
        eprintln!("warmed {} MiB of {} in {:.1} s", bytes >> 20, d.display(), t.elapsed().as_secs_f64());
    }
}

/// Where this bench process puts its runs under a destination base.
fn scratch(base: &Path) -> PathBuf {
    base.join(format!("s3uring-bench-{}", std::process::id()))
}

struct Server {
    child: Child,
    url: String,
    /// HTTPS: the CA's PEM file for the clients.
    ca: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Also when a run fails: never leave the endpoint behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--pin`: the endpoint's core and the clients' cores (`taskset -c` lists).
fn pinned_cores() -> (String, String) {
    let n: usize = sh("nproc").parse().unwrap_or(1).max(2);
    ((n - 1).to_string(), format!("0-{}", n - 2))
}

fn start_server(bin: &str, o: &Opts, https: bool, dir: &Path) -> Server {
    let mut cmd = if o.pin {
        // taskset execs the endpoint: the child's pid is the endpoint's.
        let mut c = Command::new("taskset");
        c.args(["-c", &pinned_cores().0, bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.arg("serve");
    let ca = https.then(|| {
        let (cert, key, ca) = private_ca();
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };
        cmd.arg("--tls-cert").arg(write("server.pem", &cert)).arg("--tls-key").arg(write("server.key", &key));
        write("ca.pem", &ca)
    });
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0", "--bucket", "bench"])
        .args(["--objects", &o.objects.to_string(), "--size", &o.size.to_string(), "--prefixes", "100"])
        .args(["--latency-ms", &o.latency_ms])
        .args(o.anonymous.then_some("--anonymous"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start s3uring serve");
    let stdout = child.stdout.take().expect("server stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("server exited").expect("server stdout");
        if let Some(u) = line.strip_prefix("endpoint: ") {
            break u.to_owned();
        }
    };
    // Keep draining stdout in the background so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, url, ca }
}

/// A server certificate for 127.0.0.1 signed by a new private CA: (cert, key, CA) PEMs.
fn private_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "s3uring bench CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
    let cert = params.signed_by(&key, &Issuer::from_params(&ca, &ca_key)).expect("server certificate");
    (cert.pem(), key.serialize_pem(), ca_pem)
}

#[derive(Debug, Clone)]
struct Row {
    rep: usize,
    dest: String,
    engine: String,
    secs: f64,
    objects_per_sec: f64,
    client_cpu_us: f64,
    server_cpu_us: f64,
    peak_rss_mib: f64,
    /// s3uring runs only: ttfb p50/p99, total p50/p99 (µs), files per submit.
    stages: Option<[f64; 5]>,
}

/// The command line of one client: s3uring with an io engine, or a peer tool, all against
/// the same endpoint and data, run under GNU time for CPU and peak RSS measured alike.
fn client_command(bin: &str, engine: &str, server: &Server, o: &Opts, dest: &Path) -> Command {
    let url = server.url.as_str();
    let mut c = if o.pin {
        let mut c = Command::new("taskset");
        c.args(["-c", &pinned_cores().1, "/usr/bin/time"]);
        c
    } else {
        Command::new("/usr/bin/time")
    };
    c.args(["-f", "BENCHTIME %e %U %S %M"]);
    common::direct(&mut c);
    // The machine sets AWS_CA_BUNDLE; the Go SDK inside rclone refuses it on its transport,
    // and plain HTTP to 127.0.0.1 needs no CA.
    c.env_remove("AWS_CA_BUNDLE");
    let ca = server.ca.as_deref();
    c.env("AWS_ACCESS_KEY_ID", "s3uring")
        .env("AWS_SECRET_ACCESS_KEY", "s3uring-demo-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    match engine {
        "aws" => {
            c.args(["aws", "--endpoint-url", url, "s3", "cp", "--recursive", "--only-show-errors", "s3://bench"])
                .arg(dest)
                .args(o.anonymous.then_some("--no-sign-request"));
            if let Some(ca) = ca {
                c.arg("--ca-bundle").arg(ca);
            }
        }
        "s5cmd" => {
            if let Some(ca) = ca {
                // aws-sdk-go (v1) inside s5cmd reads the CA bundle from the environment.
                c.env("AWS_CA_BUNDLE", ca);
            }
            c.args(["s5cmd", "--endpoint-url", url])
                .args(o.anonymous.then_some("--no-sign-request"))
                .args(["cp", "s3://bench/*"])
                .arg(format!("{}/", dest.display()));
        }
        "rclone" | "rclone-fast-list" => {
            c.env("RCLONE_CONFIG_BENCH_TYPE", "s3")
                .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
                .env("RCLONE_CONFIG_BENCH_LIST_VERSION", "2")
                .env("RCLONE_CONFIG_BENCH_ENDPOINT", url)
                .args(["rclone", "copy", "bench:bench"])
                .arg(dest);
            if let Some(ca) = ca {
                c.arg("--ca-cert").arg(ca);
            }
            if !o.anonymous {
                // Without keys rclone sends anonymous requests.
                c.env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", "s3uring")
                    .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", "s3uring-demo-secret");
            }
            if engine == "rclone" {
                c.args(["--transfers", "64", "--checkers", "64"]);
            } else {
                c.args(["--transfers", "256", "--checkers", "64", "--fast-list"]);
            }
        }
        _ => {
            let (bin, engine) = match engine.strip_prefix("base:") {
                Some(engine) => (o.baseline.as_deref().expect("base:ENGINE needs --baseline BIN").as_os_str(), engine),
                None => (std::ffi::OsStr::new(bin), engine),
            };
            // `ENGINE+FLAG`: the same engine with `--FLAG` (e.g. `threads+no-verify`).
            let (engine, flag) = match engine.split_once('+') {
                Some((engine, flag)) => (engine, Some(format!("--{flag}"))),
                None => (engine, None),
            };
            let (io, fetch) = match engine.strip_suffix("-sdk") {
                Some(io) => (io, "sdk"),
                None => (engine, "lean"),
            };
            c.arg(bin);
            if let Some(ca) = ca {
                c.arg("--ca-bundle").arg(ca);
            }
            c.args(["-q", "--endpoint-url", url, "--io-engine", io, "--fetch-engine", fetch])
                .args(o.anonymous.then_some("--no-sign-request"))
                .args(o.extra.split_whitespace())
                .args(flag)
                .arg("--stats-json")
                .arg(stats_path(dest))
                .args(["--workers", &o.workers, "--queue", &o.queue, "s3://bench"])
                .arg(dest);
        }
    }
    c
}

/// Peers that are installed, with their versions (recorded in the summary).
fn peer_versions() -> Vec<(String, String)> {
    [("aws", "aws --version 2>&1"), ("s5cmd", "s5cmd version 2>&1"), ("rclone", "rclone version 2>&1 | head -1")]
        .iter()
        .filter(|(tool, _)| !sh(&format!("command -v {tool}")).is_empty())
        .map(|(tool, v)| (tool.to_string(), sh(v)))
        .collect()
}

/// Where an s3uring run of the bench writes its `--stats-json` (beside DEST, not in it).
fn stats_path(dest: &Path) -> PathBuf {
    dest.with_extension("stats.json")
}

/// ttfb p50, ttfb p99, total p50, total p99 (µs) and files per submit from a stats file.
fn read_stats(dest: &Path) -> Option<[f64; 5]> {
    let text = std::fs::read_to_string(stats_path(dest)).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    let st = |stage: &str, p: &str| doc["stages"][stage][p].as_f64().unwrap_or(0.0);
    let fps = doc["writer"]["files_per_submit"].as_f64().unwrap_or(0.0);
    Some([st("ttfb", "p50_us"), st("ttfb", "p99_us"), st("total", "p50_us"), st("total", "p99_us"), fps])
}

fn count_files(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// Client CPU µs per object and peak RSS MiB from the `BENCHTIME` line of GNU time.
fn parse_time(stderr: &str, objects: u64) -> (f64, f64) {
    let Some(line) = stderr.lines().rev().find(|l| l.starts_with("BENCHTIME ")) else { return (0.0, 0.0) };
    let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    match f.as_slice() {
        [_, user, sys, rss_kb] => ((user + sys) * 1e6 / objects as f64, rss_kb / 1024.0),
        _ => (0.0, 0.0),
    }
}

fn main() {
    let mut o: Opts = common::opts();
    if o.engines.is_empty() {
        // The AWS CLI (~230 objects/s here) is opt-in: `--engines ...,aws`.
        o.engines = vec!["uring".into(), "threads".into(), "uring-sdk".into(), "bare-loop".into()];
        for (peer, _) in peer_versions() {
            match peer.as_str() {
                "s5cmd" => o.engines.push(peer),
                "rclone" => o.engines.extend(["rclone".to_owned(), "rclone-fast-list".to_owned()]),
                _ => {}
            }
        }
    }
    let bin = env!("CARGO_BIN_EXE_s3uring");
    let date = sh("date -u +%Y-%m-%d");
    let out = o.out.clone().unwrap_or_else(|| PathBuf::from(format!("bench-results/{date}-{}core-e2e", sh("nproc"))));
    std::fs::create_dir_all(&out).expect("create output dir");
    let pems = scratch(Path::new("target")).join("pem");
    std::fs::create_dir_all(&pems).expect("create a scratch dir");
    let mut servers: Vec<(String, Server)> =
        o.schemes.iter().map(|s| (s.clone(), start_server(bin, &o, s == "https", &pems))).collect();
    for (_, server) in &servers {
        eprintln!("endpoint {} · {} objects × {} bytes · results → {}", server.url, o.objects, o.size, out.display());
    }

    let runs = (o.repeat * o.engines.len() * o.schemes.len()) as u64;
    warm_tmpfs(&o.dests, o.objects * o.size.div_ceil(4096) * 4096 * if o.clean_each { 2 } else { runs });

    let mut rows = Vec::new();
    for rep in 0..o.repeat {
        for dest_base in &o.dests {
            let mut order: Vec<_> = o
                .engines
                .iter()
                .flat_map(|e| servers.iter().map(move |s| (e, s)))
                // A bare loop needs no endpoint: once per destination.
                .filter(|(e, (scheme, _))| *e != "bare-loop" || scheme == &o.schemes[0])
                .collect();
            // Each rep starts one run further on: no engine always runs first, or always
            // right after the same one (whose leftovers, a deleted tree or a busy page cache,
            // would then always fall on it).
            let shift = rep % order.len().max(1);
            order.rotate_left(shift);
            for (engine, (scheme, server)) in order {
                let engine = &if scheme == "http" { engine.clone() } else { format!("{engine}@{scheme}") };
                // A fresh directory per run, all removed at the end: deleting a tree between
                // runs makes ext4's inode allocator crawl over "recently deleted" inodes in
                // the next run, which would measure the previous run's cleanup.
                let dest = scratch(dest_base).join(format!("{rep}-{engine}"));
                let t = Instant::now();
                let (client_cpu_us, server_cpu_us, peak_rss_mib, stages) = if engine == "bare-loop" {
                    let cpu0 = self_cpu();
                    bare_loop(&dest, o.objects, o.size);
                    ((self_cpu() - cpu0) * 1e6 / o.objects as f64, 0.0, 0.0, None)
                } else {
                    let cpu0 = proc_cpu(server.child.id());
                    let base = engine.split('@').next().unwrap_or(engine);
                    let res = client_command(bin, base, server, &o, &dest).output().expect("run the client");
                    let server_cpu = proc_cpu(server.child.id()) - cpu0;
                    let stderr = String::from_utf8_lossy(&res.stderr);
                    assert!(res.status.success(), "{engine} failed: {stderr}");
                    let files = count_files(&dest);
                    assert_eq!(files, o.objects, "{engine} wrote {files} of {} files", o.objects);
                    let (cpu_us, rss) = parse_time(&stderr, o.objects);
                    (cpu_us, server_cpu * 1e6 / o.objects as f64, rss, read_stats(&dest))
                };
                let secs = t.elapsed().as_secs_f64();
                let row = Row {
                    rep,
                    dest: dest_base.display().to_string(),
                    engine: engine.clone(),
                    secs,
                    objects_per_sec: o.objects as f64 / secs,
                    client_cpu_us,
                    server_cpu_us,
                    peak_rss_mib,
                    stages,
                };
                eprintln!(
                    "rep {rep} {:<20} {:<16} {:>8.0} obj/s  client {:>5.0} µs/obj  server {:>5.0} µs/obj  rss {:>4.0} MiB",
                    row.dest, row.engine, row.objects_per_sec, row.client_cpu_us, row.server_cpu_us, row.peak_rss_mib
                );
                rows.push(row);
                if o.clean_each {
                    let _ = std::fs::remove_dir_all(&dest);
                }
            }
        }
    }
    for (_, server) in &mut servers {
        let _ = server.child.kill();
    }
    let _ = std::fs::remove_dir_all(scratch(Path::new("target")));
    for d in &o.dests {
        let _ = std::fs::remove_dir_all(scratch(d));
    }
    write_results(&out, &o, &rows, &date);
}

fn write_results(out: &Path, o: &Opts, rows: &[Row], date: &str) {
    let mut csv = String::from(
        "rep,dest,engine,seconds,objects_per_sec,client_cpu_us_per_obj,server_cpu_us_per_obj,peak_rss_mib,ttfb_p50_us,ttfb_p99_us,total_p50_us,total_p99_us,files_per_submit\n",
    );
    for r in rows {
        csv += &format!(
            "{},{},{},{:.3},{:.0},{:.1},{:.1},{:.1},{}\n",
            r.rep,
            r.dest,
            r.engine,
            r.secs,
            r.objects_per_sec,
            r.client_cpu_us,
            r.server_cpu_us,
            r.peak_rss_mib,
            r.stages.map_or(",,,,".to_owned(), |s| s.map(|v| format!("{v:.1}")).join(","))
        );
    }
    std::fs::write(out.join("raw.csv"), csv).expect("write raw.csv");

    let mut groups: BTreeMap<(String, String), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        groups.entry((r.dest.clone(), r.engine.clone())).or_default().push(r);
    }
    let fs_type = |d: &str| sh(&format!("findmnt -no FSTYPE -T {d} | head -1"));
    let more_flags = format!(
        " --schemes {}{}{}",
        o.schemes.join(","),
        if o.clean_each { " --clean-each" } else { "" },
        if o.pin { " --pin" } else { "" },
    ) + &o.baseline.as_ref().map_or(String::new(), |b| format!(" --baseline {}", b.display()));
    let mut md = format!(
        "# s3uring end to end: {} objects × {} bytes, {} ms GET latency, {} requests\n\n\
         - date: {date}\n- machine: {}\n- command: `cargo bench --bench e2e -- --objects {} --size {} --repeat {} --workers {} --queue {} --latency-ms {}{}{} --engines {} --dests {}{}`\n\
         - endpoint: `s3uring serve` in its own process on 127.0.0.1 (its CPU is the server column)\n\
         - clients run under GNU time (`/usr/bin/time`): client CPU = user + sys, RSS = max resident\n\
         - peers: {}\n\n",
        o.objects,
        o.size,
        o.latency_ms,
        if o.anonymous { "unsigned" } else { "signed" },
        common::machine(),
        o.objects,
        o.size,
        o.repeat,
        o.workers,
        o.queue,
        o.latency_ms,
        if o.anonymous { " --anonymous" } else { "" },
        if o.extra.is_empty() { String::new() } else { format!(" --extra \"{}\"", o.extra) },
        o.engines.join(","),
        o.dests.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(","),
        more_flags,
        peer_versions().iter().map(|(t, v)| format!("{t} ({v})")).collect::<Vec<_>>().join(", ")
    );
    let mut table = Table::new(&[
        "dest (fs)",
        "engine",
        "runs",
        "median objects/s",
        "median MiB/s",
        "median client CPU µs/obj",
        "median server CPU µs/obj",
        "median peak RSS MiB",
        "objects/s vs threads",
        "vs bare-loop",
        "vs best peer",
        "client CPU vs HTTP",
    ]);
    for ((dest, engine), rs) in &groups {
        let ops = median(rs.iter().map(|r| r.objects_per_sec).collect());
        let median_of = |engine: &str| {
            groups
                .get(&(dest.clone(), engine.to_owned()))
                .map(|b| median(b.iter().map(|r| r.objects_per_sec).collect()))
        };
        // Peers over the same scheme as this row.
        let scheme = engine.find('@').map_or("", |i| &engine[i..]);
        let best_peer = ["aws", "s5cmd", "rclone", "rclone-fast-list"]
            .iter()
            .filter_map(|p| median_of(&format!("{p}{scheme}")))
            .fold(None, |best: Option<f64>, v| Some(best.map_or(v, |b| b.max(v))));
        // Over HTTPS: client CPU per object against the same engine over HTTP.
        let cpu_of = |engine: &str| {
            groups.get(&(dest.clone(), engine.to_owned())).map(|b| median(b.iter().map(|r| r.client_cpu_us).collect()))
        };
        let base = engine.split('@').next().unwrap_or(engine);
        let cpu_vs_http = match (scheme.is_empty(), cpu_of(engine), cpu_of(base)) {
            (false, Some(tls), Some(plain)) if plain > 0.0 => format!("{:.2}×", tls / plain),
            _ => "-".to_owned(),
        };
        let ratio = |base: Option<f64>| base.map_or("-".to_owned(), |b| format!("{:.2}×", ops / b.max(1.0)));
        table.row(&[
            format!("{dest} ({})", fs_type(dest)),
            engine.clone(),
            rs.len().to_string(),
            format!("{ops:.0}"),
            format!("{:.1}", ops * o.size as f64 / (1 << 20) as f64),
            format!("{:.0}", median(rs.iter().map(|r| r.client_cpu_us).collect())),
            format!("{:.0}", median(rs.iter().map(|r| r.server_cpu_us).collect())),
            format!("{:.0}", median(rs.iter().map(|r| r.peak_rss_mib).collect())),
            ratio(median_of(&format!("threads{scheme}"))),
            ratio(median_of("bare-loop")),
            ratio(best_peer),
            cpu_vs_http,
        ]);
    }
    md += &table.to_string();
    md += "\ns3uring's own stage percentiles (median over runs of each percentile, from `--stats-json`):\n\n";
    let mut table =
        Table::new(&["dest", "engine", "ttfb p50", "ttfb p99", "total p50", "total p99", "files per submit"]);
    for ((dest, engine), rs) in &groups {
        let st: Vec<[f64; 5]> = rs.iter().filter_map(|r| r.stages).collect();
        if st.is_empty() {
            continue;
        }
        let m = |i: usize| median(st.iter().map(|s| s[i]).collect());
        let ms = |us: f64| format!("{:.1} ms", us / 1000.0);
        let fps = if m(4) > 0.0 { format!("{:.1}", m(4)) } else { "-".to_owned() };
        table.row(&[dest.clone(), engine.clone(), ms(m(0)), ms(m(1)), ms(m(2)), ms(m(3)), fps]);
    }
    md += &table.to_string();
    md += &format!("\nLoad average at the end: {}\n", sh("cat /proc/loadavg"));
    std::fs::write(out.join("summary.md"), &md).expect("write summary.md");
    println!("{md}");
}
