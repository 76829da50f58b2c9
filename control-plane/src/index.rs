//! The index: this replica's synchronous, in-memory state of the world (resources with their
//! `mod_revision`, their history, the pods' acks), fed by the etcd watch; it computes each
//! service's snapshot and publishes changes to the streams that subscribed.
//!
//! A snapshot's version is the revision of the newest change relevant to it: the last change
//! (write or deletion, known from the history written with every change) of its
//! ServicePolicy and of any UpstreamPolicy. It depends only on what etcd holds, so every
//! replica computes the same version for the same content — a sidecar that reconnects
//! elsewhere with `last_applied_version` equal to it has nothing to receive.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bulwark_proto::policy::{Kind, Resource, TlsMode};
use bulwark_proto::spiffe::DEFAULT_TRUST_DOMAIN;
use tokio::sync::watch;

use crate::store::keys::{OverrideTarget, PodKey, ResourceKey, ServiceKey};
use crate::store::values::ServiceStatus;
use crate::store::values::{AckRecord, HealthRecord, HistoryOp, OverrideRecord, RoleBinding};

/// A resource as stored, with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub key: ResourceKey,
    /// With `metadata.resourceVersion` set to `mod_revision`.
    pub resource: Resource,
    pub mod_revision: i64,
    /// `resource` as compact JSON, the way snapshots carry it.
    pub json: String,
}

impl StoredResource {
    /// Sets `metadata.resourceVersion` and renders the JSON.
    pub fn new(key: ResourceKey, mut resource: Resource, mod_revision: i64) -> Self {
        resource.metadata_mut().resource_version = Some(mod_revision.to_string());
        // Serializing the model's own types cannot fail (string keys, no custom errors).
        let json = serde_json::to_string(&resource).unwrap_or_default();
        StoredResource {
            key,
            resource,
            mod_revision,
            json,
        }
    }
}

/// One entry of a resource's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// The revision of the change (the history key's `mod_revision`).
    pub revision: i64,
    pub op: HistoryOp,
    pub by: String,
    pub at: String,
    /// The resource after the change, as stored (no `resourceVersion`); `None` if deleted.
    pub resource: Option<serde_json::Value>,
}

/// A change to apply to the index, decoded from an etcd event.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Policy(Arc<StoredResource>),
    PolicyDeleted {
        key: ResourceKey,
        revision: i64,
    },
    History {
        key: ResourceKey,
        seq: u64,
        entry: HistoryEntry,
    },
    HistoryDeleted {
        key: ResourceKey,
        seq: u64,
    },
    Ack {
        pod: PodKey,
        record: AckRecord,
    },
    AckDeleted {
        pod: PodKey,
    },
    Health {
        pod: PodKey,
        record: Arc<HealthRecord>,
    },
    HealthDeleted {
        pod: PodKey,
    },
    Status {
        service: ServiceKey,
        status: Arc<ServiceStatus>,
    },
    StatusDeleted {
        service: ServiceKey,
    },
    Override {
        target: OverrideTarget,
        record: OverrideRecord,
    },
    OverrideDeleted {
        target: OverrideTarget,
    },
    RoleBinding {
        name: String,
        binding: RoleBinding,
    },
    RoleBindingDeleted {
        name: String,
    },
    /// An event was recorded (events themselves are read from etcd, not kept here).
    Event,
}

/// What a service's pods need: its ServicePolicy and every UpstreamPolicy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Content {
    /// The revision of the newest change relevant to this content; 0 when there never was one.
    pub version: i64,
    /// Sorted by kind, namespace and name.
    pub resources: Vec<Arc<StoredResource>>,
}

impl Content {
    /// Same resources at the same versions.
    fn same_content(&self, other: &Content) -> bool {
        self.resources.len() == other.resources.len()
            && self
                .resources
                .iter()
                .zip(&other.resources)
                .all(|(a, b)| a.key == b.key && a.mod_revision == b.mod_revision)
    }
}

/// How current the index is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexState {
    /// The etcd revision the index reflects.
    pub revision: i64,
    /// A first listing was loaded: reads and snapshots can be served.
    pub loaded: bool,
    /// The watch is down: what the index holds may be behind etcd.
    pub stale: bool,
    /// Why, when stale: the last error talking to etcd.
    pub problem: Option<String>,
}

