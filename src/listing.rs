//! Parallel listing (`--list-workers N`, issue #6).
//!
//! ListObjectsV2 returns at most 1,000 keys per request and each page needs the previous
//! one's continuation token: 1,000,000 keys at 30 ms a page is 30 s of listing in one line.
//! Here `N` workers share a queue of *scopes*, each `(prefix, after, until]`:
//!
//! - **Fan out over common prefixes.** Every scope is listed with delimiter `/`; each common
//!   prefix on a page becomes a scope of its own, listed concurrently.
//! - **Split flat ranges.** When a scope's first page is truncated, the rest of its range is
//!   cut at boundaries guessed from that page — the page's last key, stepped through its
//!   alphabet at the deepest position above where the page's keys differ that has room
//!   (`obj00000999` → `obj00001` … `obj00009`; `obj00009999` → `obj0001` … `obj0009`) — and each
//!   piece `(b_i, b_i+1]` becomes a scope (listed with `start-after = b_i`, stopping after
//!   `b_i+1`). Boundaries are exclusive-start, inclusive-end, so the pieces partition the range
//!   exactly whatever the keys are: a wrong guess costs one request, never a key twice or
//!   missed. A piece splits again the same way when its own first page is truncated.
//!
//! - **Only as fast as needed.** Listing in parallel costs CPU (more, smaller pages; a split
//!   costs an extra request or two) and memory (each answered page is ~1,000 parsed keys),
//!   which a fast copy needs for fetching. Ranges are split, and requests started beside
//!   others, only while the key queue is less than half full (the fetchers are about to
//!   starve), and the number of requests allowed at once adapts: doubled when a request
//!   completes and the queue is still hungry, halved when it is not. With S3's 30–100 ms per
//!   page it climbs to `--list-workers` in a few round trips; against a fast endpoint one or
//!   two requests keep the queue full, and 30 pages are not parsed at once for nothing
//!   (1 M keys: 65 → 5x MiB peak RSS, and less CPU per key).
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
    hungry: Box<dyn Fn() -> bool + Send + Sync>,
    requester_pays: bool,
) -> tokio::sync::mpsc::Receiver<PageResult> {
    // Two pages of slack: the bounded key queue downstream is the buffer; listers that get
    // ahead of the fetchers wait here instead of holding pages in memory.
    let (pages_tx, pages_rx) = tokio::sync::mpsc::channel(2);
    let (work_tx, work_rx) = async_channel::unbounded::<Scope>();
    let shared = Arc::new(Shared {
        client,
        bucket,
        pending: AtomicUsize::new(1),
        splits: AtomicUsize::new(0),
        requests: AtomicUsize::new(0),
        allowed: AtomicUsize::new(1),
        max_requests: workers.max(1),
        request_done: tokio::sync::Notify::new(),
        hungry,
        requester_pays,
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
    /// List requests in flight, and answered pages not yet handed on.
    requests: AtomicUsize,
    /// List requests allowed in flight at once (adapts; see the module notes).
    allowed: AtomicUsize,
    max_requests: usize,
    request_done: tokio::sync::Notify,
    /// Whether the key queue needs more keys soon.
    hungry: Box<dyn Fn() -> bool + Send + Sync>,
    requester_pays: bool,
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

    /// Waits for the right to send a list request: always when none is in flight, beside
    /// others only while the key queue is hungry (and fewer than allowed are in flight).
    async fn request_slot(&self) -> RequestSlot<'_> {
        loop {
            let done = self.request_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            let n = self.requests.load(Ordering::Acquire);
            if (n == 0 || (n < self.allowed.load(Ordering::Relaxed) && (self.hungry)()))
                && self.requests.compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                return RequestSlot(self);
            }
            // Look again when a request completes (not on a timer: 32 idle listers polling
            // cost a fast copy ~7 µs of CPU per object).
            done.await;
        }
    }

    /// Lists one scope to its end (or hands its rest on as smaller scopes); false after an
    /// error, which has been sent on as the last page.
    async fn list_scope(&self, scope: Scope) -> bool {
        let mut rec = self.report.recorder();
        let mut token = None;
        let mut first = true;
        loop {
            // Held until this page is handed on: an answered page waiting for room downstream
            // counts like a request in flight, so waiting pages are bounded as well.
            let _slot = self.request_slot().await;
            let asked = Instant::now();
            let page = s3::list_page(
                &self.client,
                &self.bucket,
                &scope.prefix,
                true,
                scope.after.as_deref(),
                token.take(),
                self.requester_pays,
            )
            .await;
            let allowed = self.allowed.load(Ordering::Relaxed);
            let next = if (self.hungry)() { (allowed * 2).min(self.max_requests) } else { (allowed / 2).max(1) };
            self.allowed.store(next, Ordering::Relaxed);
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
            // Split only while the fetchers are short of keys: a split costs requests (and the
            // client's CPU), which is waste when fetching is the bottleneck anyway.
            let split_from =
                (first && page.next.is_some() && !past_end && (self.hungry)()).then(|| last.clone()).flatten();
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

/// A list request's place (see [`Shared::request_slot`]); released on drop.
struct RequestSlot<'a>(&'a Shared);

impl Drop for RequestSlot<'_> {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
        self.0.request_done.notify_waiters();
    }
}

