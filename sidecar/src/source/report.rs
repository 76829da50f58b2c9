//! Health reports: every `--report-interval` the sidecar tells the control plane, on the
//! Discovery stream, what it saw since its previous report: per upstream the attempts, failures
//! and slow calls (taking the counters back to zero), the breaker's state and the endpoints
//! ejected; and the app probe's latest result.

use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::v1 as pb;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::{Instant, MissedTickBehavior};

use crate::health::probe::AppHealth;
use crate::policy_stack::breaker::machine::BreakerState;
use crate::route::RouteTable;
use crate::state::Shared;

/// Builds a report of every upstream of `table`, taking their counters.
pub fn build(
    table: &RouteTable,
    app: &AppHealth,
    interval: Duration,
    applied_version: i64,
    now: Instant,
) -> pb::HealthReport {
    let upstreams = table
        .upstreams()
        .into_iter()
        .map(|u| {
            let counts = u.stats.take();
            let breaker = u
                .breaker
                .as_ref()
                .and_then(|b| b.lock().ok().map(|b| b.state()))
                .unwrap_or(BreakerState::Closed);
            let ejected = u
                .outlier
                .as_ref()
                .and_then(|o| o.lock().ok().map(|o| o.ejected_count(now)))
                .unwrap_or(0);
            pb::UpstreamHealth {
                namespace: u.namespace.to_string(),
                name: u.name.to_string(),
                requests: counts.requests,
                failures: counts.failures,
                slow: counts.slow,
                overloaded: counts.overloaded,
                p99_micros: counts.p99_micros,
                breaker: breaker.to_wire() as i32,
                endpoints: saturating_u32(u.endpoints.endpoints().len()),
                ejected: saturating_u32(ejected),
            }
        })
        .collect();
    pb::HealthReport {
        interval_ms: saturating_u32(interval.as_millis()),
        applied_version,
        app: Some(app.to_wire()),
        upstreams,
        identity: None,
    }
}

fn saturating_u32(n: impl TryInto<u32>) -> u32 {
    n.try_into().unwrap_or(u32::MAX)
}

