//! Reliability proof run: the real binary restores generated objects from
//! `s3uring serve` with faults injected, and every file is then checked against the content
//! the endpoint generates for its key. Per scenario: what was injected, what the client did
//! about it (retries, throttling, hedges, verification), files lost, files corrupted, and the
//! cost (time, CPU per object). Also: kill -9 mid-run and re-run, the resume check over a
//! complete tree, and the cost of `--verify` and `--fsync`.
//!
//! ```text
//! cargo bench --bench reliability -- [--objects 10000] [--size 4096] [--dest /dev/shm]
//!     [--out bench-results/DATE-2core-reliability]
//! ```
//!
//! Writes `raw.csv` and `summary.md`.

#[path = "common.rs"]
mod common;

use common::{Server, Table, sh};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use s3uring::endpoint::{generated_content, generated_key};

/// Fault injection, kills and re-runs through `s3uring serve`.
#[derive(clap::Parser)]
struct Opts {
    #[arg(long, default_value_t = 10_000)]
    objects: u64,
    #[arg(long, default_value_t = 4096)]
    size: u64,
    #[arg(long, default_value = "/dev/shm")]
    dest: PathBuf,
    /// Directory for the results.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `s3uring serve` with the run's objects and `faults` (bucket `bench`).
fn serve(o: &Opts, faults: &[&str]) -> Server {
    let mut args: Vec<String> =
        ["--prefixes", "100", "--objects", &o.objects.to_string(), "--size", &o.size.to_string()]
            .iter()
            .map(|a| a.to_string())
            .collect();
    args.extend(faults.iter().map(|f| f.to_string()));
    Server::start(env!("CARGO_BIN_EXE_s3uring"), &args)
}

/// Stops the server (SIGINT) and returns its "served … injected …" line.
fn served_line(server: Server) -> String {
    server.stop().into_iter().find(|l| l.starts_with("served ")).unwrap_or_default()
}

fn client(url: &str, dest: &Path, stats: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_s3uring"));
    common::direct(&mut c);
    c.env("AWS_ACCESS_KEY_ID", "s3uring")
        .env("AWS_SECRET_ACCESS_KEY", "s3uring-demo-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["-q", "--endpoint-url", url, "--stats-json"])
        .arg(stats)
        .args(extra)
        .arg("s3://bench")
        .arg(dest);
    c
}

/// Files missing and files whose content is not the object's.
fn check_tree(o: &Opts, dest: &Path) -> (u64, u64, u64) {
    let (mut lost, mut corrupted) = (0, 0);
    for i in 0..o.objects {
        let key = generated_key(i, 100);
        match std::fs::read(dest.join(&key)) {
            Ok(data) if data == generated_content(&key, o.size) => {}
            Ok(_) => corrupted += 1,
            Err(_) => lost += 1,
        }
    }
    let temporaries = sh(&format!("find {} -name '.s3uring-tmp.*' | wc -l", dest.display())).parse().unwrap_or(0);
    (lost, corrupted, temporaries)
}

#[derive(Default, Clone)]
struct Row {
    scenario: String,
    injected: String,
    exit: i32,
    secs: f64,
    objects_per_sec: f64,
    cpu_us: f64,
    written: u64,
    skipped: u64,
    failed: u64,
    retries: u64,
    throttled: u64,
    min_in_flight: u64,
    hedged: u64,
    verified: u64,
    mismatches: u64,
    total_p99_ms: f64,
    lost: u64,
    corrupted: u64,
    temporaries: u64,
}

fn row_from(scenario: &str, exit: i32, secs: f64, stats: &Path) -> Row {
    let doc: serde_json::Value =
        std::fs::read_to_string(stats).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Row {
        scenario: scenario.to_owned(),
        exit,
        secs,
        objects_per_sec: doc["throughput"]["objects_per_s"].as_f64().unwrap_or(0.0),
        // Per listed key, so a run that skips everything shows what the check costs.
        cpu_us: (doc["cpu"]["user_s"].as_f64().unwrap_or(0.0) + doc["cpu"]["sys_s"].as_f64().unwrap_or(0.0)) * 1e6
            / (u(&doc["counters"]["listed"]).max(1) as f64),
        written: u(&doc["counters"]["written"]),
        skipped: u(&doc["counters"]["skipped"]),
        failed: u(&doc["counters"]["failed"]),
        retries: u(&doc["fetch"]["retries"]),
        throttled: u(&doc["fetch"]["throttled"]),
        min_in_flight: u(&doc["fetch"]["min_in_flight"]),
        hedged: u(&doc["fetch"]["hedged"]),
        verified: u(&doc["verify"]["by_checksum"]) + u(&doc["verify"]["by_etag_md5"]),
        mismatches: u(&doc["verify"]["mismatches"]),
        total_p99_ms: doc["stages"]["total"]["p99_us"].as_f64().unwrap_or(0.0) / 1000.0,
        ..Row::default()
    }
}

fn main() {
    let o: Opts = common::opts();
    let date = sh("date -u +%Y-%m-%d");
    let out =
        o.out.clone().unwrap_or_else(|| PathBuf::from(format!("bench-results/{date}-{}core-reliability", sh("nproc"))));
    std::fs::create_dir_all(&out).expect("output dir");
    let base = o.dest.join(format!("s3uring-reliability-{}", std::process::id()));
    let mut rows: Vec<Row> = Vec::new();
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        let d = base.join(format!("run{n}"));
        let _ = std::fs::remove_dir_all(&d);
        (d.clone(), base.join(format!("run{n}.json")))
    };
    std::fs::create_dir_all(&base).expect("scratch");

    // (name, server fault flags, client flags)
    let scenarios: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        ("no faults", vec![], vec![]),
        ("no faults, --verify", vec![], vec!["--verify"]),
        ("no faults, --fsync", vec![], vec!["--fsync"]),
        (
            "5% SlowDown + 1% resets + 1% truncated bodies",
            vec!["--fail-slowdown", "0.05", "--fail-reset", "0.01", "--fail-truncate", "0.01"],
            vec![],
        ),
        ("2% InternalError", vec!["--fail-internal", "0.02"], vec![]),
        ("2% corrupted bodies, without --verify (control)", vec!["--fail-corrupt", "0.02"], vec![]),
        ("2% corrupted bodies, --verify", vec!["--fail-corrupt", "0.02"], vec!["--verify"]),
        (
            "1% first bytes 3 s late, no hedging",
            vec!["--slow", "0.01", "--slow-ms", "3000"],
            vec!["--hedge-after", "0"],
        ),
        ("1% first bytes 3 s late, --hedge-after 2000 (default)", vec!["--slow", "0.01", "--slow-ms", "3000"], vec![]),
        (
            "1% first bytes 3 s late, --hedge-after 300",
            vec!["--slow", "0.01", "--slow-ms", "3000"],
            vec!["--hedge-after", "300"],
        ),
    ];
    for (name, faults, flags) in &scenarios {
        let server = serve(&o, faults);
        let (dest, stats) = fresh();
        let t = Instant::now();
        let status = client(&server.url, &dest, &stats, flags).status().expect("run client");
        let mut row = row_from(name, status.code().unwrap_or(-1), t.elapsed().as_secs_f64(), &stats);
        row.injected = served_line(server);
        (row.lost, row.corrupted, row.temporaries) = check_tree(&o, &dest);
        eprintln!("{name}: exit {} lost {} corrupted {} {}", row.exit, row.lost, row.corrupted, row.injected);
        rows.push(row);
        let _ = std::fs::remove_dir_all(&dest);
    }

