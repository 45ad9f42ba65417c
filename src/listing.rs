//! Parallel listing (`--list-workers N`, issue #6).
//!
//! ListObjectsV2 returns at most 1,000 keys per request and each page needs the previous
//! one's continuation token: 1,000,000 keys at 30 ms a page is 30 s of listing in one line.
//! Here `N` workers share a queue of *scopes*, each `(prefix, after, until]`:
//!
//! - **Fan out over common prefixes.** Every scope is listed with delimiter `/`; each common
//!   prefix on a page becomes a scope of its own, listed concurrently.
//! - **Split flat ranges.** When a scope's first page is truncated, the rest of its range is
//!   cut at boundaries guessed from that page — for the page's last key, each character
//!   position above where the page's keys start to differ, stepped through its alphabet
//!   (`obj00000999` → `obj00001` … `obj00009`, `obj0001` … `obj0009`, `obj001` …) — and each
//!   piece `(b_i, b_i+1]` becomes a scope (listed with `start-after = b_i`, stopping after
//!   `b_i+1`). Boundaries are exclusive-start, inclusive-end, so the pieces partition the range
//!   exactly whatever the keys are: a wrong guess costs one request, never a key twice or
//!   missed. A piece splits again the same way when its own first page is truncated.
//!
//! Pages flow into the same channel as a sequential listing, so everything downstream (the
//! selection, the bounded key queue, the fetchers) is unchanged and memory stays bounded by
//! the channel and the scope queue, not by the bucket.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::report::Report;
use crate::s3::{self, ListedObject};
use crate::stats::Stage;

/// A range of keys to list: under `prefix`, strictly after `after`, up to `until` inclusive.
#[derive(Debug, Clone)]
struct Scope {
    prefix: String,
    after: Option<String>,
    until: Option<String>,
}

/// Scopes created at most by range splitting (fan-out over prefixes is not limited).
const MAX_SPLITS: usize = 100_000;

/// A page of listed objects, or the error that ended the listing.
pub type PageResult = Result<Vec<ListedObject>, String>;

/// Starts `workers` listers over `prefix`; pages arrive on the returned channel, which
/// closes when everything is listed (or after the first error).
pub fn start(
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    workers: usize,
    report: Arc<Report>,
) -> tokio::sync::mpsc::Receiver<PageResult> {
    let (pages_tx, pages_rx) = tokio::sync::mpsc::channel(workers.max(1) * 2);
    let (work_tx, work_rx) = async_channel::unbounded::<Scope>();
    let shared = Arc::new(Shared {
        client,
        bucket,
        pending: AtomicUsize::new(1),
        splits: AtomicUsize::new(0),
        work: work_tx.clone(),
        pages: pages_tx,
        report,
    });
    // The root scope; `pending` counts scopes queued or being listed.
    let _ = work_tx.try_send(Scope { prefix, after: None, until: None });
    drop(work_tx);
    for _ in 0..workers.max(1) {
        let (shared, work_rx) = (shared.clone(), work_rx.clone());
        tokio::spawn(async move {
            while let Ok(scope) = work_rx.recv().await {
                let ok = shared.list_scope(scope).await;
                if !ok || shared.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // Everything listed, or an error: stop all workers.
                    shared.work.close();
                }
            }
        });
    }
    pages_rx
}

struct Shared {
    client: aws_sdk_s3::Client,
    bucket: String,
    pending: AtomicUsize,
    splits: AtomicUsize,
    work: async_channel::Sender<Scope>,
    pages: tokio::sync::mpsc::Sender<PageResult>,
    report: Arc<Report>,
}

