//! An upstream's resilience stack: what each layer decides, and — written once, here — the
//! order they apply in and why. One file per layer; each layer owns its settings and state and
//! implements [`Call`](layer::Call); pure decision logic (schedules, windows, state machines)
//! sits beside the layer that applies it and is unit-tested with explicit clocks.
//!
//! ```text
//! Stack::call              route and criticality settled once, carried in the context
//!  └ Gate                  degradation: shed inbound by priority, fail fast to EMERGENCY
//!   └ RateLimited          rateLimit / inbound.rateLimit: token buckets, a reserve by tier
//!    └ Deadline            timeouts.request ∧ the caller's grpc-timeout
//!     └ Failover           primary, then fallback.failover upstreams, then fallback.response
//!      └ Attempts          (what a failover from another upstream goes through)
//!       └ Throttled        throttling: refuse here while the upstream refuses for overload
//!        └ Retry           retryOn, budget, backoff, body replay
//!         └ PerTry         timeouts.perTry, grpc-timeout to the upstream
//!          └ CircuitBreaker  fail fast while open; every attempt is an outcome
//!           └ Concurrency  adaptiveConcurrency: learned limit, queue by criticality
//!            └ Bulkhead    limits.maxConcurrent / maxPending
//!             └ Balance    p2c over endpoints not ejected; one attempt on the wire
//! ```

pub mod balance;
pub mod breaker;
pub mod bulkhead;
pub mod concurrency;
pub mod deadline;
pub mod failover;
pub mod gate;
pub mod layer;
pub mod outcome;
pub mod per_try;
pub mod rate_limit;
pub mod retry;
pub mod routes;
pub mod throttling;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use http::HeaderName;
use http::uri::Authority;

use crate::errors::ProxyError;
use crate::headers::is_grpc;
use crate::health::actions::ServiceActions;
use crate::health::levels::Degradation;
use crate::priority::Criticality;
use balance::Balance;
use breaker::{BreakerParts, CircuitBreaker};
use bulkhead::{Bulkhead, Limited, Slots};
use concurrency::{Concurrency, Limiter};
use deadline::Deadline;
use failover::{Failover, StaticResponse, Target};
use gate::{Direction, Gate};
use layer::{Call, CallState, Cx, Req, Rsp, UpstreamInfo};
use outcome::ConditionSet;
use per_try::PerTry;
use rate_limit::{RateLimited, RateLimiter};
use retry::Retry;
use retry::budget::RetryBudget;
use routes::UpstreamRoutes;
use throttling::{Throttled, Throttler};

/// The layers every attempt of one upstream goes through, top to bottom.
type AttemptLayers = Throttled<Retry<PerTry<CircuitBreaker<Concurrency<Bulkhead<Balance>>>>>>;

/// The layers a request routed to an upstream goes through, top to bottom; the primary's and
/// the failover targets' attempts at the bottom.
type RequestLayers = Gate<RateLimited<Deadline<Failover<Arc<Attempts>, Arc<Attempts>>>>>;

/// What a request routed to an upstream goes through.
pub struct Stack {
    routes: Arc<UpstreamRoutes>,
    /// The own ServicePolicy's actions: the headers a request names its criticality in.
    actions: Arc<ServiceActions>,
    layers: RequestLayers,
}

impl Stack {
    /// Sends `req` to the upstream through every layer, with `authority` as the authority it
    /// goes out with; `state` counts the attempts (for the access log). The route is selected
    /// here, once, and travels down in the context.
    pub async fn call(
        &self,
        mut req: Req,
        authority: &Authority,
        state: &CallState,
    ) -> Result<Rsp, ProxyError> {
        let grpc = is_grpc(req.headers());
        let route = self.routes.select(req.method(), req.uri().path(), grpc);
        // The request's criticality, settled once and sent on, so the next hop (and the app,
        // which passes it on like a trace header) sees the same. A request that names it goes
        // on as it is; one that named none and has the default sends none, and the next hop's
        // own defaults apply to it.
        let header = &self.actions.criticality_header;
        let criticality = Criticality::of(
            req.headers(),
            header,
            &self.actions.priority_header,
            route.criticality,
        );
        let named = req
            .headers()
            .get(header)
            .and_then(|v| Criticality::parse(v.as_bytes()));
        if named != Some(criticality)
            && (criticality != Criticality::SheddablePlus || req.headers().contains_key(header))
        {
            req.headers_mut()
                .insert(header.clone(), criticality.header_value());
        }
        let cx = Cx {
            route,
            grpc,
            authority,
            state,
            deadline: None,
            attempt: None,
            criticality,
        };
        self.layers.call(req, cx).await
    }
}

/// An upstream's attempts: what a failover from another upstream goes through, and the bottom
/// of the upstream's own [`Stack`]. Reused by new snapshots while its policy is unchanged.
pub struct Attempts {
    info: Arc<UpstreamInfo>,
    routes: Arc<UpstreamRoutes>,
    /// What counts as this upstream failing (for a failover that reaches it).
    failure_on: ConditionSet,
    /// The upstream's name, the authority a failover request goes out with.
    authority: Authority,
    layers: AttemptLayers,
}

impl Call for Attempts {
    fn call<'a>(
        &'a self,
        req: Req,
        cx: Cx<'a>,
    ) -> impl Future<Output = Result<Rsp, ProxyError>> + Send + 'a {
        self.layers.call(req, cx)
    }
}

