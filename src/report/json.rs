//! The `--stats-json` document: the run's [`Summary`] as it is, with the configuration, the
//! tool and the machine beside it. Its shape is an interface (README, "Stats JSON"): fields
//! are only ever added, and `schema` changes if one is removed or changes meaning. Keys come
//! out sorted (a `serde_json::Value` keeps them in order).

use serde::Serialize;

use super::Summary;
use crate::config::Config;

#[derive(Serialize)]
struct Document<'a> {
    schema: u32,
    tool: Tool,
    source: String,
    dest: String,
    config: Settings<'a>,
    machine: Machine,
    #[serde(flatten)]
    summary: &'a Summary,
}

#[derive(Serialize)]
struct Tool {
    name: &'static str,
    version: &'static str,
}

/// The settings the run used (defaults filled in).
#[derive(Serialize)]
struct Settings<'a> {
    workers: usize,
    queue: usize,
    io_engine: String,
    fetch_engine: String,
    retries: u32,
    hedge_after_ms: u64,
    max_rate: Option<f64>,
    stall_timeout_s: u64,
    list_workers: usize,
    verify: bool,
    verify_mode: &'static str,
    fsync: bool,
    existing: String,
    io_threads: usize,
    buffer_bytes: u64,
    multipart_threshold: u64,
    part_size: u64,
    part_concurrency: usize,
    manifest: Option<String>,
    endpoint_url: &'a Option<String>,
    region: &'a Option<String>,
    force_path_style: bool,
}

#[derive(Serialize)]
struct Machine {
    cores: usize,
    kernel: String,
    hostname: String,
    loadavg: String,
}

/// The `--stats-json` document of a run.
pub fn stats_json(summary: &Summary, cfg: &Config) -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    let lower = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
    let doc = Document {
        schema: 1,
        tool: Tool { name: "s3uring", version: env!("CARGO_PKG_VERSION") },
        source: cfg.source.to_string(),
        dest: cfg.dest.display().to_string(),
        config: Settings {
            workers: cfg.workers,
            queue: cfg.queue,
            io_engine: lower(&cfg.io_engine),
            fetch_engine: lower(&cfg.fetch_engine),
            retries: cfg.retries,
            hedge_after_ms: cfg.hedge_after_ms,
            max_rate: cfg.max_rate,
            stall_timeout_s: cfg.stall_timeout.as_secs(),
            list_workers: cfg.list_workers,
            verify: cfg.verify.checks(),
            verify_mode: cfg.verify.name(),
            fsync: cfg.fsync,
            existing: lower(&cfg.existing),
            io_threads: cfg.io_threads.unwrap_or(match summary.engine.as_str() {
                "io_uring" => crate::config::RING_IO_WORKERS,
                _ => crate::config::default_io_threads(),
            }),
            buffer_bytes: cfg.buffer_bytes,
            multipart_threshold: cfg.parts.threshold,
            part_size: cfg.parts.part_size,
            part_concurrency: cfg.parts.concurrency,
            manifest: cfg.manifest.as_ref().map(ToString::to_string),
            endpoint_url: summary.endpoint.as_ref().map_or(&cfg.s3.endpoint_url, |(url, _)| url),
            region: &cfg.s3.region,
            force_path_style: summary
                .endpoint
                .as_ref()
                .map_or(cfg.s3.force_path_style.unwrap_or(cfg.s3.endpoint_url.is_some()), |(_, path)| *path),
        },
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease"),
            hostname: read("/proc/sys/kernel/hostname"),
            loadavg: read("/proc/loadavg"),
        },
        summary,
    };
    serde_json::to_value(&doc).unwrap_or_else(|e| serde_json::json!({ "schema": 1, "error": e.to_string() }))
}
