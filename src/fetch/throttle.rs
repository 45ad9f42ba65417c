//! Request-rate control for GETs: run at the rate the service accepts, not above it.
//!
//! S3 serves about 5,500 GET/s per partitioned prefix and answers `503 SlowDown` above it;
//! other stores limit by rate as well. Limiting GETs *in flight* cannot hold a rate (in
//! flight = rate × latency, and latency changes), so each partition of the key space has a
//! [`Limiter`] that paces GETs at a rate:
//!
//! - **Unlimited until told otherwise.** Until the service first throttles (or `--max-rate`
//!   is given), a GET touches three counters and a flag, nothing else.
//! - **Cut to what the service accepts.** A throttling answer to a GET sent after the last
//!   cut (older answers describe a rate no longer sent) opens a short measurement: the next
//!   [`PROBE_ANSWERS`] fresh answers. A token bucket that is empty lets through exactly its
//!   rate, so the fraction of them that succeeded, times the rate they were sent at, *is*
//!   the limit; the rate is cut to β = 0.9 of it. One overshoot costs one cut, in about one
//!   round trip, whatever the distance to the limit. A single throttling answer among them
//!   changes nothing (a limit being crossed answers more than once). The very first cut,
//!   from unlimited, has no pacing rate to go by. It takes two throttling answers, halves
//!   the rate GETs were sent at in the last 100 ms (an upper bound), and sends nothing until
//!   the answers to the GETs sent between the throttled one and the cut are in (about a
//!   round trip, the *storm*): a bucket empty at both ends let through its rate times that
//!   span whatever its depth, so β of what the storm let through becomes the cut. Half of
//!   what was sent may be many times a deep bucket's limit (a second storm follows) or far
//!   below a shallow one's. A storm that let fewer than [`STORM_PASSED_MIN`] through
//!   measured nothing; when its refusals came at once (a cap on GETs in flight refuses all
//!   within a round trip of filling, without serving), the GETs that were in flight then,
//!   over a successful answer's round trip, are what the store serves, and β of that is the
//!   cut if above the guess (which, taken while the window of GETs in flight still grows, is
//!   a fraction of such a cap). One of mostly successes is judged with the answers before it.
//! - **Probe upward like CUBIC.** After a cut the rate follows `W·(1 + C·(t − K)³)` with
//!   `W` = cut / β: it climbs back towards where the limit was, stays near it, then grows ever
//!   faster, so a limit that was lifted or doubled (S3 splitting a partition) is found within
//!   a few seconds. Far above `W` with no throttling, the limiter lets go: unlimited again.
//!   The curve's clock runs only while GETs wait for slots: a rate that is not used proves
//!   nothing, and must not grow into a flood when the keys come back.
//! - **Pacing, not bursts.** Waiting GETs pass a fair gate one at a time and each takes the
//!   next send slot, `1 / rate` after the previous one (from the schedule, not from when the
//!   task woke, so a late wake-up does not lower the rate); a slot is computed when its GET
//!   is next in line, so a cut applies to the very next GET.
//! - **Per partition.** S3 throttles per prefix partition. Keys start in one partition (a
//!   cold bucket is one); when the throttling answers come from some first path components
//!   below SOURCE's prefix while the GETs of the others all succeed at the same time (sent
//!   through the same crowded gate within 20 ms of a throttled one, and enough of them that
//!   this is not chance), those components get limiters of their own
//!   and the rest is unlimited again. The pipeline parks keys of a partition whose gate is
//!   crowded, so that GETs of other partitions are not stuck behind them; fetchers take
//!   parked keys as gates signal room (once listing is over, whatever is parked goes to
//!   its gate).
//! - **New groups are tried alone.** Evidence for a split needs a share of the root's rate,
//!   so a group that appears while the root is limited — another prefix, maybe another
//!   partition — would crawl at that share until it gathered. Instead one such group at a
//!   time gets a limiter of its own, starting at the root's rate and doubling every round
//!   trip: if it is answered at twice the root's rate (and at least 0.25 s of it) with no
//!   throttling, far more than a shared limit would have let through, it is a partition of
//!   its own and unlimited; at its first throttling answer it shares the root's limit, goes
//!   back, and the next trial waits 5 s, doubling to 64 s, so that groups that all share one
//!   limit cost a round trip of throttling now and then. While a trial runs the root holds
//!   its rate (its answers measure the two together). Measured: two prefixes, one limited to
//!   1,000 GET/s, the other at its speed alone (`benches/throttle.rs`).
//!
//! - **Noise is not a limit.** Stores also answer 503 for reasons other than a rate: a gateway
//!   shedding load, a partition being split, other clients on a shared one. Such answers
//!   come at the same fraction whatever the rate, and a limiter that cut for each would cut
//!   to nothing. So every cut is an experiment, judged on the fresh answers after it
//!   ([`Verdict`], a sequential likelihood-ratio test): were they throttled as often as
//!   before the cut (noise), or as often as a limit would have them at the new rate (about
//!   none, once below it)? A cut that changed nothing is undone — the rate goes back to
//!   where it was, unlimited for a first cut — and the fraction is the noise from then on: a
//!   measurement cuts only when throttling is well above it, and an unlimited partition
//!   only when it is more than twice it. A cut after which the fraction dropped stands, and
//!   bounds the noise from above. Before the first cut a run needs a few dozen GETs sent
//!   (fewer only when most are throttled), so that the fraction before it is known; a first
//!   cut climbs back towards what was sent, and doubles once found below the limit. Keys
//!   throttled at random are tried again after a short jittered pause, spending no retries.
//!
//! The AWS SDKs' adaptive retry mode also pairs a token bucket with a CUBIC update, but cuts
//! to 0.7 × a smoothed send rate on every throttling answer, with one bucket per client (so
//! random 503s cut it to nothing too). Measuring the accepted fraction lands just under the
//! limit in one step, counting only fresh answers keeps one overshoot from cutting many
//! times, judging each cut keeps noise from cutting at all, and partitions keep an
//! unthrottled prefix at its own speed. A cap on requests in flight (a store that refuses
//! above N at once) is held as the rate it allows, N over the round trip; a measurement
//! lasts a successful answer's round trip at least, since such a store answers its refusals
//! in bursts, ahead of the successes sent beside them; and when the refusals come at once,
//! what it measures is what was served over that round trip (counted from its first
//! success), not the accepted fraction, which such bursts make say little. The summary names
//! a cap when the throttling answers came at once (in half a success's round trip or less, by
//! their medians: a rate limit, and a store's 503s at random, are answered as a GET is) to
//! GETs sent with about N in flight.

use crate::report::{InFlightWhenThrottled, PartitionStats, RandomThrottling, ThrottleStats};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A cut sets the rate to this fraction of what the service accepted.
const BETA: f64 = 0.9;
/// CUBIC's growth, relative to `W`, per second cubed.
const CUBIC_C: f64 = 0.2;
/// The first cut from unlimited keeps this fraction of the recent send rate.
const FIRST_CUT: f64 = 0.5;
/// Fresh answers that measure the accepted fraction after a throttling answer.
pub const PROBE_ANSWERS: u64 = 16;
/// …over this many round trips at least.
const PROBE_RTTS: f64 = 1.0;
/// After a cut that halved (the fraction said little), the rate doubles every this many
/// round trips, and at least this long, until the next measurement…
const REMEASURE_RTTS: u32 = 4;
const MIN_DOUBLING: Duration = Duration::from_millis(20);
/// …and no sooner than this many measurements' worth of answers at the rate it starts
/// from: at a low rate a measurement takes longer than a few round trips, and a rate that
/// doubled more often than it was measured would climb away from the limit, each halving
/// undone twice over before the next.
const DOUBLING_PROBES: f64 = 2.0;
/// Never paced slower than this (GET/s).
const MIN_RATE: f64 = 2.0;
/// Far enough above `W`, with no throttling, the limiter lets go.
const RELEASE_ABOVE: f64 = 16.0;
/// The first cut measures the successes of this last stretch.
const SHORT_WINDOW: Duration = Duration::from_millis(100);
/// A GET late for its slot by up to this much is still sent at once (timer lateness must
/// not lower the rate); more than that is not made up for with a burst.
const CATCH_UP: Duration = Duration::from_millis(2);
/// A partition's gate is crowded at this many waiting GETs: its keys are parked.
pub const CROWDED: usize = 4;
/// Partitions split off when this many throttling answers in the window…
const SPLIT_MIN_THROTTLED: u64 = 8;
/// …come mostly (this fraction) from them…
const SPLIT_SHARE: f64 = 0.8;
/// …at least this fraction of their answers, while the others had at least this many
/// answers in the same window, none of them throttled: under a shared limit the others'
/// GETs meet the same empty bucket, so only a stark difference says it is not shared…
const SPLIT_MIN_FRACTION: f64 = 0.01;
const SPLIT_MIN_OTHERS: u64 = 64;
/// …and enough of them that, had they met the hot ones' throttled fraction, all of them
/// succeeding would have had at most this chance.
const SPLIT_CHANCE: f64 = 0.01;
/// Per-partition answers count half after this long, and a quarter after twice as long…
const SPLIT_WINDOW: Duration = Duration::from_millis(500);
/// A success is evidence only if its GET was sent this close to one that was throttled.
const SPLIT_NEAR: Duration = Duration::from_millis(20);
/// The evidence is looked at this often (besides on every throttling answer).
const SPLIT_LOOK: Duration = Duration::from_millis(50);
/// A group tried on a limiter of its own starts at the root's rate and doubles it every
/// round trip. It becomes a partition of its own once it was answered, with no throttling,
/// at least this many times…
const TRIAL_ANSWERS: u64 = 64;
/// …and at least the root's rate times this (a shared bucket's burst, which S3 does not
/// state, is a fraction of a second of its rate)…
const TRIAL_SPAN: Duration = Duration::from_millis(250);
/// …at this many times the root's rate on average: then the two together sent far more than
/// a shared limit would have accepted. It goes back to the root's at its first throttling
/// answer…
const TRIAL_FACTOR: f64 = 2.0;
/// …or, undecided (its keys came too slowly to tell), after this long; the next trial then
/// waits as long.
const TRIAL_TIME: Duration = Duration::from_millis(250);
/// After a trial that met throttling the next waits this long, doubling up to the maximum:
/// where all groups share one limit, each trial costs a round trip of throttling answers.
const TRIAL_BACKOFF: Duration = Duration::from_secs(5);
const TRIAL_BACKOFF_MAX: Duration = Duration::from_secs(64);
/// Throttling answers are counted by GETs in flight at their send in buckets this wide, up to
/// this many buckets (the last holds all above).
const IN_FLIGHT_BUCKET: usize = 4;
const IN_FLIGHT_BUCKETS: usize = 1024;
/// GETs in flight when throttled are told of from this many throttling answers on.
const IN_FLIGHT_MIN: u64 = 32;
/// Sends are counted in 1 ms slots over this many slots (about a second).
const RING: usize = 1024;
/// A cut is judged on at least this many fresh answers after it, and at most this many
/// (then it stands)…
const VERDICT_MIN: u64 = 64;
const VERDICT_MAX: u64 = 1024;
/// …as soon as one explanation of them is this many times likelier than the other…
const VERDICT_ODDS: f64 = 20.0;
/// …or the fraction after it is this many standard errors above the one before (still above
/// a limit, and further below it than the cut assumed).
const VERDICT_Z: f64 = 3.0;
/// A limit lowers the throttled fraction to at most this share of what it was, as a cut
/// assumes: to the noise, when the cut took the rate below the limit, and less far when the
/// accepted rate was measured high (a shallow bucket serves bursts).
const LIMIT_SHARE: f64 = 0.1;
/// A cut after a measurement with fewer throttling answers is not judged: their fraction is
/// not known well enough to tell whether it changed.
const VERDICT_THROTTLED: u64 = 4;
/// Noise leaves the fraction where it was: not lower by this many standard errors (the
/// fraction before the cut is known from a few dozen answers only).
const SAME_Z: f64 = 2.0;
/// Throttling this common is never taken for noise: a store that refuses this many GETs at any
/// rate is slowed down all the same (and stops after `--stall-timeout` if it refuses all).
const NOISE_MAX: f64 = 0.3;
/// Once noise is known, a measurement expects this many noisy answers (more answers, up to
/// the maximum, for rarer noise)…
const PROBE_EXPECTED: f64 = 8.0;
const PROBE_MAX: u64 = 1024;
/// …and throttling is above the noise at this many standard deviations (plus one answer):
/// in a limited partition's measurement, and over the last [`SHORT_WINDOW`] of an unlimited
/// one (tested at every throttling answer, so with a wider margin).
const PROBE_Z: f64 = 3.0;
/// A limited partition's measurement takes at least this much of its throttling for noise
/// (four throttling answers among 64 are a limit, two are not): a cut on less could not be
/// judged ([`VERDICT_THROTTLED`]), and rare noise would cut again and again before it is known.
const NOISE_FLOOR: f64 = 0.005;
const UNLIMITED_Z: f64 = 3.5;

