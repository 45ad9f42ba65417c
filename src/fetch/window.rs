//! How many whole-object GETs are in flight at once: as many as the round trip needs, not
//! `--workers`.
//!
//! Every GET in flight holds a connection, and every connection costs a handshake (TLS:
//! a key exchange and a certificate check on both ends) and buffers. What a round trip
//! needs follows Little's law: GETs in flight = answers per second × time to first byte.
//! At 0 ms to an endpoint on the same machine a few dozen carry everything both ends can
//! process (measured, 20,000 × 4 KiB on 2 cores: 16–64 in flight give 24,000–31,000
//! objects/s, 512 give 18,000–25,000 at a third more CPU per object); more only queue at
//! the server. At 30 ms, hundreds are needed.
//!
//! The window starts at [`INITIAL`] and grows as TCP's slow start does: by one for every
//! answer while GETs wait for it, so it doubles in a round trip. Each round (as many answers
//! as the window held when it began, and at least [`ROUND_MIN`]) is judged: growth goes on
//! only after a round whose answers showed no queueing — their mean time to first byte at
//! most twice the least seen (over the last [`LEAST_SPAN`] to [`2 × LEAST_SPAN`](LEAST_SPAN))
//! plus [`SLACK`] — and in which GETs waited. Queueing, at the server or in this process,
//! lengthens the time to first byte without adding answers, so the window stops within one
//! round of where more GETs would only wait (it may overshoot that point by up to 2×).
//!
//! It never shrinks: connections once opened stay in use (no churn), and a window larger
//! than needed costs nothing while the rate limiter ([`crate::fetch::throttle`]) or an empty key
//! queue holds GETs back. `--workers` is its ceiling. Parts of large objects are not in it:
//! their count is bounded by the byte budget and `--part-concurrency`. The first range of an
//! object of unknown size is in it: for most such objects it is the whole object. Nor are the
//! GETs of a partition whose rate limiter paces them (or when `--max-rate` caps the run): the
//! limiter then chooses send times and bounds GETs in flight, and a paced GET queued here
//! behind unlimited ones would miss its slot. A partition unlimited again (its throttling
//! was noise, or its limit was lifted) is in the window again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// GETs in flight at the start (or `--workers`, if fewer).
pub const INITIAL: usize = 16;
/// A round lasts at least this long (shorter rounds at 0 ms are a handful of answers).
pub const ROUND_MIN: Duration = Duration::from_millis(5);
/// Queueing allowed on top of twice the least time to first byte: at 0 ms the round trip
/// itself is ~0.1 ms and this is what keeps a few dozen GETs in flight to cover the
/// client's own work between answers.
pub const SLACK: Duration = Duration::from_millis(1);
/// The least time to first byte is the least of the current and the previous span of this
/// length: a path that became slower is believed after at most twice this.
pub const LEAST_SPAN: Duration = Duration::from_secs(10);

/// The window of whole-object GETs in flight; shared by all fetch tasks.
pub struct Window {
    permits: Semaphore,
    ceiling: usize,
    size: AtomicUsize,
    /// A GET waited for a slot since the round began.
    waited: AtomicBool,
    round: Mutex<Round>,
}

struct Round {
    start: Instant,
    /// Answers that end the round: the window when it began.
    length: usize,
    answers: usize,
    ttfb_sum: Duration,
    /// The last round was calm and GETs waited: every answer adds one place.
    growing: bool,
    least: Least,
}

/// A windowed minimum: the least of this span and the one before.
struct Least {
    span_start: Instant,
    current: Option<Duration>,
    previous: Option<Duration>,
}

impl Least {
    fn add(&mut self, now: Instant, d: Duration) {
        if now.duration_since(self.span_start) >= LEAST_SPAN {
            self.previous = self.current.take();
            self.span_start = now;
        }
        self.current = Some(self.current.map_or(d, |c| c.min(d)));
    }

    fn get(&self) -> Option<Duration> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A GET's place in the window, given back when dropped.
pub struct Slot<'a> {
    window: &'a Window,
    _permit: SemaphorePermit<'a>,
}

impl Slot<'_> {
    /// The GET was answered with its object after `ttfb` from sending it (errors and
    /// throttling answers are not counted: they come back at once).
    pub fn answered(self, ttfb: Duration) {
        self.window.answered(Instant::now(), ttfb);
    }
}

