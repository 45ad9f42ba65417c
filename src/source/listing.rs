//! Parallel listing (`--list-workers N`).
//!
//! ListObjectsV2 returns at most 1,000 keys per request and each page needs the previous
//! one's continuation token: 1,000,000 keys at 30 ms a page is 30 s of listing in one line.
//! Here `N` workers share a queue of key *ranges* `(after, until]` under SOURCE's prefix, each
//! listed flat (no delimiter) with `start-after = after`, stopping after `until`.
//!
//! - **Only what a sequential listing relies on.** Lexicographic order and `start-after`:
//!   the ranges partition the key space exactly (exclusive start, inclusive end), whatever
//!   the keys are, so the pieces together hold exactly the keys one flat listing would — no
//!   delimiter listing (which some stores get wrong, silently) is ever trusted, and the
//!   number of requests does not depend on the layout: one per ~1,000 keys whether the
//!   bucket is flat, nested, or one object per "directory".
//! - **Split by estimated density.** When a range's page is truncated and a lister is idle,
//!   the rest of the range is cut at boundaries interpolated in key space: keys read as
//!   numbers in the alphabet the page's keys use, the page's span tells how many keys a unit
//!   of key space holds. A bounded range is cut into even pieces of ~8 pages (at most 64);
//!   the open end of the key space into pieces that double from 8 pages' worth. Where the
//!   guess is wrong (keys cluster), a piece comes back empty (one request: a probe) or is
//!   truncated and splits again the same way; no key is ever missed or listed twice.
//! - **Only as fast as needed.** Listing in parallel costs CPU and memory (each answered page
//!   is ~1,000 parsed keys), which a fast copy needs for fetching. Ranges are split only
//!   while the key queue is less than half full (the fetchers are about to starve) and a
//!   lister is idle, and the number of requests in flight adapts: doubled when a request
//!   completes and the queue is still hungry, halved when it is not. With S3's 30–100 ms per
//!   page it climbs to `--list-workers` in a few round trips; against a fast endpoint one or
//!   two requests keep the queue full.
//!
//! Pages flow into the same channel as a sequential listing, so everything downstream (the
//! selection, the bounded key queue, the fetchers) is unchanged and memory stays bounded by
//! the channel and the range queue (at most [`MAX_SPLITS`] ranges), not by the bucket.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::config::S3Url;
use crate::report::Report;
use crate::report::stats::Stage;
use crate::s3::{ListObjects, ListQuery, ListedObject, Page};

/// A range of keys to list under the prefix: strictly after `after`, up to `until` inclusive.
#[derive(Debug, Clone)]
struct Scope {
    after: Option<String>,
    until: Option<String>,
}

/// Ranges created at most by splitting.
const MAX_SPLITS: usize = 100_000;

/// A split aims at pieces of this many keys (8 pages: the partial last page of each piece
/// costs at most ~1/8 more requests than a sequential listing).
const PIECE_KEYS: f64 = 8_000.0;

/// Pieces per split, at most (the bigger ones split again when listed).
const MAX_PIECES: usize = 64;

/// A page of listed objects, or the error that ended the listing.
pub type PageResult = Result<Vec<ListedObject>, String>;

/// Starts `workers` listers over `prefix`; pages arrive on the returned channel, which
/// closes when everything is listed (or after the first error).
pub fn start(
    client: Arc<dyn ListObjects>,
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
        prefix,
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
        seen: std::sync::Mutex::new(vec![0; SEEN_POSITIONS]),
    });
    // The whole prefix; `pending` counts ranges queued or being listed.
    let _ = work_tx.try_send(Scope { after: None, until: None });
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
    client: Arc<dyn ListObjects>,
    bucket: String,
    prefix: String,
    /// Ranges queued or being listed.
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
    /// The ASCII bytes seen so far at each position after the prefix (bit `b` of entry `i`:
    /// byte `b` at position `i`), over every page looked at for a split: what each position
    /// can hold.
    seen: std::sync::Mutex<Vec<u128>>,
}

