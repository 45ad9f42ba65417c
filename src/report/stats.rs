//! Per-stage latency histograms (hdrhistogram, microseconds).
//!
//! Stages of one object, in order:
//! - `list`: one ListObjectsV2 page, request to parsed response;
//! - `queue`: a key's wait between being listed and picked by a fetcher;
//! - `ttfb`: GET sent to response headers;
//! - `body`: headers to last body byte;
//! - `handoff`: body complete to the writer taking it;
//! - `write`: the file's chain submitted to its last completion (threads engine: the syscalls);
//! - `total`: picked by a fetcher to durable at its final path.
//!
//! Recording must not become a lock per sample on the hot path: each task records into a
//! small local buffer ([`Recorder`]) that is merged into the shared histograms once per
//! [`FLUSH_EVERY`] samples and when the task ends. A per-task histogram would cost tens of
//! KiB per task — too much at 2,000 workers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The stages, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    List = 0,
    Queue,
    Ttfb,
    Body,
    Handoff,
    Write,
    Total,
}

impl Stage {
    pub const ALL: [Stage; 7] =
        [Stage::List, Stage::Queue, Stage::Ttfb, Stage::Body, Stage::Handoff, Stage::Write, Stage::Total];

    /// The stage's name in the table and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stage::List => "list",
            Stage::Queue => "queue",
            Stage::Ttfb => "ttfb",
            Stage::Body => "body",
            Stage::Handoff => "handoff",
            Stage::Write => "write",
            Stage::Total => "total",
        }
    }
}

/// Samples a [`Recorder`] keeps before merging them into the shared histograms.
pub const FLUSH_EVERY: usize = 256;
/// Longest latency tracked: one hour, in microseconds; longer ones are clamped.
const MAX_US: u64 = 3_600_000_000;

/// One histogram per stage.
#[derive(Debug, Clone)]
pub struct Stages {
    h: Vec<Histogram<u64>>,
}

impl Default for Stages {
    fn default() -> Self {
        Stages::new()
    }
}

impl Stages {
    pub fn new() -> Stages {
        let h = Stage::ALL
            .iter()
            // 3 significant digits over 1 µs .. 1 h: constant bounds, valid by construction.
            .map(|_| Histogram::new_with_bounds(1, MAX_US, 3).expect("constant bounds are valid"))
            .collect();
        Stages { h }
    }

    pub fn record_us(&mut self, stage: Stage, us: u64) {
        let _ = self.h[stage as usize].record(us.clamp(1, MAX_US));
    }

    pub fn record(&mut self, stage: Stage, d: Duration) {
        self.record_us(stage, d.as_micros().min(u128::from(MAX_US)) as u64);
    }

    pub fn get(&self, stage: Stage) -> &Histogram<u64> {
        &self.h[stage as usize]
    }

    /// Percentiles of every stage that has samples.
    pub fn snapshot(&self) -> Vec<StageStats> {
        Stage::ALL
            .iter()
            .filter(|s| !self.get(**s).is_empty())
            .map(|&s| {
                let h = self.get(s);
                StageStats {
                    stage: s.name(),
                    count: h.len(),
                    mean_us: h.mean(),
                    p50_us: h.value_at_quantile(0.50),
                    p90_us: h.value_at_quantile(0.90),
                    p99_us: h.value_at_quantile(0.99),
                    p999_us: h.value_at_quantile(0.999),
                    max_us: h.max(),
                }
            })
            .collect()
    }
}

/// Percentiles of one stage, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct StageStats {
    /// The stage's name (the key of its object in the stats JSON).
    #[serde(skip)]
    pub stage: &'static str,
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The shared histograms every task merges into.
#[derive(Debug, Clone, Default)]
pub struct StageSink {
    inner: Arc<Mutex<Stages>>,
}

impl StageSink {
    pub fn recorder(&self) -> Recorder {
        Recorder { buf: Vec::with_capacity(FLUSH_EVERY), sink: self.inner.clone() }
    }

    pub fn snapshot(&self) -> Vec<StageStats> {
        self.inner.lock().map(|s| s.snapshot()).unwrap_or_default()
    }
}

/// A task's local buffer of samples; flushed every [`FLUSH_EVERY`] samples and on drop.
#[derive(Debug)]
pub struct Recorder {
    buf: Vec<(Stage, u64)>,
    sink: Arc<Mutex<Stages>>,
}

impl Recorder {
    pub fn record(&mut self, stage: Stage, d: Duration) {
        self.buf.push((stage, d.as_micros().min(u128::from(MAX_US)) as u64));
        if self.buf.len() >= FLUSH_EVERY {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Ok(mut s) = self.sink.lock() {
            for (stage, us) in self.buf.drain(..) {
                s.record_us(stage, us);
            }
        }
        self.buf.clear();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// `1234` µs → `1.23 ms`, for the table.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// The end-of-run table: count and percentiles per stage.
pub fn render_table(stats: &[StageStats]) -> String {
    let mut s = format!(
        "{:<8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "stage", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for st in stats {
        s += &format!(
            "{:<8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            st.stage,
            st.count,
            fmt_us(st.p50_us),
            fmt_us(st.p90_us),
            fmt_us(st.p99_us),
            fmt_us(st.p999_us),
            fmt_us(st.max_us)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_merge_into_the_sink() {
        let sink = StageSink::default();
        let mut a = sink.recorder();
        let mut b = sink.recorder();
        for i in 1..=1000u64 {
            a.record(Stage::Ttfb, Duration::from_micros(i));
            b.record(Stage::Write, Duration::from_millis(2));
        }
        // Not yet flushed past the last full buffer.
        drop(a);
        drop(b);
        let snap = sink.snapshot();
        let ttfb = snap.iter().find(|s| s.stage == "ttfb").unwrap();
        assert_eq!(ttfb.count, 1000);
        assert!((495..=505).contains(&ttfb.p50_us), "{}", ttfb.p50_us);
        assert!(ttfb.max_us >= 999);
        let write = snap.iter().find(|s| s.stage == "write").unwrap();
        assert_eq!((write.count, write.p50_us / 10), (1000, 200));
        assert!(!snap.iter().any(|s| s.stage == "list"), "empty stages are left out");
        assert!(render_table(&snap).contains("ttfb"));
    }

    #[test]
    fn durations_format_readably() {
        assert_eq!(fmt_us(12), "12 µs");
        assert_eq!(fmt_us(1500), "1.50 ms");
        assert_eq!(fmt_us(2_500_000), "2.50 s");
    }
}
