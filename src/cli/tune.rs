//! `s3uring tune`: the tuning experiment as a command. Copies the same source once per cell
//! of a `--workers` × `--queue` grid into a scratch directory and writes what each cell did —
//! objects/s, client CPU per object, latency percentiles — as CSV, a Markdown table and an SVG
//! plot of objects/s against workers, one line per queue size.
//!
//! Every cell gets a fresh directory that is deleted after the cell; on ext4, deleting many
//! files slows the next creations (the allocator skips recently freed inodes), so a tmpfs
//! scratch directory measures the network side most cleanly.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use plotters::prelude::*;

use crate::config::Config;
use crate::report::{ProcessCpu, Report, Summary};
use crate::run;

/// One cell's result.
#[derive(Debug, Clone)]
pub struct Cell {
    pub workers: usize,
    pub queue: usize,
    pub rep: usize,
    pub summary: Summary,
    /// Client CPU µs per object during this cell alone.
    pub cpu_us: f64,
}

impl Cell {
    fn stage(&self, name: &str) -> (u64, u64) {
        self.summary.stages.iter().find(|s| s.stage == name).map_or((0, 0), |s| (s.p50_us, s.p99_us))
    }
}

/// Runs the grid. `base` is the copy's config (source, credentials, engine…); its dest is the
/// scratch directory.
pub async fn sweep(base: &Config, workers: &[usize], queues: &[usize], repeat: usize) -> Result<Vec<Cell>, String> {
    let scratch = base.dest.join(format!("s3uring-tune-{}", std::process::id()));
    let mut cells = Vec::new();
    for rep in 0..repeat.max(1) {
        for &w in workers {
            for &q in queues {
                let mut cfg = base.clone();
                cfg.workers = w;
                cfg.queue = q;
                cfg.dest = scratch.join(format!("w{w}-q{q}-r{rep}"));
                cfg.summary = false;
                let cpu0 = ProcessCpu::now().unwrap_or_default();
                let report = Arc::new(Report::silent());
                let started = Instant::now();
                let summary = run::run(&cfg, report).await.map_err(|e| e.to_string())?;
                let cpu1 = ProcessCpu::now().unwrap_or_default();
                let objects = summary.counters.counts.objects().max(1) as f64;
                let cpu_us =
                    ((cpu1.user + cpu1.sys).as_secs_f64() - (cpu0.user + cpu0.sys).as_secs_f64()) * 1e6 / objects;
                let cell = Cell { workers: w, queue: q, rep, summary, cpu_us };
                crate::say!(
                    "workers {w:>5} queue {q:>6} rep {rep}: {:>8.0} objects/s, {:>5.0} µs CPU/object, {} failed ({:.1} s)",
                    cell.summary.throughput.objects_per_s,
                    cpu_us,
                    cell.summary.counters.counts.failed,
                    started.elapsed().as_secs_f64()
                );
                let dest = cfg.dest.clone();
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dest)).await;
                cells.push(cell);
            }
        }
    }
    let _ = std::fs::remove_dir(&scratch);
    Ok(cells)
}

