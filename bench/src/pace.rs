//! Open-loop pacing: the intended send time of every request at a fixed rate, kept by a thread of
//! its own. tokio's timers have millisecond resolution, so at 2,000 req/s (one request every
//! 500 µs) a tokio-paced sender would be up to a millisecond late, and since latency counts from
//! the intended time, that lateness would show in every percentile.

use std::time::{Duration, Instant};

use crate::latency::Latencies;

/// `count` send times, `1 / rate` apart, from `start`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    period_ns: f64,
    count: u64,
}

impl Schedule {
    /// The schedule of `rate` requests per second for `duration` (at least one request).
    pub fn new(start: Instant, rate: f64, duration: Duration) -> Schedule {
        let count = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        Schedule {
            start,
            period_ns: 1e9 / rate,
            count,
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// When request `i` (0-based) is meant to be sent. Computed from the start, not from the
    /// previous send, so that lateness never accumulates into a lower rate.
    pub fn intended(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos((i as f64 * self.period_ns) as u64)
    }
}

/// Calls `fire(intended)` for every request of `schedule` at its intended time, on this thread.
/// When the thread falls behind, the requests whose time has passed are fired at once, as a
/// burst: the rate holds on average and their lateness is charged to their latency. Returns how
/// late each `fire` was called.
pub fn run(schedule: &Schedule, mut fire: impl FnMut(Instant)) -> Latencies {
    let _ = tighten_timer_slack();
    let mut lag = Latencies::with_capacity(schedule.count() as usize);
    for i in 0..schedule.count() {
        let intended = schedule.intended(i);
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        lag.record(Instant::now().saturating_duration_since(intended));
        fire(intended);
    }
    lag
}

/// Asks Linux to wake this thread within 1 ns of its deadline instead of the default 50 µs of
/// timer slack. The setting is per thread and lives in `/proc/TID/timerslack_ns` (there is none
/// under `/proc/thread-self/`, whose link names the thread id). Best effort: without it sends are
/// some tens of µs later, which the reported dispatch lag shows.
fn tighten_timer_slack() -> bool {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return false;
    };
    // `PID/task/TID`
    let Some(tid) = link.file_name().and_then(|t| t.to_str()) else {
        return false;
    };
    std::fs::write(format!("/proc/{tid}/timerslack_ns"), "1").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_requests_evenly() {
        let start = Instant::now();
        let s = Schedule::new(start, 2_000.0, Duration::from_secs(3));
        assert_eq!(s.count(), 6_000);
        assert_eq!(s.intended(0), start);
        assert_eq!(s.intended(1) - start, Duration::from_micros(500));
        assert_eq!(s.intended(5_999) - start, Duration::from_micros(2_999_500));
    }

    #[test]
    fn timer_slack_is_set_for_the_calling_thread_only() {
        fn slack() -> String {
            let link = std::fs::read_link("/proc/thread-self").unwrap();
            let tid = link.file_name().unwrap().to_str().unwrap().to_string();
            std::fs::read_to_string(format!("/proc/{tid}/timerslack_ns")).unwrap()
        }
        let before = slack();
        let (tightened, inside) = std::thread::spawn(|| (tighten_timer_slack(), slack()))
            .join()
            .unwrap();
        if tightened {
            assert_eq!(inside.trim(), "1");
        }
        assert_eq!(slack(), before);
    }

    #[test]
    fn run_fires_every_request_no_earlier_than_intended() {
        let start = Instant::now();
        let s = Schedule::new(start, 10_000.0, Duration::from_millis(20));
        let mut fired = Vec::new();
        let lag = run(&s, |intended| fired.push((intended, Instant::now())));
        assert_eq!(fired.len(), 200);
        assert_eq!(lag.len(), 200);
        assert!(fired.iter().all(|(intended, at)| at >= intended));
    }
}
