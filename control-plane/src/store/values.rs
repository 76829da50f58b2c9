//! The values stored under `history/`, `acks/`, `health/`, `status/`, `overrides/` and
//! `events/` (docs/control-plane.md, "etcd keys"), as JSON. Resources under `policies/` are the
//! policy model's own JSON, without `metadata.resourceVersion` (the key's `mod_revision` is the
//! version).

use std::collections::BTreeMap;

use bulwark_proto::level::Level;
use bulwark_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// What a history entry says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HistoryOp {
    Created,
    Updated,
    Deleted,
    RolledBack,
}

impl HistoryOp {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryOp::Created => "created",
            HistoryOp::Updated => "updated",
            HistoryOp::Deleted => "deleted",
            HistoryOp::RolledBack => "rolled-back",
        }
    }
}

/// `history/{kind}/{namespace}/{name}/{revision:020}`: one change of a resource.
///
/// `revision` is the revision the writer expected the change to get (the store's revision
/// when it read, plus one); it is exact unless another write landed in between. Readers take
/// the revision from the key's `mod_revision`, which is always exact (it is written in the
/// same transaction as the change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub revision: i64,
    /// The resource after the change (without `resourceVersion`); `null` for a deletion.
    pub resource: Option<serde_json::Value>,
    pub by: String,
    pub at: String,
    pub op: HistoryOp,
}

/// `acks/{namespace}/{service}/{pod}`: what one pod did with the snapshots it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    /// The version the pod answered last (ACK or NACK); on connect, the one it had applied.
    pub version: i64,
    /// Empty after an ACK; the NACK's reason otherwise.
    pub error: String,
    /// The replica holding the pod's stream (and the lease the key is bound to).
    pub replica: String,
    pub at: String,
    /// The newest version the pod applied (an extension of the documented fields: a NACK
    /// leaves the pod on its previous version, and convergence needs that one).
    #[serde(default)]
    pub applied: i64,
}

/// `health/{namespace}/{service}/{pod}`: the pod's latest health report, bound to a lease of
/// about three report intervals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthRecord {
    /// When the replica received the report (unix milliseconds).
    pub at: i64,
    pub interval_ms: u32,
    pub applied_version: i64,
    pub replica: String,
    pub app: AppHealth,
    pub upstreams: Vec<UpstreamHealth>,
    /// The pod's workload identity and its certificate's expiry, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityRecord>,
}

/// What a pod reported of its workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRecord {
    pub spiffe_id: String,
    /// Unix milliseconds; 0 when the pod holds no certificate yet.
    pub not_after: i64,
}

/// The sidecar's last probe of its app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppHealth {
    pub probed: bool,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One upstream as one pod saw it during its last report interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamHealth {
    pub namespace: String,
    pub name: String,
    pub requests: u64,
    pub failures: u64,
    pub slow: u64,
    pub breaker: BreakerState,
    pub endpoints: u32,
    pub ejected: u32,
    /// Requests refused for overload since the previous report (records written before there
    /// was such a count have none).
    #[serde(default)]
    pub overloaded: u64,
    /// The 99th percentile of the attempts' latencies in microseconds (0: no attempts, or a
    /// sidecar that does not measure it).
    #[serde(default)]
    pub p99_micros: u32,
}

pub use bulwark_proto::breaker::BreakerState;

impl HealthRecord {
    /// The record of a report received now.
    pub fn from_report(report: &bulwark_proto::v1::HealthReport, replica: &str, at: i64) -> Self {
        let app = report.app.as_ref();
        HealthRecord {
            at,
            interval_ms: report.interval_ms,
            applied_version: report.applied_version,
            replica: replica.to_string(),
            app: AppHealth {
                probed: app.is_some_and(|a| a.probed),
                healthy: app.is_none_or(|a| a.healthy || !a.probed),
                detail: app.map(|a| a.detail.clone()).unwrap_or_default(),
            },
            upstreams: report
                .upstreams
                .iter()
                .map(|u| UpstreamHealth {
                    namespace: u.namespace.clone(),
                    name: u.name.clone(),
                    requests: u.requests,
                    failures: u.failures.min(u.requests),
                    slow: u.slow.min(u.requests),
                    breaker: BreakerState::from_wire(u.breaker),
                    endpoints: u.endpoints,
                    ejected: u.ejected.min(u.endpoints),
                    overloaded: u.overloaded,
                    p99_micros: u.p99_micros,
                })
                .collect(),
            identity: report.identity.as_ref().map(|i| IdentityRecord {
                spiffe_id: i.spiffe_id.clone(),
                not_after: i.not_after_unix_ms,
            }),
        }
    }
}

/// `overrides/mesh` or `overrides/service/{namespace}/{service}`: a level forced by an
/// operator, bound to a lease of its TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideRecord {
    /// `NORMAL`, `DEGRADED`, `SEVERE` or `EMERGENCY`.
    pub level: String,
    pub reason: String,
    pub by: String,
    /// Unix milliseconds.
    pub expires: i64,
    #[serde(default)]
    pub mesh: bool,
}

/// `events/{unix ms:013}-{seq}`: a level change, a breaker transition, an override, a policy
/// applied, rolled back or deleted, or an alert sent, kept for a day (leased).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Unix milliseconds.
    pub time: i64,
    /// RFC 3339.
    pub at: String,
    /// `namespace/service`, or `*` for the mesh.
    pub service: String,
    /// `level`, `breaker`, `override`, `apply`, `rollback`, `delete` or `alert`.
    pub kind: String,
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub reasons: Vec<String>,
    #[serde(default)]
    pub by: String,
    /// One line, as alerts carry it.
    pub text: String,
    /// The policy resource a policy event concerns, `Kind/namespace/name`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
}

