//! The degradation gate, the first layer of every stack. Inbound: a request
//! whose priority the own level's `shedPriorities` lists is answered at once (503 with
//! `Retry-After`, gRPC UNAVAILABLE with `grpc-retry-pushback-ms`) without reaching the app;
//! every other request reaches the app with `x-bulwark-degradation: <LEVEL>`. Outbound: a
//! low-priority call to an upstream whose service is at EMERGENCY fails
//! fast without any attempt. Both read the levels lock-free and allocate only to refuse.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use super::{Req, ResponseFuture, Rsp, Stage};
use crate::errors::ProxyError;
use crate::health::levels::{DEGRADATION_HEADER, Priority, ServiceActions, fails_fast};
use crate::route::Snapshot;

/// Marks the degradation gate in [`Stage`](super::Stage).
#[derive(Debug, Clone, Copy)]
pub struct DegradationGate;

/// The own ServicePolicy's actions in the request's snapshot (defaults without one).
fn actions(req: &Req) -> &ServiceActions {
    match req.extensions().get::<Arc<Snapshot>>() {
        Some(s) => &s.actions,
        None => ServiceActions::defaults(),
    }
}

impl<S> Service<Req> for Stage<DegradationGate, S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let refused = if self.core.outbound {
            self.emergency(&req)
        } else {
            self.shed(&mut req)
        };
        match refused {
            Some(err) => Box::pin(async move { Err(err) }),
            None => Box::pin(self.inner.call(req)),
        }
    }
}

impl<S> Stage<DegradationGate, S> {
    /// Inbound: sheds the request, or marks it with the level it reaches the app at.
    fn shed(&self, req: &mut Req) -> Option<ProxyError> {
        let level = self.core.degradation.levels().own_level();
        let actions = actions(req);
        let priority = Priority::of(req.headers().get(&actions.priority_header));
        if actions.sheds(level, priority) {
            self.core.metrics.shed(level, priority);
            tracing::debug!(%level, %priority, "request shed");
            return Some(ProxyError::Shed {
                service: format!("{}/{}", self.core.namespace, self.core.name),
                level,
                priority,
                retry_after: actions.shed_retry_after,
            });
        }
        // The app learns the level it runs at; a value the caller sent is not trusted.
        req.headers_mut()
            .insert(DEGRADATION_HEADER, level.header_value());
        None
    }

    /// Outbound: fails a low-priority call to an EMERGENCY upstream.
    fn emergency(&self, req: &Req) -> Option<ProxyError> {
        let levels = self.core.degradation.levels();
        if !levels.any_emergency() {
            return None;
        }
        let level = levels.level_of(&self.core.namespace, &self.core.name);
        let priority = Priority::of(req.headers().get(&actions(req).priority_header));
        if !fails_fast(level, priority) {
            return None;
        }
        self.core.metrics.emergency_fail_fast.inc();
        tracing::debug!(upstream = %self.core.name, "low-priority call to an EMERGENCY upstream failed fast");
        Some(ProxyError::UpstreamEmergency {
            upstream: self.core.name.to_string(),
        })
    }
}
