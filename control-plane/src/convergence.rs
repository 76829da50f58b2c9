//! Convergence: from the pods' acks, how far each resource has spread — per resource, the
//! pods that applied a snapshot at or after the resource's version, out of the pods it
//! concerns (every pod for an UpstreamPolicy, the service's pods for a ServicePolicy), and the
//! pods that refused such a snapshot (NACK) and do not run the resource's version, with their
//! reasons.

use std::collections::BTreeMap;

use bulwark_proto::policy::Kind;
use serde::Serialize;

use crate::index::StoredResource;
use crate::store::keys::PodKey;
use crate::store::values::AckRecord;

/// The status of every resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The etcd revision the index reflects.
    pub revision: i64,
    pub resources: Vec<ResourceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    pub id: String,
    pub resource_version: i64,
    pub pods: PodCounts,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodCounts {
    /// Pods running a snapshot that includes this version of the resource.
    pub applied: usize,
    /// Pods the resource concerns (connected to some replica).
    pub total: usize,
    pub nacks: Vec<Nack>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    /// `namespace/service/pod`.
    pub pod: String,
    pub version: i64,
    pub error: String,
}

/// Computes the status of `resources` from `acks`.
pub fn compute<'a>(
    revision: i64,
    resources: impl Iterator<Item = &'a StoredResource>,
    acks: &BTreeMap<PodKey, AckRecord>,
) -> Status {
    let resources = resources
        .map(|r| {
            let mut pods = PodCounts::default();
            let concerned = acks.iter().filter(|(pod, _)| match r.key.kind {
                Kind::UpstreamPolicy => true,
                Kind::ServicePolicy => {
                    pod.namespace == r.key.namespace && pod.service == r.key.name
                }
            });
            for (pod, ack) in concerned {
                pods.total += 1;
                // Snapshot versions are revisions: a snapshot at or after the resource's
                // revision carries this version of it (or a newer one).
                if ack.applied >= r.mod_revision {
                    pods.applied += 1;
                }
                // A refusal of a snapshot carrying this version, by a pod that does not run
                // it (a pod that runs it refused something else).
                if !ack.error.is_empty()
                    && ack.version >= r.mod_revision
                    && ack.applied < r.mod_revision
                {
                    pods.nacks.push(Nack {
                        pod: pod.to_string(),
                        version: ack.version,
                        error: ack.error.clone(),
                    });
                }
            }
            ResourceStatus {
                id: r.key.to_string(),
                resource_version: r.mod_revision,
                pods,
            }
        })
        .collect();
    Status {
        revision,
        resources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::ResourceKey;
    use bulwark_proto::policy::parse_json;

    fn stored(kind: Kind, ns: &str, name: &str, revision: i64) -> StoredResource {
        let json = match kind {
            Kind::UpstreamPolicy => format!(
                r#"{{"apiVersion":"bulwark/v1","kind":"UpstreamPolicy","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"endpoints":{{"static":["127.0.0.1:1"]}}}}}}"#
            ),
            Kind::ServicePolicy => format!(
                r#"{{"apiVersion":"bulwark/v1","kind":"ServicePolicy","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{}}}}"#
            ),
        };
        let resource = parse_json(&json).unwrap().remove(0);
        StoredResource::new(ResourceKey::new(kind, ns, name), resource, revision)
    }

    fn pod(ns: &str, service: &str, pod: &str) -> PodKey {
        PodKey {
            namespace: ns.into(),
            service: service.into(),
            pod: pod.into(),
        }
    }

    fn ack(version: i64, applied: i64, error: &str) -> AckRecord {
        AckRecord {
            version,
            error: error.into(),
            replica: "r1".into(),
            at: "t".into(),
            applied,
        }
    }

    #[test]
    fn counts_pods_at_or_past_each_version() {
        let resources = [
            stored(Kind::UpstreamPolicy, "default", "payments", 10),
            stored(Kind::ServicePolicy, "shop", "orders", 7),
        ];
        let acks = BTreeMap::from([
            (pod("shop", "orders", "a"), ack(12, 12, "")),
            (pod("shop", "orders", "b"), ack(9, 9, "")),
            (pod("shop", "cart", "c"), ack(10, 10, "")),
        ]);
        let status = compute(12, resources.iter(), &acks);
        assert_eq!(status.revision, 12);
        let counts: Vec<(String, usize, usize)> = status
            .resources
            .iter()
            .map(|r| (r.id.clone(), r.pods.applied, r.pods.total))
            .collect();
        assert_eq!(
            counts,
            [
                ("UpstreamPolicy/default/payments".to_string(), 2, 3),
                ("ServicePolicy/shop/orders".to_string(), 2, 2),
            ]
        );
    }

    #[test]
    fn nacks_list_the_pods_that_refused_the_version() {
        let resources = [stored(Kind::UpstreamPolicy, "default", "payments", 10)];
        let acks = BTreeMap::from([
            // Refused version 11 and stayed on 9.
            (
                pod("shop", "orders", "a"),
                ack(11, 9, "spec.retry: unknown field"),
            ),
            // An old NACK of a version before this resource's: not about it.
            (pod("shop", "orders", "b"), ack(8, 7, "old problem")),
            // Runs this version; what it refused came later.
            (pod("shop", "orders", "c"), ack(12, 10, "a later problem")),
        ]);
        let status = compute(11, resources.iter(), &acks);
        let pods = &status.resources[0].pods;
        assert_eq!(pods.applied, 1);
        assert_eq!(pods.total, 3);
        assert_eq!(
            pods.nacks,
            [Nack {
                pod: "shop/orders/a".into(),
                version: 11,
                error: "spec.retry: unknown field".into()
            }]
        );
    }

    #[test]
    fn serializes_as_documented() {
        let resources = [stored(Kind::UpstreamPolicy, "default", "payments", 10)];
        let acks = BTreeMap::from([(pod("shop", "orders", "a"), ack(11, 9, "bad"))]);
        let json = serde_json::to_value(compute(11, resources.iter(), &acks)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"revision": 11, "resources": [{
                "id": "UpstreamPolicy/default/payments", "resourceVersion": 10,
                "pods": {"applied": 0, "total": 1, "nacks": [
                    {"pod": "shop/orders/a", "version": 11, "error": "bad"}]}}]})
        );
    }
}
