//! The control plane's operator REST API as `meshctl` sees it (docs/control-plane.md): the
//! JSON bodies, the error body, and the request paths.
//!
//! Answers are read leniently — unknown fields are ignored and versions may be numbers or
//! strings — so that a newer control plane does not break an older `meshctl`.

use std::fmt;

use bulwark_proto::policy::{Kind, Resource};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::errors::CliError;

// ───────────────────────────── requests ─────────────────────────────

/// `POST /v1/apply`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest<'a> {
    pub resources: &'a [Resource],
    pub dry_run: bool,
    pub by: &'a str,
}

/// `POST /v1/{kind}/{namespace}/{name}/rollback`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRequest<'a> {
    pub to_revision: u64,
    pub by: &'a str,
}

/// `PUT /v1/degrade/{namespace}/{service}` and `PUT /v1/degrade/mesh`.
#[derive(Debug, Serialize)]
pub struct DegradeRequest<'a> {
    pub level: Level,
    /// As the user wrote it (`15m`), already checked to lie in (0, 24h].
    pub ttl: &'a str,
    pub reason: &'a str,
    pub by: &'a str,
}

// ───────────────────────────── answers ─────────────────────────────

/// An etcd revision or a `resourceVersion`: the contract does not fix whether it travels as a
/// JSON number or a string, so both are accepted and shown as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawVersion")]
pub struct Version(pub String);

#[derive(Deserialize)]
#[serde(untagged)]
enum RawVersion {
    Number(u64),
    Text(String),
}

impl From<RawVersion> for Version {
    fn from(raw: RawVersion) -> Self {
        match raw {
            RawVersion::Number(n) => Version(n.to_string()),
            RawVersion::Text(s) => Version(s),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer to apply and to rollback.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    pub results: Vec<ApplyResult>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// `Kind/namespace/name`.
    pub id: String,
    /// `created`, `updated` or `unchanged`.
    pub action: String,
    #[serde(default)]
    pub resource_version: Option<Version>,
    /// For a dry run, what would change: a text diff (or any JSON the server chose).
    #[serde(default)]
    pub diff: Option<Value>,
}

/// `GET /v1/{kind}`. Items stay JSON so `-o json|yaml` show exactly what the server holds.
#[derive(Debug, Deserialize)]
pub struct List {
    pub items: Vec<Value>,
}

/// `DELETE /v1/{kind}/{namespace}/{name}`.
#[derive(Debug, Deserialize)]
pub struct Deleted {
    pub id: String,
    #[serde(default)]
    pub revision: Option<Version>,
}

/// `GET /v1/{kind}/{namespace}/{name}/history`, newest first.
#[derive(Debug, Deserialize)]
pub struct History {
    pub items: Vec<HistoryEntry>,
}

#[derive(Debug, Deserialize)]
pub struct HistoryEntry {
    pub revision: Version,
    pub op: String,
    #[serde(default)]
    pub by: Option<String>,
    /// A timestamp, shown as the server wrote it (the contract does not fix its format).
    #[serde(default)]
    pub at: Option<Value>,
}

/// `GET /v1/status`.
#[derive(Debug, Deserialize)]
pub struct Status {
    pub resources: Vec<ResourceStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    pub id: String,
    #[serde(default)]
    pub resource_version: Option<Version>,
    #[serde(default)]
    pub pods: Pods,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pods {
    pub applied: u64,
    pub total: u64,
    pub nacks: Vec<Nack>,
}

/// A pod that refused a snapshot and kept its previous policies.
#[derive(Debug, Deserialize)]
pub struct Nack {
    pub pod: String,
    #[serde(default)]
    pub version: Option<Version>,
    #[serde(default)]
    pub error: String,
}

/// `GET /v1/levels`: every service with a ServicePolicy. Capabilities, `since` and the
/// per-dependency detail are not shown by `meshctl` and so not read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Levels {
    /// Unix milliseconds of the elected replica's last computation; 0 when none yet.
    #[serde(default)]
    pub computed_at: i64,
    pub services: Vec<ServiceLevel>,
}

/// One service's degradation. Levels stay text so that a level added later still shows.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLevel {
    pub namespace: String,
    pub service: String,
    /// The level in force (an override's, or the computed one once `lowerAfter` has passed).
    pub level: String,
    /// The level the health rules give right now.
    #[serde(default)]
    pub computed: String,
    #[serde(default)]
    pub reasons: Vec<String>,
    /// `SEVERE: midtrans unhealthy (...), bbd unhealthy (...)`.
    #[serde(default)]
    pub summary: String,
    /// Dependencies judged unhealthy, in the ServicePolicy's order.
    #[serde(default)]
    pub unhealthy: Vec<String>,
    #[serde(default)]
    pub reporting_pods: u64,
    #[serde(default)]
    pub unready_pods: Vec<String>,
    #[serde(default, rename = "override")]
    pub forced: Option<Override>,
}

/// A level forced by an operator until `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Override {
    pub level: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub by: String,
    /// Unix milliseconds.
    pub expires: i64,
    /// Forced for the whole mesh rather than for this service alone.
    #[serde(default)]
    pub mesh: bool,
}

