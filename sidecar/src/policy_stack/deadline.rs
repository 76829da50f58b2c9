//! The overall deadline: `timeouts.request` of the request's route, shortened by the caller's
//! own deadline (`grpc-timeout`, or the configured HTTP deadline header in milliseconds). It
//! bounds every attempt, backoff and failover of the call; when it passes, whatever is running
//! is cancelled and the caller gets 504 / DEADLINE_EXCEEDED.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tokio::time::Instant;

use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use crate::errors::ProxyError;
use crate::headers::grpc_timeout;

/// The deadline layer over `S`.
pub struct Deadline<S> {
    info: Arc<UpstreamInfo>,
    /// The header HTTP callers give their deadline in (milliseconds), if any.
    deadline_header: Option<HeaderName>,
    inner: S,
}

impl<S> Deadline<S> {
    pub fn new(info: Arc<UpstreamInfo>, deadline_header: Option<HeaderName>, inner: S) -> Self {
        Deadline {
            info,
            deadline_header,
            inner,
        }
    }

    /// The deadline the caller gave, if any.
    fn callers(&self, req: &Req, grpc: bool) -> Option<Duration> {
        if grpc {
            return grpc_timeout(req.headers());
        }
        self.deadline_header
            .as_ref()
            .and_then(|h| req.headers().get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
    }
}

impl<S: Call> Call for Deadline<S> {
    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let limit = match (cx.route.timeouts.request, self.callers(&req, cx.grpc)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(limit) = limit else {
            return self.inner.call(req, cx).await;
        };
        let deadline = Instant::now() + limit;
        let exceeded = || ProxyError::DeadlineExceeded {
            upstream: self.info.name.to_string(),
            timeout: limit,
        };
        let cx = Cx {
            deadline: Some(deadline),
            ..cx
        };
        match tokio::time::timeout_at(deadline, self.inner.call(req, cx)).await {
            // The last attempt's timer is the deadline itself: say so.
            Ok(Err(ProxyError::AttemptTimeout { .. })) if Instant::now() >= deadline => {
                Err(exceeded())
            }
            Ok(result) => result,
            Err(_) => Err(exceeded()),
        }
    }
}