impl Window {
    /// A window of at most `ceiling` GETs (`--workers`).
    pub fn new(ceiling: usize) -> Window {
        let ceiling = ceiling.max(1);
        let size = INITIAL.min(ceiling);
        let now = Instant::now();
        Window {
            permits: Semaphore::new(size),
            ceiling,
            size: AtomicUsize::new(size),
            waited: AtomicBool::new(false),
            round: Mutex::new(Round {
                start: now,
                length: size,
                answers: 0,
                ttfb_sum: Duration::ZERO,
                growing: true,
                least: Least { span_start: now, current: None, previous: None },
            }),
        }
    }

    /// Waits for a place in the window.
    pub async fn acquire(&self) -> Slot<'_> {
        let permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                self.waited.store(true, Ordering::Relaxed);
                // The semaphore is never closed.
                match self.permits.acquire().await {
                    Ok(p) => p,
                    Err(_) => unreachable!("the window's semaphore is never closed"),
                }
            }
        };
        Slot { window: self, _permit: permit }
    }

    /// GETs allowed in flight now.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    fn answered(&self, now: Instant, ttfb: Duration) {
        let Ok(mut r) = self.round.lock() else { return };
        r.answers += 1;
        r.ttfb_sum += ttfb;
        r.least.add(now, ttfb);
        let size = self.size.load(Ordering::Relaxed);
        if r.growing && size < self.ceiling && self.waited.load(Ordering::Relaxed) {
            self.size.store(size + 1, Ordering::Relaxed);
            self.permits.add_permits(1);
        }
        if r.answers < r.length || now.duration_since(r.start) < ROUND_MIN {
            return;
        }
        let waited = self.waited.swap(false, Ordering::Relaxed);
        let mean = r.ttfb_sum / r.answers as u32;
        let calm = r.least.get().is_some_and(|least| mean <= least * 2 + SLACK);
        r.growing = waited && calm;
        r.start = now;
        r.length = self.size.load(Ordering::Relaxed);
        r.answers = 0;
        r.ttfb_sum = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` answers `ttfb` apart in time, each after `ttfb`, all while GETs waited.
    fn rounds(w: &Window, t: &mut Instant, n: usize, ttfb: Duration) {
        for _ in 0..n {
            w.waited.store(true, Ordering::Relaxed);
            *t += ttfb.max(Duration::from_micros(100));
            w.answered(*t, ttfb);
        }
    }

    #[test]
    fn grows_while_answers_do_not_queue_and_stops_when_they_do() {
        let w = Window::new(512);
        assert_eq!(w.size(), INITIAL);
        let mut t = Instant::now();
        // 30 ms round trips, unchanged by more GETs: the window doubles every round, up to
        // the ceiling (16 + 32 + … + 256 answers).
        rounds(&w, &mut t, 16 + 32 + 64 + 128 + 256, Duration::from_millis(30));
        assert_eq!(w.size(), 512);

        let w = Window::new(512);
        let mut t = Instant::now();
        // 0.1 ms at first; then the server queues: time to first byte grows with the window.
        rounds(&w, &mut t, 200, Duration::from_micros(100));
        let grown = w.size();
        assert!(grown > INITIAL, "an unqueued round trip grows the window ({grown})");
        // The round under way when queueing begins, and the one after it, may still grow
        // it (by at most 2× each); then it stops.
        rounds(&w, &mut t, 4 * grown, Duration::from_millis(3));
        assert!(w.size() <= 4 * grown, "{} after {grown}", w.size());
        let grown = w.size();
        // 9 s of it: within the span in which the 0.1 ms is remembered.
        rounds(&w, &mut t, 3000, Duration::from_millis(3));
        assert_eq!(w.size(), grown, "queued answers (3 ms against 0.1 ms) do not grow it");
    }

    #[test]
    fn does_not_grow_when_no_get_waited() {
        let w = Window::new(512);
        let mut t = Instant::now();
        for _ in 0..10_000 {
            t += Duration::from_millis(1);
            w.answered(t, Duration::from_millis(30));
        }
        assert_eq!(w.size(), INITIAL);
        // Then GETs wait, with no queueing: it grows.
        rounds(&w, &mut t, 100, Duration::from_millis(30));
        assert!(w.size() > INITIAL);
    }

    #[test]
    fn never_exceeds_workers() {
        let w = Window::new(20);
        let mut t = Instant::now();
        rounds(&w, &mut t, 1000, Duration::from_millis(30));
        assert_eq!(w.size(), 20);
        assert_eq!(Window::new(3).size(), 3);
    }

    #[tokio::test]
    async fn slots_are_bounded_by_the_window() {
        let w = Window::new(512);
        let held: Vec<_> = futures_util::future::join_all((0..INITIAL).map(|_| w.acquire())).await;
        assert!(w.permits.try_acquire().is_err(), "all {INITIAL} places taken");
        drop(held);
        assert!(w.permits.try_acquire().is_ok());
    }
}
