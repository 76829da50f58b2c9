//! Limits against abuse of the operator API: writes per user (a token bucket each: a burst,
//! then a steady rate), so that one caller — a runaway CI job, a stolen token — cannot flood
//! etcd with changes, history and audit records. Reads are served from memory and not limited.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How many writes a user may make: `burst` at once, then `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteRate {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for WriteRate {
    fn default() -> Self {
        WriteRate {
            per_second: 20.0,
            burst: 50.0,
        }
    }
}

/// Users remembered at most; past that, the oldest full buckets are forgotten.
const MAX_USERS: usize = 10_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token bucket per user.
#[derive(Debug, Default)]
pub struct WriteLimiter {
    rate: WriteRate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl WriteLimiter {
    pub fn new(rate: WriteRate) -> WriteLimiter {
        WriteLimiter {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Takes one write for `user`; when there is none left, how long until there is.
    pub fn take(&self, user: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_USERS && !buckets.contains_key(user) {
            let rate = self.rate;
            buckets.retain(|_, b| refill(b, now, rate) < rate.burst);
        }
        let bucket = buckets.entry(user.to_string()).or_insert(Bucket {
            tokens: self.rate.burst,
            at: now,
        });
        let tokens = refill(bucket, now, self.rate);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            bucket.at = now;
            return Ok(());
        }
        let missing = 1.0 - tokens;
        Err(Duration::from_secs_f64(
            missing / self.rate.per_second.max(f64::MIN_POSITIVE),
        ))
    }
}

/// The tokens `bucket` holds at `now`.
fn refill(bucket: &Bucket, now: Instant, rate: WriteRate) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * rate.per_second).min(rate.burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_steady_rate_per_user() {
        let limiter = WriteLimiter::new(WriteRate {
            per_second: 2.0,
            burst: 3.0,
        });
        for _ in 0..3 {
            assert_eq!(limiter.take("pat"), Ok(()));
        }
        assert_eq!(limiter.take("pat"), Err(Duration::from_millis(500)));
        assert_eq!(limiter.take("olga"), Ok(()), "each user has a bucket");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(limiter.take("pat"), Ok(()));
        assert!(limiter.take("pat").is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..3 {
            assert_eq!(limiter.take("pat"), Ok(()), "refilled up to the burst only");
        }
        assert!(limiter.take("pat").is_err());
    }
}
