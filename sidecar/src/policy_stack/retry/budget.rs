//! Retry budget: the per-upstream cap on retries as a share of recent original requests
//! (`retry.budget`), shared by every request to that upstream.
//!
//! Why a budget and not only `maxAttempts`: a per-request limit bounds how much one request
//! retries, but not how much *all* requests retry. When an upstream is failing, every request
//! fails, every request retries `maxAttempts − 1` times, and the upstream gets `maxAttempts`
//! times its normal load at the worst possible moment — the retry storm that turns a partial
//! outage into a full one. A budget makes retries a bounded fraction of real traffic: at
//! `ratio: 20%` the upstream never sees more than 1.2× the requests callers made, however
//! badly it fails. `minPerSecond` keeps retries possible for low-traffic callers, for whom a
//! ratio of almost nothing is nothing (one request a minute would otherwise never earn a retry).
//!
//! How: the window is a ring of [`BUCKETS`] time buckets, each counting the original requests
//! (deposits) and the retries (withdrawals) that happened in its slice of time. A retry is
//! allowed when the retries in the ring, this one included, stay within
//! `ratio × requests + minPerSecond × window`. Old buckets are reused as time moves on, so the
//! window slides in steps of `window / BUCKETS` and a deposit ages out between
//! `window × (BUCKETS − 1) / BUCKETS` and `window` after it was made.
//!
//! Time is passed in (`now`), so the budget is deterministic in tests and follows tokio's
//! paused clock in layer tests.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bulwark_proto::policy::{self, defaults};
use tokio::time::Instant;

/// Number of time buckets the window is divided into.
pub const BUCKETS: usize = 10;

/// One upstream's budget settings, with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per original request in the window, as a fraction (`20%` → 0.2).
    pub ratio: f64,
    /// Retries per second of window allowed whatever the ratio.
    pub min_per_second: u32,
    /// Length of the sliding window.
    pub window: Duration,
}

impl Default for BudgetConfig {
    /// The documented defaults (`20%`, `10`, `10s`).
    fn default() -> Self {
        BudgetConfig {
            ratio: defaults::BUDGET_RATIO_PERCENT / 100.0,
            min_per_second: defaults::BUDGET_MIN_PER_SECOND,
            window: defaults::BUDGET_WINDOW,
        }
    }
}

impl BudgetConfig {
    /// The settings of a policy's `retry.budget` block, with defaults for absent fields. A zero
    /// window (which validation rejects) falls back to the default window.
    pub fn from_policy(budget: Option<&policy::RetryBudget>) -> BudgetConfig {
        let d = BudgetConfig::default();
        let Some(b) = budget else { return d };
        let window = b.window.as_ref().map_or(d.window, |w| w.get());
        BudgetConfig {
            ratio: b
                .ratio
                .as_ref()
                .map_or(d.ratio, |r| r.fraction())
                .clamp(0.0, 1.0),
            min_per_second: b.min_per_second.unwrap_or(d.min_per_second),
            window: if window.is_zero() { d.window } else { window },
        }
    }
}

/// The retry budget of one upstream. `&self` methods, `Send + Sync`: one instance is shared by
/// every request to the upstream, on every thread.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    start: Instant,
    /// `window / BUCKETS`, at least one nanosecond.
    bucket_nanos: u128,
    /// `ratio` in millionths, so that the check is exact integer arithmetic (`20%` of 1000
    /// requests is 200 retries, not 199.99999).
    ratio_micros: u128,
    /// `min_per_second × window` in millionths of a retry.
    reserve_micros: u128,
    /// Held for a few additions per call; never across an await.
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    /// The newest bucket epoch seen; a caller with a slightly older `now` is counted in it.
    latest: u64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (`elapsed / bucket width`) the counts belong to.
    epoch: u64,
    deposits: u64,
    withdrawals: u64,
}

const MICROS: u128 = 1_000_000;

