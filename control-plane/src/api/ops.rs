//! The operator operations, once for REST and gRPC: apply (all or nothing, optimistic
//! concurrency on `resourceVersion`), get, list, delete, history, rollback, dry-run with diff,
//! status. Reads come from the index; writes are guarded etcd transactions that also write
//! the history. Errors are [`OpError`]s, which each API maps in one place. Every operation
//! takes the [`Actor`] that asks, is authorised before it acts, and every write is audited
//! ([`access`](super::access)); the history's `by` is the authenticated user.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::policy::{Kind, LoadError, Resource, parse_json, refs};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::rbac::{Authorizer, Resource as Res, Scope, Target, Verb};
use crate::auth::{Actor, Authenticator};
use crate::convergence::{self, Status};
use crate::degradation::events::EventLease;
use crate::diff;
use crate::index::{IndexState, SharedIndex};
use crate::metrics::Metrics;
use crate::store::keys::{HISTORY_LIMIT, Keys, ResourceKey};
use crate::store::values::{EventRecord, HistoryOp, HistoryRecord};
use crate::store::{Commit, Entry, EtcdStore, Guard, Read, StoreError, WritePlan};
use crate::timestamp;

/// The most resources one apply may carry: each costs up to three operations of one etcd
/// transaction, and etcd allows 128 by default.
pub const MAX_APPLY: usize = 40;
/// How long audit records are kept.
pub const AUDIT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a write is tried again when another write got in between (without an explicit
/// `resourceVersion`, the last writer wins).
const WRITE_ATTEMPTS: usize = 5;
/// Recorded as the author when a request names none.
const ANONYMOUS: &str = "anonymous";

/// Why an operation failed; each API turns it into its own error form in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The request or its resources are not valid; `details` lists every problem.
    #[error("{message}")]
    Invalid {
        message: String,
        details: Vec<String>,
    },
    /// A `resourceVersion` does not match the stored one.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// etcd is unreachable (or, for reads, the index was never loaded).
    #[error("{0}")]
    Unavailable(String),
    /// etcd refused something it should not have.
    #[error("{0}")]
    Internal(String),
    /// No credentials, or credentials that do not hold.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this: the message names the missing permission.
    #[error("{0}")]
    Forbidden(String),
    /// The caller made too many writes; it may write again after `retry_after`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
}

impl OpError {
    /// The `error` field of REST answers (and `x-bulwark-error` of gRPC ones).
    pub fn kind(&self) -> &'static str {
        match self {
            OpError::Invalid { .. } => "invalid",
            OpError::Conflict(_) => "conflict",
            OpError::NotFound(_) => "not-found",
            OpError::Unavailable(_) => "unavailable",
            OpError::Internal(_) => "internal",
            OpError::Unauthenticated(_) => "unauthenticated",
            OpError::Forbidden(_) => "forbidden",
            OpError::RateLimited { .. } => "rate-limited",
        }
    }

    /// The HTTP status of the error (the REST API's, and the audit log's).
    pub fn status(&self) -> u16 {
        match self {
            OpError::Invalid { .. } => 400,
            OpError::Unauthenticated(_) => 401,
            OpError::Forbidden(_) => 403,
            OpError::NotFound(_) => 404,
            OpError::Conflict(_) => 409,
            OpError::RateLimited { .. } => 429,
            OpError::Internal(_) => 500,
            OpError::Unavailable(_) => 503,
        }
    }

    pub fn details(&self) -> &[String] {
        match self {
            OpError::Invalid { details, .. } => details,
            _ => &[],
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        OpError::Invalid {
            message: message.into(),
            details: Vec::new(),
        }
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } => OpError::Unavailable(e.to_string()),
            StoreError::Refused { .. } | StoreError::Config(_) => OpError::Internal(e.to_string()),
        }
    }
}

/// A read served from the index, and whether the index may be behind etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Served<T> {
    pub value: T,
    pub stale: bool,
}

