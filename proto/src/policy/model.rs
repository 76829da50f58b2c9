//! The two resource kinds as serde types, exactly as users write them in YAML or JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::defaults;
use super::units::{Duration, Percent};

/// The only `apiVersion` this release understands.
pub const API_VERSION: &str = "bulwark/v1";

/// One policy resource of either kind.
// Not boxed: resources are parsed a handful at a time, and every consumer matches on the
// plain variants.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind")]
pub enum Resource {
    UpstreamPolicy(UpstreamPolicy),
    ServicePolicy(ServicePolicy),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::UpstreamPolicy(_) => Kind::UpstreamPolicy,
            Resource::ServicePolicy(_) => Kind::ServicePolicy,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::UpstreamPolicy(p) => &p.metadata,
            Resource::ServicePolicy(p) => &p.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut Metadata {
        match self {
            Resource::UpstreamPolicy(p) => &mut p.metadata,
            Resource::ServicePolicy(p) => &mut p.metadata,
        }
    }

    /// `Kind/namespace/name`, the way errors and logs name a resource.
    pub fn id(&self) -> String {
        let m = self.metadata();
        format!("{}/{}/{}", self.kind(), m.namespace, m.name)
    }
}

/// The resource kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Kind {
    UpstreamPolicy,
    ServicePolicy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UpstreamPolicy => "UpstreamPolicy",
            Kind::ServicePolicy => "ServicePolicy",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "UpstreamPolicy" => Ok(Kind::UpstreamPolicy),
            "ServicePolicy" => Ok(Kind::ServicePolicy),
            other => Err(format!(
                "unknown kind {other:?}, expected UpstreamPolicy or ServicePolicy"
            )),
        }
    }
}

fn default_namespace() -> String {
    defaults::NAMESPACE.to_string()
}

/// Name, namespace and labels of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// A DNS-1123 label: at most 63 lowercase letters, digits or `-`, starting and ending with
    /// a letter or digit.
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub name: String,
    /// A DNS-1123 label, like the name.
    #[serde(default = "default_namespace")]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the control plane (the etcd revision of the stored resource); used for
    /// optimistic concurrency on apply. Ignored by the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(pattern(r"^[0-9]+$")))]
    pub resource_version: Option<String>,
}

impl Metadata {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Metadata {
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            resource_version: None,
        }
    }
}

// ───────────────────────────── UpstreamPolicy ─────────────────────────────

/// How every caller in the mesh talks to one upstream service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamPolicy {
    pub api_version: String,
    pub metadata: Metadata,
    pub spec: UpstreamSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamSpec {
    pub endpoints: Endpoints,
    #[serde(default)]
    pub protocol: Protocol,
    /// Rewrite `Host` / `:authority` to the endpoint's address (default: keep the caller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<bool>,
    /// Let `CONNECT name:port` requests tunnel TCP to this upstream's endpoints (default: no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_connect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// A concurrency limit learned from latency, with a queue served by criticality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<AdaptiveConcurrency>,
    /// The criticality of calls that name none (a tier name; default `sheddable-plus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criticality: Option<String>,
    /// Calls this sidecar sends the upstream at most, per time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Client-side throttling: calls refused here while the upstream refuses many for overload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttling: Option<Throttling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// TLS to the endpoints: mutual TLS to meshed sidecars, TLS origination to external APIs,
    /// or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// The namespaces whose sidecars receive this policy: namespace names, `.` (its own) or
    /// `*` (every namespace). Empty: every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

impl UpstreamSpec {
    /// Whether sidecars of `namespace` receive the policy, which lives in `own`.
    pub fn exported_to(&self, own: &str, namespace: &str) -> bool {
        own == namespace
            || self.export_to.is_empty()
            || self
                .export_to
                .iter()
                .any(|n| n == "*" || n == namespace || (n == "." && own == namespace))
    }
}

/// How the sidecar speaks TLS to an upstream's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTls {
    pub mode: TlsMode,
    /// `mesh`: the SPIFFE ID the endpoints must present (default: the upstream's service
    /// account as the control plane knows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_identity: Option<String>,
    /// `simple`: the server name sent and verified (default: the `dns` endpoint's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// `simple`: a PEM file of the CA certificates to trust instead of the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// TLS towards an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Mutual TLS with the workload certificate, to another sidecar.
    #[default]
    Mesh,
    /// TLS origination to a server outside the mesh, verified by its host name.
    Simple,
    /// Plaintext.
    Disable,
}

/// Where the upstream's endpoints come from: exactly one of `dns` or `static`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoints {
    /// `host:port`, re-resolved every `dnsRefresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// Fixed `ip:port` addresses.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_addrs: Option<Vec<String>>,
    /// How often a `dns` name is resolved again (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh: Option<Duration>,
}

/// The protocol spoken to the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The protocol the caller used (HTTP/1.1 in, HTTP/1.1 out; HTTP/2 in, HTTP/2 out).
    #[default]
    Auto,
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// gRPC: HTTP/2 with prior knowledge, gRPC status codes in errors.
    Grpc,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_elapsed: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_idempotent: Option<NonIdempotent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_retry_after: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_buffer_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Percent>,
}

/// When a non-idempotent request (POST, PATCH, gRPC by default) may be retried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum NonIdempotent {
    #[default]
    Never,
    WithIdempotencyKey,
    Always,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call: Option<SlowCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_for: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_on: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlowCall {
    pub duration: Duration,
    pub rate: Percent,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
}

