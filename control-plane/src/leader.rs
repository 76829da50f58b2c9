//! Leader election through etcd: the replica that creates the `leader` key, bound to a lease it
//! keeps alive, leads. The others watch the key and campaign as soon as it is gone (its holder
//! died and the lease expired, or it resigned). A leader that cannot refresh its lease for
//! two thirds of the TTL stops leading before etcd could give the key to another replica, and
//! every write it makes as leader is fenced on the key's value (`EtcdStore::fenced_write`), so
//! two replicas never act as leader on etcd at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::keys::Keys;
use crate::store::{EtcdStore, StoreError, WatchEvent, WatchMessage};

/// What a leader fences its writes with: the election key must still hold `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub key: String,
    /// `{replica}/{lease}`: unique per term even if two replicas share a name.
    pub value: String,
    pub lease: i64,
}

/// Campaigns until `shutdown`, publishing `Some(term)` while this replica leads.
pub async fn run(
    store: Arc<EtcdStore>,
    keys: Keys,
    replica: String,
    ttl: Duration,
    leading: watch::Sender<Option<Term>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let key = keys.leader();
    let retry = (ttl / 4).max(Duration::from_millis(100));
    loop {
        if *shutdown.borrow() {
            break;
        }
        match campaign(&store, &key, &replica, ttl).await {
            Ok(Some(term)) => {
                tracing::info!(replica = %replica, lease = term.lease, "elected: this replica computes levels and sends alerts");
                leading.send_replace(Some(term.clone()));
                let why = lead(&store, &term, ttl, &mut shutdown).await;
                leading.send_replace(None);
                tracing::warn!(replica = %replica, reason = why, "no longer the leader");
                if why == "shutting down" {
                    // Resign, so that another replica takes over at once.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        store.revoke_lease(term.lease),
                    )
                    .await;
                    break;
                }
            }
            Ok(None) => {
                // Someone leads: wait until the key goes (or a while, to look again).
                wait_for_vacancy(&store, &key, retry * 2, &mut shutdown).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "election campaign failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// One attempt: a new lease, and the key if it is free.
async fn campaign(
    store: &EtcdStore,
    key: &str,
    replica: &str,
    ttl: Duration,
) -> Result<Option<Term>, StoreError> {
    let lease = store.grant_lease(ttl).await?;
    let value = format!("{replica}/{lease}");
    match store.create_leased(key, &value, lease).await {
        Ok(true) => Ok(Some(Term {
            key: key.to_string(),
            value,
            lease,
        })),
        Ok(false) => {
            let _ = store.revoke_lease(lease).await;
            Ok(None)
        }
        Err(e) => {
            let _ = store.revoke_lease(lease).await;
            Err(e)
        }
    }
}

/// Keeps the term's lease alive; returns why leading stopped.
async fn lead(
    store: &EtcdStore,
    term: &Term,
    ttl: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> &'static str {
    let refresh_every = ttl / 3;
    // Leading stops before the lease could have expired in etcd.
    let give_up_after = ttl * 2 / 3;
    let mut last_ok = Instant::now();
    let mut keeper = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(refresh_every) => {}
            _ = shutdown.changed() => return "shutting down",
        }
        if keeper.is_none() {
            let opened = tokio::time::timeout(refresh_every, store.keep_alive(term.lease)).await;
            match opened {
                Ok(Ok(k)) => keeper = Some(k),
                Ok(Err(StoreError::Refused { .. })) => return "the election lease is gone",
                Ok(Err(_)) | Err(_) => {}
            }
        }
        if let Some(k) = keeper.as_mut() {
            match tokio::time::timeout(refresh_every, k.refresh()).await {
                Ok(Ok(true)) => last_ok = Instant::now(),
                Ok(Ok(false)) => return "the election lease expired",
                Ok(Err(_)) | Err(_) => keeper = None,
            }
        }
        if last_ok.elapsed() >= give_up_after {
            return "etcd did not renew the election lease in time";
        }
    }
}

/// Returns when the election key is deleted, after `at_most`, or on shutdown.
async fn wait_for_vacancy(
    store: &EtcdStore,
    key: &str,
    at_most: Duration,
    shutdown: &mut watch::Receiver<bool>,
) {
    let deadline = Instant::now() + at_most;
    let watcher = tokio::time::timeout(at_most, store.watch(key, 0)).await;
    let Ok(Ok(mut watcher)) = watcher else {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
        return;
    };
    loop {
        tokio::select! {
            message = watcher.next() => match message {
                Ok(WatchMessage::Events { events, .. }) => {
                    if events.iter().any(|e| matches!(e, WatchEvent::Delete { key: k, .. } if k == key)) {
                        return;
                    }
                }
                Ok(WatchMessage::Compacted { .. }) | Err(_) => return,
            },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = shutdown.changed() => return,
        }
    }
}