/// Split points for the rest of a scope after a first page ending at `from`: ascending,
/// strictly between `from` and the scope's `until`, and within its prefix.
fn boundaries(objects: &[ListedObject], scope: &Scope, from: &str) -> Vec<String> {
    let first = objects.first().map_or(from, |o| o.key.as_str());
    let common = first.bytes().zip(from.bytes()).take_while(|(a, b)| a == b).count();
    let start = scope.prefix.len();
    let bytes = from.as_bytes();
    // The deepest position above where the page's keys differ that can still be stepped up:
    // its steps make pieces about one page apart in a dense key space. Shallower positions
    // are left to the last piece, which splits again the same way when its first page is
    // truncated, so a large range fans out in a few rounds and few pieces come back empty.
    for p in (start..common.min(bytes.len())).rev() {
        let c = bytes[p];
        let alphabet: &[u8] = match c {
            b'0'..=b'9' => b"0123456789",
            b'a'..=b'z' => b"abcdefghijklmnopqrstuvwxyz",
            b'A'..=b'Z' => b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            _ => continue,
        };
        let out: Vec<String> = alphabet
            .iter()
            .filter(|&&n| n > c)
            .filter_map(|&next| {
                let mut b = bytes[..p].to_vec();
                b.push(next);
                // Only ASCII was changed, at a char boundary: still UTF-8.
                String::from_utf8(b).ok()
            })
            .filter(|b| b.as_str() > from && scope.until.as_deref().is_none_or(|u| b.as_str() < u))
            .collect();
        if !out.is_empty() {
            return out;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(k: &str) -> ListedObject {
        ListedObject { key: k.to_owned(), size: 0, last_modified: None, archived: None, etag: None }
    }

    #[test]
    fn boundaries_step_through_the_varying_positions_in_order() {
        let scope = Scope { prefix: "d/".into(), after: None, until: None };
        let page = [obj("d/obj00000000"), obj("d/obj00000999")];
        let b = boundaries(&page, &scope, "d/obj00000999");
        assert_eq!(b.len(), 9);
        assert_eq!(&b[..3], ["d/obj00001", "d/obj00002", "d/obj00003"]);
        assert!(b.windows(2).all(|w| w[0] < w[1]), "ascending: {b:?}");
        // No room at the deepest position: one position up.
        let page = [obj("d/obj00009000"), obj("d/obj00009999")];
        let b = boundaries(&page, &scope, "d/obj00009999");
        assert_eq!(&b[..2], ["d/obj0001", "d/obj0002"]);
        let words = [obj("d/aaa"), obj("d/abz")];
        assert_eq!(boundaries(&words, &scope, "d/abz")[0], "d/b", "letters step too");
        // Within an upper bound only.
        let bounded = Scope { until: Some("d/obj00005".into()), ..scope };
        let first_page = [obj("d/obj00000000"), obj("d/obj00000999")];
        let b = boundaries(&first_page, &bounded, "d/obj00000999");
        assert_eq!(b, ["d/obj00001", "d/obj00002", "d/obj00003", "d/obj00004"]);
    }
}
