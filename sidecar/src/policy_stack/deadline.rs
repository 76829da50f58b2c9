//! The overall deadline: `timeouts.request` of the request's route, shortened by the caller's
//! own deadline (`grpc-timeout`, or the configured HTTP deadline header in milliseconds). It bounds every attempt, backoff and failover of the call; when it
//! passes, whatever is running is cancelled and the caller gets 504 / DEADLINE_EXCEEDED.

use tokio::time::Instant;

use super::{Call, Deadline, Req, Rsp, Stage, is_grpc};
use crate::errors::ProxyError;
use crate::headers::grpc_timeout;

/// Marks the deadline stage in [`Stage`](super::Stage).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineStage;

impl<S: Call> Call for Stage<DeadlineStage, S> {
    async fn call(&self, mut req: Req) -> Result<Rsp, ProxyError> {
        let grpc = is_grpc(&req);
        let route = self
            .core
            .routes
            .select(req.method(), req.uri().path(), grpc);
        let caller = if grpc {
            grpc_timeout(req.headers())
        } else {
            self.core
                .deadline_header
                .as_ref()
                .and_then(|h| req.headers().get(h))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(std::time::Duration::from_millis)
        };
        let limit = match (route.timeouts.request, caller) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(limit) = limit else {
            return self.inner.call(req).await;
        };
        let deadline = Instant::now() + limit;
        req.extensions_mut().insert(Deadline(deadline));
        let exceeded = || ProxyError::DeadlineExceeded {
            upstream: self.core.name.to_string(),
            timeout: limit,
        };
        match tokio::time::timeout_at(deadline, self.inner.call(req)).await {
            // The last attempt's timer is the deadline itself: say so.
            Ok(Err(ProxyError::AttemptTimeout { .. })) if Instant::now() >= deadline => {
                Err(exceeded())
            }
            Ok(result) => result,
            Err(_) => Err(exceeded()),
        }
    }
}
