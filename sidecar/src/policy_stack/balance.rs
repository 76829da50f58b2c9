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
        let wire = Wire::for_request(self.protocol, req.version());
        let rewritten;
        let target = if self.host_rewrite {
            rewritten = Authority::try_from(endpoint.addr.to_string().as_str())
                .map_err(|e| ProxyError::BadRequest(format!("endpoint address: {e}")))?;
            &rewritten
        } else {
            cx.authority
        };
        wire::prepare(&mut req, wire, target)?;
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
        if let Some(outcome) = classify(&result) {
            let failed = self.failure_on.matches(&outcome);
            if self.balancer.record(endpoint.addr, failed).is_some() {
                self.info.metrics.ejections.inc();
            }
        }
        result
    }
}