/// Writes `tune.csv`, `tune.md` and `tune.svg` into `out`.
pub fn write_results(out: &Path, cells: &[Cell], source: &str, command: &str) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create '{}': {e}", out.display()))?;
    let mut csv = String::from(
        "workers,queue,rep,objects,failed,seconds,objects_per_sec,mib_per_sec,cpu_us_per_object,ttfb_p50_us,ttfb_p99_us,total_p50_us,total_p99_us\n",
    );
    for c in cells {
        let s = &c.summary;
        let (t50, t99) = c.stage("ttfb");
        let (a50, a99) = c.stage("total");
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{:.3},{:.0},{:.2},{:.1},{t50},{t99},{a50},{a99}",
            c.workers,
            c.queue,
            c.rep,
            s.counters.counts.objects(),
            s.counters.counts.failed,
            s.elapsed.as_secs_f64(),
            s.throughput.objects_per_s,
            s.throughput.mib_per_s,
            c.cpu_us
        );
    }
    let mut md = format!(
        "# s3uring tune: {source}\n\n- command: `{command}`\n- machine: {} cores, kernel {}\n\n\
         | workers | queue | runs | median objects/s | median CPU µs/object | ttfb p50 / p99 | total p99 |\n|---|---|---|---|---|---|---|\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    let groups = grouped(cells);
    let best = groups.iter().max_by(|a, b| a.2.total_cmp(&b.2)).map(|g| (g.0, g.1));
    for (w, q, ops, cpu, rep) in &groups {
        let (t50, t99) = rep.stage("ttfb");
        let (_, a99) = rep.stage("total");
        let mark = if best == Some((*w, *q)) { " **best**" } else { "" };
        let _ = writeln!(
            md,
            "| {w} | {q} | {} | {ops:.0}{mark} | {cpu:.0} | {} / {} | {} |",
            cells.iter().filter(|c| c.workers == *w && c.queue == *q).count(),
            crate::report::stats::fmt_us(t50),
            crate::report::stats::fmt_us(t99),
            crate::report::stats::fmt_us(a99)
        );
    }
    let files = vec![out.join("tune.csv"), out.join("tune.md"), out.join("tune.svg")];
    std::fs::write(&files[0], csv).map_err(|e| format!("cannot write '{}': {e}", files[0].display()))?;
    std::fs::write(&files[1], md).map_err(|e| format!("cannot write '{}': {e}", files[1].display()))?;
    plot(&files[2], &groups).map_err(|e| format!("cannot draw '{}': {e}", files[2].display()))?;
    Ok(files)
}

/// (workers, queue, median objects/s, median CPU µs/object, the median run) per cell.
fn grouped(cells: &[Cell]) -> Vec<(usize, usize, f64, f64, &Cell)> {
    let mut keys: Vec<(usize, usize)> = cells.iter().map(|c| (c.workers, c.queue)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter_map(|(w, q)| {
            let mut runs: Vec<&Cell> = cells.iter().filter(|c| c.workers == w && c.queue == q).collect();
            runs.sort_by(|a, b| a.summary.throughput.objects_per_s.total_cmp(&b.summary.throughput.objects_per_s));
            let mid = *runs.get(runs.len() / 2)?;
            let mut cpus: Vec<f64> = runs.iter().map(|c| c.cpu_us).collect();
            cpus.sort_by(f64::total_cmp);
            Some((w, q, mid.summary.throughput.objects_per_s, cpus[cpus.len() / 2], mid))
        })
        .collect()
}

fn plot(path: &Path, groups: &[(usize, usize, f64, f64, &Cell)]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_w = groups.iter().map(|g| g.0).max().unwrap_or(1).max(2) as f64;
    let min_w = groups.iter().map(|g| g.0).min().unwrap_or(1).max(1) as f64;
    let max_ops = groups.iter().map(|g| g.2).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("objects/s by --workers, one line per --queue", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((min_w * 0.8..max_w * 1.25).log_scale(), 0.0..max_ops)?;
    chart
        .configure_mesh()
        .x_desc("--workers")
        .y_desc("objects/s")
        .x_labels(8)
        .max_light_lines(2)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let mut queues: Vec<usize> = groups.iter().map(|g| g.1).collect();
    queues.sort_unstable();
    queues.dedup();
    for (i, q) in queues.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = groups.iter().filter(|g| g.1 == *q).map(|g| (g.0 as f64, g.2)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(format!("--queue {q}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(points.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled())))?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    root.present()?;
    Ok(())
}

/// Parses `50,200,1000` into a sorted list of positive numbers.
pub fn parse_list(s: &str, what: &str) -> Result<Vec<usize>, String> {
    let mut v = s
        .split(',')
        .map(|x| {
            x.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or(format!("{what}: '{x}' is not a positive number"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_parse_and_reject_garbage() {
        assert_eq!(super::parse_list("200, 50,1000,50", "--workers").unwrap(), vec![50, 200, 1000]);
        assert!(super::parse_list("50,x", "--workers").unwrap_err().contains("'x'"));
        assert!(super::parse_list("0", "--queue").is_err());
    }
}
