//! Command line: flags (clap derive) → a validated [`Config`] → run → exit code.
//!
//! `s3uring SOURCE DEST` copies; `s3uring demo` runs a whole copy against the embedded
//! endpoint and verifies it; `s3uring serve` runs the endpoint alone for other tools.

pub mod tune;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{
    Config, Credentials, DEFAULT_BUFFER_MIB, DEFAULT_HEDGE_AFTER_MS, DEFAULT_LIST_WORKERS, DEFAULT_PART_CONCURRENCY,
    DEFAULT_QUEUE, DEFAULT_RETRIES, DEFAULT_STALL_TIMEOUT_S, DEFAULT_WORKERS, FetchEngine, IoEngine, S3Settings, S3Url,
};
use crate::console::sanitize;
use crate::endpoint::{BucketSpec, Contents, Endpoint, EndpointConfig, Faults, Layout, generated_content};
use crate::report::Report;
use crate::run::{self, Fatal};

/// Exit codes: 0 every key written or skipped, 1 some keys failed, 2 usage or setup error,
/// 130 interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    KeysFailed = 1,
    Usage = 2,
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "s3uring",
    version,
    about = "Restore many small S3 objects to a local directory, fast (bounded fetchers, batching io_uring writer)",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// s3://bucket[/prefix] — every key under the prefix is copied.
    #[arg(value_name = "SOURCE", required = true)]
    source: Option<String>,

    /// Local directory (created if missing); keys land at their path relative to the prefix.
    #[arg(value_name = "DEST", required = true)]
    dest: Option<PathBuf>,

    #[command(flatten)]
    s3: S3Args,

    #[command(flatten)]
    tuning: Tuning,

    #[command(flatten)]
    select: Select,

    #[command(flatten)]
    output: Output,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Selection")]
struct Select {
    /// Copy keys matching GLOB (relative to the prefix; `*` matches `/` too). With
    /// --exclude, rules apply in command-line order and later ones win, as in the AWS CLI.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,

    /// Do not copy keys matching GLOB (see --include).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,

    /// Copy only shard I of N: keys whose FNV-1a hash mod N is I. `env/N` reads I from
    /// JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or AWS_BATCH_JOB_ARRAY_INDEX.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,

    /// List and print what would be copied (and what would be skipped), then stop: no GET,
    /// nothing written, DEST not created.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
struct S3Args {
    /// Use this endpoint instead of AWS S3 (e.g. http://127.0.0.1:9000 for MinIO or `s3uring serve`).
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,

    /// AWS region (default: from the environment or profile, else us-east-1).
    #[arg(long)]
    region: Option<String>,

    /// Named profile from ~/.aws/config and ~/.aws/credentials.
    #[arg(long)]
    profile: Option<String>,

    /// Accept the charges of a Requester Pays bucket (`requester`, the only value S3 knows;
    /// sends `x-amz-request-payer: requester` with every list and GET).
    #[arg(long, value_name = "requester", value_parser = ["requester"])]
    request_payer: Option<String>,

    /// Trust exactly the CA certificates in this PEM file for HTTPS (instead of the system's
    /// trust store), as the AWS CLI does; for endpoints behind a private CA.
    #[arg(long, value_name = "FILE", env = "AWS_CA_BUNDLE")]
    ca_bundle: Option<PathBuf>,

    /// Send anonymous requests (public buckets); no credentials are loaded.
    #[arg(long)]
    no_sign_request: bool,

    /// Path-style addressing (http://host/bucket/key). On by default with an endpoint URL
    /// (--endpoint-url, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3); `--force-path-style=false`
    /// turns it off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    force_path_style: Option<bool>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Tuning")]
struct Tuning {
    /// The most concurrent GETs (long-lived fetch tasks). The GETs in flight, and the
    /// connections they share, start at 16 and grow to what the latency needs, up to N.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WORKERS as u32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    workers: u32,

    /// Capacity of the bounded key queue between the lister and the fetchers.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_QUEUE as u32,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    queue: u32,

    /// File writer: io_uring linked chains, or a pool of threads doing plain syscalls.
    #[arg(long, value_enum, default_value_t = IoEngine::Auto)]
    io_engine: IoEngine,

    /// What sends the GETs: `lean` (hyper + aws-sigv4, the SDK's endpoint rules and
    /// credentials) or `sdk` (aws-sdk-s3's GetObject, the reference).
    #[arg(long, value_enum, default_value_t = FetchEngine::Lean)]
    fetch_engine: FetchEngine,

    /// Retries of a GET that failed transiently (5xx, reset, timeout, short body), with
    /// exponential backoff and jitter, before the key counts as failed. Throttling answers
    /// (SlowDown, 503, 429) spend none: the rate is lowered and the key tried again.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RETRIES,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    retries: u32,

    /// At most N GETs per second (hedges and parts of large objects included): protect a
    /// production bucket, or stay under a known limit. The rate limiter starts at N and
    /// still lowers it when the service throttles.
    #[arg(long, value_name = "N", value_parser = positive_rate)]
    max_rate: Option<f64>,

    /// Stop the run when no GET has succeeded for SECS while the service kept answering
    /// SlowDown/503/429 (throttled keys are otherwise tried again without limit).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_STALL_TIMEOUT_S,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    stall_timeout: u64,

