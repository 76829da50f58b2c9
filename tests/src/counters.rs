//! What a test upstream saw — request counts (total, per path, per fault key), cancellations,
//! each request's arrival time and headers — and which requests it fails on purpose: the
//! deterministic plan of the builder, or a [`Fault`] asked for by headers or the builder.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method};
use tokio::time::Instant;

use crate::fault::{self, Fault};
use crate::process::lock;

/// How many [`Seen`] records an upstream keeps (the oldest go first), so that a long benchmark
/// run of `bulwark-upstream` does not grow without bound. Counts stay exact.
pub const SEEN_LIMIT: usize = 10_000;

/// One request as an upstream saw it arrive.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived (tokio's clock, as the tests measure with).
    pub at: Instant,
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// Its `x-fault-key`, if any.
    pub key: Option<String>,
    /// Its `x-bulwark-attempt`, if any and a number.
    pub attempt: Option<u32>,
    /// Its `grpc-timeout`, as sent (e.g. `287m`).
    pub grpc_timeout: Option<String>,
    /// Its `traceparent`, as sent.
    pub traceparent: Option<String>,
}

/// What an upstream does with a request it has just counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Serve it.
    Serve,
    /// The builder's failure plan fails it (503 / UNAVAILABLE).
    Planned,
    /// Inject this fault.
    Fault(Fault),
    /// Its fault headers do not parse: answer 400 (gRPC: INVALID_ARGUMENT) with this text.
    BadFault(String),
}

#[derive(Debug, Default, Clone, Copy)]
struct KeyCounts {
    requests: u64,
    cancelled: u64,
}

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
/// What a test upstream saw; both upstream handles dereference to it for their queries.
pub struct Record {
    total: AtomicU64,
    cancelled: AtomicU64,
    per_path: Mutex<HashMap<String, u64>>,
    per_key: Mutex<HashMap<String, KeyCounts>>,
    seen: Mutex<VecDeque<Seen>>,
    last_headers: Mutex<Option<HeaderMap>>,
    failures: FailurePlan,
    /// Injected into every request whose headers ask for no fault of their own.
    fault: Option<Fault>,
}

impl Record {
    pub(crate) fn new(failures: FailurePlan, fault: Option<Fault>) -> Arc<Self> {
        Arc::new(Record {
            failures,
            fault,
            ..Record::default()
        })
    }

    /// Counts and records a request, and decides what to do with it.
    pub(crate) fn observe(&self, method: &Method, path: &str, headers: &HeaderMap) -> Verdict {
        let at = Instant::now();
        let n = self.total.fetch_add(1, Ordering::SeqCst);
        *lock(&self.per_path).entry(path.to_string()).or_insert(0) += 1;
        *lock(&self.last_headers) = Some(headers.clone());
        let key = fault::request_key(headers);
        let nth_of_key = {
            let mut per_key = lock(&self.per_key);
            let counts = per_key.entry(key.clone()).or_default();
            counts.requests += 1;
            counts.requests
        };
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let seen = Seen {
            at,
            method: method.clone(),
            path: path.to_string(),
            key: text(fault::KEY),
            attempt: text("x-bulwark-attempt").and_then(|a| a.trim().parse().ok()),
            grpc_timeout: text("grpc-timeout"),
            traceparent: text("traceparent"),
        };
        {
            let mut log = lock(&self.seen);
            if log.len() == SEEN_LIMIT {
                log.pop_front();
            }
            log.push_back(seen);
        }
        if self.failures.fails(n) {
            return Verdict::Planned;
        }
        let fault = match Fault::from_headers(headers) {
            Ok(Some(fault)) => fault,
            Ok(None) => match &self.fault {
                Some(fault) => fault.clone(),
                None => return Verdict::Serve,
            },
            Err(e) => return Verdict::BadFault(e),
        };
        match fault.first {
            Some(first) if nth_of_key > first => Verdict::Serve,
            _ => Verdict::Fault(fault),
        }
    }

    /// Requests (gRPC: calls) received, injected failures included.
    pub fn requests(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Requests received for exactly this path (no query; gRPC: the method path).
    pub fn requests_to(&self, path: &str) -> u64 {
        lock(&self.per_path).get(path).copied().unwrap_or(0)
    }

    /// Requests dropped by the caller before they were answered.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The headers of the last request received.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        lock(&self.last_headers).clone()
    }