/// `POST /v1/apply`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyRequest {
    pub resources: Vec<Value>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyResponse {
    pub results: Vec<ApplyResult>,
    /// The revision of the transaction; the store's current one when nothing was written.
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub id: String,
    pub action: Action,
    /// After the apply; for a dry run, the current one (0: the resource does not exist).
    pub resource_version: i64,
    pub diff: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListResponse {
    pub items: Vec<Resource>,
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteResponse {
    pub id: String,
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryResponse {
    pub items: Vec<HistoryItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryItem {
    pub revision: i64,
    pub op: HistoryOp,
    pub by: String,
    pub at: String,
    /// The resource after the change, `metadata.resourceVersion` = `revision`; `null` for a
    /// deletion.
    pub resource: Option<Value>,
}

/// `POST /v1/{kind}/{namespace}/{name}/rollback`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    pub to_revision: i64,
    #[serde(default)]
    pub by: Option<String>,
    /// When set, must equal the stored `resourceVersion`.
    #[serde(default)]
    pub resource_version: Option<i64>,
}

/// A resource as an apply wants it stored.
struct Desired {
    key: ResourceKey,
    /// Without `resourceVersion`.
    resource: Resource,
    /// The `resourceVersion` the caller expects (0: must not exist).
    expected: Option<i64>,
}

/// The operations, over one store and one index.
#[derive(Debug)]
pub struct Ops {
    pub(crate) store: Arc<EtcdStore>,
    pub(crate) keys: Keys,
    pub(crate) index: SharedIndex,
    pub(crate) metrics: Arc<Metrics>,
    /// Where the events this API records (overrides, policy changes) go.
    pub(crate) events: Arc<crate::degradation::events::Recorder>,
    /// The lease audit records are written under.
    pub(crate) audit_lease: tokio::sync::Mutex<EventLease>,
    /// Who calls.
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) authorizer: Authorizer,
    /// This replica's name, in audit records.
    pub(crate) replica: String,
    /// Writes per user.
    pub(crate) writes: super::limits::WriteLimiter,
    /// How long a write waits for its change to reach the index, so that a read right after
    /// it on this replica sees it.
    settle: Duration,
    /// The certificates `diagnostics` reports on.
    pub(crate) diagnostics: DiagnosticSources,
    /// Turns true when the replica shuts down: watches end.
    pub(crate) stop: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Where the certificates `GET /v1/diagnostics` reports the expiry of come from.
#[derive(Debug, Clone, Default)]
pub struct DiagnosticSources {
    /// The webhook's certificate chain (PEM), when the webhook is on.
    pub webhook_cert: Option<std::path::PathBuf>,
    /// The workload identity authority, when it is on.
    pub identity: Option<Arc<crate::identity::IdentityConfig>>,
}

impl Ops {
    pub fn new(
        store: Arc<EtcdStore>,
        keys: Keys,
        index: SharedIndex,
        metrics: Arc<Metrics>,
    ) -> Self {
        let events = Arc::new(crate::degradation::events::Recorder::new(
            store.clone(),
            keys.clone(),
        ));
        Ops {
            store,
            keys,
            index,
            metrics,
            events,
            audit_lease: tokio::sync::Mutex::new(EventLease::lasting(AUDIT_RETENTION)),
            auth: Arc::new(Authenticator::new(crate::auth::AuthConfig {
                insecure_dev: true,
                ..Default::default()
            })),
            authorizer: Authorizer::default(),
            replica: String::new(),
            writes: super::limits::WriteLimiter::default(),
            settle: Duration::from_secs(3),
            diagnostics: DiagnosticSources::default(),
            stop: None,
        }
    }

    /// Ends watches when `stop` turns true (the replica shuts down).
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Reports on the certificates of `sources` in `diagnostics`.
    pub fn with_diagnostics(mut self, sources: DiagnosticSources) -> Self {
        self.diagnostics = sources;
        self
    }

    /// Authenticates with `auth` (the default lets anonymous requests through, as
    /// `--insecure-dev`); `replica` names this replica in audit records.
    pub fn with_auth(mut self, auth: Arc<Authenticator>, replica: &str) -> Self {
        self.authorizer = auth.authorizer();
        self.auth = auth;
        self.replica = replica.to_string();
        self
    }

    /// Limits each user's writes to `rate`.
    pub fn with_write_rate(mut self, rate: super::limits::WriteRate) -> Self {
        self.writes = super::limits::WriteLimiter::new(rate);
        self
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// Applies `resources` (JSON documents) all or nothing.
    pub async fn apply(
        &self,
        actor: &Actor,
        request: ApplyRequest,
    ) -> Result<ApplyResponse, OpError> {
        let desired = parse_resources(&request.resources)?;
        let by = author(actor, request.by)?;
        // Every resource must be allowed before anything is written; a dry run is a read.
        let verb = if request.dry_run {
            Verb::Get
        } else {
            Verb::Apply
        };
        for d in &desired {
            let target = policy_target(verb, &d.key);
            if request.dry_run {
                self.authorize(actor, target.verb, target.resource, target.scope)?;
            } else {
                self.authorize_write(actor, target).await?;
            }
        }
        let result = self.write(&desired, request.dry_run, &by, None).await;
        if !request.dry_run {
            for d in &desired {
                let target = policy_target(Verb::Apply, &d.key);
                self.audit(actor, target, result.as_ref().map(|_| ())).await;
            }
        }
        result
    }

    /// One resource.
    pub fn get(&self, actor: &Actor, key: &ResourceKey) -> Result<Served<Resource>, OpError> {
        self.authorize(
            actor,
            Verb::Get,
            kind_resource(key.kind),
            Scope::Namespace(&key.namespace),
        )?;
        let index = self.index.lock();
        let state = self.readable(&index.state())?;
        match index.get(key) {
            Some(stored) => Ok(Served {
                value: stored.resource.clone(),
                stale: state.stale,
            }),
            None => Err(OpError::NotFound(format!("{key} not found"))),
        }
    }

    /// Resources of `kind`, of `namespace` (all when `None`) whose labels match `selector`.
    /// Without a namespace, the namespaces `actor` may list.
    pub fn list(
        &self,
        actor: &Actor,
        kind: Kind,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Served<ListResponse>, OpError> {
        let selector = parse_selector(selector.unwrap_or_default())?;
        let namespace = namespace.filter(|ns| !ns.is_empty());
        let resource = kind_resource(kind);
        if let Some(ns) = namespace {
            self.authorize(actor, Verb::List, resource, Scope::Namespace(ns))?;
        }
        let perms = self.permissions(actor);
        let visible =
            |ns: &str| namespace.is_some() || perms.may(Verb::List, resource, Scope::Namespace(ns));
        let index = self.index.lock();
        let state = self.readable(&index.state())?;
        let items = index
            .list(kind, namespace)
            .into_iter()
            .filter(|r| visible(&r.key.namespace))
            .filter(|r| {
                let labels = &r.resource.metadata().labels;
                selector
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
            })
            .map(|r| r.resource.clone())
            .collect();
        Ok(Served {
            value: ListResponse {
                items,
                revision: state.revision,
            },
            stale: state.stale,
        })
    }

    /// Deletes one resource; with `expected`, only at that `resourceVersion`. An
    /// UpstreamPolicy that other policies still name (a failover target, a dependency) is
    /// deleted only with `force`.
    pub async fn delete(
        &self,
        actor: &Actor,
        key: &ResourceKey,
        expected: Option<i64>,
        by: Option<String>,
        force: bool,
    ) -> Result<DeleteResponse, OpError> {
        let by = author(actor, by)?;
        let target = policy_target(Verb::Delete, key);
        self.audited(actor, target, async {
            if !force {
                self.unreferenced(key)?;
            }
            self.delete_as(key, expected, &by).await
        })
        .await
    }

    /// Refuses to delete `key` while other policies name it, naming each and the field.
    fn unreferenced(&self, key: &ResourceKey) -> Result<(), OpError> {
        if key.kind != Kind::UpstreamPolicy {
            return Ok(());
        }
        let index = self.index.lock();
        if index.get(key).is_none() {
            return Err(OpError::NotFound(format!("{key} not found")));
        }
        let referrers: Vec<String> = index
            .resources()
            .filter(|r| r.key != *key)
            .flat_map(|r| {
                refs::references(&r.resource)
                    .into_iter()
                    .filter(|t| t.namespace == key.namespace && t.name == key.name)
                    .map(|t| format!("{} ({})", r.key, t.path))
                    .collect::<Vec<_>>()
            })
            .collect();
        if referrers.is_empty() {
            return Ok(());
        }
        Err(OpError::Conflict(format!(
            "{key} is still named by {}; change or delete {} first, or delete it with force",
            referrers.join(", "),
            if referrers.len() == 1 { "it" } else { "them" }
        )))
    }

    async fn delete_as(
        &self,
        key: &ResourceKey,
        expected: Option<i64>,
        by: &str,
    ) -> Result<DeleteResponse, OpError> {
        let policy_key = self.keys.policy(key);
        for _ in 0..WRITE_ATTEMPTS {
            let current = self
                .store
                .read(&[
                    Read::Key(policy_key.clone()),
                    Read::Prefix {
                        prefix: self.keys.history_of(key),
                        keys_only: true,
                    },
                ])
                .await?;
            let Some(stored) = current.answers[0].first() else {
                return Err(OpError::NotFound(format!("{key} not found")));
            };
            if let Some(expected) = expected
                && expected != stored.mod_revision
            {
                return Err(conflict(key, expected, stored.mod_revision).into());
            }
            let mut plan = WritePlan {
                guards: vec![Guard {
                    key: policy_key.clone(),
                    mod_revision: stored.mod_revision,
                }],
                deletes: vec![policy_key.clone()],
                ..WritePlan::default()
            };
            self.record(
                &mut plan,
                key,
                &current.answers[1],
                current.revision + 1,
                HistoryOp::Deleted,
                None,
                by,
            );
            match self.store.commit(&plan).await? {
                Commit::Committed { revision } => {
                    tracing::info!(id = %key, revision, %by, "deleted");
                    self.settle(revision).await;
                    self.record_event(policy_event(
                        key,
                        PolicyChange::Deleted,
                        stored.mod_revision,
                        revision,
                        by,
                    ))
                    .await;
                    return Ok(DeleteResponse {
                        id: key.to_string(),
                        revision,
                    });
                }
                Commit::GuardFailed => continue,
            }
        }
        Err(busy(key))
    }

    /// The resource's history, newest first.
    pub fn history(
        &self,
        actor: &Actor,
        key: &ResourceKey,
    ) -> Result<Served<HistoryResponse>, OpError> {
        self.authorize(
            actor,
            Verb::Get,
            kind_resource(key.kind),
            Scope::Namespace(&key.namespace),
        )?;
        let index = self.index.lock();
        let state = self.readable(&index.state())?;
        let entries = index.history(key);
        if entries.is_empty() && index.get(key).is_none() {
            return Err(OpError::NotFound(format!("{key} not found")));
        }
        let items = entries
            .into_iter()
            .take(HISTORY_LIMIT)
            .map(|e| HistoryItem {
                revision: e.revision,
                op: e.op,
                by: e.by,
                at: e.at,
                resource: e.resource.map(|mut r| {
                    if let Some(m) = r.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.insert("resourceVersion".into(), e.revision.to_string().into());
                    }
                    r
                }),
            })
            .collect();
        Ok(Served {
            value: HistoryResponse { items },
            stale: state.stale,
        })
    }

    /// Applies the resource as its history recorded it at `to_revision`.
    pub async fn rollback(
        &self,
        actor: &Actor,
        key: &ResourceKey,
        request: RollbackRequest,
    ) -> Result<ApplyResponse, OpError> {
        let by = author(actor, request.by.clone())?;
        let target = policy_target(Verb::Rollback, key);
        self.audited(actor, target, self.rollback_as(key, request, &by))
            .await
    }

    async fn rollback_as(
        &self,
        key: &ResourceKey,
        request: RollbackRequest,
        by: &str,
    ) -> Result<ApplyResponse, OpError> {
        let history = self
            .store
            .read(&[Read::Prefix {
                prefix: self.keys.history_of(key),
                keys_only: false,
            }])
            .await?;
        let to = request.to_revision;
        let entry = history.answers[0]
            .iter()
            .find(|e| e.mod_revision == to)
            .ok_or_else(|| {
                OpError::NotFound(format!("{key} has no history entry at revision {to}"))
            })?;
        let record: HistoryRecord = serde_json::from_slice(&entry.value).map_err(|e| {
            OpError::Internal(format!(
                "{key}: the history entry at revision {to} is unreadable: {e}"
            ))
        })?;
        let Some(value) = record.resource else {
            return Err(OpError::Invalid {
                message: format!("cannot roll back {key} to revision {to}: it was deleted there"),
                details: vec![format!("{key}: toRevision: revision {to} is a deletion")],
            });
        };
        let mut desired = parse_resources(&[value])?;
        if let Some(d) = desired.first_mut() {
            if d.key != *key {
                return Err(OpError::Internal(format!(
                    "the history entry of {key} at revision {to} holds {}",
                    d.key
                )));
            }
            d.expected = request.resource_version;
        }
        self.write(&desired, false, by, Some(HistoryOp::RolledBack))
            .await
    }

    /// Whether this replica can serve reads: its index was loaded; and the revision it holds.
    pub fn readiness(&self) -> Result<Served<i64>, OpError> {
        let index = self.index.lock();
        let state = self.readable(&index.state())?;
        Ok(Served {
            value: state.revision,
            stale: state.stale,
        })
    }

    /// Convergence of every resource `actor` may see.
    pub fn status(&self, actor: &Actor) -> Result<Served<Status>, OpError> {
        let perms = self.permissions(actor);
        let all = perms.may(Verb::Get, Res::Status, Scope::Cluster);
        if !all {
            let namespaces: BTreeSet<String> = self
                .index
                .lock()
                .resources()
                .map(|r| r.key.namespace.clone())
                .collect();
            if !namespaces
                .iter()
                .any(|ns| perms.may(Verb::Get, Res::Status, Scope::Namespace(ns)))
            {
                self.authorize(actor, Verb::Get, Res::Status, Scope::Cluster)?;
            }
        }
        let index = self.index.lock();
        let state = self.readable(&index.state())?;
        let status = convergence::compute(
            state.revision,
            index
                .resources()
                .filter(|r| {
                    all || perms.may(Verb::Get, Res::Status, Scope::Namespace(&r.key.namespace))
                })
                .map(|r| r.as_ref()),
            index.acks(),
        );
        Ok(Served {
            value: status,
            stale: state.stale,
        })
    }

    /// The index's state, if reads can be served from it.
    pub(crate) fn readable(&self, state: &IndexState) -> Result<IndexState, OpError> {
        if state.loaded {
            return Ok(state.clone());
        }
        Err(OpError::Unavailable(match &state.problem {
            Some(problem) => format!("nothing to serve yet, {problem}"),
            None => format!(
                "nothing to serve yet: waiting for the first answer of etcd at {}",
                self.store.endpoints()
            ),
        }))
    }

    /// Writes `desired` in one guarded transaction, with history; `op` overrides the history
    /// operation (rollback).
    async fn write(
        &self,
        desired: &[Desired],
        dry_run: bool,
        by: &str,
        op: Option<HistoryOp>,
    ) -> Result<ApplyResponse, OpError> {
        let targets = required_targets(desired);
        let reads: Vec<Read> = desired
            .iter()
            .flat_map(|d| {
                [
                    Read::Key(self.keys.policy(&d.key)),
                    Read::Prefix {
                        prefix: self.keys.history_of(&d.key),
                        keys_only: true,
                    },
                ]
            })
            .chain(targets.keys().map(|k| Read::Key(self.keys.policy(k))))
            .collect();
        for _ in 0..WRITE_ATTEMPTS {
            let current = self.store.read(&reads).await?;
            let mut plan = WritePlan::default();
            let mut results = Vec::with_capacity(desired.len());
            let mut conflicts = Vec::new();
            for (i, d) in desired.iter().enumerate() {
                let stored = current.answers[2 * i].first();
                let stored_version = stored.map_or(0, |e| e.mod_revision);
                if let Some(expected) = d.expected
                    && expected != stored_version
                {
                    conflicts.push(conflict(&d.key, expected, stored_version));
                    continue;
                }
                let (action, diff) = compare(&d.key, stored, &d.resource);
                // Guard unchanged resources too: the answer describes one consistent state.
                plan.guards.push(Guard {
                    key: self.keys.policy(&d.key),
                    mod_revision: stored_version,
                });
                if action != Action::Unchanged {
                    let value = serde_json::to_vec(&d.resource).map_err(|e| {
                        OpError::Internal(format!("{}: cannot serialize: {e}", d.key))
                    })?;
                    plan.puts.push((self.keys.policy(&d.key), value));
                    let history_op = op.unwrap_or(match action {
                        Action::Created => HistoryOp::Created,
                        _ => HistoryOp::Updated,
                    });
                    self.record(
                        &mut plan,
                        &d.key,
                        &current.answers[2 * i + 1],
                        current.revision + 1,
                        history_op,
                        serde_json::to_value(&d.resource).ok(),
                        by,
                    );
                }
                results.push(ApplyResult {
                    id: d.key.to_string(),
                    action,
                    resource_version: stored_version,
                    diff,
                });
            }
            // Each failover target stays stored until this write is in (guarded): a request
            // must never fail over to nothing.
            let mut missing = Vec::new();
            for (j, (target, naming)) in targets.iter().enumerate() {
                match current.answers[2 * desired.len() + j].first() {
                    Some(stored) => plan.guards.push(Guard {
                        key: self.keys.policy(target),
                        mod_revision: stored.mod_revision,
                    }),
                    None => missing.extend(naming.iter().map(|field| {
                        format!(
                            "{field}: names {target}, which does not exist; apply it first, or in the same request"
                        )
                    })),
                }
            }
            if !missing.is_empty() {
                return Err(problems(missing));
            }
            if !conflicts.is_empty() {
                let message = conflicts
                    .into_iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(OpError::Conflict(message));
            }
            if dry_run || plan.is_empty() {
                return Ok(ApplyResponse {
                    results,
                    revision: current.revision,
                });
            }
            match self.store.commit(&plan).await? {
                Commit::Committed { revision } => {
                    let mut changes = Vec::new();
                    for (d, r) in desired.iter().zip(results.iter_mut()) {
                        if r.action == Action::Unchanged {
                            continue;
                        }
                        tracing::info!(id = %r.id, action = r.action.as_str(), revision, %by, "applied");
                        let kind = if op == Some(HistoryOp::RolledBack) {
                            PolicyChange::RolledBack
                        } else {
                            PolicyChange::Applied
                        };
                        changes.push(policy_event(&d.key, kind, r.resource_version, revision, by));
                        r.resource_version = revision;
                    }
                    self.settle(revision).await;
                    for event in changes {
                        self.record_event(event).await;
                    }
                    return Ok(ApplyResponse { results, revision });
                }
                Commit::GuardFailed => {
                    tracing::debug!("a concurrent write got in first; reading again");
                    continue;
                }
            }
        }
        Err(match desired.first() {
            Some(d) if desired.len() == 1 => busy(&d.key),
            _ => OpError::Conflict(format!(
                "the resources changed concurrently {WRITE_ATTEMPTS} times in a row; try again"
            )),
        })
    }

    /// Adds the history entry of a change to `plan`, and deletes the oldest entries beyond
    /// the limit. `history` are the resource's history keys, oldest first.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        plan: &mut WritePlan,
        key: &ResourceKey,
        history: &[Entry],
        predicted: i64,
        op: HistoryOp,
        resource: Option<Value>,
        by: &str,
    ) {
        let record = HistoryRecord {
            revision: predicted,
            resource,
            by: by.to_string(),
            at: timestamp::now(),
            op,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let seq = u64::try_from(predicted).unwrap_or_default();
        plan.puts.push((self.keys.history(key, seq), value));
        plan.deletes.extend(trimmed(history, HISTORY_LIMIT));
    }

    pub(crate) async fn settle(&self, revision: i64) {
        if !self.index.wait_for_revision(revision, self.settle).await {
            tracing::debug!(revision, "the index has not caught up with a write yet");
        }
    }
}

/// What a policy event tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyChange {
    Applied,
    RolledBack,
    Deleted,
}

/// The event of a change of `key` from version `from` (0: it did not exist) to `to`.
fn policy_event(
    key: &ResourceKey,
    change: PolicyChange,
    from: i64,
    to: i64,
    by: &str,
) -> EventRecord {
    let (kind, text, after) = match change {
        PolicyChange::Applied if from == 0 => (
            "apply",
            format!("{key} created by {by} (version {to})"),
            to.to_string(),
        ),
        PolicyChange::Applied => (
            "apply",
            format!("{key} updated by {by}: version {from} → {to}"),
            to.to_string(),
        ),
        PolicyChange::RolledBack if from == 0 => (
            "rollback",
            format!("{key} restored from its history by {by} (version {to})"),
            to.to_string(),
        ),
        PolicyChange::RolledBack => (
            "rollback",
            format!("{key} rolled back by {by}: version {from} → {to}"),
            to.to_string(),
        ),
        PolicyChange::Deleted => (
            "delete",
            format!("{key} deleted by {by} (was version {from})"),
            "deleted".to_string(),
        ),
    };
    let mut event = crate::degradation::events::record(
        crate::timestamp::unix_millis(),
        format!("{}/{}", key.namespace, key.name),
        kind,
        (
            if from == 0 {
                String::new()
            } else {
                from.to_string()
            },
            after,
        ),
        Vec::new(),
        by.to_string(),
        text,
    );
    event.resource = key.to_string();
    event
}

/// The history keys to delete so that, with one more entry, at most `limit` remain.
fn trimmed(history: &[Entry], limit: usize) -> Vec<String> {
    let mut keys: Vec<&str> = history.iter().map(|e| e.key.as_str()).collect();
    keys.sort_unstable();
    let excess = (keys.len() + 1).saturating_sub(limit);
    keys.into_iter().take(excess).map(str::to_string).collect()
}

/// The action an apply takes and its diff, against what is stored.
fn compare(key: &ResourceKey, stored: Option<&Entry>, desired: &Resource) -> (Action, String) {
    let new_text = pretty(desired);
    let label = key.to_string();
    let Some(stored) = stored else {
        return (Action::Created, diff::unified(None, (&label, &new_text)));
    };
    let old = std::str::from_utf8(&stored.value)
        .ok()
        .and_then(|text| parse_json(text).ok())
        .and_then(|mut parsed| (parsed.len() == 1).then(|| parsed.remove(0)))
        .map(|mut r| {
            r.metadata_mut().resource_version = None;
            r
        });
    if old.as_ref() == Some(desired) {
        return (Action::Unchanged, String::new());
    }
    // A stored value the model no longer reads is shown as it is.
    let old_text = match &old {
        Some(r) => pretty(r),
        None => serde_json::from_slice::<Value>(&stored.value)
            .ok()
            .and_then(|v| serde_saphyr::to_string(&v).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(&stored.value).into_owned()),
    };
    let old_label = format!("{label}@{}", stored.mod_revision);
    (
        Action::Updated,
        diff::unified(Some((&old_label, &old_text)), (&label, &new_text)),
    )
}

/// A resource as YAML, as policies are written.
fn pretty(resource: &Resource) -> String {
    serde_saphyr::to_string(resource).unwrap_or_default()
}

/// Who a change is recorded as: the authenticated user; only an anonymous caller
/// (`--insecure-dev`) names itself with `by`.
pub(crate) fn author(actor: &Actor, by: Option<String>) -> Result<String, OpError> {
    if !actor.user.anonymous {
        return Ok(actor.user.name.clone());
    }
    let by = by
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| ANONYMOUS.to_string());
    one_line("by", &by, MAX_BY)?;
    Ok(by)
}

/// The longest `by` a request may give.
const MAX_BY: usize = 128;

/// Free text from a request that goes into logs, history and events must be one line of
/// printable text: a line break would start a forged log line, an escape sequence would
/// recolour or rewrite a terminal's text, and a bidirectional control reorders what a reader
/// sees. Refused, naming the field and showing the text escaped.
pub(crate) fn one_line(field: &str, text: &str, max: usize) -> Result<(), OpError> {
    let forbidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if text.chars().any(forbidden) {
        return Err(OpError::invalid(format!(
            "{field} must be one line of printable text (no line breaks, control characters or escape sequences), got {text:?}"
        )));
    }
    if text.chars().count() > max {
        return Err(OpError::invalid(format!(
            "{field} must be at most {max} characters, got {}",
            text.chars().count()
        )));
    }
    Ok(())
}

/// A conflict that names the current version.
struct Conflict {
    key: String,
    expected: i64,
    current: i64,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.expected, self.current) {
            (0, current) => write!(
                f,
                "{}: resourceVersion 0 means \"create\", but the resource exists at resourceVersion {current}",
                self.key
            ),
            (expected, 0) => write!(
                f,
                "{}: resourceVersion {expected} does not match: the resource does not exist",
                self.key
            ),
            (expected, current) => write!(
                f,
                "{}: resourceVersion {expected} does not match the current resourceVersion {current}",
                self.key
            ),
        }
    }
}

