//! The bottom of the stack: picks an endpoint (the upstream's [`Balancer`]) and sends one
//! attempt over its connections, within the attempt's deadline, then tells the balancer how the
//! attempt went (outlier detection).

use std::sync::Arc;

use bulwark_proto::policy::Protocol;
use http::HeaderValue;
use http::uri::Authority;

use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use super::outcome::{ConditionSet, classify};
use crate::balance::Balancer;
use crate::body::Body;
use crate::errors::ProxyError;
use crate::headers::X_BULWARK_UPSTREAM;
use crate::trace::TRACEPARENT;
use crate::upstream::{ConnectSettings, Wire, wire};

/// How an upstream's attempts leave the sidecar.
pub struct Balance {
    info: Arc<UpstreamInfo>,
    balancer: Balancer,
    connect: ConnectSettings,
    protocol: Protocol,
    /// `hostRewrite`: send the endpoint's address as the authority.
    host_rewrite: bool,
    /// What counts as an endpoint failing, for outlier detection.
    failure_on: ConditionSet,
    /// The upstream's name as the `x-bulwark-upstream` response header value.
    upstream_header: Option<HeaderValue>,
}

impl Balance {
    pub fn new(
        info: Arc<UpstreamInfo>,
        balancer: Balancer,
        connect: ConnectSettings,
        protocol: Protocol,
        host_rewrite: bool,
        failure_on: ConditionSet,
    ) -> Balance {
        Balance {
            upstream_header: HeaderValue::from_str(&info.name).ok(),
            info,
            balancer,
            connect,
            protocol,
            host_rewrite,
            failure_on,
        }
    }

    fn attempt_timeout(&self, limit: std::time::Duration) -> ProxyError {
        ProxyError::AttemptTimeout {
            upstream: self.info.name.to_string(),
            timeout: limit,
        }
    }
}

