//! Retry backoff: the capped exponential schedule with uniform jitter that spaces out the
//! attempts of one request (`retry.backoff`).
//!
//! Why jitter: without it, every caller that failed at the same moment retries at the same
//! moment too, and the upstream sees the same spike again one backoff later. Spreading each
//! wait uniformly over ±`jitter` of its nominal value breaks that synchronisation while keeping
//! the average wait equal to the nominal one.
//!
//! The schedule is pure: the caller passes the random number, so tests (and replays of a
//! decision in logs) are exact.

use std::time::Duration;

use bulwark_proto::policy::{Backoff, defaults};

/// How long to wait between the attempts of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffSchedule {
    /// Nominal wait before the first retry.
    pub initial: Duration,
    /// Cap of the nominal wait; jitter may take one wait up to `max × (1 + jitter)`.
    pub max: Duration,
    /// Growth factor of the nominal wait from one retry to the next (≥ 1).
    pub multiplier: f64,
    /// Random spread as a fraction of the nominal wait, in `0.0..=1.0`.
    pub jitter: f64,
}

impl Default for BackoffSchedule {
    /// The documented defaults (`25ms`, `1s`, `2.0`, `20%`).
    fn default() -> Self {
        BackoffSchedule {
            initial: defaults::BACKOFF_INITIAL,
            max: defaults::BACKOFF_MAX,
            multiplier: defaults::BACKOFF_MULTIPLIER,
            jitter: defaults::BACKOFF_JITTER_PERCENT / 100.0,
        }
    }
}

impl BackoffSchedule {
    /// The schedule a policy's `backoff` block describes, with defaults for absent fields.
    pub fn from_policy(backoff: Option<&Backoff>) -> BackoffSchedule {
        BackoffSchedule::default().merge(backoff)
    }

    /// This schedule with the fields written in `over` replacing ours, field by field: a route
    /// that only sets `initial` keeps the upstream's `max`, `multiplier` and `jitter`.
    ///
    /// Out-of-range values (which validation rejects) are clamped so the schedule stays
    /// well-defined: a multiplier below 1 or NaN becomes 1, jitter is clamped to 0–100%.
    pub fn merge(&self, over: Option<&Backoff>) -> BackoffSchedule {
        let Some(b) = over else { return *self };
        let multiplier = b.multiplier.unwrap_or(self.multiplier);
        BackoffSchedule {
            initial: b.initial.as_ref().map_or(self.initial, |d| d.get()),
            max: b.max.as_ref().map_or(self.max, |d| d.get()),
            // `!(m >= 1.0)` also catches NaN.
            multiplier: if multiplier >= 1.0 { multiplier } else { 1.0 },
            jitter: b
                .jitter
                .as_ref()
                .map_or(self.jitter, |j| j.fraction())
                .clamp(0.0, 1.0),
        }
    }

    /// The nominal (un-jittered) wait before retry number `retry` (1 for the first retry):
    /// `min(max, initial × multiplier^(retry − 1))`. `retry` 0 is treated as 1.
    ///
    /// Saturating: a huge `retry` (or an infinite product) yields `max`, never a panic or NaN.
    pub fn base(&self, retry: u32) -> Duration {
        // Zero stays zero whatever the exponent (and `0 × ∞` would be NaN).
        if self.initial.is_zero() || self.max.is_zero() {
            return Duration::ZERO;
        }
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let scaled = nanos(self.initial) * self.multiplier.powi(exponent);
        // Written so that NaN and +∞ fall to the cap.
        if scaled < nanos(self.max) {
            duration_from_nanos(scaled)
        } else {
            self.max
        }
    }

