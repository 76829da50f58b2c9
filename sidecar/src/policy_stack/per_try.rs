//! Per-try timeout: each attempt gets `timeouts.perTry` of the route, never past the overall
//! deadline. The deadline travels down as a request extension and the balancer's send fires it,
//! so the breaker and outlier detector record a timed-out attempt like any other outcome. gRPC
//! upstreams are told their budget in `grpc-timeout`, HTTP upstreams in the deadline header.

use std::future::Future;

use http::HeaderValue;
use tokio::time::Instant;

use super::{AttemptDeadline, Call, Deadline, Req, Rsp, Stage, is_grpc};
use crate::errors::ProxyError;
use crate::headers::{GRPC_TIMEOUT, grpc_timeout_value};

/// Marks the pertry stage in [`Stage`](super::Stage).
#[derive(Debug, Clone, Copy)]
pub struct PerTryStage;

impl<S: Call> Call for Stage<PerTryStage, S> {
    fn call(&self, mut req: Req) -> impl Future<Output = Result<Rsp, ProxyError>> + Send {
        let grpc = is_grpc(&req);
        let now = Instant::now();
        let per_try = self
            .core
            .routes
            .select(req.method(), req.uri().path(), grpc)
            .timeouts
            .per_try;
        let overall = req.extensions().get::<Deadline>().map(|d| d.0);
        let attempt = match (per_try, overall) {
            (Some(limit), Some(end)) => Some(((now + limit).min(end), limit)),
            (Some(limit), None) => Some((now + limit, limit)),
            (None, Some(end)) => Some((end, end.saturating_duration_since(now))),
            (None, None) => None,
        };
        if let Some((at, limit)) = attempt {
            req.extensions_mut().insert(AttemptDeadline { at, limit });
            let ms = at.saturating_duration_since(now).as_millis().max(1);
            if grpc {
                req.headers_mut()
                    .insert(GRPC_TIMEOUT, grpc_timeout_value(ms));
            } else if let Some(name) = &self.core.deadline_header {
                // The next hop's sidecar shortens its own deadline by it.
                let ms = u64::try_from(ms).unwrap_or(u64::MAX);
                req.headers_mut()
                    .insert(name.clone(), HeaderValue::from(ms));
            }
        }
        self.inner.call(req)
    }
}