/// The state of the world, as the watch delivered it.
#[derive(Debug)]
pub struct Index {
    state: IndexState,
    resources: BTreeMap<ResourceKey, Arc<StoredResource>>,
    history: HashMap<ResourceKey, BTreeMap<u64, HistoryEntry>>,
    /// Per resource, the revision of its last write or deletion seen.
    last_change: HashMap<ResourceKey, i64>,
    /// The newest `last_change` of any UpstreamPolicy: every snapshot includes them all.
    upstreams_version: i64,
    acks: BTreeMap<PodKey, AckRecord>,
    groups: HashMap<ServiceKey, watch::Sender<Arc<Content>>>,
    state_tx: watch::Sender<IndexState>,
    /// The pods' live health reports.
    health: BTreeMap<PodKey, Arc<HealthRecord>>,
    /// What the elected replica computed, per service.
    statuses: BTreeMap<ServiceKey, Arc<ServiceStatus>>,
    overrides: BTreeMap<OverrideTarget, OverrideRecord>,
    /// Counts changes to what levels are computed from (reports, overrides, ServicePolicies).
    inputs_tx: watch::Sender<u64>,
    /// Counts changes to `statuses`.
    levels_tx: watch::Sender<u64>,
    /// Counts events recorded.
    events_tx: watch::Sender<u64>,
    inputs_changed: bool,
    levels_changed: bool,
    events_changed: bool,
    /// The trust domain of the identities filled into `tls.mode: mesh` policies.
    trust_domain: String,
    /// Role bindings of the operator API, by name; shared with requests that check them
    /// (copied on change).
    bindings: Arc<BTreeMap<String, RoleBinding>>,
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

impl Index {
    pub fn new() -> Self {
        Index {
            state: IndexState {
                stale: true,
                ..IndexState::default()
            },
            resources: BTreeMap::new(),
            history: HashMap::new(),
            last_change: HashMap::new(),
            upstreams_version: 0,
            acks: BTreeMap::new(),
            groups: HashMap::new(),
            state_tx: watch::channel(IndexState {
                stale: true,
                ..IndexState::default()
            })
            .0,
            health: BTreeMap::new(),
            statuses: BTreeMap::new(),
            overrides: BTreeMap::new(),
            inputs_tx: watch::channel(0).0,
            levels_tx: watch::channel(0).0,
            events_tx: watch::channel(0).0,
            inputs_changed: false,
            levels_changed: false,
            events_changed: false,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            bindings: Arc::default(),
        }
    }

    /// The trust domain of the identities filled into snapshots (`--trust-domain`).
    pub fn set_trust_domain(&mut self, trust_domain: &str) {
        self.trust_domain = trust_domain.to_string();
    }

    /// Replaces everything with a fresh listing taken at `revision`.
    pub fn reset(&mut self, revision: i64, changes: Vec<Change>) {
        self.resources.clear();
        self.history.clear();
        self.last_change.clear();
        self.upstreams_version = 0;
        self.acks.clear();
        self.health.clear();
        self.statuses.clear();
        self.overrides.clear();
        self.inputs_changed = true;
        self.levels_changed = true;
        for change in changes {
            self.change(change);
        }
        self.state.revision = revision;
        self.state.loaded = true;
        self.state.stale = false;
        self.state.problem = None;
        self.publish(true);
    }

    /// Applies the changes the watch delivered up to `revision`.
    pub fn apply(&mut self, revision: i64, changes: Vec<Change>) {
        for change in changes {
            self.change(change);
        }
        self.state.revision = self.state.revision.max(revision);
        self.publish(false);
    }

    /// The watch is down; reads go on from what the index holds.
    pub fn mark_stale(&mut self, problem: String) {
        self.state.stale = true;
        self.state.problem = Some(problem);
        self.state_tx.send_replace(self.state.clone());
    }

    /// The watch is back (and resumed where it stopped).
    pub fn mark_fresh(&mut self) {
        if self.state.loaded {
            self.state.stale = false;
            self.state.problem = None;
            self.state_tx.send_replace(self.state.clone());
        }
    }

    pub fn state(&self) -> IndexState {
        self.state.clone()
    }

