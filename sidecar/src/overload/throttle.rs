//! Client-side throttling (Google's adaptive throttling, SRE book ch. 21): a caller that sees
//! its upstream accept fewer and fewer of its requests refuses some itself, with probability
//! `max(0, (requests − K·accepts) / (requests + 1))` over a sliding window, so an overloaded
//! callee stops receiving what it would refuse anyway. `K` (default 2) says how much more than
//! it accepts a callee is still sent. Retries never count as requests: a retry is not new
//! demand. Pure: the caller gives the time and the random draw.

use std::time::Duration;

use tokio::time::Instant;

/// Buckets the window is kept in.
const BUCKETS: usize = 12;

#[derive(Debug, Clone)]
pub struct Throttle {
    k: f64,
    bucket_span: Duration,
    /// Requests and accepts per bucket, a ring; `current` is the bucket of `current_start`.
    requests: [u64; BUCKETS],
    accepts: [u64; BUCKETS],
    current: usize,
    current_start: Instant,
}

impl Throttle {
    /// Over a window of `window` (2 minutes in the SRE book), with multiplier `k` (≥ 1).
    pub fn new(k: f64, window: Duration, now: Instant) -> Throttle {
        Throttle {
            k: k.max(1.0),
            bucket_span: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            requests: [0; BUCKETS],
            accepts: [0; BUCKETS],
            current: 0,
            current_start: now,
        }
    }

    /// The probability that a new request is refused here now.
    pub fn reject_probability(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let requests: u64 = self.requests.iter().sum();
        let accepts: u64 = self.accepts.iter().sum();
        let p = (requests as f64 - self.k * accepts as f64) / (requests as f64 + 1.0);
        p.clamp(0.0, 1.0)
    }

    /// Whether to refuse a new request, for a uniform draw `unit` in [0, 1). A refused request
    /// still counts as a request (the demand was there).
    pub fn refuse(&mut self, now: Instant, unit: f64) -> bool {
        let refuse = unit < self.reject_probability(now);
        self.requests[self.current] += 1;
        refuse
    }

    /// A request sent upstream ended: `accepted` unless the upstream refused it for overload
    /// (503, 429, `RESOURCE_EXHAUSTED`, `UNAVAILABLE`).
    pub fn record(&mut self, now: Instant, accepted: bool) {
        self.advance(now);
        if accepted {
            self.accepts[self.current] += 1;
        }
    }

    fn advance(&mut self, now: Instant) {
        let mut elapsed = now.saturating_duration_since(self.current_start);
        let mut steps = 0;
        while elapsed >= self.bucket_span && steps < BUCKETS {
            self.current = (self.current + 1) % BUCKETS;
            self.requests[self.current] = 0;
            self.accepts[self.current] = 0;
            self.current_start += self.bucket_span;
            elapsed -= self.bucket_span;
            steps += 1;
        }
        if elapsed >= self.bucket_span {
            // Idle for more than the whole window: everything is cleared already.
            self.current_start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(120);

    #[test]
    fn a_healthy_upstream_is_never_throttled() {
        let now = Instant::now();
        let mut t = Throttle::new(2.0, WINDOW, now);
        for _ in 0..1000 {
            assert!(!t.refuse(now, 0.0));
            t.record(now, true);
        }
        assert_eq!(t.reject_probability(now), 0.0);
    }

    #[test]
    fn refusals_grow_as_the_upstream_accepts_less_than_one_in_k() {
        let now = Instant::now();
        let mut t = Throttle::new(2.0, WINDOW, now);
        // The upstream accepts one request in four: (4 − 2·1)/(4+1) of new ones are refused
        // here, tending to a half.
        for i in 0..4000 {
            t.refuse(now, 1.0);
            t.record(now, i % 4 == 0);
        }
        let p = t.reject_probability(now);
        assert!((p - 0.5).abs() < 0.01, "{p}");
        // Half the upstream's capacity: accepted one in two is exactly K = 2 — nothing refused.
        let mut t = Throttle::new(2.0, WINDOW, now);
        for i in 0..4000 {
            t.refuse(now, 1.0);
            t.record(now, i % 2 == 0);
        }
        assert!(t.reject_probability(now) < 0.001);
    }

    #[test]
    fn the_window_forgets_an_old_overload() {
        let mut now = Instant::now();
        let mut t = Throttle::new(2.0, WINDOW, now);
        for _ in 0..1000 {
            t.refuse(now, 1.0);
            t.record(now, false);
        }
        assert!(t.reject_probability(now) > 0.99);
        now += WINDOW / 2;
        assert!(t.reject_probability(now) > 0.99, "still within the window");
        now += WINDOW;
        assert_eq!(t.reject_probability(now), 0.0);
    }
}
