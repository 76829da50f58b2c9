//! Health reports on their way to etcd: `health/{namespace}/{service}/{pod}`, bound to a lease
//! so that a pod that stops reporting stops counting by itself. Streams never wait on etcd:
//! they leave the pod's newest report here and one writer task takes the reports to etcd in
//! batches, keeping only the newest per pod while etcd is slow or away.
//!
//! Leases are shared: reports with the same interval `I` are bound to one lease of
//! `3·I + I` granted at most `I` before the write, so a report lives between three and four
//! intervals after it was written — without a lease or a keep-alive per pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bulwark_proto::backoff::Backoff;
use bulwark_proto::v1 as pb;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::store::keys::{Keys, PodKey};
use crate::store::values::HealthRecord;
use crate::store::{EtcdStore, StoreError};

/// Reports per transaction (etcd allows 128 operations in one).
const BATCH: usize = 64;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Intervals shorter than this are taken as this (a sidecar cannot make etcd write faster).
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The pods' newest reports, waiting to be written.
#[derive(Debug, Clone)]
pub struct HealthRecorder {
    replica: Arc<str>,
    pending: Arc<Mutex<HashMap<PodKey, HealthRecord>>>,
    wake: Arc<Notify>,
}

/// A lease shared by the reports of one interval.
#[derive(Debug, Clone, Copy)]
struct SharedLease {
    id: i64,
    granted: Instant,
}

impl HealthRecorder {
    pub fn new(replica: &str) -> Self {
        HealthRecorder {
            replica: replica.into(),
            pending: Arc::default(),
            wake: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PodKey, HealthRecord>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pod reported; `now` is unix milliseconds.
    pub fn report(&self, pod: &PodKey, report: &pb::HealthReport, now: i64) {
        let record = HealthRecord::from_report(report, &self.replica, now);
        self.lock().insert(pod.clone(), record);
        self.wake.notify_one();
    }

    /// Writes reports until `shutdown`.
    pub async fn run(self, store: Arc<EtcdStore>, keys: Keys, mut shutdown: watch::Receiver<bool>) {
        let mut leases: HashMap<u64, SharedLease> = HashMap::new();
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            match self.flush(&store, &keys, &mut leases).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("health reports reach etcd again");
                    }
                    failing = false;
                    backoff.reset();
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot store health reports in etcd; retrying");
                    }
                    failing = true;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_wait()) => {}
                        _ = shutdown.changed() => return,
                    }
                    self.wake.notify_one();
                }
            }
        }
    }

    /// Writes everything pending; what fails goes back unless a newer report arrived.
    async fn flush(
        &self,
        store: &EtcdStore,
        keys: &Keys,
        leases: &mut HashMap<u64, SharedLease>,
    ) -> Result<(), StoreError> {
        let taken: Vec<(PodKey, HealthRecord)> = self.lock().drain().collect();
        let mut by_interval: HashMap<u64, Vec<(PodKey, HealthRecord)>> = HashMap::new();
        for (pod, record) in taken {
            let interval = Duration::from_millis(u64::from(record.interval_ms)).max(MIN_INTERVAL);
            by_interval
                .entry(interval.as_millis() as u64)
                .or_default()
                .push((pod, record));
        }
        let mut result = Ok(());
        for (interval_ms, records) in by_interval {
            if result.is_err() {
                self.restore(records);
                continue;
            }
            let interval = Duration::from_millis(interval_ms);
            let lease = match leases.get(&interval_ms) {
                Some(l) if l.granted.elapsed() < interval => l.id,
                _ => match store.grant_lease(lease_ttl(interval)).await {
                    Ok(id) => {
                        leases.insert(
                            interval_ms,
                            SharedLease {
                                id,
                                granted: Instant::now(),
                            },
                        );
                        id
                    }
                    Err(e) => {
                        self.restore(records);
                        result = Err(e);
                        continue;
                    }
                },
            };
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let batch: Vec<(PodKey, HealthRecord)> = records.by_ref().take(BATCH).collect();
                let entries: Vec<(String, Vec<u8>)> = batch
                    .iter()
                    .map(|(pod, record)| {
                        (
                            keys.health_of(pod),
                            serde_json::to_vec(record).unwrap_or_default(),
                        )
                    })
                    .collect();
                if let Err(e) = store.put_leased(&entries, lease).await {
                    leases.remove(&interval_ms);
                    self.restore(batch);
                    self.restore(records.by_ref().collect());
                    result = Err(e);
                    break;
                }
            }
        }
        result
    }

    fn restore(&self, records: Vec<(PodKey, HealthRecord)>) {
        let mut pending = self.lock();
        for (pod, record) in records {
            pending.entry(pod).or_insert(record);
        }
    }
}

/// The TTL of the lease shared by reports of `interval`: three intervals after the last
/// report, plus the at most one interval the lease is reused for.
pub fn lease_ttl(interval: Duration) -> Duration {
    let ms = interval.as_millis() as u64 * 4;
    Duration::from_secs(ms.div_ceil(1000).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodKey {
        PodKey {
            namespace: "mrg".into(),
            service: "orders".into(),
            pod: name.into(),
        }
    }

    fn report(version: i64) -> pb::HealthReport {
        pb::HealthReport {
            interval_ms: 1000,
            applied_version: version,
            app: Some(pb::AppHealth {
                probed: true,
                healthy: false,
                detail: "GET /health answered 503".into(),
            }),
            upstreams: vec![pb::UpstreamHealth {
                namespace: "mrg".into(),
                name: "midtrans".into(),
                requests: 10,
                failures: 20,
                slow: 0,
                breaker: pb::BreakerState::Open.into(),
                endpoints: 2,
                ejected: 5,
                overloaded: 0,
                p99_micros: 0,
            }],
            identity: None,
        }
    }

    #[test]
    fn the_newest_report_of_a_pod_replaces_the_pending_one() {
        let recorder = HealthRecorder::new("cp-1");
        recorder.report(&pod("a"), &report(1), 10);
        recorder.report(&pod("a"), &report(2), 20);
        recorder.report(&pod("b"), &report(1), 30);
        let pending = recorder.lock();
        assert_eq!(pending.len(), 2);
        let a = &pending[&pod("a")];
        assert_eq!((a.applied_version, a.at), (2, 20));
        assert_eq!(a.replica, "cp-1");
        assert_eq!(a.app.detail, "GET /health answered 503");
        // Counts a sidecar got wrong are clamped.
        assert_eq!(a.upstreams[0].failures, 10);
        assert_eq!(a.upstreams[0].ejected, 2);
    }

    #[test]
    fn a_failed_write_keeps_a_newer_report() {
        let recorder = HealthRecorder::new("cp-1");
        recorder.report(&pod("a"), &report(3), 30);
        let old = HealthRecord::from_report(&report(2), "cp-1", 20);
        recorder.restore(vec![
            (pod("a"), old),
            (pod("b"), HealthRecord::from_report(&report(1), "cp-1", 5)),
        ]);
        let pending = recorder.lock();
        assert_eq!(pending[&pod("a")].applied_version, 3);
        assert_eq!(pending[&pod("b")].applied_version, 1);
    }

    #[test]
    fn leases_outlive_three_intervals() {
        assert_eq!(lease_ttl(Duration::from_secs(5)), Duration::from_secs(20));
        assert_eq!(
            lease_ttl(Duration::from_millis(200)),
            Duration::from_secs(1)
        );
        assert_eq!(
            lease_ttl(Duration::from_millis(1500)),
            Duration::from_secs(6)
        );
    }
}