    /// Follows [`IndexState`] changes (to wait for a revision, or for the first load).
    pub fn watch_state(&self) -> watch::Receiver<IndexState> {
        self.state_tx.subscribe()
    }

    pub fn get(&self, key: &ResourceKey) -> Option<Arc<StoredResource>> {
        self.resources.get(key).cloned()
    }

    /// Resources of `kind`, of one namespace or all, sorted by namespace and name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Arc<StoredResource>> {
        self.resources
            .values()
            .filter(|r| r.key.kind == kind)
            .filter(|r| namespace.is_none_or(|ns| r.key.namespace == ns))
            .cloned()
            .collect()
    }

    /// Every resource, sorted by kind, namespace and name.
    pub fn resources(&self) -> impl Iterator<Item = &Arc<StoredResource>> {
        self.resources.values()
    }

    /// A resource's history, newest first.
    pub fn history(&self, key: &ResourceKey) -> Vec<HistoryEntry> {
        let mut entries: Vec<HistoryEntry> = self
            .history
            .get(key)
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default();
        entries.sort_by_key(|e| std::cmp::Reverse(e.revision));
        entries
    }

    pub fn acks(&self) -> &BTreeMap<PodKey, AckRecord> {
        &self.acks
    }

    /// Live health reports, by pod (sorted, so one service's pods are adjacent).
    pub fn health(&self) -> &BTreeMap<PodKey, Arc<HealthRecord>> {
        &self.health
    }

    /// The reports of one service's pods.
    pub fn health_of(&self, service: &ServiceKey) -> Vec<(String, Arc<HealthRecord>)> {
        let from = PodKey {
            namespace: service.namespace.clone(),
            service: service.service.clone(),
            pod: String::new(),
        };
        self.health
            .range(from..)
            .take_while(|(p, _)| p.namespace == service.namespace && p.service == service.service)
            .map(|(p, r)| (p.pod.clone(), r.clone()))
            .collect()
    }

    pub fn statuses(&self) -> &BTreeMap<ServiceKey, Arc<ServiceStatus>> {
        &self.statuses
    }

    pub fn overrides(&self) -> &BTreeMap<OverrideTarget, OverrideRecord> {
        &self.overrides
    }

    /// The role bindings, by name.
    pub fn role_bindings(&self) -> &Arc<BTreeMap<String, RoleBinding>> {
        &self.bindings
    }

    /// Follows changes to what levels are computed from.
    pub fn watch_inputs(&self) -> watch::Receiver<u64> {
        self.inputs_tx.subscribe()
    }

    /// Follows events being recorded.
    pub fn watch_events(&self) -> watch::Receiver<u64> {
        self.events_tx.subscribe()
    }

    /// Follows changes to the computed statuses.
    pub fn watch_levels(&self) -> watch::Receiver<u64> {
        self.levels_tx.subscribe()
    }

