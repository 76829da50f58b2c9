//! Acks: records what every pod connected to this replica applied, under `acks/`, bound to
//! one lease this replica keeps alive (refreshed every TTL/3). A record is written when the
//! pod connects and on each ACK/NACK, and deleted when its stream ends; if the replica dies,
//! the lease expires and etcd deletes its records. Streams never wait on etcd: they leave the
//! newest record here and a single writer task takes it to etcd, coalescing and retrying.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bulwark_proto::backoff::Backoff;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::store::keys::{Keys, PodKey};
use crate::store::values::AckRecord;
use crate::store::{EtcdStore, LeaseKeeper, StoreError};
use crate::timestamp;

/// Records per transaction (etcd allows 128 operations in one).
const BATCH: usize = 64;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Identifies one stream of a pod. A pod may have two for a moment (it reconnected before the
/// old one was seen to end): they are one pod, which stays until its last stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamId(u64);

#[derive(Debug)]
struct Live {
    streams: Vec<StreamId>,
    record: AckRecord,
}

#[derive(Debug, Default)]
struct Pending {
    live: HashMap<PodKey, Live>,
    /// Live pods whose record etcd does not have yet.
    dirty: BTreeSet<PodKey>,
    /// Pods whose stream ended: their record is to be deleted.
    gone: BTreeSet<PodKey>,
    next_stream: u64,
}

/// The pods' acks on their way to etcd.
#[derive(Debug, Clone)]
pub struct AckRecorder {
    replica: Arc<str>,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
}

impl AckRecorder {
    pub fn new(replica: &str) -> Self {
        AckRecorder {
            replica: replica.into(),
            pending: Arc::default(),
            wake: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pod connected, saying it had applied `applied` (0: nothing).
    pub fn connect(&self, pod: &PodKey, applied: i64) -> StreamId {
        let mut pending = self.lock();
        pending.next_stream += 1;
        let stream = StreamId(pending.next_stream);
        match pending.live.get_mut(pod) {
            Some(live) => {
                live.streams.push(stream);
                live.record.applied = live.record.applied.max(applied);
                live.record.at = timestamp::now();
            }
            None => {
                let record = AckRecord {
                    version: applied,
                    error: String::new(),
                    replica: self.replica.to_string(),
                    at: timestamp::now(),
                    applied,
                };
                pending.live.insert(
                    pod.clone(),
                    Live {
                        streams: vec![stream],
                        record,
                    },
                );
            }
        }
        pending.gone.remove(pod);
        pending.dirty.insert(pod.clone());
        drop(pending);
        self.wake.notify_one();
        stream
    }

    /// The pod answered a snapshot: applied it (empty `error`) or refused it.
    pub fn answer(&self, pod: &PodKey, stream: StreamId, version: i64, error: &str) {
        let mut pending = self.lock();
        let Some(live) = pending
            .live
            .get_mut(pod)
            .filter(|l| l.streams.contains(&stream))
        else {
            return;
        };
        live.record.version = version;
        live.record.error = error.to_string();
        live.record.at = timestamp::now();
        if error.is_empty() {
            live.record.applied = live.record.applied.max(version);
        }
        pending.dirty.insert(pod.clone());
        drop(pending);
        self.wake.notify_one();
    }

    /// The pod's stream ended.
    pub fn disconnect(&self, pod: &PodKey, stream: StreamId) {
        let mut pending = self.lock();
        let Some(live) = pending.live.get_mut(pod) else {
            return;
        };
        live.streams.retain(|s| *s != stream);
        if live.streams.is_empty() {
            pending.live.remove(pod);
            pending.dirty.remove(pod);
            pending.gone.insert(pod.clone());
            drop(pending);
            self.wake.notify_one();
        }
    }

    /// Writes records to etcd until `shutdown`; then revokes the lease so that this
    /// replica's records go at once.
    pub async fn run(
        self,
        store: Arc<EtcdStore>,
        keys: Keys,
        ttl: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let refresh_every = ttl / 3;
        let mut lease: Option<i64> = None;
        let mut keeper: Option<LeaseKeeper> = None;
        let mut next_refresh = Instant::now() + refresh_every;
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        let mut failing = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let step = self
                .step(
                    &store,
                    &keys,
                    ttl,
                    &mut lease,
                    &mut keeper,
                    &mut next_refresh,
                )
                .await;
            match step {
                Ok(()) => {
                    if failing {
                        tracing::info!("ack records reach etcd again");
                    }
                    failing = false;
                    backoff.reset();
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot record acks in etcd; retrying");
                    }
                    failing = true;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_wait()) => {}
                        _ = shutdown.changed() => break,
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next_refresh) => {
                    if let Some(k) = keeper.as_mut() {
                        match k.refresh().await {
                            Ok(true) => next_refresh = Instant::now() + refresh_every,
                            Ok(false) => {
                                tracing::warn!(lease = ?lease, "the ack lease expired; granting a new one");
                                lease = None;
                                keeper = None;
                            }
                            // The lease may well live on: reopen the channel and see.
                            Err(e) => {
                                tracing::debug!(error = %e, "lease keep-alive failed");
                                keeper = None;
                            }
                        }
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        if let Some(lease) = lease {
            match tokio::time::timeout(Duration::from_secs(2), store.revoke_lease(lease)).await {
                Ok(Ok(())) => tracing::info!(lease, "ack lease revoked"),
                Ok(Err(e)) => {
                    tracing::warn!(lease, error = %e, "cannot revoke the ack lease; it expires by itself")
                }
                Err(_) => tracing::warn!(
                    lease,
                    "revoking the ack lease timed out; it expires by itself"
                ),
            }
        }
    }

    /// Makes sure a lease is held and kept, then writes what is pending.
    async fn step(
        &self,
        store: &EtcdStore,
        keys: &Keys,
        ttl: Duration,
        lease: &mut Option<i64>,
        keeper: &mut Option<LeaseKeeper>,
        next_refresh: &mut Instant,
    ) -> Result<(), StoreError> {
        if let (Some(id), None) = (*lease, keeper.as_ref()) {
            match store.keep_alive(id).await {
                Ok(k) => {
                    *keeper = Some(k);
                    *next_refresh = Instant::now();
                }
                // etcd no longer knows the lease: the records went with it.
                Err(StoreError::Refused { .. }) => {
                    tracing::warn!(lease = id, "the ack lease is gone; granting a new one");
                    *lease = None;
                }
                Err(e) => return Err(e),
            }
        }
        let id = match *lease {
            Some(id) => id,
            None => {
                let id = store.grant_lease(ttl).await?;
                let k = store.keep_alive(id).await?;
                tracing::info!(lease = id, ttl = ?ttl, "ack lease granted");
                *lease = Some(id);
                *keeper = Some(k);
                *next_refresh = Instant::now() + ttl / 3;
                // Whatever was written under an older lease is gone: write it all again.
                let mut pending = self.lock();
                let all: Vec<PodKey> = pending.live.keys().cloned().collect();
                pending.dirty.extend(all);
                id
            }
        };
        match self.flush(store, keys, id).await {
            Err(StoreError::Refused { message, .. }) if message.contains("lease not found") => {
                *lease = None;
                *keeper = None;
                Err(StoreError::Refused {
                    operation: "a leased write",
                    message,
                })
            }
            other => other,
        }
    }

    /// Writes dirty records and deletes gone ones; what fails stays pending.
    async fn flush(&self, store: &EtcdStore, keys: &Keys, lease: i64) -> Result<(), StoreError> {
        loop {
            let batch: Vec<(PodKey, Vec<u8>)> = {
                let mut pending = self.lock();
                let pods: Vec<PodKey> = pending.dirty.iter().take(BATCH).cloned().collect();
                let mut batch = Vec::with_capacity(pods.len());
                for pod in pods {
                    pending.dirty.remove(&pod);
                    if let Some(live) = pending.live.get(&pod) {
                        let value = serde_json::to_vec(&live.record).unwrap_or_default();
                        batch.push((pod, value));
                    }
                }
                batch
            };
            if batch.is_empty() {
                break;
            }
            let entries: Vec<(String, Vec<u8>)> = batch
                .iter()
                .map(|(pod, value)| (keys.ack(pod), value.clone()))
                .collect();
            if let Err(e) = store.put_leased(&entries, lease).await {
                let mut pending = self.lock();
                for (pod, _) in batch {
                    if pending.live.contains_key(&pod) {
                        pending.dirty.insert(pod);
                    }
                }
                return Err(e);
            }
        }
        loop {
            let next = self.lock().gone.pop_first();
            let Some(pod) = next else { break };
            if let Err(e) = store.delete_if_leased(&keys.ack(&pod), lease).await {
                let mut pending = self.lock();
                if !pending.live.contains_key(&pod) {
                    pending.gone.insert(pod);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodKey {
        PodKey {
            namespace: "shop".into(),
            service: "orders".into(),
            pod: name.into(),
        }
    }

    #[test]
    fn two_streams_of_a_pod_are_one_pod_with_one_record() {
        let recorder = AckRecorder::new("cp-1");
        let first = recorder.connect(&pod("a"), 5);
        let second = recorder.connect(&pod("a"), 5);
        assert_eq!(recorder.lock().live.len(), 1);
        recorder.answer(&pod("a"), first, 9, "");
        assert_eq!(recorder.lock().live[&pod("a")].record.version, 9);
        recorder.answer(&pod("a"), second, 11, "spec: bad");
        let pending = recorder.lock();
        let record = &pending.live[&pod("a")].record;
        assert_eq!((record.version, record.applied), (11, 9));
        assert_eq!(record.error, "spec: bad");
        assert_eq!(record.replica, "cp-1");
        assert!(pending.dirty.contains(&pod("a")));
    }

    #[test]
    fn a_pod_stays_until_its_last_stream_ends_in_either_order() {
        let recorder = AckRecorder::new("cp-1");
        let old = recorder.connect(&pod("a"), 0);
        let new = recorder.connect(&pod("a"), 0);
        recorder.disconnect(&pod("a"), new);
        assert!(recorder.lock().live.contains_key(&pod("a")));
        recorder.answer(&pod("a"), new, 4, "");
        assert_eq!(
            recorder.lock().live[&pod("a")].record.version,
            0,
            "an ended stream's late answer counts for nothing"
        );
        recorder.disconnect(&pod("a"), old);
        assert!(recorder.lock().gone.contains(&pod("a")));
    }

    #[test]
    fn a_late_disconnect_of_an_old_stream_keeps_the_new_one() {
        let recorder = AckRecorder::new("cp-1");
        let old = recorder.connect(&pod("a"), 0);
        let new = recorder.connect(&pod("a"), 0);
        recorder.disconnect(&pod("a"), old);
        assert!(recorder.lock().live.contains_key(&pod("a")));
        assert!(recorder.lock().gone.is_empty());
        recorder.disconnect(&pod("a"), new);
        let pending = recorder.lock();
        assert!(pending.live.is_empty());
        assert!(pending.dirty.is_empty());
        assert!(pending.gone.contains(&pod("a")));
    }

    #[test]
    fn reconnecting_cancels_a_pending_delete() {
        let recorder = AckRecorder::new("cp-1");
        let s = recorder.connect(&pod("a"), 0);
        recorder.disconnect(&pod("a"), s);
        recorder.connect(&pod("a"), 3);
        assert!(recorder.lock().gone.is_empty());
    }
}
