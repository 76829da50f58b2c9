//! Every metric of the sidecar, registered in one place. Labels come from configuration
//! (direction, upstream name, listener) and from small closed sets (protocol, status class) —
//! never from raw request data. Per-upstream handles are resolved once, so the hot path only
//! touches atomics.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use bulwark_proto::level::Level;
use bulwark_proto::policy::GrpcCode;

use crate::overload::Refusal;
use crate::priority::{Criticality, Priority};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: &'static str,
    pub upstream: String,
    /// The upstream's namespace (empty: matched none).
    pub namespace: String,
    pub protocol: &'static str,
    pub status_class: &'static str,
    /// The gRPC status the response ended with (`OK`, `UNAVAILABLE`, …), from its headers or
    /// trailers; empty for HTTP requests and for gRPC responses that carried none.
    pub grpc_status: &'static str,
    /// `success` or `failure`, by the upstream's `failureOn` — the breaker's rules.
    pub classification: &'static str,
    /// The caller's SPIFFE ID (inbound: the verified caller; outbound: this pod), or empty.
    pub client_id: String,
    /// The callee's SPIFFE ID (inbound: this pod; outbound: the identity the upstream proved
    /// with `tls.mode: mesh`), or empty.
    pub server_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub direction: &'static str,
    pub upstream: String,
    /// The upstream's namespace (empty: matched none).
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestDurationLabels {
    pub direction: &'static str,
    pub upstream: String,
    /// The upstream's namespace (empty: matched none).
    pub namespace: String,
    pub classification: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectLabels {
    pub direction: &'static str,
    pub upstream: String,
    /// The upstream's namespace (empty: matched none).
    pub namespace: String,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub direction: &'static str,
    pub upstream: String,
    /// The upstream's namespace (empty: matched none).
    pub namespace: String,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    pub direction: &'static str,
    pub upstream: String,
    /// The upstream's namespace (empty: matched none).
    pub namespace: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

/// A byte stream the sidecar forwards as it is: captured TCP (`tcp`), TLS passed through
/// (`tls`), an HTTP upgrade (`upgrade`) or a CONNECT tunnel (`connect`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    pub direction: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelBytesLabels {
    pub direction: &'static str,
    pub kind: &'static str,
    /// `sent` (to the destination) or `received` (from it).
    pub way: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MalformedLabels {
    pub direction: &'static str,
    /// `duplicate-host`, `host-mismatch`, `malformed-body`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapturedLabels {
    pub direction: &'static str,
    /// What detection found: `http1`, `http2`, `tls` or `tcp`.
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub direction: &'static str,
    pub upstream: String,
    /// The upstream's namespace (empty: matched none).
    pub namespace: String,
    pub criticality: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverloadLabels {
    pub direction: &'static str,
    pub upstream: String,
    /// The upstream's namespace (empty: matched none).
    pub namespace: String,
    pub criticality: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RttLabels {
    pub direction: &'static str,
    pub upstream: String,
    /// The upstream's namespace (empty: matched none).
    pub namespace: String,
    /// `baseline` (unqueued requests, from the last probe) or `median` (the last interval).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    pub priority: &'static str,
    pub level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub namespace: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapabilityLabels {
    pub name: String,
}

type HistogramFamily = Family<RequestDurationLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// The sidecar's metric registry and families.
pub struct Metrics {
    registry: Registry,
    /// `process_*`, unprefixed.
    process: Registry,
    /// Every family registered, with its type: what the metrics reference is held against.
    #[cfg_attr(not(test), allow(dead_code))]
    registered: std::collections::BTreeMap<String, String>,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily,
    connections: Family<ListenerLabels, Gauge>,
    connection_limit: Family<ListenerLabels, Counter>,
    upstream_connects: Family<ConnectLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    attempts: Family<DurationLabels, Counter>,
    retries: Family<DurationLabels, Counter>,
    budget_exhausted: Family<DurationLabels, Counter>,
    breaker_rejections: Family<DurationLabels, Counter>,
    bulkhead_rejections: Family<DurationLabels, Counter>,
    ejections: Family<DurationLabels, Counter>,
    breaker_state: Family<DurationLabels, Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    caller_deadlines: Family<FallbackLabels, Counter>,
    emergency_fail_fast: Family<DurationLabels, Counter>,
    throttled: Family<DurationLabels, Counter>,
    shed: Family<ShedLabels, Counter>,
    concurrency_limit: Family<DurationLabels, Gauge>,
    concurrency_in_flight: Family<DurationLabels, Gauge>,
    concurrency_queued: Family<TierLabels, Gauge>,
    concurrency_rtt: Family<RttLabels, Gauge<f64, AtomicU64>>,
    overload_refused: Family<OverloadLabels, Counter>,
    rate_limited: Family<TierLabels, Counter>,
    /// `shed` handles by level and priority, resolved on first use.
    shed_handles: [[OnceLock<Counter>; 4]; 4],
    degradation_level: Family<ServiceLabels, Gauge>,
    capability: Family<CapabilityLabels, Gauge>,
    app_healthy: Gauge,
    health_reports: Family<ReloadLabels, Counter>,
    captured: Family<CapturedLabels, Counter>,
    malformed: Family<MalformedLabels, Counter>,
    tunnels: Family<TunnelLabels, Counter>,
    open_tunnels: Family<TunnelLabels, Gauge>,
    tunnel_bytes: Family<TunnelBytesLabels, Counter>,
    certificate_expiry: Gauge,
    certificate_renewals: Family<ReloadLabels, Counter>,
    mtls_connections: Family<DirectionLabels, Counter>,
    mtls_refused: Family<ReasonLabels, Counter>,
    authorization: Family<DecisionLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = bulwark_telemetry::Registrar::with_prefix("bulwark");
        bulwark_telemetry::register_build_info(&mut registry);
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let connections = Family::<ListenerLabels, Gauge>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let upstream_connects = Family::<ConnectLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests proxied, by direction, upstream (empty: matched none), protocol, status class, gRPC status and classification",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to the end of its response, by classification",
            durations.clone(),
        );
        registry.register(
            "active_connections",
            "Open downstream connections, by listener",
            connections.clone(),
        );
        let connection_limit = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connection_limit_reached",
            "Times a listener held its most connections (--max-connections) and a new one had to wait in the backlog",
            connection_limit.clone(),
        );
        registry.register(
            "upstream_connections",
            "Connections opened to upstream endpoints, by upstream and protocol",
            upstream_connects.clone(),
        );
        let counter = |registry: &mut bulwark_telemetry::Registrar, name: &str, help: &str| {
            let family = Family::<DurationLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let attempts = counter(
            &mut registry,
            "attempts",
            "Attempts sent to an upstream, retries included",
        );
        let retries = counter(
            &mut registry,
            "retries",
            "Retries made (attempts after the first)",
        );
        let budget_exhausted = counter(
            &mut registry,
            "retry_budget_exhausted",
            "Failed attempts not retried because the retry budget was spent",
        );
        let breaker_rejections = counter(
            &mut registry,
            "breaker_rejections",
            "Attempts failed fast by an open circuit breaker",
        );
        let bulkhead_rejections = counter(
            &mut registry,
            "bulkhead_rejections",
            "Requests refused because the upstream's concurrency limit and queue were full",
        );
        let ejections = counter(
            &mut registry,
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
        );
        let breaker_state = Family::<DurationLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "breaker_transitions",
            "Circuit breaker state changes, by the state entered",
            breaker_transitions.clone(),
        );
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "fallbacks",
            "Requests answered by a failover upstream or the static fallback response",
            fallbacks.clone(),
        );
        let caller_deadlines = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "caller_deadlines",
            "Callers' deadlines (grpc-timeout, or the deadline header) the sidecar could not use, by kind: malformed (ignored) or too-short (answered DEADLINE_EXCEEDED without calling the upstream)",
            caller_deadlines.clone(),
        );
        let emergency_fail_fast = counter(
            &mut registry,
            "emergency_fail_fast",
            "Low-priority calls failed fast because the upstream's service is at EMERGENCY",
        );
        let throttled = counter(
            &mut registry,
            "throttled",
            "Requests refused by client-side throttling (throttling) while the upstream refused many for overload",
        );
        let shed = Family::<ShedLabels, Counter>::default();
        registry.register(
            "shed",
            "Inbound requests shed by the degradation level, by priority and level",
            shed.clone(),
        );
        let concurrency_limit = Family::<DurationLabels, Gauge>::default();
        registry.register(
            "concurrency_limit",
            "The adaptive concurrency limit (adaptiveConcurrency): requests that may be in flight now",
            concurrency_limit.clone(),
        );
        let concurrency_in_flight = Family::<DurationLabels, Gauge>::default();
        registry.register(
            "concurrency_in_flight",
            "Requests in flight under the adaptive concurrency limit",
            concurrency_in_flight.clone(),
        );
        let concurrency_queued = Family::<TierLabels, Gauge>::default();
        registry.register(
            "concurrency_queued",
            "Requests waiting for the adaptive concurrency limit, by criticality",
            concurrency_queued.clone(),
        );
        let concurrency_rtt = Family::<RttLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "concurrency_rtt_seconds",
            "Latency the adaptive concurrency limit works from: baseline (unqueued requests) and median (the last interval)",
            concurrency_rtt.clone(),
        );
        let overload_refused = Family::<OverloadLabels, Counter>::default();
        registry.register(
            "overload_refused",
            "Requests refused by overload protection, by criticality and reason (queue-full, queue-wait, queue-timeout, displaced)",
            overload_refused.clone(),
        );
        let rate_limited = Family::<TierLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit (rateLimit, inbound.rateLimit), by criticality",
            rate_limited.clone(),
        );
        let degradation_level = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "degradation_level",
            "The own service's degradation level: 0 NORMAL, 1 DEGRADED, 2 SEVERE, 3 EMERGENCY",
            degradation_level.clone(),
        );
        let capability = Family::<CapabilityLabels, Gauge>::default();
        registry.register(
            "capability",
            "The own service's capabilities: 1 holds, 0 does not",
            capability.clone(),
        );
        let app_healthy = Gauge::default();
        app_healthy.set(1);
        registry.register(
            "app_healthy",
            "The app health check: 1 passing (or not configured), 0 failing",
            app_healthy.clone(),
        );
        let health_reports = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "health_reports",
            "Health reports to the control plane, by result (sent, or skipped while the stream was busy)",
            health_reports.clone(),
        );
        let captured = Family::<CapturedLabels, Counter>::default();
        registry.register(
            "captured_connections",
            "Connections captured by iptables, by direction and the protocol detected",
            captured.clone(),
        );
        let malformed = Family::<MalformedLabels, Counter>::default();
        registry.register(
            "malformed_requests",
            "Requests refused for how they were sent, by direction and reason: 400 for framing a proxy must not pass on (RFC 9112: duplicate-host, host-mismatch, content-length-and-transfer-encoding, malformed-body), 408 for a head that did not arrive in time (head-timeout); none reaches an upstream",
            malformed.clone(),
        );
        let tunnels = Family::<TunnelLabels, Counter>::default();
        registry.register(
            "tunnels",
            "Byte streams forwarded as they are (captured TCP, TLS, HTTP upgrades, CONNECT)",
            tunnels.clone(),
        );
        let open_tunnels = Family::<TunnelLabels, Gauge>::default();
        registry.register(
            "open_tunnels",
            "Byte streams being forwarded now",
            open_tunnels.clone(),
        );
        let tunnel_bytes = Family::<TunnelBytesLabels, Counter>::default();
        registry.register(
            "tunnel_bytes",
            "Bytes forwarded in tunnels, sent to the destination or received from it",
            tunnel_bytes.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy snapshots offered to the sidecar, by result (applied or rejected)",
            reloads.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the workload certificate in force expires (unix seconds; 0 before the first)",
            certificate_expiry.clone(),
        );
        let certificate_renewals = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "certificate_requests",
            "Workload certificate requests to the control plane, by result (issued, failed)",
            certificate_renewals.clone(),
        );
        let mtls_connections = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "mtls_connections",
            "Mutual-TLS connections established with other sidecars, by direction",
            mtls_connections.clone(),
        );
        let mtls_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "inbound_mtls_refused",
            "Inbound connections or requests refused for want of mutual TLS, by reason (plaintext, foreign-tls, handshake, no-certificate)",
            mtls_refused.clone(),
        );
        let authorization = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "inbound_authorization",
            "Inbound requests checked against spec.inbound.authorization, by decision (allowed, denied, dry-run-denied)",
            authorization.clone(),
        );
        let (registry, registered) = registry.finish();
        Metrics {
            registry,
            registered,
            process: bulwark_telemetry::process_registry(),
            requests,
            durations,
            connections,
            connection_limit,
            upstream_connects,
            reloads,
            attempts,
            retries,
            budget_exhausted,
            breaker_rejections,
            bulkhead_rejections,
            ejections,
            breaker_state,
            breaker_transitions,
            fallbacks,
            caller_deadlines,
            emergency_fail_fast,
            throttled,
            shed,
            concurrency_limit,
            concurrency_in_flight,
            concurrency_queued,
            concurrency_rtt,
            overload_refused,
            rate_limited,
            shed_handles: Default::default(),
            degradation_level,
            capability,
            app_healthy,
            health_reports,
            captured,
            malformed,
            tunnels,
            open_tunnels,
            tunnel_bytes,
            certificate_expiry,
            certificate_renewals,
            mtls_connections,
            mtls_refused,
            authorization,
        }
    }

    /// Counts mutual-TLS connections established, `inbound` or `outbound`.
    pub fn mtls_connections(&self, direction: &'static str) -> Counter {
        self.mtls_connections
            .get_or_create(&DirectionLabels { direction })
            .clone()
    }

    /// An inbound connection or request refused for want of mutual TLS.
    pub fn mtls_refused(&self, reason: &'static str) {
        self.mtls_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// An inbound request's authorization decision.
    pub fn authorization(&self, decision: &'static str) {
        self.authorization
            .get_or_create(&DecisionLabels { decision })
            .inc();
    }

    /// One request refused for its framing.
    pub fn malformed(&self, direction: &'static str, reason: &'static str) {
        self.malformed
            .get_or_create(&MalformedLabels { direction, reason })
            .inc();
    }

    /// One captured connection, by the protocol detected.
    pub fn captured(&self, direction: &'static str, protocol: &'static str) {
        self.captured
            .get_or_create(&CapturedLabels {
                direction,
                protocol,
            })
            .inc();
    }

    /// Handles for one kind of tunnel.
    pub fn tunnel(&self, direction: &'static str, kind: &'static str) -> TunnelMetrics {
        let labels = TunnelLabels { direction, kind };
        let bytes = |way| {
            self.tunnel_bytes
                .get_or_create(&TunnelBytesLabels {
                    direction,
                    kind,
                    way,
                })
                .clone()
        };
        TunnelMetrics {
            opened: self.tunnels.get_or_create(&labels).clone(),
            open: self.open_tunnels.get_or_create(&labels).clone(),
            sent: bytes("sent"),
            received: bytes("received"),
        }
    }

    /// One inbound request shed at `level` for its `priority`.
    pub fn shed(&self, level: Level, priority: Priority) {
        self.shed_handles[level.index()][priority.index()]
            .get_or_init(|| {
                self.shed
                    .get_or_create(&ShedLabels {
                        priority: priority.as_str(),
                        level: level.as_str(),
                    })
                    .clone()
            })
            .inc();
    }

    /// The own service's level and capabilities; capabilities no longer listed are removed.
    pub fn degradation(
        &self,
        namespace: &str,
        service: &str,
        level: Level,
        capabilities: &BTreeMap<String, bool>,
        previous: Option<&BTreeMap<String, bool>>,
    ) {
        self.degradation_level
            .get_or_create(&ServiceLabels {
                namespace: namespace.to_string(),
                service: service.to_string(),
            })
            .set(level.index() as i64);
        for name in previous.into_iter().flat_map(BTreeMap::keys) {
            if !capabilities.contains_key(name) {
                self.capability
                    .remove(&CapabilityLabels { name: name.clone() });
            }
        }
        for (name, holds) in capabilities {
            self.capability
                .get_or_create(&CapabilityLabels { name: name.clone() })
                .set(i64::from(*holds));
        }
    }

    /// The workload certificate in force expires at `unix` seconds.
    pub fn certificate_expiry(&self, unix: u64) {
        self.certificate_expiry
            .set(i64::try_from(unix).unwrap_or(i64::MAX));
    }

    /// A certificate request: `issued` or `failed`.
    pub fn certificate_renewal(&self, result: &'static str) {
        self.certificate_renewals
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    pub fn app_healthy(&self, healthy: bool) {
        self.app_healthy.set(i64::from(healthy));
    }

    pub fn health_report(&self, sent: bool) {
        let result = if sent { "sent" } else { "skipped" };
        self.health_reports
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if bulwark_telemetry::encode(&mut out, &[&self.registry, &self.process]).is_err() {
            out.clear();
        }
        out
    }

    /// The listener is full: a new connection waits.
    pub fn connection_limit_reached(&self, listener: &'static str) {
        self.connection_limit
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    pub fn connections(&self, listener: &'static str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Handles for one upstream (or the inbound app) in one direction.
    pub fn upstream(
        self: &Arc<Self>,
        direction: &'static str,
        namespace: &str,
        upstream: &str,
    ) -> UpstreamMetrics {
        let duration = self.request_durations(direction, namespace, upstream);
        let connects = |protocol| {
            self.upstream_connects
                .get_or_create(&ConnectLabels {
                    direction,
                    upstream: upstream.to_string(),
                    namespace: namespace.to_string(),
                    protocol,
                })
                .clone()
        };
        let labels = DurationLabels {
            direction,
            upstream: upstream.to_string(),
            namespace: namespace.to_string(),
        };
        UpstreamMetrics {
            attempts: self.attempts.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            retry_budget_exhausted: self.budget_exhausted.get_or_create(&labels).clone(),
            breaker_rejections: self.breaker_rejections.get_or_create(&labels).clone(),
            bulkhead_rejections: self.bulkhead_rejections.get_or_create(&labels).clone(),
            ejections: self.ejections.get_or_create(&labels).clone(),
            emergency_fail_fast: self.emergency_fail_fast.get_or_create(&labels).clone(),
            throttled: self.throttled.get_or_create(&labels).clone(),
            breaker_state: self.breaker_state.get_or_create(&labels).clone(),
            connects_http1: connects("http1"),
            connects_http2: connects("http2"),
            metrics: self.clone(),
            direction,
            upstream: upstream.to_string(),
            namespace: namespace.to_string(),
            client_id: String::new(),
            server_id: String::new(),
            counters: Default::default(),
            duration,
            rate_limited: Default::default(),
        }
    }
}

impl Metrics {
    /// The request metrics of requests that matched no upstream (`upstream=""`): they have
    /// no attempts, connections or breaker, so only their request counters and durations are
    /// exported.
    pub fn unrouted(self: &Arc<Self>, direction: &'static str) -> UpstreamMetrics {
        UpstreamMetrics {
            attempts: Counter::default(),
            retries: Counter::default(),
            retry_budget_exhausted: Counter::default(),
            breaker_rejections: Counter::default(),
            bulkhead_rejections: Counter::default(),
            ejections: Counter::default(),
            emergency_fail_fast: Counter::default(),
            throttled: Counter::default(),
            breaker_state: Gauge::default(),
            connects_http1: Counter::default(),
            connects_http2: Counter::default(),
            metrics: self.clone(),
            direction,
            upstream: String::new(),
            namespace: String::new(),
            client_id: String::new(),
            server_id: String::new(),
            counters: Default::default(),
            duration: self.request_durations(direction, "", ""),
            rate_limited: Default::default(),
        }
    }

    /// The latency histograms of one upstream's requests, by classification.
    fn request_durations(
        &self,
        direction: &'static str,
        namespace: &str,
        upstream: &str,
    ) -> [Histogram; 2] {
        Classification::ALL.map(|c| {
            self.durations
                .get_or_create(&RequestDurationLabels {
                    direction,
                    upstream: upstream.to_string(),
                    namespace: namespace.to_string(),
                    classification: c.as_str(),
                })
                .clone()
        })
    }
}

/// The handles of one adaptive concurrency limit.
#[derive(Debug, Clone)]
pub struct ConcurrencyMetrics {
    pub limit: Gauge,
    pub in_flight: Gauge,
    /// Waiting requests per tier, least critical first.
    pub queued: [Gauge; 4],
    pub baseline: Gauge<f64, AtomicU64>,
    pub median: Gauge<f64, AtomicU64>,
    /// Refusals per tier and reason, resolved up front: refusing under overload touches only
    /// an atomic.
    refused: Arc<[[Counter; 4]; 4]>,
}

impl ConcurrencyMetrics {
    /// A request of `criticality` refused for `reason`.
    pub fn refused(&self, criticality: Criticality, reason: Refusal) {
        self.refused[criticality.index()][reason.index()].inc();
    }
}

/// The request counters of one inbound mTLS connection's caller, resolved on first use so
/// that a request counts without a lookup.
#[derive(Debug)]
pub struct CallerCounters {
    client_id: String,
    counters: RequestCounters,
}

impl CallerCounters {
    pub fn new(client_id: &str) -> CallerCounters {
        CallerCounters {
            client_id: client_id.to_string(),
            counters: Default::default(),
        }
    }
}

/// The protocol label of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolLabel {
    Http1 = 0,
    Http2 = 1,
    Grpc = 2,
}

impl ProtocolLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolLabel::Http1 => "http1",
            ProtocolLabel::Http2 => "http2",
            ProtocolLabel::Grpc => "grpc",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Whether a request succeeded, by the upstream's `failureOn` (the circuit breaker's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    Success = 0,
    Failure = 1,
}

impl Classification {
    pub const ALL: [Classification; 2] = [Classification::Success, Classification::Failure];

    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Success => "success",
            Classification::Failure => "failure",
        }
    }
}

