//! An upstream as the sidecar runs it: compiled once from its `UpstreamPolicy` into an
//! [`UpstreamCore`] (settings, endpoints, breaker, outlier detector, retry budget, bulkhead,
//! metric handles) and the [`policy_stack`](crate::policy_stack) built over it. A policy change
//! rebuilds the upstream but carries over each piece of state whose settings did not change, so
//! connections, breaker and outlier state and the retry budget survive unrelated edits.

mod balance;
mod discovery;
mod endpoint;
mod h2_client;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bulwark_proto::policy::{Protocol, StaticResponse, UpstreamPolicy, defaults};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Uri, Version, header};
use tokio::sync::broadcast;
use tokio::time::Instant;

pub use discovery::EndpointSet;
pub use endpoint::{ConnectSettings, Endpoint, UpstreamBody, Wire};

use crate::body::Body;
use crate::errors::ProxyError;
use crate::health::levels::Degradation;
use crate::health::stats::{UpstreamStats, is_slow};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::policy_stack::breaker::{Breaker, BreakerConfig, default_failure_on};
use crate::policy_stack::budget::{BudgetConfig, RetryBudget};
use crate::policy_stack::config::UpstreamRoutes;
use crate::policy_stack::outcome::ConditionSet;
use crate::policy_stack::outlier::{OutlierConfig, OutlierDetector};
use crate::policy_stack::{
    self, AttemptDeadline, Attempts, Bulkhead, Call, CallState, Full, Req, Rsp, classify,
};

pub use crate::policy_stack::circuit::BreakerEvent;

/// The authority a request is sent with (request extension): the caller's, or the failover
/// target's name.
#[derive(Debug, Clone)]
pub struct TargetAuthority(pub Authority);

/// What an upstream needs from the sidecar when it is built.
#[derive(Clone)]
pub struct BuildEnv {
    pub metrics: Arc<Metrics>,
    pub events: broadcast::Sender<BreakerEvent>,
    /// The levels in force and the retry cap they set, read per request.
    pub degradation: Arc<Degradation>,
    /// The header HTTP callers give their deadline in (milliseconds), if any.
    pub deadline_header: Option<http::HeaderName>,
}

/// An upstream's settings and state, shared by its layers.
pub struct UpstreamCore {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub policy: UpstreamPolicy,
    pub routes: UpstreamRoutes,
    protocol: Protocol,
    host_rewrite: bool,
    pub endpoints: Arc<EndpointSet>,
    connect: ConnectSettings,
    pub breaker: Option<Arc<Mutex<Breaker>>>,
    pub outlier: Option<Arc<Mutex<OutlierDetector>>>,
    /// What counts as the upstream failing (the breaker's `failureOn`, or its default).
    pub failure_on: ConditionSet,
    pub budget: Arc<RetryBudget>,
    pub bulkhead: Option<Arc<Bulkhead>>,
    pub failover: Vec<String>,
    pub fallback_response: Option<StaticResponse>,
    pub metrics: Arc<UpstreamMetrics>,
    pub events: broadcast::Sender<BreakerEvent>,
    /// Levels and the retry cap (outbound upstreams only obey the cap).
    pub degradation: Arc<Degradation>,
    /// Outbound (an upstream) or inbound (the local app).
    pub outbound: bool,
    /// Attempts, failures and slow calls since the last health report; kept across rebuilds.
    pub stats: Arc<UpstreamStats>,
    /// `circuitBreaker.slowCall.duration`: attempts this long count as slow.
    pub slow_call: Option<std::time::Duration>,
    pub deadline_header: Option<http::HeaderName>,
    /// The upstream's name as the `x-bulwark-upstream` response header value.
    upstream_header: Option<HeaderValue>,
    /// Identity of the endpoint list the outlier detector last saw.
    outlier_endpoints: AtomicUsize,
    /// Whether the last pick was in panic mode (every endpoint ejected).
    outlier_panic: AtomicBool,
}