fn conflict(key: &ResourceKey, expected: i64, current: i64) -> Conflict {
    Conflict {
        key: key.to_string(),
        expected,
        current,
    }
}

impl From<Conflict> for OpError {
    fn from(c: Conflict) -> Self {
        OpError::Conflict(c.to_string())
    }
}

fn busy(key: &ResourceKey) -> OpError {
    OpError::Conflict(format!(
        "{key} changed concurrently {WRITE_ATTEMPTS} times in a row; try again"
    ))
}

/// Parses and validates resources, collecting every problem; nothing is returned unless all
/// are valid.
fn parse_resources(values: &[Value]) -> Result<Vec<Desired>, OpError> {
    if values.is_empty() {
        return Err(OpError::invalid("nothing to apply: resources is empty"));
    }
    if values.len() > MAX_APPLY {
        return Err(OpError::invalid(format!(
            "too many resources in one apply: {} (at most {MAX_APPLY})",
            values.len()
        )));
    }
    let mut details = Vec::new();
    let mut desired = Vec::with_capacity(values.len());
    let mut seen = BTreeSet::new();
    for (i, value) in values.iter().enumerate() {
        let label = guess_id(value).unwrap_or_else(|| format!("resources[{i}]"));
        if !value.is_object() {
            details.push(format!("{label}: must be a resource (a JSON object)"));
            continue;
        }
        let mut resource = match parse_json(&value.to_string()) {
            Ok(mut parsed) if parsed.len() == 1 => parsed.remove(0),
            Ok(_) => {
                details.push(format!("{label}: must be one resource"));
                continue;
            }
            Err(LoadError::Field { path, message, .. }) => {
                details.push(format!("{label}: {path}: {message}"));
                continue;
            }
            Err(e) => {
                details.push(format!("{label}: {e}"));
                continue;
            }
        };
        let id = resource.id();
        let expected = match resource.metadata_mut().resource_version.take() {
            None => None,
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) if n >= 0 => Some(n),
                _ => {
                    details.push(format!(
                        "{id}: metadata.resourceVersion: must be a resource version (a non-negative integer), got {v:?}"
                    ));
                    None
                }
            },
        };
        if let Err(errors) = resource.validate() {
            details.extend(
                errors
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}: {}", errors.resource, e.path, e.message)),
            );
            continue;
        }
        if !seen.insert(id.clone()) {
            details.push(format!("{id}: appears more than once in this apply"));
            continue;
        }
        let m = resource.metadata();
        let key = ResourceKey::new(resource.kind(), m.namespace.clone(), m.name.clone());
        desired.push(Desired {
            key,
            resource,
            expected,
        });
    }
    if details.is_empty() {
        return Ok(desired);
    }
    Err(problems(details))
}