/// The outcome of one GET attempt, as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Throttled,
    /// Any other failure: says nothing about the rate.
    Other,
}

/// The rate control of one run: a root partition, the partitions split off it, and the
/// figures for the summary.
pub struct Throttle {
    started: Instant,
    /// Length of SOURCE's prefix: partitions are named by the first path component after it.
    prefix_len: usize,
    /// `--max-rate`: every limiter starts limited at this rate and never exceeds it.
    max_rate: Option<f64>,
    /// Any limiter was ever limited: until then a GET only counts its success.
    engaged: AtomicBool,
    root: Arc<Limiter>,
    /// Partitions split off the root, by name (`prefix/first-component/`).
    split: AtomicBool,
    parts: RwLock<HashMap<Box<str>, Arc<Limiter>>>,
    in_flight: AtomicUsize,
    /// The fewest GETs in flight (sent, not yet answered) when a GET that had waited for
    /// its slot was sent.
    min_in_flight: AtomicUsize,
    waited_ns: AtomicU64,
    /// Throttling answers by GETs in flight when they were sent ([`IN_FLIGHT_BUCKET`] per
    /// bucket).
    throttled_in_flight: Box<[AtomicU64]>,
    /// Round trips of answers, [successes, throttling answers], by [`rtt_bucket`]. A store
    /// that refuses above a number of GETs in flight does so at once, without serving.
    round_trips: [Box<[AtomicU64]>; 2],
    /// Milliseconds since `started` of the last successful answer.
    last_ok_ms: AtomicU64,
    throttled: AtomicU64,
    /// A new group being tried alone (module notes), and whether one is.
    trials: Mutex<Trials>,
    trying: AtomicBool,
    /// Signalled when a gate stops being crowded, so that a fetcher with nothing to do takes
    /// a parked key of its partition (one wake-up per GET sent, not a poll by every fetcher).
    room: tokio::sync::Notify,
}

/// Trying groups that appear while the root is limited on limiters of their own.
#[derive(Default)]
struct Trials {
    current: Option<Trial>,
    /// Groups tried already, or throttled in the root: not tried (again).
    known: HashSet<Box<str>>,
    /// No new trial before this (after one that met throttling), and the wait after the next
    /// one that does.
    not_before: Option<Instant>,
    backoff: Duration,
}

struct Trial {
    name: Box<str>,
    limiter: Arc<Limiter>,
    started: Instant,
    /// The root's rate when it started.
    root_rate: f64,
    ok: u64,
    throttled: u64,
}

