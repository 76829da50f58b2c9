//! The control plane's Prometheus metrics (`GET /metrics` on the REST port): the level and
//! capabilities of every service as this replica's index holds them, whether this replica
//! leads, what became of alerts, and certificate requests.

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::index::SharedIndex;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `process_*`, unprefixed.
    process: Registry,
    alerts: Family<Labels, Counter>,
    levels: Family<Labels, Gauge>,
    capabilities: Family<Labels, Gauge>,
    leader: Gauge<i64, AtomicI64>,
    certificates: Family<Labels, Counter>,
    rejected_reports: Family<Labels, Counter>,
    insecure_dev: Gauge<i64, AtomicI64>,
    authorization: Family<Labels, Counter>,
    authentication_failures: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bulwark");
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
        Metrics {
            registry,
            process: bulwark_telemetry::process_registry(),
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
