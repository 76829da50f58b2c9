//! The per-upstream resilience stack: what each layer decides and in which order they apply.
//! Pure decision logic (schedules, windows, state machines) lives in one file per concern and is
//! unit-tested with explicit clocks; the layers here apply it to requests.
//!
//! The order is written once, in [`build`], with why each layer stands where it does.

pub mod backoff;
pub mod breaker;
pub mod budget;
mod bulkhead;
pub mod circuit;
pub mod config;
mod deadline;
mod degradation;
mod failover;
pub mod outcome;
pub mod outlier;
mod per_try;
pub mod replay;
mod retry;
pub mod retry_policy;

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_proto::policy::GrpcCode;
use http::{Request, Response};
use tokio::time::Instant;

pub use bulkhead::Bulkhead;

use crate::body::Body;
use crate::errors::ProxyError;
use crate::upstream::{Balance, UpstreamCore};
use outcome::Outcome;

pub type Req = Request<Body>;
pub type Rsp = Response<Body>;

/// One layer of an upstream's stack, called by shared reference. A stack is built once per
/// policy version and shared by every request to the upstream, so a call neither clones the
/// stack nor boxes a future: each layer's future is nested in the one above it, and a request
/// runs as one state machine.
pub trait Call: Send + Sync + 'static {
    fn call(&self, req: Req) -> impl Future<Output = Result<Rsp, ProxyError>> + Send;
}

impl<T: Call> Call for Arc<T> {
    fn call(&self, req: Req) -> impl Future<Output = Result<Rsp, ProxyError>> + Send {
        T::call(self, req)
    }
}

/// What a failover from another upstream goes through: that upstream's own retries, timeouts,
/// breaker and limits, inside the caller's deadline. Every upstream's stack has this type, so a
/// failover calls another upstream's attempts without type erasure.
pub type Attempts = Stage<
    retry::RetryStage,
    Stage<
        per_try::PerTryStage,
        Stage<circuit::BreakerStage, Stage<bulkhead::BulkheadStage, Balance>>,
    >,
>;

/// What a request routed to an upstream goes through.
pub type Full = Stage<
    degradation::DegradationGate,
    Stage<deadline::DeadlineStage, Stage<failover::FailoverStage, Arc<Attempts>>>,
>;

/// An upstream's two entry points: `full` is what a request routed to it goes through;
/// `attempts` is what a failover from another upstream goes through (and the bottom of `full`).
/// Built from the bottom up: the balancer first, the degradation gate last.
pub fn build(core: &Arc<UpstreamCore>) -> (Full, Arc<Attempts>) {
    // Balancer: power of two choices over endpoints not ejected as outliers, preferring
    // endpoints this request has not tried; the connection pool is below it.
    let balance = Balance::new(core.clone());
    // Bulkhead: bounds concurrent and waiting requests to this upstream; a permit is held
    // until the response body ends.
    let bulkhead = Stage::<bulkhead::BulkheadStage, _>::new(core, balance);
    // Circuit breaker: fails fast without touching the upstream while open; every attempt is
    // one outcome. Above the bulkhead so an open breaker queues nothing.
    let breaker = Stage::<circuit::BreakerStage, _>::new(core, bulkhead);
    // Per-try timeout: gives each attempt its deadline (never past the overall one) and tells
    // the upstream its budget in `grpc-timeout`. The timer itself fires at the bottom, so the
    // breaker and outlier detector see a timeout as an outcome.
    let per_try = Stage::<per_try::PerTryStage, _>::new(core, breaker);
    // Retry: classifies each attempt's outcome, spends the retry budget, waits the backoff,
    // replays the request body. Above the per-try timeout so a timed-out attempt can be
    // retried; below failover so each upstream retries with its own policy.
    let attempts = Arc::new(Stage::<retry::RetryStage, _>::new(core, per_try));
    // Failover: the primary with its retries, then each fallback upstream's own attempts
    // stack, then the static fallback response.
    let failover = Stage::<failover::FailoverStage, _>::new(core, attempts.clone());
    // Overall deadline: the policy's timeouts.request shortened by the caller's grpc-timeout;
    // bounds retries and failover together.
    let deadline = Stage::<deadline::DeadlineStage, _>::new(core, failover);
    // Degradation gate: first, so a request the level refuses costs no deadline timer, no
    // failover and no attempt. Inbound it sheds by priority and tells the app its level;
    // outbound it fails low-priority calls to an EMERGENCY upstream fast.
    let full = Stage::<degradation::DegradationGate, _>::new(core, deadline);
    (full, attempts)
}

/// One stage of an upstream's stack: the upstream's core (settings and state) and the next
/// layer. The marker `M` says which stage's [`Call`] implementation applies, so every stage
/// shares this one type and each file holds only its stage's logic.
pub struct Stage<M, S> {
    core: Arc<UpstreamCore>,
    inner: S,
    _stage: PhantomData<fn() -> M>,
}

impl<M, S> Stage<M, S> {
    fn new(core: &Arc<UpstreamCore>, inner: S) -> Self {
        Stage {
            core: core.clone(),
            inner,
            _stage: PhantomData,
        }
    }
}

/// The overall deadline of a request (request extension, set by the deadline layer).
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

/// The deadline of the current attempt and the per-try limit it came from.
#[derive(Debug, Clone, Copy)]
pub struct AttemptDeadline {
    pub at: Instant,
    pub limit: Duration,
}

/// What one request's layers share: attempts made and endpoints tried.
#[derive(Debug, Default)]
pub struct CallState {
    attempts: AtomicU32,
    tried: Mutex<Vec<SocketAddr>>,
}

impl CallState {
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    pub(crate) fn attempt_started(&self, endpoint: SocketAddr) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut tried) = self.tried.lock() {
            tried.push(endpoint);
        }
    }

    pub(crate) fn tried(&self, endpoint: SocketAddr) -> bool {
        self.tried
            .lock()
            .map(|t| t.contains(&endpoint))
            .unwrap_or(false)
    }

    /// The endpoints tried, when some were (empty `Vec` allocates nothing).
    pub(crate) fn tried_any(&self) -> bool {
        self.tried.lock().map(|t| !t.is_empty()).unwrap_or(false)
    }
}

/// What an attempt came to, as far as its response headers (or its error) tell; `None` for
/// failures that are not the upstream's (deadline, breaker open, bulkhead full).
pub fn classify(result: &Result<Rsp, ProxyError>) -> Option<Outcome> {
    match result {
        Ok(rsp) => Some(Outcome::Response {
            status: rsp.status().as_u16(),
            grpc: rsp
                .headers()
                .get(crate::headers::GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .and_then(GrpcCode::from_i32),
        }),
        Err(e) => match e {
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::NoEndpoints { .. } => Some(Outcome::ConnectFailure),
            ProxyError::Reset { .. } | ProxyError::Handshake { .. } => Some(Outcome::Reset),
            ProxyError::AttemptTimeout { .. } => Some(Outcome::Timeout),
            _ => None,
        },
    }
}

/// Whether a request is gRPC (by content-type), for layers that must answer in kind.
pub(crate) fn is_grpc(req: &Req) -> bool {
    crate::headers::is_grpc(req.headers())
}