impl Target for Arc<Attempts> {
    fn name(&self) -> &str {
        &self.info.name
    }

    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        // The target's own route for the request, its own name as the authority; the caller's
        // deadline and attempt count.
        let route = self.routes.select(req.method(), req.uri().path(), cx.grpc);
        let cx = Cx {
            route,
            authority: &self.authority,
            ..cx
        };
        self.layers.call(req, cx).await
    }

    fn failed(&self, result: &Result<Rsp, ProxyError>) -> bool {
        failover::failed(&self.failure_on, result)
    }
}

/// What an upstream's attempts are built from: its settings and the state each layer keeps
/// (carried over from the upstream's previous version where its settings did not change).
pub struct AttemptParts {
    pub info: Arc<UpstreamInfo>,
    pub routes: Arc<UpstreamRoutes>,
    /// The upstream's name as an authority.
    pub authority: Authority,
    pub budget: Arc<RetryBudget>,
    /// Levels whose `maxRetryAttempts` caps the upstream's (outbound only).
    pub retry_cap: Option<Arc<Degradation>>,
    pub deadline_header: Option<HeaderName>,
    pub breaker: BreakerParts,
    pub slots: Option<Arc<Slots>>,
    pub limited: Limited,
    /// `adaptiveConcurrency`, when set.
    pub limiter: Option<Arc<Limiter>>,
    /// `throttling`, when set.
    pub throttler: Option<Arc<Throttler>>,
    pub balance: Balance,
}

/// Builds an upstream's attempts, from the bottom up.
pub fn attempts(parts: AttemptParts) -> Arc<Attempts> {
    let info = parts.info;
    let failure_on = parts.breaker.failure_on.clone();
    // Balance: power of two choices over endpoints not ejected as outliers, preferring
    // endpoints this request has not tried; the connection pool is below it.
    let balance = parts.balance;
    // Bulkhead: bounds concurrent and waiting requests to this upstream; a slot is held until
    // the response body ends.
    let bulkhead = Bulkhead::new(info.clone(), parts.slots, parts.limited.clone(), balance);
    // Adaptive concurrency: a limit learned from the attempts' latency, a queue served by
    // criticality in front of it. Above the bulkhead so a static limit stays a hard cap under
    // it; below the breaker, which fails fast without queueing.
    let concurrency = Concurrency::new(info.clone(), parts.limiter, parts.limited, bulkhead);
    // Circuit breaker: fails fast without touching the upstream while open; every attempt is
    // one outcome. Above the limits so an open breaker queues nothing.
    let breaker = CircuitBreaker::new(info.clone(), parts.breaker, concurrency);
    // Per-try timeout: gives each attempt its deadline (never past the overall one) and tells
    // the upstream its budget in `grpc-timeout`. The timer itself fires at the bottom, so the
    // breaker and outlier detector see a timeout as an outcome.
    let per_try = PerTry::new(parts.deadline_header, breaker);
    // Retry: classifies each attempt's outcome, spends the retry budget, waits the backoff,
    // replays the request body. Above the per-try timeout so a timed-out attempt can be
    // retried; below failover so each upstream retries with its own policy.
    let retry = Retry::new(info.clone(), parts.budget, parts.retry_cap, per_try);
    // Client-side throttling: above retry, so a request counts once however many attempts it
    // makes; at the top of the attempts, so a throttled primary still fails over.
    let throttled = Throttled::new(info.clone(), parts.throttler, retry);
    Arc::new(Attempts {
        info,
        routes: parts.routes,
        failure_on,
        authority: parts.authority,
        layers: throttled,
    })
}

/// What the layers above an upstream's attempts are built from.
pub struct StackParts {
    pub direction: Direction,
    /// The levels in force.
    pub degradation: Arc<Degradation>,
    /// The own ServicePolicy's actions.
    pub actions: Arc<ServiceActions>,
    pub deadline_header: Option<HeaderName>,
    /// `fallback.failover`, resolved.
    pub failover: Vec<Arc<Attempts>>,
    /// `fallback.response`, compiled.
    pub response: Option<StaticResponse>,
    /// `rateLimit` (outbound) or `inbound.rateLimit`, when set.
    pub rate_limiter: Option<Arc<RateLimiter>>,
}

/// Builds what a request routed to the upstream of `attempts` goes through.
pub fn stack(attempts: Arc<Attempts>, parts: StackParts) -> Stack {
    let info = attempts.info.clone();
    let routes = attempts.routes.clone();
    let replay_cap = routes.default_route().retry.replay_buffer_bytes;
    // Failover: the primary with its retries, then each fallback upstream's own attempts,
    // then the static fallback response.
    let failover = Failover::new(
        info.clone(),
        attempts.failure_on.clone(),
        parts.failover,
        parts.response,
        replay_cap,
        attempts,
    );
    // Overall deadline: the route's timeouts.request shortened by the caller's deadline;
    // bounds retries and failover together.
    let deadline = Deadline::new(info.clone(), parts.deadline_header, failover);
    // Rate limit: each request takes one token (its retries and failover none); above the
    // deadline so a refused request costs no timer, below the gate so shed requests take none.
    let rate_limited = RateLimited::new(
        info.clone(),
        parts.rate_limiter,
        parts.degradation.clone(),
        deadline,
    );
    // Degradation gate: first, so a request the level refuses costs no deadline timer, no
    // failover and no attempt. Inbound it sheds by priority and tells the app its level;
    // outbound it fails low-priority calls to an EMERGENCY upstream fast.
    let actions = parts.actions.clone();
    let gate = Gate::new(
        info,
        parts.direction,
        parts.degradation,
        parts.actions,
        rate_limited,
    );
    Stack {
        routes,
        actions,
        layers: gate,
    }
}

impl Attempts {
    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }
}