    /// Requests received with `x-fault-key: key` (the attempts of one call, when a test gives
    /// each call its own key).
    pub fn attempts_for(&self, key: &str) -> u64 {
        lock(&self.per_key).get(key).map_or(0, |c| c.requests)
    }

    /// Requests with `x-fault-key: key` dropped before they were answered.
    pub fn cancelled_for(&self, key: &str) -> u64 {
        lock(&self.per_key).get(key).map_or(0, |c| c.cancelled)
    }

    /// Every request received (the last [`SEEN_LIMIT`]), in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).iter().cloned().collect()
    }

    /// The requests with `x-fault-key: key`, in order of arrival.
    /// When each request with `x-fault-key: key` arrived, in order.
    pub fn arrivals_for(&self, key: &str) -> Vec<tokio::time::Instant> {
        self.seen_for(key).iter().map(|s| s.at).collect()
    }

    pub fn seen_for(&self, key: &str) -> Vec<Seen> {
        lock(&self.seen)
            .iter()
            .filter(|s| s.key.as_deref().unwrap_or("") == key)
            .cloned()
            .collect()
    }

    fn count_cancel(&self, key: Option<&str>) {
        self.cancelled.fetch_add(1, Ordering::SeqCst);
        if let Some(key) = key {
            lock(&self.per_key)
                .entry(key.to_string())
                .or_default()
                .cancelled += 1;
        }
    }
}

/// Counts a cancellation when dropped while still armed: handlers hold one across the part of
/// their work that a caller can abandon, and disarm it when they finish normally.
#[derive(Debug)]
pub(crate) struct CancelGuard {
    record: Arc<Record>,
    key: Option<String>,
    armed: bool,
}

impl CancelGuard {
    pub(crate) fn new(record: &Arc<Record>) -> Self {
        CancelGuard {
            record: record.clone(),
            key: None,
            armed: true,
        }
    }

    /// A guard that also counts the cancellation under a fault key.
    pub(crate) fn for_key(record: &Arc<Record>, key: String) -> Self {
        CancelGuard {
            record: record.clone(),
            key: Some(key),
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
            self.record.count_cancel(self.key.as_deref());
        }
    }
}

/// Waits out a fault's delay, if any, counting a cancellation (under the request's key) when
/// the caller gives up meanwhile.
pub(crate) async fn fault_delay(record: &Arc<Record>, fault: &Fault, headers: &HeaderMap) {
    if let Some(delay) = fault.delay {
        let guard = CancelGuard::for_key(record, fault::request_key(headers));
        tokio::time::sleep(delay).await;
        guard.disarm();
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn faults_count_per_key() {
        let record = Record::new(FailurePlan::default(), None);
        let mut a = HeaderMap::new();
        Fault::new()
            .status(503)
            .first(2)
            .key("a")
            .insert_into(&mut a);
        let mut b = a.clone();
        b.insert(fault::KEY, HeaderValue::from_static("b"));
        let get = Method::GET;
        let verdicts: Vec<bool> = [&a, &b, &a, &b, &a, &b]
            .iter()
            .map(|h| matches!(record.observe(&get, "/x", h), Verdict::Fault(_)))
            .collect();
        assert_eq!(verdicts, [true, true, true, true, false, false]);
        assert_eq!(record.attempts_for("a"), 3);
        assert_eq!(record.seen_for("b").len(), 3);
        assert_eq!(
            record.observe(&get, "/x", &HeaderMap::new()),
            Verdict::Serve
        );
        assert_eq!(record.attempts_for(""), 1);
        assert_eq!(record.requests(), 7);
    }

    #[test]
    fn builder_fault_applies_unless_headers_ask_otherwise() {
        let record = Record::new(FailurePlan::default(), Some(Fault::new().status(500)));
        let get = Method::GET;
        assert_eq!(
            record.observe(&get, "/x", &HeaderMap::new()),
            Verdict::Fault(Fault::new().status(500))
        );
        let mut h = HeaderMap::new();
        Fault::new().status(429).insert_into(&mut h);
        assert_eq!(
            record.observe(&get, "/x", &h),
            Verdict::Fault(Fault::new().status(429))
        );
        h.insert(fault::STATUS, HeaderValue::from_static("x"));
        assert!(matches!(
            record.observe(&get, "/x", &h),
            Verdict::BadFault(_)
        ));
    }

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
