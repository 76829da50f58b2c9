//! The degradation gate, the first layer of every stack. Inbound: a request whose priority the
//! own level's `shedPriorities` lists is answered at once (503 with `Retry-After`, gRPC
//! UNAVAILABLE with `grpc-retry-pushback-ms`) without reaching the app; every other request
//! reaches the app with `x-bulwark-degradation: <LEVEL>`. Outbound: a low-priority call to an
//! upstream whose service is at EMERGENCY fails fast without any attempt. Both read the levels
//! lock-free and allocate only to refuse.

use std::sync::Arc;

use super::{Call, Req, Rsp, Stage};
use crate::errors::ProxyError;
use crate::health::levels::{
    DEGRADATION_HEADER, Priority, ServiceActions, fails_fast, level_header,
};
use crate::route::Snapshot;

/// Marks the degradation gate in [`Stage`](super::Stage).
#[derive(Debug, Clone, Copy)]
pub struct DegradationGate;

/// The own ServicePolicy's actions in the request's snapshot (defaults without one).
fn actions(req: &Req) -> &ServiceActions {
    match req.extensions().get::<Arc<Snapshot>>() {
        Some(s) => &s.actions,
        None => ServiceActions::defaults(),
    }
}

impl<S: Call> Call for Stage<DegradationGate, S> {
    async fn call(&self, mut req: Req) -> Result<Rsp, ProxyError> {
        let refused = if self.core.outbound {
            self.emergency(&req)
        } else {
            self.shed(&mut req)
        };
        match refused {
            Some(err) => Err(err),
            None => self.inner.call(req).await,
        }
    }
}

impl<S> Stage<DegradationGate, S> {
    /// Inbound: sheds the request, or marks it with the level it reaches the app at.
    fn shed(&self, req: &mut Req) -> Option<ProxyError> {
        let level = self.core.degradation.levels().own_level();
        let actions = actions(req);
        let priority = Priority::of(req.headers().get(&actions.priority_header));
        if actions.sheds(level, priority) {
            self.core.metrics.shed(level, priority);
            tracing::debug!(%level, %priority, "request shed");
            return Some(ProxyError::Shed {
                service: format!("{}/{}", self.core.namespace, self.core.name),
                level,
                priority,
                retry_after: actions.shed_retry_after,
            });
        }
        // The app learns the level it runs at; a value the caller sent is not trusted.
        req.headers_mut()
            .insert(DEGRADATION_HEADER, level_header(level));
        None
    }

