//! The degradation operations, once for REST and gRPC: levels (from the index, as the elected
//! replica stored them), events (from etcd, newest first), and the operators' overrides — a
//! forced level for a service or the mesh, stored under a lease of its TTL so that it ends by
//! itself, and recorded as an event with who and why.

use std::time::Duration;

use bulwark_proto::policy::Kind;
use bulwark_proto::policy::units::parse_duration;
use serde::{Deserialize, Serialize};

use super::ops::{OpError, Ops, Served, author, one_line};
use crate::auth::Actor;
use crate::auth::rbac::{Resource, Scope, Target, Verb};
use crate::degradation::compute::{Level, ServiceStatus};
use crate::degradation::events;
use crate::store::keys::{OverrideTarget, ResourceKey, ServiceKey};
use crate::store::values::{EventRecord, OverrideRecord};
use crate::timestamp::unix_millis;

/// The longest an override may last.
pub const MAX_OVERRIDE: Duration = Duration::from_secs(24 * 3600);
/// Events listed when a request names no limit, and the most it may ask for.
pub const DEFAULT_EVENTS: usize = 100;
pub const MAX_EVENTS: usize = 1000;
/// The longest reason an override may give.
pub const MAX_REASON: usize = 500;

/// `GET /v1/levels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LevelsResponse {
    /// When the elected replica last computed one of these (unix ms; 0: never).
    pub computed_at: i64,
    pub services: Vec<ServiceStatus>,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventsResponse {
    pub events: Vec<EventRecord>,
}

/// `PUT /v1/degrade/...`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradeRequest {
    pub level: String,
    pub ttl: String,
    pub reason: String,
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DegradeResponse {
    pub r#override: OverrideRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClearResponse {
    pub cleared: bool,
}

impl Ops {
    /// Every service's status, of one namespace or all (those `actor` may read).
    pub fn levels(
        &self,
        actor: &Actor,
        namespace: Option<&str>,
    ) -> Result<Served<LevelsResponse>, OpError> {
        if let Some(ns) = namespace {
            self.authorize(actor, Verb::List, Resource::Levels, Scope::Namespace(ns))?;
        }
        let perms = self.permissions(actor);
        let index = self.index.lock();
        let state = self.readable(&index.state())?;
        let services: Vec<ServiceStatus> = index
            .statuses()
            .values()
            .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
            .map(|s| s.as_ref().clone())
            .collect();
        drop(index);
        let services: Vec<ServiceStatus> = services
            .into_iter()
            .filter(|s| {
                namespace.is_some()
                    || perms.may(Verb::List, Resource::Levels, Scope::Namespace(&s.namespace))
            })
            .collect();
        Ok(Served {
            value: LevelsResponse {
                computed_at: services.iter().map(|s| s.computed_at).max().unwrap_or(0),
                services,
            },
            stale: state.stale,
        })
    }

    /// One service's status.
    pub fn level(
        &self,
        actor: &Actor,
        service: &ServiceKey,
    ) -> Result<Served<ServiceStatus>, OpError> {
        self.authorize(
            actor,
            Verb::Get,
            Resource::Levels,
            Scope::Namespace(&service.namespace),
        )?;
        let index = self.index.lock();
        let state = self.readable(&index.state())?;
        let status = index.statuses().get(service).ok_or_else(|| {
            let policy =
                ResourceKey::new(Kind::ServicePolicy, &service.namespace, &service.service);
            if index.get(&policy).is_some() {
                OpError::NotFound(format!(
                    "{service} has no level yet: no replica has computed it"
                ))
            } else {
                OpError::NotFound(format!(
                    "{service} has no level: levels are computed for services with a ServicePolicy"
                ))
            }
        })?;
        Ok(Served {
            value: status.as_ref().clone(),
            stale: state.stale,
        })
    }

    /// The newest events, of one service (`namespace/service`) or all.
    /// Of all services, only those of namespaces `actor` may read (mesh-wide events need a
    /// cluster-wide viewer).
    pub async fn events(
        &self,
        actor: &Actor,
        service: Option<&str>,
        limit: Option<usize>,
    ) -> Result<EventsResponse, OpError> {
        let namespace_of = |service: &str| service.split_once('/').map(|(ns, _)| ns.to_string());
        if let Some(s) = service {
            match namespace_of(s) {
                Some(ns) => {
                    self.authorize(actor, Verb::List, Resource::Events, Scope::Namespace(&ns))?
                }
                None => self.authorize(actor, Verb::List, Resource::Events, Scope::Cluster)?,
            }
        }
        let limit = limit.unwrap_or(DEFAULT_EVENTS);
        if limit == 0 || limit > MAX_EVENTS {
            return Err(OpError::invalid(format!(
                "limit must be between 1 and {MAX_EVENTS}, got {limit}"
            )));
        }
        let perms = self.permissions(actor);
        let all = perms.may(Verb::List, Resource::Events, Scope::Cluster);
        let events = events::list(&self.store, &self.keys, service, limit)
            .await?
            .into_iter()
            .filter(|e| {
                all || service.is_some()
                    || namespace_of(&e.service).is_some_and(|ns| {
                        perms.may(Verb::List, Resource::Events, Scope::Namespace(&ns))
                    })
            })
            .collect();
        Ok(EventsResponse { events })
    }