/// A GET's permission to go: taken before the request, given back with its answer.
pub struct Ticket<'a> {
    throttle: &'a Throttle,
    limiter: Arc<Limiter>,
    /// When it was sent, if its limiter was engaged (else feedback is always fresh).
    sent: Option<Instant>,
    /// It passed a crowded gate: sent among GETs of every group the pipeline had parked,
    /// so its answer is evidence of where throttling comes from (module notes).
    crowded: bool,
    /// GETs in flight when it was sent, itself included.
    in_flight: usize,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.throttle.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Throttle {
    /// `prefix`: SOURCE's prefix; `max_rate`: `--max-rate`.
    pub fn new(prefix: &str, max_rate: Option<f64>) -> Throttle {
        let started = Instant::now();
        let max_rate = max_rate.filter(|r| *r > 0.0);
        Throttle {
            started,
            prefix_len: prefix.len(),
            max_rate,
            engaged: AtomicBool::new(max_rate.is_some()),
            root: Arc::new(Limiter::new(prefix.to_owned(), max_rate, started)),
            split: AtomicBool::new(false),
            parts: RwLock::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            min_in_flight: AtomicUsize::new(usize::MAX),
            waited_ns: AtomicU64::new(0),
            throttled_in_flight: (0..IN_FLIGHT_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            round_trips: [0, 1].map(|_| (0..RTT_BUCKETS).map(|_| AtomicU64::new(0)).collect()),
            last_ok_ms: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            trials: Mutex::new(Trials { backoff: TRIAL_BACKOFF, ..Trials::default() }),
            trying: AtomicBool::new(false),
            room: tokio::sync::Notify::new(),
        }
    }

    /// `key`'s first path component below the prefix (`prefix/component/`, or the prefix
    /// itself), if the gate of its limiter is crowded. A group name is a key of its group,
    /// for [`Throttle::lane`].
    pub fn crowded(&self, key: &str) -> Option<Box<str>> {
        if !self.engaged.load(Ordering::Relaxed) {
            return None;
        }
        let group = self.partition_name(key).or_else(|| key.get(..self.prefix_len)).unwrap_or_default();
        self.lane(key).crowded().then(|| group.into())
    }

    /// The partition `key` belongs to.
    pub fn lane(&self, key: &str) -> Arc<Limiter> {
        if !self.engaged.load(Ordering::Relaxed) && !self.split.load(Ordering::Acquire) {
            // Nothing was ever limited: the one partition, at the cost of two loads.
            return self.root.clone();
        }
        let name = self.partition_name(key);
        if let Some(l) = name.and_then(|n| self.split_off(n)) {
            return l;
        }
        if let Some(name) = name
            && self.max_rate.is_none()
            && self.engaged.load(Ordering::Relaxed)
            && (self.root.limited.load(Ordering::Relaxed) || self.trying.load(Ordering::Relaxed))
            && let Some(l) = self.trial_lane(name, Instant::now())
        {
            return l;
        }
        self.root.clone()
    }

    /// The limiter of partition `name` if it was split off the root.
    fn split_off(&self, name: &str) -> Option<Arc<Limiter>> {
        if !self.split.load(Ordering::Acquire) {
            return None;
        }
        self.parts.read().ok()?.get(name).cloned()
    }

    /// The limiter of a group tried alone: `name` is being tried, or is new and may be now.
    ///
    /// The root is limited, and a group appears that did not throttle in it: it may be a
    /// partition of its own (S3: another prefix) that the root's rate would hold back until
    /// the evidence for a split had gathered — a round trip's worth of answers at a share of
    /// the root's rate. So it gets a limiter of its own at the root's rate: if the service
    /// accepts that many answers with no throttling on top of the root's, it is a partition of
    /// its own and runs unlimited; if it throttles, the group shares the root's limit and goes
    /// back, and the next trial waits (doubling), so that groups that all share one limit cost
    /// a round trip of throttling now and then, not on every new group. One at a time.
    fn trial_lane(&self, name: &str, now: Instant) -> Option<Arc<Limiter>> {
        let Ok(mut t) = self.trials.lock() else { return None };
        if let Some(cur) = &t.current {
            if now.saturating_duration_since(cur.started) < TRIAL_TIME {
                return (*cur.name == *name).then(|| cur.limiter.clone());
            }
            // Undecided: its keys came too slowly (or the root let go meanwhile). No blame:
            // it may be tried again, with a fresh count.
            self.end_trial(&mut t, false, now);
        }
        if !self.root.limited.load(Ordering::Relaxed)
            || t.not_before.is_some_and(|at| now < at)
            || t.known.contains(name)
            || !self.root.settled(now)
        {
            return None;
        }
        let (rate, srtt) = self.root.state.lock().ok().map(|s| (s.rate(now), s.srtt))?;
        if !rate.is_finite() {
            return None;
        }
        let every = srtt.max(Duration::from_millis(5));
        let limiter = Arc::new(Limiter::new(name.to_owned(), None, self.started).with_noise(self.root.noise()));
        limiter.start_doubling(rate, every, now);
        tracing::debug!(partition = %name, rate, "trying a new group on a limiter of its own");
        t.known.insert(name.into());
        let trial =
            Trial { name: name.into(), limiter: limiter.clone(), started: now, root_rate: rate, ok: 0, throttled: 0 };
        t.current = Some(trial);
        self.trying.store(true, Ordering::Relaxed);
        Some(limiter)
    }

    /// Ends the current trial: the group is a partition of its own (`own`), or back in the root.
    fn end_trial(&self, t: &mut Trials, own: bool, now: Instant) {
        let Some(cur) = t.current.take() else { return };
        self.trying.store(false, Ordering::Relaxed);
        if own {
            tracing::debug!(partition = %cur.name, answers = cur.ok, "a partition of its own");
            cur.limiter.release(now);
            self.add_partitions([(cur.name, cur.limiter)]);
            t.not_before = None;
            t.backoff = TRIAL_BACKOFF;
            self.room.notify_waiters();
            return;
        }
        // The trial's GETs drew from the root's bucket if they share one: what the root's
        // answers said meanwhile is not about the root's rate, nor about which groups its
        // limit is about.
        self.root.forget_children();
        self.root.stale_before(now);
        if cur.throttled > 0 {
            tracing::debug!(partition = %cur.name, wait = ?t.backoff, "shares the root's limit");
            t.not_before = Some(now + t.backoff);
            t.backoff = (t.backoff * 2).min(TRIAL_BACKOFF_MAX);
        } else {
            // Undecided: tried again after a pause as long as the trial, so that the root's
            // own answers measure it at least half of the time.
            tracing::debug!(partition = %cur.name, answers = cur.ok, "undecided: may be tried again");
            t.known.remove(&cur.name);
            t.not_before = Some(now + TRIAL_TIME);
        }
    }

    /// Counts an answer to a GET of the group being tried (`lane` is its limiter).
    fn trial_answer(&self, lane: &Arc<Limiter>, throttled: bool, now: Instant) {
        let Ok(mut t) = self.trials.lock() else { return };
        let Some(cur) = t.current.as_mut().filter(|c| Arc::ptr_eq(&c.limiter, lane)) else { return };
        cur.ok += u64::from(!throttled);
        cur.throttled += u64::from(throttled);
        if cur.throttled > 0 {
            self.end_trial(&mut t, false, now);
        } else if cur.ok >= TRIAL_ANSWERS.max((cur.root_rate * TRIAL_SPAN.as_secs_f64()) as u64)
            && cur.ok as f64 >= TRIAL_FACTOR * cur.root_rate * now.saturating_duration_since(cur.started).as_secs_f64()
        {
            self.end_trial(&mut t, true, now);
        }
    }

    /// `prefix/first-component/` of `key`, or `None` for a key directly under the prefix.
    fn partition_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.get(self.prefix_len..)?;
        rest.find('/').map(|i| &key[..self.prefix_len + i + 1])
    }

    /// Waits for a send slot for a GET of `key` in `lane` (from [`Throttle::lane`]).
    pub async fn acquire(&self, lane: Arc<Limiter>) -> Ticket<'_> {
        let asked = Instant::now();
        if !self.engaged.load(Ordering::Relaxed) || !lane.limited.load(Ordering::Acquire) {
            let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            lane.sends.record(self.ms(asked));
            return Ticket { throttle: self, limiter: lane, sent: Some(asked), crowded: false, in_flight };
        }
        lane.waiting.fetch_add(1, Ordering::Relaxed);
        let sent = {
            let _gate = lane.gate.lock().await;
            if let Some(at) = lane.next_slot(Instant::now()) {
                tokio::time::sleep_until(at.into()).await;
            }
            Instant::now()
        };
        let waiting = lane.waiting.fetch_sub(1, Ordering::Relaxed);
        if waiting == CROWDED {
            // One GET passed a crowded gate: room for one parked key.
            self.room.notify_one();
        }
        if !lane.limited.load(Ordering::Relaxed) {
            // Unlimited again: every parked key of this partition may go.
            self.room.notify_waiters();
        }
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let waited = sent - asked;
        if waited > Duration::from_micros(100) {
            self.min_in_flight.fetch_min(in_flight, Ordering::Relaxed);
        }
        self.waited_ns.fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        Ticket {
            throttle: self,
            limiter: lane,
            sent: Some(sent),
            crowded: waiting >= CROWDED / 2,
            in_flight: in_flight + 1,
        }
    }

    /// The answer to the GET that `ticket` let go; `key` names its partition.
    pub fn answered(&self, ticket: Ticket<'_>, key: &str, answer: Answer) {
        let throttled = match answer {
            Answer::Ok => false,
            Answer::Throttled => true,
            Answer::Other => return,
        };
        let now = Instant::now();
        let ms = self.ms(now);
        let lane = &ticket.limiter;
        let bucket = (ticket.in_flight / IN_FLIGHT_BUCKET).min(IN_FLIGHT_BUCKETS - 1);
        if let Some(sent) = ticket.sent {
            let b = rtt_bucket(now.saturating_duration_since(sent));
            self.round_trips[usize::from(throttled)][b].fetch_add(1, Ordering::Relaxed);
        }
        if throttled {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            self.engaged.store(true, Ordering::Relaxed);
            self.throttled_in_flight[bucket].fetch_add(1, Ordering::Relaxed);
        } else {
            self.last_ok_ms.store(ms, Ordering::Relaxed);
        }
        let root = Arc::ptr_eq(lane, &self.root);
        if root && self.partition_name(key).and_then(|n| self.split_off(n)).is_some() {
            // Sent through the root before its partition was split off: about that
            // partition, whose own limiter has taken over.
            return;
        }
        if root && self.trying.load(Ordering::Relaxed) {
            // While a group is tried alone, the root's answers measure the two together:
            // its rate holds, and the answers of this stretch are stale once it ends.
            if throttled {
                lane.count_throttled();
            }
            return;
        }
        let child = if root { self.partition_name(key) } else { None };
        if root
            && throttled
            && let Some(name) = child
            && let Ok(mut t) = self.trials.lock()
            && !t.known.contains(name)
        {
            // Throttled in the root: part of what the root's limit is about, not new.
            t.known.insert(name.into());
        }
        if !root && self.trying.load(Ordering::Relaxed) {
            self.trial_answer(lane, throttled, now);
        }
        let child = root.then_some(child.unwrap_or(""));
        if lane.feedback(ticket.sent, throttled, ticket.in_flight, now, ms, child, ticket.crowded) && root {
            self.maybe_split(now);
        }
    }

    /// Splits partitions off the root when its throttling comes from them (module notes).
    fn maybe_split(&self, now: Instant) {
        if self.max_rate.is_some() {
            // `--max-rate` caps the whole run: one limiter, whatever throttles.
            return;
        }
        let Some(hot) = self.root.hot_children() else { return };
        // Each starts at the rate the whole root had (an upper bound of its own limit, which
        // its first measurement finds within a round trip).
        let rate = self.root.state.lock().map_or(MIN_RATE, |s| s.rate(now));
        let noise = self.root.noise();
        self.add_partitions(hot.into_iter().map(|name| {
            let limiter = Limiter::new(name.to_string(), self.max_rate, self.started).with_noise(noise);
            limiter.start_at(rate, now);
            tracing::debug!(partition = %name, rate, "throttled partition split off");
            (name, Arc::new(limiter))
        }));
        // What throttled the root was those partitions: the rest runs free again.
        self.root.release(now);
        self.room.notify_waiters();
    }

    /// Partitions split off the root from now on (a name split off before keeps its limiter).
    fn add_partitions(&self, new: impl IntoIterator<Item = (Box<str>, Arc<Limiter>)>) {
        if let Ok(mut parts) = self.parts.write() {
            for (name, limiter) in new {
                parts.entry(name).or_insert(limiter);
            }
        }
        self.split.store(true, Ordering::Release);
    }

    /// Completes when a crowded gate may have room for a parked key.
    pub async fn room(&self) {
        self.room.notified().await
    }

    /// The run stops making progress: no GET has succeeded for this long.
    pub fn since_last_success(&self) -> Duration {
        let last = Duration::from_millis(self.last_ok_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    /// GETs in flight at the fewest while a GET waited for the limiter; `None` if none did.
    pub fn min_in_flight(&self) -> Option<usize> {
        let n = self.min_in_flight.load(Ordering::Relaxed);
        (n != usize::MAX).then_some(n)
    }

    pub fn stats(&self) -> ThrottleStats {
        let mut partitions = Vec::new();
        let mut add = |l: &Limiter| {
            if let Some(p) = l.stats() {
                partitions.push(p);
            }
        };
        let mut random: Option<RandomThrottling> = None;
        let mut noise = |l: &Limiter| {
            if let Some((fraction, undone)) = l.noise_stats() {
                let r = random.get_or_insert_with(RandomThrottling::default);
                r.fraction = r.fraction.max(fraction);
                r.cuts_undone += undone;
            }
        };
        noise(&self.root);
        add(&self.root);
        if let Ok(parts) = self.parts.read() {
            let mut named: Vec<_> = parts.values().collect();
            named.sort_by(|a, b| a.name.cmp(&b.name));
            for l in named {
                noise(l);
                add(l);
            }
        }
        ThrottleStats {
            throttled: self.throttled.load(Ordering::Relaxed),
            max_rate: self.max_rate,
            limiter_wait_s: self.waited_ns.load(Ordering::Relaxed) as f64 / 1e9,
            partitions,
            random_503: random,
            in_flight_when_throttled: self.in_flight_when_throttled(),
        }
    }

    /// GETs in flight when throttled GETs were sent: the 10th percentile and the median (at
    /// a bucket's lower bound), once there were a few dozen; the mean round trips of
    /// successes and throttling answers; and a cap on GETs in flight near the 10th
    /// percentile when throttling answers came at once (module notes).
    fn in_flight_when_throttled(&self) -> Option<InFlightWhenThrottled> {
        let counts: Vec<u64> = self.throttled_in_flight.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        if counts.iter().sum::<u64>() < IN_FLIGHT_MIN {
            return None;
        }
        let [ok_ms, throttled_ms] = self.round_trips.each_ref().map(|b| {
            let counts: Vec<u64> = b.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            quantile(&counts, 0.5).map_or(0.0, |b| rtt_of_bucket(b).as_secs_f64() * 1000.0)
        });
        let at = |q: f64| (quantile(&counts, q).unwrap_or(0) * IN_FLIGHT_BUCKET).max(1);
        Some(InFlightWhenThrottled {
            p10: at(0.1),
            p50: at(0.5),
            ok_ms,
            throttled_ms,
            cap: (throttled_ms * NAMED_AT_ONCE <= ok_ms).then(|| at(0.1)),
        })
    }
}

/// Round trips are counted in buckets a quarter of a binary order of magnitude wide (µs).
const RTT_BUCKETS: usize = 128;

fn rtt_bucket(d: Duration) -> usize {
    (((d.as_micros() as f64 + 1.0).log2() * 4.0) as usize).min(RTT_BUCKETS - 1)
}

/// The round trip a bucket starts at.
fn rtt_of_bucket(b: usize) -> Duration {
    Duration::from_micros((b as f64 / 4.0).exp2() as u64)
}

/// The bucket at which `q` of the counts are reached (`None`: no counts).
fn quantile(counts: &[u64], q: f64) -> Option<usize> {
    let total: u64 = counts.iter().sum();
    let mut seen = 0;
    counts.iter().position(|c| {
        seen += c;
        total > 0 && seen as f64 >= q * total as f64
    })
}

/// The rate limiter of one partition.
pub struct Limiter {
    name: String,
    limited: AtomicBool,
    /// GETs waiting for their slot (for parking decisions).
    waiting: AtomicUsize,
    gate: tokio::sync::Mutex<()>,
    /// GETs sent while unlimited, for the first cut.
    sends: Ring,
    /// Throttling answers while unlimited: against the sends, the throttled fraction before
    /// the first cut, and whether a throttling answer is above the noise.
    throttles: Ring,
    /// Smoothed round trip of successful answers, µs (throttling answers may come at once).
    ok_rtt_us: AtomicU64,
    state: Mutex<State>,
}

struct State {
    cap: f64,
    /// CUBIC's `W` (the rate at the last cut / β, or what was sent before a first cut) and
    /// the time of that cut.
    w: f64,
    /// The time from the cut to the plateau at `W`, seconds.
    k: f64,
    epoch: Option<Instant>,
    /// The last cut or release: answers to GETs sent before it are stale.
    changed: Option<Instant>,
    /// Smoothed time from send to answer.
    srtt: Duration,
    /// Smoothed round trip of throttling answers.
    refusal_rtt: Duration,
    /// The next send slot.
    next: Instant,
    /// After a fresh throttling answer: the measurement it opened.
    probe: Option<Probe>,
    /// The rate doubles this often instead of following the curve: a group on trial, or a
    /// rate halved after an overshoot it could not measure.
    doubling: Option<Duration>,
    /// A group on trial: its rate grows by the clock, used or not.
    trial: bool,
    /// Root partition: answers by first path component in the current window,
    /// [all, throttled].
    children: HashMap<Box<str>, [u64; 2]>,
    window: Option<Instant>,
    /// When the last GET answered with throttling was sent: a success counts as evidence
    /// only if it was sent at about the same time ([`SPLIT_NEAR`]).
    throttled_sent: Option<Instant>,
    /// When the evidence was last looked at.
    looked: Option<Instant>,
    cuts: u64,
    throttled: u64,
    lowest: f64,
    /// The throttled fraction that does not depend on the rate (503s at random): learned from
    /// cuts that did not lower it.
    noise: f64,
    /// The last cut, until its answers say whether it lowered the throttled fraction.
    verdict: Option<Verdict>,
    /// Cuts undone because they did not lower the throttled fraction.
    undone: u64,
    /// After a first cut: the answers to the GETs sent unpaced between the throttled one
    /// that caused it and the cut, which set the rate once they are in.
    storm: Option<Storm>,
}

/// The GETs sent unpaced from a throttled one (`from`) to the first cut (`to`), and their
/// answers, [succeeded, throttled]. A token bucket is empty whenever it throttles, and still
/// at the cut when GETs kept coming faster than its rate: between the two it let through
/// exactly its rate times the span, whatever its depth. Where it was not empty (503s at
/// random, a burst over a shallow bucket) what it let through is what the service accepted
/// then. Either says more than the first cut's guess (half of what was sent), which may be
/// far above a deep bucket's limit or far below a shallow one's: nothing is sent until the
/// storm's answers are in (`until`, about one round trip), and their count replaces it.
struct Storm {
    from: Instant,
    to: Instant,
    until: Instant,
    answers: [u64; 2],
    /// The fewest GETs in flight when a throttled one of the storm was sent, itself included.
    in_flight: usize,
}

/// A measurement: fresh answers since a fresh throttling answer, [succeeded, throttled], when
/// it came, and when the first success among them came (with its count, 1).
struct Probe {
    answers: [u64; 2],
    since: Instant,
    first_ok: Option<Instant>,
}

/// The pause after a first cut, while the storm's answers come in: this many times the
/// round trip of the GET that caused it, plus [`STORM_SLACK`], at most [`STORM_PAUSE_MAX`].
const STORM_PAUSE: f64 = 1.5;
const STORM_SLACK: Duration = Duration::from_millis(2);
const STORM_PAUSE_MAX: Duration = Duration::from_millis(200);
/// A storm that let fewer GETs through than this measured no rate: a cap on GETs in flight
/// refuses every GET sent within a round trip of filling, however fast it serves. The rate
/// the GETs in flight were answered at then is what such a cap allows (a limit this low is
/// found by the measurements that follow).
const STORM_PASSED_MIN: u64 = 8;
/// A refusal this many times faster than a successful answer came at once (for the rate
/// control: clear cases only)…
const AT_ONCE: u64 = 4;
/// …and, for the summary, when the median refusal was this many times faster than the
/// median success (a rate limit's and random 503s take as long as a GET is served, or longer;
/// a cap's a few times less even on a loaded machine).
const NAMED_AT_ONCE: f64 = 2.0;

/// A cut being judged: were the answers after it throttled as often as before it (noise), or
/// as often as a limit would have them at the new rate?
struct Verdict {
    /// Fresh answers before the cut, [succeeded, throttled].
    before: [u64; 2],
    /// Fresh answers after it.
    after: [u64; 2],
    /// The throttled fraction after it if a limit refused what the service did not accept
    /// before it: the noise, and the share of the new rate above the accepted one (at least
    /// [`LIMIT_SHARE`] of the fraction before).
    limit: f64,
    /// What the cut replaced: `None` when it was the first (the partition was unlimited).
    curve: Option<Curve>,
    /// The lowest rate before the cut.
    lowest: f64,
    /// The cut is a first cut's guess (half of what was sent), not a measurement: found below
    /// the limit, the rate climbs back by doubling.
    guess: bool,
}

/// The CUBIC curve's parameters, kept to undo a cut.
#[derive(Clone, Copy)]
struct Curve {
    w: f64,
    k: f64,
    epoch: Option<Instant>,
    doubling: Option<Duration>,
    trial: bool,
}

/// What the answers after a cut say about it.
#[derive(Debug, PartialEq, Eq)]
enum Judged {
    Pending,
    /// The fraction went where a limit would have it: the cut stands.
    Limit,
    /// The fraction is the same: throttling at random, whatever the rate. The cut is undone.
    Noise,
}

impl Verdict {
    /// A cut from `from` to `to` GET/s after `before` answers; `noise` is the fraction known to
    /// be noise.
    fn new(before: [u64; 2], from: f64, to: f64, noise: f64, curve: Option<Curve>, lowest: f64) -> Verdict {
        let fraction = before[1] as f64 / (before[0] + before[1]).max(1) as f64;
        let accepted = from * (1.0 - fraction) / (1.0 - noise);
        let over = if to > 0.0 { (1.0 - accepted / to).max(0.0) } else { 1.0 };
        let limit = (noise + (1.0 - noise) * over).max(LIMIT_SHARE * fraction);
        Verdict { before, after: [0, 0], limit, curve, lowest, guess: false }
    }

    fn guessed(self) -> Verdict {
        Verdict { guess: true, ..self }
    }

    /// Judges the cut as its answers come, by the odds of the two explanations (a sequential
    /// likelihood-ratio test): the fraction before the cut unchanged (noise), or the one a limit
    /// predicts at the new rate. A fraction clearly higher than before, or too high to be
    /// noise, is a limit; so is a question still open after [`VERDICT_MAX`] answers.
    fn judge(&self) -> Judged {
        let [nb, na] = [self.before[0] + self.before[1], self.after[0] + self.after[1]];
        let [kb, ka] = [self.before[1], self.after[1]];
        let (fb, fa) = (kb as f64 / nb.max(1) as f64, ka as f64 / na.max(1) as f64);
        if na >= PROBE_ANSWERS && fa > NOISE_MAX {
            // Too often to be noise: still above a limit, measured again at once.
            return Judged::Limit;
        }
        if na < VERDICT_MIN {
            return Judged::Pending;
        }
        let pooled = (kb + ka) as f64 / (nb + na).max(1) as f64;
        let se = (pooled * (1.0 - pooled) * (1.0 / nb.max(1) as f64 + 1.0 / na as f64)).sqrt();
        let z = if se > 0.0 { (fa - fb) / se } else { 0.0 };
        if pooled > NOISE_MAX || z >= VERDICT_Z {
            return Judged::Limit;
        }
        let clamp = |p: f64| p.clamp(1e-3, 1.0 - 1e-3);
        let (noise, limit) = (clamp(fb), clamp(self.limit));
        let odds = ka as f64 * (noise / limit).ln() + (na - ka) as f64 * ((1.0 - noise) / (1.0 - limit)).ln();
        if odds >= VERDICT_ODDS.ln() && z > -SAME_Z {
            Judged::Noise
        } else if (odds <= -VERDICT_ODDS.ln() && na as f64 * fb >= PROBE_EXPECTED) || na >= VERDICT_MAX {
            // A limit also waits until noise would have answered a few times: from a rare
            // fraction (one in a hundred, say, measured over a few hundred answers) a stretch
            // with none is likely before then, and would take noise for a limit.
            Judged::Limit
        } else {
            Judged::Pending
        }
    }

    /// The throttled fraction before and after a cut that changed nothing: the noise.
    fn pooled(&self) -> f64 {
        let n = self.before[0] + self.before[1] + self.after[0] + self.after[1];
        (self.before[1] + self.after[1]) as f64 / n.max(1) as f64
    }

    /// At most this much of the throttling is noise: the fraction after a cut that was needed,
    /// with a margin for a small sample (one answer more).
    fn noise_bound(&self) -> f64 {
        (self.after[1] + 1) as f64 / (self.after[0] + self.after[1]).max(1) as f64
    }
}

/// `k` throttling answers among `n` are more than a throttled fraction of `noise` explains, at
/// `z` standard deviations (and one answer more: with no noise known, two are a limit).
fn above_noise(k: u64, n: u64, noise: f64, z: f64) -> bool {
    let mean = n as f64 * noise;
    k as f64 > mean + z * (mean * (1.0 - noise)).sqrt() + 1.0
}

impl Limiter {
    fn new(name: String, cap: Option<f64>, started: Instant) -> Limiter {
        let cap = cap.unwrap_or(f64::INFINITY);
        Limiter {
            name,
            limited: AtomicBool::new(cap.is_finite()),
            waiting: AtomicUsize::new(0),
            gate: tokio::sync::Mutex::new(()),
            sends: Ring::new(),
            throttles: Ring::new(),
            ok_rtt_us: AtomicU64::new(0),
            state: Mutex::new(State {
                cap,
                w: cap,
                k: ((1.0 - BETA) / CUBIC_C).cbrt(),
                epoch: None,
                changed: None,
                srtt: Duration::ZERO,
                refusal_rtt: Duration::ZERO,
                next: started,
                probe: None,
                doubling: None,
                trial: false,
                children: HashMap::new(),
                window: None,
                throttled_sent: None,
                looked: None,
                cuts: 0,
                throttled: 0,
                lowest: f64::INFINITY,
                noise: 0.0,
                verdict: None,
                undone: 0,
                storm: None,
            }),
        }
    }

    /// The throttled fraction taken for noise (0 until a cut was undone).
    fn noise(&self) -> f64 {
        self.state.lock().map_or(0.0, |s| s.noise)
    }

    /// A limiter split off another starts with what that one learned about the noise: it is
    /// the store's, not a partition's.
    fn with_noise(self, noise: f64) -> Limiter {
        if let Ok(mut s) = self.state.lock() {
            s.noise = noise;
        }
        self
    }

    /// Paced: its GETs wait for send slots.
    pub fn is_limited(&self) -> bool {
        self.limited.load(Ordering::Relaxed)
    }

    /// Its gate is crowded: keys of this partition are better parked than waited for.
    pub fn crowded(&self) -> bool {
        self.limited.load(Ordering::Relaxed) && self.waiting.load(Ordering::Relaxed) >= CROWDED
    }

    /// Takes the next send slot; `Some(t)` when the GET must wait until `t`.
    fn next_slot(&self, now: Instant) -> Option<Instant> {
        let Ok(mut s) = self.state.lock() else { return None };
        self.storm_end(&mut s, now);
        let rate = s.rate(now);
        if !rate.is_finite() {
            // Far above the last limit with no throttling: unlimited again.
            self.limited.store(false, Ordering::Release);
            return None;
        }
        let late = now.checked_sub(CATCH_UP).unwrap_or(now);
        if late > s.next {
            // Nobody was waiting for the slots since `next`: the rate was not used, so it
            // says nothing about the limit, and the curve waits (no growth while idle). A
            // group on trial doubles by the clock: its keys come as fetchers free up, which
            // is what the trial is about.
            let idle = late - s.next;
            let trial = s.trial;
            if let Some(epoch) = s.epoch.as_mut().filter(|_| !trial) {
                *epoch += idle;
            }
        }
        let slot = s.next.max(late);
        s.next = slot + Duration::from_secs_f64(1.0 / rate);
        (slot > now).then_some(slot)
    }

    /// One answer to a GET of this partition sent at `sent` (`None`: before anything was
    /// limited) with `in_flight` GETs in flight, itself included; `child`: for the root
    /// partition, the first path component of its key; `crowded`: the GET passed a crowded
    /// gate. True when the root should look at splitting partitions off. (Each argument is
    /// one fact about the answer, as the simulation in the tests gives them.)
    #[allow(clippy::too_many_arguments)]
    fn feedback(
        &self,
        sent: Option<Instant>,
        throttled: bool,
        in_flight: usize,
        now: Instant,
        now_ms: u64,
        child: Option<&str>,
        crowded: bool,
    ) -> bool {
        let limited = self.limited.load(Ordering::Acquire);
        if let (false, Some(sent)) = (throttled, sent) {
            self.note_ok_rtt(now.saturating_duration_since(sent));
        }
        if !limited {
            // A success while unlimited touches nothing else: the sends counted on the way
            // out stand for the answers.
            if !throttled {
                return false;
            }
            self.throttles.record(now_ms);
        }
        let Ok(mut s) = self.state.lock() else { return false };
        // Only GETs that passed a busy gate: the pipeline then hands it parked keys of every
        // group in turn, so the groups' answers are contemporaneous. Otherwise keys come in
        // listing order, one group after another, and a group throttled *now* would look
        // hot beside groups that succeeded a moment ago (GETs sent unpaced while the
        // service's bucket still had room, whose answers come after the gate filled).
        // Splitting is looked at on every throttling answer, and every 50 ms besides
        // (throttling answers may have become rare by then, while the evidence is complete).
        let mut evaluate = throttled;
        if let (Some(name), Some(sent)) = (child.filter(|_| limited && crowded), sent) {
            evaluate |= s.count_child(name, throttled, sent, now);
        }
        s.throttled += u64::from(throttled);
        if let Some(sent) = sent {
            let rtt = now.saturating_duration_since(sent);
            s.srtt = if s.srtt.is_zero() { rtt } else { (s.srtt * 7 + rtt) / 8 };
            if throttled {
                s.refusal_rtt = if s.refusal_rtt.is_zero() { rtt } else { (s.refusal_rtt * 7 + rtt) / 8 };
            }
        }
        // Sent after the last change had settled: GETs sent before it (and in the round trip
        // after it, while those still reach the service) drew from the same bucket at the
        // old rate. A GET sent before anything was limited predates every change.
        let fresh = match (sent, s.changed) {
            (_, None) => true,
            (Some(sent), Some(changed)) => sent >= changed + s.srtt,
            (None, Some(_)) => false,
        };
        if let Some(sent) = sent {
            Self::storm_answer(&mut s, sent, throttled, in_flight);
        }
        self.storm_end(&mut s, now);
        if !fresh {
            // Stale for the rate, but still evidence of where the throttling comes from.
            return evaluate && child.is_some();
        }
        if !limited {
            self.first_cut(&mut s, sent, in_flight, now, now_ms);
            return child.is_some();
        }
        // While a cut is judged its answers are not measured again: under throttling at
        // random, a second cut would come before the first was found useless.
        if !self.judge_cut(&mut s, throttled, now) {
            self.measure(&mut s, throttled, now);
        }
        evaluate && child.is_some()
    }

    /// Counts an answer towards the verdict on the last cut, if one is pending (false if none
    /// is), and acts on the verdict.
    fn judge_cut(&self, s: &mut State, throttled: bool, now: Instant) -> bool {
        let Some(v) = &mut s.verdict else { return false };
        v.after[usize::from(throttled)] += 1;
        match v.judge() {
            Judged::Pending => {}
            Judged::Limit => {
                tracing::debug!(partition = %self.name, before = ?v.before, after = ?v.after, "a cut that lowered the throttled fraction: kept");
                // Below the limit now, the fraction left is the noise at most.
                let bound = v.noise_bound();
                let first_and_below = v.guess && v.after[1] as f64 <= s.noise * v.after[0] as f64 + 1.0;
                s.noise = s.noise.min(bound);
                s.verdict = None;
                if first_and_below {
                    // The first cut, a guess, took the rate below the limit, which may be
                    // anywhere above (a cap on GETs in flight met while their window grew
                    // looks like a limit at the rate of that moment): climb by doubling
                    // every few round trips until the next measurement finds it.
                    let rate = s.rate(now);
                    let rate = s.restart(rate, now);
                    s.doubling = Some(s.doubling_every(rate));
                }
            }
            Judged::Noise => self.undo(s, now),
        }
        true
    }

    /// A throttling answer while unlimited: the first cut, unless it is no more than the noise
    /// already known, or among the first few dozen GETs and not many of them. There is no
    /// pacing rate to go by, only what was sent lately: half of it (an upper bound), and the
    /// measurement that follows sets the rate.
    fn first_cut(&self, s: &mut State, sent: Option<Instant>, in_flight: usize, now: Instant, now_ms: u64) {
        let from = now_ms.saturating_sub(SHORT_WINDOW.as_millis() as u64);
        if s.noise > 0.0 {
            // Tested at every throttling answer over overlapping stretches, and against noise
            // that was measured once: twice the noise at least. A limit crossed unlimited
            // throttles far more within milliseconds.
            let (n, k) = (self.sends.count(from, now_ms), self.throttles.count(from, now_ms));
            if !above_noise(k, n, 2.0 * s.noise, UNLIMITED_Z) {
                return;
            }
        }
        // The throttled fraction before the cut: over the last second, or since the last
        // change if that is more recent. Too few GETs to know it (a run that just began)
        // cut only when throttled too often to be noise.
        let since = s.changed.map_or(0, |c| self.ms_of(c, now, now_ms));
        let long = now_ms.saturating_sub(RING as u64 - 1).max(since);
        let (n, k) = (self.sends.count(long, now_ms), self.throttles.count(long, now_ms));
        if n < VERDICT_MIN && (n < PROBE_ANSWERS || k as f64 <= NOISE_MAX * n as f64) {
            return;
        }
        // One throttling answer is no limit: a limit being crossed answers more than once. A
        // cut on one among hundreds could not be judged either (the fraction before it is
        // about nought, as after it) until a thousand answers came at half the rate.
        if k < 2 {
            return;
        }
        let span = (now_ms - from).max(1) as f64 / 1000.0;
        let recent = self.sends.count(from, now_ms) as f64 / span;
        let lowest = s.lowest;
        s.cut(FIRST_CUT * recent, now);
        // Half of what was sent is a guess: the limit may be anywhere below, or well above (a
        // shallow bucket refuses a burst long before the rate reaches the limit). The curve
        // climbs back towards what was sent, not towards the guess, so the next measurement
        // comes within a second either way.
        s.plateau(recent);
        let verdict = Verdict::new([n.saturating_sub(k), k], recent, FIRST_CUT * recent, s.noise, None, lowest);
        s.verdict = Some(verdict.guessed());
        if let Some(from) = sent {
            let pause = (now.saturating_duration_since(from).mul_f64(STORM_PAUSE) + STORM_SLACK).min(STORM_PAUSE_MAX);
            s.next = s.next.max(now + pause);
            s.storm = Some(Storm { from, to: now, until: now + pause, answers: [0, 1], in_flight });
        }
        self.limited.store(true, Ordering::Release);
        tracing::debug!(partition = %self.name, rate = s.w * BETA, "throttled: first rate cut");
    }

    /// Counts an answer to a GET sent at `sent` towards the storm before the first cut.
    fn storm_answer(s: &mut State, sent: Instant, throttled: bool, in_flight: usize) {
        if let Some(storm) = &mut s.storm
            && sent > storm.from
            && sent <= storm.to
        {
            storm.answers[usize::from(throttled)] += 1;
            if throttled {
                storm.in_flight = storm.in_flight.min(in_flight);
            }
        }
    }

    /// Throttling answers come at once, in a fraction of a successful answer's round trip:
    /// refused without being served (a cap on GETs in flight), not answered as a GET is.
    fn refused_at_once(&self, s: &State) -> bool {
        let ok = self.ok_rtt_us.load(Ordering::Relaxed);
        !s.refusal_rtt.is_zero() && ok > 0 && s.refusal_rtt.as_micros() as u64 * AT_ONCE <= ok
    }

    /// One more successful answer that took `rtt`.
    fn note_ok_rtt(&self, rtt: Duration) {
        let us = rtt.as_micros().max(1) as u64;
        let old = self.ok_rtt_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 3 + us) / 4 };
        self.ok_rtt_us.store(new, Ordering::Relaxed);
    }

    /// Ends the storm after a first cut once its pause is over: the cut becomes β of what
    /// the service let through over it (one more, for a bucket that may have held one token),
    /// judged as the first cut. Too few answers to count (a storm of a fraction of a
    /// millisecond), the guess stands.
    fn storm_end(&self, s: &mut State, now: Instant) {
        let Some(storm) = s.storm.take_if(|st| now >= st.until) else { return };
        let [ok, thr] = storm.answers;
        let n = ok + thr;
        let span = storm.to.saturating_duration_since(storm.from).as_secs_f64();
        // The first cut's verdict, still pending, knows the lowest rate before it.
        let Some((lowest, before)) = s.verdict.as_ref().filter(|v| v.guess).map(|v| (v.lowest, v.before)) else {
            return;
        };
        if ok < STORM_PASSED_MIN {
            self.refused_storm(s, &storm, now);
            return;
        }
        if n < PROBE_ANSWERS || span <= 0.0 {
            return;
        }
        let target = BETA * (ok + 1) as f64 / span;
        let (noise, cuts) = (s.noise, s.cuts);
        s.cut(target, now);
        // The same cut, set where the storm says: counted once, its guess forgotten.
        s.cuts = cuts;
        s.lowest = lowest.min(target);
        let rate = n as f64 / span;
        s.verdict = Some(if thr > ok {
            Verdict::new([ok, thr], rate, target, noise, None, lowest)
        } else {
            // Mostly successes: the bucket may have had tokens between its refusals (a burst
            // over a shallow one), so the limit may be above what it let through — found
            // below it, the rate doubles until measured, as after a guess. Or the 503s come
            // at random, and the storm is a few dozen answers with a handful throttled: the
            // cut is judged against the answers before the cut too, not those few alone.
            let both = [before[0] + ok, before[1] + thr];
            Verdict::new(both, rate, target, noise, None, lowest).guessed()
        });
        tracing::debug!(partition = %self.name, rate = target, ok, thr, "throttled: first cut set by the storm");
    }

    /// A storm refused (nearly) whole, each GET at once (in a fraction of a successful
    /// answer's round trip): a store refusing GETs above a number in flight (or a limit far
    /// below what was sent, answering fast). The GETs in flight before the refusals are what
    /// it serves at once, answered in a round trip: β of that becomes the cut, if above the
    /// guess (half of what a window still growing sent is far below such a cap), judged as
    /// the guess was.
    fn refused_storm(&self, s: &mut State, storm: &Storm, now: Instant) {
        let rtt = self.ok_rtt_us.load(Ordering::Relaxed);
        let refusal = storm.to.saturating_duration_since(storm.from).as_micros() as u64;
        if rtt == 0 || storm.in_flight < 2 || refusal.saturating_mul(AT_ONCE) > rtt {
            return;
        }
        let target = BETA * (storm.in_flight - 1) as f64 * 1e6 / rtt as f64;
        if target <= s.rate(now) {
            return;
        }
        let Some(v) = s.verdict.take_if(|v| v.guess) else { return };
        let cuts = s.cuts;
        s.cut(target, now);
        s.cuts = cuts;
        s.lowest = v.lowest.min(target);
        s.verdict = Some(v);
        tracing::debug!(partition = %self.name, rate = target, in_flight = storm.in_flight, rtt_us = rtt, "throttled: first cut set by the GETs in flight");
    }

    /// The millisecond (as counted by the rings) of `t`, given that `now` is `now_ms`.
    fn ms_of(&self, t: Instant, now: Instant, now_ms: u64) -> u64 {
        now_ms.saturating_sub(now.saturating_duration_since(t).as_millis() as u64)
    }

    /// Measures the accepted rate after a fresh throttling answer (module notes) and cuts to
    /// it when the answers are throttled more than the noise explains. The answers after the
    /// one that began the measurement are counted: [`PROBE_ANSWERS`] of them, or, when fewer
    /// than [`NOISE_MAX`] of those were throttled (a limit just crossed, or noise), as many as
    /// it takes to know the fraction: enough to expect [`PROBE_EXPECTED`] noisy answers, and at
    /// least [`VERDICT_MIN`], which are also what the cut is judged against.
    fn measure(&self, s: &mut State, throttled: bool, now: Instant) {
        let Some(p) = &mut s.probe else {
            if throttled {
                s.probe = Some(Probe { answers: [0, 0], since: now, first_ok: None });
            }
            return;
        };
        p.answers[usize::from(throttled)] += 1;
        if !throttled && p.first_ok.is_none() {
            p.first_ok = Some(now);
        }
        let ([ok, thr], since, first_ok) = (p.answers, p.since, p.first_ok);
        let n = ok + thr;
        let heavy = thr as f64 > NOISE_MAX * n as f64;
        let length = if s.noise > 0.0 { (PROBE_EXPECTED / s.noise).ceil() as u64 } else { 0 };
        if n < PROBE_ANSWERS || (!heavy && n < length.clamp(VERDICT_MIN, PROBE_MAX)) {
            return;
        }
        // A successful answer's round trip at least: a store that refuses at once (a cap on
        // GETs in flight) answers its refusals in bursts, ahead of the successes sent beside
        // them.
        let rtt = Duration::from_micros(self.ok_rtt_us.load(Ordering::Relaxed)).max(s.srtt);
        if now.saturating_duration_since(since) < rtt.mul_f64(PROBE_RTTS) {
            return;
        }
        // Refused without being served, what the store serves is what was answered: counted
        // from the first fresh success (the refusals of GETs sent at the same time came a
        // round trip before it), over a round trip.
        let at_once = self.refused_at_once(s);
        let served = first_ok.map(|t| now.saturating_duration_since(t)).filter(|d| !d.is_zero());
        if at_once && served.is_none_or(|d| d < rtt.mul_f64(PROBE_RTTS)) {
            return;
        }
        s.probe = None;
        if !above_noise(thr, n, s.noise.max(NOISE_FLOOR), PROBE_Z) {
            if s.doubling.is_some() {
                // Near the limit again: on the curve from here.
                let rate = s.rate(now);
                s.restart(rate, now);
            }
            return;
        }
        // Far above the limit the fraction says little (a bucket that a burst left in debt
        // answers nothing for a while): halve, and measure again — climbing back by doubling
        // every few round trips, since the limit may be anywhere below where the burst went.
        // The noise is no part of what the limit refused.
        let rate = s.rate(now);
        if let Some(served) = served.filter(|_| at_once) {
            // However far above it GETs were sent.
            let target = BETA * ((ok.max(2) - 1) as f64 / served.as_secs_f64()).min(rate);
            s.cut(target, now);
            tracing::debug!(partition = %self.name, rate = target, ok, thr, "throttled: rate cut to what was served");
            return;
        }
        let fraction = (ok as f64 / n as f64 / (1.0 - s.noise)).min(1.0);
        let target = BETA * rate * fraction.max(0.5);
        let (curve, lowest, noise) = (s.curve(), s.lowest, s.noise);
        s.cut(target, now);
        if fraction <= 0.5 {
            s.doubling = Some(s.doubling_every(s.rate(now)));
        } else if !heavy && curve.doubling.is_none() && thr >= VERDICT_THROTTLED {
            // Few enough to be noise, measured at a steady rate (not while it doubled), and
            // enough to know their fraction: judged by the answers after the cut.
            s.verdict = Some(Verdict::new([ok, thr], rate, target, noise, Some(curve), lowest));
        }
        tracing::debug!(partition = %self.name, rate = target, ok, thr, "throttled: rate cut");
    }

    /// The last cut did not lower the throttled fraction: throttling at random, not a limit.
    /// The curve goes back to where it was (unlimited, for a first cut), and the fraction is
    /// the noise from now on.
    fn undo(&self, s: &mut State, now: Instant) {
        let Some(v) = s.verdict.take() else { return };
        // A cut that stayed above a limit can pass for noise, with the limit's share in its
        // fraction: the noise follows a higher fraction only a quarter of the way each time,
        // and a lower one at once.
        let pooled = v.pooled();
        s.noise = if s.noise > 0.0 && pooled > s.noise { s.noise + (pooled - s.noise) / 4.0 } else { pooled };
        s.cuts = s.cuts.saturating_sub(1);
        s.undone += 1;
        s.lowest = v.lowest;
        tracing::debug!(partition = %self.name, noise = s.noise, "a cut that did not lower the throttled fraction: undone");
        match v.curve {
            None => s.release(now, &self.limited),
            Some(c) => {
                (s.w, s.k, s.epoch, s.doubling, s.trial) = (c.w, c.k, c.epoch, c.doubling, c.trial);
                s.changed = Some(now);
                s.probe = None;
            }
        }
    }

    /// Starts limited at `rate`.
    fn start_at(&self, rate: f64, now: Instant) {
        if let Ok(mut s) = self.state.lock() {
            s.cut(rate, now);
            self.limited.store(true, Ordering::Release);
        }
    }

    /// Starts limited at `rate`, doubling it `every` (until a cut).
    fn start_doubling(&self, rate: f64, every: Duration, now: Instant) {
        if let Ok(mut s) = self.state.lock() {
            s.restart(rate, now);
            s.doubling = Some(every);
            s.trial = true;
            self.limited.store(true, Ordering::Release);
        }
    }

    /// Paced at a rate that was measured and has held for a while: no cut in the last few
    /// round trips, and no measurement going on.
    fn settled(&self, now: Instant) -> bool {
        let Ok(s) = self.state.lock() else { return false };
        s.probe.is_none()
            && s.verdict.is_none()
            && s.changed.is_some_and(|c| now.saturating_duration_since(c) >= (s.srtt * 4).max(SHORT_WINDOW))
    }

    /// Answers to GETs sent before `now` no longer measure the rate.
    fn stale_before(&self, now: Instant) {
        if let Ok(mut s) = self.state.lock() {
            s.changed = Some(now);
            s.probe = None;
            s.verdict = None;
        }
    }

    /// Counts a throttling answer that is not fed back (for the summary).
    fn count_throttled(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.throttled += 1;
        }
    }

    /// Drops the evidence about which first path components throttle.
    fn forget_children(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.clear_evidence();
        }
    }

    /// Unlimited again (up to the cap).
    fn release(&self, now: Instant) {
        if let Ok(mut s) = self.state.lock() {
            s.release(now, &self.limited);
        }
    }

    /// The first path components that most throttling answers of the window came from,
    /// when the others were answered without throttling (the module notes).
    fn hot_children(&self) -> Option<Vec<Box<str>>> {
        let Ok(mut s) = self.state.lock() else { return None };
        let throttled: u64 = s.children.values().map(|c| c[1]).sum();
        if throttled < SPLIT_MIN_THROTTLED {
            return None;
        }
        let mut by_throttled: Vec<(&Box<str>, &[u64; 2])> = s.children.iter().collect();
        by_throttled.sort_by(|a, b| b.1[1].cmp(&a.1[1]));
        let (mut hot, mut hot_answers, mut hot_throttled) = (Vec::new(), 0u64, 0u64);
        for (name, c) in &by_throttled {
            if hot_throttled as f64 >= SPLIT_SHARE * throttled as f64 {
                break;
            }
            if name.is_empty() || c[1] < SPLIT_MIN_THROTTLED / 2 {
                return None;
            }
            hot.push((*name).clone());
            hot_answers += c[0];
            hot_throttled += c[1];
        }
        let answers: u64 = s.children.values().map(|c| c[0]).sum();
        let (others, others_throttled) = (answers - hot_answers, throttled - hot_throttled);
        let hot_fraction = hot_throttled as f64 / hot_answers.max(1) as f64;
        // (1 − f)ⁿ ≤ SPLIT_CHANCE: n ≥ ln(SPLIT_CHANCE) / ln(1 − f).
        let significant = SPLIT_CHANCE.ln() / (1.0 - hot_fraction.min(0.99)).ln();
        if hot_fraction < SPLIT_MIN_FRACTION
            || others < SPLIT_MIN_OTHERS
            || (others as f64) < significant
            || others_throttled > 0
        {
            return None;
        }
        tracing::debug!(partition = %self.name, evidence = ?s.children, "throttling comes from some groups only");
        s.clear_evidence();
        Some(hot)
    }

    /// The fraction taken for noise and the cuts undone for it, if any was.
    fn noise_stats(&self) -> Option<(f64, u64)> {
        let s = self.state.lock().ok()?;
        (s.undone > 0).then_some((s.noise, s.undone))
    }

    fn stats(&self) -> Option<PartitionStats> {
        let s = self.state.lock().ok()?;
        if s.cuts == 0 && s.cap.is_infinite() {
            return None;
        }
        let limited = self.limited.load(Ordering::Relaxed);
        let rate = s.rate(Instant::now());
        Some(PartitionStats {
            prefix: self.name.clone(),
            rate: (limited && rate.is_finite()).then_some(rate),
            settled_rate: (s.cuts > 0).then_some(s.w * BETA),
            lowest_rate: s.lowest.is_finite().then_some(s.lowest),
            cuts: s.cuts,
            throttled: s.throttled,
        })
    }
}