/// One dependency as the service's pods see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyStatus {
    pub name: String,
    pub critical: bool,
    pub healthy: bool,
    /// Why it is unhealthy (`breaker open on 3/4 pods`), empty when healthy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Pods that reported it.
    pub pods: usize,
    pub breaker_open_pods: usize,
    /// Pods that saw it refuse requests for overload.
    #[serde(default)]
    pub overloaded_pods: usize,
    pub requests: u64,
    pub failures: u64,
    /// The highest p99 latency any pod reported for it, in microseconds (0: no attempts).
    #[serde(default)]
    pub p99_micros: u32,
}

/// A lower level waiting out `lowerAfter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The most severe level computed since `since`: where the service goes when the wait is
    /// over.
    pub level: Level,
    pub since: i64,
}

/// An override as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideStatus {
    pub level: Level,
    pub reason: String,
    pub by: String,
    pub expires: i64,
    pub mesh: bool,
}

/// `status/{namespace}/{service}`: what the elected replica computed for one service. It is
/// also what the API serves and, trimmed, what sidecars receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub namespace: String,
    pub service: String,
    /// The level sidecars act on.
    pub level: Level,
    /// The level the health rules give now.
    pub computed: Level,
    /// Since when (unix ms) the service is at `level`.
    pub since: i64,
    pub capabilities: BTreeMap<String, bool>,
    /// One line per cause, unhealthy dependencies first.
    pub reasons: Vec<String>,
    /// `LEVEL: reason, reason`.
    pub summary: String,
    pub unhealthy: Vec<String>,
    pub reporting_pods: usize,
    /// Pods that answer readiness with 503 because of degradation.
    pub unready_pods: Vec<String>,
    #[serde(default)]
    pub r#override: Option<OverrideStatus>,
    pub dependencies: Vec<DependencyStatus>,
    #[serde(default)]
    pub pending: Option<Pending>,
    /// When this was computed (unix ms).
    pub computed_at: i64,
}

impl ServiceStatus {
    /// Same in everything sidecars, operators and alerts care about: counts and the time of
    /// computation aside.
    pub fn same_state(&self, other: &ServiceStatus) -> bool {
        let health = |s: &ServiceStatus| -> Vec<(String, bool, String, usize)> {
            s.dependencies
                .iter()
                .map(|d| {
                    (
                        d.name.clone(),
                        d.healthy,
                        d.reason.clone(),
                        d.breaker_open_pods,
                    )
                })
                .collect()
        };
        self.level == other.level
            && self.computed == other.computed
            && self.since == other.since
            && self.capabilities == other.capabilities
            && self.reasons == other.reasons
            && self.reporting_pods == other.reporting_pods
            && self.unready_pods == other.unready_pods
            && self.r#override == other.r#override
            && self.pending == other.pending
            && health(self) == health(other)
    }

    /// What the sidecars of the service, and of its callers, receive.
    pub fn to_pb(&self) -> pb::ServiceLevel {
        pb::ServiceLevel {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            level: self.level.to_pb().into(),
            capabilities: self
                .capabilities
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            reasons: self.reasons.clone(),
            unready_pods: self.unready_pods.clone(),
            since_unix_ms: self.since,
            r#override: self.r#override.as_ref().map(|o| pb::Override {
                level: o.level.to_pb().into(),
                reason: o.reason.clone(),
                by: o.by.clone(),
                expires_unix_ms: o.expires,
                mesh: o.mesh,
            }),
            reporting_pods: u32::try_from(self.reporting_pods).unwrap_or(u32::MAX),
        }
    }
}

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Operator,
    Admin,
}

/// Who a binding is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    pub kind: SubjectKind,
    pub name: String,
    /// The service account's namespace (`ServiceAccount` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

/// A role given to subjects, in one namespace or (no namespace) cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleBinding {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub subjects: Vec<Subject>,
}

/// One audited request (`audit/{unix ms}-{seq}`): who, what, when, from where, and how it
/// ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// RFC 3339, milliseconds.
    pub at: String,
    pub time: i64,
    pub user: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// How the user was authenticated.
    pub method: String,
    /// The client's address.
    pub from: String,
    pub verb: String,
    pub resource: String,
    /// Empty for cluster-scoped requests.
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    /// `ok`, or the error kind (`forbidden`, `invalid`, `conflict`, …).
    pub result: String,
    /// The HTTP status the request got.
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The replica that served it.
    pub replica: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_records_read_as_documented() {
        let record = HistoryRecord {
            revision: 12,
            resource: None,
            by: "alice".into(),
            at: "2025-11-22T03:12:00.000Z".into(),
            op: HistoryOp::RolledBack,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"revision": 12, "resource": null, "by": "alice",
                "at": "2025-11-22T03:12:00.000Z", "op": "rolled-back"})
        );
        assert_eq!(
            serde_json::from_value::<HistoryRecord>(json).unwrap(),
            record
        );
    }

    #[test]
    fn ack_records_without_applied_still_read() {
        let record: AckRecord = serde_json::from_str(
            r#"{"version": 7, "error": "", "replica": "cp-1", "at": "2025-11-22T03:12:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(record.applied, 0);
        assert_eq!(record.version, 7);
    }
}
