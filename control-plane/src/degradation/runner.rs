//! The elected replica's work: for every service with a ServicePolicy, evaluate its pods' live
//! reports and the overrides ([`compute`](super::compute)), and when the result changed, write it to
//! `status/{namespace}/{service}` with its events — fenced on the election key, so a replica
//! that lost the election writes nothing — then queue the alerts. Every replica's index
//! follows `status/` and pushes levels to its sidecars (`api::discovery`).
//!
//! A round runs when what levels depend on changed (at most every `min_gap`, so a burst of
//! reports makes one round), and at least every `interval` (damping and override expiry are
//! about time passing).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::policy::{Kind, Resource, ServicePolicy, defaults};
use tokio::sync::watch;

use crate::degradation::alerts::{Alert, AlertSender, Delivery};
use crate::degradation::compute::{self, Inputs, Level, ServiceStatus, Transition};
use crate::degradation::events::{self, EventLease};
use crate::index::SharedIndex;
use crate::leader::Term;
use crate::metrics::Metrics;
use crate::store::keys::{Keys, OverrideTarget, ServiceKey};
use crate::store::values::{EventRecord, HealthRecord, OverrideRecord};
use crate::store::{EtcdStore, StoreError};
use crate::timestamp::unix_millis;

/// etcd allows 128 operations per transaction.
const OPS_PER_TXN: usize = 100;
/// A status is rewritten this often even when nothing changed, so counts stay current.
const REFRESH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct LevelsConfig {
    /// The longest time between two rounds.
    pub interval: Duration,
    /// The shortest time between two rounds.
    pub min_gap: Duration,
}

/// Everything one round needs.
pub struct Levels {
    pub store: Arc<EtcdStore>,
    pub keys: Keys,
    pub index: SharedIndex,
    pub alerts: AlertSender,
    pub metrics: Arc<Metrics>,
    pub config: LevelsConfig,
}

impl Levels {
    /// Computes levels whenever this replica leads, until `shutdown`.
    pub async fn run(
        self,
        mut leading: watch::Receiver<Option<Term>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let term = tokio::select! {
                term = leading.wait_for(|t| t.is_some()) => match term {
                    Ok(term) => term.clone(),
                    Err(_) => return,
                },
                _ = shutdown.changed() => return,
            };
            let Some(term) = term else { continue };
            self.metrics.set_leader(true);
            self.lead(&term, &mut leading, &mut shutdown).await;
            self.metrics.set_leader(false);
            if *shutdown.borrow() {
                return;
            }
        }
    }

    async fn lead(
        &self,
        term: &Term,
        leading: &mut watch::Receiver<Option<Term>>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let mut inputs = self.index.lock().watch_inputs();
        // Start from what the previous leader wrote: no transition is announced twice.
        let mut written: HashMap<ServiceKey, Arc<ServiceStatus>> =
            self.index.lock().statuses().clone().into_iter().collect();
        let mut lease = EventLease::default();
        loop {
            match self.round(term, &mut written, &mut lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("a levels write was refused: another replica leads");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot store levels; retrying"),
            }
            tokio::select! {
                _ = inputs.changed() => {
                    tokio::time::sleep(self.config.min_gap).await;
                }
                _ = tokio::time::sleep(self.config.interval) => {}
                changed = leading.changed() => {
                    if changed.is_err() || leading.borrow().as_ref() != Some(term) {
                        return;
                    }
                }
                _ = shutdown.changed() => return,
            }
            inputs.borrow_and_update();
        }
    }

    /// One evaluation of every service; `Ok(false)` when the fence failed.
    async fn round(
        &self,
        term: &Term,
        written: &mut HashMap<ServiceKey, Arc<ServiceStatus>>,
        lease: &mut EventLease,
    ) -> Result<bool, StoreError> {
        let now = unix_millis();
        let Some(work) = self.gather(written, now) else {
            return Ok(true);
        };
        self.metrics.levels_computed();
        let mut puts: Vec<(String, Vec<u8>, Option<i64>)> = Vec::new();
        let mut deletes: Vec<String> = Vec::new();
        let mut results = Vec::new();
        let mut events: Vec<EventRecord> = Vec::new();
        let mut alerts: Vec<(Alert, Delivery)> = Vec::new();
        for job in &work.services {
            let reports: Vec<(&str, &HealthRecord)> = job
                .reports
                .iter()
                .map(|(pod, r)| (pod.as_str(), r.as_ref()))
                .collect();
            let forced = job.forced.as_ref().map(|(o, l)| (o, *l));
            let previous = written.get(&job.key).map(|s| s.as_ref());
            let (status, transitions) = compute::evaluate(
                &job.policy,
                Inputs {
                    reports: &reports,
                    forced,
                    previous,
                    now,
                },
            );
            let changed = previous.is_none_or(|p| {
                !p.same_state(&status) || now - p.computed_at >= REFRESH.as_millis() as i64
            });
            if !changed {
                continue;
            }
            if let Some(ended) = previous.and_then(|p| override_ended(p, &status, now)) {
                events.push(ended);
            }
            for t in &transitions {
                events.push(event_of(&status, t, now));
                if let Some(delivery) = delivery(&job.policy) {
                    alerts.push((alert_of(&status, t, now), delivery));
                }
            }
            match serde_json::to_vec(&status) {
                Ok(value) => puts.push((self.keys.status(&job.key), value, None)),
                Err(e) => tracing::error!(service = %job.key, error = %e, "cannot encode a status"),
            }
            results.push((job.key.clone(), Arc::new(status)));
        }
        for gone in &work.gone {
            deletes.push(self.keys.status(gone));
        }
        if !events.is_empty() {
            let id = lease.get(&self.store).await?;
            for event in &events {
                let value = serde_json::to_vec(event).unwrap_or_default();
                puts.push((events::key(&self.keys, event), value, Some(id)));
            }
        }
        if puts.is_empty() && deletes.is_empty() {
            return Ok(true);
        }
        // Statuses first, each chunk a transaction of its own under the fence.
        let mut ops: Vec<Op> = puts.into_iter().map(Op::Put).collect();
        ops.extend(deletes.into_iter().map(Op::Delete));
        for chunk in ops.chunks(OPS_PER_TXN) {
            let (p, d): (Vec<_>, Vec<_>) = chunk.iter().partition(|op| matches!(op, Op::Put(_)));
            let p: Vec<(String, Vec<u8>, Option<i64>)> = p
                .into_iter()
                .filter_map(|op| match op {
                    Op::Put(put) => Some(put.clone()),
                    Op::Delete(_) => None,
                })
                .collect();
            let d: Vec<String> = d
                .into_iter()
                .filter_map(|op| match op {
                    Op::Delete(key) => Some(key.clone()),
                    Op::Put(_) => None,
                })
                .collect();
            match self
                .store
                .fenced_write(&term.key, &term.value, &p, &d)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => {
                    if matches!(e, StoreError::Refused { .. }) {
                        lease.forget();
                    }
                    return Err(e);
                }
            }
        }
        for (key, status) in results {
            if status.level != written.get(&key).map(|s| s.level).unwrap_or_default() {
                tracing::info!(service = %key, level = %status.level, summary = %status.summary, "level changed");
            }
            written.insert(key, status);
        }
        for gone in work.gone {
            written.remove(&gone);
        }
        for (alert, delivery) in alerts {
            self.alerts.send(alert, delivery);
        }
        Ok(true)
    }

    /// Reads what a round needs from the index, without holding its lock while computing.
    fn gather(&self, written: &HashMap<ServiceKey, Arc<ServiceStatus>>, now: i64) -> Option<Work> {
        let index = self.index.lock();
        if !index.state().loaded {
            return None;
        }
        let live = |o: &&OverrideRecord| o.expires > now;
        let mesh = index
            .overrides()
            .get(&OverrideTarget::Mesh)
            .filter(live)
            .cloned();
        let mut services = Vec::new();
        let mut keys = std::collections::BTreeSet::new();
        for stored in index.list(Kind::ServicePolicy, None) {
            let Resource::ServicePolicy(policy) = &stored.resource else {
                continue;
            };
            let key = ServiceKey {
                namespace: stored.key.namespace.clone(),
                service: stored.key.name.clone(),
            };
            let own = index
                .overrides()
                .get(&OverrideTarget::Service(key.clone()))
                .filter(live)
                .cloned();
            let forced = own.or_else(|| mesh.clone()).and_then(|o| {
                let level = Level::parse(&o.level)?;
                Some((o, level))
            });
            keys.insert(key.clone());
            services.push(Job {
                reports: index.health_of(&key),
                key,
                policy: policy.clone(),
                forced,
            });
        }
        let gone = written
            .keys()
            .chain(index.statuses().keys())
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Some(Work { services, gone })
    }
}

