//! Request-rate limits: s3uring and the peers against `s3uring serve` limiting GETs to L per
//! second (a token bucket holding 0.1 s of L, `503 SlowDown` above it, as S3 answers), and
//! the two-prefix case (one prefix limited, one not).
//!
//! ```text
//! cargo bench --bench throttle -- [--limits 1500,5500] [--objects 20000] [--latency-ms 10]
//!     [--repeat 3] [--engines s3uring,rclone,s5cmd] [--dest /dev/shm] [--out DIR]
//!     [--sections limits,two,change]
//! ```
//!
//! Every run gets a fresh endpoint, so its counts are the run's own: objects/s (files over
//! the client's wall time), GETs sent and answered 503 (the endpoint's count), failed keys
//! (objects not on disk), the exit code, and the steady goodput: GETs served per second from
//! the third second to the last whole one. The two-prefix case: `p0000/` limited to 1,000
//! GET/s and `p0001/` unlimited, 10,000 objects each; each prefix's rate is its objects over
//! the time between its first and last GET at the endpoint, and the unlimited prefix is
//! also copied alone (same endpoint settings) for the comparison. A limit that changes
//! mid-run (`change`): 1,500 GET/s that doubles to 3,000 (S3 splitting a partition), or is
//! lifted, 5 s after the first GET, with 3 × `--objects` objects; the served GETs per second
//! tell how soon the rate follows.
//!
//! Faults that are not limits (`faults`): each client, each rep, against no fault, 503s at
//! random (1 %, 5 %), strict buckets of each `--depths` at each limit, a cap on GETs in flight
//! (`--caps`), and combinations (random 503s or a cap on top of a limit); every row's
//! objects/s is also given as a share of s3uring's fault-free objects/s of the same rep.

#[path = "common.rs"]
mod common;

use common::{Server, Table, median, sh};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Request-rate limits: s3uring and the peers against an endpoint limiting GETs.
#[derive(clap::Parser)]
struct Opts {
    /// Limits to run at (GET/s).
    #[arg(long, value_delimiter = ',', default_values_t = [1500, 5500])]
    limits: Vec<u64>,
    #[arg(long, default_value_t = 20_000)]
    objects: u64,
    #[arg(long, default_value_t = 10)]
    latency_ms: u64,
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Clients (peers not installed are left out).
    #[arg(long, value_delimiter = ',', default_values = ["s3uring", "rclone", "s5cmd"])]
    engines: Vec<String>,
    #[arg(long, default_value = "/dev/shm")]
    dest: PathBuf,
    /// Directory for summary.md and raw.csv.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_values = ["limits", "two", "change", "faults"])]
    sections: Vec<String>,
    /// Bucket depths (ms of the limit) for the `faults` section.
    #[arg(long, value_delimiter = ',', default_values_t = [20, 100, 1000])]
    depths: Vec<u64>,
    /// Caps on GETs in flight for the `faults` section.
    #[arg(long, value_delimiter = ',', default_values_t = [128])]
    caps: Vec<u64>,
}

/// One rate-limit rule's line: (prefix, served, throttled, first_s, last_s, per second).
fn rules(lines: &[String]) -> Vec<(String, u64, u64, f64, f64, Vec<u64>)> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("rate limit '")?;
            let (prefix, rest) = rest.split_once("': ")?;
            let num = |s: &str| s.split_whitespace().next().and_then(|n| n.parse::<f64>().ok());
            let served = num(rest)? as u64;
            let throttled = num(rest.split_once("GETs served, ")?.1)? as u64;
            let from = rest.split_once("served from ")?.1;
            let first = num(from)?;
            let last = num(from.split_once(" to ")?.1)?;
            let per: Vec<u64> =
                rest.split_once("per second: ")?.1.split_whitespace().filter_map(|n| n.parse().ok()).collect();
            Some((prefix.to_owned(), served, throttled, first, last, per))
        })
        .collect()
}

/// `s3uring serve` flags for `--objects` objects of 4 KiB answered after `--latency-ms`, then
/// `extra`.
fn serve_args(o: &Opts, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> =
        ["--objects", &o.objects.to_string(), "--size", "4096", "--latency-ms"].iter().map(|s| s.to_string()).collect();
    args.push(o.latency_ms.to_string());
    args.extend_from_slice(extra);
    args
}

