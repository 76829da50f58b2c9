//! The overall deadline: `timeouts.request` of the request's route, shortened by the caller's
//! own deadline (`grpc-timeout`, or the configured HTTP deadline header in milliseconds). It
//! bounds every attempt, backoff and failover of the call; when it passes, whatever is running
//! is cancelled and the caller gets 504 / DEADLINE_EXCEEDED. A caller's deadline under
//! [`MIN_DEADLINE`] cannot be met (nor written on to the upstream, whose `grpc-timeout` the
//! sidecar gives in milliseconds): the call ends DEADLINE_EXCEEDED at once, never reaching the
//! upstream. A malformed one is ignored. Both are counted in `bulwark_caller_deadlines_total`.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tokio::time::Instant;

use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use crate::errors::ProxyError;
use crate::headers::grpc_timeout;

/// The shortest caller's deadline the sidecar tries to meet.
pub const MIN_DEADLINE: Duration = Duration::from_millis(1);

/// What the caller said of its deadline.
enum Callers {
    None,
    Given(Duration),
    Malformed,
}

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
    fn callers(&self, req: &Req, grpc: bool) -> Callers {
        let given = if grpc {
            req.headers()
                .get(crate::headers::GRPC_TIMEOUT)
                .map(|_| grpc_timeout(req.headers()))
        } else {
            self.deadline_header
                .as_ref()
                .and_then(|h| req.headers().get(h))
                .map(|v| {
                    v.to_str()
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_millis)
                })
        };
        match given {
            None => Callers::None,
            Some(Some(d)) => Callers::Given(d),
            Some(None) => Callers::Malformed,
        }
    }
}

impl<S: Call> Call for Deadline<S> {
    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let callers = match self.callers(&req, cx.grpc) {
            Callers::None => None,
            Callers::Malformed => {
                self.info.metrics.caller_deadline("malformed");
                None
            }
            Callers::Given(d) if d < MIN_DEADLINE => {
                self.info.metrics.caller_deadline("too-short");
                return Err(ProxyError::DeadlineTooShort {
                    upstream: self.info.name.to_string(),
                    timeout: d,
                });
            }
            Callers::Given(d) => Some(d),
        };
        let limit = match (cx.route.timeouts.request, callers) {
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