impl RetryBudget {
    /// An empty budget whose window starts at `now`: only the `minPerSecond` reserve is
    /// available until requests are deposited.
    pub fn new(config: BudgetConfig, now: Instant) -> RetryBudget {
        let window = if config.window.is_zero() {
            defaults::BUDGET_WINDOW
        } else {
            config.window
        };
        RetryBudget {
            config,
            start: now,
            bucket_nanos: (window.as_nanos() / BUCKETS as u128).max(1),
            ratio_micros: (config.ratio.clamp(0.0, 1.0) * 1e6).round() as u128,
            reserve_micros: u128::from(config.min_per_second) * window.as_nanos() / 1000,
            ring: Mutex::new(Ring {
                latest: 0,
                buckets: [Bucket::default(); BUCKETS],
            }),
        }
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Records one original request (not a retry): it earns `ratio` of a retry for the window.
    pub fn deposit(&self, now: Instant) {
        let epoch = self.epoch(now);
        let mut ring = self.lock();
        ring.current(epoch).deposits += 1;
    }

    /// Takes one retry from the budget if the window allows it; `false` means the retry must
    /// not be made (`RetryBudgetExhausted`). Every call that returns `true` counts.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        let mut ring = self.lock();
        let epoch = ring.advance(epoch);
        let (deposits, withdrawals) = ring.totals(epoch);
        if self.allows(deposits, withdrawals + 1) {
            ring.current(epoch).withdrawals += 1;
            true
        } else {
            false
        }
    }

    /// How many retries [`try_withdraw`](Self::try_withdraw) would grant now; for metrics and
    /// logs.
    pub fn remaining(&self, now: Instant) -> u64 {
        let epoch = self.epoch(now);
        let mut ring = self.lock();
        let epoch = ring.advance(epoch);
        let (deposits, withdrawals) = ring.totals(epoch);
        let allowed = (self.ratio_micros * u128::from(deposits) + self.reserve_micros) / MICROS;
        u64::try_from(allowed)
            .unwrap_or(u64::MAX)
            .saturating_sub(withdrawals)
    }

    /// `retries ≤ ratio × deposits + reserve`, in millionths of a retry.
    fn allows(&self, deposits: u64, retries: u64) -> bool {
        u128::from(retries) * MICROS
            <= self.ratio_micros * u128::from(deposits) + self.reserve_micros
    }

    fn epoch(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(elapsed / self.bucket_nanos).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // The critical sections only add integers; a panic elsewhere cannot leave the ring
        // half-updated, so a poisoned lock is still safe to use.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ring {
    /// Moves the ring's clock to `epoch` (never backwards) and returns the epoch to count in.
    fn advance(&mut self, epoch: u64) -> u64 {
        self.latest = self.latest.max(epoch);
        self.latest
    }

    /// The bucket for `epoch` (after [`advance`](Self::advance)), emptied first if it still
    /// holds the counts of an older slice of time.
    fn current(&mut self, epoch: u64) -> &mut Bucket {
        let epoch = self.advance(epoch);
        let bucket = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        bucket
    }

    /// Deposits and withdrawals of the buckets inside the window ending at `epoch`.
    fn totals(&self, epoch: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| epoch - b.epoch < BUCKETS as u64)
            .fold((0, 0), |(d, w), b| {
                (
                    d.saturating_add(b.deposits),
                    w.saturating_add(b.withdrawals),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bulwark_proto::policy::{Duration as PolicyDuration, Percent};

    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn config(ratio: f64, min_per_second: u32, window: Duration) -> BudgetConfig {
        BudgetConfig {
            ratio,
            min_per_second,
            window,
        }
    }

    /// How many withdrawals succeed in a row at `now`.
    fn drain(budget: &RetryBudget, now: Instant) -> u64 {
        let mut granted = 0;
        while budget.try_withdraw(now) {
            granted += 1;
            assert!(granted <= 1_000_000, "budget never runs out");
        }
        granted
    }

    #[test]
    fn budget_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<RetryBudget>();
    }

    #[test]
    fn config_defaults_and_overrides() {
        assert_eq!(BudgetConfig::from_policy(None), config(0.2, 10, secs(10)));
        let b = policy::RetryBudget {
            ratio: Some(Percent::new("50%")),
            min_per_second: None,
            window: Some(PolicyDuration::new("30s")),
        };
        assert_eq!(
            BudgetConfig::from_policy(Some(&b)),
            config(0.5, 10, secs(30))
        );
        let zero_window = policy::RetryBudget {
            window: Some(PolicyDuration::new("0s")),
            ..policy::RetryBudget::default()
        };
        assert_eq!(
            BudgetConfig::from_policy(Some(&zero_window)).window,
            secs(10)
        );
    }

    #[test]
    fn ratio_plus_floor_bounds_retries() {
        // 20% of 1000 requests + 10/s over 10s = 200 + 100.
        let t0 = Instant::now();
        let budget = RetryBudget::new(config(0.2, 10, secs(10)), t0);
        for _ in 0..1000 {
            budget.deposit(t0);
        }
        assert_eq!(budget.remaining(t0), 300);
        assert_eq!(drain(&budget, t0), 300);
        assert_eq!(budget.remaining(t0), 0);
        assert!(!budget.try_withdraw(t0 + secs(5)));
    }

    #[test]
    fn floor_alone_allows_min_per_second_times_window() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(config(0.2, 10, secs(10)), t0);
        assert_eq!(drain(&budget, t0), 100);
        let half = RetryBudget::new(config(0.2, 10, Duration::from_millis(500)), t0);
        assert_eq!(drain(&half, t0), 5);
    }

    #[test]
    fn no_ratio_and_no_floor_allows_nothing() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(config(0.0, 0, secs(10)), t0);
        for _ in 0..1000 {
            budget.deposit(t0);
        }
        assert!(!budget.try_withdraw(t0));
    }

    #[test]
    fn fractional_ratios_are_exact() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(config(0.125, 0, secs(10)), t0);
        for _ in 0..7 {
            budget.deposit(t0);
        }
        assert!(!budget.try_withdraw(t0), "7 × 12.5% < 1");
        budget.deposit(t0);
        assert!(budget.try_withdraw(t0), "8 × 12.5% = 1");
        assert!(!budget.try_withdraw(t0));
    }