    // kill -9 mid-run, then the same command again; then once more over the complete tree.
    // 50 ms per GET: a ~1 s run at 512 workers, so both kill points land mid-run.
    let server = serve(&o, &["--latency-ms", "50"]);
    for kill_ms in [250u64, 600] {
        let (dest, stats) = fresh();
        let mut child = client(&server.url, &dest, &stats, &[]).spawn().expect("run client");
        std::thread::sleep(Duration::from_millis(kill_ms));
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
        let (lost_after_kill, corrupted_after_kill, temps_after_kill) = check_tree(&o, &dest);
        let t = Instant::now();
        let status = client(&server.url, &dest, &stats, &[]).status().expect("re-run");
        let mut row = row_from(
            &format!(
                "kill -9 after {kill_ms} ms ({} complete, {corrupted_after_kill} corrupt, {temps_after_kill} temporaries), then re-run",
                o.objects - lost_after_kill - corrupted_after_kill
            ),
            status.code().unwrap_or(-1),
            t.elapsed().as_secs_f64(),
            &stats,
        );
        (row.lost, row.corrupted, row.temporaries) = check_tree(&o, &dest);
        row.injected = format!("SIGKILL; re-run fetched {} (missing were {lost_after_kill})", row.written);
        rows.push(row);
        // The resume check alone: the tree is complete now.
        let t = Instant::now();
        let status = client(&server.url, &dest, &stats, &[]).status().expect("re-run");
        let mut row = row_from(
            "re-run over the complete tree (resume check)",
            status.code().unwrap_or(-1),
            t.elapsed().as_secs_f64(),
            &stats,
        );
        (row.lost, row.corrupted, row.temporaries) = check_tree(&o, &dest);
        row.injected = "none".to_owned();
        rows.push(row);
        let _ = std::fs::remove_dir_all(&dest);
    }
    let _ = server.stop();
    let _ = std::fs::remove_dir_all(&base);
    write_results(&out, &o, &rows, &date);
}