    /// Strict checking: every body is checked against the checksum its object carries
    /// (x-amz-checksum-* when present, else an ETag that is a plain MD5), as by default, and
    /// a key whose body could not be checked fails, naming why.
    #[arg(long)]
    verify: bool,

    /// Check nothing: no checksum is asked for (for a store that sends wrong checksums). By
    /// default every body with a checksum or a plain-MD5 ETag is checked, and a mismatch is
    /// fetched again, never written.
    #[arg(long, conflicts_with = "verify")]
    no_verify: bool,

    /// Make every file durable before the run reports it: each file's data is fsynced
    /// (batched through the writer) before it is renamed into place, and every directory
    /// that received files is fsynced before the summary.
    #[arg(long)]
    fsync: bool,

    /// Send a second request, on a new connection, for a GET (of an object up to 8 MiB)
    /// that has not completed after MS milliseconds; the first answer wins (0: never).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_HEDGE_AFTER_MS)]
    hedge_after: u64,

    /// Rewrite files already in DEST. By default a file whose size and mtime equal the
    /// object's size and LastModified is skipped (the writer sets mtime from LastModified).
    #[arg(long, conflicts_with = "skip_existing")]
    overwrite: bool,

    /// Skip every file that already exists in DEST, by name alone.
    #[arg(long)]
    skip_existing: bool,

    /// Concurrent ListObjectsV2 requests: the listing fans out over common prefixes ('/')
    /// and splits large flat ranges at start-after boundaries (1: one sequential listing).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIST_WORKERS as u32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    list_workers: u32,

    /// With SOURCE naming one object (s3://bucket/key): copy this version of it.
    #[arg(long, value_name = "ID")]
    version_id: Option<String>,

    /// Copy exactly the keys in FILE (one per line, `-` for stdin; text after a tab is
    /// ignored, so a --failed-keys file can be fed back) instead of listing the prefix. Keys
    /// are full keys and must be under SOURCE's prefix.
    #[arg(long, value_name = "FILE", conflicts_with = "manifest")]
    keys_from: Option<PathBuf>,

    /// Copy the objects of an S3 Inventory report (CSV) instead of listing: its manifest.json,
    /// local or s3://bucket/…/manifest.json. Keys outside SOURCE's prefix are left out; sizes,
    /// LastModifiedDate and ETags from the inventory drive the skip check.
    #[arg(long, value_name = "FILE|S3URL", value_parser = crate::config::Location::parse)]
    manifest: Option<crate::config::Location>,

    /// Threads of the async runtime running the fetch tasks (0: one per CPU core). The
    /// writer has its own threads besides.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    fetch_threads: u32,

    /// Threads of the `threads` io engine, and the cap on the ring's io-wq workers
    /// [default: one thread per core, at most 16; 16 io-wq workers for the ring]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    io_threads: Option<u32>,

    /// Objects larger than SIZE are fetched in ranged parts, in parallel, and written at
    /// their offsets as they arrive (memory bounded by the parts in flight).
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = part_bytes)]
    multipart_threshold: u64,

    /// Size of each part of a large object.
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = part_bytes)]
    part_size: u64,

    /// Ranged GETs of one large object at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PART_CONCURRENCY as u32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    part_concurrency: u32,

    /// MiB of object bodies held in memory between GET and disk, at most.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_BUFFER_MIB,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    buffer_mib: u64,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
struct Output {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// No summary, no progress; only errors.
    #[arg(short, long, global = true)]
    quiet: bool,

    /// When stderr is not a terminal, print a progress line every SECS seconds (0: never).
    /// On a terminal a live progress bar is shown instead.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, global = true)]
    progress_interval: f64,

    /// Write each key that could not be copied to FILE, one `KEY<TAB>REASON` line per key
    /// (feed it back with --keys-from FILE to retry exactly those).
    #[arg(long, value_name = "FILE")]
    failed_keys: Option<PathBuf>,

    /// Write the run's statistics (counters, throughput, CPU, per-stage latency percentiles,
    /// config, machine) as JSON to FILE; see the README for the fields.
    #[arg(long, value_name = "FILE", global = true)]
    stats_json: Option<PathBuf>,

    /// How a copy writes to stderr: `text` for people, or `json`: one JSON object per line
    /// (failures, skips, progress, errors, logs and the summary with the stats JSON) for log
    /// shippers; see the README for the fields. No progress bar with json.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the embedded S3 endpoint with generated objects, restore them into a temporary
    /// directory, verify every byte and print the summary.
    Demo(DemoArgs),
    /// Run the embedded S3 endpoint alone (for other tools, benchmarks), until Ctrl-C.
    Serve(ServeArgs),
    /// Copy SOURCE once per cell of a --workers × --queue grid into SCRATCH and report
    /// objects/s, CPU per object and latency percentiles per cell (CSV, Markdown, SVG).
    Tune(TuneArgs),
    /// Audit a restored tree without downloading it: every selected key of SOURCE has a file
    /// in DEST of its size and time, a file that kept the checksum it was checked against
    /// still has it, and no file is extra. Lists missing, different and extra files; exit 1
    /// if there are any.
    Check(CheckArgs),
    /// Print a completion script for SHELL to standard output: `s3uring completions bash >
    /// /etc/bash_completion.d/s3uring`, `s3uring completions zsh > "${fpath[1]}/_s3uring"`,
    /// `s3uring completions fish > ~/.config/fish/completions/s3uring.fish`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff) to standard output: `s3uring man > s3uring.1`, then
    /// `man -l s3uring.1`, or install it under a `man1` directory.
    Man,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    #[arg(value_enum, value_name = "SHELL")]
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// s3://bucket[/prefix] that DEST was restored from.
    #[arg(value_name = "SOURCE")]
    source: String,
    /// The restored directory.
    #[arg(value_name = "DEST")]
    dest: PathBuf,
    /// Read every file and compare it with the checksum the store returns for its object (one
    /// HeadObject per key; the ETag's MD5 where there is no checksum), not only the files that
    /// kept one.
    #[arg(long)]
    checksum: bool,
    /// Write the audit as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// The keys checked: selected as a copy with the same flags selects them.
    #[command(flatten)]
    select: Select,
    #[command(flatten)]
    s3: S3Args,
}

