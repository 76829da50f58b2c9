//! The overall deadline: `timeouts.request` of the request's route, shortened by the caller's
//! own deadline (`grpc-timeout`, or the configured HTTP deadline header in milliseconds). It bounds every attempt, backoff and failover of the call; when it
//! passes, whatever is running is cancelled and the caller gets 504 / DEADLINE_EXCEEDED.

use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::Service;

use super::{Deadline, Req, ResponseFuture, Rsp, Stage, is_grpc};
use crate::errors::ProxyError;
use crate::headers::grpc_timeout;

/// Marks the deadline stage in [`Stage`](super::Stage).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineStage;

impl<S> Service<Req> for Stage<DeadlineStage, S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
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
            return Box::pin(self.inner.call(req));
        };
        let deadline = Instant::now() + limit;
        req.extensions_mut().insert(Deadline(deadline));
        let call = self.inner.call(req);
        let upstream = self.core.name.clone();
        Box::pin(async move {
            let exceeded = || ProxyError::DeadlineExceeded {
                upstream: upstream.to_string(),
                timeout: limit,
            };
            match tokio::time::timeout_at(deadline, call).await {
                // The last attempt's timer is the deadline itself: say so.
                Ok(Err(ProxyError::AttemptTimeout { .. })) if Instant::now() >= deadline => {
                    Err(exceeded())
                }
                Ok(result) => result,
                Err(_) => Err(exceeded()),
            }
        })
    }
}
