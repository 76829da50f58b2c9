//! The retry layer: sends a request again when its attempt failed in a way `retryOn` names,
//! the request is safe to repeat, its body can be replayed, attempts and the retry budget
//! allow, and the backoff (or the upstream's pushback) fits in `maxElapsed` and the deadline.
//! Decisions are made on response headers only: once a response is returned its body streams
//! to the caller and is never retried.
//!
//! Beside the layer: the route's compiled settings and the decisions taken from them
//! ([`policy`]), the backoff schedule ([`backoff`]) and the per-upstream budget ([`budget`]).

pub mod backoff;
pub mod budget;
pub mod policy;

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue, Request};
use opentelemetry::KeyValue;
use tokio::time::Instant;

use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use super::outcome::{Outcome, classify};
use crate::body::{Body, ReplayBody};
use crate::errors::ProxyError;
use crate::health::levels::Degradation;
use budget::RetryBudget;
use policy::{next_delay, pushback, request_retryable};

pub const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("x-bulwark-attempt");

/// The retry layer over `S`.
pub struct Retry<S> {
    info: Arc<UpstreamInfo>,
    /// The upstream's budget, shared by all its requests.
    budget: Arc<RetryBudget>,
    /// The levels whose `maxRetryAttempts` caps `maxAttempts` (outbound upstreams only).
    cap: Option<Arc<Degradation>>,
    inner: S,
}

impl<S> Retry<S> {
    pub fn new(
        info: Arc<UpstreamInfo>,
        budget: Arc<RetryBudget>,
        cap: Option<Arc<Degradation>>,
        inner: S,
    ) -> Self {
        Retry {
            info,
            budget,
            cap,
            inner,
        }
    }
}

/// Why a failed attempt was not retried (a metric label).
#[derive(Debug, Clone, Copy)]
enum Stop {
    AttemptsExhausted,
    NotRetryable,
    BodyNotReplayable,
    NoTimeLeft,
    BudgetExhausted,
}

impl Stop {
    /// The reason, as a span event says it.
    fn as_str(self) -> &'static str {
        match self {
            Stop::AttemptsExhausted => "attempts exhausted",
            Stop::NotRetryable => "not retryable",
            Stop::BodyNotReplayable => "body not replayable",
            Stop::NoTimeLeft => "no time left",
            Stop::BudgetExhausted => "retry budget exhausted",
        }
    }
}

impl<S: Call> Call for Retry<S> {
    async fn call<'a>(&'a self, mut req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let metrics = &self.info.metrics;
        let started = Instant::now();
        self.budget.deposit(started);
        let route = cx.route;
        let max_attempts = match &self.cap {
            Some(levels) => levels.cap_attempts(route.retry.max_attempts),
            None => route.retry.max_attempts,
        };
        req.headers_mut()
            .insert(ATTEMPT_HEADER, HeaderValue::from_static("1"));
        if max_attempts <= 1 {
            metrics.attempts.inc();
            return self.inner.call(req, cx).await;
        }
        let cfg = &route.retry;
        let retryable =
            request_retryable(req.method(), cx.grpc, req.headers(), cfg, route.idempotent);
        let (parts, body) = req.into_parts();
        // A body already made replayable above (failover) is shared, not copied again.
        let origin = match body {
            Body::Replay(b) => b,
            other => ReplayBody::new(other, cfg.replay_buffer_bytes),
        };
        let mut origin = Some(origin);
        let mut attempt: u32 = 1;
        loop {
            let body = match origin.as_ref().and_then(ReplayBody::try_clone) {
                Some(b) => b,
                // Too large to copy: sent once, as it is.
                None if attempt == 1 => match origin.take() {
                    Some(o) => o,
                    None => return Err(ProxyError::BadRequest("request body lost".into())),
                },
                // Checked before retrying (`is_capped`); never send a truncated body.
                None => {
                    return Err(ProxyError::BadRequest(
                        "the request body could not be replayed".into(),
                    ));
                }
            };
            let mut req = Request::from_parts(parts.clone(), Body::Replay(body));
            // The head already says attempt 1.
            if attempt > 1 {
                req.headers_mut()
                    .insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
            }
            metrics.attempts.inc();
            let result = self.inner.call(req, cx).await;

            let Some(outcome) = classify(&result) else {
                return result;
            };
            if !cfg.retry_on.matches(&outcome) {
                return result;
            }
            let now = Instant::now();
            let pushed = match &result {
                Ok(rsp) => pushback(rsp.headers(), SystemTime::now()),
                Err(_) => None,
            };
            let remaining = cx.deadline.map(|d| d.saturating_duration_since(now));
            let stop = if attempt >= max_attempts {
                Some(Stop::AttemptsExhausted)
            } else if retryable.is_err() && outcome != Outcome::ConnectFailure {
                // A request that never reached the upstream is safe to send again, whatever
                // its method.
                Some(Stop::NotRetryable)
            } else if origin.as_ref().is_none_or(ReplayBody::is_capped) {
                Some(Stop::BodyNotReplayable)
            } else {
                None
            };
            let delay = match stop {
                Some(_) => None,
                None => next_delay(
                    cfg,
                    attempt,
                    fastrand::f64(),
                    pushed,
                    now - started,
                    remaining,
                ),
            };
            let (stop, delay) = match (stop, delay) {
                (Some(s), _) => (Some(s), None),
                (None, None) => (Some(Stop::NoTimeLeft), None),
                (None, Some(d)) if !self.budget.try_withdraw(now) => {
                    let _ = d;
                    (Some(Stop::BudgetExhausted), None)
                }
                (None, Some(d)) => (None, Some(d)),
            };
            if let Some(stop) = stop {
                if matches!(stop, Stop::BudgetExhausted) {
                    metrics.retry_budget_exhausted.inc();
                }
                if let Some(trace) = cx.state.trace() {
                    trace.event(
                        "not retried",
                        vec![
                            KeyValue::new("bulwark.attempt", i64::from(attempt)),
                            KeyValue::new("bulwark.outcome", outcome.to_string()),
                            KeyValue::new("bulwark.reason", stop.as_str()),
                        ],
                    );
                }
                tracing::debug!(upstream = %self.info.name, attempt, ?stop, ?outcome, "not retrying");
                return result;
            }
            // The failed response is dropped: its connection closes or returns to the pool.
            drop(result);
            metrics.retries.inc();
            if let Some(trace) = cx.state.trace() {
                trace.event(
                    "retry",
                    vec![
                        KeyValue::new("bulwark.attempt", i64::from(attempt)),
                        KeyValue::new("bulwark.outcome", outcome.to_string()),
                        KeyValue::new(
                            "bulwark.backoff_ms",
                            delay.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                        ),
                    ],
                );
            }
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            attempt += 1;
        }
    }
}
