//! Bounded polling for events in other processes: the one way the end-to-end tests wait for
//! something they cannot await directly (a log line, a metric, a reloaded policy).

use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use tokio::time::Instant;

/// How often a probe runs.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// How long a test waits for something another process does before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Runs `probe` every 20 ms until it returns `Some`, and returns that value; panics (naming
/// the caller's line) when `timeout` passes first.
#[track_caller]
pub fn eventually<T, F, Fut>(timeout: Duration, probe: F) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = Location::caller();
    async move {
        match try_eventually(timeout, probe).await {
            Some(v) => v,
            None => panic!("eventually ({caller}): condition not met within {timeout:?}"),
        }
    }
}

/// Like [`eventually`], but returns `None` when `timeout` passes.
pub async fn try_eventually<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        // A probe that hangs must not outlive the bound either.
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Some(v)) => return Some(v),
            Ok(None) => {}
            Err(_elapsed) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Waits up to [`PATIENCE`] for `probe` to return `Some`; panics naming `what` otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_eventually(PATIENCE, probe).await {
        Some(v) => v,
        None => panic!("timed out after {PATIENCE:?} waiting for {what}"),
    }
}