    /// Forces a level until the TTL runs out.
    pub async fn degrade(
        &self,
        actor: &Actor,
        target: OverrideTarget,
        request: DegradeRequest,
    ) -> Result<DegradeResponse, OpError> {
        let name = override_name(&target);
        let audited = Target {
            verb: Verb::Apply,
            resource: Resource::Overrides,
            scope: override_scope(&target),
            name: &name,
        };
        self.audited(
            actor,
            audited,
            self.degrade_as(actor, target.clone(), request),
        )
        .await
    }

    async fn degrade_as(
        &self,
        actor: &Actor,
        target: OverrideTarget,
        request: DegradeRequest,
    ) -> Result<DegradeResponse, OpError> {
        let level = Level::parse(&request.level).ok_or_else(|| {
            OpError::invalid(format!(
                "level must be NORMAL, DEGRADED, SEVERE or EMERGENCY, got {:?}",
                request.level
            ))
        })?;
        let ttl =
            parse_duration(&request.ttl).map_err(|e| OpError::invalid(format!("ttl: {e}")))?;
        if ttl.is_zero() || ttl > MAX_OVERRIDE {
            return Err(OpError::invalid(format!(
                "ttl must be more than 0 and at most 24h, got {:?}",
                request.ttl
            )));
        }
        let reason = request.reason.trim();
        if reason.is_empty() {
            return Err(OpError::invalid(
                "reason must say why the level is forced (it is recorded with the override)",
            ));
        }
        one_line("reason", reason, MAX_REASON)?;
        let by = author(actor, request.by)?;
        if let OverrideTarget::Service(service) = &target {
            let policy =
                ResourceKey::new(Kind::ServicePolicy, &service.namespace, &service.service);
            if self.index.lock().get(&policy).is_none() {
                return Err(OpError::NotFound(format!(
                    "no ServicePolicy {service}: levels are computed for services with a ServicePolicy"
                )));
            }
        }
        let now = unix_millis();
        let record = OverrideRecord {
            level: level.to_string(),
            reason: reason.to_string(),
            by: by.clone(),
            expires: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            mesh: target == OverrideTarget::Mesh,
        };
        // Whole seconds, never shorter than asked.
        let lease = self
            .store
            .grant_lease(Duration::from_secs(ttl.as_millis().div_ceil(1000) as u64))
            .await?;
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.store
            .put(&self.keys.override_of(&target), value, Some(lease))
            .await?;
        let text = format!(
            "{target} forced to {level} by {by} for {}: {reason}",
            request.ttl.trim()
        );
        self.record_event(events::record(
            now,
            target.to_string(),
            "override",
            (String::new(), level.to_string()),
            vec![reason.to_string()],
            by,
            text,
        ))
        .await;
        Ok(DegradeResponse { r#override: record })
    }

    /// Ends an override before its TTL.
    pub async fn clear_degrade(
        &self,
        actor: &Actor,
        target: OverrideTarget,
        by: Option<String>,
    ) -> Result<ClearResponse, OpError> {
        let by = author(actor, by)?;
        let name = override_name(&target);
        let audited = Target {
            verb: Verb::Delete,
            resource: Resource::Overrides,
            scope: override_scope(&target),
            name: &name,
        };
        self.audited(actor, audited, self.clear_as(target.clone(), by))
            .await
    }

    async fn clear_as(&self, target: OverrideTarget, by: String) -> Result<ClearResponse, OpError> {
        let key = self.keys.override_of(&target);
        let before = self.index.lock().overrides().get(&target).cloned();
        if !self.store.delete(&key).await? {
            return Err(OpError::NotFound(format!("no override for {target}")));
        }
        let from = before.map(|o| o.level).unwrap_or_default();
        let text = format!("{target} override cleared by {by}");
        self.record_event(events::record(
            unix_millis(),
            target.to_string(),
            "override",
            (from, "cleared".into()),
            Vec::new(),
            by,
            text,
        ))
        .await;
        Ok(ClearResponse { cleared: true })
    }

    /// Stores an event; the operation it records already happened, so a failure is logged.
    pub(crate) async fn record_event(&self, event: EventRecord) {
        self.events.record(event).await;
    }
}

/// What an override is named in the audit log: its service (the namespace is the scope's), or
/// `*` for the mesh.
fn override_name(target: &OverrideTarget) -> String {
    match target {
        OverrideTarget::Mesh => "*".to_string(),
        OverrideTarget::Service(s) => s.service.clone(),
    }
}

/// Where an override acts: its service's namespace, or the whole mesh.
fn override_scope(target: &OverrideTarget) -> Scope<'_> {
    match target {
        OverrideTarget::Mesh => Scope::Cluster,
        OverrideTarget::Service(s) => Scope::Namespace(&s.namespace),
    }
}

/// `namespace/service` or `*` → the override's target.
pub fn parse_target(namespace: &str, service: &str) -> Result<OverrideTarget, OpError> {
    for (what, value) in [("namespace", namespace), ("service", service)] {
        crate::store::keys::check_segment(value)
            .map_err(|e| OpError::invalid(format!("{what} {value:?} {e}")))?;
    }
    Ok(OverrideTarget::Service(ServiceKey {
        namespace: namespace.to_string(),
        service: service.to_string(),
    }))
}
