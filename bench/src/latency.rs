//! Latency samples of one run and their percentiles (nearest rank), reported in microseconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The latencies of one run, in nanoseconds, in the order they were recorded.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    ns: Vec<u64>,
}

/// Percentiles of a run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Latencies {
        Latencies {
            ns: Vec::with_capacity(n),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        self.ns
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records a latency given in microseconds (h2load's log).
    pub fn record_us(&mut self, us: u64) {
        self.ns.push(us.saturating_mul(1_000));
    }

    /// Adds `other`'s samples to these.
    pub fn extend(&mut self, other: &Latencies) {
        self.ns.extend_from_slice(&other.ns);
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ns.is_empty()
    }

    /// The percentiles, or `None` without samples.
    pub fn percentiles(&mut self) -> Option<Percentiles> {
        if self.ns.is_empty() {
            return None;
        }
        self.ns.sort_unstable();
        let us = |q: f64| nearest_rank(&self.ns, q) as f64 / 1_000.0;
        Some(Percentiles {
            count: self.ns.len() as u64,
            p50_us: us(0.50),
            p90_us: us(0.90),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: us(1.0),
        })
    }
}

/// The smallest sample such that at least `q` of all samples are at or below it.
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for us in 1..=1000 {
            l.record(Duration::from_micros(us));
        }
        let p = l.percentiles().unwrap();
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50_us, 500.0);
        assert_eq!(p.p90_us, 900.0);
        assert_eq!(p.p99_us, 990.0);
        assert_eq!(p.p999_us, 999.0);
        assert_eq!(p.max_us, 1000.0);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let mut l = Latencies::default();
        l.record_us(250);
        let p = l.percentiles().unwrap();
        assert_eq!((p.p50_us, p.p999_us, p.max_us), (250.0, 250.0, 250.0));
    }

    #[test]
    fn no_samples_no_percentiles() {
        assert!(Latencies::default().percentiles().is_none());
    }
}
