//! Writing to the terminal: lines on stderr that never tear a live progress bar, the
//! `tracing` writer that does the same, how progress is shown, and keys made safe to print.
//!
//! Everything printed to stderr while a bar is live — failure lines, tracing logs — goes
//! through [`line`] / [`LogWriter`], which suspend the bar around the write, so the two never
//! interleave on one terminal line.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::ProgressBar;

/// The live bar, if any ([`show_bar`]): shared with [`line`] and the log writer.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn current_bar() -> Option<ProgressBar> {
    BAR.lock().ok().and_then(|b| b.clone())
}

/// Prints one line to stderr without tearing the progress bar.
pub fn line(s: &str) {
    match current_bar() {
        Some(bar) => bar.suspend(|| crate::say!("{s}")),
        None => crate::say!("{s}"),
    }
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
    /// The mode for this process: a bar on a terminal, else lines every `interval` (0: none).
    pub fn detect(quiet: bool, interval: Duration) -> ProgressMode {
        if quiet {
            ProgressMode::Off
        } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
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
