//! The sidecar's state, shared by every request, the admin listener and the policy sources:
//! the routing table in force, metrics, degradation levels and the app's health, and the
//! requests in flight. A new policy set or levels message is put in force here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use bulwark_proto::level::Level;
use tokio::sync::watch;

use crate::health::levels::{Degradation, LevelIndex};
use crate::health::probe::{AppHealth, ProbeTarget};
use crate::identity::Identity;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::policy_stack::breaker::BreakerEvent;
use crate::route::{BuildEnv, LocalService, PolicySet, RouteTable};
use crate::trace::Tracer;
use crate::upstream::connect::DEFAULT_IDLE_TIMEOUT;

/// State every request and the admin listener read.
pub struct Shared {
    /// The applied policies, compiled.
    pub table: ArcSwap<RouteTable>,
    pub metrics: Arc<Metrics>,
    /// Breaker state changes, for whoever reports health.
    pub events: tokio::sync::broadcast::Sender<BreakerEvent>,
    pub local: LocalService,
    /// Set on shutdown: readiness fails so the pod is taken out of rotation.
    pub draining: AtomicBool,
    /// The header HTTP callers give their deadline in.
    pub deadline_header: Option<http::HeaderName>,
    /// Requests whose response has not ended, both directions (shutdown waits for them).
    pub in_flight: Arc<InFlight>,
    /// Degradation levels, the app probe's result, what the probe checks.
    pub health: Health,
    /// The workload identity and its TLS configurations; `None` without mTLS.
    pub identity: Option<Arc<Identity>>,
    /// The pod's HTTP probe paths (`--probe-paths`): kubelet probes of them are admitted
    /// without mTLS and authorization.
    pub probe_paths: Vec<String>,
    /// Why the sidecar booted with no policies (no usable snapshot file), for readiness.
    pub boot_problem: arc_swap::ArcSwapOption<String>,
    /// `--upstream-idle-timeout`, for the upstreams' connections.
    pub upstream_idle_timeout: std::time::Duration,
    /// The request metrics of requests that matched no upstream (`upstream=""`), inbound and
    /// outbound.
    pub unrouted: [Arc<UpstreamMetrics>; 2],
    /// Sampling, and where sampled requests' spans go.
    pub tracer: Tracer,
}

impl Shared {
    /// Where requests that matched no upstream are counted, for `direction`.
    pub fn unrouted(&self, direction: &str) -> Arc<UpstreamMetrics> {
        self.unrouted[usize::from(direction == "outbound")].clone()
    }

    /// Upstream connections unused this long are closed.
    pub fn with_upstream_idle_timeout(mut self, timeout: std::time::Duration) -> Shared {
        self.upstream_idle_timeout = timeout;
        self
    }

    /// With request tracing: the sampling ratio, and the exporter when a collector is set.
    pub fn with_tracer(mut self, tracer: Tracer) -> Shared {
        self.tracer = tracer;
        self
    }

    /// With a workload identity: mTLS between sidecars.
    pub fn with_identity(mut self, identity: Option<Arc<Identity>>) -> Shared {
        self.identity = identity;
        self
    }

    /// The pod's HTTP probe paths, admitted for the kubelet without mTLS.
    pub fn with_probe_paths(mut self, paths: Vec<String>) -> Shared {
        self.probe_paths = paths;
        self
    }

    /// A kubelet probe (`GET`, `User-Agent: kube-probe/…`) of one of the pod's probe paths.
    pub fn is_probe(&self, parts: &http::request::Parts) -> bool {
        !self.probe_paths.is_empty()
            && parts.method == http::Method::GET
            && crate::headers::is_kubelet_probe(&parts.headers)
            && self.probe_paths.iter().any(|p| p == parts.uri.path())
    }