#[derive(Debug, Args)]
struct TuneArgs {
    /// s3://bucket[/prefix] to copy in every cell.
    #[arg(value_name = "SOURCE")]
    source: String,
    /// Scratch directory: each cell copies into a fresh subdirectory, deleted afterwards
    /// (tmpfs such as /dev/shm measures the network side most cleanly).
    #[arg(value_name = "SCRATCH")]
    scratch: PathBuf,
    /// Comma-separated --workers values.
    #[arg(long = "workers", value_name = "LIST", default_value = "50,200,500,1000,2000")]
    workers_list: String,
    /// Comma-separated --queue values.
    #[arg(long = "queue", value_name = "LIST", default_value = "100,1000,4000")]
    queue_list: String,
    /// Runs per cell (the tables report medians).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Where tune.csv, tune.md and tune.svg go.
    #[arg(long, value_name = "DIR", default_value = "s3uring-tune")]
    out: PathBuf,
    #[command(flatten)]
    s3: S3Args,
    /// File writer.
    #[arg(long, value_enum, default_value_t = IoEngine::Auto)]
    io_engine: IoEngine,
}

#[derive(Debug, Args)]
struct Generated {
    /// Number of generated objects.
    #[arg(long, default_value_t = 100_000)]
    objects: u64,
    /// Size of each object in bytes.
    #[arg(long, default_value_t = 4096)]
    size: u64,
    /// Spread the keys over this many prefixes (directories).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    prefixes: u64,
    /// How keys are named: `prefixes` (p0003/obj00000042), `flat` (obj00000042), `nested`
    /// (d04/e21/obj00004213), `per-directory` (9e3779b97f4a7c15/data.bin).
    #[arg(long, value_enum, default_value_t = Layout::Prefixes)]
    layout: Layout,
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    generated: Generated,
    /// Restore here instead of a new temporary directory (kept afterwards).
    #[arg(long)]
    dest: Option<PathBuf>,
    #[command(flatten)]
    tuning: Tuning,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    generated: Generated,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
    /// Bucket name.
    #[arg(long, default_value = "bench")]
    bucket: String,
    /// Serve anonymous requests instead of requiring the printed credentials.
    #[arg(long)]
    anonymous: bool,
    /// Allow --listen on an address other than loopback: the demo credentials are public
    /// (printed here and in the README), so anyone who can reach the port can read the bucket.
    #[arg(long)]
    allow_remote: bool,
    /// Delay before each GET answers, in milliseconds (S3: ~10–30 ms for small objects).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Delay before each list page answers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    list_latency_ms: u64,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key); clients trust its CA
    /// with --ca-bundle.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// List LastModified with milliseconds, as MinIO and Ceph RGW do (GETs' Last-Modified
    /// header keeps whole seconds).
    #[arg(long)]
    sub_second_times: bool,
    /// Ignore `encoding-type=url` in listings, as some stores do (keys always sent as they are).
    #[arg(long)]
    ignore_encoding_type: bool,
    /// Run the endpoint's clock SECS seconds from this machine's (negative: behind): requests
    /// signed more than 15 minutes from it get `403 RequestTimeTooSkewed`.
    #[arg(long, value_name = "SECS", default_value_t = 0, allow_hyphen_values = true)]
    clock_offset: i64,
    #[command(flatten)]
    faults: FaultArgs,
    #[command(flatten)]
    limits: RateLimitArgs,
}

/// Request-rate limits on GETs, as S3 has per prefix partition.
#[derive(Debug, Args)]
#[command(next_help_heading = "Request-rate limits (GET, HEAD and list requests per second; 503 SlowDown above)")]
struct RateLimitArgs {
    /// Limit requests for every key to N per second (a token bucket taken by GETs, HEADs and
    /// list requests, as S3 counts them together).
    #[arg(long, value_name = "N")]
    rate_limit: Option<f64>,
    /// Limit requests for keys under PREFIX to N per second instead (repeatable; the longest
    /// matching prefix applies; N = 0: unlimited, only counted).
    #[arg(long, value_name = "PREFIX=N", value_parser = prefix_rate)]
    rate_limit_prefix: Vec<(String, f64)>,
    /// SECS after the first GET, the --rate-limit becomes N (0: unlimited); repeatable.
    #[arg(long, value_name = "SECS=N", value_parser = timed_rate, requires = "rate_limit")]
    rate_limit_after: Vec<(f64, f64)>,
    /// Each bucket holds MS milliseconds of its rate: bursts up to that many GETs pass.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    rate_limit_burst_ms: u64,
    /// Serve at most N GETs at once: a GET arriving while N are being served is answered
    /// 503 SlowDown at once (a store's concurrency cap; combines with the rate limits and
    /// --fail-slowdown).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_inflight: Option<u64>,
}