/// `GET /v1/pods`.
#[derive(Debug, Deserialize)]
pub struct PodList {
    pub pods: Vec<Pod>,
}

/// A pod connected to the control plane.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Pod {
    pub namespace: String,
    pub service: String,
    pub pod: String,
    pub applied: i64,
    /// `None`: no workload identity.
    pub identity: Option<PodIdentity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodIdentity {
    pub spiffe_id: String,
    /// RFC 3339; empty without a certificate.
    pub expires: String,
    pub expires_unix_ms: i64,
}

/// `GET /v1/events`, newest first.
#[derive(Debug, Deserialize)]
pub struct Events {
    pub events: Vec<Event>,
}

/// A level change, breaker transition, override, policy change (apply, rollback, delete) or
/// alert sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Event {
    /// RFC 3339 UTC, as the server wrote it.
    pub at: String,
    /// `namespace/service`, or `*` for the mesh-wide override.
    pub service: String,
    /// `level`, `breaker`, `override`, `apply`, `rollback`, `delete` or `alert`.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub reasons: Vec<String>,
    /// Who, for overrides; empty otherwise.
    pub by: String,
    /// The one-line text alerts carry.
    pub text: String,
}

/// The answer to `PUT /v1/degrade/...`.
#[derive(Debug, Deserialize)]
pub struct Degraded {
    #[serde(rename = "override")]
    pub forced: Override,
}

/// The answer to `DELETE /v1/degrade/...`.
#[derive(Debug, Deserialize)]
pub struct Cleared {
    pub cleared: bool,
}

// ───────────────────────────── kinds and paths ─────────────────────────────

/// Parses the KIND argument: `upstreampolicy`, `upstreampolicies`, `up`, `servicepolicy`,
/// `servicepolicies` or `svc`, in any case.
pub fn parse_kind(text: &str) -> Result<Kind, CliError> {
    match text.to_ascii_lowercase().as_str() {
        "upstreampolicy" | "upstreampolicies" | "up" => Ok(Kind::UpstreamPolicy),
        "servicepolicy" | "servicepolicies" | "svc" => Ok(Kind::ServicePolicy),
        _ => Err(CliError::Usage(format!(
            "unknown kind {text:?}; expected upstreampolicy (up) or servicepolicy (svc)"
        ))),
    }
}

pub use bulwark_proto::level::Level;

/// Parses `--level` in any case: `emergency`, `Severe`, `DEGRADED`, `normal`.
pub fn parse_level(text: &str) -> Result<Level, CliError> {
    Level::ALL
        .into_iter()
        .find(|level| level.as_str().eq_ignore_ascii_case(text.trim()))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "unknown level {text:?}; expected NORMAL, DEGRADED, SEVERE or EMERGENCY"
            ))
        })
}

/// What a degradation command is about: one service, or the whole mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Service { namespace: String, name: String },
    Mesh,
}