fn count_files(dir: &Path) -> u64 {
    sh(&format!("find '{}' -type f | wc -l", dir.display())).parse().unwrap_or(0)
}

/// Runs one client into `dest`: (wall seconds, exit code).
fn client(bin: &str, engine: &str, url: &str, source: &str, dest: &Path) -> (f64, i32) {
    let mut c = Command::new(match engine {
        "s3uring" => bin,
        other => other,
    });
    common::direct(&mut c);
    c.env_remove("AWS_CA_BUNDLE")
        .env("AWS_ACCESS_KEY_ID", "s3uring")
        .env("AWS_SECRET_ACCESS_KEY", "s3uring-demo-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match engine {
        "s5cmd" => {
            c.args(["--endpoint-url", url, "cp"]).arg(format!("{source}*")).arg(format!("{}/", dest.display()));
        }
        "rclone" => {
            c.env("RCLONE_CONFIG_BENCH_TYPE", "s3")
                .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
                .env("RCLONE_CONFIG_BENCH_LIST_VERSION", "2")
                .env("RCLONE_CONFIG_BENCH_ENDPOINT", url)
                .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", "s3uring")
                .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", "s3uring-demo-secret")
                .args(["copy", &source.replace("s3://", "bench:")])
                .arg(dest)
                .args(["--transfers", "64", "--checkers", "64"]);
        }
        _ => {
            c.args(["-q", "--endpoint-url", url, source]).arg(dest);
        }
    }
    let t = Instant::now();
    let status = c.status().expect("run the client");
    (t.elapsed().as_secs_f64(), status.code().unwrap_or(-1))
}