enum Op {
    Put((String, Vec<u8>, Option<i64>)),
    Delete(String),
}

struct Job {
    key: ServiceKey,
    policy: ServicePolicy,
    reports: Vec<(String, Arc<HealthRecord>)>,
    forced: Option<(OverrideRecord, Level)>,
}

struct Work {
    services: Vec<Job>,
    /// Services whose ServicePolicy is gone: their status goes too.
    gone: Vec<ServiceKey>,
}

fn delivery(policy: &ServicePolicy) -> Option<Delivery> {
    let alerts = policy.spec.alerts.as_ref()?;
    Some(Delivery {
        webhook: alerts.webhook.clone()?,
        max_per_minute: alerts
            .max_per_minute
            .unwrap_or(defaults::ALERTS_MAX_PER_MINUTE),
    })
}

fn service_id(status: &ServiceStatus) -> String {
    format!("{}/{}", status.namespace, status.service)
}

fn event_of(status: &ServiceStatus, t: &Transition, now: i64) -> EventRecord {
    events::record(
        now,
        service_id(status),
        t.kind,
        (t.from.clone(), t.to.clone()),
        t.reasons.clone(),
        String::new(),
        t.text.clone(),
    )
}

fn alert_of(status: &ServiceStatus, t: &Transition, now: i64) -> Alert {
    Alert {
        service: service_id(status),
        kind: t.kind.to_string(),
        from: t.from.clone(),
        to: t.to.clone(),
        reasons: t.reasons.clone(),
        time: now,
        at: crate::timestamp::format_unix_millis(now),
        text: t.text.clone(),
    }
}

/// The event of an override that ran out (a cleared one was recorded by the API).
fn override_ended(
    previous: &ServiceStatus,
    now_status: &ServiceStatus,
    now: i64,
) -> Option<EventRecord> {
    let before = previous.r#override.as_ref()?;
    if now_status.r#override.is_some() || before.expires > now {
        return None;
    }
    let service = if before.mesh {
        "*".to_string()
    } else {
        service_id(previous)
    };
    let text = format!(
        "{} override {} by {} expired",
        service_id(previous),
        before.level,
        before.by
    );
    Some(events::record(
        now,
        service,
        "override",
        (before.level.to_string(), "expired".into()),
        vec![before.reason.clone()],
        before.by.clone(),
        text,
    ))
}