impl State {
    /// Unlimited again (up to the cap); `limited` is the limiter's flag.
    fn release(&mut self, now: Instant, limited: &AtomicBool) {
        self.epoch = None;
        self.changed = Some(now);
        self.probe = None;
        self.doubling = None;
        self.trial = false;
        self.w = self.cap;
        self.verdict = None;
        self.clear_evidence();
        limited.store(self.cap.is_finite(), Ordering::Release);
    }

    fn curve(&self) -> Curve {
        Curve { w: self.w, k: self.k, epoch: self.epoch, doubling: self.doubling, trial: self.trial }
    }

    fn clear_evidence(&mut self) {
        self.children.clear();
        self.window = None;
        self.throttled_sent = None;
    }

    /// How often a rate that climbs back from `rate` by doubling doubles.
    fn doubling_every(&self, rate: f64) -> Duration {
        let measured = Duration::from_secs_f64(DOUBLING_PROBES * PROBE_ANSWERS as f64 / rate.max(MIN_RATE));
        (self.srtt * REMEASURE_RTTS).max(MIN_DOUBLING).max(measured)
    }

    /// The CUBIC rate at `now`, within `[MIN_RATE, cap]`.
    fn rate(&self, now: Instant) -> f64 {
        let Some(epoch) = self.epoch else { return self.cap };
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        let r = match self.doubling {
            Some(every) => self.w * BETA * (t / every.as_secs_f64()).exp2(),
            None => self.w * (1.0 + CUBIC_C * (t - self.k).powi(3)),
        };
        if r > RELEASE_ABOVE * self.w {
            return self.cap;
        }
        r.clamp(MIN_RATE.min(self.cap), self.cap)
    }

