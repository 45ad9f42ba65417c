//! Writing to the terminal: lines on stderr that never tear a live progress bar, the
//! `tracing` writer that does the same, how progress is shown, and keys made safe to print.
//!
//! Everything printed to stderr while a bar is live — failure lines, tracing logs — goes
//! through [`line`] / [`LogWriter`], which suspend the bar around the write, so the two never
//! interleave on one terminal line.
//!
//! With `--log-format json` each of these is one JSON object per line instead ([`event`]):
//! `timestamp`, `level`, `event` (what happened: `failed`, `skipped`, `progress`, `summary`,
//! `error`, `message`), `message` (the text line it replaces) and the event's own fields, for
//! log shippers. Keys are not escaped there: JSON strings carry any character safely.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;

/// The live bar, if any ([`show_bar`]): shared with [`line`] and the log writer.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn current_bar() -> Option<ProgressBar> {
    BAR.lock().ok().and_then(|b| b.clone())
}

/// Lines on stderr are JSON objects (`--log-format json`).
static JSON: AtomicBool = AtomicBool::new(false);

/// Writes stderr's lines as JSON objects from now on (`true`) or as text.
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Prints one line to stderr without tearing the progress bar (an `INFO` `message` event as
/// JSON).
pub fn line(s: &str) {
    event("INFO", "message", s, serde_json::Map::new());
}

/// An error that ends the run: `s3uring: error: MSG`, or an `error` event.
pub fn error(msg: &str) {
    event("ERROR", "error", &format!("s3uring: error: {msg}"), serde_json::Map::new());
}

/// One event on stderr: `text` as a line, or as JSON the object `{"timestamp", "level",
/// "event": kind, "message": text, ...fields}`.
pub fn event(level: &str, kind: &str, text: &str, fields: serde_json::Map<String, serde_json::Value>) {
    let out = if json() {
        let mut o = serde_json::Map::new();
        o.insert("timestamp".into(), now_rfc3339().into());
        o.insert("level".into(), level.into());
        o.insert("event".into(), kind.into());
        o.insert("message".into(), text.into());
        o.extend(fields);
        serde_json::Value::Object(o).to_string()
    } else {
        text.to_owned()
    };
    match current_bar() {
        Some(bar) => bar.suspend(|| crate::say!("{out}")),
        None => crate::say!("{out}"),
    }
}

/// Now, as RFC 3339 in UTC with milliseconds (`2026-12-07T21:17:03.512Z`).
fn now_rfc3339() -> String {
    let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
    let ms = aws_smithy_types::DateTime::from_millis(now.to_millis().unwrap_or_default());
    ms.fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_default()
}

/// A `tracing` writer that suspends the bar around each log record.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match current_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live bar (stderr is a terminal).
    Bar,
    /// A plain line every so often (stderr is a file or pipe).
    Lines(Duration),
    Off,
}

impl ProgressMode {
    /// The mode for this process: a bar on a terminal (unless lines are JSON), else lines
    /// every `interval` (0: none).
    pub fn detect(quiet: bool, interval: Duration) -> ProgressMode {
        if quiet {
            ProgressMode::Off
        } else if !json() && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressMode::Bar
        } else if interval.is_zero() {
            ProgressMode::Off
        } else {
            ProgressMode::Lines(interval)
        }
    }
}

/// Makes `bar` the live bar (`None`: no bar any more).
pub fn show_bar(bar: Option<ProgressBar>) {
    if let Ok(mut b) = BAR.lock() {
        *b = bar;
    }
}

/// Makes a key safe to print on a terminal: control characters and Unicode bidi/format
/// characters are escaped (`\u{202e}`), everything else is kept.
pub fn sanitize(s: &str) -> String {
    let needs = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}' | '\u{feff}')
    };
    if !s.chars().any(needs) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_terminal_tricks_only() {
        assert_eq!(sanitize("plain/ünï code.txt"), "plain/ünï code.txt");
        assert_eq!(sanitize("a\nb"), "a\\u{a}b");
        assert_eq!(sanitize("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
        assert_eq!(sanitize("\x1b[31mred"), "\\u{1b}[31mred");
    }
}
