//! Events: level changes, breaker transitions, overrides, policy changes (applies, rollbacks,
//! deletions) and alerts sent, stored under
//! `events/{unix ms}-{count}{random}` for a day. Keys sort by time, so the newest are one descending
//! range read away. Events share leases: one 24-hour lease per hour of writing, so an event
//! lives between 23 and 24 hours.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::keys::Keys;
use crate::store::values::EventRecord;
use crate::store::{EtcdStore, StoreError};
use crate::timestamp;

const LIFETIME: Duration = Duration::from_secs(24 * 3600);
const LEASE_REUSE: Duration = Duration::from_secs(3600);
/// The most events one listing scans when filtering by service.
const SCAN: i64 = 2000;

/// The lease events (and audit records) are written under, renewed every hour.
#[derive(Debug)]
pub struct EventLease {
    lifetime: Duration,
    current: Option<(i64, Instant)>,
}

impl Default for EventLease {
    fn default() -> Self {
        EventLease::lasting(LIFETIME)
    }
}

impl EventLease {
    /// Leases of `lifetime`: what is written under one lives between `lifetime` less an hour
    /// and `lifetime`.
    pub fn lasting(lifetime: Duration) -> EventLease {
        EventLease {
            lifetime,
            current: None,
        }
    }

    pub async fn get(&mut self, store: &EtcdStore) -> Result<i64, StoreError> {
        match self.current {
            Some((id, granted)) if granted.elapsed() < LEASE_REUSE => Ok(id),
            _ => {
                let id = store.grant_lease(self.lifetime).await?;
                self.current = Some((id, Instant::now()));
                Ok(id)
            }
        }
    }

    /// The lease was refused (expired or revoked): take a new one next time.
    pub fn forget(&mut self) {
        self.current = None;
    }
}

/// An event happening at `now` (unix ms); `change` is (from, to).
pub fn record(
    now: i64,
    service: String,
    kind: &str,
    (from, to): (String, String),
    reasons: Vec<String>,
    by: String,
    text: String,
) -> EventRecord {
    EventRecord {
        time: now,
        at: timestamp::format_unix_millis(now),
        service,
        kind: kind.to_string(),
        from,
        to,
        reasons,
        by,
        text,
        resource: String::new(),
    }
}

/// Stores events recorded after what they tell happened (an API write, an alert posted): a
/// failure to store one is logged, and what happened stands.
#[derive(Debug)]
pub struct Recorder {
    store: Arc<EtcdStore>,
    keys: Keys,
    lease: tokio::sync::Mutex<EventLease>,
}

impl Recorder {
    pub fn new(store: Arc<EtcdStore>, keys: Keys) -> Self {
        Recorder {
            store,
            keys,
            lease: tokio::sync::Mutex::default(),
        }
    }

    pub async fn record(&self, event: EventRecord) {
        let mut lease = self.lease.lock().await;
        let stored = async {
            let id = lease.get(&self.store).await?;
            let value = serde_json::to_vec(&event).unwrap_or_default();
            self.store
                .put(&key(&self.keys, &event), value, Some(id))
                .await
        }
        .await;
        if let Err(e) = stored {
            lease.forget();
            tracing::warn!(error = %e, text = %event.text, "cannot record an event");
        }
    }
}

/// The key of an event: its millisecond, then this replica's running count (so that the
/// events it records within one millisecond keep their order) and three random digits (so that
/// two replicas' events of the same millisecond never share a key).
pub fn key(keys: &Keys, event: &EventRecord) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RECORDED: AtomicU64 = AtomicU64::new(0);
    let count = RECORDED.fetch_add(1, Ordering::Relaxed) % 10_000_000;
    keys.event(event.time, count * 1000 + u64::from(fastrand::u16(..1000)))
}

/// The newest events, of one service (`namespace/service`) or all, newest first.
pub async fn list(
    store: &EtcdStore,
    keys: &Keys,
    service: Option<&str>,
    limit: usize,
) -> Result<Vec<EventRecord>, StoreError> {
    let want = i64::try_from(limit).unwrap_or(i64::MAX);
    let scan = if service.is_some() {
        SCAN.max(want)
    } else {
        want
    };
    let entries = store.last_under(&keys.events(), scan).await?;
    Ok(entries
        .iter()
        .filter_map(|e| serde_json::from_slice::<EventRecord>(&e.value).ok())
        .filter(|e| service.is_none_or(|s| e.service == s))
        .take(limit)
        .collect())
}
