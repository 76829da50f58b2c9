//! The reconnect backoff every loop that waits for a peer uses (the sidecar's control-plane
//! stream, the control plane's etcd watch, ack and health writers, alert webhooks, etcd calls):
//! exponential, doubling from `first` up to `max`, with **equal jitter** — each wait is drawn
//! uniformly from `[d/2, d]` where `d` is the current step. Half the step is kept so a peer
//! that is down is not hammered; the other half is random so that a fleet which lost its peer
//! at the same moment (a control-plane restart, an etcd election) does not come back in step.
//! ("Full jitter", `[0, d]`, spreads more but lets some waits be near zero.)
//!
//! The caller sleeps: this only computes the waits, so it needs no runtime and tests need no
//! clock.

use std::time::Duration;

/// An exponential backoff with equal jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Steps of `first`, `2·first`, `4·first`, … up to `max` (never below `first`).
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            step: first,
        }
    }

    /// The next wait, drawn with `fastrand`; the step doubles for the wait after it.
    pub fn next_wait(&mut self) -> Duration {
        self.next_wait_with(fastrand::f64())
    }

    /// The next wait for a random draw `rand` in `[0, 1)`: `step · (0.5 + rand / 2)`.
    pub fn next_wait_with(&mut self, rand: f64) -> Duration {
        let wait = self.step.mul_f64(0.5 + rand.clamp(0.0, 1.0) * 0.5);
        self.step = self.step.saturating_mul(2).min(self.max);
        wait
    }

    /// Back to the first step (the peer answered).
    pub fn reset(&mut self) {
        self.step = self.first;
    }

    /// The step the next wait is drawn from (for logs: "retrying within 1.6s").
    pub fn step(&self) -> Duration {
        self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steps_double_up_to_the_cap_with_equal_jitter() {
        let mut b = Backoff::new(ms(100), ms(1000));
        // The lowest draw is half the step, the highest the whole step.
        assert_eq!(b.next_wait_with(0.0), ms(50));
        assert_eq!(b.next_wait_with(1.0), ms(200));
        assert_eq!(b.next_wait_with(0.5), ms(300));
        assert_eq!(b.step(), ms(800));
        assert_eq!(b.next_wait_with(0.0), ms(400));
        assert_eq!(b.step(), ms(1000), "capped");
        assert_eq!(b.next_wait_with(1.0), ms(1000));
        assert_eq!(b.next_wait_with(0.0), ms(500));
    }

    #[test]
    fn reset_starts_again_and_draws_stay_within_the_step() {
        let mut b = Backoff::new(ms(100), ms(10_000));
        for _ in 0..5 {
            b.next_wait();
        }
        b.reset();
        assert_eq!(b.step(), ms(100));
        for _ in 0..1000 {
            let mut fresh = Backoff::new(ms(100), ms(100));
            let w = fresh.next_wait();
            assert!(w >= ms(50) && w <= ms(100), "{w:?}");
        }
    }

    #[test]
    fn a_cap_below_the_first_step_is_the_first_step() {
        let mut b = Backoff::new(ms(300), ms(100));
        b.next_wait_with(0.0);
        assert_eq!(b.step(), ms(300));
    }
}
