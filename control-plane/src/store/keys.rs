//! The etcd key schema (docs/control-plane.md, "etcd keys"): how resources, their history and
//! the pods' acknowledgements are named under the configured prefix, and how keys read back
//! from etcd are parsed into the identities the rest of the control plane uses.

use std::fmt;

use bulwark_proto::policy::Kind;

/// How many history entries are kept per resource; the oldest beyond are deleted in the same
/// transaction that writes a new one.
pub const HISTORY_LIMIT: usize = 20;

/// The identity of a policy resource: `Kind/namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ResourceKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// Formats as `Resource::id()` does, so that errors and logs name a resource one way.
impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// The service a group of pods belongs to: pods of one service receive the same snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub service: String,
}

/// One pod (one sidecar stream).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub service: String,
    pub pod: String,
}

impl PodKey {
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
        }
    }
}

/// Formats as `namespace/service/pod`, the way status and logs name a pod.
impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.service, self.pod)
    }
}

/// A key under the prefix, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedKey {
    Policy(ResourceKey),
    /// A history entry; `seq` is the zero-padded number at the end of the key.
    History(ResourceKey, u64),
    Ack(PodKey),
    Health(PodKey),
    Status(ServiceKey),
    Override(OverrideTarget),
    /// Events are read with a range request, not kept in the index.
    Event,
    /// A role binding, by name.
    RoleBinding(String),
    /// Audit records are read with a range request, not kept in the index.
    Audit,
}

/// What an operator's override applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OverrideTarget {
    Mesh,
    Service(ServiceKey),
}

impl fmt::Display for OverrideTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverrideTarget::Mesh => f.write_str("*"),
            OverrideTarget::Service(s) => write!(f, "{s}"),
        }
    }
}

/// Formats as `namespace/service`.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service)
    }
}

/// A prefix that cannot hold Bulwark's keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("etcd prefix {prefix:?} {reason}")]
pub struct BadPrefix {
    prefix: String,
    reason: &'static str,
}

/// Why a name cannot be one segment of a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSegment {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 253 characters")]
    TooLong,
    #[error("must not contain '/', whitespace or control characters")]
    BadCharacter,
}

/// Checks that `s` can stand as one segment of a key (pod, service and namespace names come
/// from sidecars; resource names are validated more strictly by the policy model).
pub fn check_segment(s: &str) -> Result<(), BadSegment> {
    if s.is_empty() {
        Err(BadSegment::Empty)
    } else if s.len() > 253 {
        Err(BadSegment::TooLong)
    } else if s
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        Err(BadSegment::BadCharacter)
    } else {
        Ok(())
    }
}

/// The key schema under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Without a trailing slash, e.g. `/bulwark/v1`.
    prefix: String,
}