fn main() {
    let o: Opts = common::opts();
    // The binary cargo built for this bench (a nested `cargo build --release` would
    // resolve features without the dev-dependencies and rebuild half the tree).
    let bin = env!("CARGO_BIN_EXE_s3uring");
    let engines: Vec<String> =
        o.engines.iter().filter(|e| *e == "s3uring" || !sh(&format!("command -v {e}")).is_empty()).cloned().collect();
    let scratch = o.dest.join(format!("s3uring-throttle-bench-{}", std::process::id()));
    let mut report = String::new();
    let mut raw = String::from("limit,engine,rep,secs,objects_per_s,steady,gets,throttled,failed,exit\n");
    let limits = if o.sections.iter().any(|s| s == "limits") { o.limits.clone() } else { Vec::new() };
    let mut table = Table::new(&[
        "L (GET/s)",
        "client",
        "objects/s",
        "% of L",
        "steady GET/s (% of L)",
        "GETs sent",
        "503s (%)",
        "failed keys",
        "exit",
    ]);
    for &limit in &limits {
        let mut rows: Vec<(String, Vec<[f64; 7]>)> = engines.iter().map(|e| (e.clone(), Vec::new())).collect();
        for rep in 0..o.repeat {
            for (engine, runs) in rows.iter_mut() {
                let server = Server::start(bin, &serve_args(&o, &["--rate-limit".into(), limit.to_string()]));
                let dest = scratch.join(format!("{limit}-{engine}-{rep}"));
                let (secs, exit) = client(bin, engine, &server.url, "s3://bench/", &dest);
                let lines = server.stop();
                let files = count_files(&dest);
                let (_, served, throttled, _, _, per) = rules(&lines).into_iter().next().unwrap_or_default();
                let whole = per.len().saturating_sub(1);
                let steady =
                    if whole > 2 { per[2..whole].iter().sum::<u64>() as f64 / (whole - 2) as f64 } else { 0.0 };
                let failed = o.objects.saturating_sub(files);
                let row = [
                    files as f64 / secs,
                    steady,
                    (served + throttled) as f64,
                    throttled as f64,
                    failed as f64,
                    exit as f64,
                    secs,
                ];
                eprintln!("L={limit} {engine} rep {rep}: {row:?}");
                raw.push_str(&format!(
                    "{limit},{engine},{rep},{secs:.3},{:.0},{steady:.0},{},{throttled},{failed},{exit}\n",
                    row[0],
                    served + throttled
                ));
                runs.push(row);
            }
        }
        for (engine, runs) in &rows {
            let m = |i: usize| median(runs.iter().map(|r| r[i]).collect());
            let (ops, steady, gets, thr) = (m(0), m(1), m(2), m(3));
            let failed = runs.iter().map(|r| r[4]).fold(0.0, f64::max);
            let exits: Vec<String> = runs.iter().map(|r| format!("{}", r[5])).collect();
            table.row(&[
                limit.to_string(),
                engine.clone(),
                format!("{ops:.0}"),
                format!("{:.1} %", 100.0 * ops / limit as f64),
                format!("{steady:.0} ({:.1} %)", 100.0 * steady / limit as f64),
                format!("{gets:.0}"),
                format!("{thr:.0} ({:.1} %)", 100.0 * thr / gets.max(1.0)),
                format!("{failed:.0} (worst)"),
                exits.join(","),
            ]);
        }
    }
    if !limits.is_empty() {
        report.push_str(&table.to_string());
    }
    // Two prefixes: p0000/ limited to 1,000 GET/s, p0001/ unlimited (only counted).
    let two = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["--objects", &(o.objects).to_string(), "--size", "4096", "--prefixes", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--latency-ms".to_owned(), o.latency_ms.to_string()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let two_reps = if o.sections.iter().any(|s| s == "two") { o.repeat } else { 0 };
    let mut table =
        Table::new(&["run", "p0000/ GET/s (limited)", "p0001/ GET/s", "p0001/ alone GET/s", "ratio", "503s", "exit"]);
    for rep in 0..two_reps {
        let server =
            Server::start(bin, &two(&["--rate-limit-prefix", "p0000/=1000", "--rate-limit-prefix", "p0001/=0"]));
        let dest = scratch.join(format!("two-{rep}"));
        let (_, exit) = client(bin, "s3uring", &server.url, "s3://bench/", &dest);
        let r = rules(&server.stop());
        let rate =
            |p: &str| r.iter().find(|x| x.0 == p).map_or((0.0, 0), |x| (x.1 as f64 / (x.4 - x.3).max(1e-3), x.2));
        let ((hot, thr), (cold, _)) = (rate("p0000/"), rate("p0001/"));
        let server = Server::start(bin, &two(&["--rate-limit-prefix", "p0001/=0"]));
        let (_, alone_exit) =
            client(bin, "s3uring", &server.url, "s3://bench/p0001/", &scratch.join(format!("alone-{rep}")));
        let r = rules(&server.stop());
        let alone = r.iter().find(|x| x.0 == "p0001/").map_or(0.0, |x| x.1 as f64 / (x.4 - x.3).max(1e-3));
        eprintln!("two prefixes rep {rep}: hot {hot:.0} cold {cold:.0} alone {alone:.0} ({alone_exit})");
        table.row(&[
            rep.to_string(),
            format!("{hot:.0} ({:.1} % of 1,000)", hot / 10.0),
            format!("{cold:.0}"),
            format!("{alone:.0}"),
            format!("{:.2}", cold / alone.max(1.0)),
            thr.to_string(),
            exit.to_string(),
        ]);
    }
    if two_reps > 0 {
        report.push_str("\nTwo prefixes (`p0000/` limited to 1,000 GET/s, `p0001/` unlimited), s3uring:\n\n");
        report.push_str(&table.to_string());
    }
    if o.sections.iter().any(|s| s == "change") {
        change(&o, bin, &scratch, &mut report);
    }
    let faults_csv = if o.sections.iter().any(|s| s == "faults") {
        faults(&o, bin, &engines, &scratch, &mut report)
    } else {
        String::new()
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let versions: Vec<String> = engines
        .iter()
        .filter(|e| *e != "s3uring")
        .map(|e| format!("{e}: {}", sh(&format!("{e} version 2>&1 | head -1"))))
        .collect();
    let machine = format!(
        "{}, dest {} ({})",
        common::machine(),
        o.dest.display(),
        sh(&format!("stat -f -c %T '{}'", o.dest.display()))
    );
    let text = format!(
        "# Request-rate limits\n\n`cargo bench --bench throttle -- {}`\n\n{} · {} objects × 4 KiB, {} ms latency, medians of {}; {}\n\n{report}",
        common::command_line(),
        machine,
        o.objects,
        o.latency_ms,
        o.repeat,
        versions.join(", ")
    );
    println!("{text}");
    if let Some(out) = &o.out {
        std::fs::create_dir_all(out).expect("create --out");
        std::fs::write(out.join("summary.md"), &text).expect("write summary.md");
        std::fs::write(out.join("raw.csv"), raw).expect("write raw.csv");
        if !faults_csv.is_empty() {
            std::fs::write(out.join("faults.csv"), faults_csv).expect("write faults.csv");
        }
    }
}

/// A limit of 1,500 GET/s that doubles, or is lifted, 5 s after the first GET: how soon the
/// served rate follows (s3uring).
fn change(o: &Opts, bin: &str, scratch: &Path, report: &mut String) {
    const BEFORE: u64 = 1500;
    const AT_S: usize = 5;
    report.push_str(&format!(
        "\nA limit of {BEFORE} GET/s that changes {AT_S} s after the first GET ({} objects), s3uring: served GETs \
         per second, and the first second after the change that reached 90 % of the new limit (doubled) or of \
         the best second after the change (lifted):\n\n",
        3 * o.objects
    ));
    let mut table = Table::new(&["run", "change", "served GET/s, per second", "seconds to follow", "503s", "exit"]);
    for rep in 0..o.repeat {
        for (label, after) in [("doubles", 2 * BEFORE), ("lifted", 0)] {
            let args: Vec<String> = [
                "--objects".to_owned(),
                (3 * o.objects).to_string(),
                "--size".into(),
                "4096".into(),
                "--latency-ms".into(),
                o.latency_ms.to_string(),
                "--rate-limit".into(),
                BEFORE.to_string(),
                "--rate-limit-after".into(),
                format!("{AT_S}={after}"),
            ]
            .into();
            let server = Server::start(bin, &args);
            let dest = scratch.join(format!("change-{label}-{rep}"));
            let (_, exit) = client(bin, "s3uring", &server.url, "s3://bench/", &dest);
            let r = rules(&server.stop());
            let (_, _, throttled, _, _, per) = r.into_iter().next().unwrap_or_default();
            // Whole seconds after the change (the last one is partial).
            let after_change = per.get(AT_S..per.len().saturating_sub(1)).unwrap_or_default();
            let goal = if after > 0 {
                0.9 * after as f64
            } else {
                0.9 * after_change.iter().copied().max().unwrap_or(0) as f64
            };
            let follow = after_change
                .iter()
                .position(|&n| n as f64 >= goal && n > 0)
                .map_or("not within the run".to_owned(), |i| format!("{}", i + 1));
            let series: Vec<String> = per.iter().map(u64::to_string).collect();
            eprintln!("change {label} rep {rep}: {series:?} follow {follow}");
            table.row(&[
                rep.to_string(),
                format!("{BEFORE} → {}", if after > 0 { after.to_string() } else { "unlimited".into() }),
                series.join(" "),
                follow,
                throttled.to_string(),
                exit.to_string(),
            ]);
        }
    }
    report.push_str(&table.to_string());
}

/// One store behaviour of the `faults` section: its name, the endpoint's flags, and the rate
/// it allows (GET/s), if it limits one.
struct Behaviour {
    name: String,
    args: Vec<String>,
    allows: Option<f64>,
}

fn behaviours(o: &Opts) -> Vec<Behaviour> {
    let b = |name: String, args: &[String], allows: Option<f64>| Behaviour { name, args: args.to_vec(), allows };
    let mut all = vec![b("none".into(), &[], None)];
    for p in [0.01, 0.05] {
        all.push(b(format!("random {} %", p * 100.0), &["--fail-slowdown".into(), p.to_string()], None));
    }
    for &limit in &o.limits {
        for &depth in &o.depths {
            let args = ["--rate-limit".into(), limit.to_string(), "--rate-limit-burst-ms".into(), depth.to_string()];
            all.push(b(format!("L {limit}, depth {depth} ms"), &args, Some(limit as f64)));
        }
    }
    for &cap in &o.caps {
        let allows = cap as f64 * 1000.0 / o.latency_ms.max(1) as f64;
        all.push(b(format!("cap {cap} in flight"), &["--max-inflight".into(), cap.to_string()], Some(allows)));
    }
    if let Some(&limit) = o.limits.last() {
        let rate = ["--rate-limit".to_owned(), limit.to_string()];
        let noisy = [&rate[..], &["--fail-slowdown".into(), "0.01".into()]].concat();
        all.push(b(format!("L {limit} + random 1 %"), &noisy, Some(limit as f64)));
        if let Some(&cap) = o.caps.first() {
            let capped = [&rate[..], &["--max-inflight".into(), cap.to_string()]].concat();
            let allows = (limit as f64).min(cap as f64 * 1000.0 / o.latency_ms.max(1) as f64);
            all.push(b(format!("L {limit} + cap {cap}"), &capped, Some(allows)));
        }
    }
    all
}

/// The endpoint's count of GETs and of those answered 503 for any reason (injected, over a
/// rate limit, over the in-flight cap), from what `s3uring serve` prints when stopped.
fn answered_503(lines: &[String]) -> (u64, u64) {
    let num = |s: &str| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    let mut gets = 0;
    let mut refused = 0;
    for l in lines {
        if let Some(rest) = l.strip_prefix("served ") {
            gets = num(rest);
            refused += rest.split_once("injected: ").map_or(0, |(_, r)| num(r));
        } else if let Some((_, rest)) = l.split_once("GETs served, ") {
            refused += num(rest);
        }
    }
    (gets, refused)
}

/// Faults that are not limits: each client against each store behaviour; the raw rows as CSV.
fn faults(o: &Opts, bin: &str, engines: &[String], scratch: &Path, report: &mut String) -> String {
    let all = behaviours(o);
    let mut raw = String::from("behaviour,engine,rep,secs,objects_per_s,of_fault_free,gets,answered_503,failed,exit\n");
    // [behaviour][engine] → runs of [objects/s, share of fault-free, GETs, 503s, failed, exit].
    let mut runs = vec![vec![Vec::<[f64; 6]>::new(); engines.len()]; all.len()];
    for rep in 0..o.repeat {
        let mut fault_free = 0.0;
        for (bi, b) in all.iter().enumerate() {
            for (ei, engine) in engines.iter().enumerate() {
                let server = Server::start(bin, &serve_args(o, &b.args));
                let dest = scratch.join(format!("faults-{bi}-{engine}-{rep}"));
                let (secs, exit) = client(bin, engine, &server.url, "s3://bench/", &dest);
                let (gets, refused) = answered_503(&server.stop());
                let files = count_files(&dest);
                let ops = files as f64 / secs;
                if bi == 0 && engine == "s3uring" {
                    fault_free = ops;
                }
                let failed = o.objects.saturating_sub(files);
                let row = [ops, ops / fault_free.max(1.0), gets as f64, refused as f64, failed as f64, exit as f64];
                eprintln!("faults: {} {engine} rep {rep}: {row:?}", b.name);
                raw.push_str(&format!(
                    "{},{engine},{rep},{secs:.3},{ops:.0},{:.3},{gets},{refused},{failed},{exit}\n",
                    b.name, row[1]
                ));
                runs[bi][ei].push(row);
            }
        }
    }
    let mut table = Table::new(&[
        "store behaviour",
        "client",
        "objects/s",
        "÷ s3uring fault-free",
        "% of what it allows",
        "503s (% of GETs)",
        "failed keys",
        "exit",
    ]);
    for (b, per_engine) in all.iter().zip(&runs) {
        for (engine, rows) in engines.iter().zip(per_engine) {
            let m = |i: usize| median(rows.iter().map(|r| r[i]).collect());
            let allowed = b.allows.map_or("".to_owned(), |a| format!("{:.1} %", 100.0 * m(0) / a));
            let exits: Vec<String> = rows.iter().map(|r| format!("{}", r[5])).collect();
            table.row(&[
                b.name.clone(),
                engine.clone(),
                format!("{:.0}", m(0)),
                format!("{:.2}", m(1)),
                allowed,
                format!("{:.1} %", 100.0 * m(3) / m(2).max(1.0)),
                format!("{:.0} (worst)", rows.iter().map(|r| r[4]).fold(0.0, f64::max)),
                exits.join(","),
            ]);
        }
    }
    report.push_str(&format!(
        "\nFaults that are not limits ({} objects, medians of {}; 503s counted by the endpoint):\n\n",
        o.objects, o.repeat
    ));
    report.push_str(&table.to_string());
    raw
}