/// How a request ended, as its counter is labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub protocol: ProtocolLabel,
    pub status: u16,
    /// gRPC requests: the status the response ended with, if it carried one.
    pub grpc: Option<GrpcCode>,
    pub classification: Classification,
}

/// Request counters, resolved on first use so that a request counts without a lookup: per
/// protocol a table allocated the first time it is used, of status class × classification
/// (× gRPC status for gRPC).
#[derive(Debug, Default)]
struct RequestCounters {
    tables: [OnceLock<Box<[OnceLock<Counter>]>>; 3],
}

/// gRPC statuses, and none.
const GRPC_STATUSES: usize = GrpcCode::ALL.len() + 1;

impl RequestCounters {
    fn slot(&self, e: &Ending, class: usize) -> &OnceLock<Counter> {
        let grpc = match e.protocol {
            ProtocolLabel::Grpc => GRPC_STATUSES,
            _ => 1,
        };
        let table = self.tables[e.protocol as usize]
            .get_or_init(|| (0..grpc * 5 * 2).map(|_| OnceLock::new()).collect());
        let status = match (e.protocol, e.grpc) {
            (ProtocolLabel::Grpc, Some(code)) => code as usize + 1,
            _ => 0,
        };
        &table[(status * 5 + class) * 2 + e.classification as usize]
    }
}

