//! Per-upstream health counters: attempts that completed, those the breaker's rules call
//! failures and slow, and requests refused for overload, since the last health report. Lock-free: the request path adds with
//! relaxed atomics, the reporter swaps them back to zero.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What one upstream saw since the last report.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    requests: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
    overloaded: AtomicU64,
}

/// The counts taken by one report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub failures: u64,
    pub slow: u64,
    pub overloaded: u64,
}

impl UpstreamStats {
    /// One completed attempt: `failed` by `failureOn`, `slow` by `slowCall.duration`.
    pub fn record(&self, failed: bool, slow: bool) {
        // The request first: a report taken between the two adds sees the request without
        // its failure rather than a failure without its request.
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One request refused for overload: by this sidecar's protection, or by the upstream's.
    pub fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the counts since the previous call and starts again from zero. The three swaps
    /// are not one atomic step: an attempt recorded meanwhile may have its failure counted in
    /// the next report, so failures and slow calls are clamped to the requests.
    pub fn take(&self) -> Counts {
        let failures = self.failures.swap(0, Ordering::Relaxed);
        let slow = self.slow.swap(0, Ordering::Relaxed);
        let requests = self.requests.swap(0, Ordering::Relaxed);
        Counts {
            requests,
            failures: failures.min(requests),
            slow: slow.min(requests),
            overloaded: self.overloaded.swap(0, Ordering::Relaxed),
        }
    }
}

/// Whether an attempt that took `elapsed` is slow under `slowCall.duration` (none: never).
pub fn is_slow(slow_call: Option<Duration>, elapsed: Duration) -> bool {
    slow_call.is_some_and(|d| elapsed >= d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_and_reset() {
        let s = UpstreamStats::default();
        s.record(false, false);
        s.record(true, false);
        s.record(true, true);
        s.record(false, true);
        assert_eq!(
            s.take(),
            Counts {
                requests: 4,
                failures: 2,
                slow: 2,
                overloaded: 0
            }
        );
        assert_eq!(s.take(), Counts::default());
        s.record(true, false);
        s.overloaded();
        s.overloaded();
        assert_eq!(
            s.take(),
            Counts {
                requests: 1,
                failures: 1,
                slow: 0,
                overloaded: 2
            }
        );
    }

    #[test]
    fn slow_is_at_or_past_the_duration() {
        let d = Some(Duration::from_millis(100));
        assert!(!is_slow(d, Duration::from_millis(99)));
        assert!(is_slow(d, Duration::from_millis(100)));
        assert!(!is_slow(None, Duration::from_secs(60)));
    }
}