    /// The levels a pod of `service` acts on: its own service's status and the statuses of
    /// the services it calls (those named like one of its UpstreamPolicies), sorted.
    pub fn levels_for(&self, service: &ServiceKey) -> Vec<Arc<ServiceStatus>> {
        self.statuses
            .iter()
            .filter(|(key, _)| {
                *key == service
                    || self
                        .resources
                        .get(&ResourceKey::new(
                            Kind::UpstreamPolicy,
                            key.namespace.clone(),
                            key.service.clone(),
                        ))
                        .is_some_and(|r| self.exported(r, &service.namespace))
            })
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Whether `r` is an UpstreamPolicy that sidecars of `namespace` receive.
    fn exported(&self, r: &StoredResource, namespace: &str) -> bool {
        match &r.resource {
            Resource::UpstreamPolicy(p) => p.spec.exported_to(&r.key.namespace, namespace),
            Resource::ServicePolicy(_) => false,
        }
    }

    /// The snapshot for `service` as the index stands: its ServicePolicy and the
    /// UpstreamPolicies exported to its namespace.
    pub fn snapshot(&self, service: &ServiceKey) -> Content {
        let policy = ResourceKey::new(
            Kind::ServicePolicy,
            service.namespace.clone(),
            service.service.clone(),
        );
        let resources = self
            .resources
            .values()
            .filter(|r| r.key == policy || self.exported(r, &service.namespace))
            .map(|r| self.resolved(r))
            .collect();
        Content {
            version: self.version(service),
            resources,
        }
    }

    /// The service account the pods of `namespace/service` run under, when it has a
    /// ServicePolicy: its `spec.serviceAccount`, `default` when it declares none (Kubernetes'
    /// own default). The only identity that may report for it; `None` without a ServicePolicy.
    pub fn service_account_of(&self, namespace: &str, service: &str) -> Option<&str> {
        let key = ResourceKey::new(Kind::ServicePolicy, namespace, service);
        match self.resources.get(&key).map(|r| &r.resource) {
            Some(Resource::ServicePolicy(s)) => {
                Some(s.spec.service_account.as_deref().unwrap_or("default"))
            }
            _ => None,
        }
    }

    /// `stored` as sidecars get it: an UpstreamPolicy with `tls.mode: mesh` and no
    /// `serverIdentity` gets the identity of the service it names — the `spec.serviceAccount`
    /// of the ServicePolicy with its name and namespace (`default` without one).
    fn resolved(&self, stored: &Arc<StoredResource>) -> Arc<StoredResource> {
        let Resource::UpstreamPolicy(p) = &stored.resource else {
            return stored.clone();
        };
        let Some(tls) = &p.spec.tls else {
            return stored.clone();
        };
        if tls.mode != TlsMode::Mesh || tls.server_identity.is_some() {
            return stored.clone();
        }
        let account = self
            .service_account_of(&stored.key.namespace, &stored.key.name)
            .unwrap_or("default");
        let mut filled = p.clone();
        if let Some(tls) = filled.spec.tls.as_mut() {
            tls.server_identity = Some(format!(
                "spiffe://{}/ns/{}/sa/{}",
                self.trust_domain, stored.key.namespace, account
            ));
        }
        Arc::new(StoredResource::new(
            stored.key.clone(),
            Resource::UpstreamPolicy(filled),
            stored.mod_revision,
        ))
    }

    /// Follows the snapshot of `service`: the receiver sees the current one and every change.
    pub fn subscribe(&mut self, service: &ServiceKey) -> watch::Receiver<Arc<Content>> {
        self.groups.retain(|_, tx| tx.receiver_count() > 0);
        if let Some(tx) = self.groups.get(service) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(self.snapshot(service)));
        self.groups.insert(service.clone(), tx);
        rx
    }

    fn version(&self, service: &ServiceKey) -> i64 {
        let policy = ResourceKey::new(
            Kind::ServicePolicy,
            service.namespace.clone(),
            service.service.clone(),
        );
        let own = self.last_change.get(&policy).copied().unwrap_or_default();
        own.max(self.upstreams_version)
    }

    fn changed(&mut self, key: &ResourceKey, revision: i64) {
        let last = self.last_change.entry(key.clone()).or_default();
        *last = (*last).max(revision);
        // A ServicePolicy's service account is the identity callers of its service expect
        // (see `resolved`): every snapshot changes with it.
        let callee = key.kind == Kind::ServicePolicy
            && self.resources.contains_key(&ResourceKey::new(
                Kind::UpstreamPolicy,
                key.namespace.clone(),
                key.name.clone(),
            ));
        if key.kind == Kind::UpstreamPolicy || callee {
            self.upstreams_version = self.upstreams_version.max(revision);
        }
    }