fn write_results(out: &Path, o: &Opts, rows: &[Row], date: &str) {
    let mut csv = String::from(
        "scenario,injected,exit,seconds,objects_per_s,cpu_us_per_obj,written,skipped,failed,retries,throttled,min_in_flight,hedged,verified,mismatches,total_p99_ms,lost,corrupted,temporaries\n",
    );
    let mut table = Table::new(&[
        "scenario",
        "injected (server's count)",
        "exit",
        "s",
        "objects/s",
        "CPU µs/key",
        "written",
        "skipped",
        "failed",
        "retries (throttled)",
        "lowest in flight",
        "hedged",
        "verified (mismatches)",
        "total p99 ms",
        "lost",
        "corrupted",
        "temporaries left",
    ]);
    for r in rows {
        csv += &format!(
            "\"{}\",\"{}\",{},{:.3},{:.0},{:.1},{},{},{},{},{},{},{},{},{},{:.1},{},{},{}\n",
            r.scenario,
            r.injected,
            r.exit,
            r.secs,
            r.objects_per_sec,
            r.cpu_us,
            r.written,
            r.skipped,
            r.failed,
            r.retries,
            r.throttled,
            r.min_in_flight,
            r.hedged,
            r.verified,
            r.mismatches,
            r.total_p99_ms,
            r.lost,
            r.corrupted,
            r.temporaries
        );
        let injected = r.injected.split("injected: ").last().unwrap_or(&r.injected);
        table.row(&[
            r.scenario.to_string(),
            injected.to_owned(),
            r.exit.to_string(),
            format!("{:.2}", r.secs),
            format!("{:.0}", r.objects_per_sec),
            format!("{:.0}", r.cpu_us),
            r.written.to_string(),
            r.skipped.to_string(),
            r.failed.to_string(),
            format!("{} ({})", r.retries, r.throttled),
            r.min_in_flight.to_string(),
            r.hedged.to_string(),
            format!("{} ({})", r.verified, r.mismatches),
            format!("{:.0}", r.total_p99_ms),
            r.lost.to_string(),
            r.corrupted.to_string(),
            r.temporaries.to_string(),
        ]);
    }
    let md = format!(
        "# Reliability: {} objects × {} bytes, faults injected by `s3uring serve`\n\n\
         - date: {date}; machine: {}, DEST {} ({})\n\
         - command: `cargo bench --bench reliability -- {}`\n\
         - every file is compared with the content the endpoint generates for its key after each run\n\n{table}",
        o.objects,
        o.size,
        common::machine(),
        o.dest.display(),
        sh(&format!("findmnt -no FSTYPE -T {} | head -1", o.dest.display())),
        common::command_line(),
    );
    std::fs::write(out.join("raw.csv"), csv).expect("raw.csv");
    std::fs::write(out.join("summary.md"), &md).expect("summary.md");
    println!("{md}");
}