impl std::fmt::Debug for UpstreamCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCore")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl UpstreamCore {
    /// Attempts allowed for a route: outbound, under the own level's `maxRetryAttempts`.
    pub fn attempt_cap(&self, route_attempts: u32) -> u32 {
        if self.outbound {
            self.degradation.cap_attempts(route_attempts)
        } else {
            route_attempts
        }
    }

    /// Counts one completed attempt for the health report, classified as the breaker does.
    pub(crate) fn count_attempt(
        &self,
        result: &Result<Rsp, ProxyError>,
        elapsed: std::time::Duration,
    ) {
        if let Some(outcome) = classify(result) {
            self.stats.record(
                self.failure_on.matches(&outcome),
                is_slow(self.slow_call, elapsed),
            );
        }
    }

    /// The protocol spoken to this upstream for a request that arrived as `downstream`.
    pub fn wire_for(&self, downstream: Version) -> Wire {
        match self.protocol {
            Protocol::Http1 => Wire::Http1,
            Protocol::Http2 | Protocol::Grpc => Wire::Http2,
            Protocol::Auto if downstream == Version::HTTP_2 => Wire::Http2,
            Protocol::Auto => Wire::Http1,
        }
    }

    /// Picks an endpoint: endpoints ejected as outliers are skipped (unless all are: panic
    /// mode), endpoints this request already tried are avoided when others remain. Power of two
    /// choices among the eligible ones, without allocating.
    async fn pick(&self, state: Option<&CallState>) -> Result<Arc<Endpoint>, ProxyError> {
        let first = self
            .endpoints
            .pick(self.connect.connect_timeout)
            .await
            .map_err(|reason| ProxyError::NoEndpoints {
                upstream: self.name.to_string(),
                reason,
            })?;
        let retrying = state.is_some_and(CallState::tried_any);
        if self.outlier.is_none() && !retrying {
            return Ok(first);
        }
        let all = self.endpoints.endpoints();
        let now = Instant::now();
        let detector = match &self.outlier {
            Some(o) => o.lock().ok(),
            None => None,
        };
        let mut detector = detector;
        if let Some(d) = detector.as_mut() {
            // Resync the detector only when discovery replaced the endpoint list.
            let id = Arc::as_ptr(&all) as usize;
            if self.outlier_endpoints.swap(id, Ordering::Relaxed) != id {
                d.set_endpoints(all.iter().map(|e| e.addr));
            }
        }
        let ejected = |e: &Endpoint| detector.as_ref().is_some_and(|d| d.is_ejected(e.addr, now));
        let tried = |e: &Endpoint| state.is_some_and(|s| s.tried(e.addr));
        // Widen the choice step by step: healthy and untried, healthy, then everything.
        let rules: [&dyn Fn(&Endpoint) -> bool; 3] =
            [&|e| !ejected(e) && !tried(e), &|e| !ejected(e), &|_| true];
        for (step, eligible) in rules.iter().enumerate() {
            let n = all.iter().filter(|e| eligible(e)).count();
            if n == 0 {
                continue;
            }
            let panic = step == 2 && detector.is_some();
            if self.outlier_panic.swap(panic, Ordering::Relaxed) != panic && panic {
                tracing::warn!(upstream = %self.name, "every endpoint is ejected: balancing over all of them (panic mode)");
            }
            let nth = |k: usize| all.iter().filter(|e| eligible(e)).nth(k);
            let a = fastrand::usize(..n);
            let chosen = if n == 1 {
                nth(a)
            } else {
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                match (nth(a), nth(b)) {
                    (Some(x), Some(y)) => Some(if y.in_flight() < x.in_flight() { y } else { x }),
                    (x, y) => x.or(y),
                }
            };
            return Ok(chosen.cloned().unwrap_or(first));
        }
        Ok(first)
    }

    fn record_outlier(&self, endpoint: SocketAddr, result: &Result<Rsp, ProxyError>) {
        let Some(outlier) = &self.outlier else { return };
        let Some(outcome) = classify(result) else {
            return;
        };
        let failed = self.failure_on.matches(&outcome);
        let ejection = match outlier.lock() {
            Ok(mut d) => d.record(endpoint, failed, Instant::now()),
            Err(_) => None,
        };
        if let Some(e) = ejection {
            self.metrics.ejections.inc();
            tracing::info!(upstream = %self.name, endpoint = %e.addr, times = e.times, reason = %e.reason, "endpoint ejected as an outlier");
        }
    }
}

/// A compiled upstream: its core and its stacks.
pub struct Upstream {
    pub core: Arc<UpstreamCore>,
    /// What a request routed to this upstream goes through.
    pub stack: Full,
    /// What a failover from another upstream goes through.
    pub attempts: Arc<Attempts>,
}