    /// A cut to `target`: the curve restarts there, with its plateau at `target / β`.
    fn cut(&mut self, target: f64, now: Instant) {
        let target = self.restart(target, now);
        self.cuts += 1;
        self.lowest = self.lowest.min(target);
    }

    /// The curve restarts at `target` (within bounds, returned).
    fn restart(&mut self, target: f64, now: Instant) -> f64 {
        let target = target.clamp(MIN_RATE.min(self.cap), self.cap);
        self.w = target / BETA;
        self.k = ((1.0 - BETA) / CUBIC_C).cbrt();
        self.epoch = Some(now);
        self.changed = Some(now);
        self.probe = None;
        self.doubling = None;
        self.trial = false;
        self.verdict = None;
        target
    }

    /// The curve, just restarted, climbs to `w` instead of `rate / β`: CUBIC's time to the
    /// plateau grows with the distance, `K = ∛((1 − rate/w) / C)`.
    fn plateau(&mut self, w: f64) {
        let rate = self.w * BETA;
        if w > rate / BETA && w.is_finite() {
            self.w = w;
            self.k = ((1.0 - rate / w) / CUBIC_C).cbrt();
        }
    }

    /// Counts one answer, to a GET sent at `sent`, of a first path component; true when it
    /// is time to look at the evidence again.
    ///
    /// Every throttling answer counts; a success only if its GET was sent within
    /// [`SPLIT_NEAR`] of the last one throttled: a group succeeding *while* another is
    /// throttled says the two do not share a limit; a group that succeeded a moment before
    /// or after says nothing (keys come in blocks, group after group, and the ones in flight
    /// when a burst overdraws a shared bucket all look hot).
    fn count_child(&mut self, name: &str, throttled: bool, sent: Instant, now: Instant) -> bool {
        let look = self.looked.is_none_or(|t| now.duration_since(t) >= SPLIT_LOOK);
        if look {
            self.looked = Some(now);
        }
        if self.window.is_none_or(|w| now.duration_since(w) > SPLIT_WINDOW) {
            // Older answers count half: the evidence slides instead of starting over.
            self.window = Some(now);
            self.children.retain(|_, c| {
                c[0] /= 2;
                c[1] /= 2;
                c[0] > 0
            });
        }
        if throttled {
            self.throttled_sent = Some(self.throttled_sent.map_or(sent, |t| t.max(sent)));
        } else if self.throttled_sent.is_none_or(|t| t.max(sent) - t.min(sent) > SPLIT_NEAR) {
            return look;
        }
        let c = match self.children.get_mut(name) {
            Some(c) => c,
            None => self.children.entry(name.into()).or_default(),
        };
        c[0] += 1;
        c[1] += u64::from(throttled);
        look
    }
}