impl Call for Balance {
    async fn call<'a>(&'a self, mut req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let state = cx.state;
        let pick = self.balancer.pick(
            self.connect.connect_timeout,
            |addr| state.tried(addr),
            state.retrying(),
        );
        let picked = match cx.attempt {
            Some(d) => tokio::time::timeout_at(d.at, pick)
                .await
                .map_err(|_| self.attempt_timeout(d.limit))?,
            None => pick.await,
        };
        let endpoint = picked.map_err(|reason| ProxyError::NoEndpoints {
            upstream: self.info.name.to_string(),
            reason,
        })?;
        state.attempt_started(endpoint.addr);
        // A traced request's attempt has its own span, the upstream's parent.
        let span = state
            .trace()
            .map(|t| t.attempt(&self.info.name, state.attempts(), endpoint.addr));
        if let Some(span) = &span {
            req.headers_mut().insert(TRACEPARENT, span.traceparent());
        }
        let wire = Wire::for_request(self.protocol, req.version());
        let rewritten;
        let target = if self.host_rewrite {
            rewritten = Authority::try_from(endpoint.addr.to_string().as_str())
                .map_err(|e| ProxyError::BadRequest(format!("endpoint address: {e}")))?;
            &rewritten
        } else {
            cx.authority
        };
        wire::prepare(&mut req, wire, target, self.connect.tls.is_some())?;
        let send = endpoint.send(wire, req, &self.connect);
        let result = match cx.attempt {
            Some(d) => match tokio::time::timeout_at(d.at, send).await {
                Ok(r) => r,
                Err(_) => Err(self.attempt_timeout(d.limit)),
            },
            None => send.await,
        };
        let result = result.map(|rsp| {
            let mut rsp = rsp.map(Body::Upstream);
            if let Some(v) = &self.upstream_header {
                rsp.headers_mut().insert(X_BULWARK_UPSTREAM, v.clone());
            }
            rsp
        });
        if let Some(span) = span {
            match &result {
                Ok(rsp) => span.end(Some(rsp.status().as_u16()), None),
                Err(e) => span.end(None, Some(e.kind())),
            }
        }
        if let Some(outcome) = classify(&result) {
            let failed = self.failure_on.matches(&outcome);
            if self.balancer.record(endpoint.addr, failed).is_some() {
                self.info.metrics.ejections.inc();
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Duration;

    use http::Request;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;

    use super::*;
    use crate::balance::endpoints::EndpointSet;
    use crate::balance::outlier::{OutlierConfig, OutlierDetector};
    use crate::policy_stack::layer::{AttemptDeadline, CallState};
    use crate::policy_stack::testing::{cx, info, routes};
    use crate::testing::{TestServer, closed_addr};

    fn balance(
        addrs: &[SocketAddr],
        host_rewrite: bool,
        outlier: bool,
    ) -> (Balance, Arc<crate::metrics::Metrics>) {
        let (info, metrics) = info("pay");
        let outlier = outlier.then(|| {
            let cfg = OutlierConfig::from_policy(Some(&bulwark_proto::policy::OutlierDetection {
                consecutive_failures: Some(1),
                base_ejection: None,
                max_ejected_percent: Some(50),
            }))
            .unwrap();
            Arc::new(Mutex::new(OutlierDetector::new(cfg, addrs.iter().copied())))
        });
        let balancer = Balancer::new(Arc::from("pay"), EndpointSet::fixed(addrs), outlier);
        let connect = ConnectSettings {
            upstream: Arc::from("pay"),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            connects_http1: Counter::default(),
            connects_http2: Counter::default(),
            tls: None,
        };
        let failure_on = crate::policy_stack::breaker::machine::default_failure_on();
        (
            Balance::new(
                info,
                balancer,
                connect,
                Protocol::Auto,
                host_rewrite,
                failure_on,
            ),
            metrics,
        )
    }

    fn get() -> Req {
        Request::get("/charge").body(Body::Empty).unwrap()
    }

    #[tokio::test]
    async fn an_attempt_goes_out_with_the_context_authority_and_names_its_upstream() {
        let server = TestServer::start().await;
        let (layer, _) = balance(&[server.addr], false, false);
        let routes = routes("");
        let state = CallState::default();
        let authority = Authority::from_static("pay.shop:8080");
        let cx = Cx {
            authority: &authority,
            ..cx(routes.default_route(), &state)
        };
        let rsp = layer.call(get(), cx).await.unwrap();
        assert_eq!(rsp.headers()["x-bulwark-upstream"], "pay");
        assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(
            server.authorities(),
            [("pay.shop:8080".to_string(), http::Version::HTTP_11)]
        );
        assert_eq!(state.attempts(), 1);
        assert!(state.tried(server.addr));
    }

    #[tokio::test]
    async fn host_rewrite_sends_the_endpoints_address() {
        let server = TestServer::start().await;
        let (layer, _) = balance(&[server.addr], true, false);
        let routes = routes("");
        let state = CallState::default();
        let rsp = layer
            .call(get(), cx(routes.default_route(), &state))
            .await
            .unwrap();
        rsp.into_body().collect().await.unwrap();
        assert_eq!(server.authorities()[0].0, server.addr.to_string());
    }

    #[tokio::test]
    async fn a_failing_endpoint_is_ejected_and_later_attempts_go_elsewhere() {
        let server = TestServer::start().await;
        let dead = closed_addr();
        let (layer, metrics) = balance(&[dead, server.addr], false, true);
        let routes = routes("");
        // Until the dead endpoint is picked once (p2c picks at random) and ejected: half the
        // picks go to it, so 200 tries miss it with a chance of 2^-200.
        let mut refused = 0;
        for _ in 0..200 {
            let state = CallState::default();
            match layer.call(get(), cx(routes.default_route(), &state)).await {
                Err(e) => {
                    assert_eq!(e.kind(), "connect-failure");
                    refused += 1;
                    break;
                }
                Ok(rsp) => drop(rsp.into_body().collect().await.unwrap()),
            }
        }
        assert_eq!(refused, 1);
        let before = server.requests();
        for _ in 0..20 {
            let state = CallState::default();
            let rsp = layer
                .call(get(), cx(routes.default_route(), &state))
                .await
                .unwrap();
            rsp.into_body().collect().await.unwrap();
        }
        assert_eq!(
            server.requests(),
            before + 20,
            "the ejected endpoint gets nothing"
        );
        assert!(metrics.encode().contains(
            "bulwark_outlier_ejections_total{direction=\"outbound\",upstream=\"pay\",namespace=\"default\"} 1\n"
        ));
    }

    #[tokio::test]
    async fn an_attempt_that_outlives_its_deadline_times_out() {
        let server = TestServer::start().await;
        let (layer, _) = balance(&[server.addr], false, false);
        let routes = routes("");
        let state = CallState::default();
        let limit = Duration::from_millis(100);
        let cx = Cx {
            attempt: Some(AttemptDeadline {
                at: tokio::time::Instant::now() + limit,
                limit,
            }),
            ..cx(routes.default_route(), &state)
        };
        let req = Request::get("/hold").body(Body::Empty).unwrap();
        let err = layer.call(req, cx).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "upstream \"pay\": attempt timed out after 100ms"
        );
    }
}
