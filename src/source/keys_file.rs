//! `--keys-from FILE`: keys one per line, streamed in pages.

use crate::s3;

use crate::queue::KEYS_PER_PAGE;

/// Streams `--keys-from FILE` (`-`: stdin) in pages of keys, read on a blocking thread so the
/// file is never held in memory. A line is a key up to its first tab (so a `--failed-keys`
/// file can be fed back as it is); empty lines are ignored. Sizes and LastModified are not
/// known: such keys are fetched unless `--skip-existing` finds them.
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
        let mut page = Vec::with_capacity(KEYS_PER_PAGE);
        for (n, line) in std::io::BufReader::new(input).lines().enumerate() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.blocking_send(Err(format!("reading --keys-from '{shown}' line {}: {e}", n + 1)));
                    return;
                }
            };
            let key = line.split('\t').next().unwrap_or_default();
            if key.is_empty() {
                continue;
            }
            page.push(s3::ListedObject {
                key: key.to_owned(),
                size: s3::UNKNOWN_SIZE,
                last_modified: None,
                archived: None,
                etag: None,
            });
            if page.len() == KEYS_PER_PAGE && tx.blocking_send(Ok(std::mem::take(&mut page))).is_err() {
                return;
            }
        }
        if !page.is_empty() {
            let _ = tx.blocking_send(Ok(page));
        }
    });
    Ok(rx)
}
