//! Per-try timeout: each attempt gets `timeouts.perTry` of the route, never past the overall
//! deadline. The attempt's deadline travels down in the context and the balancer's send fires
//! it, so the breaker and outlier detector record a timed-out attempt like any other outcome.
//! gRPC upstreams are told their budget in `grpc-timeout`, HTTP upstreams in the deadline
//! header.

use std::future::Future;

use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use super::layer::{AttemptDeadline, Call, Cx, Req, Rsp};
use crate::errors::ProxyError;
use crate::headers::{GRPC_TIMEOUT, grpc_timeout_value};

/// The per-try timeout layer over `S`.
pub struct PerTry<S> {
    /// The header the next hop's sidecar reads an HTTP deadline from, if any.
    deadline_header: Option<HeaderName>,
    inner: S,
}

impl<S> PerTry<S> {
    pub fn new(deadline_header: Option<HeaderName>, inner: S) -> Self {
        PerTry {
            deadline_header,
            inner,
        }
    }
}

impl<S: Call> Call for PerTry<S> {
    fn call<'a>(
        &'a self,
        mut req: Req,
        cx: Cx<'a>,
    ) -> impl Future<Output = Result<Rsp, ProxyError>> + Send + 'a {
        let now = Instant::now();
        let attempt = match (cx.route.timeouts.per_try, cx.deadline) {
            (Some(limit), Some(end)) => Some(AttemptDeadline {
                at: (now + limit).min(end),
                limit,
            }),
            (Some(limit), None) => Some(AttemptDeadline {
                at: now + limit,
                limit,
            }),
            (None, Some(end)) => Some(AttemptDeadline {
                at: end,
                limit: end.saturating_duration_since(now),
            }),
            (None, None) => None,
        };
        if let Some(a) = attempt {
            let ms = a.at.saturating_duration_since(now).as_millis().max(1);
            if cx.grpc {
                req.headers_mut()
                    .insert(GRPC_TIMEOUT, grpc_timeout_value(ms));
            } else if let Some(name) = &self.deadline_header {
                // The next hop's sidecar shortens its own deadline by it.
                let ms = u64::try_from(ms).unwrap_or(u64::MAX);
                req.headers_mut()
                    .insert(name.clone(), HeaderValue::from(ms));
            }
        }
        self.inner.call(req, Cx { attempt, ..cx })
    }
}
