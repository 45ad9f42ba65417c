//! Keys set aside while their partition's rate limiter is crowded.

use crate::queue::Listed;

/// Keys set aside because their partition's rate limiter is crowded (more GETs waiting at
/// its gate than it needs to keep its rate), so that the fetchers serve other partitions
/// instead of all waiting for one: S3 limits each prefix partition on its own. Parked keys
/// are grouped by partition and first path component, and taken round-robin whenever their
/// partition has room again, so that a limited partition's GETs mix keys of every prefix
/// under it — which is how the limiter learns which of them is limited (see
/// [`crate::fetch::throttle`]). At most [`PARKED_MAX`] keys are parked; beyond, fetchers wait at
/// the gate.
#[derive(Default)]
pub struct Parked {
    groups: std::sync::Mutex<ParkedGroups>,
    count: std::sync::atomic::AtomicUsize,
}

/// Parked keys by first path component (`prefix/component/`, or SOURCE's prefix).
#[derive(Default)]
struct ParkedGroups {
    groups: Vec<(Box<str>, std::collections::VecDeque<Listed>)>,
    /// Where the next round-robin look starts.
    next: usize,
}

/// A fetcher with parked keys waiting looks at them at least this often (the limiter's
/// signal that a gate has room is the usual wake-up; this bounds a missed one).
pub const PARKED_LOOK: std::time::Duration = std::time::Duration::from_millis(100);

/// Parked keys at most (~100 bytes each plus the key).
const PARKED_MAX: usize = 100_000;

impl Parked {
    pub fn is_empty(&self) -> bool {
        self.count.load(std::sync::atomic::Ordering::Relaxed) == 0
    }

    /// Parks `item` in `group`; gives it back when the parking is full.
    #[allow(clippy::result_large_err)] // the key goes back to its caller, not into an error
    pub fn park(&self, group: &str, item: Listed) -> Result<(), Listed> {
        use std::sync::atomic::Ordering;
        let Ok(mut p) = self.groups.lock() else { return Err(item) };
        if self.count.load(Ordering::Relaxed) >= PARKED_MAX {
            return Err(item);
        }
        match p.groups.iter_mut().find(|(g, _)| **g == *group) {
            Some((_, q)) => q.push_back(item),
            None => p.groups.push((group.into(), std::collections::VecDeque::from([item]))),
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A parked key of a group whose partition has room at its gate now (`crowded` tells;
    /// `None`: any group), from the groups in turn.
    pub fn take(&self, crowded: Option<&dyn Fn(&str) -> bool>) -> Option<Listed> {
        use std::sync::atomic::Ordering;
        if self.is_empty() {
            return None;
        }
        let mut p = self.groups.lock().ok()?;
        let n = p.groups.len();
        let at = (0..n).map(|i| (p.next + i) % n).find(|&i| crowded.is_none_or(|c| !c(&p.groups[i].0)))?;
        let item = p.groups[at].1.pop_front();
        if p.groups[at].1.is_empty() {
            p.groups.swap_remove(at);
        }
        p.next = at + 1;
        self.count.fetch_sub(1, Ordering::Relaxed);
        item
    }
}
