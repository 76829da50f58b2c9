//! The circuit-breaker layer: asks the upstream's [`Breaker`](super::breaker::Breaker) before
//! each attempt (an open breaker fails the attempt at once, without touching the upstream),
//! records each attempt's outcome, and logs, counts and publishes every state change. Every
//! completed attempt is also counted for the health report, breaker or not, by the same rules.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::time::Instant;

use super::breaker::{Admission, Breaker, BreakerState, Transition};
use super::{Call, Req, Rsp, Stage, classify};
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
struct AdmissionGuard<'a> {
    breaker: &'a Mutex<Breaker>,
    admission: Option<Admission>,
}

impl Drop for AdmissionGuard<'_> {
    fn drop(&mut self) {
        if let (Some(a), Ok(mut b)) = (self.admission.take(), self.breaker.lock()) {
            b.release(a);
        }
    }
}

impl<S: Call> Call for Stage<BreakerStage, S> {
    async fn call(&self, req: Req) -> Result<Rsp, ProxyError> {
        let core = &self.core;
        let started = Instant::now();
        // The lock is taken and released here, never held across the attempt.
        let admitted = core
            .breaker
            .as_deref()
            .and_then(|breaker| Some((breaker, breaker.lock().ok()?.try_acquire(started))));
        // No breaker to ask (or a poisoned one): the attempt is only counted for the report.
        let Some((breaker, admitted)) = admitted else {
            let result = self.inner.call(req).await;
            core.count_attempt(&result, started.elapsed());
            return result;
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(rejected) => {
                core.metrics.breaker_rejections.inc();
                return Err(ProxyError::BreakerOpen {
                    upstream: core.name.to_string(),
                    reason: rejected.reason,
                });
            }
        };
        if let Some(t) = admitted.transition {
            announce(core, t);
        }
        let mut guard = AdmissionGuard {
            breaker,
            admission: Some(admitted.admission),
        };
        let result = self.inner.call(req).await;
        core.count_attempt(&result, started.elapsed());
        if let Some(outcome) = classify(&result) {
            let now = Instant::now();
            let admission = guard.admission.take();
            let transition = match (admission, guard.breaker.lock()) {
                (Some(a), Ok(mut b)) => b.record(a, &outcome, now - started, now),
                _ => None,
            };
            if let Some(t) = transition {
                announce(core, t);
            }
        }
        result
    }
}