/// Every problem of a write refused as a whole.
fn problems(details: Vec<String>) -> OpError {
    let n = details.len();
    OpError::Invalid {
        message: format!(
            "{n} problem{} found; nothing was stored",
            if n == 1 { "" } else { "s" }
        ),
        details,
    }
}

/// The failover targets `desired` name that it does not apply itself, each with the fields
/// that name it (`UpstreamPolicy/shop/checkout: spec.fallback.failover[0]`): they must be
/// stored for the write to go ahead.
fn required_targets(desired: &[Desired]) -> BTreeMap<ResourceKey, Vec<String>> {
    let applied: BTreeSet<&ResourceKey> = desired.iter().map(|d| &d.key).collect();
    let mut targets: BTreeMap<ResourceKey, Vec<String>> = BTreeMap::new();
    for d in desired {
        for r in refs::references(&d.resource)
            .into_iter()
            .filter(|r| r.required)
        {
            let key = ResourceKey::new(Kind::UpstreamPolicy, r.namespace, r.name);
            if !applied.contains(&key) {
                targets
                    .entry(key)
                    .or_default()
                    .push(format!("{}: {}", d.key, r.path));
            }
        }
    }
    targets
}

/// `Kind/namespace/name` from a document that may not parse, to name it in errors.
fn guess_id(value: &Value) -> Option<String> {
    let kind = value.get("kind")?.as_str()?;
    let metadata = value.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let namespace = match metadata.get("namespace") {
        None => bulwark_proto::policy::defaults::NAMESPACE,
        Some(ns) => ns.as_str()?,
    };
    Some(format!("{kind}/{namespace}/{name}"))
}

