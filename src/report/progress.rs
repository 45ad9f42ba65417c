//! Live progress on stderr: a bar (indicatif) on a terminal, one plain line every
//! `--progress-interval` seconds otherwise (logs, CI), nothing with `--quiet`.
//!
//! Everything else printed to stderr while a bar is live goes through [`crate::console`],
//! which suspends the bar around the write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::console::{self, ProgressMode as Mode};
use crate::report::Report;

/// A running progress display; [`Progress::finish`] removes the bar.
pub struct Progress {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(report: Arc<Report>, mode: Mode) -> Option<Progress> {
        let tick = match mode {
            Mode::Off => return None,
            Mode::Bar => Duration::from_millis(200),
            Mode::Lines(every) => every,
        };
        let bar = (mode == Mode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            console::show_bar(Some(bar.clone()));
            bar
        });
        let stop = Arc::new(tokio::sync::Notify::new());
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::select! {
                    () = stop2.notified() => break,
                    () = tokio::time::sleep(tick) => {}
                }
                let msg = status_line(&report, started.elapsed());
                match &bar {
                    Some(bar) => {
                        bar.set_message(msg);
                        bar.tick();
                    }
                    None => {
                        let fields = status_fields(&report, started.elapsed());
                        console::event("INFO", "progress", &format!("progress: {msg}"), fields);
                    }
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            console::show_bar(None);
        });
        Some(Progress { stop, task })
    }

    pub async fn finish(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

/// The progress line's figures for a JSON `progress` event: the counters as in the stats
/// JSON (`listed`, `written`, `skipped`, `failed`, `bytes`, …), `done`, `listing_ended`,
/// `elapsed_s`, `objects_per_s`, `mib_per_s`.
pub fn status_fields(report: &Report, elapsed: Duration) -> serde_json::Map<String, serde_json::Value> {
    let c = report.counts();
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mut fields = crate::report::object(serde_json::to_value(c).unwrap_or_default());
    let extra = serde_json::json!({
        "done": c.written + c.dirs + c.skipped + c.failed,
        "listing_ended": report.listing_ended(),
        "elapsed_s": elapsed.as_secs_f64(),
        "objects_per_s": (c.written + c.dirs + c.skipped) as f64 / secs,
        "mib_per_s": c.bytes as f64 / (1 << 20) as f64 / secs,
    });
    fields.extend(crate::report::object(extra));
    fields
}

/// `12000/20000 objects · 46.9 MiB · 8400 obj/s · 32.8 MiB/s · 0 failed · ETA 1s`
pub fn status_line(report: &Report, elapsed: Duration) -> String {
    let c = report.counts();
    let done = c.written + c.dirs + c.skipped + c.failed;
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = (c.written + c.dirs + c.skipped) as f64 / secs;
    let mib = c.bytes as f64 / (1 << 20) as f64;
    let (total, eta) = if report.listing_ended() {
        let left = c.listed.saturating_sub(done) as f64;
        let eta = if rate > 0.0 { format!(" · ETA {:.0}s", left / rate) } else { String::new() };
        (format!("{}", c.listed), eta)
    } else {
        (format!("{}+ (listing)", c.listed), String::new())
    };
    format!(
        "{done}/{total} objects · {mib:.1} MiB · {rate:.0} obj/s · {:.1} MiB/s · {} failed{eta}",
        mib / secs,
        c.failed
    )
}
