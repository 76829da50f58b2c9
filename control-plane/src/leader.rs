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

/// What one renewal of the election lease came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// etcd renewed the lease.
    Renewed,
    /// etcd let the lease expire: another replica may lead already.
    Expired,
    /// The lease does not exist any more.
    Gone,
    /// No answer (etcd unreachable, an error): try again.
    Failed,
}

/// Renews one lease.
pub trait Renew {
    fn renew(&mut self) -> impl std::future::Future<Output = Renewal> + Send;
}

/// The election lease of a term, renewed through a keep-alive stream opened on first use and
/// opened again after a failure.
struct TermLease<'a> {
    store: &'a EtcdStore,
    lease: i64,
    keeper: Option<crate::store::etcd::LeaseKeeper>,
}

impl Renew for TermLease<'_> {
    async fn renew(&mut self) -> Renewal {
        if self.keeper.is_none() {
            match self.store.keep_alive(self.lease).await {
                Ok(k) => self.keeper = Some(k),
                Err(StoreError::Refused { .. }) => return Renewal::Gone,
                Err(_) => return Renewal::Failed,
            }
        }
        let Some(keeper) = self.keeper.as_mut() else {
            return Renewal::Failed;
        };
        match keeper.refresh().await {
            Ok(true) => Renewal::Renewed,
            Ok(false) => Renewal::Expired,
            Err(_) => {
                self.keeper = None;
                Renewal::Failed
            }
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
    let lease = TermLease {
        store,
        lease: term.lease,
        keeper: None,
    };
    keep_leading(lease, ttl, shutdown).await
}

/// Renews every TTL/3 until a renewal says the lease is gone, shutdown comes, or two thirds of
/// the TTL pass without a successful renewal — whatever is in flight then (a renewal etcd does
/// not answer) is abandoned: the deadline holds even when etcd hangs, so this replica stops
/// acting as leader before etcd could let another one take the key.
pub async fn keep_leading(
    mut lease: impl Renew,
    ttl: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> &'static str {
    let refresh_every = ttl / 3;
    let give_up_after = ttl * 2 / 3;
    let mut deadline = Instant::now() + give_up_after;
    let mut next = Instant::now() + refresh_every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(deadline)) => {}
            _ = shutdown.changed() => return "shutting down",
        }
        if Instant::now() >= deadline {
            return "etcd did not renew the election lease in time";
        }
        let renewal = tokio::select! {
            r = tokio::time::timeout_at(deadline, lease.renew()) => r,
            _ = shutdown.changed() => return "shutting down",
        };
        match renewal {
            Ok(Renewal::Renewed) => deadline = Instant::now() + give_up_after,
            Ok(Renewal::Expired) => return "the election lease expired",
            Ok(Renewal::Gone) => return "the election lease is gone",
            Ok(Renewal::Failed) => {}
            Err(_) => return "etcd did not renew the election lease in time",
        }
        next = Instant::now() + refresh_every;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Renewals that answer as scripted after a delay each; `None` never answers.
    struct Scripted(VecDeque<(Duration, Option<Renewal>)>);

    impl Renew for Scripted {
        async fn renew(&mut self) -> Renewal {
            let (after, answer) = self
                .0
                .pop_front()
                .unwrap_or((Duration::ZERO, Some(Renewal::Renewed)));
            tokio::time::sleep(after).await;
            match answer {
                Some(a) => a,
                None => std::future::pending().await,
            }
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_etcd_ends_leadership_two_thirds_of_the_ttl_after_the_last_renewal() {
        let (_tx, mut shutdown) = watch::channel(false);
        let start = Instant::now();
        // TTL 9 s: renewals at 3 s and 6 s succeed; the one at 9 s never answers.
        let lease = Scripted(VecDeque::from([
            (Duration::ZERO, Some(Renewal::Renewed)),
            (Duration::ZERO, Some(Renewal::Renewed)),
            (Duration::ZERO, None),
        ]));
        let why = keep_leading(lease, secs(9), &mut shutdown).await;
        assert_eq!(why, "etcd did not renew the election lease in time");
        assert_eq!(
            start.elapsed(),
            secs(6 + 6),
            "2/3 of the TTL after the last renewal"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_renewals_are_retried_until_the_deadline() {
        let (_tx, mut shutdown) = watch::channel(false);
        let start = Instant::now();
        let lease = Scripted(VecDeque::from([
            (Duration::ZERO, Some(Renewal::Renewed)),
            (secs(1), Some(Renewal::Renewed)),
            (Duration::ZERO, Some(Renewal::Failed)),
            (Duration::ZERO, Some(Renewal::Failed)),
        ]));
        let why = keep_leading(lease, secs(9), &mut shutdown).await;
        assert_eq!(why, "etcd did not renew the election lease in time");
        // Renewed at 3 s and (slowly) at 7 s; the renewal at 10 s fails; at 13 s, 6 s after the
        // last success, leading ends without another try.
        assert_eq!(start.elapsed(), secs(13));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_or_shutdown_ends_leadership_at_once() {
        let (tx, mut shutdown) = watch::channel(false);
        let lease = Scripted(VecDeque::from([(Duration::ZERO, Some(Renewal::Expired))]));
        assert_eq!(
            keep_leading(lease, secs(9), &mut shutdown).await,
            "the election lease expired"
        );

        let start = Instant::now();
        let lease = Scripted(VecDeque::from([(Duration::ZERO, None)]));
        let stop = tokio::spawn(async move {
            tokio::time::sleep(secs(4)).await;
            tx.send_replace(true);
            tx
        });
        assert_eq!(
            keep_leading(lease, secs(9), &mut shutdown).await,
            "shutting down"
        );
        assert_eq!(start.elapsed(), secs(4));
        drop(stop.await);
    }
}