    fn change(&mut self, change: Change) {
        match change {
            Change::Event => self.events_changed = true,
            Change::Policy(stored) => {
                self.changed(&stored.key, stored.mod_revision);
                self.inputs_changed = true;
                // Which services a pod calls may have changed.
                self.levels_changed = true;
                self.resources.insert(stored.key.clone(), stored);
            }
            Change::PolicyDeleted { key, revision } => {
                self.changed(&key, revision);
                self.inputs_changed = true;
                self.levels_changed = true;
                self.resources.remove(&key);
            }
            Change::History { key, seq, entry } => {
                self.changed(&key, entry.revision);
                self.history.entry(key).or_default().insert(seq, entry);
            }
            // Trimming old entries does not change what the resource is, nor when it changed.
            Change::HistoryDeleted { key, seq } => {
                if let Some(entries) = self.history.get_mut(&key) {
                    entries.remove(&seq);
                    if entries.is_empty() {
                        self.history.remove(&key);
                    }
                }
            }
            Change::Ack { pod, record } => {
                self.acks.insert(pod, record);
            }
            Change::AckDeleted { pod } => {
                self.acks.remove(&pod);
            }
            Change::Health { pod, record } => {
                self.health.insert(pod, record);
                self.inputs_changed = true;
            }
            Change::HealthDeleted { pod } => {
                self.health.remove(&pod);
                self.inputs_changed = true;
            }
            Change::Status { service, status } => {
                self.statuses.insert(service, status);
                self.levels_changed = true;
            }
            Change::StatusDeleted { service } => {
                self.statuses.remove(&service);
                self.levels_changed = true;
            }
            Change::Override { target, record } => {
                self.overrides.insert(target, record);
                self.inputs_changed = true;
            }
            Change::OverrideDeleted { target } => {
                self.overrides.remove(&target);
                self.inputs_changed = true;
            }
            Change::RoleBinding { name, binding } => {
                Arc::make_mut(&mut self.bindings).insert(name, binding);
            }
            Change::RoleBindingDeleted { name } => {
                Arc::make_mut(&mut self.bindings).remove(&name);
            }
        }
    }

    /// Sends every subscribed service whose snapshot changed its new snapshot. After a
    /// re-list (`full`) the content is compared too: a change etcd no longer shows (a
    /// deletion made around the API, then compacted) still reaches the streams, under the
    /// listing's revision so that versions only grow.
    fn publish(&mut self, full: bool) {
        self.groups.retain(|_, tx| tx.receiver_count() > 0);
        let services: Vec<ServiceKey> = self.groups.keys().cloned().collect();
        for service in services {
            let version = self.version(&service);
            let Some(tx) = self.groups.get(&service) else {
                continue;
            };
            let published = tx.borrow().clone();
            if version > published.version {
                let snapshot = self.snapshot(&service);
                if let Some(tx) = self.groups.get(&service) {
                    tx.send_replace(Arc::new(snapshot));
                }
            } else if full {
                let mut snapshot = self.snapshot(&service);
                if !snapshot.same_content(&published) && self.state.revision > published.version {
                    snapshot.version = self.state.revision;
                    if let Some(tx) = self.groups.get(&service) {
                        tx.send_replace(Arc::new(snapshot));
                    }
                }
            }
        }
        if std::mem::take(&mut self.inputs_changed) {
            self.inputs_tx.send_modify(|n| *n += 1);
        }
        if std::mem::take(&mut self.levels_changed) {
            self.levels_tx.send_modify(|n| *n += 1);
        }
        if std::mem::take(&mut self.events_changed) {
            self.events_tx.send_modify(|n| *n += 1);
        }
        self.state_tx.send_replace(self.state.clone());
    }
}

/// The index shared by the watch (writer) and the API (readers). The lock is never held
/// across an `.await`.
#[derive(Debug, Clone, Default)]
pub struct SharedIndex(Arc<Mutex<Index>>);

impl SharedIndex {
    pub fn new() -> Self {
        SharedIndex::default()
    }

