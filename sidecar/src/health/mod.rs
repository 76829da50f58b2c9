//! Health and degradation: per-upstream counters ([`stats`]), the app probe ([`probe`]), the
//! reports sent to the control plane ([`report`]), and the levels it sends back with what they
//! make the sidecar do ([`levels`]): shed inbound requests, cap retries, fail low-priority calls
//! to an EMERGENCY upstream fast, and take this pod out of rotation ([`readiness`]).

pub mod levels;
pub mod probe;
pub mod report;
pub mod stats;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use levels::{Degradation, LevelIndex};
use probe::{AppHealth, ProbeTarget};

/// The health state the sidecar keeps beside its snapshot.
#[derive(Debug)]
pub struct Health {
    /// Levels from the control plane and the retry cap derived from them (upstreams read it
    /// per request).
    pub degradation: Arc<Degradation>,
    /// The app probe's latest result.
    pub app: ArcSwap<AppHealth>,
    /// What the app probe checks; replaced when the own ServicePolicy changes.
    pub probe: watch::Sender<Option<ProbeTarget>>,
    /// This pod's name, as the control plane lists it in `unready_pods`.
    pub pod: String,
}

impl Health {
    pub fn new(pod: String) -> Health {
        Health {
            degradation: Arc::default(),
            app: ArcSwap::from_pointee(AppHealth::unprobed()),
            probe: watch::channel(None).0,
            pod,
        }
    }
}

/// Why this pod is not ready, or `Ok` when it is. In order: shutting down, no policies yet,
/// listed unready by the control plane (the level's `ready: false` or a critical dependency
/// down; the control plane picks which pods, so a fleet is never emptied at once), the app's
/// own health check failing. The text is the probe's answer body.
pub fn readiness(
    draining: bool,
    loaded: bool,
    pod: &str,
    levels: &LevelIndex,
    app: &AppHealth,
) -> Result<(), String> {
    if draining {
        return Err("not ready: draining for shutdown".into());
    }
    if !loaded {
        return Err("not ready: no policies applied yet".into());
    }
    if let Some(own) = levels.own()
        && own.unready_pods.iter().any(|p| p == pod)
    {
        return Err(if own.reasons.is_empty() {
            format!("not ready: {}", own.level)
        } else {
            format!("not ready: {}: {}", own.level, own.reasons.join(", "))
        });
    }
    if !app.healthy {
        return Err(format!(
            "not ready: app health check failing: {}",
            app.detail
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_proto::v1 as pb;

    fn levels(unready: &[&str], reasons: &[&str]) -> LevelIndex {
        let own = pb::ServiceLevel {
            namespace: "shop".into(),
            service: "orders".into(),
            level: pb::Level::Emergency as i32,
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            unready_pods: unready.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        LevelIndex::from_wire(
            &pb::Levels {
                services: vec![own],
            },
            "shop",
            Some("orders"),
        )
    }

    #[test]
    fn only_pods_the_control_plane_lists_go_unready() {
        let healthy = AppHealth::unprobed();
        let l = levels(
            &["orders-1", "orders-2"],
            &["midtrans unhealthy", "bbd unhealthy"],
        );
        assert_eq!(
            readiness(false, true, "orders-1", &l, &healthy),
            Err("not ready: EMERGENCY: midtrans unhealthy, bbd unhealthy".into())
        );
        assert_eq!(readiness(false, true, "orders-3", &l, &healthy), Ok(()));
        assert_eq!(
            readiness(
                false,
                true,
                "orders-1",
                &levels(&["orders-1"], &[]),
                &healthy
            ),
            Err("not ready: EMERGENCY".into())
        );
        assert_eq!(
            readiness(false, true, "orders-1", &LevelIndex::default(), &healthy),
            Ok(())
        );
    }

    #[test]
    fn a_failing_app_probe_makes_the_pod_unready() {
        let failing = AppHealth::from_result(Err("GET /health answered 503".into()));
        assert_eq!(
            readiness(false, true, "p", &LevelIndex::default(), &failing),
            Err("not ready: app health check failing: GET /health answered 503".into())
        );
        let passing = AppHealth::from_result(Ok(()));
        assert_eq!(
            readiness(false, true, "p", &LevelIndex::default(), &passing),
            Ok(())
        );
    }

    #[test]
    fn draining_and_missing_policies_come_first() {
        let failing = AppHealth::from_result(Err("x".into()));
        let l = levels(&["p"], &["r"]);
        assert_eq!(
            readiness(true, true, "p", &l, &failing),
            Err("not ready: draining for shutdown".into())
        );
        assert_eq!(
            readiness(false, false, "p", &l, &failing),
            Err("not ready: no policies applied yet".into())
        );
    }

    fn shared() -> crate::Shared {
        let identity = crate::route::Identity {
            namespace: "shop".into(),
            service: Some("orders".into()),
            app_port: None,
            inbound_port: None,
        };
        crate::Shared::new(identity, "orders-1".into(), None)
    }

    fn policy(spec: &str) -> crate::source::PolicySet {
        let yaml = format!(
            "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec: {spec}\n"
        );
        crate::source::PolicySet {
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
            Some(probe::Check::Http {
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