/// `k=v,k2=v2` into pairs; empty means everything.
pub fn parse_selector(selector: &str) -> Result<Vec<(String, String)>, OpError> {
    selector
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.contains('=') => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(OpError::Invalid {
                message: format!("selector {selector:?} is not a list of key=value pairs"),
                details: vec![format!("selector: {part:?} must be key=value")],
            }),
        })
        .collect()
}

/// A kind named in a path or request.
/// What a write of the policy `key` is, to authorise and audit.
fn policy_target(verb: Verb, key: &ResourceKey) -> Target<'_> {
    Target {
        verb,
        resource: kind_resource(key.kind),
        scope: Scope::Namespace(&key.namespace),
        name: &key.name,
    }
}

/// The resource of the permissions over a kind of policy.
pub fn kind_resource(kind: Kind) -> Res {
    match kind {
        Kind::ServicePolicy => Res::ServicePolicies,
        Kind::UpstreamPolicy => Res::UpstreamPolicies,
    }
}

pub fn parse_kind(kind: &str) -> Result<Kind, OpError> {
    kind.parse()
        .map_err(|e: String| OpError::NotFound(format!("no such kind: {e}")))
}

/// The key of a resource named in a path or request.
pub fn resource_key(kind: &str, namespace: &str, name: &str) -> Result<ResourceKey, OpError> {
    let kind = parse_kind(kind)?;
    if namespace.is_empty() || name.is_empty() {
        return Err(OpError::invalid("namespace and name are required"));
    }
    Ok(ResourceKey::new(kind, namespace, name))
}

