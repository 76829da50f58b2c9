//! Failover: when the primary upstream fails after its retries (or its breaker is open, or its
//! bulkhead is full), each `fallback.failover` upstream is tried in order with that upstream's
//! own attempts stack, inside the same deadline; when every one fails and `fallback.response`
//! is set, that static response is the answer.

use std::sync::Arc;

use bulwark_proto::policy::GrpcCode;
use http::uri::Authority;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};

use super::replay::ReplayBody;
use super::{Call, Deadline, Req, Rsp, Stage, classify, is_grpc};
use crate::body::Body;
use crate::errors::{ProxyError, grpc_status_response};
use crate::route::Snapshot;
use crate::upstream::{TargetAuthority, UpstreamCore};
use tokio::time::Instant;

/// Marks the failover stage in [`Stage`](super::Stage).
#[derive(Debug, Clone, Copy)]
pub struct FailoverStage;

/// Whether a final result counts as the upstream having failed: any error, or a response its
/// failure conditions (`circuitBreaker.failureOn`, default 5xx and transport failures) name.
fn failed(core: &UpstreamCore, result: &Result<Rsp, ProxyError>) -> bool {
    match result {
        Err(_) => true,
        Ok(_) => classify(result).is_some_and(|o| core.failure_on.matches(&o)),
    }
}

impl<S: Call> Call for Stage<FailoverStage, S> {
    async fn call(&self, req: Req) -> Result<Rsp, ProxyError> {
        if self.core.failover.is_empty() && self.core.fallback_response.is_none() {
            return self.inner.call(req).await;
        }
        let core = &self.core;
        let grpc = is_grpc(&req);
        let (parts, body) = req.into_parts();
        let cap = core.routes.default_route().retry.replay_buffer_bytes;
        let origin = ReplayBody::new(body, cap);
        let rebuild = |body: ReplayBody| Request::from_parts(parts.clone(), Body::Replay(body));
        // A body too large to replay goes to the primary only (no failover target), but
        // the static response can still answer for it.
        let mut origin = Some(origin);
        let first = match origin.as_ref().and_then(ReplayBody::try_clone) {
            Some(b) => b,
            None => match origin.take() {
                Some(o) => o,
                None => return Err(ProxyError::BadRequest("request body lost".into())),
            },
        };
        let mut result = self.inner.call(rebuild(first)).await;
        if !failed(core, &result) {
            return result;
        }
        let snapshot = parts.extensions.get::<Arc<Snapshot>>().cloned();
        let deadline = parts.extensions.get::<Deadline>().map(|d| d.0);
        for name in &core.failover {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // No time left: a failover attempt could only time out (and count against
                // the target's breaker).
                break;
            }
            let Some(target) = snapshot
                .as_ref()
                .and_then(|s| s.route_from(name, &core.namespace))
            else {
                tracing::warn!(upstream = %core.name, failover = %name, "failover target has no UpstreamPolicy; skipping it");
                continue;
            };
            let Some(body) = origin.as_ref().and_then(ReplayBody::try_clone) else {
                break;
            };
            tracing::debug!(upstream = %core.name, failover = %name, "failing over");
            let mut req = rebuild(body);
            if let Ok(a) = Authority::try_from(target.name.as_ref()) {
                req.extensions_mut().insert(TargetAuthority(a));
            }
            result = target.attempts.call(req).await;
            if !failed(&target.core, &result) {
                core.metrics.fallback("failover");
                return result;
            }
        }
        match &core.fallback_response {
            Some(fallback) => {
                core.metrics.fallback("response");
                tracing::debug!(upstream = %core.name, "answering with the static fallback response");
                Ok(static_response(fallback, grpc))
            }
            None => result,
        }
    }
}

/// The policy's `fallback.response`, in HTTP or gRPC form.
fn static_response(fallback: &bulwark_proto::policy::StaticResponse, grpc: bool) -> Rsp {
    let marker = HeaderValue::from_static("response");
    let mut rsp = if grpc {
        let code = fallback
            .grpc_status
            .as_deref()
            .and_then(GrpcCode::from_name)
            .unwrap_or(GrpcCode::Unavailable);
        let message = fallback
            .grpc_message
            .as_deref()
            .or(fallback.body.as_deref())
            .unwrap_or("");
        grpc_status_response(code, message, HeaderValue::from_static("fallback"))
    } else {
        let mut rsp = Response::new(Body::full(fallback.body.clone().unwrap_or_default()));
        *rsp.status_mut() = fallback
            .status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    };
    for (name, value) in &fallback.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            rsp.headers_mut().insert(n, v);
        }
    }
    rsp.headers_mut()
        .insert(crate::headers::X_BULWARK_FALLBACK, marker);
    rsp
}