    /// Outbound: fails a low-priority call to an EMERGENCY upstream.
    fn emergency(&self, req: &Req) -> Option<ProxyError> {
        let levels = self.core.degradation.levels();
        if !levels.any_emergency() {
            return None;
        }
        let level = levels.level_of(&self.core.namespace, &self.core.name);
        let priority = Priority::of(req.headers().get(&actions(req).priority_header));
        if !fails_fast(level, priority) {
            return None;
        }
        self.core.metrics.emergency_fail_fast.inc();
        tracing::debug!(upstream = %self.core.name, "low-priority call to an EMERGENCY upstream failed fast");
        Some(ProxyError::UpstreamEmergency {
            upstream: self.core.name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use bulwark_proto::policy::parse_yaml;
    use bulwark_proto::v1 as pb;
    use http::uri::Authority;
    use http::{HeaderValue, Request, StatusCode};
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::Shared;
    use crate::body::Body;
    use crate::health::levels::Level;
    use crate::policy_stack::{Call, CallState};
    use crate::route::Identity;
    use crate::source::PolicySet;
    use crate::upstream::{TargetAuthority, Upstream};

    /// An HTTP/1.1 server recording the `x-bulwark-degradation` header of every request;
    /// `/status/N` answers N, anything else 200.
    async fn app() -> (u16, Arc<Mutex<Vec<Option<String>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let header = req
                        .headers()
                        .get("x-bulwark-degradation")
                        .map(|v| v.to_str().unwrap().to_string());
                    record.lock().unwrap().push(header);
                    let status = req
                        .uri()
                        .path()
                        .strip_prefix("/status/")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(200);
                    async move {
                        let mut rsp =
                            http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                        *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(rsp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (port, seen)
    }

    /// A sidecar of shop/orders with the order-orchestrator's actions, its app on
    /// `app_port` and one upstream, `payments`, retrying 503s up to 3 attempts.
    fn sidecar(app_port: u16, payments_port: u16) -> Shared {
        let identity = Identity {
            namespace: "shop".into(),
            service: Some("orders".into()),
            app_port: None,
            inbound_port: None,
        };
        let shared = Shared::new(identity, "orders-1".into(), None);
        let yaml = format!(
            "\
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: {{ name: orders, namespace: shop }}
spec:
  app: {{ port: {app_port} }}
  actions:
    SEVERE: {{ shedPriorities: [low], maxRetryAttempts: 2 }}
    EMERGENCY: {{ shedPriorities: [low, normal], maxRetryAttempts: 1 }}
  inbound: {{ priorityHeader: x-prio, shedRetryAfter: 20s }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: payments, namespace: pay }}
spec:
  endpoints: {{ static: [\"127.0.0.1:{payments_port}\"] }}
  retry: {{ maxAttempts: 3, retryOn: [\"503\"], backoff: {{ initial: 1ms, max: 1ms }} }}
"
        );
        let set = PolicySet {
            version: "1".into(),
            source: "test".into(),
            resources: parse_yaml(&yaml).unwrap(),
        };
        shared.apply(&set).unwrap();
        shared
    }

    fn levels(entries: &[(&str, &str, pb::Level)]) -> pb::Levels {
        pb::Levels {
            services: entries
                .iter()
                .map(|(ns, name, level)| pb::ServiceLevel {
                    namespace: ns.to_string(),
                    service: name.to_string(),
                    level: *level as i32,
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// Sends a GET through an upstream's stack as the proxy does.
    async fn send(
        shared: &Shared,
        upstream: &Arc<Upstream>,
        path: &str,
        headers: &[(&'static str, &'static str)],
    ) -> (Result<StatusCode, ProxyError>, u32) {
        let mut req = Request::get(path).body(Body::Empty).unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(*k, HeaderValue::from_static(v));
        }
        let state = Arc::new(CallState::default());
        req.extensions_mut()
            .insert(TargetAuthority(Authority::from_static("localhost")));
        req.extensions_mut().insert(state.clone());
        req.extensions_mut().insert(shared.snapshot.load_full());
        let result = upstream.stack.call(req).await;
        (result.map(|r| r.status()), state.attempts())
    }

    #[tokio::test]
    async fn inbound_requests_are_shed_by_priority_at_the_own_level() {
        let (app_port, seen) = app().await;
        let shared = sidecar(app_port, 1);
        let app = shared.snapshot.load().inbound.clone().unwrap();

        // NORMAL: everything reaches the app, told its level whatever the caller claimed.
        let (result, _) = send(
            &shared,
            &app,
            "/",
            &[("x-prio", "low"), ("x-bulwark-degradation", "EMERGENCY")],
        )
        .await;
        assert_eq!(result.unwrap(), StatusCode::OK);
        assert_eq!(*seen.lock().unwrap(), [Some("NORMAL".to_string())]);

        shared.apply_levels(&levels(&[("shop", "orders", pb::Level::Severe)]));
        let (result, attempts) = send(&shared, &app, "/", &[("x-prio", "low")]).await;
        match result {
            Err(ProxyError::Shed {
                service,
                level,
                priority,
                retry_after,
            }) => {
                assert_eq!(service, "shop/orders");
                assert_eq!(level, Level::Severe);
                assert_eq!(priority, Priority::Low);
                assert_eq!(retry_after, std::time::Duration::from_secs(20));
            }
            other => panic!("expected a shed, got {other:?}"),
        }
        assert_eq!(attempts, 0);
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "the shed request never reached the app"
        );

        // No header and the default header name are both `normal` here (x-prio is in force).
        let (result, _) = send(&shared, &app, "/", &[("x-priority", "low")]).await;
        assert_eq!(result.unwrap(), StatusCode::OK);
        assert_eq!(seen.lock().unwrap()[1], Some("SEVERE".to_string()));

        shared.apply_levels(&levels(&[("shop", "orders", pb::Level::Emergency)]));
        let (result, _) = send(&shared, &app, "/", &[]).await;
        assert_eq!(result.unwrap_err().kind(), "shed");
        let (result, _) = send(&shared, &app, "/", &[("x-prio", "high")]).await;
        assert_eq!(result.unwrap(), StatusCode::OK);
        assert_eq!(seen.lock().unwrap()[2], Some("EMERGENCY".to_string()));

        let metrics = shared.metrics.encode();
        assert!(
            metrics.contains("bulwark_shed_total{priority=\"low\",level=\"SEVERE\"} 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("bulwark_shed_total{priority=\"normal\",level=\"EMERGENCY\"} 1\n"),
            "{metrics}"
        );
        assert!(
            metrics
                .contains("bulwark_degradation_level{namespace=\"shop\",service=\"orders\"} 3\n"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn low_priority_calls_to_an_emergency_upstream_fail_without_an_attempt() {
        let (port, seen) = app().await;
        let shared = sidecar(1, port);
        let payments = shared
            .snapshot
            .load()
            .route("payments.pay")
            .cloned()
            .unwrap();

        shared.apply_levels(&levels(&[("pay", "payments", pb::Level::Emergency)]));
        let (result, attempts) = send(&shared, &payments, "/", &[("x-prio", "low")]).await;
        match result {
            Err(ProxyError::UpstreamEmergency { upstream }) => assert_eq!(upstream, "payments"),
            other => panic!("expected a fail-fast, got {other:?}"),
        }
        assert_eq!(attempts, 0);
        assert!(seen.lock().unwrap().is_empty());

        // Other priorities still go; outbound requests are not marked with a level.
        let (result, attempts) = send(&shared, &payments, "/", &[]).await;
        assert_eq!(result.unwrap(), StatusCode::OK);
        assert_eq!(attempts, 1);
        assert_eq!(*seen.lock().unwrap(), [None]);

        // A service of the same name elsewhere is not this upstream.
        shared.apply_levels(&levels(&[("shop", "payments", pb::Level::Emergency)]));
        let (result, _) = send(&shared, &payments, "/", &[("x-prio", "low")]).await;
        assert_eq!(result.unwrap(), StatusCode::OK);

        let metrics = shared.metrics.encode();
        assert!(
            metrics.contains("bulwark_emergency_fail_fast_total{direction=\"outbound\",upstream=\"payments\"} 1\n"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn the_own_level_caps_retries_per_request() {
        let (port, seen) = app().await;
        let shared = sidecar(1, port);
        let payments = shared
            .snapshot
            .load()
            .route("payments.pay")
            .cloned()
            .unwrap();

        let (result, attempts) = send(&shared, &payments, "/status/503", &[]).await;
        assert_eq!(result.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(attempts, 3, "maxAttempts as written at NORMAL");

        shared.apply_levels(&levels(&[("shop", "orders", pb::Level::Severe)]));
        let (_, attempts) = send(&shared, &payments, "/status/503", &[]).await;
        assert_eq!(attempts, 2, "SEVERE caps at maxRetryAttempts 2");

        shared.apply_levels(&levels(&[("shop", "orders", pb::Level::Emergency)]));
        let (_, attempts) = send(&shared, &payments, "/status/503", &[("x-prio", "high")]).await;
        assert_eq!(attempts, 1);

        // Levels replace each other whole: an empty message is NORMAL again.
        shared.apply_levels(&levels(&[]));
        let (_, attempts) = send(&shared, &payments, "/status/503", &[]).await;
        assert_eq!(attempts, 3);
        assert_eq!(seen.lock().unwrap().len(), 3 + 2 + 1 + 3);
    }
}