impl Target {
    /// `namespace/service` or `*`, as the contract names services in events.
    pub fn id(&self) -> String {
        match self {
            Target::Service { namespace, name } => format!("{namespace}/{name}"),
            Target::Mesh => "*".to_string(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Service { namespace, name } => write!(f, "{namespace}/{name}"),
            Target::Mesh => f.write_str("mesh"),
        }
    }
}

/// Parses a service argument: `NAME` (in `namespace`), `NAMESPACE/NAME` as `status` and
/// `events` print it, or `*` for the whole mesh.
pub fn parse_target(text: &str, namespace: &str) -> Result<Target, CliError> {
    let text = text.trim();
    if text == "*" {
        return Ok(Target::Mesh);
    }
    let (namespace, name) = text.split_once('/').unwrap_or((namespace, text));
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(CliError::Usage(format!(
            "invalid service {text:?}; expected NAME, NAMESPACE/NAME or *"
        )));
    }
    Ok(Target::Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// `/v1/degrade/{namespace}/{service}` or `/v1/degrade/mesh`.
pub fn degrade_path(target: &Target) -> String {
    match target {
        Target::Service { namespace, name } => {
            format!(
                "/v1/degrade/{}/{}",
                encode(namespace, false),
                encode(name, false)
            )
        }
        Target::Mesh => "/v1/degrade/mesh".to_string(),
    }
}

/// `/v1/{kind}`; the kind travels as it is spelled in resources and etcd keys.
pub fn kind_path(kind: Kind) -> String {
    format!("/v1/{}", kind.as_str())
}

/// `/v1/{kind}/{namespace}/{name}`.
pub fn resource_path(kind: Kind, namespace: &str, name: &str) -> String {
    format!(
        "{}/{}/{}",
        kind_path(kind),
        encode(namespace, false),
        encode(name, false)
    )
}

/// `?k=v&k2=v2` from the pairs given (empty when there are none).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let joined: Vec<String> = pairs
        .iter()
        // `=` and `,` stay readable in values: selectors are `k=v,k2=v2` in the contract.
        .map(|(k, v)| format!("{}={}", encode(k, false), encode(v, true)))
        .collect();
    if joined.is_empty() {
        String::new()
    } else {
        format!("?{}", joined.join("&"))
    }
}

/// One path segment, percent-encoded.
pub fn encode_segment(text: &str) -> String {
    encode(text, false)
}

/// Everything but RFC 3986's unreserved characters (letters, digits, `-._~`).
const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// [`RESERVED`] but `=` and `,`, for selector values.
const RESERVED_IN_SELECTOR: &percent_encoding::AsciiSet = &RESERVED.remove(b'=').remove(b',');

/// Percent-encodes everything but RFC 3986 unreserved characters, and in a `selector` value
/// `=` and `,` too (selectors are `k=v,k2=v2` in the contract: they stay readable).
fn encode(text: &str, selector: bool) -> String {
    let set = if selector {
        RESERVED_IN_SELECTOR
    } else {
        RESERVED
    };
    percent_encoding::utf8_percent_encode(text, set).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_accept_aliases_in_any_case() {
        for text in ["UpstreamPolicy", "upstreampolicies", "UP"] {
            assert_eq!(parse_kind(text).ok(), Some(Kind::UpstreamPolicy));
        }
        for text in ["servicepolicy", "ServicePolicies", "svc"] {
            assert_eq!(parse_kind(text).ok(), Some(Kind::ServicePolicy));
        }
        assert!(matches!(parse_kind("gateway"), Err(CliError::Usage(_))));
    }

    #[test]
    fn paths_and_queries_are_encoded() {
        assert_eq!(
            resource_path(Kind::ServicePolicy, "pay ments", "a/b"),
            "/v1/ServicePolicy/pay%20ments/a%2Fb"
        );
        assert_eq!(
            query(&[("namespace", "payments"), ("selector", "team=pay,tier=1&x")]),
            "?namespace=payments&selector=team=pay,tier=1%26x"
        );
        assert_eq!(query(&[]), "");
    }

    #[test]
    fn services_are_named_alone_with_their_namespace_or_as_the_mesh() {
        let service = |namespace: &str, name: &str| Target::Service {
            namespace: namespace.into(),
            name: name.into(),
        };
        assert_eq!(
            parse_target("checkout", "payments").ok(),
            Some(service("payments", "checkout"))
        );
        assert_eq!(
            parse_target("mrg/order-orchestrator", "default").ok(),
            Some(service("mrg", "order-orchestrator"))
        );
        assert_eq!(parse_target("*", "default").ok(), Some(Target::Mesh));
        for bad in ["", "/x", "mrg/", "a/b/c"] {
            assert!(
                matches!(parse_target(bad, "default"), Err(CliError::Usage(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            degrade_path(&service("pay ments", "a.b")),
            "/v1/degrade/pay%20ments/a.b"
        );
        assert_eq!(degrade_path(&Target::Mesh), "/v1/degrade/mesh");
        assert_eq!(service("mrg", "x").to_string(), "mrg/x");
        assert_eq!(Target::Mesh.to_string(), "mesh");
        assert_eq!(Target::Mesh.id(), "*");
    }

    #[test]
    fn levels_and_events_tolerate_missing_optional_fields() {
        let levels: Levels = serde_json::from_str(
            r#"{"services": [{"namespace": "mrg", "service": "a", "level": "DEGRADED", "future": 1}]}"#,
        )
        .expect("levels parse");
        assert_eq!(levels.computed_at, 0);
        let a = &levels.services[0];
        assert_eq!((a.level.as_str(), a.computed.as_str()), ("DEGRADED", ""));
        assert_eq!(a.forced, None);
        assert!(a.unhealthy.is_empty() && a.unready_pods.is_empty());

        let events: Events = serde_json::from_str(
            r#"{"events": [{"service": "*", "kind": "override", "by": "bob"}]}"#,
        )
        .expect("events parse");
        assert_eq!(events.events[0].service, "*");
        assert_eq!(events.events[0].at, "");
    }

    #[test]
    fn versions_may_be_numbers_or_strings() {
        let r: ApplyResult =
            serde_json::from_str(r#"{"id":"a","action":"created","resourceVersion":41}"#)
                .expect("number");
        assert_eq!(r.resource_version, Some(Version("41".into())));
        let r: ApplyResult =
            serde_json::from_str(r#"{"id":"a","action":"created","resourceVersion":"41"}"#)
                .expect("string");
        assert_eq!(r.resource_version, Some(Version("41".into())));
    }
}
