//! The control plane's Prometheus metrics (`GET /metrics` on the REST port): the level and
//! capabilities of every service as this replica's index holds them, whether this replica
//! leads, what became of alerts, and certificate requests; what an operator watches — the
//! operator API's requests by route and code, etcd calls and their latency, sidecars connected
//! per namespace, snapshots and levels sent, ACKs and NACKs, level computations.

use std::time::Duration;

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::index::SharedIndex;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `process_*`, unprefixed.
    process: Registry,
    /// Every family registered, with its type: what the metrics reference is held against.
    #[cfg_attr(not(test), allow(dead_code))]
    registered: std::collections::BTreeMap<String, String>,
    alerts: Family<Labels, Counter>,
    levels: Family<Labels, Gauge>,
    capabilities: Family<Labels, Gauge>,
    leader: Gauge<i64, AtomicI64>,
    certificates: Family<Labels, Counter>,
    rejected_reports: Family<Labels, Counter>,
    insecure_dev: Gauge<i64, AtomicI64>,
    authorization: Family<Labels, Counter>,
    authentication_failures: Family<Labels, Counter>,
    api_requests: Family<Labels, Counter>,
    api_durations: Histograms,
    etcd_requests: Family<Labels, Counter>,
    etcd_durations: Histograms,
    sidecars: Family<Labels, Gauge>,
    snapshots_sent: Counter,
    levels_sent: Counter,
    snapshot_answers: Family<Labels, Counter>,
    level_computations: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = bulwark_telemetry::Registrar::with_prefix("bulwark");
        bulwark_telemetry::register_build_info(&mut registry);
        let alerts = Family::<Labels, Counter>::default();
        registry.register(
            "alerts",
            "Alerts by result: sent, failed (after retries), dropped (queue full), rate-limited",
            alerts.clone(),
        );
        let levels = Family::<Labels, Gauge>::default();
        registry.register(
            "service_level",
            "Degradation level per service: 0 NORMAL, 1 DEGRADED, 2 SEVERE, 3 EMERGENCY",
            levels.clone(),
        );
        let capabilities = Family::<Labels, Gauge>::default();
        registry.register(
            "service_capability",
            "1 while the service's capability holds, else 0",
            capabilities.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "1 while this replica is the elected one (computes levels, sends alerts)",
            leader.clone(),
        );
        let certificates = Family::<Labels, Counter>::default();
        registry.register(
            "certificates",
            "Certificate requests by proof (service-account-token, join-token, none) and result (issued, refused)",
            certificates.clone(),
        );
        let rejected_reports = Family::<Labels, Counter>::default();
        registry.register(
            "rejected_reports",
            "Sidecar streams and health reports refused for what their certificate does not cover, by reason (no-certificate, not-a-workload, trust-domain, namespace, pod, service-account)",
            rejected_reports.clone(),
        );
        let insecure_dev = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "insecure_dev",
            "1 when this replica runs with --insecure-dev: plaintext listeners, and requests without credentials act as an administrator",
            insecure_dev.clone(),
        );
        let authorization = Family::<Labels, Counter>::default();
        registry.register(
            "api_authorization",
            "Operator API authorisation decisions by decision (allowed, denied)",
            authorization.clone(),
        );
        let authentication_failures = Family::<Labels, Counter>::default();
        registry.register(
            "api_authentication_failures",
            "Operator API requests not authenticated, by reason (missing, refused, unavailable)",
            authentication_failures.clone(),
        );
        let api_requests = Family::<Labels, Counter>::default();
        registry.register(
            "api_requests",
            "Operator REST API requests by route (the path template), method and code (the HTTP status)",
            api_requests.clone(),
        );
        let api_durations: Histograms = Family::new_with_constructor(latency_histogram);
        registry.register(
            "api_request_duration_seconds",
            "Operator REST API request latency, from the request to its response headers, by route and method",
            api_durations.clone(),
        );
        let etcd_requests = Family::<Labels, Counter>::default();
        registry.register(
            "etcd_requests",
            "Calls to etcd by operation (read, transaction, watch, lease-grant, …) and result (ok; unavailable: no endpoint answered in time; refused: etcd said no)",
            etcd_requests.clone(),
        );
        let etcd_durations: Histograms = Family::new_with_constructor(latency_histogram);
        registry.register(
            "etcd_request_duration_seconds",
            "Latency of calls to etcd by operation, retries across endpoints included",
            etcd_durations.clone(),
        );
        let sidecars = Family::<Labels, Gauge>::default();
        registry.register(
            "sidecars_connected",
            "Sidecar streams open on this replica, by namespace",
            sidecars.clone(),
        );
        let snapshots_sent = Counter::default();
        registry.register(
            "snapshots_sent",
            "Policy snapshots sent to sidecars",
            snapshots_sent.clone(),
        );
        let levels_sent = Counter::default();
        registry.register(
            "levels_sent",
            "Degradation level updates sent to sidecars",
            levels_sent.clone(),
        );
        let snapshot_answers = Family::<Labels, Counter>::default();
        registry.register(
            "snapshot_answers",
            "Sidecars' answers to snapshots by result (ack: applied; nack: refused, the policies in force kept)",
            snapshot_answers.clone(),
        );
        let level_computations = Counter::default();
        registry.register(
            "level_computations",
            "Passes in which the elected replica computed every service's degradation level",
            level_computations.clone(),
        );
        let (registry, registered) = registry.finish();
        Metrics {
            registry,
            registered,
            process: bulwark_telemetry::process_registry(),
            api_requests,
            api_durations,
            etcd_requests,
            etcd_durations,
            sidecars,
            snapshots_sent,
            levels_sent,
            snapshot_answers,
            level_computations,
            authorization,
            authentication_failures,
            rejected_reports,
            insecure_dev,
            alerts,
            levels,
            capabilities,
            leader,
            certificates,
        }
    }

    pub fn rejected_report(&self, reason: &'static str) {
        self.rejected_reports
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn authorization(&self, decision: &'static str) {
        self.authorization
            .get_or_create(&vec![("decision", decision.to_string())])
            .inc();
    }

    pub fn authentication_failed(&self, reason: &'static str) {
        self.authentication_failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn set_insecure_dev(&self, on: bool) {
        self.insecure_dev.set(i64::from(on));
    }

    pub fn alert(&self, result: &'static str) {
        self.alerts
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    pub fn certificate(&self, proof: &'static str, result: &'static str) {
        self.certificates
            .get_or_create(&vec![
                ("proof", proof.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    /// One operator API request: `route` the path template it matched (or `unmatched`).
    pub fn api_request(&self, route: &str, method: &str, code: u16, took: Duration) {
        let labels = vec![("route", route.to_string()), ("method", method.to_string())];
        self.api_durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        let mut labels = labels;
        labels.push(("code", code.to_string()));
        self.api_requests.get_or_create(&labels).inc();
    }

    /// One call to etcd, by `operation` and `result` (`ok`, `unavailable`, `refused`).
    pub fn etcd_call(&self, operation: &str, result: &'static str, took: Duration) {
        self.etcd_durations
            .get_or_create(&vec![("operation", operation.to_string())])
            .observe(took.as_secs_f64());
        self.etcd_requests
            .get_or_create(&vec![
                ("operation", operation.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    /// A sidecar of `namespace` connected (`+1`) or went away (`-1`).
    pub fn sidecar_stream(&self, namespace: &str, change: i64) {
        self.sidecars
            .get_or_create(&vec![("namespace", namespace.to_string())])
            .inc_by(change);
    }

    pub fn snapshot_sent(&self) {
        self.snapshots_sent.inc();
    }

    pub fn levels_sent(&self) {
        self.levels_sent.inc();
    }

    /// A sidecar's answer to a snapshot: `ack` or `nack`.
    pub fn snapshot_answer(&self, result: &'static str) {
        self.snapshot_answers
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    pub fn levels_computed(&self) {
        self.level_computations.inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition, with levels and capabilities as the index holds them now.
    pub fn render(&self, index: &SharedIndex) -> String {
        self.levels.clear();
        self.capabilities.clear();
        {
            let index = index.lock();
            for status in index.statuses().values() {
                let service = vec![
                    ("namespace", status.namespace.clone()),
                    ("service", status.service.clone()),
                ];
                self.levels.get_or_create(&service).set(status.level as i64);
                for (name, holds) in &status.capabilities {
                    let mut labels = service.clone();
                    labels.push(("capability", name.clone()));
                    self.capabilities
                        .get_or_create(&labels)
                        .set(i64::from(*holds));
                }
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = bulwark_telemetry::encode(&mut out, &[&self.registry, &self.process]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_reference_lists_every_metric_with_its_type() {
        bulwark_telemetry::reference::assert_documented(
            &Metrics::new().registered,
            include_str!("../../docs/metrics.md"),
            "Control plane",
        );
    }
}
