//! Readiness: whether this pod should receive traffic, and why not — the answer of
//! `/health/ready`.

use super::levels::LevelIndex;
use super::probe::AppHealth;

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
}
