//! Requests in progress on one downstream connection, and since when none has been: what its
//! idle timeout and its request-head timer start from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    opened: Instant,
    /// When the last request ended, in milliseconds since `opened`.
    last_ended_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            active: AtomicUsize::new(0),
            opened: Instant::now(),
            last_ended_ms: AtomicU64::new(0),
        }
    }

    /// One request starts; it is in progress until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    /// Since when no request has been in progress; `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.last_ended_ms.load(Ordering::Relaxed));
        Some(self.opened + since)
    }

    /// Resolves once no request has been in progress for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = match self.idle_since() {
                Some(since) if Instant::now() >= since + timeout => return,
                Some(since) => since + timeout,
                // Busy: look again later.
                None => Instant::now() + timeout,
            };
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// One request in progress, until dropped (with its response body).
#[derive(Debug)]
pub struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ended_ms.store(ms, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_once_the_last_request_ended_a_timeout_ago() {
        let activity = Arc::new(Activity::new());
        let timeout = Duration::from_secs(10);
        let request = activity.begin();
        assert_eq!(activity.idle_since(), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(request);
        let ended = Instant::now();
        assert!(activity.idle_since().is_some());
        activity.idle_for(timeout).await;
        assert_eq!(Instant::now() - ended, timeout);
    }
}