impl RateLimitArgs {
    fn rules(&self) -> Vec<crate::endpoint::RateLimit> {
        let burst = std::time::Duration::from_millis(self.rate_limit_burst_ms);
        let rule = |prefix: &str, rate: f64| crate::endpoint::RateLimit {
            burst,
            ..crate::endpoint::RateLimit::new(prefix, rate)
        };
        let mut rules: Vec<_> = self.rate_limit_prefix.iter().map(|(p, n)| rule(p, *n)).collect();
        if let Some(n) = self.rate_limit {
            let mut all = rule("", n);
            all.schedule =
                self.rate_limit_after.iter().map(|(at, n)| (std::time::Duration::from_secs_f64(*at), *n)).collect();
            all.schedule.sort_by_key(|a| a.0);
            rules.push(all);
        }
        rules
    }
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a rate in GET/s (a number ≥ 0)")),
    }
}

/// `PREFIX=N`.
fn prefix_rate(s: &str) -> Result<(String, f64), String> {
    let (prefix, n) = s.rsplit_once('=').ok_or_else(|| format!("'{s}' is not PREFIX=N"))?;
    Ok((prefix.to_owned(), rate(n)?))
}

/// `SECS=N`.
fn timed_rate(s: &str) -> Result<(f64, f64), String> {
    let (at, n) = s.split_once('=').ok_or_else(|| format!("'{s}' is not SECS=N"))?;
    match at.parse::<f64>() {
        Ok(at) if at.is_finite() && at >= 0.0 => Ok((at, rate(n)?)),
        _ => Err(format!("'{at}' is not a number of seconds")),
    }
}

/// Fault injection: each a fraction (0..1) of GETs.
#[derive(Debug, Args)]
#[command(next_help_heading = "Fault injection (fractions of GETs, 0..1)")]
struct FaultArgs {
    /// Answer 503 SlowDown.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = fraction)]
    fail_slowdown: f64,
    /// Answer 500 InternalError.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = fraction)]
    fail_internal: f64,
    /// Close the connection without answering.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = fraction)]
    fail_reset: f64,
    /// Send half the body, then break the connection.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = fraction)]
    fail_truncate: f64,
    /// Change one byte of the body (length, ETag and checksum unchanged).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = fraction)]
    fail_corrupt: f64,
    /// Delay the first byte by --slow-ms.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = fraction)]
    slow: f64,
    /// Answer at once but send the body --slow-ms late (a slow link, not a late answer).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = fraction)]
    slow_body: f64,
    /// The delay of a slow first byte.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    slow_ms: u64,
}

/// `--max-rate`: GET/s, a finite number > 0.
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a rate in GET/s (a number > 0)")),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{v} is not a fraction between 0 and 1")) }
}

/// Credentials of the embedded endpoint in `demo` and `serve`.
pub const DEMO_ACCESS_KEY: &str = "s3uring";
pub const DEMO_SECRET_KEY: &str = "s3uring-demo-secret";

/// Parses the command line, runs, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match &cli.command {
        Some(Command::Completions(args)) => return print_completions(args.shell).into(),
        Some(Command::Man) => return print_man().into(),
        _ => {}
    }
    crate::console::set_json(cli.output.log_format == LogFormat::Json);
    init_tracing(cli.output.verbose, cli.output.quiet);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.tuning.fetch_threads > 0 {
        builder.worker_threads(cli.tuning.fetch_threads as usize);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            crate::say!("s3uring: error: cannot start the async runtime: {e}");
            return Exit::Usage.into();
        }
    };
    let code = match cli.command {
        Some(Command::Demo(args)) => runtime.block_on(demo(args, &cli.output)),
        Some(Command::Serve(args)) => runtime.block_on(serve(args)),
        Some(Command::Tune(args)) => runtime.block_on(tune(args)),
        Some(Command::Check(args)) => {
            let sub = matches.subcommand_matches("check").unwrap_or(&matches);
            runtime.block_on(check(args, sub))
        }
        Some(Command::Completions(_) | Command::Man) => Exit::Ok,
        None => match resolve(&cli, &matches) {
            Ok(cfg) => runtime.block_on(copy(cfg)),
            Err(msg) => {
                crate::console::error(&msg);
                Exit::Usage
            }
        },
    };
    // Don't wait for idle pooled connections or the endpoint's tasks.
    runtime.shutdown_background();
    code.into()
}

/// `s3uring completions SHELL`.
fn print_completions(shell: clap_complete::Shell) -> Exit {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "s3uring", &mut script);
    write_stdout(&script, "the completion script")
}

/// `s3uring man`: the manual page (the copy's options, and the subcommands by name).
fn print_man() -> Exit {
    let mut page = Vec::new();
    if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut page) {
        crate::say!("s3uring: error: cannot render the manual page: {e}");
        return Exit::Usage;
    }
    write_stdout(&page, "the manual page")
}