/// Positions after the prefix whose bytes are learned.
const SEEN_POSITIONS: usize = 256;

impl Shared {
    fn push(&self, scope: Scope) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.work.try_send(scope).is_err() {
            // Closed after an error: nothing more is listed.
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Adds a page's bytes to what each position is known to hold: (the updated table, the
    /// page's own).
    fn learn(&self, page: &[ListedObject]) -> (Vec<u128>, Vec<u128>) {
        let page_seen = positions_seen(page, &self.prefix);
        let Ok(mut seen) = self.seen.lock() else { return (page_seen.clone(), page_seen) };
        for (s, p) in seen.iter_mut().zip(&page_seen) {
            *s |= p;
        }
        (seen.clone(), page_seen)
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

    /// Lists one range to its end (or hands its rest on as smaller ranges); false after an
    /// error, which has been sent on as the last page.
    async fn list_scope(&self, scope: Scope) -> bool {
        let mut rec = self.report.recorder();
        let mut token = None;
        loop {
            // Held until this page is handed on: an answered page waiting for room downstream
            // counts like a request in flight, so waiting pages are bounded as well.
            let _slot = self.request_slot().await;
            let asked = Instant::now();
            let query = ListQuery {
                bucket: &self.bucket,
                prefix: &self.prefix,
                delimiter: false,
                start_after: scope.after.as_deref(),
                token: token.as_deref(),
                requester_pays: self.requester_pays,
            };
            let page = self.client.list_page(query).await;
            let allowed = self.allowed.load(Ordering::Relaxed);
            let next = if (self.hungry)() { (allowed * 2).min(self.max_requests) } else { (allowed / 2).max(1) };
            self.allowed.store(next, Ordering::Relaxed);
            rec.record(Stage::List, asked.elapsed());
            let page = match page.and_then(|p| moved_on(token.as_deref(), p)) {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.pages.send(Err(e)).await;
                    return false;
                }
            };
            let within = |k: &str| scope.until.as_deref().is_none_or(|u| k <= u);
            let total = page.objects.len();
            let objects: Vec<ListedObject> = page.objects.into_iter().filter(|o| within(&o.key)).collect();
            let past_end = objects.len() < total;
            // Split while the fetchers are short of keys and a lister is idle: a split costs
            // requests (and the client's CPU), waste when fetching is the bottleneck anyway.
            let bounds = match (objects.last(), &page.next) {
                (Some(last), Some(_))
                    if !past_end && self.pending.load(Ordering::Acquire) < self.max_requests && (self.hungry)() =>
                {
                    let (seen, page_seen) = self.learn(&objects);
                    let b = boundaries(&objects, &self.prefix, scope.until.as_deref(), &seen, &page_seen);
                    (!b.is_empty() && self.splits.fetch_add(b.len(), Ordering::Relaxed) < MAX_SPLITS)
                        .then(|| (last.key.clone(), b))
                }
                _ => None,
            };
            if !objects.is_empty() && self.pages.send(Ok(objects)).await.is_err() {
                return false; // the consumer stopped (interrupted)
            }
            if let Some((from, bounds)) = bounds {
                // The rest of this range, (from, until], in pieces.
                let mut lo = from;
                for b in bounds {
                    self.push(Scope { after: Some(lo), until: Some(b.clone()) });
                    lo = b;
                }
                self.push(Scope { after: Some(lo), until: scope.until.clone() });
                return true;
            }
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

/// The ASCII bytes each position after `prefix` holds in `page` (see [`Shared::seen`]).
fn positions_seen(page: &[ListedObject], prefix: &str) -> Vec<u128> {
    let mut seen = vec![0u128; SEEN_POSITIONS];
    for o in page {
        for (i, &b) in o.key.as_bytes().iter().skip(prefix.len()).take(SEEN_POSITIONS).enumerate() {
            if b.is_ascii() {
                seen[i] |= 1 << b;
            }
        }
    }
    seen
}

/// Keys read as numbers: the bytes after a fixed stem, each a digit in its position's
/// alphabet (a mixed radix: a position that only ever holds digits is base 10 there).
struct KeySpace<'a> {
    /// Per position after the stem: the bytes it holds, sorted.
    alphabets: Vec<Vec<u8>>,
    /// Bytes before the first digit, shared by every piece of the split.
    stem: &'a str,
}

impl KeySpace<'_> {
    /// `key`'s value in [0, 1], reading from the stem's end (`key` starts with the stem).
    fn value(&self, key: &str) -> f64 {
        let mut v = 0.0;
        let mut unit = 1.0;
        for (&b, alphabet) in key.as_bytes()[self.stem.len()..].iter().zip(&self.alphabets) {
            unit /= alphabet.len() as f64;
            // A byte not in the alphabet sits between its neighbours.
            let rank = match alphabet.binary_search(&b) {
                Ok(i) => i as f64,
                Err(i) => i as f64 - 0.5,
            };
            v += rank.max(0.0) * unit;
        }
        v
    }

    /// The shortest key at or just above value `v` (stem + digits).
    fn key(&self, mut v: f64) -> Option<String> {
        let mut out = self.stem.as_bytes().to_vec();
        for alphabet in &self.alphabets {
            let base = alphabet.len();
            v *= base as f64;
            let d = (v.floor() as usize).min(base - 1);
            out.push(alphabet[d]);
            v -= d as f64;
            if v <= f64::EPSILON {
                break;
            }
        }
        String::from_utf8(out).ok()
    }
}

/// Split points for the rest of a range after `page` (its keys, in order, the last one where
/// the rest starts), up to `until`: ascending, strictly between the page's last key and
/// `until`, within the prefix. Empty when the rest looks too small to be worth splitting
/// (under two pieces' worth) or the page tells nothing about density.
fn boundaries(
    page: &[ListedObject],
    prefix: &str,
    until: Option<&str>,
    seen: &[u128],
    page_seen: &[u128],
) -> Vec<String> {
    let (Some(first), Some(last)) = (page.first().map(|o| o.key.as_str()), page.last().map(|o| o.key.as_str())) else {
        return Vec::new();
    };
    if page.len() < 2 || !first.starts_with(prefix) || !last.starts_with(prefix) {
        return Vec::new();
    }
    // Every ASCII byte of the page's keys (and of `until`) after the prefix.
    let until_bytes = until.and_then(|u| u.as_bytes().get(prefix.len()..)).unwrap_or_default();
    let alphabet = until_bytes
        .iter()
        .filter(|b| b.is_ascii())
        .fold(page_seen.iter().fold(0u128, |a, b| a | b), |a, &b| a | 1 << b)
        .count_ones();
    if alphabet < 2 {
        return Vec::new();
    }
    // Digits an f64 holds: base^digits below 2^52.
    let digits = ((52.0 / f64::from(alphabet).log2()).floor() as usize).saturating_sub(1).max(2);
    // Read from the prefix's end when the page's keys differ within that many digits; when
    // they share a longer stem, from inside it, and the rest past that stem's subtree is one
    // more piece (it splits again when listed).
    let common = first.bytes().zip(last.bytes()).take_while(|(a, b)| a == b).count();
    let mut start = prefix.len().max((common + 3).saturating_sub(digits));
    while !last.is_char_boundary(start) {
        start -= 1;
    }
    // Each position's alphabet: the bytes seen there in every page so far (a position that
    // always held the same byte, a '/' or a fixed word, is base 1 and costs no key space).
    // A position that has held any byte that varies on this page (the leading zeros of a
    // counter, a hash's digits) is taken to hold all of them: one page cannot show what a
    // position holds elsewhere.
    let varying: u128 = page_seen.iter().filter(|b| b.count_ones() > 1).fold(0, |a, b| a | b);
    let mut alphabets = Vec::new();
    let mut range = 1.0f64;
    for mut bits in seen.iter().copied().skip(start - prefix.len()) {
        if bits & varying != 0 {
            bits |= varying;
        }
        let a: Vec<u8> = (0..128u8).filter(|&b| bits & (1 << b) != 0).collect();
        if a.is_empty() {
            break;
        }
        // What an f64 tells apart.
        range *= a.len() as f64;
        if range > (1u64 << 50) as f64 {
            break;
        }
        alphabets.push(a);
    }
    let space = KeySpace { alphabets, stem: &last[..start] };
    let subtree_end = (start > prefix.len()).then(|| format!("{}{}", space.stem, char::MAX));
    let (v_first, v_last) = (space.value(first), space.value(last));
    if v_last <= v_first {
        return Vec::new();
    }
    let v_end = match until {
        Some(u) if u.starts_with(space.stem) => space.value(u),
        _ => 1.0,
    };
    let density = (page.len() - 1) as f64 / (v_last - v_first);
    let rest = density * (v_end - v_last);
    let mut out: Vec<String> = Vec::new();
    if until.is_some() {
        // A bounded range: even pieces of what the page's density says it holds.
        let pieces = (rest / PIECE_KEYS).floor().min(MAX_PIECES as f64) as usize;
        if pieces >= 2 {
            let step = (v_end - v_last) / pieces as f64;
            out.extend((1..pieces).filter_map(|j| space.key(v_last + step * j as f64)));
        }
    } else if rest >= 2.0 * PIECE_KEYS {
        // Up to the end of the key space: nothing says where the keys stop, so pieces double
        // (8 pages' worth, 16, 32, …): a bucket of n keys fills about log2(n / 8,000) of
        // them, and the ones past its last key are empty probes, one request each.
        let mut width = PIECE_KEYS / density;
        let mut v = v_last;
        while out.len() + 1 < MAX_PIECES && v + width < v_end {
            v += width;
            width *= 2.0;
            out.extend(space.key(v));
        }
    }
    out.extend(subtree_end);
    out.retain(|b| b.as_str() > last && until.is_none_or(|u| b.as_str() < u));
    out.dedup();
    // Strictly ascending: the pieces must partition the range.
    let mut prev: Option<&str> = None;
    let ascending = out.iter().all(|b| {
        let ok = prev.is_none_or(|p| p < b.as_str());
        prev = Some(b);
        ok
    });
    if ascending { out } else { Vec::new() }
}

/// `page`, unless it was asked for with continuation token `sent` and names the same one as
/// the next: a store that does that would be listed forever, the same page again and again.
fn moved_on(sent: Option<&str>, page: Page) -> Result<Page, String> {
    match (sent, page.next.as_deref()) {
        (Some(a), Some(b)) if a == b => Err(format!(
            "the store answered continuation token '{}' with the same token as the next page's: the listing cannot go on",
            crate::console::sanitize(a)
        )),
        _ => Ok(page),
    }
}

/// Streams the keys under a prefix, one ListObjectsV2 page at a time.
pub struct Lister {
    client: Arc<dyn ListObjects>,
    source: S3Url,
    token: Option<String>,
    done: bool,
    requester_pays: bool,
}

impl Lister {
    pub fn new(client: Arc<dyn ListObjects>, source: &S3Url, requester_pays: bool) -> Lister {
        Lister { client, source: source.clone(), token: None, done: false, requester_pays }
    }

    /// The next page, `None` after the last one.
    pub async fn next_page(&mut self) -> Option<Result<Vec<ListedObject>, String>> {
        if self.done {
            return None;
        }
        let query = ListQuery {
            bucket: &self.source.bucket,
            prefix: &self.source.prefix,
            delimiter: false,
            start_after: None,
            token: self.token.as_deref(),
            requester_pays: self.requester_pays,
        };
        match self.client.list_page(query).await.and_then(|p| moved_on(self.token.as_deref(), p)) {
            Ok(page) => {
                self.token = page.next;
                self.done = self.token.is_none();
                Some(Ok(page.objects))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: impl IntoIterator<Item = String>) -> Vec<ListedObject> {
        keys.into_iter()
            .map(|key| ListedObject { key, size: 0, last_modified: None, archived: None, etag: None })
            .collect()
    }

    #[test]
    fn a_dense_range_is_cut_in_pieces_of_about_eight_pages() {
        // 1,000,000 keys d/obj00000000 … d/obj00999999; the first page holds the first 1,000.
        let first = page((0..1000).map(|i| format!("d/obj{i:08}")));
        let b = boundaries(
            &first,
            "d/",
            Some("d/obj00999999"),
            &positions_seen(&first, "d/"),
            &positions_seen(&first, "d/"),
        );
        assert!(b.len() >= 60 && b.len() < MAX_PIECES, "{} pieces: {b:?}", b.len());
        assert!(b.windows(2).all(|w| w[0] < w[1]), "ascending");
        // Roughly even: the first piece holds about 1/64 of the rest (more, as the alphabet
        // also has 'b', 'j', 'o', which no digit position uses).
        assert!(b[0].as_str() > "d/obj00010000" && b[0].as_str() < "d/obj00030000", "{}", b[0]);
        // Unbounded: pieces doubling from ~8,000 keys.
        let b = boundaries(&first, "d/", None, &positions_seen(&first, "d/"), &positions_seen(&first, "d/"));
        assert!(b.len() > 10 && b.iter().all(|k| k.as_str() > "d/obj00000999"), "{b:?}");
        assert!(b[0].as_str() > "d/obj00005000" && b[0].as_str() < "d/obj00015000", "{}", b[0]);
        assert!(b[1].as_str() > "d/obj00015000" && b[1].as_str() < "d/obj00040000", "{}", b[1]);
    }

    #[test]
    fn a_small_rest_is_not_split_and_long_shared_stems_still_split() {
        let first = page((0..1000).map(|i| format!("d/obj{i:08}")));
        assert!(
            boundaries(
                &first,
                "d/",
                Some("d/obj00009999"),
                &positions_seen(&first, "d/"),
                &positions_seen(&first, "d/")
            )
            .is_empty(),
            "9,000 keys left: one range"
        );
        // Keys sharing 40 bytes after the prefix: read from inside the stem, plus the subtree's end.
        let stem = "2026-11-30/host-0123456789abcdef/shard-07/";
        let first = page((0..1000).map(|i| format!("p/{stem}{i:09}")));
        let b = boundaries(&first, "p/", None, &positions_seen(&first, "p/"), &positions_seen(&first, "p/"));
        assert!(b.len() > 2, "{b:?}");
        assert!(b.last().unwrap().ends_with(char::MAX), "the rest past the stem is one more piece");
    }

    #[test]
    fn pieces_partition_any_range_exactly() {
        // Whatever the boundaries are, (after, b1], (b1, b2], …, (bn, until] cover the keys
        // after the page once: checked against a sorted key set.
        let mut keys: Vec<String> =
            (0..30_000u32).map(|i| format!("x/{:08x}/f", i.wrapping_mul(2_654_435_761))).collect();
        keys.sort();
        let first = page(keys[..1000].iter().cloned());
        let keys_page = page(keys.iter().cloned());
        for until in [None, Some(keys[20_000].as_str())] {
            let b = boundaries(&first, "x/", until, &positions_seen(&keys_page, "x/"), &positions_seen(&first, "x/"));
            assert!(!b.is_empty());
            let rest: Vec<&String> = keys[1000..].iter().filter(|k| until.is_none_or(|u| k.as_str() <= u)).collect();
            // Every key once, in order: the pieces' keys one after another are the rest, as a
            // sequence (a count would let a key listed twice hide one never listed).
            let mut lo = keys[999].as_str();
            let mut covered: Vec<&String> = Vec::with_capacity(rest.len());
            for hi in b.iter().map(String::as_str).map(Some).chain([until]) {
                covered.extend(rest.iter().filter(|k| k.as_str() > lo && hi.is_none_or(|h| k.as_str() <= h)));
                lo = hi.unwrap_or(lo);
            }
            assert!(covered == rest, "{} keys covered of {}", covered.len(), rest.len());
        }
    }
}