/// Sends a report every `interval` on `tx` until the stream closes. A report never waits for
/// room on the stream (snapshot ACKs share it): when the stream is full the report is skipped
/// and its counts go into the next one.
pub async fn run(
    shared: Arc<Shared>,
    interval: Duration,
    tx: mpsc::Sender<pb::SidecarMessage>,
    applied: tokio::sync::watch::Receiver<i64>,
) {
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tick.tick() => {}
        }
        let permit = match tx.try_reserve() {
            Ok(p) => p,
            Err(TrySendError::Full(())) => {
                shared.metrics.health_report(false);
                tracing::debug!("stream busy: health report skipped; its counts go into the next");
                continue;
            }
            Err(TrySendError::Closed(())) => return,
        };
        let table = shared.table.load_full();
        let app = shared.health.app.load_full();
        let version = *applied.borrow();
        let mut report = build(&table, &app, interval, version, Instant::now());
        report.identity = shared.identity.as_ref().map(|i| i.to_wire());
        tracing::debug!(upstreams = report.upstreams.len(), "health report sent");
        permit.send(pb::SidecarMessage {
            message: Some(pb::sidecar_message::Message::Health(report)),
        });
        shared.metrics.health_report(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::route::{BuildEnv, LocalService, PolicySet};
    use bulwark_proto::policy::parse_yaml;

    const POLICIES: &str = "\
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: payments, namespace: shop }
spec:
  endpoints: { static: [\"127.0.0.1:1\", \"127.0.0.1:2\"] }
  circuitBreaker: { minRequests: 100, slowCall: { duration: 1s, rate: 90% } }
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: dispatch, namespace: shop }
spec: { endpoints: { static: [\"127.0.0.1:3\"] } }
";

    fn table() -> RouteTable {
        let local = LocalService {
            namespace: "shop".into(),
            service: None,
            app_port: None,
            inbound_port: None,
            mtls_default: Default::default(),
        };
        let env = BuildEnv {
            metrics: Arc::new(Metrics::new()),
            events: tokio::sync::broadcast::channel(16).0,
            degradation: Arc::default(),
            deadline_header: None,
            identity: None,
            upstream_idle_timeout: crate::upstream::connect::DEFAULT_IDLE_TIMEOUT,
        };
        let set = PolicySet {
            version: "1".into(),
            source: "test".into(),
            resources: parse_yaml(POLICIES).unwrap(),
        };
        RouteTable::build(&set, &RouteTable::empty(&local, &env), &local, &env).unwrap()
    }

    #[tokio::test]
    async fn reports_take_each_upstreams_counts() {
        let table = table();
        let payments = table.route("payments").unwrap();
        payments.stats.record(true, false, Duration::from_millis(5));
        payments.stats.record(false, true, Duration::from_millis(5));
        payments
            .stats
            .record(false, false, Duration::from_millis(5));
        let app = AppHealth::from_result(Err("GET /health answered 503".into()));
        let report = build(&table, &app, Duration::from_secs(5), 7, Instant::now());
        assert_eq!(report.interval_ms, 5000);
        assert_eq!(report.applied_version, 7);
        assert_eq!(
            report.app,
            Some(pb::AppHealth {
                probed: true,
                healthy: false,
                detail: "GET /health answered 503".into()
            })
        );
        let dispatch = pb::UpstreamHealth {
            namespace: "shop".into(),
            name: "dispatch".into(),
            requests: 0,
            failures: 0,
            slow: 0,
            breaker: pb::BreakerState::Closed as i32,
            endpoints: 1,
            ejected: 0,
            overloaded: 0,
            p99_micros: 0,
        };
        assert_eq!(
            report.upstreams,
            [
                dispatch.clone(),
                pb::UpstreamHealth {
                    name: "payments".into(),
                    requests: 3,
                    failures: 1,
                    slow: 1,
                    endpoints: 2,
                    // 5 ms falls in [4,096, 5,119] µs.
                    p99_micros: 5119,
                    ..dispatch.clone()
                },
            ]
        );

        // The next report starts from zero.
        let again = build(&table, &app, Duration::from_secs(5), 7, Instant::now());
        assert_eq!(again.upstreams[1].requests, 0);
        assert_eq!(again.upstreams[1].failures, 0);
    }

    #[tokio::test]
    async fn counters_survive_a_reload_of_the_upstream() {
        let first = table();
        first
            .route("payments")
            .unwrap()
            .stats
            .record(true, false, Duration::from_millis(5));
        let local = LocalService {
            namespace: "shop".into(),
            service: None,
            app_port: None,
            inbound_port: None,
            mtls_default: Default::default(),
        };
        let env = BuildEnv {
            metrics: Arc::new(Metrics::new()),
            events: tokio::sync::broadcast::channel(16).0,
            degradation: Arc::default(),
            deadline_header: None,
            identity: None,
            upstream_idle_timeout: crate::upstream::connect::DEFAULT_IDLE_TIMEOUT,
        };
        let changed = PolicySet {
            version: "2".into(),
            source: "test".into(),
            resources: parse_yaml(&POLICIES.replace("minRequests: 100", "minRequests: 50"))
                .unwrap(),
        };
        let second = RouteTable::build(&changed, &first, &local, &env).unwrap();
        let payments = second.route("payments").unwrap();
        assert!(!Arc::ptr_eq(
            &payments.upstream,
            &first.route("payments").unwrap().upstream
        ));
        assert_eq!(payments.stats.take().failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reports_go_out_every_interval_and_never_wait_for_room() {
        let local = LocalService {
            namespace: "shop".into(),
            service: None,
            app_port: None,
            inbound_port: None,
            mtls_default: Default::default(),
        };
        let shared = Arc::new(Shared::new(local, "p".into(), None));
        shared
            .apply(&PolicySet {
                version: "1".into(),
                source: "test".into(),
                resources: parse_yaml(POLICIES).unwrap(),
            })
            .unwrap();
        let stats = shared.table.load().route("payments").unwrap().stats.clone();
        let payments = |m: pb::SidecarMessage| match m.message {
            Some(pb::sidecar_message::Message::Health(r)) => r.upstreams[1].clone(),
            other => panic!("expected a report, got {other:?}"),
        };
        let (tx, mut rx) = mpsc::channel(1);
        let (_applied, applied_rx) = tokio::sync::watch::channel(9i64);
        let start = Instant::now();
        let task = tokio::spawn(run(shared.clone(), Duration::from_secs(5), tx, applied_rx));

        stats.record(true, false, Duration::from_millis(5));
        let first = rx.recv().await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(5),
            "one interval after the start"
        );
        let first = payments(first);
        assert_eq!((first.requests, first.failures), (1, 1));

        // Nobody takes the 10 s report off the stream: the 15 s one is skipped, not queued,
        // and its counts go into the next report that fits.
        stats.record(false, false, Duration::from_millis(5));
        tokio::time::sleep_until(start + Duration::from_secs(16)).await;
        let metrics = shared.metrics.encode();
        assert!(
            metrics.contains("bulwark_health_reports_total{result=\"skipped\"} 1\n"),
            "{metrics}"
        );
        stats.record(true, false, Duration::from_millis(5));
        assert_eq!(
            payments(rx.recv().await.unwrap()).requests,
            1,
            "the 10 s report"
        );
        let third = payments(rx.recv().await.unwrap());
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        assert_eq!((third.requests, third.failures), (1, 1));

        // The reporter ends with its stream.
        drop(rx);
        task.await.unwrap();
    }
}
