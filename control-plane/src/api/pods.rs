//! `GET /v1/pods`: every pod connected to the control plane (from its stream's acknowledgement
//! record), the snapshot version it runs and — from its last health report — the workload
//! identity it holds and when its certificate expires.

use serde::Serialize;

use super::ops::{OpError, Ops, Served};
use crate::auth::Actor;
use crate::auth::rbac::{Resource, Scope, Verb};
use crate::store::keys::PodKey;

/// `GET /v1/pods`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodsResponse {
    pub pods: Vec<PodInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub namespace: String,
    /// Empty for a pod whose sidecar names no service.
    pub service: String,
    pub pod: String,
    /// The snapshot version it applied last.
    pub applied: i64,
    /// The replica holding its stream.
    pub replica: String,
    /// `None`: the pod runs without a workload identity (or has not reported yet).
    pub identity: Option<PodIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentity {
    pub spiffe_id: String,
    /// RFC 3339; empty while the pod holds no certificate.
    pub expires: String,
    /// Unix milliseconds; 0 while the pod holds no certificate.
    pub expires_unix_ms: i64,
}

impl Ops {
    /// The connected pods, of one namespace or all, sorted by namespace, service and name.
    pub fn pods(
        &self,
        actor: &Actor,
        namespace: Option<&str>,
    ) -> Result<Served<PodsResponse>, OpError> {
        if let Some(ns) = namespace {
            self.authorize(actor, Verb::List, Resource::Pods, Scope::Namespace(ns))?;
        }
        let perms = self.permissions(actor);
        let all = perms.may(Verb::List, Resource::Pods, Scope::Cluster);
        let index = self.index.lock();
        let state = self.readable(&index.state())?;
        let pods = index
            .acks()
            .iter()
            .filter(|(key, _)| namespace.is_none_or(|ns| key.namespace == ns))
            .filter(|(key, _)| {
                all || namespace.is_some()
                    || perms.may(Verb::List, Resource::Pods, Scope::Namespace(&key.namespace))
            })
            .map(|(key, ack)| PodInfo {
                namespace: key.namespace.clone(),
                service: key.service.clone(),
                pod: key.pod.clone(),
                applied: ack
                    .applied
                    .max(if ack.error.is_empty() { ack.version } else { 0 }),
                replica: ack.replica.clone(),
                identity: identity_of(&index, key),
            })
            .collect();
        Ok(Served {
            value: PodsResponse { pods },
            stale: state.stale,
        })
    }
}

fn identity_of(index: &crate::index::Index, pod: &PodKey) -> Option<PodIdentity> {
    let id = index.health().get(pod)?.identity.as_ref()?;
    Some(PodIdentity {
        spiffe_id: id.spiffe_id.clone(),
        expires: if id.not_after > 0 {
            bulwark_proto::time::rfc3339_seconds(id.not_after)
        } else {
            String::new()
        },
        expires_unix_ms: id.not_after,
    })
}