/// Pre-resolved metric handles of one upstream.
pub struct UpstreamMetrics {
    metrics: Arc<Metrics>,
    direction: &'static str,
    upstream: String,
    namespace: String,
    /// The identities requests to this upstream are between, as far as they are known when it
    /// is built (the caller of an inbound request is known per connection: [`CallerCounters`]).
    client_id: String,
    server_id: String,
    counters: RequestCounters,
    duration: [Histogram; 2],
    /// Connections opened to this upstream's endpoints.
    pub connects_http1: Counter,
    pub connects_http2: Counter,
    pub attempts: Counter,
    pub retries: Counter,
    pub retry_budget_exhausted: Counter,
    pub breaker_rejections: Counter,
    pub bulkhead_rejections: Counter,
    pub ejections: Counter,
    pub emergency_fail_fast: Counter,
    pub throttled: Counter,
    breaker_state: Gauge,
    /// `rate_limited` handles per tier, resolved on first use.
    rate_limited: [OnceLock<Counter>; 4],
}

impl std::fmt::Debug for UpstreamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamMetrics")
            .field("direction", &self.direction)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl UpstreamMetrics {
    /// A breaker transition into the state named `to` (`closed`, `open`, `half-open`).
    pub fn breaker_transition(&self, to: &'static str) {
        let value = match to {
            "closed" => 0,
            "open" => 1,
            _ => 2,
        };
        let name = to;
        self.breaker_state.set(value);
        self.metrics
            .breaker_transitions
            .get_or_create(&TransitionLabels {
                direction: self.direction,
                upstream: self.upstream.clone(),
                namespace: self.namespace.clone(),
                to: name,
            })
            .inc();
    }

    /// One inbound request shed at `level` for its `priority`.
    pub fn shed(&self, level: Level, priority: Priority) {
        self.metrics.shed(level, priority);
    }

    /// One request of `criticality` refused by a rate limit.
    pub fn rate_limited(&self, criticality: Criticality) {
        self.rate_limited[criticality.index()]
            .get_or_init(|| {
                self.metrics
                    .rate_limited
                    .get_or_create(&TierLabels {
                        direction: self.direction,
                        upstream: self.upstream.clone(),
                        namespace: self.namespace.clone(),
                        criticality: criticality.as_str(),
                    })
                    .clone()
            })
            .inc();
    }

    /// The handles of the upstream's adaptive concurrency limit.
    pub fn concurrency(&self) -> ConcurrencyMetrics {
        let m = &self.metrics;
        let labels = DurationLabels {
            direction: self.direction,
            upstream: self.upstream.clone(),
            namespace: self.namespace.clone(),
        };
        let rtt = |kind| {
            m.concurrency_rtt
                .get_or_create(&RttLabels {
                    direction: self.direction,
                    upstream: self.upstream.clone(),
                    namespace: self.namespace.clone(),
                    kind,
                })
                .clone()
        };
        ConcurrencyMetrics {
            limit: m.concurrency_limit.get_or_create(&labels).clone(),
            in_flight: m.concurrency_in_flight.get_or_create(&labels).clone(),
            queued: Criticality::ALL.map(|c| {
                m.concurrency_queued
                    .get_or_create(&TierLabels {
                        direction: self.direction,
                        upstream: self.upstream.clone(),
                        namespace: self.namespace.clone(),
                        criticality: c.as_str(),
                    })
                    .clone()
            }),
            baseline: rtt("baseline"),
            median: rtt("median"),
            refused: Arc::new(Criticality::ALL.map(|c| {
                Refusal::ALL.map(|reason| {
                    m.overload_refused
                        .get_or_create(&OverloadLabels {
                            direction: self.direction,
                            upstream: self.upstream.clone(),
                            namespace: self.namespace.clone(),
                            criticality: c.as_str(),
                            reason: reason.as_str(),
                        })
                        .clone()
                })
            })),
        }
    }

    /// A request answered by a failover upstream (`failover`) or the static response.
    pub fn fallback(&self, kind: &'static str) {
        self.metrics
            .fallbacks
            .get_or_create(&FallbackLabels {
                direction: self.direction,
                upstream: self.upstream.clone(),
                namespace: self.namespace.clone(),
                kind,
            })
            .inc();
    }

    /// A caller's deadline that could not be used: `malformed` or `too-short`.
    pub fn caller_deadline(&self, kind: &'static str) {
        self.metrics
            .caller_deadlines
            .get_or_create(&FallbackLabels {
                direction: self.direction,
                upstream: self.upstream.clone(),
                namespace: self.namespace.clone(),
                kind,
            })
            .inc();
    }

    /// With the identities its requests are between: `client_id` and `server_id` labels.
    pub fn identities(mut self, client_id: Option<&str>, server_id: Option<&str>) -> Self {
        self.client_id = client_id.unwrap_or_default().to_string();
        self.server_id = server_id.unwrap_or_default().to_string();
        self
    }

    /// Whether its labels name these identities.
    pub fn has_identities(&self, client_id: Option<&str>, server_id: Option<&str>) -> bool {
        self.client_id == client_id.unwrap_or_default()
            && self.server_id == server_id.unwrap_or_default()
    }

    /// A request that ended as `ending` after `elapsed`; `caller`: an inbound mTLS
    /// connection's caller.
    pub fn record(&self, caller: Option<&CallerCounters>, ending: Ending, elapsed: Duration) {
        let class = usize::from((ending.status / 100).clamp(1, 5) - 1);
        let (slot, client_id) = match caller {
            Some(c) => (c.counters.slot(&ending, class), &c.client_id),
            None => (self.counters.slot(&ending, class), &self.client_id),
        };
        let counter = slot.get_or_init(|| {
            self.metrics
                .requests
                .get_or_create(&RequestLabels {
                    direction: self.direction,
                    upstream: self.upstream.clone(),
                    namespace: self.namespace.clone(),
                    protocol: ending.protocol.as_str(),
                    status_class: STATUS_CLASSES[class],
                    grpc_status: match (ending.protocol, ending.grpc) {
                        (ProtocolLabel::Grpc, Some(code)) => code.canonical(),
                        _ => "",
                    },
                    classification: ending.classification.as_str(),
                    client_id: client_id.clone(),
                    server_id: self.server_id.clone(),
                })
                .clone()
        });
        counter.inc();
        self.duration[ending.classification as usize].observe(elapsed.as_secs_f64());
    }
}

/// The metric handles of one kind of tunnel.
#[derive(Debug, Clone)]
pub struct TunnelMetrics {
    pub opened: Counter,
    pub open: Gauge,
    pub sent: Counter,
    pub received: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_reference_lists_every_metric_with_its_type() {
        bulwark_telemetry::reference::assert_documented(
            &Metrics::new().registered,
            include_str!("../../docs/metrics.md"),
            "Sidecar",
        );
    }
}