fn write_stdout(bytes: &[u8], what: &str) -> Exit {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            crate::say!("s3uring: error: cannot write {what} to standard output: {e}");
            Exit::Usage
        }
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    // Our own messages, then everyone else's (the SDK's warnings need -v).
    let (ours, theirs) = match (quiet, verbose) {
        (true, _) => ("error", "error"),
        (false, 0) => ("warn", "error"),
        (false, 1) => ("info", "warn"),
        (false, 2) => ("debug", "info"),
        _ => ("trace", "debug"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("s3uring={ours},{theirs}")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(crate::console::LogWriter);
    let _ = if crate::console::json() {
        // One object per record: `timestamp`, `level`, `message` and the record's fields.
        builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .without_time()
            .try_init()
    };
}

/// Flags → validated config. Everything here runs before any request.
fn resolve(cli: &Cli, matches: &clap::ArgMatches) -> Result<Config, String> {
    let dest = cli.dest.clone().ok_or("DEST is required")?;
    let mut cfg = base_config(cli.source.as_deref().unwrap_or_default(), dest, &cli.s3)?;
    apply_tuning(&mut cfg, &cli.tuning);
    apply_output(&mut cfg, &cli.output)?;
    cfg.selection = selection(&cli.select, matches)?;
    cfg.dry_run = cli.select.dry_run;
    Ok(cfg)
}

/// `--include`/`--exclude` in command-line order (clap keeps each flag's values apart; their
/// indices restore the order), and `--shard`.
fn selection(s: &Select, matches: &clap::ArgMatches) -> Result<crate::select::Selection, String> {
    let mut ordered: Vec<(usize, bool, &String)> = Vec::new();
    for (id, include, values) in [("include", true, &s.include), ("exclude", false, &s.exclude)] {
        let indices: Vec<usize> = matches.indices_of(id).map(Iterator::collect).unwrap_or_default();
        ordered.extend(indices.into_iter().zip(values).map(|(i, v)| (i, include, v)));
    }
    ordered.sort_by_key(|(i, _, _)| *i);
    let rules = ordered
        .into_iter()
        .map(|(_, include, p)| crate::select::Rule::new(include, p))
        .collect::<Result<Vec<_>, _>>()?;
    let shard = match &s.shard {
        Some(v) => Some(crate::select::Shard::parse(v, |var| std::env::var(var).ok())?),
        None => None,
    };
    Ok(crate::select::Selection { rules, shard })
}

/// SOURCE, DEST and the connection flags, checked; everything else at its default.
fn base_config(source: &str, dest: PathBuf, s3: &S3Args) -> Result<Config, String> {
    let source: S3Url = source.parse()?;
    if dest.as_os_str().is_empty() {
        return Err("DEST is empty".to_owned());
    }
    // A file DEST is fine for one object (s3://bucket/key); for a prefix the pipeline refuses it.
    if dest.exists() && !dest.is_dir() && source.object.is_none() {
        return Err(format!("DEST '{}' exists and is not a directory", dest.display()));
    }
    if let Some(url) = &s3.endpoint_url
        && (!(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len())
    {
        return Err(format!("--endpoint-url '{url}' is not an http:// or https:// URL"));
    }
    let settings = S3Settings {
        endpoint_url: s3.endpoint_url.clone(),
        region: s3.region.clone(),
        profile: s3.profile.clone(),
        credentials: if s3.no_sign_request { Credentials::Anonymous } else { Credentials::DefaultChain },
        force_path_style: s3.force_path_style,
        requester_pays: s3.request_payer.is_some(),
        ca_bundle: match s3.ca_bundle.as_deref().filter(|p| !p.as_os_str().is_empty()) {
            Some(path) => Some(crate::config::CaBundle::load(path)?),
            None => None,
        },
        proxies: true,
    };
    Ok(Config::new(source, dest, settings))
}

fn apply_output(cfg: &mut Config, o: &Output) -> Result<(), String> {
    // 0 turns the lines off; below a millisecond the timer spins, above a day never fires.
    if !(o.progress_interval == 0.0 || (0.001..=86_400.0).contains(&o.progress_interval)) {
        return Err(format!(
            "--progress-interval {} must be 0 (never) or between 0.001 and 86400 seconds",
            o.progress_interval
        ));
    }
    cfg.summary = !o.quiet;
    cfg.progress =
        crate::console::ProgressMode::detect(o.quiet, std::time::Duration::from_secs_f64(o.progress_interval));
    cfg.stats_json = o.stats_json.clone();
    cfg.failed_keys = o.failed_keys.clone();
    Ok(())
}

fn apply_tuning(cfg: &mut Config, t: &Tuning) {
    cfg.workers = t.workers as usize;
    cfg.queue = t.queue as usize;
    cfg.io_engine = t.io_engine;
    cfg.fetch_engine = t.fetch_engine;
    cfg.keys_from = t.keys_from.clone();
    cfg.manifest = t.manifest.clone();
    cfg.list_workers = t.list_workers as usize;
    cfg.version_id = t.version_id.clone();
    cfg.verify = match (t.verify, t.no_verify) {
        (true, _) => crate::config::Verify::Strict,
        (_, true) => crate::config::Verify::Off,
        _ => crate::config::Verify::On,
    };
    cfg.fsync = t.fsync;
    cfg.hedge_after_ms = t.hedge_after;
    cfg.existing = if t.overwrite {
        crate::existing::ExistingMode::Overwrite
    } else if t.skip_existing {
        crate::existing::ExistingMode::SkipExisting
    } else {
        crate::existing::ExistingMode::Compare
    };
    cfg.retries = t.retries;
    cfg.max_rate = t.max_rate;
    cfg.stall_timeout = std::time::Duration::from_secs(t.stall_timeout);
    cfg.io_threads = t.io_threads.map(|n| n as usize);
    cfg.buffer_bytes = t.buffer_mib << 20;
    cfg.parts = crate::config::Parts {
        threshold: t.multipart_threshold,
        part_size: t.part_size,
        concurrency: t.part_concurrency as usize,
    };
}

/// `--part-size` / `--multipart-threshold`: a size (see [`crate::config::parse_size`]) of at
/// least 4 KiB and at most 5 GiB (S3's largest single PUT, so never a limit in practice).
fn part_bytes(s: &str) -> Result<u64, String> {
    let n = crate::config::parse_size(s)?;
    if !(4096..=5 << 30).contains(&n) {
        return Err(format!("'{s}' must be between 4KiB and 5GiB"));
    }
    Ok(n)
}

/// SIGINT or SIGTERM: stop listing and fetching, let the writer finish what it holds, print
/// the summary, exit 130. A second one exits at once: files at their final names are
/// complete either way (data is renamed into place only when whole), and the temporaries
/// left behind are removed by the next run.
async fn watch_signals(stop: tokio::sync::watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    if stop.send(true).is_err() {
        // The run is over (nothing listens for the stop): what is left is writing its results,
        // which may block (a full pipe, a FIFO nobody reads). Nothing is in flight to finish.
        crate::console::line("s3uring: interrupted after the run: quitting now without its summary");
        std::process::exit(Exit::Interrupted as i32);
    }
    crate::console::line("s3uring: interrupted: finishing the files in flight (interrupt again to quit at once)");
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    crate::console::line("s3uring: interrupted again: quitting now; the next run removes temporary files");
    std::process::exit(Exit::Interrupted as i32);
}

/// Runs a copy and prints its summary; the exit code says how it went.
pub async fn copy(cfg: Config) -> Exit {
    let report = Arc::new(Report::new());
    let progress = crate::report::progress::Progress::start(report.clone(), cfg.progress);
    let (stop_tx, stop) = run::Stop::new();
    let signals = tokio::spawn(watch_signals(stop_tx));
    let result = run::run_until(&cfg, report, stop).await;
    if let Some(p) = progress {
        p.finish().await;
    }
    // Interrupts are still watched while the results are written: that may block.
    let exit = finish(&cfg, result);
    signals.abort();
    exit
}

/// Writes the results of a run (stats JSON, summary) and says how it ended.
fn finish(cfg: &Config, result: Result<crate::report::Summary, Fatal>) -> Exit {
    match result {
        Ok(summary) => {
            let doc = crate::report::stats_json(&summary, cfg);
            if let Some(path) = &cfg.stats_json {
                let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
                if let Err(e) = std::fs::write(path, text) {
                    crate::console::error(&format!("cannot write --stats-json '{}': {e}", path.display()));
                    return Exit::KeysFailed;
                }
            }
            if cfg.summary {
                let mut text = summary.render();
                if !summary.stages.is_empty() {
                    text += &crate::report::stats::render_table(&summary.stages);
                }
                if crate::console::json() {
                    let fields = crate::report::object(serde_json::json!({ "stats": doc }));
                    crate::console::event("INFO", "summary", text.trim_end(), fields);
                } else {
                    crate::say_raw!("{text}");
                }
            }
            if summary.counters.interrupted {
                Exit::Interrupted
            } else if summary.success() {
                Exit::Ok
            } else {
                Exit::KeysFailed
            }
        }
        Err(Fatal::Setup(msg)) => {
            crate::console::error(&sanitize(&msg));
            Exit::Usage
        }
        Err(Fatal::Internal(msg)) => {
            crate::console::error(&sanitize(&msg));
            Exit::KeysFailed
        }
    }
}

async fn demo(args: DemoArgs, output: &Output) -> Exit {
    let g = &args.generated;
    let endpoint = match Endpoint::start(EndpointConfig {
        buckets: vec![BucketSpec {
            name: "demo".into(),
            contents: Contents::Generated { count: g.objects, size: g.size, prefixes: g.prefixes, layout: g.layout },
        }],
        credentials: Some((DEMO_ACCESS_KEY.into(), DEMO_SECRET_KEY.into())),
        ..Default::default()
    })
    .await
    {
        Ok(e) => e,
        Err(e) => {
            crate::say!("s3uring: error: cannot start the embedded endpoint: {e}");
            return Exit::Usage;
        }
    };
    let (dest, temporary) = match &args.dest {
        Some(d) => (d.clone(), false),
        None => {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            (std::env::temp_dir().join(format!("s3uring-demo-{}-{nanos:x}", std::process::id())), true)
        }
    };
    crate::say!(
        "s3uring demo: {} objects of {} bytes served by the embedded endpoint at {}; restoring s3://demo/ to {}",
        g.objects,
        g.size,
        endpoint.url(),
        dest.display()
    );
    let settings = S3Settings {
        endpoint_url: Some(endpoint.url()),
        region: Some("us-east-1".into()),
        profile: None,
        credentials: Credentials::Static { access_key: DEMO_ACCESS_KEY.into(), secret_key: DEMO_SECRET_KEY.into() },
        force_path_style: Some(true),
        requester_pays: false,
        ca_bundle: None,
        // The endpoint is in this process: a proxy the machine uses cannot reach it.
        proxies: false,
    };
    let mut cfg =
        Config::new(S3Url { bucket: "demo".into(), prefix: String::new(), object: None }, dest.clone(), settings);
    apply_tuning(&mut cfg, &args.tuning);
    if let Err(msg) = apply_output(&mut cfg, output) {
        crate::say!("s3uring: error: {msg}");
        return Exit::Usage;
    }
    let mut code = copy(cfg).await;
    if code == Exit::Ok {
        let (n, size, prefixes, layout) = (g.objects, g.size, g.prefixes, g.layout);
        let d = dest.clone();
        let verified = tokio::task::spawn_blocking(move || verify_generated(&d, n, size, prefixes, layout)).await;
        match verified {
            Ok(Ok(())) => crate::console::line(&format!("verified: all {n} files are byte-identical to their objects")),
            Ok(Err(msg)) => {
                crate::console::line(&format!("s3uring demo: verification FAILED: {msg}"));
                code = Exit::KeysFailed;
            }
            Err(e) => {
                crate::console::line(&format!("s3uring demo: verification did not run: {e}"));
                code = Exit::KeysFailed;
            }
        }
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&dest);
    }
    code
}

/// Checks that DEST holds exactly the generated objects, byte for byte.
pub fn verify_generated(
    dest: &std::path::Path,
    n: u64,
    size: u64,
    prefixes: u64,
    layout: Layout,
) -> Result<(), String> {
    for i in 0..n {
        let key = layout.key(i, prefixes);
        let path = dest.join(&key);
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if data != generated_content(&key, size) {
            return Err(format!("{}: content differs from the object", path.display()));
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Exit {
    let g = &args.generated;
    if !args.listen.ip().is_loopback() {
        if !args.allow_remote {
            crate::say!(
                "s3uring: error: --listen {} is reachable from other hosts and the endpoint's credentials are public; \
                 add --allow-remote to serve there anyway",
                args.listen
            );
            return Exit::Usage;
        }
        crate::say!(
            "s3uring: warning: serving on {} with public demo credentials{}: anyone who can reach it can read the bucket",
            args.listen,
            if args.anonymous { " (none: --anonymous)" } else { "" }
        );
    }
    let credentials = (!args.anonymous).then(|| (DEMO_ACCESS_KEY.to_owned(), DEMO_SECRET_KEY.to_owned()));
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match (std::fs::read(cert), std::fs::read(key)) {
            (Ok(cert_pem), Ok(key_pem)) => Some(crate::endpoint::TlsIdentity { cert_pem, key_pem }),
            (Err(e), _) | (_, Err(e)) => {
                crate::say!("s3uring: error: cannot read --tls-cert/--tls-key: {e}");
                return Exit::Usage;
            }
        },
        _ => None,
    };
    let endpoint = match Endpoint::start(EndpointConfig {
        tls,
        buckets: vec![BucketSpec {
            name: args.bucket.clone(),
            contents: Contents::Generated { count: g.objects, size: g.size, prefixes: g.prefixes, layout: g.layout },
        }],
        credentials: credentials.clone(),
        listen: Some(args.listen),
        get_latency: std::time::Duration::from_millis(args.latency_ms),
        list_latency: std::time::Duration::from_millis(args.list_latency_ms),
        faults: Faults {
            slowdown: args.faults.fail_slowdown,
            internal: args.faults.fail_internal,
            reset: args.faults.fail_reset,
            truncate: args.faults.fail_truncate,
            slow: args.faults.slow,
            slow_delay: std::time::Duration::from_millis(args.faults.slow_ms),
            corrupt: args.faults.fail_corrupt,
            slow_body: args.faults.slow_body,
        },
        rate_limits: args.limits.rules(),
        max_inflight: args.limits.max_inflight.map(|n| n as usize),
        sub_second_times: args.sub_second_times,
        ignore_encoding_type: args.ignore_encoding_type,
        clock_offset_s: args.clock_offset,
        ..EndpointConfig::default()
    })
    .await
    {
        Ok(e) => e,
        Err(e) => {
            crate::say!("s3uring: error: cannot listen on {}: {e}", args.listen);
            return Exit::Usage;
        }
    };
    println!("endpoint: {}", endpoint.url());
    println!("bucket:   s3://{}/ ({} objects of {} bytes)", args.bucket, g.objects, g.size);
    match credentials {
        Some((ak, sk)) => {
            println!("credentials: AWS_ACCESS_KEY_ID={ak} AWS_SECRET_ACCESS_KEY={sk}");
            println!(
                "try: AWS_ACCESS_KEY_ID={ak} AWS_SECRET_ACCESS_KEY={sk} s3uring --endpoint-url {} s3://{} /tmp/restore",
                endpoint.url(),
                args.bucket
            );
        }
        None => println!(
            "try: s3uring --endpoint-url {} --no-sign-request s3://{} /tmp/restore",
            endpoint.url(),
            args.bucket
        ),
    }
    let _ = tokio::signal::ctrl_c().await;
    let c = endpoint.fault_counts();
    println!(
        "served {} GETs; injected: {} SlowDown, {} InternalError, {} resets, {} truncated, {} slow, {} corrupted",
        c.gets, c.slowdown, c.internal, c.reset, c.truncate, c.slow, c.corrupt
    );
    if let Some(c) = endpoint.inflight_counts() {
        println!(
            "in-flight cap {}: {} GETs served, {} answered SlowDown; at most {} served at once",
            c.cap, c.served, c.refused, c.peak
        );
    }
    for r in endpoint.rate_limit_counts() {
        println!(
            "rate limit '{}': {} GETs served, {} answered SlowDown; {} HEAD and list requests served, {} answered SlowDown; GETs served from {:.3} s to {:.3} s; per second: {}",
            r.prefix,
            r.served,
            r.throttled,
            r.others_served,
            r.others_throttled,
            r.first_s,
            r.last_s,
            r.per_second.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
        );
    }
    Exit::Ok
}

async fn tune(args: TuneArgs) -> Exit {
    let setup = (|| {
        let cfg = base_config(&args.source, args.scratch.clone(), &args.s3)?;
        let workers = crate::cli::tune::parse_list(&args.workers_list, "--workers")?;
        let queues = crate::cli::tune::parse_list(&args.queue_list, "--queue")?;
        Ok::<_, String>((cfg, workers, queues))
    })();
    let (mut cfg, workers, queues) = match setup {
        Ok(v) => v,
        Err(msg) => {
            crate::say!("s3uring: error: {msg}");
            return Exit::Usage;
        }
    };
    cfg.io_engine = args.io_engine;
    let cells = match crate::cli::tune::sweep(&cfg, &workers, &queues, args.repeat as usize).await {
        Ok(c) => c,
        Err(msg) => {
            crate::say!("s3uring: error: {}", sanitize(&msg));
            return Exit::Usage;
        }
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match crate::cli::tune::write_results(&args.out, &cells, &cfg.source.to_string(), &command) {
        Ok(files) => {
            if let Ok(md) = std::fs::read_to_string(&files[1]) {
                crate::say_raw!("{md}");
            }
            crate::say!("wrote {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
            if cells.iter().any(|c| !c.summary.success()) { Exit::KeysFailed } else { Exit::Ok }
        }
        Err(msg) => {
            crate::say!("s3uring: error: {msg}");
            Exit::KeysFailed
        }
    }
}

async fn check(args: CheckArgs, matches: &clap::ArgMatches) -> Exit {
    let setup = (|| {
        let mut cfg = base_config(&args.source, args.dest.clone(), &args.s3)?;
        if cfg.source.object.is_some() {
            return Err(format!("SOURCE '{}' must be a bucket or a prefix ending in '/'", args.source));
        }
        if !args.dest.is_dir() {
            return Err(format!("DEST '{}' is not a directory", args.dest.display()));
        }
        if args.select.dry_run {
            return Err("check reads only the listing and DEST: --dry-run does not apply".to_owned());
        }
        cfg.selection = selection(&args.select, matches)?;
        Ok::<_, String>(cfg)
    })();
    let cfg = match setup {
        Ok(cfg) => cfg,
        Err(msg) => {
            crate::say!("s3uring: error: {msg}");
            return Exit::Usage;
        }
    };
    let audit = match crate::s3::client(&cfg.s3).await {
        Ok(control) => crate::audit::check(&cfg, &control, args.checksum).await,
        Err(e) => Err(e),
    };
    let audit = match audit {
        Ok(a) => a,
        Err(msg) => {
            crate::say!("s3uring: error: {}", sanitize(&msg));
            return Exit::Usage;
        }
    };
    for path in &audit.missing {
        crate::say!("missing: {}", sanitize(path));
    }
    for d in &audit.different {
        crate::say!("different: {}: {}", sanitize(&d.path), sanitize(&d.reason));
    }
    for path in &audit.extra {
        crate::say!("extra: {}", sanitize(path));
    }
    for key in &audit.refused {
        crate::say!("refused: '{}' names no safe path (a copy refuses it too)", sanitize(key));
    }
    crate::say!(
        "checked {} keys: {} ok ({} by content, {} by size and time only), {} missing, {} different, {} extra",
        audit.keys,
        audit.ok,
        audit.content_checked,
        audit.content_unchecked,
        audit.missing.len(),
        audit.different.len(),
        audit.extra.len()
    );
    if let Some(path) = &args.stats_json {
        let doc = serde_json::json!({
            "source": cfg.source.to_string(),
            "dest": cfg.dest.display().to_string(),
            "checksum": args.checksum,
            "audit": &audit,
        });
        let written = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string()).and_then(|text| {
            std::fs::write(path, text + "\n").map_err(|e| format!("cannot write '{}': {e}", path.display()))
        });
        if let Err(msg) = written {
            crate::say!("s3uring: error: {msg}");
            return Exit::KeysFailed;
        }
    }
    if audit.clean() { Exit::Ok } else { Exit::KeysFailed }
}