    /// The wait before attempt n+1 after attempt n failed, `retry` = n (1 for the first retry):
    /// the nominal wait ([`base`](Self::base)) moved uniformly within ±`jitter` of itself by
    /// `rand` ∈ [0, 1): `rand` 0.0 gives `base × (1 − jitter)`, 0.5 gives `base`, and values
    /// towards 1.0 approach `base × (1 + jitter)`.
    ///
    /// The result is never negative and never above `max × (1 + jitter)`. A `rand` outside
    /// [0, 1] is clamped; NaN counts as 0.5 (no jitter).
    pub fn delay(&self, retry: u32, rand: f64) -> Duration {
        let base = self.base(retry);
        if self.jitter <= 0.0 || base.is_zero() {
            return base;
        }
        let rand = if rand.is_nan() {
            0.5
        } else {
            rand.clamp(0.0, 1.0)
        };
        // In [1 − jitter, 1 + jitter] ⊆ [0, 2]: never negative.
        let factor = 1.0 + self.jitter * (2.0 * rand - 1.0);
        duration_from_nanos(nanos(base) * factor)
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Rounds to the nearest nanosecond, so that `200ms × 0.7` is exactly 140ms and not one
/// nanosecond less; saturates at `Duration::MAX`.
fn duration_from_nanos(ns: f64) -> Duration {
    if ns.is_nan() || ns <= 0.0 {
        return Duration::ZERO;
    }
    let ns = ns.round();
    if ns < u64::MAX as f64 {
        Duration::from_nanos(ns as u64)
    } else {
        Duration::try_from_secs_f64(ns / 1e9).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use bulwark_proto::policy::{Duration as PolicyDuration, Percent};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn schedule(initial: u64, max: u64, multiplier: f64, jitter: f64) -> BackoffSchedule {
        BackoffSchedule {
            initial: ms(initial),
            max: ms(max),
            multiplier,
            jitter,
        }
    }

    #[test]
    fn defaults_come_from_the_policy_defaults() {
        assert_eq!(
            BackoffSchedule::from_policy(None),
            BackoffSchedule {
                initial: ms(25),
                max: ms(1000),
                multiplier: 2.0,
                jitter: 0.2,
            }
        );
    }

    #[test]
    fn nominal_wait_grows_exponentially_up_to_max() {
        // The design's example: 200ms doubling, capped at 5s.
        let s = schedule(200, 5000, 2.0, 0.3);
        let bases: Vec<Duration> = (1..=7).map(|n| s.base(n)).collect();
        assert_eq!(
            bases,
            vec![
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000)
            ]
        );
        // Retry 0 is not a retry; it is treated as the first.
        assert_eq!(s.base(0), ms(200));
    }

    #[test]
    fn fractional_multiplier_is_exact_to_the_nanosecond() {
        let s = schedule(100, 10_000, 1.5, 0.0);
        assert_eq!(s.delay(1, 0.9), ms(100));
        assert_eq!(s.delay(2, 0.9), ms(150));
        assert_eq!(s.delay(3, 0.9), ms(225));
        assert_eq!(s.delay(4, 0.9), Duration::from_micros(337_500));
    }

    #[test]
    fn rand_half_gives_the_nominal_wait() {
        let s = schedule(200, 5000, 2.0, 0.3);
        for n in 1..=10 {
            assert_eq!(s.delay(n, 0.5), s.base(n), "retry {n}");
        }
    }

    #[test]
    fn rand_zero_gives_the_lower_band_edge() {
        let s = schedule(200, 5000, 2.0, 0.3);
        let lows: Vec<Duration> = (1..=6).map(|n| s.delay(n, 0.0)).collect();
        assert_eq!(
            lows,
            vec![ms(140), ms(280), ms(560), ms(1120), ms(2240), ms(3500)]
        );
    }

    #[test]
    fn rand_one_gives_the_upper_band_edge() {
        let s = schedule(200, 5000, 2.0, 0.3);
        let highs: Vec<Duration> = (1..=6).map(|n| s.delay(n, 1.0)).collect();
        assert_eq!(
            highs,
            vec![ms(260), ms(520), ms(1040), ms(2080), ms(4160), ms(6500)]
        );
        // Just below 1.0 stays inside the band.
        let d = s.delay(6, 0.999_999);
        assert!(d < ms(6500) && d > ms(6499), "{d:?}");
    }

    #[test]
    fn rand_in_between_is_linear() {
        let s = schedule(100, 10_000, 2.0, 0.2);
        assert_eq!(s.delay(1, 0.25), ms(90));
        assert_eq!(s.delay(1, 0.75), ms(110));
        assert_eq!(s.delay(3, 0.25), ms(360));
    }

    #[test]
    fn full_jitter_never_goes_negative() {
        let s = schedule(100, 1000, 2.0, 1.0);
        assert_eq!(s.delay(1, 0.0), Duration::ZERO);
        assert_eq!(s.delay(1, 1.0), ms(200));
        assert_eq!(s.delay(50, 1.0), ms(2000));
    }

    #[test]
    fn out_of_range_rand_is_clamped_and_nan_means_no_jitter() {
        let s = schedule(100, 1000, 2.0, 0.2);
        assert_eq!(s.delay(1, -3.0), ms(80));
        assert_eq!(s.delay(1, 7.0), ms(120));
        assert_eq!(s.delay(1, f64::NAN), ms(100));
    }

    #[test]
    fn huge_retry_numbers_saturate_at_the_cap() {
        let s = schedule(200, 5000, 2.0, 0.3);
        for n in [64, 100, 1_000, u32::MAX] {
            assert_eq!(s.base(n), ms(5000), "retry {n}");
            assert_eq!(s.delay(n, 0.0), ms(3500), "retry {n}");
            assert_eq!(s.delay(n, 0.5), ms(5000), "retry {n}");
            assert_eq!(s.delay(n, 1.0), ms(6500), "retry {n}");
        }
    }

    #[test]
    fn never_above_max_times_one_plus_jitter() {
        let s = schedule(7, 1234, 3.7, 0.45);
        let ceiling = duration_from_nanos(nanos(ms(1234)) * (1.0 + 0.45));
        for n in 0..=100 {
            for r in [0.0, 0.1, 0.5, 0.9, 0.999_999_9, 1.0] {
                assert!(s.delay(n, r) <= ceiling, "retry {n} rand {r}");
            }
        }
    }

    #[test]
    fn extreme_durations_do_not_overflow() {
        let s = BackoffSchedule {
            initial: Duration::from_secs(1),
            max: Duration::MAX,
            multiplier: 10.0,
            jitter: 0.5,
        };
        assert_eq!(s.base(1), Duration::from_secs(1));
        assert_eq!(s.base(u32::MAX), Duration::MAX);
        assert_eq!(s.delay(u32::MAX, 1.0), Duration::MAX);
        let infinite = BackoffSchedule {
            multiplier: f64::INFINITY,
            ..schedule(10, 100, 1.0, 0.0)
        };
        assert_eq!(infinite.base(1), ms(10));
        assert_eq!(infinite.base(2), ms(100));
    }

    #[test]
    fn zero_initial_retries_at_once() {
        let s = schedule(0, 1000, 2.0, 0.5);
        assert_eq!(s.delay(1, 1.0), Duration::ZERO);
        assert_eq!(s.delay(u32::MAX, 1.0), Duration::ZERO);
    }

    #[test]
    fn initial_above_max_is_capped() {
        // A route may set `initial: 2s` over an upstream's `max: 1s`; the cap wins.
        let s = schedule(2000, 1000, 2.0, 0.0);
        assert_eq!(s.delay(1, 0.5), ms(1000));
    }

    #[test]
    fn multiplier_one_is_constant() {
        let s = schedule(300, 1000, 1.0, 0.0);
        assert_eq!(s.delay(1, 0.0), ms(300));
        assert_eq!(s.delay(99, 0.0), ms(300));
    }

    #[test]
    fn merge_replaces_only_written_fields() {
        let upstream = schedule(200, 5000, 3.0, 0.3);
        let route = Backoff {
            initial: Some(PolicyDuration::new("2s")),
            ..Backoff::default()
        };
        assert_eq!(upstream.merge(Some(&route)), schedule(2000, 5000, 3.0, 0.3));
        let route = Backoff {
            jitter: Some(Percent::new("0%")),
            multiplier: Some(1.5),
            ..Backoff::default()
        };
        assert_eq!(upstream.merge(Some(&route)), schedule(200, 5000, 1.5, 0.0));
        assert_eq!(upstream.merge(None), upstream);
    }

    #[test]
    fn merge_clamps_values_validation_would_reject() {
        let b = Backoff {
            multiplier: Some(0.5),
            ..Backoff::default()
        };
        assert_eq!(BackoffSchedule::from_policy(Some(&b)).multiplier, 1.0);
        let b = Backoff {
            multiplier: Some(f64::NAN),
            ..Backoff::default()
        };
        assert_eq!(BackoffSchedule::from_policy(Some(&b)).multiplier, 1.0);
    }
}
