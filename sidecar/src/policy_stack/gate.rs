//! The degradation gate, the first layer of every stack. Inbound: a request whose priority (its
//! criticality's, [`crate::priority`]) the own level's `shedPriorities` lists is answered at once (503 with `Retry-After`, gRPC
//! UNAVAILABLE with `grpc-retry-pushback-ms`) without reaching the app; every other request
//! reaches the app with `x-bulwark-degradation: <LEVEL>` and, when the own service has
//! capabilities, `x-bulwark-capabilities`. Outbound: a low-priority call to an upstream whose
//! service is at EMERGENCY fails fast without any attempt. Both read the levels lock-free and
//! allocate only to refuse.

use std::sync::Arc;

use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use crate::errors::ProxyError;
use crate::headers::{
    X_BULWARK_CAPABILITIES, X_BULWARK_DEGRADATION, is_kubelet_probe, level_value,
};
use crate::health::actions::{ServiceActions, fails_fast};
use crate::health::levels::Degradation;
use crate::priority::Priority;

/// Which side of the pod the stack serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Calls from the app to an upstream.
    Outbound,
    /// Calls from other services to the app.
    Inbound,
}

/// The degradation gate over `S`.
pub struct Gate<S> {
    info: Arc<UpstreamInfo>,
    direction: Direction,
    /// The levels in force.
    degradation: Arc<Degradation>,
    /// The own ServicePolicy's actions (priority header, what each level sheds).
    actions: Arc<ServiceActions>,
    inner: S,
}

impl<S> Gate<S> {
    pub fn new(
        info: Arc<UpstreamInfo>,
        direction: Direction,
        degradation: Arc<Degradation>,
        actions: Arc<ServiceActions>,
        inner: S,
    ) -> Gate<S> {
        Gate {
            info,
            direction,
            degradation,
            actions,
            inner,
        }
    }
}

impl<S: Call> Call for Gate<S> {
    async fn call<'a>(&'a self, mut req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let priority = cx.criticality.priority();
        let refused = match self.direction {
            Direction::Outbound => self.emergency(priority),
            Direction::Inbound => self.shed(&mut req, priority),
        };
        match refused {
            Some(err) => Err(err),
            None => self.inner.call(req, cx).await,
        }
    }
}

impl<S> Gate<S> {
    /// Inbound: sheds the request, or marks it with the level it reaches the app at.
    fn shed(&self, req: &mut Req, priority: Priority) -> Option<ProxyError> {
        let levels = self.degradation.levels();
        let level = levels.own_level();
        if self.actions.sheds(level, priority) && !is_kubelet_probe(req.headers()) {
            self.info.metrics.shed(level, priority);
            tracing::debug!(%level, %priority, "request shed");
            return Some(ProxyError::Shed {
                service: format!("{}/{}", self.info.namespace, self.info.name),
                level,
                priority,
                retry_after: self.actions.shed_retry_after,
            });
        }
        // The app learns the level it runs at and what it can do; values the caller sent are
        // not trusted.
        let headers = req.headers_mut();
        headers.insert(X_BULWARK_DEGRADATION, level_value(level));
        match levels.capabilities_header() {
            Some(v) => headers.insert(X_BULWARK_CAPABILITIES, v.clone()),
            None => headers.remove(X_BULWARK_CAPABILITIES),
        };
        None
    }

    /// Outbound: fails a low-priority call to an EMERGENCY upstream.
    fn emergency(&self, priority: Priority) -> Option<ProxyError> {
        let levels = self.degradation.levels();
        if !levels.any_emergency() {
            return None;
        }
        let level = levels.level_of(&self.info.namespace, &self.info.name);
        if !fails_fast(level, priority) {
            return None;
        }
        self.info.metrics.emergency_fail_fast.inc();
        tracing::debug!(upstream = %self.info.name, "low-priority call to an EMERGENCY upstream failed fast");
        Some(ProxyError::UpstreamEmergency {
            upstream: self.info.name.to_string(),
        })
    }
}