    /// The state of a sidecar that has applied no policy yet: NORMAL, no levels known.
    pub fn new(
        local: LocalService,
        pod: String,
        deadline_header: Option<http::HeaderName>,
    ) -> Shared {
        let metrics = Arc::new(Metrics::new());
        let events = tokio::sync::broadcast::channel(256).0;
        let health = Health::new(pod);
        let env = BuildEnv {
            metrics: metrics.clone(),
            events: events.clone(),
            degradation: health.degradation.clone(),
            deadline_header: deadline_header.clone(),
            identity: None,
            upstream_idle_timeout: DEFAULT_IDLE_TIMEOUT,
        };
        let shared = Shared {
            table: ArcSwap::from_pointee(RouteTable::empty(&local, &env)),
            metrics: metrics.clone(),
            events,
            local,
            draining: AtomicBool::new(false),
            in_flight: Arc::default(),
            health,
            deadline_header,
            identity: None,
            probe_paths: Vec::new(),
            boot_problem: arc_swap::ArcSwapOption::empty(),
            upstream_idle_timeout: DEFAULT_IDLE_TIMEOUT,
            unrouted: ["inbound", "outbound"].map(|d| Arc::new(metrics.unrouted(d))),
            tracer: Tracer::disabled(0.01),
        };
        if let Some(service) = &shared.local.service {
            // NORMAL until the control plane says otherwise (a file-source sidecar stays so).
            shared.metrics.degradation(
                &shared.local.namespace,
                service,
                Level::Normal,
                &BTreeMap::new(),
                None,
            );
        }
        shared
    }

    /// Builds and swaps in the snapshot for `set`; on failure the current one stays.
    pub fn apply(&self, set: &PolicySet) -> Result<(), String> {
        let current = self.table.load_full();
        let env = self.build_env();
        match RouteTable::build(set, &current, &self.local, &env) {
            Ok(next) => {
                tracing::info!(
                    version = %next.version,
                    source = %next.source,
                    upstreams = next.upstream_count(),
                    inbound_app = next.inbound.is_some(),
                    "policy snapshot applied"
                );
                let probe = ProbeTarget::from_policy(next.service.as_ref(), self.local.app_port);
                self.table.store(Arc::new(next));
                self.metrics.reload(true);
                self.refresh_retry_cap();
                self.health.probe.send_if_modified(|current| {
                    let changed = *current != probe;
                    *current = probe;
                    changed
                });
                Ok(())
            }
            Err(e) => {
                tracing::error!(version = %set.version, error = %e, "policy snapshot rejected; keeping the one in force");
                self.metrics.reload(false);
                Err(e)
            }
        }
    }

    /// What the routing table's upstreams are built with.
    fn build_env(&self) -> BuildEnv {
        BuildEnv {
            metrics: self.metrics.clone(),
            events: self.events.clone(),
            degradation: self.health.degradation.clone(),
            deadline_header: self.deadline_header.clone(),
            identity: self.identity.clone(),
            upstream_idle_timeout: self.upstream_idle_timeout,
        }
    }

    /// Puts a `Levels` message from the control plane in force: each replaces the previous
    /// one whole. The own level's retry cap follows at once; requests read the rest per call.
    pub fn apply_levels(&self, levels: &bulwark_proto::v1::Levels) {
        let previous = self.health.degradation.swap(self.index_levels(levels));
        self.levels_changed(&previous);
    }

    /// Puts levels persisted by a previous run in force (booting without a control plane),
    /// unless the control plane sent newer ones meanwhile.
    pub fn restore_levels(&self, levels: &bulwark_proto::v1::Levels) -> bool {
        match self.health.degradation.restore(self.index_levels(levels)) {
            Some(previous) => {
                self.levels_changed(&previous);
                true
            }
            None => false,
        }
    }

    fn index_levels(&self, levels: &bulwark_proto::v1::Levels) -> LevelIndex {
        LevelIndex::from_wire(levels, &self.local.namespace, self.local.service.as_deref())
    }

    /// Logs, counts and follows a change of the levels in force.
    fn levels_changed(&self, previous: &LevelIndex) {
        let current = self.health.degradation.levels();
        let level = current.own_level();
        if previous.own_level() != level {
            let reasons = current
                .own()
                .map(|o| o.reasons.join(", "))
                .unwrap_or_default();
            let since = current.own().map(|o| o.since_unix_ms);
            tracing::info!(from = %previous.own_level(), to = %level, %reasons, ?since, "degradation level changed");
        }
        self.refresh_retry_cap();
        if let Some(service) = &self.local.service {
            let empty = BTreeMap::new();
            self.metrics.degradation(
                &self.local.namespace,
                service,
                level,
                current.own().map_or(&empty, |o| &o.capabilities),
                previous.own().map(|o| &o.capabilities),
            );
        }
    }