impl std::ops::Deref for Upstream {
    type Target = UpstreamCore;
    fn deref(&self) -> &UpstreamCore {
        &self.core
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt(f)
    }
}

impl Upstream {
    /// Compiles a validated policy, keeping `previous`'s state where its settings are
    /// unchanged. Must run inside a tokio runtime (DNS refresh task).
    pub fn build(
        policy: &UpstreamPolicy,
        direction: &'static str,
        env: &BuildEnv,
        previous: Option<&Upstream>,
    ) -> Result<Arc<Upstream>, String> {
        let spec = &policy.spec;
        let prev = previous.map(|p| &p.core);
        let endpoints = match prev {
            Some(p) if p.policy.spec.endpoints == spec.endpoints => p.endpoints.clone(),
            _ => endpoint_set(policy)?,
        };
        let routes = UpstreamRoutes::compile(spec);
        let name: Arc<str> = Arc::from(policy.metadata.name.as_str());
        let metrics = match prev {
            Some(p) => p.metrics.clone(),
            None => Arc::new(env.metrics.upstream(direction, &name)),
        };
        let stats = match prev {
            Some(p) => p.stats.clone(),
            None => Arc::default(),
        };
        let now = Instant::now();
        let breaker_cfg = BreakerConfig::from_policy(spec.circuit_breaker.as_ref());
        let breaker = match (&breaker_cfg, prev.and_then(|p| p.breaker.as_ref())) {
            (None, _) => None,
            (Some(cfg), Some(old)) if old.lock().map(|b| b.config() == cfg).unwrap_or(false) => {
                Some(old.clone())
            }
            (Some(cfg), _) => Some(Arc::new(Mutex::new(Breaker::new(cfg.clone(), now)))),
        };
        let failure_on = breaker_cfg
            .as_ref()
            .map(|c| c.failure_on.clone())
            .unwrap_or_else(default_failure_on);
        let outlier = match (
            OutlierConfig::from_policy(spec.outlier_detection.as_ref()),
            prev.and_then(|p| p.outlier.as_ref()),
        ) {
            (None, _) => None,
            (Some(cfg), Some(old)) if old.lock().map(|d| *d.config() == cfg).unwrap_or(false) => {
                Some(old.clone())
            }
            (Some(cfg), _) => {
                let addrs: Vec<SocketAddr> = endpoints.endpoints().iter().map(|e| e.addr).collect();
                Some(Arc::new(Mutex::new(OutlierDetector::new(cfg, addrs))))
            }
        };
        let budget_cfg: BudgetConfig = routes.budget();
        let budget = match prev {
            Some(p) if *p.budget.config() == budget_cfg => p.budget.clone(),
            _ => Arc::new(RetryBudget::new(budget_cfg, now)),
        };
        let limits = spec.limits.as_ref();
        let bulkhead = match limits.and_then(|l| l.max_concurrent) {
            None => None,
            Some(max) => {
                let pending = limits.and_then(|l| l.max_pending).unwrap_or(0);
                match prev.and_then(|p| p.bulkhead.as_ref()) {
                    Some(b) if b.max_concurrent == max && b.max_pending == pending => {
                        Some(b.clone())
                    }
                    _ => Some(Arc::new(Bulkhead::new(max, pending))),
                }
            }
        };
        let fallback = spec.fallback.as_ref();
        let core = Arc::new(UpstreamCore {
            namespace: Arc::from(policy.metadata.namespace.as_str()),
            policy: policy.clone(),
            protocol: spec.protocol,
            host_rewrite: spec.host_rewrite.unwrap_or(false),
            connect: ConnectSettings {
                upstream: name.clone(),
                connect_timeout: routes.connect_timeout(),
                connects_http1: metrics.connects_http1.clone(),
                connects_http2: metrics.connects_http2.clone(),
            },
            routes,
            endpoints,
            breaker,
            outlier,
            failure_on,
            budget,
            bulkhead,
            failover: fallback.map(|f| f.failover.clone()).unwrap_or_default(),
            fallback_response: fallback.and_then(|f| f.response.clone()),
            metrics,
            events: env.events.clone(),
            degradation: env.degradation.clone(),
            outbound: direction == "outbound",
            stats,
            slow_call: breaker_cfg
                .as_ref()
                .and_then(|c| c.slow_call.as_ref())
                .map(|s| s.duration),
            deadline_header: env.deadline_header.clone(),
            upstream_header: HeaderValue::from_str(&name).ok(),
            outlier_endpoints: AtomicUsize::new(0),
            outlier_panic: AtomicBool::new(false),
            name,
        });
        let (stack, attempts) = policy_stack::build(&core);
        Ok(Arc::new(Upstream {
            core,
            stack,
            attempts,
        }))
    }
}

