//! Access to the operator API, in one place for REST and gRPC: every operation asks
//! [`Ops::authorize`] before it acts (a refusal is a 403 naming the missing permission, and is
//! counted), every write — allowed or refused — leaves an audit record (`audit/`, kept
//! [`AUDIT_RETENTION`](super::ops::AUDIT_RETENTION); `GET /v1/audit`), and the role bindings themselves are managed here
//! (`/v1/rolebindings`, administrators only). `whoami` and `can-i` tell callers what they may
//! do.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ops::{OpError, Ops, Served, one_line};
use crate::auth::Actor;
use crate::auth::rbac::{Resource, RoleBinding, Scope, Target, Verb};
use crate::store::values::AuditRecord;
use crate::store::{Commit, Guard, Read, WritePlan};
use crate::timestamp;

/// Audit records one listing returns at most, and by default.
const MAX_AUDIT: usize = 1000;
const DEFAULT_AUDIT: usize = 100;
/// Records one filtered listing scans at most.
const AUDIT_SCAN: i64 = 5000;

/// `GET /v1/auth/whoami`.
#[derive(Debug, Clone, Serialize)]
pub struct WhoAmI {
    pub user: String,
    pub groups: Vec<String>,
    pub method: String,
    /// The roles held, `role` or `role in namespace`.
    pub roles: Vec<String>,
}