impl Keys {
    /// `prefix` must start with `/`; a trailing `/` is dropped.
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let trimmed = prefix.trim_end_matches('/');
        let bad = |reason| BadPrefix {
            prefix: prefix.to_string(),
            reason,
        };
        if trimmed.is_empty() {
            return Err(bad(
                "must name a directory other than the root, e.g. /bulwark/v1",
            ));
        }
        if !trimmed.starts_with('/') {
            return Err(bad("must start with '/'"));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("must not contain whitespace or control characters"));
        }
        Ok(Keys {
            prefix: trimmed.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Everything Bulwark stores: what a replica watches.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn policies(&self) -> String {
        format!("{}/policies/", self.prefix)
    }

    pub fn policy(&self, key: &ResourceKey) -> String {
        format!(
            "{}/policies/{}/{}/{}",
            self.prefix, key.kind, key.namespace, key.name
        )
    }

    pub fn all_history(&self) -> String {
        format!("{}/history/", self.prefix)
    }

    /// The history of one resource (ends with `/`, so `a` does not cover `ab`).
    pub fn history_of(&self, key: &ResourceKey) -> String {
        format!(
            "{}/history/{}/{}/{}/",
            self.prefix, key.kind, key.namespace, key.name
        )
    }

    /// One history entry; the number is zero-padded to 20 digits so that keys sort by it.
    pub fn history(&self, key: &ResourceKey, seq: u64) -> String {
        format!("{}{seq:020}", self.history_of(key))
    }

    pub fn acks(&self) -> String {
        format!("{}/acks/", self.prefix)
    }

    pub fn ack(&self, pod: &PodKey) -> String {
        format!(
            "{}/acks/{}/{}/{}",
            self.prefix, pod.namespace, pod.service, pod.pod
        )
    }

    pub fn health(&self) -> String {
        format!("{}/health/", self.prefix)
    }

    pub fn health_of(&self, pod: &PodKey) -> String {
        format!(
            "{}/health/{}/{}/{}",
            self.prefix, pod.namespace, pod.service, pod.pod
        )
    }

    pub fn status(&self, service: &ServiceKey) -> String {
        format!(
            "{}/status/{}/{}",
            self.prefix, service.namespace, service.service
        )
    }

    pub fn override_of(&self, target: &OverrideTarget) -> String {
        match target {
            OverrideTarget::Mesh => format!("{}/overrides/mesh", self.prefix),
            OverrideTarget::Service(s) => format!(
                "{}/overrides/service/{}/{}",
                self.prefix, s.namespace, s.service
            ),
        }
    }

    pub fn events(&self) -> String {
        format!("{}/events/", self.prefix)
    }

    /// One event: the time is zero-padded so that keys sort by it.
    pub fn event(&self, unix_ms: i64, seq: u64) -> String {
        format!("{}/events/{unix_ms:013}-{seq:010}", self.prefix)
    }

    pub fn role_bindings(&self) -> String {
        format!("{}/rbac/bindings/", self.prefix)
    }

    pub fn role_binding(&self, name: &str) -> String {
        format!("{}/rbac/bindings/{name}", self.prefix)
    }

    pub fn audit(&self) -> String {
        format!("{}/audit/", self.prefix)
    }

    /// One audit record: the time is zero-padded so that keys sort by it.
    pub fn audit_record(&self, unix_ms: i64, seq: u64) -> String {
        format!("{}/audit/{unix_ms:013}-{seq:010}", self.prefix)
    }

    /// The election key.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// Parses a key read from etcd; `None` for keys that are not Bulwark's (or not this
    /// release's), which callers skip.
    pub fn parse(&self, key: &str) -> Option<ParsedKey> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (family, rest) = rest.split_once('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        match (family, parts.as_slice()) {
            ("policies", [kind, namespace, name]) => Some(ParsedKey::Policy(ResourceKey::new(
                kind.parse().ok()?,
                *namespace,
                *name,
            ))),
            ("history", [kind, namespace, name, seq]) => {
                if seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some(ParsedKey::History(
                    ResourceKey::new(kind.parse().ok()?, *namespace, *name),
                    seq.parse().ok()?,
                ))
            }
            ("acks", [namespace, service, pod]) => Some(ParsedKey::Ack(PodKey {
                namespace: namespace.to_string(),
                service: service.to_string(),
                pod: pod.to_string(),
            })),
            ("health", [namespace, service, pod]) => Some(ParsedKey::Health(PodKey {
                namespace: namespace.to_string(),
                service: service.to_string(),
                pod: pod.to_string(),
            })),
            ("status", [namespace, service]) => Some(ParsedKey::Status(ServiceKey {
                namespace: namespace.to_string(),
                service: service.to_string(),
            })),
            ("overrides", ["mesh"]) => Some(ParsedKey::Override(OverrideTarget::Mesh)),
            ("overrides", ["service", namespace, service]) => {
                Some(ParsedKey::Override(OverrideTarget::Service(ServiceKey {
                    namespace: namespace.to_string(),
                    service: service.to_string(),
                })))
            }
            ("events", [_]) => Some(ParsedKey::Event),
            ("rbac", ["bindings", name]) => Some(ParsedKey::RoleBinding(name.to_string())),
            ("audit", [_]) => Some(ParsedKey::Audit),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> ResourceKey {
        ResourceKey::new(Kind::UpstreamPolicy, "payments", "echo")
    }

    fn pod() -> PodKey {
        PodKey {
            namespace: "shop".into(),
            service: "orders".into(),
            pod: "orders-7d9f-x2".into(),
        }
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = Keys::new("/bulwark/v1").unwrap();
        assert_eq!(keys.root(), "/bulwark/v1/");
        assert_eq!(keys.policies(), "/bulwark/v1/policies/");
        assert_eq!(
            keys.policy(&echo()),
            "/bulwark/v1/policies/UpstreamPolicy/payments/echo"
        );
        assert_eq!(
            keys.history(&echo(), 42),
            "/bulwark/v1/history/UpstreamPolicy/payments/echo/00000000000000000042"
        );
        assert_eq!(
            keys.history_of(&echo()),
            "/bulwark/v1/history/UpstreamPolicy/payments/echo/"
        );
        assert_eq!(keys.all_history(), "/bulwark/v1/history/");
        assert_eq!(keys.acks(), "/bulwark/v1/acks/");
        assert_eq!(
            keys.ack(&pod()),
            "/bulwark/v1/acks/shop/orders/orders-7d9f-x2"
        );
    }

    #[test]
    fn prefixes_are_normalized_or_refused() {
        assert_eq!(Keys::new("/x/").unwrap().policies(), "/x/policies/");
        assert_eq!(Keys::new("/x///").unwrap().prefix(), "/x");
        assert!(Keys::new("/").is_err());
        assert!(Keys::new("").is_err());
        assert_eq!(
            Keys::new("bulwark").unwrap_err().to_string(),
            "etcd prefix \"bulwark\" must start with '/'"
        );
        assert!(Keys::new("/a b").is_err());
    }

    #[test]
    fn written_keys_parse_back() {
        let keys = Keys::new("/bulwark/v1").unwrap();
        assert_eq!(
            keys.parse(&keys.policy(&echo())),
            Some(ParsedKey::Policy(echo()))
        );
        assert_eq!(
            keys.parse(&keys.history(&echo(), 7)),
            Some(ParsedKey::History(echo(), 7))
        );
        assert_eq!(keys.parse(&keys.ack(&pod())), Some(ParsedKey::Ack(pod())));
        let service = ResourceKey::new(Kind::ServicePolicy, "shop", "orders");
        assert_eq!(
            keys.parse(&keys.policy(&service)),
            Some(ParsedKey::Policy(service))
        );
    }

    #[test]
    fn foreign_and_malformed_keys_are_skipped() {
        let keys = Keys::new("/bulwark/v1").unwrap();
        for key in [
            "/other/policies/UpstreamPolicy/a/b",
            "/bulwark/v1",
            "/bulwark/v1/",
            "/bulwark/v10/policies/UpstreamPolicy/a/b",
            "/bulwark/v1/policies/Gateway/a/b",
            "/bulwark/v1/policies/UpstreamPolicy/a",
            "/bulwark/v1/policies/UpstreamPolicy/a/b/c",
            "/bulwark/v1/policies/UpstreamPolicy//b",
            "/bulwark/v1/history/UpstreamPolicy/a/b/12",
            "/bulwark/v1/history/UpstreamPolicy/a/b/0000000000000000001x",
            "/bulwark/v1/acks/a/b",
            "/bulwark/v1/leader",
            "/bulwark/v1/status/a",
            "/bulwark/v1/health/a/b",
            "/bulwark/v1/overrides/service/a",
            "/bulwark/v1/overrides/everything",
        ] {
            assert_eq!(keys.parse(key), None, "{key}");
        }
    }

    #[test]
    fn degradation_keys_parse_back() {
        let keys = Keys::new("/bulwark/v1").unwrap();
        let service = ServiceKey {
            namespace: "mrg".into(),
            service: "orders".into(),
        };
        assert_eq!(keys.status(&service), "/bulwark/v1/status/mrg/orders");
        assert_eq!(
            keys.parse(&keys.status(&service)),
            Some(ParsedKey::Status(service.clone()))
        );
        assert_eq!(
            keys.parse(&keys.health_of(&pod())),
            Some(ParsedKey::Health(pod()))
        );
        let target = OverrideTarget::Service(service);
        assert_eq!(
            keys.override_of(&target),
            "/bulwark/v1/overrides/service/mrg/orders"
        );
        assert_eq!(
            keys.parse(&keys.override_of(&target)),
            Some(ParsedKey::Override(target))
        );
        assert_eq!(
            keys.parse(&keys.override_of(&OverrideTarget::Mesh)),
            Some(ParsedKey::Override(OverrideTarget::Mesh))
        );
        assert_eq!(
            keys.event(1_700_000_000_000, 7),
            "/bulwark/v1/events/1700000000000-0000000007"
        );
        assert_eq!(keys.parse(&keys.event(1, 2)), Some(ParsedKey::Event));
        assert_eq!(keys.leader(), "/bulwark/v1/leader");
    }

    #[test]
    fn history_keys_sort_by_number() {
        let keys = Keys::new("/p").unwrap();
        let mut written: Vec<String> = [9u64, 10, 100, 2].map(|n| keys.history(&echo(), n)).into();
        written.sort();
        let order: Vec<u64> = written
            .iter()
            .map(|k| match keys.parse(k) {
                Some(ParsedKey::History(_, n)) => n,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(order, [2, 9, 10, 100]);
    }

    #[test]
    fn segments_from_sidecars_are_checked() {
        assert_eq!(check_segment("orders-7d9f.x2"), Ok(()));
        assert_eq!(check_segment(""), Err(BadSegment::Empty));
        assert_eq!(check_segment("a/b"), Err(BadSegment::BadCharacter));
        assert_eq!(check_segment("a b"), Err(BadSegment::BadCharacter));
        assert_eq!(check_segment(&"a".repeat(254)), Err(BadSegment::TooLong));
    }

    #[test]
    fn ids_read_like_resource_ids() {
        assert_eq!(echo().to_string(), "UpstreamPolicy/payments/echo");
        assert_eq!(pod().to_string(), "shop/orders/orders-7d9f-x2");
    }
}