/// Events per millisecond over the last [`RING`] milliseconds, lock-free: each slot holds
/// its millisecond (high 40 bits) and its count (low 24 bits).
struct Ring {
    slots: Box<[AtomicU64]>,
}

impl Ring {
    fn new() -> Ring {
        Ring { slots: (0..RING).map(|_| AtomicU64::new(u64::MAX)).collect() }
    }

    fn record(&self, ms: u64) {
        let slot = &self.slots[ms as usize % RING];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(if v >> 24 == ms { v + 1 } else { (ms << 24) | 1 })
        });
    }

    /// Successes from millisecond `from` to `to`, both included (at most the ring's length).
    fn count(&self, from: u64, to: u64) -> u64 {
        let from = from.max(to.saturating_sub(RING as u64 - 1));
        (from..=to)
            .map(|ms| {
                let v = self.slots[ms as usize % RING].load(Ordering::Relaxed);
                if v >> 24 == ms { v & 0xff_ffff } else { 0 }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    //! The limiter against a simulated service: a token bucket of `limit` GET/s holding
    //! 0.1 s of it (or another depth), 503s at random on top of it or a cap on GETs in flight,
    //! 10 ms from send to answer, 512 workers (or fewer) that send again as soon as they have
    //! an answer (a throttled key is sent again, as the fetch loop does). Time is virtual:
    //! every decision the limiter makes takes the simulated `now`, so these runs are exact and
    //! take milliseconds.
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    const LATENCY: f64 = 0.010;
    const WORKERS: usize = 512;
    /// A store over its in-flight cap answers at once, without the latency: in this long (a
    /// loaded server's few milliseconds, long enough for a few dozen GETs to be refused
    /// before the first refusal is in — none of them served, as no GET ends so soon).
    const REFUSED_US: u64 = 2000;

    struct Sim {
        base: Instant,
        limiter: Limiter,
        /// The service: rate (changeable; infinite: no limit), tokens, last refill, and the
        /// seconds of the rate its bucket holds.
        limit: f64,
        tokens: f64,
        refilled: f64,
        burst: f64,
        /// A fraction of GETs answered 503 at random.
        noise: f64,
        rng: u64,
        /// At most this many GETs served at once; how many are; how many are sent and not
        /// answered yet.
        cap: Option<usize>,
        serving: usize,
        outstanding: usize,
        workers: usize,
        /// [`Throttle`]'s flag: a throttling answer was seen.
        engaged: bool,
        /// Events by time (µs), then order of scheduling.
        events: BinaryHeap<Reverse<(u64, u64, Event)>>,
        seq: u64,
        /// Workers waiting for the gate, and whether one holds it.
        waiting: std::collections::VecDeque<usize>,
        gate_held: bool,
        /// Per whole second: [served, throttled].
        seconds: Vec<[u64; 2]>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Event {
        /// The answer to worker `w`'s GET: sent at, admitted, and whether it took a place among
        /// the GETs being served.
        Answer { w: usize, sent: u64, admitted: bool, held: bool, in_flight: usize },
        /// Worker `w` is next at the gate.
        Gate { w: usize },
        /// Worker `w`'s slot has come: it sends and lets the next one at the gate.
        Send { w: usize },
        /// Worker `w` tries its throttled key again.
        Retry { w: usize },
    }

    impl Sim {
        fn new(limit: f64) -> Sim {
            let base = Instant::now();
            Sim {
                base,
                limiter: Limiter::new(String::new(), None, base),
                limit,
                tokens: if limit.is_finite() { limit * 0.1 } else { 0.0 },
                refilled: 0.0,
                burst: 0.1,
                noise: 0.0,
                rng: 0x2545_f491_4f6c_dd1d,
                cap: None,
                serving: 0,
                outstanding: 0,
                workers: WORKERS,
                engaged: false,
                events: BinaryHeap::new(),
                seq: 0,
                waiting: std::collections::VecDeque::new(),
                gate_held: false,
                seconds: Vec::new(),
            }
        }

        /// The bucket holds `secs` of the rate (full at the start).
        fn burst(mut self, secs: f64) -> Sim {
            self.burst = secs;
            self.tokens = if self.limit.is_finite() { self.limit * secs } else { 0.0 };
            self
        }

        fn noise(mut self, p: f64) -> Sim {
            self.noise = p;
            self
        }

        fn cap(mut self, n: usize) -> Sim {
            self.cap = Some(n);
            self
        }

        fn workers(mut self, n: usize) -> Sim {
            self.workers = n;
            self
        }

        fn at(&self, us: u64) -> Instant {
            self.base + Duration::from_micros(us)
        }

        fn schedule(&mut self, us: u64, e: Event) {
            self.seq = self.seq.wrapping_add(1);
            self.events.push(Reverse((us, self.seq, e)));
        }

        /// A uniform number in [0, 1) from the simulation's own sequence.
        fn uniform(&mut self) -> f64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Worker `w` wants to send at `us`: at once, or through the gate when limited.
        fn want(&mut self, w: usize, us: u64) {
            if self.engaged && self.limiter.limited.load(Ordering::Relaxed) {
                self.waiting.push_back(w);
                if !self.gate_held {
                    self.next_at_gate(us);
                }
            } else {
                self.limiter.sends.record(us / 1000);
                self.send(w, us);
            }
        }

        fn next_at_gate(&mut self, us: u64) {
            if let Some(w) = self.waiting.pop_front() {
                self.gate_held = true;
                self.schedule(us, Event::Gate { w });
            }
        }

        /// The service decides when the request arrives: over the cap it refuses at once;
        /// else a random 503 (which takes no token) or the bucket decides, and the answer
        /// comes after the latency.
        fn send(&mut self, w: usize, us: u64) {
            self.outstanding += 1;
            let in_flight = self.outstanding;
            if self.cap.is_some_and(|cap| self.serving >= cap) {
                self.count(us, false);
                let answer = Event::Answer { w, sent: us, admitted: false, held: false, in_flight };
                self.schedule(us + REFUSED_US, answer);
                return;
            }
            self.serving += 1;
            let admitted = if self.uniform() < self.noise { false } else { self.take_token(us) };
            self.count(us, admitted);
            let answer = Event::Answer { w, sent: us, admitted, held: true, in_flight };
            self.schedule(us + (LATENCY * 1e6) as u64, answer);
        }

        fn take_token(&mut self, us: u64) -> bool {
            if !self.limit.is_finite() {
                return true;
            }
            let t = us as f64 / 1e6;
            let cap = (self.limit * self.burst).max(1.0);
            self.tokens = (self.tokens + self.limit * (t - self.refilled)).min(cap);
            self.refilled = t;
            let admitted = self.tokens >= 1.0;
            if admitted {
                self.tokens -= 1.0;
            }
            admitted
        }

        fn count(&mut self, us: u64, admitted: bool) {
            let second = us as usize / 1_000_000;
            if self.seconds.len() <= second {
                self.seconds.resize(second + 1, [0, 0]);
            }
            self.seconds[second][usize::from(!admitted)] += 1;
        }

        /// Runs until `until_us`.
        fn run(&mut self, until_us: u64) {
            if self.events.is_empty() {
                // The workers start 10 µs apart, as a client opening its connections does.
                for w in 0..self.workers {
                    self.schedule(w as u64 * 10, Event::Retry { w });
                }
            }
            while let Some(Reverse((us, seq, event))) = self.events.pop() {
                if us > until_us {
                    self.events.push(Reverse((us, seq, event)));
                    break;
                }
                match event {
                    Event::Answer { w, sent, admitted, held, in_flight } => {
                        self.serving -= usize::from(held);
                        self.outstanding -= 1;
                        let sent_at = Some(self.at(sent));
                        self.engaged |= !admitted;
                        let now = self.at(us);
                        self.limiter.feedback(sent_at, !admitted, in_flight, now, us / 1000, None, false);
                        if admitted {
                            self.want(w, us);
                        } else {
                            // The fetch loop's jittered pause before trying a throttled key
                            // again: up to 50 ms, or 10 ms while unlimited (a fixed
                            // pseudo-random sequence).
                            let bound = if self.limiter.limited.load(Ordering::Relaxed) { 50_000 } else { 10_000 };
                            self.seq = self.seq.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                            self.schedule(us + (self.seq >> 33) % bound, Event::Retry { w });
                        }
                    }
                    Event::Gate { w } => {
                        let slot = self.limiter.next_slot(self.at(us));
                        let at = slot.map_or(us, |t| t.saturating_duration_since(self.base).as_micros() as u64);
                        self.schedule(at, Event::Send { w });
                    }
                    Event::Send { w } => {
                        self.send(w, us);
                        self.gate_held = false;
                        self.next_at_gate(us);
                    }
                    Event::Retry { w } => self.want(w, us),
                }
            }
        }

        /// Served per second over whole seconds `from..to`, and the throttled fraction.
        fn goodput(&self, from: usize, to: usize) -> (f64, f64) {
            let s = &self.seconds[from..to];
            let served: u64 = s.iter().map(|x| x[0]).sum();
            let throttled: u64 = s.iter().map(|x| x[1]).sum();
            (served as f64 / (to - from) as f64, throttled as f64 / (served + throttled) as f64)
        }
    }

    #[test]
    fn converges_on_the_limit_within_two_seconds_and_stays_there() {
        for limit in [1500.0, 5500.0] {
            let mut sim = Sim::new(limit);
            sim.run(12_000_000);
            let (rate, throttled) = sim.goodput(2, 12);
            assert!(rate >= 0.95 * limit, "{limit}: {rate:.0} GET/s served from 2 s on: {:?}", sim.seconds);
            assert!(throttled <= 0.03, "{limit}: {:.1} % throttled from 2 s on", throttled * 100.0);
            // The simulation sends all 512 first GETs in the same microsecond, a harsher start
            // than a real run's (the endpoint bench measures 2-3 % over a whole run); the
            // first cut is judged on a few dozen answers before the rate is measured.
            let (_, all) = sim.goodput(0, 12);
            assert!(all <= 0.09, "{limit}: {:.1} % throttled over the run: {:?}", all * 100.0, sim.seconds);
        }
    }

    #[test]
    fn follows_a_limit_that_doubles() {
        let mut sim = Sim::new(1500.0);
        sim.run(8_000_000);
        sim.limit = 3000.0;
        sim.run(20_000_000);
        let (rate, _) = sim.goodput(14, 20);
        assert!(rate >= 0.9 * 3000.0, "{rate:.0} GET/s, 6 s after the limit doubled");
    }

    #[test]
    fn lets_go_when_the_limit_is_lifted() {
        let mut sim = Sim::new(1500.0);
        sim.run(8_000_000);
        assert!(sim.limiter.limited.load(Ordering::Relaxed));
        sim.limit = 1e9;
        sim.tokens = 1e8;
        sim.run(20_000_000);
        assert!(!sim.limiter.limited.load(Ordering::Relaxed), "unlimited again");
    }

    #[test]
    fn a_single_throttling_answer_does_not_cut() {
        let base = Instant::now();
        let l = Limiter::new(String::new(), Some(1000.0), base);
        let at = |ms: u64| base + Duration::from_millis(ms);
        for ms in 0..40 {
            l.feedback(Some(at(ms)), ms == 5, 1, at(ms + 10), ms + 10, None, false);
        }
        let s = l.state.lock().unwrap();
        assert_eq!((s.cuts, s.throttled), (0, 1), "one throttle among many successes is noise");
    }

    #[test]
    fn a_quiet_stretch_after_rare_throttling_is_no_proof_of_a_limit() {
        // 4 throttled among 251 before the cut: at 1 % at random, 208 answers with none come
        // one run in eight, and would take the noise for a limit.
        let mut v = Verdict::new([247, 4], 10_000.0, 7_000.0, 0.0, None, f64::INFINITY);
        v.after = [208, 0];
        assert!(matches!(v.judge(), Judged::Pending), "noise would have answered twice only");
        v.after = [600, 0];
        assert!(matches!(v.judge(), Judged::Limit), "nine expected, none seen");
    }

    #[test]
    fn answers_to_gets_sent_before_a_cut_do_not_cut_again() {
        let base = Instant::now();
        let l = Limiter::new(String::new(), None, base);
        let at = |ms: u64| base + Duration::from_millis(ms);
        // A throttling answer among the first: too few answers yet to know the fraction.
        l.feedback(None, true, 1, at(0), 0, None, false);
        assert!(!l.limited.load(Ordering::Relaxed), "no cut on the first answers");
        for ms in 0..100 {
            l.sends.record(ms);
            l.feedback(None, false, 1, at(ms), ms, None, false);
        }
        // The first throttling answer cuts; a burst of answers to GETs sent before it does not.
        l.feedback(None, true, 1, at(100), 100, None, false);
        for ms in 0..50 {
            l.feedback(Some(at(95)), true, 1, at(101 + ms), 101 + ms, None, false);
        }
        let s = l.state.lock().unwrap();
        assert_eq!(s.cuts, 1);
        assert_eq!(s.throttled, 52);
        // Half of the recent send rate (1 GET/ms over the last 100 ms), climbing back towards
        // all of it.
        let rate = s.rate(at(100));
        assert!((rate - 500.0).abs() < 10.0, "{rate}");
        assert!((s.w - 1000.0).abs() < 20.0, "{}", s.w);
    }

    /// A ticket for a GET of `lane` sent now (as [`Throttle::acquire`] gives one).
    fn ticket(t: &Throttle, lane: Arc<Limiter>) -> Ticket<'_> {
        let in_flight = t.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        Ticket { throttle: t, limiter: lane, sent: Some(Instant::now()), crowded: true, in_flight }
    }

    /// The root limited by throttling of `a/` keys, long enough ago to count as settled: the
    /// first throttling answer cuts, the answers after the cut, throttled as well, say it
    /// was a limit, and a measurement after them finds the rate no longer above it.
    fn throttled_by_a() -> Throttle {
        let t = Throttle::new("", None);
        // The first cut needs a few dozen GETs sent before it, to know the fraction.
        t.answered(ticket(&t, t.lane("a/0")), "a/0", Answer::Throttled);
        assert!(!t.root.limited.load(Ordering::Relaxed), "a throttling answer among the first is not enough");
        for _ in 0..VERDICT_MIN {
            t.root.sends.record(t.ms(Instant::now()));
        }
        // Sent longer ago than the last 100 ms, whose rate the first cut halves: the root starts
        // at the least rate, as a trial's arithmetic below expects.
        std::thread::sleep(SHORT_WINDOW + Duration::from_millis(10));
        t.answered(ticket(&t, t.lane("a/0")), "a/0", Answer::Throttled);
        assert!(t.root.limited.load(Ordering::Relaxed), "the first throttling answer limits the root");
        for i in 1..=PROBE_ANSWERS {
            let key = format!("a/{i}");
            t.answered(ticket(&t, t.lane(&key)), &key, Answer::Throttled);
        }
        assert!(t.root.state.lock().unwrap().verdict.is_none(), "judged a limit");
        // The next measurement finds the rate near the limit: on the curve from there.
        t.answered(ticket(&t, t.lane("a/0")), "a/0", Answer::Throttled);
        for i in 0..PROBE_ANSWERS.max(VERDICT_MIN) {
            let key = format!("a/{i}");
            t.answered(ticket(&t, t.lane(&key)), &key, Answer::Ok);
        }
        assert!(t.root.state.lock().unwrap().doubling.is_none(), "on the curve");
        std::thread::sleep(SHORT_WINDOW + Duration::from_millis(20));
        t
    }

    #[test]
    fn a_new_group_answered_fast_without_throttling_becomes_a_partition_of_its_own() {
        let t = throttled_by_a();
        let trial = t.lane("b/0");
        assert!(!Arc::ptr_eq(&trial, &t.root), "b/ is new: tried on a limiter of its own");
        assert!(Arc::ptr_eq(&t.lane("a/0"), &t.root), "a/ throttled in the root: not tried");
        assert!(Arc::ptr_eq(&t.lane("b/1"), &trial), "one limiter for the group");
        assert!(Arc::ptr_eq(&t.lane("c/0"), &t.root), "one trial at a time");
        for i in 0..TRIAL_ANSWERS {
            let key = format!("b/{i}");
            t.answered(ticket(&t, t.lane(&key)), &key, Answer::Ok);
        }
        assert!(Arc::ptr_eq(&t.lane("b/2"), &trial), "split off for good");
        assert!(t.split_off("b/").is_some());
        assert!(!trial.limited.load(Ordering::Relaxed), "unlimited: it was never throttled");
        assert!(t.root.limited.load(Ordering::Relaxed), "the root keeps its limit");
        assert!(!Arc::ptr_eq(&t.lane("c/0"), &t.root), "the next new group may be tried");
    }

    #[test]
    fn a_new_group_that_throttles_goes_back_and_the_next_trial_waits() {
        let t = throttled_by_a();
        let trial = t.lane("b/0");
        assert!(!Arc::ptr_eq(&trial, &t.root));
        t.answered(ticket(&t, trial.clone()), "b/0", Answer::Ok);
        let throttled_at = Instant::now();
        t.answered(ticket(&t, trial.clone()), "b/1", Answer::Throttled);
        assert!(Arc::ptr_eq(&t.lane("b/0"), &t.root), "shares the root's limit");
        assert!(t.split_off("b/").is_none());
        assert!(Arc::ptr_eq(&t.lane("c/0"), &t.root), "no new trial before the backoff");
        let trials = t.trials.lock().unwrap();
        assert!(trials.not_before.is_some_and(|at| at >= throttled_at + TRIAL_BACKOFF), "the next trial waits");
        assert_eq!(trials.backoff, TRIAL_BACKOFF * 2, "the wait after the next failed trial doubles");
    }

    #[test]
    fn the_root_holds_its_rate_while_a_group_is_tried() {
        let t = throttled_by_a();
        let before = t.root.state.lock().unwrap().cuts;
        let _trial = t.lane("b/0");
        for i in 0..40 {
            let key = format!("a/{i}");
            t.answered(ticket(&t, t.lane(&key)), &key, Answer::Throttled);
        }
        let s = t.root.state.lock().unwrap();
        assert_eq!(s.cuts, before, "answers during a trial measure the two lanes together: no cut");
        assert_eq!(s.throttled, 3 + PROBE_ANSWERS + 40, "but they are counted");
    }

    /// Answers through the root, from GETs sent just before, that passed a crowded gate or
    /// not.
    fn answers(t: &Throttle, crowded: bool, answers: impl Iterator<Item = (String, Answer)>) {
        for (key, answer) in answers {
            let in_flight = t.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            let ticket =
                Ticket { throttle: t, limiter: t.root.clone(), sent: Some(Instant::now()), crowded, in_flight };
            t.answered(ticket, &key, answer);
        }
    }

    /// 100 successes of `b/` keys with a throttling answer of an `a/` key after every fifth.
    fn b_while_a_throttled() -> impl Iterator<Item = (String, Answer)> {
        (0..100).flat_map(|i| {
            let a = (i % 5 == 0).then(|| (format!("a/{i}"), Answer::Throttled));
            a.into_iter().chain([(format!("b/{i}"), Answer::Ok)])
        })
    }

    #[test]
    fn a_group_succeeding_while_another_is_throttled_is_split_off() {
        let t = throttled_by_a();
        answers(&t, true, b_while_a_throttled());
        assert!(t.split_off("a/").is_some(), "contemporaneous answers: a/ is a partition of its own");
        assert!(!t.root.limited.load(Ordering::Relaxed), "the rest runs free");
    }

    #[test]
    fn gets_sent_unpaced_are_no_evidence() {
        let t = throttled_by_a();
        answers(&t, false, b_while_a_throttled());
        assert!(t.split_off("a/").is_none(), "sent past an empty gate, in listing order: not contemporaneous");
    }

    #[test]
    fn successes_before_the_throttling_began_are_no_evidence() {
        let t = throttled_by_a();
        let b = (0..100).map(|i| (format!("b/{i}"), Answer::Ok));
        let a = (0..20).map(|i| (format!("a/{i}"), Answer::Throttled));
        answers(&t, true, b.chain(a));
        assert!(t.split_off("a/").is_none(), "b/ was sent before a/ met the limit: no evidence they differ");
    }

    #[test]
    fn max_rate_tries_no_group_alone() {
        let t = Throttle::new("", Some(100.0));
        t.answered(ticket(&t, t.lane("a/0")), "a/0", Answer::Throttled);
        std::thread::sleep(SHORT_WINDOW + Duration::from_millis(20));
        assert!(Arc::ptr_eq(&t.lane("b/0"), &t.root), "--max-rate caps the whole run with one limiter");
    }

    /// Runs `sim` for 12 s: GETs served per second from 2 s on, the throttled fraction then,
    /// and the limiter's state.
    fn settled(mut sim: Sim) -> (f64, f64, Sim) {
        sim.run(12_000_000);
        let (rate, throttled) = sim.goodput(2, 12);
        (rate, throttled, sim)
    }

    #[test]
    fn throttling_at_random_is_not_taken_for_a_limit() {
        // 200 workers at 10 ms: 20,000 GET/s when nothing holds them back.
        for p in [0.01, 0.05] {
            let (rate, throttled, sim) = settled(Sim::new(f64::INFINITY).workers(200).noise(p));
            let s = sim.limiter.state.lock().unwrap();
            assert!(rate >= 0.95 * (1.0 - p) * 20_000.0, "{p}: {rate:.0} GET/s served: {:?}", sim.seconds);
            assert!((throttled - p).abs() < 0.005, "{p}: {:.2} % throttled", throttled * 100.0);
            assert!(s.undone >= 1 && s.cuts == 0, "{p}: cuts undone {}, standing {}", s.undone, s.cuts);
            assert!(s.noise > p / 2.0 && s.noise < 2.0 * p, "{p}: noise taken as {}", s.noise);
            assert!(!sim.limiter.limited.load(Ordering::Relaxed), "{p}: unlimited at the end");
        }
    }

    #[test]
    fn holds_a_limit_whatever_the_depth_of_its_bucket() {
        for limit in [1500.0, 5500.0] {
            for depth in [0.02, 0.1, 1.0] {
                let (rate, throttled, sim) = settled(Sim::new(limit).burst(depth));
                let s = sim.limiter.state.lock().unwrap();
                assert!(rate >= 0.95 * limit, "{limit} depth {depth}: {rate:.0} GET/s: {:?}", sim.seconds);
                assert!(throttled <= 0.03, "{limit} depth {depth}: {:.1} % throttled", throttled * 100.0);
                assert_eq!(s.undone, 0, "{limit} depth {depth}: a limit is never taken for noise");
                // Over the whole run, the first storm included: the limiter pauses until its
                // answers are in and sets the first cut by what the bucket let through, not at
                // half of what was sent (8 % throttled at 1,500 GET/s, the storm repeated).
                let (_, all) = sim.goodput(0, sim.seconds.len());
                assert!(
                    all <= 0.04,
                    "{limit} depth {depth}: {:.1} % throttled over the run: {:?}",
                    all * 100.0,
                    sim.seconds
                );
            }
        }
    }

    #[test]
    fn holds_a_cap_on_gets_in_flight_as_the_rate_it_allows() {
        // 128 in flight at 10 ms: 12,800 GET/s, refused at once above it.
        let (rate, throttled, sim) = settled(Sim::new(f64::INFINITY).cap(128));
        assert!(rate >= 0.85 * 12_800.0, "{rate:.0} GET/s: {:?}", sim.seconds);
        assert!(throttled <= 0.03, "{:.1} % throttled", throttled * 100.0);
    }

    #[test]
    fn random_throttling_on_top_of_a_limit_is_held_at_the_limit() {
        for (p, cap) in [(0.01, None), (0.05, None), (0.0, Some(128))] {
            let mut sim = Sim::new(5500.0).noise(p);
            if let Some(cap) = cap {
                sim = sim.cap(cap);
            }
            let (rate, throttled, sim) = settled(sim);
            assert!(rate >= 0.9 * 5500.0, "{p} {cap:?}: {rate:.0} GET/s: {:?}", sim.seconds);
            // The noise, and what a measurement takes for it on top.
            assert!(throttled <= p + 0.06, "{p} {cap:?}: {:.1} % throttled", throttled * 100.0);
        }
    }

    #[test]
    fn holds_a_low_limit_without_climbing_away_from_it() {
        // At a few hundred GET/s a measurement's answers take longer than a few round trips:
        // a rate that doubled faster than it was measured climbed away from the limit after
        // each halving (85 % throttled at 100 GET/s, 57 % at 300, 32 workers at 10 ms).
        for (limit, most) in [(300.0, 0.05), (100.0, 0.3)] {
            let (rate, throttled, sim) = settled(Sim::new(limit).workers(32));
            assert!(rate >= 0.95 * limit, "{limit}: {rate:.0} GET/s: {:?}", sim.seconds);
            assert!(throttled <= most, "{limit}: {:.1} % throttled: {:?}", throttled * 100.0, sim.seconds);
        }
    }
}