fn endpoint_set(policy: &UpstreamPolicy) -> Result<Arc<EndpointSet>, String> {
    let e = &policy.spec.endpoints;
    let refresh = e
        .dns_refresh
        .as_ref()
        .map(|d| d.get())
        .unwrap_or(defaults::DNS_REFRESH);
    match (&e.static_addrs, &e.dns) {
        (Some(addrs), _) => {
            let parsed = addrs
                .iter()
                .map(|a| {
                    a.parse::<SocketAddr>()
                        .map_err(|err| format!("endpoint {a:?}: {err}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(EndpointSet::fixed(&parsed))
        }
        (None, Some(target)) => Ok(match target.parse::<SocketAddr>() {
            Ok(addr) => EndpointSet::fixed(&[addr]),
            Err(_) => EndpointSet::dns(target, refresh),
        }),
        (None, None) => Err("spec.endpoints: one of dns or static is required".into()),
    }
}

/// The bottom of the stack: picks an endpoint and sends one attempt over its pool, within the
/// attempt's deadline; records the outcome for outlier detection.
#[derive(Clone)]
pub struct Balance {
    core: Arc<UpstreamCore>,
}

impl Balance {
    pub fn new(core: Arc<UpstreamCore>) -> Self {
        Balance { core }
    }
}

impl Call for Balance {
    async fn call(&self, mut req: Req) -> Result<Rsp, ProxyError> {
        let core = &self.core;
        let state = req.extensions().get::<Arc<CallState>>().cloned();
        let deadline = req.extensions().get::<AttemptDeadline>().copied();
        let authority = match req.extensions_mut().remove::<TargetAuthority>() {
            Some(a) => a.0,
            None => Authority::try_from(core.name.as_ref())
                .map_err(|e| ProxyError::BadRequest(format!("authority: {e}")))?,
        };
        let pick = core.pick(state.as_deref());
        let endpoint = match deadline {
            Some(d) => tokio::time::timeout_at(d.at, pick).await.map_err(|_| {
                ProxyError::AttemptTimeout {
                    upstream: core.name.to_string(),
                    timeout: d.limit,
                }
            })??,
            None => pick.await?,
        };
        if let Some(s) = &state {
            s.attempt_started(endpoint.addr);
        }
        let wire = core.wire_for(req.version());
        let target = if core.host_rewrite {
            Authority::try_from(endpoint.addr.to_string().as_str())
                .map_err(|e| ProxyError::BadRequest(format!("endpoint address: {e}")))?
        } else {
            authority
        };
        prepare_for_wire(&mut req, wire, &target)?;
        let send = endpoint.send(wire, req, &core.connect);
        let result = match deadline {
            Some(d) => match tokio::time::timeout_at(d.at, send).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::AttemptTimeout {
                    upstream: core.name.to_string(),
                    timeout: d.limit,
                }),
            },
            None => send.await,
        };
        let result = result.map(|rsp| {
            let mut rsp = rsp.map(Body::Upstream);
            if let Some(v) = &core.upstream_header {
                rsp.headers_mut()
                    .insert(crate::headers::X_BULWARK_UPSTREAM, v.clone());
            }
            rsp
        });
        core.record_outlier(endpoint.addr, &result);
        result
    }
}

/// Rewrites the request's version, URI form and Host for the upstream connection: HTTP/1.1
/// takes origin-form and `Host`; HTTP/2 takes an absolute URI (`:authority`) and no `Host`.
fn prepare_for_wire(
    req: &mut Request<Body>,
    wire: Wire,
    authority: &Authority,
) -> Result<(), ProxyError> {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    match wire {
        Wire::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = Uri::from(path);
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|e| ProxyError::BadRequest(format!("authority: {e}")))?;
            req.headers_mut().insert(header::HOST, host);
        }
        Wire::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            let uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority.clone())
                .path_and_query(path)
                .build()
                .map_err(|e| ProxyError::BadRequest(format!("uri: {e}")))?;
            *req.uri_mut() = uri;
            req.headers_mut().remove(header::HOST);
        }
    }
    Ok(())
}
