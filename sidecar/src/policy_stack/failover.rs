//! Failover: when the primary upstream fails after its retries (or its breaker is open, or its
//! bulkhead is full), each `fallback.failover` upstream is tried in order with that upstream's
//! own attempts stack, inside the same deadline; when every one fails and `fallback.response`
//! is set, that static response is the answer. The targets and the static response are
//! resolved when the snapshot is built, not per request.

use std::future::Future;
use std::sync::Arc;

use bulwark_proto::policy::{self, GrpcCode};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use tokio::time::Instant;

use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use super::outcome::{ConditionSet, classify};
use crate::body::{Body, ReplayBody};
use crate::errors::{ProxyError, grpc_status_response};
use crate::headers::X_BULWARK_FALLBACK;

/// Another upstream a failover can go to: it sends the request through its own attempts, under
/// its own route for the request and with its own name as the authority.
pub trait Target: Send + Sync + 'static {
    fn name(&self) -> &str;

    /// Sends `req` within `cx`'s deadline and call state.
    fn call<'a>(
        &'a self,
        req: Req,
        cx: Cx<'a>,
    ) -> impl Future<Output = Result<Rsp, ProxyError>> + Send + 'a;

    /// Whether a result counts as this upstream having failed.
    fn failed(&self, result: &Result<Rsp, ProxyError>) -> bool;
}

/// Whether a final result counts as an upstream having failed: any error, or a response its
/// failure conditions (`circuitBreaker.failureOn`, default 5xx and transport failures) name.
pub fn failed(failure_on: &ConditionSet, result: &Result<Rsp, ProxyError>) -> bool {
    match result {
        Err(_) => true,
        Ok(_) => classify(result).is_some_and(|o| failure_on.matches(&o)),
    }
}

/// The failover layer over the primary's attempts `S`, with targets `T`.
pub struct Failover<S, T> {
    info: Arc<UpstreamInfo>,
    /// What counts as the primary failing.
    failure_on: ConditionSet,
    /// `fallback.failover`, resolved in order (names without an UpstreamPolicy are left out).
    targets: Vec<T>,
    /// `fallback.response`, compiled.
    response: Option<StaticResponse>,
    /// The primary's `replayBufferBytes`: a larger body goes to the primary only.
    replay_cap: u64,
    inner: S,
}

impl<S, T> Failover<S, T> {
    pub fn new(
        info: Arc<UpstreamInfo>,
        failure_on: ConditionSet,
        targets: Vec<T>,
        response: Option<StaticResponse>,
        replay_cap: u64,
        inner: S,
    ) -> Self {
        Failover {
            info,
            failure_on,
            targets,
            response,
            replay_cap,
            inner,
        }
    }
}

impl<S: Call, T: Target> Call for Failover<S, T> {
    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        if self.targets.is_empty() && self.response.is_none() {
            return self.inner.call(req, cx).await;
        }
        let (parts, body) = req.into_parts();
        let rebuild =
            |body: ReplayBody<Body>| Request::from_parts(parts.clone(), Body::Replay(body));
        // A body too large to replay goes to the primary only (no failover target), but the
        // static response can still answer for it.
        let mut origin = Some(ReplayBody::new(body, self.replay_cap));
        let first = match origin.as_ref().and_then(ReplayBody::try_clone) {
            Some(b) => b,
            None => match origin.take() {
                Some(o) => o,
                None => return Err(ProxyError::BadRequest("request body lost".into())),
            },
        };
        let mut result = self.inner.call(rebuild(first), cx).await;
        if !failed(&self.failure_on, &result) {
            return result;
        }
        for target in &self.targets {
            if cx.deadline.is_some_and(|d| Instant::now() >= d) {
                // No time left: a failover attempt could only time out (and count against the
                // target's breaker).
                break;
            }
            let Some(body) = origin.as_ref().and_then(ReplayBody::try_clone) else {
                break;
            };
            tracing::debug!(upstream = %self.info.name, failover = target.name(), "failing over");
            if let Some(trace) = cx.state.trace() {
                trace.event(
                    "failover",
                    vec![opentelemetry::KeyValue::new(
                        "bulwark.failover",
                        target.name().to_string(),
                    )],
                );
            }
            result = target.call(rebuild(body), cx).await;
            if !target.failed(&result) {
                self.info.metrics.fallback("failover");
                return result;
            }
        }
        match &self.response {
            Some(fallback) => {
                self.info.metrics.fallback("response");
                tracing::debug!(upstream = %self.info.name, "answering with the static fallback response");
                Ok(fallback.respond(cx.grpc))
            }
            None => result,
        }
    }
}

/// A policy's `fallback.response`, built once: the HTTP answer and the gRPC one.
#[derive(Debug, Clone)]
pub struct StaticResponse {
    status: StatusCode,
    body: Bytes,
    /// The HTTP answer's headers.
    http: HeaderMap,
    /// The gRPC answer's headers (a trailers-only response).
    grpc: HeaderMap,
}

impl StaticResponse {
    pub fn compile(fallback: &policy::StaticResponse) -> StaticResponse {
        let extra: Vec<(HeaderName, HeaderValue)> = fallback
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        let finish = |mut headers: HeaderMap| {
            for (n, v) in &extra {
                headers.insert(n.clone(), v.clone());
            }
            headers.insert(X_BULWARK_FALLBACK, HeaderValue::from_static("response"));
            headers
        };
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
        let grpc = grpc_status_response(code, message, HeaderValue::from_static("fallback"));
        let mut http = HeaderMap::new();
        http.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        StaticResponse {
            status: fallback
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            body: Bytes::from(fallback.body.clone().unwrap_or_default()),
            http: finish(http),
            grpc: finish(grpc.headers().clone()),
        }
    }

    /// The answer, in HTTP or gRPC form.
    pub fn respond(&self, grpc: bool) -> Rsp {
        if grpc {
            let mut rsp = Response::new(Body::Empty);
            *rsp.headers_mut() = self.grpc.clone();
            return rsp;
        }
        let mut rsp = Response::new(Body::full(self.body.clone()));
        *rsp.status_mut() = self.status;
        *rsp.headers_mut() = self.http.clone();
        rsp
    }
}
