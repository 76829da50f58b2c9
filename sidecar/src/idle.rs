//! Idleness watched without reading the clock on a request's path: a watch samples a count
//! that changes whenever requests come and go, every half timeout, and calls it idle once it
//! found the count unchanged and nothing in flight three times in a row — between one and one
//! and a half timeouts after the last request ended.

use std::time::Duration;

/// The shortest step a watch sleeps.
const MIN_STEP: Duration = Duration::from_millis(5);

/// Resolves once `quiet` (`None` while something is in flight, else a count that changes when
/// requests came and went) has stayed the same `Some` for at least `timeout`.
pub async fn until_idle(timeout: Duration, quiet: impl Fn() -> Option<u64>) {
    let step = (timeout / 2).max(MIN_STEP);
    let (mut last, mut quiet_steps) = (None, 0);
    loop {
        tokio::time::sleep(step).await;
        let now = quiet();
        if now.is_some() && now == last {
            quiet_steps += 1;
            if quiet_steps >= 2 {
                return;
            }
        } else {
            quiet_steps = 0;
        }
        last = now;
    }
}