/// `GET /v1/auth/can-i`.
#[derive(Debug, Clone, Serialize)]
pub struct CanI {
    pub allowed: bool,
    pub user: String,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/rolebindings`.
#[derive(Debug, Clone, Serialize)]
pub struct RoleBindingList {
    pub items: Vec<NamedBinding>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamedBinding {
    pub name: String,
    #[serde(flatten)]
    pub binding: RoleBinding,
}

/// `GET /v1/audit`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditList {
    pub items: Vec<AuditRecord>,
}

/// The `?verb=&resource=&namespace=` of `can-i`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanIQuery {
    pub verb: String,
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// What one caller may do, against the role bindings as they stood when it was taken. Checks
/// take no lock, so they can run while the index is held.
pub struct Permissions<'a> {
    authorizer: &'a crate::auth::rbac::Authorizer,
    user: &'a crate::auth::User,
    bindings: Arc<BTreeMap<String, RoleBinding>>,
}

impl Permissions<'_> {
    /// `Ok`, or the message of the 403.
    pub fn check(&self, verb: Verb, resource: Resource, scope: Scope<'_>) -> Result<(), String> {
        self.authorizer
            .check(self.user, self.bindings.iter(), verb, resource, scope)
    }

    /// Whether the caller may: for filtering what a listing shows.
    pub fn may(&self, verb: Verb, resource: Resource, scope: Scope<'_>) -> bool {
        self.check(verb, resource, scope).is_ok()
    }
}

impl Ops {
    /// What `actor` may do, as the bindings stand now.
    pub fn permissions<'a>(&'a self, actor: &'a Actor) -> Permissions<'a> {
        Permissions {
            authorizer: &self.authorizer,
            user: &actor.user,
            bindings: self.index.lock().role_bindings().clone(),
        }
    }

    /// `Ok` when `actor` may `verb` `resource` at `scope`; else a 403 (counted and logged).
    pub fn authorize(
        &self,
        actor: &Actor,
        verb: Verb,
        resource: Resource,
        scope: Scope<'_>,
    ) -> Result<(), OpError> {
        match self.permissions(actor).check(verb, resource, scope) {
            Ok(()) => {
                self.metrics.authorization("allowed");
                Ok(())
            }
            Err(message) => {
                self.metrics.authorization("denied");
                tracing::info!(user = %actor.user.name, from = %actor.from, verb = verb.as_str(), resource = resource.as_str(), %scope, "request denied");
                Err(OpError::Forbidden(message))
            }
        }
    }

    /// [`Ops::authorize`] for a write, audited when refused; and the user's write rate. A
    /// write refused for its rate is counted, not audited (that would let a flood through to
    /// etcd after all).
    pub async fn authorize_write(&self, actor: &Actor, target: Target<'_>) -> Result<(), OpError> {
        if let Err(retry_after) = self.writes.take(&actor.user.name) {
            self.metrics.authorization("rate-limited");
            tracing::info!(user = %actor.user.name, from = %actor.from, "write refused: too many writes");
            return Err(OpError::RateLimited {
                message: format!(
                    "{} made too many writes: try again in {} ms",
                    actor.user.name,
                    retry_after.as_millis().max(1)
                ),
                retry_after,
            });
        }
        match self.authorize(actor, target.verb, target.resource, target.scope) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.audit(actor, target, Err(&e)).await;
                Err(e)
            }
        }
    }

    /// Runs `write` (not started before) once `actor` is allowed `target`, and audits how it
    /// ended — the one shape of every audited write.
    pub async fn audited<T>(
        &self,
        actor: &Actor,
        target: Target<'_>,
        write: impl Future<Output = Result<T, OpError>>,
    ) -> Result<T, OpError> {
        self.authorize_write(actor, target).await?;
        let result = write.await;
        self.audit(actor, target, result.as_ref().map(|_| ())).await;
        result
    }

    /// Records a write and how it ended. Failing to record is logged, never fatal: the write
    /// itself already happened (or did not).
    pub async fn audit(&self, actor: &Actor, target: Target<'_>, result: Result<(), &OpError>) {
        let now = timestamp::unix_millis();
        let (result, status, detail) = match result {
            Ok(()) => ("ok".to_string(), 200, String::new()),
            Err(e) => (e.kind().to_string(), e.status(), e.to_string()),
        };
        let record = AuditRecord {
            at: timestamp::format_unix_millis(now),
            time: now,
            user: actor.user.name.clone(),
            groups: actor.user.groups.clone(),
            method: actor.user.method.to_string(),
            from: actor.from.to_string(),
            verb: target.verb.as_str().to_string(),
            resource: target.resource.as_str().to_string(),
            namespace: match target.scope {
                Scope::Namespace(ns) => ns.to_string(),
                Scope::Cluster => String::new(),
            },
            name: target.name.to_string(),
            result,
            status,
            detail,
            replica: self.replica.clone(),
        };
        tracing::info!(target: "audit", user = %record.user, from = %record.from, verb = %record.verb, resource = %record.resource, namespace = %record.namespace, name = %record.name, result = %record.result, "audit");
        let mut lease = self.audit_lease.lock().await;
        let stored = async {
            let id = lease.get(&self.store).await?;
            let value = serde_json::to_vec(&record).unwrap_or_default();
            self.store
                .put(&audit_key(&self.keys, now), value, Some(id))
                .await
        }
        .await;
        if let Err(e) = stored {
            lease.forget();
            tracing::warn!(error = %e, "cannot record an audit record");
        }
    }

    /// The newest audit records `actor` may read, of one namespace or all, newest first.
    pub async fn audit_log(
        &self,
        actor: &Actor,
        namespace: Option<&str>,
        limit: Option<usize>,
    ) -> Result<AuditList, OpError> {
        let limit = limit.unwrap_or(DEFAULT_AUDIT);
        if limit == 0 || limit > MAX_AUDIT {
            return Err(OpError::invalid(format!(
                "limit must be between 1 and {MAX_AUDIT}, got {limit}"
            )));
        }
        let scope = namespace.map_or(Scope::Cluster, Scope::Namespace);
        self.authorize(actor, Verb::List, Resource::Audit, scope)?;
        let perms = self.permissions(actor);
        let entries = self
            .store
            .last_under(&self.keys.audit(), AUDIT_SCAN)
            .await?;
        let items = entries
            .iter()
            .filter_map(|e| serde_json::from_slice::<AuditRecord>(&e.value).ok())
            .filter(|r| namespace.is_none_or(|ns| r.namespace == ns))
            .filter(|r| {
                namespace.is_some()
                    || perms.may(
                        Verb::List,
                        Resource::Audit,
                        if r.namespace.is_empty() {
                            Scope::Cluster
                        } else {
                            Scope::Namespace(&r.namespace)
                        },
                    )
            })
            .take(limit)
            .collect();
        Ok(AuditList { items })
    }

    pub fn whoami(&self, actor: &Actor) -> WhoAmI {
        let bindings = self.index.lock().role_bindings().clone();
        let roles = self
            .authorizer
            .roles(&actor.user, bindings.iter())
            .into_iter()
            .map(|(role, at)| match at {
                Some(ns) => format!("{} in {ns}", role.as_str()),
                None => format!("{} cluster-wide", role.as_str()),
            })
            .collect();
        WhoAmI {
            user: actor.user.name.clone(),
            groups: actor.user.groups.clone(),
            method: actor.user.method.to_string(),
            roles,
        }
    }

    /// Whether `actor` may do what `query` names.
    pub fn can_i(&self, actor: &Actor, query: &CanIQuery) -> Result<CanI, OpError> {
        let verb = Verb::parse(&query.verb).ok_or_else(|| {
            OpError::invalid(format!(
                "verb must be one of {}, got {:?}",
                Verb::ALL.map(Verb::as_str).join(", "),
                query.verb
            ))
        })?;
        let resource = Resource::parse(&query.resource).ok_or_else(|| {
            OpError::invalid(format!(
                "resource must be one of {}, got {:?}",
                Resource::ALL.map(Resource::as_str).join(", "),
                query.resource
            ))
        })?;
        let scope = query
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .map_or(Scope::Cluster, Scope::Namespace);
        let decision = self.permissions(actor).check(verb, resource, scope);
        Ok(CanI {
            allowed: decision.is_ok(),
            user: actor.user.name.clone(),
            reason: decision.err(),
        })
    }

    /// Every role binding the actor may read.
    pub fn role_bindings(&self, actor: &Actor) -> Result<Served<RoleBindingList>, OpError> {
        let perms = self.permissions(actor);
        let index = self.index.lock();
        let state = self.readable(&index.state())?;
        let items: Vec<NamedBinding> = index
            .role_bindings()
            .iter()
            .map(|(name, binding)| NamedBinding {
                name: name.clone(),
                binding: binding.clone(),
            })
            .collect();
        drop(index);
        let items: Vec<NamedBinding> = items
            .into_iter()
            .filter(|b| {
                perms.may(
                    Verb::List,
                    Resource::RoleBindings,
                    b.binding
                        .namespace
                        .as_deref()
                        .map_or(Scope::Cluster, Scope::Namespace),
                )
            })
            .collect();
        if items.is_empty() && !perms.may(Verb::List, Resource::RoleBindings, Scope::Cluster) {
            // Say so rather than pretend there are none.
            self.authorize(actor, Verb::List, Resource::RoleBindings, Scope::Cluster)?;
        }
        Ok(Served {
            value: RoleBindingList { items },
            stale: state.stale,
        })
    }

    /// Creates or replaces the role binding `name`.
    pub async fn put_role_binding(
        &self,
        actor: &Actor,
        name: &str,
        binding: RoleBinding,
    ) -> Result<NamedBinding, OpError> {
        check_binding_name(name)?;
        let problems = binding.problems();
        if !problems.is_empty() {
            return Err(OpError::Invalid {
                message: format!("the role binding {name} is not valid"),
                details: problems,
            });
        }
        for s in &binding.subjects {
            one_line("subject name", &s.name, 256)?;
        }
        let scope = binding
            .namespace
            .as_deref()
            .map_or(Scope::Cluster, Scope::Namespace);
        let target = Target {
            verb: Verb::Apply,
            resource: Resource::RoleBindings,
            scope,
            name,
        };
        self.authorize_write(actor, target).await?;
        // Moving a binding between namespaces needs the right to change it where it is.
        let existing = self.index.lock().role_bindings().get(name).cloned();
        if let Some(old) = &existing
            && old.namespace != binding.namespace
        {
            let from = old
                .namespace
                .as_deref()
                .map_or(Scope::Cluster, Scope::Namespace);
            self.authorize_write(
                actor,
                Target {
                    scope: from,
                    ..target
                },
            )
            .await?;
        }
        let value = serde_json::to_vec(&binding).map_err(|e| OpError::Internal(e.to_string()))?;
        let key = self.keys.role_binding(name);
        let result = async {
            let current = self.store.read(&[Read::Key(key.clone())]).await?;
            let plan = WritePlan {
                guards: vec![Guard {
                    key: key.clone(),
                    mod_revision: current.answers[0].first().map_or(0, |e| e.mod_revision),
                }],
                puts: vec![(key.clone(), value)],
                deletes: Vec::new(),
            };
            match self.store.commit(&plan).await? {
                Commit::Committed { revision } => {
                    self.settle(revision).await;
                    Ok(())
                }
                Commit::GuardFailed => Err(OpError::Conflict(format!(
                    "the role binding {name} changed concurrently; try again"
                ))),
            }
        }
        .await;
        self.audit(actor, target, result.as_ref().map(|_| ())).await;
        result?;
        tracing::info!(name, role = binding.role.as_str(), by = %actor.user.name, "role binding applied");
        Ok(NamedBinding {
            name: name.to_string(),
            binding,
        })
    }

    /// Deletes the role binding `name`.
    pub async fn delete_role_binding(&self, actor: &Actor, name: &str) -> Result<(), OpError> {
        check_binding_name(name)?;
        let existing = self.index.lock().role_bindings().get(name).cloned();
        let scope = existing
            .as_ref()
            .and_then(|b| b.namespace.as_deref())
            .map_or(Scope::Cluster, Scope::Namespace);
        let target = Target {
            verb: Verb::Delete,
            resource: Resource::RoleBindings,
            scope,
            name,
        };
        self.authorize_write(actor, target).await?;
        let result = async {
            if !self.store.delete(&self.keys.role_binding(name)).await? {
                return Err(OpError::NotFound(format!("role binding {name} not found")));
            }
            let revision = self.store.read(&[]).await?.revision;
            self.settle(revision).await;
            Ok(())
        }
        .await;
        self.audit(actor, target, result.as_ref().map(|_| ())).await;
        result
    }
}

fn check_binding_name(name: &str) -> Result<(), OpError> {
    crate::store::keys::check_segment(name)
        .map_err(|e| OpError::invalid(format!("role binding name {name:?}: {e}")))
}

/// The key of an audit record: its millisecond, this replica's running count and three random
/// digits (as events).
fn audit_key(keys: &crate::store::keys::Keys, now: i64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RECORDED: AtomicU64 = AtomicU64::new(0);
    let count = RECORDED.fetch_add(1, Ordering::Relaxed) % 10_000_000;
    keys.audit_record(now, count * 1000 + u64::from(fastrand::u16(..1000)))
}
