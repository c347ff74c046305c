//! The failure-rate view of a closed breaker: attempts and failures over a
//! sliding window, kept in a ring of fixed buckets so recording and reading
//! are O(buckets) with no allocation, whatever the traffic.
//!
//! The window slides a bucket at a time (a tenth of its length): an outcome
//! counts for between 90% and 100% of `window` after it happened. That
//! granularity is plenty for a "more than half failed in the last 30 s"
//! rule and keeps the state to a few words per destination.

use std::time::Duration;

use tokio::time::Instant;

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket-length interval since `origin` these counts belong to.
    slot: u64,
    calls: u32,
    failures: u32,
}

/// Outcomes over the last `window`.
#[derive(Debug)]
pub(super) struct RateWindow {
    origin: Instant,
    bucket_len: Duration,
    buckets: [Bucket; BUCKETS],
}

impl RateWindow {
    pub(super) fn new(window: Duration, origin: Instant) -> Self {
        // At least a millisecond a bucket: a zero window (refused by config
        // validation) must not divide by zero here.
        let bucket_len = (window / BUCKETS as u32).max(Duration::from_millis(1));
        Self {
            origin,
            bucket_len,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin);
        (elapsed.as_nanos() / self.bucket_len.as_nanos()) as u64
    }

    /// Counts one outcome at `now`.
    pub(super) fn record(&mut self, now: Instant, failed: bool) {
        let slot = self.slot(now);
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(failed));
    }

    /// `(calls, failures)` over the window ending at `now`.
    pub(super) fn totals(&self, now: Instant) -> (u32, u32) {
        let current = self.slot(now);
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && current.saturating_sub(b.slot) < BUCKETS as u64)
            .fold((0, 0), |(calls, failures), b| {
                (
                    calls.saturating_add(b.calls),
                    failures.saturating_add(b.failures),
                )
            })
    }

    /// Forgets everything (a new state starts with a clean slate).
    pub(super) fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_within_the_window_and_age_out_after_it() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(10), t0);
        w.record(t0, true);
        w.record(t0 + Duration::from_secs(4), false);
        w.record(t0 + Duration::from_secs(9), true);
        assert_eq!(w.totals(t0 + Duration::from_secs(9)), (3, 2));
        // The first outcome's bucket (0-1 s) leaves the window at 10 s.
        assert_eq!(w.totals(t0 + Duration::from_secs(10)), (2, 1));
        assert_eq!(w.totals(t0 + Duration::from_secs(18)), (1, 1));
        assert_eq!(w.totals(t0 + Duration::from_secs(19)), (0, 0));
        assert_eq!(w.totals(t0 + Duration::from_secs(30)), (0, 0));
        // A reused ring slot starts from zero.
        w.record(t0 + Duration::from_secs(30), false);
        assert_eq!(w.totals(t0 + Duration::from_secs(30)), (1, 0));
        w.clear();
        assert_eq!(w.totals(t0 + Duration::from_secs(30)), (0, 0));
    }
}
