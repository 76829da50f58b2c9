//! The circuit-breaker layer: asks the upstream's [`Breaker`] (the state machine in
//! [`machine`]) before each attempt — an open breaker fails the attempt at once, without
//! touching the upstream — records each attempt's outcome, and logs, counts and publishes every
//! state change. Every completed attempt is also counted for the health report, breaker or
//! not, by the same rules.

pub mod machine;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use super::outcome::{ConditionSet, classify};
use crate::errors::ProxyError;
use crate::headers::X_BULWARK_ERROR;
use crate::health::stats::{UpstreamStats, is_slow};
use machine::{Admission, Breaker, BreakerState, Transition};

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

/// The circuit-breaker layer over `S`.
pub struct CircuitBreaker<S> {
    info: Arc<UpstreamInfo>,
    /// `None`: the upstream has no `circuitBreaker`; attempts are only counted.
    breaker: Option<Arc<Mutex<Breaker>>>,
    /// Where state changes are published (the health reporter listens).
    events: broadcast::Sender<BreakerEvent>,
    /// Attempts, failures and slow calls since the last health report.
    stats: Arc<UpstreamStats>,
    /// What counts as the upstream failing (the breaker's `failureOn`, or its default).
    failure_on: ConditionSet,
    /// `circuitBreaker.slowCall.duration`: attempts this long count as slow.
    slow_call: Option<Duration>,
    inner: S,
}

/// What the circuit-breaker layer keeps and reports to.
pub struct BreakerParts {
    pub breaker: Option<Arc<Mutex<Breaker>>>,
    pub events: broadcast::Sender<BreakerEvent>,
    pub stats: Arc<UpstreamStats>,
    pub failure_on: ConditionSet,
    pub slow_call: Option<Duration>,
}

impl<S> CircuitBreaker<S> {
    pub fn new(info: Arc<UpstreamInfo>, parts: BreakerParts, inner: S) -> Self {
        CircuitBreaker {
            info,
            breaker: parts.breaker,
            events: parts.events,
            stats: parts.stats,
            failure_on: parts.failure_on,
            slow_call: parts.slow_call,
            inner,
        }
    }

    /// Logs, counts and publishes one transition.
    fn announce(&self, t: Transition) {
        let info = &self.info;
        tracing::info!(
            upstream = %info.name,
            namespace = %info.namespace,
            from = %t.from,
            to = %t.to,
            reason = %t.reason,
            "circuit breaker changed state"
        );
        info.metrics.breaker_transition(t.to.as_str());
        let _ = self.events.send(BreakerEvent {
            upstream: info.name.clone(),
            namespace: info.namespace.clone(),
            from: t.from,
            to: t.to,
            reason: t.reason,
            at: SystemTime::now(),
        });
    }

    /// Counts one completed attempt for the health report, classified as the breaker does.
    fn count(&self, result: &Result<Rsp, ProxyError>, elapsed: Duration) {
        // The upstream's own sidecar shed it: the upstream is overloaded.
        if let Ok(rsp) = result
            && rsp
                .headers()
                .get(X_BULWARK_ERROR)
                .is_some_and(|v| v.as_bytes() == b"overloaded")
        {
            self.stats.overloaded();
        }
        if let Some(outcome) = classify(result) {
            self.stats.record(
                self.failure_on.matches(&outcome),
                is_slow(self.slow_call, elapsed),
                elapsed,
            );
        }
    }
}

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

impl<S: Call> Call for CircuitBreaker<S> {
    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let started = Instant::now();
        // The lock is taken and released here, never held across the attempt.
        let admitted = self
            .breaker
            .as_deref()
            .and_then(|breaker| Some((breaker, breaker.lock().ok()?.try_acquire(started))));
        // No breaker to ask (or a poisoned one): the attempt is only counted for the report.
        let Some((breaker, admitted)) = admitted else {
            let result = self.inner.call(req, cx).await;
            self.count(&result, started.elapsed());
            return result;
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(rejected) => {
                self.info.metrics.breaker_rejections.inc();
                if let Some(trace) = cx.state.trace() {
                    trace.event(
                        "circuit open",
                        vec![opentelemetry::KeyValue::new(
                            "bulwark.reason",
                            rejected.reason.to_string(),
                        )],
                    );
                }
                return Err(ProxyError::BreakerOpen {
                    upstream: self.info.name.to_string(),
                    reason: rejected.reason,
                });
            }
        };
        if let Some(t) = admitted.transition {
            if let Some(trace) = cx.state.trace() {
                trace.event("circuit half-open", vec![]);
            }
            self.announce(t);
        }
        let mut guard = AdmissionGuard {
            breaker,
            admission: Some(admitted.admission),
        };
        let result = self.inner.call(req, cx).await;
        self.count(&result, started.elapsed());
        if let Some(outcome) = classify(&result) {
            let now = Instant::now();
            let admission = guard.admission.take();
            let transition = match (admission, guard.breaker.lock()) {
                (Some(a), Ok(mut b)) => b.record(a, &outcome, now - started, now),
                _ => None,
            };
            if let Some(t) = transition {
                self.announce(t);
            }
        }
        result
    }
}
