//! `--keys-from FILE`: keys one per line, streamed in pages.

use crate::s3;

use crate::queue::KEYS_PER_PAGE;

/// Streams `--keys-from FILE` (`-`: stdin) in pages of keys, read on a blocking thread so the
/// file is never held in memory. A line is a key up to its first tab (so a `--failed-keys`
/// file can be fed back as it is); empty lines are ignored. Sizes and LastModified are not
/// known: such keys are fetched unless `--skip-existing` finds them.
///
/// A page goes out when it is full or when everything read so far is used up, so keys from a
/// pipe whose writer pauses are copied while it does, not when a page has gathered.
pub fn read_keys(
    path: &std::path::Path,
) -> Result<tokio::sync::mpsc::Receiver<Result<Vec<s3::ListedObject>, String>>, String> {
    use std::io::BufRead as _;
    let shown = path.display().to_string();
    let input: Box<dyn std::io::Read + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| format!("cannot read --keys-from '{shown}': {e}"))?)
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        // Large enough that a file gives mostly full pages (one short page per buffer at most).
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, input);
        let mut page = Vec::with_capacity(KEYS_PER_PAGE);
        let mut line = String::new();
        for n in 1u64.. {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(format!("reading --keys-from '{shown}' line {n}: {e}")));
                    return;
                }
            }
            let text = line.strip_suffix('\n').unwrap_or(&line);
            let text = text.strip_suffix('\r').unwrap_or(text);
            let key = text.split('\t').next().unwrap_or_default();
            if !key.is_empty() {
                page.push(s3::ListedObject {
                    key: key.to_owned(),
                    size: s3::UNKNOWN_SIZE,
                    last_modified: None,
                    archived: None,
                    etag: None,
                });
            }
            let send = page.len() == KEYS_PER_PAGE || (!page.is_empty() && reader.buffer().is_empty());
            if send && tx.blocking_send(Ok(std::mem::take(&mut page))).is_err() {
                return;
            }
        }
        if !page.is_empty() {
            let _ = tx.blocking_send(Ok(page));
        }
    });
    Ok(rx)
}
