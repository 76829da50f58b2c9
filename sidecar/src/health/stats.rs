//! Per-upstream health counters: attempts that completed, those the breaker's rules call
//! failures and slow, requests refused for overload, and the attempts' latencies (for a p99),
//! since the last health report. Lock-free: the request path adds with relaxed atomics, the
//! reporter swaps them back to zero.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What one upstream saw since the last report.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    requests: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
    overloaded: AtomicU64,
    latency: Latencies,
}

/// The counts taken by one report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub failures: u64,
    pub slow: u64,
    pub overloaded: u64,
    /// The 99th percentile of the attempts' latencies, rounded up to its bucket's upper bound
    /// (at most 25% above the true value), in microseconds; 0 without attempts.
    pub p99_micros: u32,
}

impl UpstreamStats {
    /// One completed attempt that took `elapsed`: `failed` by `failureOn`, `slow` by
    /// `slowCall.duration`.
    pub fn record(&self, failed: bool, slow: bool, elapsed: Duration) {
        self.latency.add(elapsed);
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
            p99_micros: self.latency.take_quantile(0.99),
        }
    }
}

/// Sub-buckets per power of two: each bucket is a quarter of its power of two wide.
const SUB_BUCKETS: u32 = 4;
/// Powers of two covered, from 1 µs up to 2^28 µs (about 4.5 minutes); longer attempts count
/// in the last bucket.
const OCTAVES: u32 = 28;
const BUCKETS: usize = (OCTAVES * SUB_BUCKETS) as usize;

/// A log-linear histogram of latencies in atomics: each bucket spans a quarter of a power of
/// two of microseconds, so a quantile is known within 25% at any scale, from a fixed array
/// (no allocation or lock per attempt).
#[derive(Debug)]
struct Latencies {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Latencies {
    fn add(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding quantile `q` of what was added since the last
    /// call, in microseconds (0: nothing added); empties the histogram.
    fn take_quantile(&self, q: f64) -> u32 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        // The rank of the quantile, 1-based: the smallest value with at least q of the
        // values at or below it.
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return u32::try_from(upper_bound(i)).unwrap_or(u32::MAX);
            }
        }
        u32::try_from(upper_bound(BUCKETS - 1)).unwrap_or(u32::MAX)
    }
}

/// The bucket of a latency of `micros` (≥ 1): its power of two and which quarter of it.
fn bucket_of(micros: u64) -> usize {
    // Below 4 µs nothing is told apart (a quarter of a smaller power of two is no integer).
    let micros = micros.max(4);
    let octave = 63 - micros.leading_zeros(); // floor(log2)
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    // The two bits after the leading one say which quarter of [2^octave, 2^(octave+1)).
    let sub = (micros >> (octave - 2)) & 0b11;
    (octave * SUB_BUCKETS) as usize + sub as usize
}

/// The largest latency (µs) bucket `i` holds.
fn upper_bound(i: usize) -> u64 {
    let octave = (i as u32) / SUB_BUCKETS;
    let sub = u64::from((i as u32) % SUB_BUCKETS);
    // [2^o + sub·2^o/4, 2^o + (sub+1)·2^o/4)
    let base = 1u64 << octave;
    (base + ((sub + 1) * base) / u64::from(SUB_BUCKETS))
        .saturating_sub(1)
        .max(base)
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
        let ms = Duration::from_millis;
        s.record(false, false, ms(1));
        s.record(true, false, ms(1));
        s.record(true, true, ms(1));
        s.record(false, true, ms(1));
        assert_eq!(
            s.take(),
            Counts {
                requests: 4,
                failures: 2,
                slow: 2,
                overloaded: 0,
                p99_micros: 1023,
            }
        );
        assert_eq!(s.take(), Counts::default());
        s.record(true, false, ms(3));
        s.overloaded();
        s.overloaded();
        assert_eq!(
            s.take(),
            Counts {
                requests: 1,
                failures: 1,
                slow: 0,
                overloaded: 2,
                p99_micros: 3071,
            }
        );
    }

    #[test]
    fn the_p99_is_within_a_bucket_of_the_true_one() {
        let s = UpstreamStats::default();
        // 1,000 attempts: 990 of 2 ms, 10 of 40 ms — the p99 is 2 ms.
        for _ in 0..990 {
            s.record(false, false, Duration::from_millis(2));
        }
        for _ in 0..10 {
            s.record(false, false, Duration::from_millis(40));
        }
        let p99 = s.take().p99_micros;
        assert!((2000..=2000 * 125 / 100).contains(&p99), "{p99}");
        // One more slow attempt puts it in the tail.
        for _ in 0..989 {
            s.record(false, false, Duration::from_millis(2));
        }
        for _ in 0..11 {
            s.record(false, false, Duration::from_millis(40));
        }
        let p99 = s.take().p99_micros;
        assert!((40_000..=40_000 * 125 / 100).contains(&p99), "{p99}");
        assert_eq!(s.take().p99_micros, 0, "taken back to empty");
    }

    #[test]
    fn every_latency_falls_in_a_bucket_that_bounds_it() {
        let mut previous = 0;
        for i in 0..BUCKETS {
            let upper = upper_bound(i);
            assert!(upper >= previous, "bucket {i}: bounds grow");
            previous = upper;
        }
        for micros in (4..5000).chain([65_535, 1 << 20, (1 << 28) - 1]) {
            let b = bucket_of(micros);
            assert!(
                micros <= upper_bound(b),
                "{micros} in bucket {b} ≤ {}",
                upper_bound(b)
            );
            assert!(
                b == 0 || micros > upper_bound(b - 1),
                "{micros} not in an earlier bucket"
            );
            assert!(upper_bound(b) as f64 <= (micros as f64) * 1.25 + 1.0);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of(1), bucket_of(4), "below 4 µs is one bucket");
    }

    #[test]
    fn slow_is_at_or_past_the_duration() {
        let d = Some(Duration::from_millis(100));
        assert!(!is_slow(d, Duration::from_millis(99)));
        assert!(is_slow(d, Duration::from_millis(100)));
        assert!(!is_slow(None, Duration::from_secs(60)));
    }
}
