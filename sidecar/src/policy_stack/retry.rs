//! The retry layer: sends a request again when its attempt failed in a way `retryOn` names,
//! the request is safe to repeat, its body can be replayed, attempts and the retry budget
//! allow, and the backoff (or the upstream's pushback) fits in `maxElapsed` and the deadline.
//! Decisions are made on response headers only: once a response is returned its body streams
//! to the caller and is never retried.

use std::time::SystemTime;

use http::{HeaderName, HeaderValue, Request};
use tokio::time::Instant;

use super::outcome::Outcome;
use super::replay::ReplayBody;
use super::retry_policy::{next_delay, pushback, request_retryable};
use super::{Call, Deadline, Req, Rsp, Stage, classify, is_grpc};
use crate::body::Body;
use crate::errors::ProxyError;

pub const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("x-bulwark-attempt");

/// Marks the retry stage in [`Stage`](super::Stage).
#[derive(Debug, Clone, Copy)]
pub struct RetryStage;

/// Why a failed attempt was not retried (a metric label).
#[derive(Debug, Clone, Copy)]
enum Stop {
    AttemptsExhausted,
    NotRetryable,
    BodyNotReplayable,
    NoTimeLeft,
    BudgetExhausted,
}

impl<S: Call> Call for Stage<RetryStage, S> {
    async fn call(&self, mut req: Req) -> Result<Rsp, ProxyError> {
        let core = &self.core;
        let started = Instant::now();
        core.budget.deposit(started);
        let grpc = is_grpc(&req);
        let route = core.routes.select(req.method(), req.uri().path(), grpc);
        let max_attempts = core.attempt_cap(route.retry.max_attempts);
        req.headers_mut()
            .insert(ATTEMPT_HEADER, HeaderValue::from_static("1"));
        if max_attempts <= 1 {
            core.metrics.attempts.inc();
            return self.inner.call(req).await;
        }
        let cfg = &route.retry;
        let retryable = request_retryable(req.method(), grpc, req.headers(), cfg, route.idempotent);
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
            core.metrics.attempts.inc();
            let result = self.inner.call(req).await;

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
            let remaining = parts
                .extensions
                .get::<Deadline>()
                .map(|d| d.0.saturating_duration_since(now));
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
                (None, Some(d)) if !core.budget.try_withdraw(now) => {
                    let _ = d;
                    (Some(Stop::BudgetExhausted), None)
                }
                (None, Some(d)) => (None, Some(d)),
            };
            if let Some(stop) = stop {
                if matches!(stop, Stop::BudgetExhausted) {
                    core.metrics.retry_budget_exhausted.inc();
                }
                tracing::debug!(upstream = %core.name, attempt, ?stop, ?outcome, "not retrying");
                return result;
            }
            // The failed response is dropped: its connection closes or returns to the pool.
            drop(result);
            core.metrics.retries.inc();
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            attempt += 1;
        }
    }
}
