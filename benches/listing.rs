//! Listing alone: sequential (`--list-workers 1`) against parallel listing of 1,000,000 keys
//! from `s3uring serve` answering each list page after 30 ms (S3's 30–100 ms), in three
//! layouts: `flat` (obj00000042), `nested` (d04/e21/obj00004213) and `per-directory`
//! (9e3779b97f4a7c15/data.bin, one object per "directory").
//!
//! ```text
//! cargo bench --bench listing -- [--keys 1000000] [--list-latency-ms 30]
//!     [--layouts flat,nested,per-directory] [--workers 32] [--repeat 1] [--out DIR]
//! ```
//!
//! Each run is a `--dry-run` (list, select, map keys to paths; no GET, no write) with its
//! stdout thrown away: wall time, list requests (the `list` stage count of `--stats-json`),
//! keys, and the client's peak RSS.

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Server, Table, median, sh};

/// Listing flat, nested and one-per-directory layouts, sequential and parallel.
#[derive(clap::Parser)]
struct Opts {
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    #[arg(long, default_value = "30")]
    list_latency_ms: String,
    /// `--list-workers` of the parallel runs.
    #[arg(long, default_value = "32")]
    workers: String,
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[arg(long, default_value = "flat,nested,per-directory")]
    layouts: String,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    let Opts { keys, list_latency_ms: latency, workers, repeat, layouts, out } = common::opts();
    let bin = env!("CARGO_BIN_EXE_s3uring");
    let scratch = std::env::temp_dir().join(format!("s3uring-listing-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let mut table = Table::new(&[
        "layout",
        "--list-workers",
        "median s",
        "speed-up",
        "list requests",
        "requests per 1,000 keys",
        "peak RSS MiB",
    ]);
    let mut raw = String::from("layout,list_workers,rep,seconds,list_requests,keys,peak_rss_kib\n");
    for layout in layouts.split(',') {
        let server = Server::start(
            bin,
            &[
                "--anonymous".into(),
                "--objects".into(),
                keys.to_string(),
                "--layout".into(),
                layout.into(),
                "--list-latency-ms".into(),
                latency.clone(),
            ],
        );
        // Per --list-workers: seconds, list requests, peak RSS of each run.
        type Runs = (String, Vec<f64>, Vec<f64>, Vec<f64>);
        let mut by_workers: Vec<Runs> = Vec::new();
        for w in ["1", workers.as_str()] {
            let (mut secs, mut reqs, mut rss) = (Vec::new(), Vec::new(), Vec::new());
            for rep in 0..repeat {
                let json = scratch.join("stats.json");
                let time = scratch.join("time.txt");
                let started = Instant::now();
                let status = common::direct(&mut Command::new("/usr/bin/time"))
                    .arg("-o")
                    .arg(&time)
                    .args(["-f", "%M", bin, "--no-sign-request", "--endpoint-url", &server.url, "--dry-run", "-q"])
                    .args(["--list-workers", w, "--stats-json"])
                    .arg(&json)
                    .arg("s3://bench")
                    .arg(scratch.join("dest"))
                    .stdout(Stdio::null())
                    .status()
                    .expect("run s3uring");
                let s = started.elapsed().as_secs_f64();
                assert!(status.success(), "{layout} --list-workers {w}: {status}");
                let doc: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&json).expect("stats")).expect("stats JSON");
                let n = doc["stages"]["list"]["count"].as_u64().expect("list count") as f64;
                let listed = doc["counters"]["listed"].as_u64().expect("listed");
                assert_eq!(listed, keys, "{layout} --list-workers {w}: every key, once");
                let kib: f64 = std::fs::read_to_string(&time).unwrap_or_default().trim().parse().unwrap_or(0.0);
                eprintln!("{layout} --list-workers {w} rep {rep}: {s:.2} s, {n} list requests, {kib} KiB");
                raw += &format!("{layout},{w},{rep},{s:.3},{n},{listed},{kib}\n");
                secs.push(s);
                reqs.push(n);
                rss.push(kib);
            }
            by_workers.push((w.to_owned(), secs, reqs, rss));
        }
        let seq = median(by_workers[0].1.clone());
        for (w, secs, reqs, rss) in by_workers {
            let t = median(secs);
            table.row(&[
                layout.to_owned(),
                w,
                format!("{t:.2}"),
                format!("{:.1}×", seq / t),
                format!("{:.0}", median(reqs.clone())),
                format!("{:.2}", median(reqs) / (keys as f64 / 1000.0)),
                format!("{:.0}", median(rss) / 1024.0),
            ]);
        }
        server.stop();
    }
    let md = format!(
        "# Listing {keys} keys, {latency} ms per list page\n\n- date: {}\n- machine: {}\n- command: `cargo bench --bench listing -- --keys {keys} --list-latency-ms {latency} --workers {workers} --repeat {repeat}`\n\n{table}",
        sh("date -u +%Y-%m-%d"),
        common::machine(),
    );
    println!("{md}");
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).expect("out dir");
        std::fs::write(dir.join("listing.md"), &md).expect("write listing.md");
        std::fs::write(dir.join("listing.csv"), &raw).expect("write listing.csv");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
