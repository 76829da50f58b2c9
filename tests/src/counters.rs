//! What a test upstream saw — request counts (total and per path), cancellations, the last
//! request's headers — and its deterministic failure injection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderMap;

/// Which requests an upstream answers with an injected failure (503 / gRPC UNAVAILABLE).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FailurePlan {
    /// The first this-many requests fail.
    pub(crate) first: u64,
    /// Then this share of requests (0–100) fails, spread evenly by a counter, not by chance,
    /// so that runs repeat exactly.
    pub(crate) percent: u32,
}

impl FailurePlan {
    /// Whether the request with 0-based sequence number `n` fails.
    fn fails(&self, n: u64) -> bool {
        if n < self.first {
            return true;
        }
        let m = n - self.first;
        let p = u64::from(self.percent.min(100));
        // The integer part of m·p/100 grows by one exactly p times in every 100 requests.
        (m + 1) * p / 100 > m * p / 100
    }
}

/// Shared between an upstream's handle and its handlers.
#[derive(Debug, Default)]
pub(crate) struct Record {
    total: AtomicU64,
    cancelled: AtomicU64,
    per_path: Mutex<HashMap<String, u64>>,
    last_headers: Mutex<Option<HeaderMap>>,
    failures: FailurePlan,
}

impl Record {
    pub(crate) fn new(failures: FailurePlan) -> Arc<Self> {
        Arc::new(Record {
            failures,
            ..Record::default()
        })
    }

    /// Counts a request; returns `true` when it must be answered with an injected failure.
    pub(crate) fn observe(&self, path: &str, headers: &HeaderMap) -> bool {
        let n = self.total.fetch_add(1, Ordering::SeqCst);
        *lock(&self.per_path).entry(path.to_string()).or_insert(0) += 1;
        *lock(&self.last_headers) = Some(headers.clone());
        self.failures.fails(n)
    }

    pub(crate) fn requests(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    pub(crate) fn requests_to(&self, path: &str) -> u64 {
        lock(&self.per_path).get(path).copied().unwrap_or(0)
    }

    pub(crate) fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub(crate) fn last_headers(&self) -> Option<HeaderMap> {
        lock(&self.last_headers).clone()
    }
}

/// Counts a cancellation when dropped while still armed: handlers hold one across the part of
/// their work that a caller can abandon, and disarm it when they finish normally.
#[derive(Debug)]
pub(crate) struct CancelGuard {
    record: Arc<Record>,
    armed: bool,
}

impl CancelGuard {
    pub(crate) fn new(record: &Arc<Record>) -> Self {
        CancelGuard {
            record: record.clone(),
            armed: true,
        }
    }

    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.record.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A poisoned lock only means another handler panicked; the counts are still right.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::FailurePlan;

    fn failing(plan: FailurePlan, n: u64) -> Vec<u64> {
        (0..n).filter(|&i| plan.fails(i)).collect()
    }

    #[test]
    fn failure_plans_are_exact() {
        let none = FailurePlan::default();
        assert!(failing(none, 1000).is_empty());
        let ten = FailurePlan {
            first: 0,
            percent: 10,
        };
        assert_eq!(
            failing(ten, 100),
            vec![9, 19, 29, 39, 49, 59, 69, 79, 89, 99]
        );
        let all = FailurePlan {
            first: 0,
            percent: 100,
        };
        assert_eq!(failing(all, 5).len(), 5);
        let first = FailurePlan {
            first: 2,
            percent: 0,
        };
        assert_eq!(failing(first, 10), vec![0, 1]);
        let half = FailurePlan {
            first: 0,
            percent: 50,
        };
        assert_eq!(failing(half, 1000).len(), 500);
    }
}
