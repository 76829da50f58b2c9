//! The circuit-breaker layer: asks the upstream's [`Breaker`](super::breaker::Breaker) before
//! each attempt (an open breaker fails the attempt at once, without touching the upstream),
//! records each attempt's outcome, and logs, counts and publishes every state change. Every
//! completed attempt is also counted for the health report, breaker or not, by the same rules.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::time::Instant;
use tower::Service;

use super::breaker::{Admission, Breaker, BreakerState, Transition};
use super::{Req, ResponseFuture, Rsp, Stage, classify};
use crate::errors::ProxyError;
use crate::upstream::UpstreamCore;

/// A breaker state change, offered to whoever listens (the health reporter).
#[derive(Debug, Clone)]
pub struct BreakerEvent {
    pub upstream: Arc<str>,
    pub namespace: Arc<str>,
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: String,
    pub at: SystemTime,
}

/// Logs, counts and publishes one transition.
pub(crate) fn announce(core: &UpstreamCore, t: Transition) {
    tracing::info!(
        upstream = %core.name,
        namespace = %core.namespace,
        from = %t.from,
        to = %t.to,
        reason = %t.reason,
        "circuit breaker changed state"
    );
    core.metrics.breaker_transition(t.to);
    let _ = core.events.send(BreakerEvent {
        upstream: core.name.clone(),
        namespace: core.namespace.clone(),
        from: t.from,
        to: t.to,
        reason: t.reason,
        at: SystemTime::now(),
    });
}

/// Marks the breaker stage in [`Stage`](super::Stage).
#[derive(Debug, Clone, Copy)]
pub struct BreakerStage;

/// Gives a half-open probe slot back if the attempt is abandoned before its outcome is known.
struct AdmissionGuard {
    breaker: Arc<Mutex<Breaker>>,
    admission: Option<Admission>,
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        if let (Some(a), Ok(mut b)) = (self.admission.take(), self.breaker.lock()) {
            b.release(a);
        }
    }
}

/// An attempt without a breaker to ask: only counted for the health report.
fn counted<F>(core: Arc<UpstreamCore>, call: F, started: Instant) -> ResponseFuture
where
    F: std::future::Future<Output = Result<Rsp, ProxyError>> + Send + 'static,
{
    Box::pin(async move {
        let result = call.await;
        core.count_attempt(&result, started.elapsed());
        result
    })
}

impl<S> Service<Req> for Stage<BreakerStage, S>
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

    fn call(&mut self, req: Req) -> Self::Future {
        let started = Instant::now();
        let Some(breaker) = self.core.breaker.clone() else {
            return counted(self.core.clone(), self.inner.call(req), started);
        };
        let admitted = match breaker.lock() {
            Ok(mut b) => b.try_acquire(started),
            Err(_) => return counted(self.core.clone(), self.inner.call(req), started),
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(rejected) => {
                self.core.metrics.breaker_rejections.inc();
                let err = ProxyError::BreakerOpen {
                    upstream: self.core.name.to_string(),
                    reason: rejected.reason,
                };
                return Box::pin(async move { Err(err) });
            }
        };
        if let Some(t) = admitted.transition {
            announce(&self.core, t);
        }
        let mut guard = AdmissionGuard {
            breaker,
            admission: Some(admitted.admission),
        };
        let call = self.inner.call(req);
        let core = self.core.clone();
        Box::pin(async move {
            let result = call.await;
            core.count_attempt(&result, started.elapsed());
            if let Some(outcome) = classify(&result) {
                let now = Instant::now();
                let admission = guard.admission.take();
                let transition = match (admission, guard.breaker.lock()) {
                    (Some(a), Ok(mut b)) => b.record(a, &outcome, now - started, now),
                    _ => None,
                };
                if let Some(t) = transition {
                    announce(&core, t);
                }
            }
            result
        })
    }
}