    pub fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves a consistent index (every method finishes
        // its mutation before publishing): keep serving.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the index reflects `revision` (a write of ours reached it through the
    /// watch), at most `timeout`; `false` when it did not in time.
    pub async fn wait_for_revision(&self, revision: i64, timeout: Duration) -> bool {
        let mut state = self.lock().watch_state();
        tokio::time::timeout(timeout, state.wait_for(|s| s.revision >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_proto::policy::parse_json;

    fn upstream(name: &str, addr: &str) -> Resource {
        let json = format!(
            r#"{{"apiVersion":"bulwark/v1","kind":"UpstreamPolicy","metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"endpoints":{{"static":["{addr}"]}}}}}}"#
        );
        parse_json(&json).unwrap().remove(0)
    }

    fn service(ns: &str, name: &str) -> Resource {
        let json = format!(
            r#"{{"apiVersion":"bulwark/v1","kind":"ServicePolicy","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"app":{{"port":8080}}}}}}"#
        );
        parse_json(&json).unwrap().remove(0)
    }

    fn put(resource: Resource, revision: i64) -> Change {
        let m = resource.metadata();
        let key = ResourceKey::new(resource.kind(), m.namespace.clone(), m.name.clone());
        Change::Policy(Arc::new(StoredResource::new(key, resource, revision)))
    }

    fn history(key: &ResourceKey, revision: i64, op: HistoryOp) -> Change {
        Change::History {
            key: key.clone(),
            seq: revision as u64,
            entry: HistoryEntry {
                revision,
                op,
                by: "test".into(),
                at: "2025-11-22T03:12:00.000Z".into(),
                resource: None,
            },
        }
    }

    fn svc(ns: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: ns.into(),
            service: name.into(),
        }
    }

    fn names(snapshot: &Content) -> Vec<String> {
        snapshot
            .resources
            .iter()
            .map(|r| r.key.to_string())
            .collect()
    }

    fn json(text: &str) -> Resource {
        parse_json(text).unwrap().remove(0)
    }

    /// The `tls.serverIdentity` the snapshot of `shop/web` carries for UpstreamPolicy `name`.
    fn server_identity(index: &Index, name: &str) -> Option<String> {
        index
            .snapshot(&svc("shop", "web"))
            .resources
            .iter()
            .find(|r| r.key.name == name)
            .and_then(|r| match &r.resource {
                Resource::UpstreamPolicy(p) => p.spec.tls.as_ref()?.server_identity.clone(),
                _ => None,
            })
    }

    #[test]
    fn mesh_upstreams_get_the_identity_of_their_services_account() {
        let mesh_upstream = |name: &str, tls: &str| {
            json(&format!(
                r#"{{"apiVersion":"bulwark/v1","kind":"UpstreamPolicy","metadata":{{"name":"{name}","namespace":"pay"}},"spec":{{"endpoints":{{"static":["10.0.0.1:80"]}},"tls":{tls}}}}}"#
            ))
        };
        let account = |sa: &str| {
            json(&format!(
                r#"{{"apiVersion":"bulwark/v1","kind":"ServicePolicy","metadata":{{"name":"payments","namespace":"pay"}},"spec":{{"serviceAccount":"{sa}"}}}}"#
            ))
        };
        let mut index = Index::new();
        index.set_trust_domain("prod.example");
        index.reset(
            10,
            vec![
                put(mesh_upstream("payments", r#"{"mode":"mesh"}"#), 4),
                put(mesh_upstream("ledger", r#"{"mode":"mesh"}"#), 5),
                put(
                    mesh_upstream(
                        "refunds",
                        r#"{"mode":"mesh","serverIdentity":"spiffe://x/ns/a/sa/b"}"#,
                    ),
                    6,
                ),
                put(mesh_upstream("bank", r#"{"mode":"simple","sni":"a.b"}"#), 7),
                put(account("payments-sa"), 8),
            ],
        );
        assert_eq!(
            server_identity(&index, "payments").as_deref(),
            Some("spiffe://prod.example/ns/pay/sa/payments-sa")
        );
        assert_eq!(
            server_identity(&index, "ledger").as_deref(),
            Some("spiffe://prod.example/ns/pay/sa/default"),
            "no ServicePolicy: the namespace's default account"
        );
        assert_eq!(
            server_identity(&index, "refunds").as_deref(),
            Some("spiffe://x/ns/a/sa/b"),
            "an explicit identity stays"
        );
        assert_eq!(server_identity(&index, "bank"), None);

        // The callee's account changes: every snapshot moves to the new version.
        let before = index.snapshot(&svc("shop", "web")).version;
        index.apply(11, vec![put(account("payments-v2"), 11)]);
        assert_eq!(index.snapshot(&svc("shop", "web")).version, 11.max(before));
        assert!(index.snapshot(&svc("shop", "web")).version > before);
        assert_eq!(
            server_identity(&index, "payments").as_deref(),
            Some("spiffe://prod.example/ns/pay/sa/payments-v2")
        );
    }

    fn loaded() -> Index {
        let mut index = Index::new();
        index.reset(
            10,
            vec![
                put(upstream("payments", "10.0.0.1:80"), 4),
                put(upstream("smtp", "10.0.0.2:25"), 6),
                put(service("shop", "orders"), 8),
                put(service("shop", "billing"), 9),
            ],
        );
        index
    }

    #[test]
    fn a_snapshot_holds_the_own_service_policy_and_every_upstream() {
        let index = loaded();
        let snapshot = index.snapshot(&svc("shop", "orders"));
        assert_eq!(
            names(&snapshot),
            [
                "UpstreamPolicy/default/payments",
                "UpstreamPolicy/default/smtp",
                "ServicePolicy/shop/orders"
            ]
        );
        assert_eq!(snapshot.version, 8);
        // No ServicePolicy: upstreams only.
        let other = index.snapshot(&svc("shop", "cart"));
        assert_eq!(other.resources.len(), 2);
        assert_eq!(other.version, 6);
        // Nothing at all: version 0, nothing to send.
        assert_eq!(Index::new().snapshot(&svc("a", "b")), Content::default());
    }

    #[test]
    fn snapshot_json_carries_the_resource_version() {
        let index = loaded();
        let snapshot = index.snapshot(&svc("shop", "orders"));
        let first = &snapshot.resources[0];
        let parsed = parse_json(&first.json).unwrap().remove(0);
        assert_eq!(parsed.metadata().resource_version.as_deref(), Some("4"));
        assert_eq!(parsed, first.resource);
    }

    #[test]
    fn subscribers_see_relevant_changes_only() {
        let mut index = loaded();
        let mut orders = index.subscribe(&svc("shop", "orders"));
        let mut billing = index.subscribe(&svc("shop", "billing"));
        assert_eq!(orders.borrow_and_update().version, 8);
        assert_eq!(billing.borrow_and_update().version, 9);

        // Another service's policy: orders hears nothing.
        index.apply(11, vec![put(service("shop", "billing"), 11)]);
        assert!(!orders.has_changed().unwrap());
        assert!(billing.has_changed().unwrap());
        assert_eq!(billing.borrow_and_update().version, 11);

        // An upstream: everyone.
        index.apply(12, vec![put(upstream("payments", "10.0.0.9:80"), 12)]);
        assert!(orders.has_changed().unwrap());
        assert!(billing.has_changed().unwrap());
        let seen = orders.borrow_and_update().clone();
        assert_eq!(seen.version, 12);
        assert_eq!(
            seen.resources[0].resource,
            StoredResource::new(
                seen.resources[0].key.clone(),
                upstream("payments", "10.0.0.9:80"),
                12
            )
            .resource
        );

        // Acks and history trims are not snapshot content.
        let pod = PodKey {
            namespace: "shop".into(),
            service: "orders".into(),
            pod: "p1".into(),
        };
        let record = AckRecord {
            version: 12,
            error: String::new(),
            replica: "r".into(),
            at: "t".into(),
            applied: 12,
        };
        let key = ResourceKey::new(Kind::UpstreamPolicy, "default", "payments");
        index.apply(13, vec![Change::Ack { pod, record }]);
        index.apply(14, vec![Change::HistoryDeleted { key, seq: 4 }]);
        assert!(!orders.has_changed().unwrap());
        assert_eq!(index.state().revision, 14);
    }

    #[test]
    fn a_deletion_is_a_newer_version() {
        let mut index = loaded();
        let mut orders = index.subscribe(&svc("shop", "orders"));
        orders.borrow_and_update();
        let key = ResourceKey::new(Kind::UpstreamPolicy, "default", "smtp");
        index.apply(
            15,
            vec![
                Change::PolicyDeleted {
                    key: key.clone(),
                    revision: 15,
                },
                history(&key, 15, HistoryOp::Deleted),
            ],
        );
        let seen = orders.borrow_and_update().clone();
        assert_eq!(seen.version, 15);
        assert_eq!(names(&seen).len(), 2);
    }

    #[test]
    fn versions_are_the_same_on_every_replica() {
        // Replica A followed the changes; replica B listed afterwards. The deletion's history
        // entry gives B the same version as A.
        let mut a = loaded();
        let smtp = ResourceKey::new(Kind::UpstreamPolicy, "default", "smtp");
        a.apply(
            15,
            vec![
                Change::PolicyDeleted {
                    key: smtp.clone(),
                    revision: 15,
                },
                history(&smtp, 15, HistoryOp::Deleted),
            ],
        );
        // Unrelated writes move the revision but not the version.
        a.apply(20, vec![]);

        let mut b = Index::new();
        b.reset(
            20,
            vec![
                put(upstream("payments", "10.0.0.1:80"), 4),
                history(&smtp, 6, HistoryOp::Created),
                history(&smtp, 15, HistoryOp::Deleted),
                put(service("shop", "orders"), 8),
                put(service("shop", "billing"), 9),
            ],
        );
        let service = svc("shop", "orders");
        assert_eq!(a.snapshot(&service), b.snapshot(&service));
        assert_eq!(b.snapshot(&service).version, 15);
    }

    #[test]
    fn a_relist_that_finds_a_silent_change_publishes_a_newer_version() {
        let mut index = loaded();
        let mut orders = index.subscribe(&svc("shop", "orders"));
        orders.borrow_and_update();
        // smtp vanished without a trace (deleted around the API, history included).
        index.reset(
            30,
            vec![
                put(upstream("payments", "10.0.0.1:80"), 4),
                put(service("shop", "orders"), 8),
            ],
        );
        let seen = orders.borrow_and_update().clone();
        assert_eq!(seen.version, 30);
        assert_eq!(names(&seen).len(), 2);

        // The same listing again: nothing new.
        index.reset(
            31,
            vec![
                put(upstream("payments", "10.0.0.1:80"), 4),
                put(service("shop", "orders"), 8),
            ],
        );
        assert!(!orders.has_changed().unwrap());
    }

    #[test]
    fn unused_groups_are_dropped() {
        let mut index = loaded();
        let rx = index.subscribe(&svc("shop", "orders"));
        let rx2 = index.subscribe(&svc("shop", "orders"));
        assert_eq!(index.groups.len(), 1);
        drop(rx);
        drop(rx2);
        index.apply(11, vec![]);
        assert!(index.groups.is_empty());
    }

    #[test]
    fn history_is_newest_first_and_trims() {
        let mut index = Index::new();
        let key = ResourceKey::new(Kind::UpstreamPolicy, "default", "echo");
        index.reset(
            5,
            vec![
                history(&key, 3, HistoryOp::Created),
                history(&key, 5, HistoryOp::Updated),
                history(&key, 4, HistoryOp::Updated),
            ],
        );
        let revisions: Vec<i64> = index.history(&key).iter().map(|e| e.revision).collect();
        assert_eq!(revisions, [5, 4, 3]);
        index.apply(
            6,
            vec![Change::HistoryDeleted {
                key: key.clone(),
                seq: 3,
            }],
        );
        assert_eq!(index.history(&key).len(), 2);
    }

    #[test]
    fn state_follows_the_watch() {
        let mut index = Index::new();
        let mut state = index.watch_state();
        assert!(!index.state().loaded);
        assert!(index.state().stale);
        index.reset(3, vec![]);
        assert!(state.has_changed().unwrap());
        assert_eq!(
            *state.borrow_and_update(),
            IndexState {
                revision: 3,
                loaded: true,
                stale: false,
                problem: None
            }
        );
        index.mark_stale("etcd is unreachable".into());
        assert!(index.state().stale);
        assert_eq!(
            index.state().problem.as_deref(),
            Some("etcd is unreachable")
        );
        index.mark_fresh();
        assert!(!index.state().stale);
        // Older revisions never move it back.
        index.apply(2, vec![]);
        assert_eq!(index.state().revision, 3);
    }

    #[test]
    fn list_filters_by_kind_and_namespace() {
        let index = loaded();
        let all: Vec<String> = index
            .list(Kind::ServicePolicy, None)
            .iter()
            .map(|r| r.key.to_string())
            .collect();
        assert_eq!(
            all,
            ["ServicePolicy/shop/billing", "ServicePolicy/shop/orders"]
        );
        assert!(index.list(Kind::ServicePolicy, Some("other")).is_empty());
        assert_eq!(index.list(Kind::UpstreamPolicy, Some("default")).len(), 2);
    }

    #[tokio::test]
    async fn waiting_for_a_revision() {
        let shared = SharedIndex::new();
        shared.lock().reset(3, vec![]);
        assert!(shared.wait_for_revision(3, Duration::from_millis(1)).await);
        assert!(!shared.wait_for_revision(4, Duration::from_millis(1)).await);
        let writer = shared.clone();
        let waiter =
            tokio::spawn(async move { shared.wait_for_revision(7, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        writer.lock().apply(7, vec![]);
        assert!(waiter.await.unwrap());
    }
}