/// The stored resource as JSON text (gRPC carries resources as text).
pub fn resource_json(resource: &Resource) -> String {
    serde_json::to_string(resource).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn echo() -> Value {
        json!({"apiVersion": "bulwark/v1", "kind": "UpstreamPolicy",
            "metadata": {"name": "echo"},
            "spec": {"endpoints": {"static": ["127.0.0.1:8080"]}}})
    }

    #[test]
    fn every_problem_of_every_resource_is_reported() {
        let mut bad = echo();
        bad["spec"]["endpoints"]["static"] = json!(["nowhere"]);
        bad["spec"]["retry"] = json!({"maxAttempts": 0});
        let typo = json!({"apiVersion": "bulwark/v1", "kind": "UpstreamPolicy",
            "metadata": {"name": "typo", "namespace": "shop"},
            "spec": {"endpoint": {}}});
        let err = parse_resources(&[echo(), bad, typo, json!(3)])
            .err()
            .unwrap();
        let OpError::Invalid { message, details } = err else {
            panic!("{err:?}")
        };
        assert_eq!(message, "4 problems found; nothing was stored");
        assert_eq!(details.len(), 4, "{details:?}");
        assert!(
            details[0].starts_with("UpstreamPolicy/default/echo: spec.endpoints.static[0]: "),
            "{details:?}"
        );
        assert!(
            details[1].starts_with("UpstreamPolicy/default/echo: spec.retry.maxAttempts: "),
            "{details:?}"
        );
        assert!(
            details[2].starts_with("UpstreamPolicy/shop/typo: spec.endpoint: unknown field"),
            "{details:?}"
        );
        assert_eq!(
            details[3],
            "resources[3]: must be a resource (a JSON object)"
        );
    }

    #[test]
    fn resource_versions_are_taken_out_and_checked() {
        let mut with = echo();
        with["metadata"]["resourceVersion"] = json!("12");
        let desired = parse_resources(&[with]).unwrap();
        assert_eq!(desired[0].expected, Some(12));
        assert_eq!(desired[0].resource.metadata().resource_version, None);

        let mut bad = echo();
        bad["metadata"]["resourceVersion"] = json!("twelve");
        let err = parse_resources(&[bad]).err().unwrap();
        assert_eq!(
            err.details(),
            [
                "UpstreamPolicy/default/echo: metadata.resourceVersion: must be a resource version (a non-negative integer), got \"twelve\""
            ]
        );
    }

    #[test]
    fn duplicates_and_empty_applies_are_invalid() {
        let err = parse_resources(&[echo(), echo()]).err().unwrap();
        assert_eq!(
            err.details(),
            ["UpstreamPolicy/default/echo: appears more than once in this apply"]
        );
        assert_eq!(
            parse_resources(&[]).err().unwrap(),
            OpError::invalid("nothing to apply: resources is empty")
        );
    }

    #[test]
    fn conflicts_name_the_current_version() {
        let key = ResourceKey::new(Kind::UpstreamPolicy, "default", "echo");
        assert_eq!(
            conflict(&key, 5, 7).to_string(),
            "UpstreamPolicy/default/echo: resourceVersion 5 does not match the current resourceVersion 7"
        );
        assert_eq!(
            conflict(&key, 5, 0).to_string(),
            "UpstreamPolicy/default/echo: resourceVersion 5 does not match: the resource does not exist"
        );
        assert_eq!(
            conflict(&key, 0, 7).to_string(),
            "UpstreamPolicy/default/echo: resourceVersion 0 means \"create\", but the resource exists at resourceVersion 7"
        );
    }

    #[test]
    fn selectors() {
        assert_eq!(parse_selector("").unwrap(), vec![]);
        assert_eq!(
            parse_selector("team=pay, tier = gold").unwrap(),
            vec![
                ("team".into(), "pay".into()),
                ("tier".into(), "gold".into())
            ]
        );
        assert_eq!(parse_selector("team").unwrap_err().kind(), "invalid");
        assert_eq!(parse_selector("=x").unwrap_err().kind(), "invalid");
    }

    #[test]
    fn history_is_trimmed_to_the_limit_with_the_new_entry() {
        let entries: Vec<Entry> = (1..=20)
            .map(|i| Entry {
                key: format!("/h/{i:020}"),
                value: vec![],
                mod_revision: i,
            })
            .collect();
        assert_eq!(trimmed(&entries, 20), [format!("/h/{:020}", 1)]);
        assert!(trimmed(&entries[..19], 20).is_empty());
        assert_eq!(trimmed(&entries, 18).len(), 3);
    }

    #[test]
    fn compare_decides_the_action_and_diffs() {
        let key = ResourceKey::new(Kind::UpstreamPolicy, "default", "echo");
        let desired = parse_resources(&[echo()]).unwrap().remove(0).resource;
        let (action, diff) = compare(&key, None, &desired);
        assert_eq!(action, Action::Created);
        assert!(
            diff.starts_with("--- /dev/null\n+++ UpstreamPolicy/default/echo\n@@ -0,0 +1,"),
            "{diff}"
        );

        let stored = Entry {
            key: "k".into(),
            value: serde_json::to_vec(&desired).unwrap(),
            mod_revision: 4,
        };
        assert_eq!(
            compare(&key, Some(&stored), &desired),
            (Action::Unchanged, String::new())
        );

        let mut changed = echo();
        changed["spec"]["endpoints"]["static"] = json!(["127.0.0.1:9090"]);
        let changed = parse_resources(&[changed]).unwrap().remove(0).resource;
        let (action, diff) = compare(&key, Some(&stored), &changed);
        assert_eq!(action, Action::Updated);
        assert!(
            diff.starts_with(
                "--- UpstreamPolicy/default/echo@4\n+++ UpstreamPolicy/default/echo\n@@ "
            ),
            "{diff}"
        );
        assert!(
            diff.contains("     static:\n-    - 127.0.0.1:8080\n+    - 127.0.0.1:9090\n"),
            "the resources as YAML: {diff}"
        );
    }

    #[test]
    fn errors_have_their_documented_kinds() {
        assert_eq!(OpError::invalid("x").kind(), "invalid");
        assert_eq!(OpError::Conflict("x".into()).kind(), "conflict");
        assert_eq!(OpError::NotFound("x".into()).kind(), "not-found");
        assert_eq!(OpError::Unavailable("x".into()).kind(), "unavailable");
        let e: OpError = StoreError::Unavailable {
            endpoints: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        }
        .into();
        assert_eq!(
            e,
            OpError::Unavailable(
                "etcd is unreachable at http://127.0.0.1:1: connection refused".into()
            )
        );
        assert_eq!(parse_kind("Gateway").unwrap_err().kind(), "not-found");
    }
}