    #[test]
    fn deposits_age_out_of_the_window() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(config(0.2, 10, secs(10)), t0);
        for _ in 0..1000 {
            budget.deposit(t0);
        }
        // Buckets are 1s wide: the deposit in bucket 0 counts until bucket 10 begins.
        assert_eq!(budget.remaining(t0 + Duration::from_millis(9_999)), 300);
        assert_eq!(budget.remaining(t0 + secs(10)), 100);
        assert_eq!(drain(&budget, t0 + secs(25)), 100);
    }

    #[test]
    fn window_slides_bucket_by_bucket() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(config(0.2, 0, secs(10)), t0);
        for _ in 0..500 {
            budget.deposit(t0);
        }
        for _ in 0..500 {
            budget.deposit(t0 + secs(5));
        }
        assert_eq!(budget.remaining(t0 + secs(9)), 200);
        // At 10.5s the t0 bucket has left the window; the 5s one has not.
        assert_eq!(budget.remaining(t0 + Duration::from_millis(10_500)), 100);
        assert_eq!(budget.remaining(t0 + secs(15)), 0);
    }

    #[test]
    fn withdrawals_age_out_too() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(config(0.2, 10, secs(10)), t0);
        assert_eq!(drain(&budget, t0), 100);
        assert!(!budget.try_withdraw(t0 + secs(9)));
        // The retries taken at t0 no longer count: the floor is available again.
        assert_eq!(drain(&budget, t0 + secs(10)), 100);
    }

    #[test]
    fn a_late_caller_counts_in_the_newest_bucket() {
        // Another thread may pass a `now` read just before ours; it must not resurrect an
        // aged-out bucket.
        let t0 = Instant::now();
        let budget = RetryBudget::new(config(0.2, 0, secs(10)), t0);
        for _ in 0..100 {
            budget.deposit(t0);
        }
        assert_eq!(budget.remaining(t0 + secs(10)), 0);
        budget.deposit(t0); // stale `now`: lands in the current bucket
        for _ in 0..4 {
            budget.deposit(t0 + secs(10));
        }
        assert_eq!(budget.remaining(t0 + secs(10)), 1);
    }

    #[test]
    fn a_now_before_the_start_counts_as_the_start() {
        let t0 = Instant::now() + secs(60);
        let budget = RetryBudget::new(config(0.5, 0, secs(10)), t0);
        budget.deposit(t0 - secs(30));
        budget.deposit(t0 - secs(30));
        assert!(budget.try_withdraw(t0));
        assert!(!budget.try_withdraw(t0));
    }

    #[test]
    fn shared_across_threads() {
        let t0 = Instant::now();
        let budget = Arc::new(RetryBudget::new(config(0.2, 10, secs(10)), t0));
        let depositors: Vec<_> = (0..4)
            .map(|_| {
                let b = budget.clone();
                std::thread::spawn(move || (0..250).for_each(|_| b.deposit(t0)))
            })
            .collect();
        for d in depositors {
            d.join().expect("depositor");
        }
        let withdrawers: Vec<_> = (0..4)
            .map(|_| {
                let b = budget.clone();
                std::thread::spawn(move || (0..200).filter(|_| b.try_withdraw(t0)).count())
            })
            .collect();
        let granted: usize = withdrawers
            .into_iter()
            .map(|w| w.join().expect("withdrawer"))
            .sum();
        assert_eq!(granted, 300);
    }
}