/// A local rate limit: a token bucket refilled with `requests` every `per`, `burst` deep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `requests` and `burst` are for all pods of the service together, split evenly across
    /// the pods the control plane counts as reporting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_wide: Option<bool>,
}

/// A rate limit per caller of the app: [`RateLimit`]'s fields, written out (serde's `flatten`
/// would lose `deny_unknown_fields`), and how callers are told apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundRateLimit {
    pub requests: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What a caller is: `identity` (default), `client-ip` or `header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<RateLimitKey>,
    /// With `by: header`: the header whose value names the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// `requests` and `burst` are for each caller across all pods of the service, split
    /// evenly across the pods the control plane counts as reporting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_wide: Option<bool>,
}

/// What an inbound rate limit tells callers apart by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RateLimitKey {
    /// The verified SPIFFE ID; callers without one by their IP address.
    #[default]
    Identity,
    ClientIp,
    /// A header's value; requests without it by their IP address.
    Header,
}

/// Google's adaptive throttling: a call is refused here with probability
/// `max(0, (requests − multiplier × accepts) / (requests + 1))` over the last `window`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Throttling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}

/// An adaptive concurrency limit: how many requests may be in flight, learned from their
/// latency, and a queue in front of it served (and shed) by criticality.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdaptiveConcurrency {
    /// The limit never goes below this…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_limit: Option<u32>,
    /// …nor above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_limit: Option<u32>,
    /// The limit until the first measurements move it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_limit: Option<u32>,
    /// How much slower than unqueued requests the median may be before the limit shrinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Percent>,
    /// How often the limit moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_interval: Option<Duration>,
    /// How often the latency of unqueued requests is measured again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_interval: Option<Duration>,
    /// Requests in flight while it is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_concurrency: Option<u32>,
    /// Requests it is measured over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_samples: Option<u32>,
    /// Requests that may wait for the limit; more shed the least critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
    /// How long a request waits at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_wait: Option<Duration>,
    /// How long a sheddable request waits at most once the queue has not emptied for an update
    /// interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standing_queue_wait: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fallback {
    /// Other UpstreamPolicies (same namespace, or `name.namespace`), tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<StaticResponse>,
}

/// The answer given when the upstream and every failover target failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_message: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A per-method override; the most specific matching route wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Marks a gRPC method (or HTTP route) idempotent, so it may be retried like a GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// The criticality of the route's calls that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criticality: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// `/package.Service/Method`, or `/package.Service/` for every method of a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

// ───────────────────────────── ServicePolicy ─────────────────────────────

/// The service a sidecar sits beside: its app, its dependencies and how health maps to
/// degradation levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePolicy {
    pub api_version: String,
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<App>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dependencies: BTreeMap<String, Dependency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_when: Option<UnhealthyWhen>,
    /// Keys are level names (`DEGRADED`, `SEVERE`, `EMERGENCY`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub levels: BTreeMap<String, LevelRule>,
    /// Capability name → expression over dependency health (`all(a, b)`, `any(...)`, `not(...)`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, String>,
    /// Level name → what sidecars do at that level.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actions: BTreeMap<String, LevelActions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Inbound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Alerts>,
    /// How long a lower level must keep holding before the service is moved down to it
    /// (raising is immediate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_after: Option<Duration>,
    /// The most of the service's pods that degradation may take out of rotation at once
    /// (`ready: false`, a critical dependency down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unready_percent: Option<Percent>,
    /// The Kubernetes service account the service's pods run as (default `default`): the
    /// identity its callers expect with `tls.mode: mesh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct App {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP path probed with GET; 2xx is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// gRPC health-checking protocol service name (`""` for the server as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dependency {
    #[serde(default)]
    pub critical: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnhealthyWhen {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_open_pods: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_below: Option<Percent>,
    /// Unhealthy when at least this share of the reporting pods saw the dependency refuse
    /// requests for overload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overloaded_pods: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
}

/// One level's rule; several keys are OR-ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LevelRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_dependencies: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_unhealthy: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LevelActions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shed_priorities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inbound {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shed_retry_after: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Whether callers must use mutual TLS (default: the sidecar's `--inbound-mtls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsMode>,
    /// Which callers may call the service; without it, every caller may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// The header (gRPC metadata key) requests name their criticality in
    /// (default `x-bulwark-criticality`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criticality_header: Option<String>,
    /// The criticality of inbound requests that name none (default `sheddable-plus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criticality: Option<String>,
    /// Per-route criticality of inbound requests that name none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<InboundRoute>,
    /// An adaptive concurrency limit in front of the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<AdaptiveConcurrency>,
    /// Requests each caller may make, per time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<InboundRateLimit>,
}

/// The criticality of the inbound requests a route matches, when they name none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    pub criticality: String,
}

/// What the inbound side accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Mutual TLS only; plaintext is refused (kubelet probes excepted).
    Strict,
    /// Mutual TLS and plaintext, for migration.
    #[default]
    Permissive,
    /// Plaintext only; TLS is passed to the app untouched.
    Disable,
}

/// Inbound authorization: a request is allowed when a rule matches it, else denied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    /// Log and count what would be denied, and allow it.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
}

/// One allow rule: callers (`from`) and requests (`to`); an omitted side matches everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Callers>,
    /// Any of these requests (the same matches as `routes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RouteMatch>,
}

/// Verified callers: any listed identity, service account or namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Callers {
    /// SPIFFE IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// `namespace/service-account`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Alerts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Alerts sent for this service per minute at most; more are dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_minute: Option<u32>,
}
