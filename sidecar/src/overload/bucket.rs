//! A token bucket: `rate` tokens a second up to `burst`, for local rate limits. Taking a token
//! that is not there says how long until one is (the `Retry-After` of the refusal). Pure: the
//! caller gives the time.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// Full at `now`. A rate of zero refills nothing: only the burst is ever taken.
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token, or says how long until one is there (`None` when none ever will be).
    pub fn take(&mut self, now: Instant) -> Result<(), Option<Duration>> {
        self.take_keeping(now, 0.0)
    }

    /// Takes one token if `keep` tokens are left after it (a reserve for more critical
    /// requests), or says how long until that holds.
    pub fn take_keeping(&mut self, now: Instant, keep: f64) -> Result<(), Option<Duration>> {
        self.refill(now);
        let needed = 1.0 + keep.max(0.0);
        if self.tokens >= needed {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.rate == 0.0 {
            return Err(None);
        }
        Err(Some(Duration::from_secs_f64(
            (needed - self.tokens) / self.rate,
        )))
    }

    /// The most tokens it holds.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Whether it is full at `now`: whoever used it has not for a while.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// Changes the rate and the burst (a mesh-wide limit split again across a new number of
    /// pods), keeping the tokens there are, up to the new burst.
    pub fn set(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(0.0);
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_the_wait_for_the_next_token() {
        let mut now = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5, now);
        for _ in 0..5 {
            assert_eq!(bucket.take(now), Ok(()));
        }
        assert_eq!(bucket.take(now), Err(Some(Duration::from_millis(100))));
        now += Duration::from_millis(50);
        assert_eq!(bucket.take(now), Err(Some(Duration::from_millis(50))));
        now += Duration::from_millis(50);
        assert_eq!(bucket.take(now), Ok(()));
        // An hour idle fills it to the burst, not beyond.
        now += Duration::from_secs(3600);
        let taken = (0..10).filter(|_| bucket.take(now).is_ok()).count();
        assert_eq!(taken, 5);
    }

    #[test]
    fn a_reserve_is_kept_for_whoever_may_use_it() {
        let mut now = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 4, now);
        // Keeping 2 of 4: two are taken, the third waits for a token.
        assert_eq!(bucket.take_keeping(now, 2.0), Ok(()));
        assert_eq!(bucket.take_keeping(now, 2.0), Ok(()));
        assert_eq!(
            bucket.take_keeping(now, 2.0),
            Err(Some(Duration::from_millis(100)))
        );
        // The reserve is there for a take that keeps none.
        assert_eq!(bucket.take(now), Ok(()));
        assert_eq!(bucket.take(now), Ok(()));
        assert_eq!(bucket.take(now), Err(Some(Duration::from_millis(100))));
        assert!(!bucket.is_full(now));
        now += Duration::from_millis(400);
        assert!(bucket.is_full(now));
    }

    #[test]
    fn a_new_rate_applies_from_now() {
        let mut now = Instant::now();
        let mut bucket = TokenBucket::new(1.0, 1, now);
        assert_eq!(bucket.take(now), Ok(()));
        bucket.set(100.0, 1.0, now);
        now += Duration::from_millis(10);
        assert_eq!(bucket.take(now), Ok(()));
        bucket.set(0.0, 1.0, now);
        now += Duration::from_secs(60);
        assert_eq!(bucket.take(now), Err(None));
        // A smaller burst takes effect at once.
        let mut bucket = TokenBucket::new(10.0, 10, now);
        bucket.set(5.0, 2.0, now);
        let taken = (0..10).filter(|_| bucket.take(now).is_ok()).count();
        assert_eq!(taken, 2);
    }
}
