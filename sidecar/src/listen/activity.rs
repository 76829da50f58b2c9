//! Requests in progress on one downstream connection: what its idle timeout watches and what
//! tells its request-head timer when a head is being waited for. Nothing here reads the clock
//! on a request's path: the idle watch samples the count of requests ended ([`crate::idle`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Activity {
    active: AtomicUsize,
    /// Requests ended so far.
    ended: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity::default()
    }

    /// One request starts; it is in progress until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    /// With no request in progress, how many have ended (it changes when one more has);
    /// `None` while one is in progress.
    pub fn quiet(&self) -> Option<u64> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.ended.load(Ordering::Acquire))
    }

    /// Resolves once no request has been in progress for `timeout` (at most half as long
    /// again: [`crate::idle`]).
    pub async fn idle_for(&self, timeout: Duration) {
        crate::idle::until_idle(timeout, || self.quiet()).await;
    }
}

/// One request in progress, until dropped (with its response body).
#[derive(Debug)]
pub struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_once_nothing_started_or_ended_for_a_timeout() {
        let activity = Arc::new(Activity::new());
        let timeout = Duration::from_secs(10);
        let request = activity.begin();
        assert_eq!(activity.quiet(), None);
        let started = Instant::now();
        let watch = activity.clone();
        let idle = tokio::spawn(async move {
            watch.idle_for(timeout).await;
            Instant::now()
        });
        // A request in progress for three timeouts is not idleness.
        tokio::time::sleep(timeout * 3).await;
        assert!(!idle.is_finished());
        drop(request);
        let ended = Instant::now();
        assert_eq!(activity.quiet(), Some(1));
        let closed = idle.await.expect("join");
        let waited = closed - ended;
        assert!(waited >= timeout && waited <= timeout * 3 / 2, "{waited:?}");
        assert!(closed - started > timeout * 3);
    }
}