    /// The own level's `maxRetryAttempts` under the ServicePolicy in force.
    fn refresh_retry_cap(&self) {
        let level = self.health.degradation.levels().own_level();
        let cap = self.table.load().actions.retry_cap(level);
        if self.health.degradation.retry_cap() != cap {
            tracing::info!(%level, cap = ?cap, "retry attempts cap changed");
        }
        self.health.degradation.set_retry_cap(cap);
    }
}

/// The health state the sidecar keeps beside its snapshot.
#[derive(Debug)]
pub struct Health {
    /// Levels from the control plane and the retry cap derived from them (upstreams read it
    /// per request).
    pub degradation: Arc<Degradation>,
    /// The app probe's latest result.
    pub app: Arc<ArcSwap<AppHealth>>,
    /// What the app probe checks; replaced when the own ServicePolicy changes.
    pub probe: watch::Sender<Option<ProbeTarget>>,
    /// This pod's name, as the control plane lists it in `unready_pods`.
    pub pod: String,
}

impl Health {
    pub fn new(pod: String) -> Health {
        Health {
            degradation: Arc::default(),
            app: Arc::new(ArcSwap::from_pointee(AppHealth::unprobed())),
            probe: watch::channel(None).0,
            pod,
        }
    }
}

/// Requests whose response has not ended. An atomic on the hot path; the `Notify` is only
/// awaited during shutdown.
#[derive(Debug, Default)]
pub struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl InFlight {
    /// Counts one request until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One request in flight.
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_proto::v1 as pb;

    fn shared() -> Shared {
        let local = LocalService {
            namespace: "shop".into(),
            service: Some("orders".into()),
            app_port: None,
            inbound_port: None,
            mtls_default: Default::default(),
        };
        Shared::new(local, "orders-1".into(), None)
    }

    fn policy(spec: &str) -> PolicySet {
        let yaml = format!(
            "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec: {spec}\n"
        );
        PolicySet {
            version: "1".into(),
            source: "test".into(),
            resources: bulwark_proto::policy::parse_yaml(&yaml).unwrap(),
        }
    }

    #[tokio::test]
    async fn the_probe_target_follows_the_service_policy() {
        let shared = shared();
        let mut targets = shared.health.probe.subscribe();
        shared
            .apply(&policy(
                "{ app: { port: 8080, healthCheck: { http: /health } } }",
            ))
            .unwrap();
        assert!(targets.has_changed().unwrap());
        assert_eq!(
            targets
                .borrow_and_update()
                .as_ref()
                .map(|t| t.check.clone()),
            Some(crate::health::probe::Check::Http {
                path: "/health".into()
            })
        );
        // The same target again does not restart the probe.
        shared
            .apply(&policy(
                "{ app: { port: 8080, healthCheck: { http: /health } } }",
            ))
            .unwrap();
        assert!(!targets.has_changed().unwrap());
        shared.apply(&policy("{ app: { port: 8080 } }")).unwrap();
        assert!(targets.has_changed().unwrap());
        assert_eq!(*targets.borrow_and_update(), None);
    }

    #[tokio::test]
    async fn levels_set_the_level_and_capability_metrics() {
        let shared = shared();
        let metrics = shared.metrics.encode();
        assert!(
            metrics
                .contains("bulwark_degradation_level{namespace=\"shop\",service=\"orders\"} 0\n"),
            "{metrics}"
        );
        let mut own = pb::ServiceLevel {
            namespace: "shop".into(),
            service: "orders".into(),
            level: pb::Level::Severe as i32,
            ..Default::default()
        };
        own.capabilities.insert("acceptOrders".into(), false);
        own.capabilities.insert("sendNotifications".into(), true);
        shared.apply_levels(&pb::Levels {
            services: vec![own.clone()],
        });
        let metrics = shared.metrics.encode();
        assert!(
            metrics
                .contains("bulwark_degradation_level{namespace=\"shop\",service=\"orders\"} 2\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("bulwark_capability{name=\"acceptOrders\"} 0\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("bulwark_capability{name=\"sendNotifications\"} 1\n"),
            "{metrics}"
        );

        own.capabilities.remove("acceptOrders");
        own.level = pb::Level::Normal as i32;
        shared.apply_levels(&pb::Levels {
            services: vec![own],
        });
        let metrics = shared.metrics.encode();
        assert!(
            metrics
                .contains("bulwark_degradation_level{namespace=\"shop\",service=\"orders\"} 0\n"),
            "{metrics}"
        );
        assert!(!metrics.contains("acceptOrders"), "{metrics}");
    }
}
