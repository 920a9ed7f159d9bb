//! Per-revision request and error counts over a sliding five-minute window, cheap enough for
//! every request: a ring of ten-second buckets updated with atomics, no lock and no allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Width of one bucket in seconds.
pub const BUCKET_SECS: u64 = 10;
/// Buckets in the ring: 30 × 10 s = the 5-minute window.
pub const BUCKETS: usize = 30;

#[derive(Debug, Default)]
struct Bucket {
    /// Which ten-second slot (since the window's start) the counts belong to, plus one, so 0
    /// means never used.
    slot: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

/// Requests and errors over the last [`BUCKETS`] × [`BUCKET_SECS`] seconds.
///
/// When a bucket is reused for a new slot, the thread that claims it resets its counts; an
/// increment racing with that reset may be lost. The figures are for people watching a
/// rollout, so that rare miscount is accepted in exchange for a lock-free hot path.
#[derive(Debug)]
pub struct RequestWindow {
    start: Instant,
    buckets: [Bucket; BUCKETS],
    /// Requests and errors since the window was made; a rollout step's figures are the
    /// difference between two readings.
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Default for RequestWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestWindow {
    /// An empty window starting now.
    pub fn new() -> RequestWindow {
        RequestWindow {
            start: Instant::now(),
            buckets: Default::default(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    fn slot_now(&self) -> u64 {
        self.start.elapsed().as_secs() / BUCKET_SECS + 1
    }

    /// Counts one answered request, and an error when `error` (a 5xx or a function error).
    pub fn record(&self, error: bool) {
        self.record_at(self.slot_now(), error);
    }

    /// `(requests, errors)` since the window was made.
    pub fn cumulative(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    fn record_at(&self, slot: u64, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let b = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = b.slot.load(Ordering::Acquire);
        if seen != slot
            && b.slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.errors.store(0, Ordering::Relaxed);
        }
        b.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            b.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(requests, errors)` over the last five minutes.
    pub fn totals(&self) -> (u64, u64) {
        self.totals_at(self.slot_now())
    }

    fn totals_at(&self, now: u64) -> (u64, u64) {
        let oldest = now.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| {
                let s = b.slot.load(Ordering::Acquire);
                s >= oldest && s <= now && s != 0
            })
            .fold((0, 0), |(r, e), b| {
                (
                    r + b.requests.load(Ordering::Relaxed),
                    e + b.errors.load(Ordering::Relaxed),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_older_buckets() {
        let w = RequestWindow::new();
        for i in 0..10 {
            w.record_at(1, i % 5 == 0);
        }
        w.record_at(5, true);
        assert_eq!(w.totals_at(5), (11, 3));
        // Slot 30 is the last one whose window still holds slot 1.
        assert_eq!(w.totals_at(30), (11, 3));
        assert_eq!(w.totals_at(31), (1, 1));
        // Slot 31 reuses slot 1's bucket and starts it from zero.
        w.record_at(31, false);
        assert_eq!(w.totals_at(31), (2, 1));
        assert_eq!(w.totals_at(100), (0, 0));
    }

    #[test]
    fn record_counts_now() {
        let w = RequestWindow::new();
        w.record(false);
        w.record(true);
        assert_eq!(w.totals(), (2, 1));
        assert_eq!(w.cumulative(), (2, 1));
    }
}
