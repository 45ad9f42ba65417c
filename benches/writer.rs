//! Writer-only benchmark: in-memory bodies fed straight into each writer, no network, so the
//! numbers are the cost of putting files on disk — what the io engine choice decides.
//!
//! ```text
//! cargo bench --bench writer -- [--files 20000] [--size 4096] [--repeat 5]
//!     [--dests /dev/shm,target/bench-disk] [--out bench-results/DATE-MACHINE-writer]
//! ```
//!
//! Configurations, interleaved in every repetition:
//! - `default`: what `s3uring` uses unless told otherwise (`auto`: the thread engine, one
//!   thread per core up to 16);
//! - `default-no-etag`: the same without the `user.s3uring.etag` and `user.s3uring.checksum`
//!   attributes (what keeping the ETag and checksum with each file costs);
//! - `uring`: the ring writer (io-wq capped at one worker), as many files per `io_uring_enter` as are ready;
//! - `uring-1`: the same ring, one new file per `io_uring_enter` — what an API with one
//!   round trip per operation (tokio-uring) cannot do better than;
//! - `threads-16`, `threads-1`: the portable engine;
//! - `bare-loop`: one thread, plain syscalls, no writer at all (the file system's floor).

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::{Table, bare_loop, median, self_cpu, sh};
use s3uring::config::IoEngine;
use s3uring::report::Report;
use s3uring::writer::{self, FileJob, Job, WriterOptions};

const CONFIGS: &[&str] = &["default", "default-no-etag", "uring", "uring-1", "threads-16", "threads-1", "bare-loop"];

fn run_writer(config: &str, dest: &Path, files: u64, size: u64) {
    let (engine, threads, per_submit) = match config {
        // What `s3uring` uses unless told otherwise (`--io-engine auto` without `--fsync`).
        "default" | "default-no-etag" => (IoEngine::Auto, None, usize::MAX),
        "uring" => (IoEngine::Uring, Some(1), usize::MAX),
        "uring-1" => (IoEngine::Uring, Some(1), 1),
        "threads-16" => (IoEngine::Threads, Some(16), usize::MAX),
        "threads-1" => (IoEngine::Threads, Some(1), usize::MAX),
        _ => unreachable!(),
    };
    std::fs::create_dir_all(dest).expect("create dest");
    let report = Arc::new(Report::silent());
    let opts =
        WriterOptions { engine, io_threads: threads, hand_off: 1024, files_per_submit: per_submit, fsync: false };
    let w = writer::start(&opts, s3uring::existing::open_dest(dest).expect("open DEST"), report.clone())
        .expect("start writer");
    let body = Bytes::from(vec![7u8; size as usize]);
    let mut keys: Vec<String> = (0..files).map(|i| format!("p{:04}/obj{i:08}", i % 100)).collect();
    keys.sort();
    for key in keys {
        let target = s3uring::keymap::map_key(&key).expect("valid key");
        let now = Instant::now();
        let job = Job::File(FileJob {
            key,
            target,
            body: body.clone(),
            permit: None,
            picked: now,
            fetched: now,
            // Real runs set every file's mtime, ETag and checksum attributes: include their cost.
            meta: writer::Meta {
                mtime: Some(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
                etag: (config != "default-no-etag").then(|| "9e107d9d372bb6826bd81d3542a419d6".to_owned()),
                checksum: (config != "default-no-etag").then(|| "crc32c:yZRlqg==".to_owned()),
            },
        });
        w.jobs.send_blocking(job).expect("writer alive");
    }
    w.finish().expect("writer finished");
    let s = report.summary(std::time::Duration::ZERO, "", "");
    assert_eq!((s.counters.counts.written, s.counters.counts.failed), (files, 0), "{config}: {:?}", s.first_failures);
}

/// In-memory bodies straight into each writer (no network).
#[derive(clap::Parser)]
struct Opts {
    #[arg(long, default_value_t = 20_000)]
    files: u64,
    #[arg(long, default_value_t = 4096)]
    size: u64,
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    #[arg(long, value_delimiter = ',', default_values = ["/dev/shm", "target/bench-disk"])]
    dests: Vec<PathBuf>,
    /// Results directory (default: bench-results/DATE-Ncore-writer).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    let Opts { files, size, repeat, dests, out } = common::opts();
    let date = sh("date -u +%Y-%m-%d");
    let out = out.unwrap_or_else(|| PathBuf::from(format!("bench-results/{date}-{}core-writer", sh("nproc"))));
    std::fs::create_dir_all(&out).expect("create output dir");
    if let Err(why) = s3uring::writer::uring::available() {
        eprintln!("io_uring unavailable ({why}): nothing to compare");
        return;
    }

    let mut csv = String::from("rep,dest,config,seconds,files_per_sec,cpu_us_per_file\n");
    let mut groups: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for rep in 0..repeat {
        for base in &dests {
            for config in CONFIGS {
                // A fresh directory per run, all removed at the end (see the e2e bench).
                let dest = base.join(format!("s3uring-writer-bench-{}/{rep}-{config}", std::process::id()));
                let (t, cpu0) = (Instant::now(), self_cpu());
                if *config == "bare-loop" {
                    bare_loop(&dest, files, size);
                } else {
                    run_writer(config, &dest, files, size);
                }
                let secs = t.elapsed().as_secs_f64();
                let cpu_us = (self_cpu() - cpu0) * 1e6 / files as f64;
                let fps = files as f64 / secs;
                eprintln!("rep {rep} {:<20} {config:<10} {fps:>8.0} files/s {cpu_us:>6.1} µs CPU/file", base.display());
                csv += &format!("{rep},{},{config},{secs:.3},{fps:.0},{cpu_us:.1}\n", base.display());
                groups.entry((base.display().to_string(), config.to_string())).or_default().push((fps, cpu_us));
            }
        }
    }
    for base in &dests {
        let _ = std::fs::remove_dir_all(base.join(format!("s3uring-writer-bench-{}", std::process::id())));
    }
    std::fs::write(out.join("raw.csv"), csv).expect("write raw.csv");
    let mut table =
        Table::new(&["dest (fs)", "config", "runs", "median files/s", "median CPU µs/file", "files/s vs threads-16"]);
    for ((dest, config), v) in &groups {
        let fps = median(v.iter().map(|x| x.0).collect());
        let base =
            groups.get(&(dest.clone(), "threads-16".to_owned())).map(|b| median(b.iter().map(|x| x.0).collect()));
        table.row(&[
            format!("{dest} ({})", sh(&format!("findmnt -no FSTYPE -T {dest} | head -1"))),
            config.clone(),
            v.len().to_string(),
            format!("{fps:.0}"),
            format!("{:.1}", median(v.iter().map(|x| x.1).collect())),
            base.map_or("-".to_owned(), |b| format!("{:.2}×", fps / b.max(1.0))),
        ]);
    }
    let md = format!(
        "# Writers alone: {files} files × {size} bytes, in-memory bodies\n\n- date: {date}\n- machine: {}\n\
         - command: `cargo bench --bench writer -- {}`\n\n{table}",
        common::machine(),
        common::command_line(),
    );
    std::fs::write(out.join("summary.md"), &md).expect("write summary.md");
    println!("{md}");
}