impl Shared {
    fn push(&self, scope: Scope) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.work.try_send(scope).is_err() {
            // Closed after an error: nothing more is listed.
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Lists one scope to its end (or hands its rest on as smaller scopes); false after an
    /// error, which has been sent on as the last page.
    async fn list_scope(&self, scope: Scope) -> bool {
        let mut rec = self.report.recorder();
        let mut token = None;
        let mut first = true;
        loop {
            let asked = Instant::now();
            let page =
                s3::list_page(&self.client, &self.bucket, &scope.prefix, true, scope.after.as_deref(), token.take())
                    .await;
            rec.record(Stage::List, asked.elapsed());
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.pages.send(Err(e)).await;
                    return false;
                }
            };
            let within = |k: &str| scope.until.as_deref().is_none_or(|u| k <= u);
            // After a `start-after` inside a "directory", S3 returns that common prefix again
            // (its later keys roll up into it): it belongs to the piece that ends at or after
            // it, which has already pushed it.
            let fresh = |k: &str| scope.after.as_deref().is_none_or(|a| k > a);
            let mut past_end = false;
            let mut last: Option<String> = None;
            for cp in page.common_prefixes.iter().filter(|cp| fresh(cp)) {
                if !within(cp) {
                    past_end = true;
                    continue;
                }
                // The scope's own prefix comes back as a common prefix when it ends in '/'.
                if *cp != scope.prefix {
                    self.push(Scope { prefix: cp.clone(), after: None, until: None });
                }
            }
            let objects: Vec<ListedObject> = page
                .objects
                .into_iter()
                .filter(|o| {
                    let keep = within(&o.key);
                    past_end |= !keep;
                    keep
                })
                .collect();
            for k in objects.iter().map(|o| &o.key).chain(page.common_prefixes.iter()) {
                if within(k) && fresh(k) && last.as_ref().is_none_or(|l| k > l) {
                    last = Some(k.clone());
                }
            }
            let split_from = (first && page.next.is_some() && !past_end).then(|| last.clone()).flatten();
            let boundaries = split_from
                .as_deref()
                .map(|from| boundaries(&objects, &scope, from))
                .filter(|b| !b.is_empty() && self.splits.fetch_add(b.len(), Ordering::Relaxed) < MAX_SPLITS);
            if !objects.is_empty() && self.pages.send(Ok(objects)).await.is_err() {
                return false; // the consumer stopped (interrupted)
            }
            if let (Some(from), Some(bounds)) = (split_from, boundaries) {
                // The rest of this scope, (from, until], in pieces.
                let mut lo = from;
                for b in bounds {
                    self.push(Scope { prefix: scope.prefix.clone(), after: Some(lo), until: Some(b.clone()) });
                    lo = b;
                }
                self.push(Scope { prefix: scope.prefix.clone(), after: Some(lo), until: scope.until.clone() });
                return true;
            }
            first = false;
            match page.next {
                Some(t) if !past_end => token = Some(t),
                _ => return true,
            }
        }
    }
}

/// Split points for the rest of a scope after a first page ending at `from`: ascending,
/// strictly between `from` and the scope's `until`, and within its prefix.
fn boundaries(objects: &[ListedObject], scope: &Scope, from: &str) -> Vec<String> {
    let first = objects.first().map_or(from, |o| o.key.as_str());
    let common = first.bytes().zip(from.bytes()).take_while(|(a, b)| a == b).count();
    let start = scope.prefix.len();
    let bytes = from.as_bytes();
    let mut out = Vec::new();
    // Deepest position first: that order is ascending.
    for p in (start..common.min(bytes.len())).rev() {
        let c = bytes[p];
        let alphabet: &[u8] = match c {
            b'0'..=b'9' => b"0123456789",
            b'a'..=b'z' => b"abcdefghijklmnopqrstuvwxyz",
            b'A'..=b'Z' => b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            _ => continue,
        };
        for &next in alphabet.iter().filter(|&&n| n > c) {
            let mut b = bytes[..p].to_vec();
            b.push(next);
            // Only ASCII was changed, at a char boundary: still UTF-8.
            if let Ok(b) = String::from_utf8(b)
                && b.as_str() > from
                && scope.until.as_deref().is_none_or(|u| b.as_str() < u)
            {
                out.push(b);
            }
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(k: &str) -> ListedObject {
        ListedObject { key: k.to_owned(), size: 0, last_modified: None }
    }

    #[test]
    fn boundaries_step_through_the_varying_positions_in_order() {
        let scope = Scope { prefix: "d/".into(), after: None, until: None };
        let page = [obj("d/obj00000000"), obj("d/obj00000999")];
        let b = boundaries(&page, &scope, "d/obj00000999");
        assert_eq!(&b[..3], ["d/obj00001", "d/obj00002", "d/obj00003"]);
        assert!(b.contains(&"d/obj1".to_owned()) && b.contains(&"d/p".to_owned()) && b.contains(&"d/z".to_owned()));
        assert!(b.windows(2).all(|w| w[0] < w[1]), "ascending: {b:?}");
        assert!(b.iter().all(|x| x.starts_with("d/")), "within the prefix");
        // Within an upper bound only.
        let bounded = Scope { until: Some("d/obj00005".into()), ..scope };
        let b = boundaries(&page, &bounded, "d/obj00000999");
        assert_eq!(b, ["d/obj00001", "d/obj00002", "d/obj00003", "d/obj00004"]);
    }
}
