//! An upstream as the sidecar runs it: compiled once from its `UpstreamPolicy` into the state
//! each layer keeps (endpoints, breaker, outlier detector, retry budget, bulkhead slots, health
//! counters) and the attempts stack built over it. A policy change rebuilds the upstream but
//! carries over each piece of state whose settings did not change, so connections, breaker and
//! outlier state and the retry budget survive unrelated edits.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bulwark_proto::policy::{UpstreamPolicy, defaults};
use http::uri::Authority;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::balance::Balancer;
use crate::balance::endpoints::EndpointSet;
use crate::balance::outlier::{OutlierConfig, OutlierDetector};
use crate::health::levels::Degradation;
use crate::health::stats::UpstreamStats;
use crate::identity::Identity;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::policy_stack::balance::Balance;
use crate::policy_stack::breaker::machine::{Breaker, BreakerConfig, default_failure_on};
use crate::policy_stack::breaker::{BreakerEvent, BreakerParts};
use crate::policy_stack::bulkhead::{Limited, Slots};
use crate::policy_stack::concurrency::{ConcurrencySettings, Limiter};
use crate::policy_stack::layer::UpstreamInfo;
use crate::policy_stack::outcome::ConditionSet;
use crate::policy_stack::rate_limit::{RateLimiter, RateSettings};
use crate::policy_stack::retry::budget::{BudgetConfig, RetryBudget};
use crate::policy_stack::routes::UpstreamRoutes;
use crate::policy_stack::throttling::{ThrottleSettings, Throttler};
use crate::policy_stack::{self, AttemptParts, Attempts};
use crate::upstream::ConnectSettings;

use super::tls::upstream_tls;

/// What an upstream needs from the sidecar when it is built.
#[derive(Clone)]
pub struct BuildEnv {
    pub metrics: Arc<Metrics>,
    pub events: broadcast::Sender<BreakerEvent>,
    /// The levels in force and the retry cap they set, read per request.
    pub degradation: Arc<Degradation>,
    /// The header HTTP callers give their deadline in (milliseconds), if any.
    pub deadline_header: Option<http::HeaderName>,
    /// The workload identity, for `tls.mode: mesh`.
    pub identity: Option<Arc<Identity>>,
    /// `--upstream-idle-timeout`.
    pub upstream_idle_timeout: std::time::Duration,
}

/// Which side of the pod an upstream is on.
#[derive(Debug, Clone)]
pub enum Side {
    /// An upstream the app calls.
    Outbound,
    /// The local app; `namespace/service`, for the inbound limit's error.
    Inbound(Arc<str>),
}

impl Side {
    fn label(&self) -> &'static str {
        match self {
            Side::Outbound => "outbound",
            Side::Inbound(_) => "inbound",
        }
    }
}

/// A compiled upstream: its policy, the state its layers keep (for the admin listener and the
/// health report, and to carry over), and its attempts.
pub struct Upstream {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub policy: UpstreamPolicy,
    pub metrics: Arc<UpstreamMetrics>,
    pub endpoints: Arc<EndpointSet>,
    pub breaker: Option<Arc<Mutex<Breaker>>>,
    pub outlier: Option<Arc<Mutex<OutlierDetector>>>,
    pub budget: Arc<RetryBudget>,
    pub slots: Option<Arc<Slots>>,
    /// `adaptiveConcurrency`: the learned limit and its queue.
    pub limiter: Option<Arc<Limiter>>,
    /// `throttling`: what the upstream accepted lately.
    pub throttler: Option<Arc<Throttler>>,
    /// `rateLimit` (outbound only: the app's limit is per caller, kept by the routing table).
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Attempts, failures and slow calls since the last health report.
    pub stats: Arc<UpstreamStats>,
    pub attempts: Arc<Attempts>,
    /// `tls.mode: mesh`: the SPIFFE ID its endpoints prove.
    pub peer_identity: Option<Arc<str>>,
    /// What counts as a failure (`circuitBreaker.failureOn`, or the default): also how its
    /// requests are classified in metrics.
    pub failure_on: Arc<ConditionSet>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Compiles a validated policy, keeping `previous`'s state where its settings are
    /// unchanged. Must run inside a tokio runtime (DNS refresh task).
    pub fn build(
        policy: &UpstreamPolicy,
        side: Side,
        env: &BuildEnv,
        previous: Option<&Upstream>,
    ) -> Result<Upstream, String> {
        let spec = &policy.spec;
        // The endpoints hold the pooled connections: new ones when TLS changes.
        let endpoints = match previous {
            Some(p)
                if p.policy.spec.endpoints == spec.endpoints && p.policy.spec.tls == spec.tls =>
            {
                p.endpoints.clone()
            }
            _ => endpoint_set(policy)?,
        };
        let routes = Arc::new(UpstreamRoutes::compile(spec));
        let name: Arc<str> = Arc::from(policy.metadata.name.as_str());
        let namespace: Arc<str> = Arc::from(policy.metadata.namespace.as_str());
        let tls = upstream_tls(policy, env.identity.as_ref(), &env.metrics)?;
        let peer_identity = tls.as_ref().and_then(|t| t.identity.clone());
        let own = env.identity.as_ref().map(|i| i.id.to_string());
        let (client_id, server_id) = match side {
            Side::Outbound => (own.as_deref(), peer_identity.as_deref()),
            Side::Inbound(_) => (None, own.as_deref()),
        };
        let metrics = match previous {
            Some(p) if p.metrics.has_identities(client_id, server_id) => p.metrics.clone(),
            _ => Arc::new(
                env.metrics
                    .upstream(side.label(), &namespace, &name)
                    .identities(client_id, server_id),
            ),
        };
        let stats = match previous {
            Some(p) => p.stats.clone(),
            None => Arc::default(),
        };
        let now = Instant::now();
        let breaker_cfg = BreakerConfig::from_policy(spec.circuit_breaker.as_ref());
        let breaker = match (&breaker_cfg, previous.and_then(|p| p.breaker.as_ref())) {
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
        let classified_by = Arc::new(failure_on.clone());
        let outlier = match (
            OutlierConfig::from_policy(spec.outlier_detection.as_ref()),
            previous.and_then(|p| p.outlier.as_ref()),
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
        let budget = match previous {
            Some(p) if *p.budget.config() == budget_cfg => p.budget.clone(),
            _ => Arc::new(RetryBudget::new(budget_cfg, now)),
        };
        let limits = spec.limits.as_ref();
        let slots = limits.and_then(|l| {
            l.max_concurrent
                .map(|max| (max, l.max_pending.unwrap_or(0)))
        });
        let slots = slots.map(
            |(max, pending)| match previous.and_then(|p| p.slots.as_ref()) {
                Some(s) if s.max_concurrent == max && s.max_pending == pending => s.clone(),
                _ => Arc::new(Slots::new(max, pending)),
            },
        );
        let limiter =
            ConcurrencySettings::from_policy(spec.adaptive_concurrency.as_ref()).map(|settings| {
                match previous.and_then(|p| p.limiter.as_ref()) {
                    Some(l) if *l.settings() == settings => l.clone(),
                    _ => Limiter::new(settings, metrics.concurrency()),
                }
            });
        let throttler = spec.throttling.as_ref().map(|t| {
            let settings = ThrottleSettings::from_policy(t);
            match previous.and_then(|p| p.throttler.as_ref()) {
                Some(old) if *old.settings() == settings => old.clone(),
                _ => Throttler::new(settings),
            }
        });
        let rate_limiter = spec.rate_limit.as_ref().map(|r| {
            let settings = RateSettings::outbound(r);
            match previous.and_then(|p| p.rate_limiter.as_ref()) {
                Some(old) if *old.settings() == settings => old.clone(),
                _ => RateLimiter::new(settings),
            }
        });
        let info = Arc::new(UpstreamInfo {
            name: name.clone(),
            namespace: namespace.clone(),
            metrics: metrics.clone(),
            stats: stats.clone(),
        });
        let connect = ConnectSettings {
            upstream: name.clone(),
            connect_timeout: routes.connect_timeout(),
            idle_timeout: env.upstream_idle_timeout,
            connects_http1: metrics.connects_http1.clone(),
            connects_http2: metrics.connects_http2.clone(),
            tls,
        };
        let balance = Balance::new(
            info.clone(),
            Balancer::new(name.clone(), endpoints.clone(), outlier.clone()),
            connect,
            spec.protocol,
            spec.host_rewrite.unwrap_or(false),
            failure_on.clone(),
        );
        let authority = Authority::try_from(name.as_ref())
            .map_err(|e| format!("metadata.name {name:?} is not an authority: {e}"))?;
        let attempts = policy_stack::attempts(AttemptParts {
            info,
            routes,
            authority,
            budget: budget.clone(),
            retry_cap: match side {
                Side::Outbound => Some(env.degradation.clone()),
                Side::Inbound(_) => None,
            },
            deadline_header: env.deadline_header.clone(),
            breaker: BreakerParts {
                breaker: breaker.clone(),
                events: env.events.clone(),
                stats: stats.clone(),
                failure_on,
                slow_call: breaker_cfg
                    .as_ref()
                    .and_then(|c| c.slow_call.as_ref())
                    .map(|s| s.duration),
            },
            slots: slots.clone(),
            limited: match side {
                Side::Outbound => Limited::Upstream,
                Side::Inbound(service) => Limited::Inbound(service),
            },
            limiter: limiter.clone(),
            throttler: throttler.clone(),
            balance,
        });
        Ok(Upstream {
            name,
            namespace,
            policy: policy.clone(),
            metrics,
            endpoints,
            breaker,
            outlier,
            budget,
            slots,
            limiter,
            throttler,
            rate_limiter,
            stats,
            attempts,
            peer_identity,
            failure_on: classified_by,
        })
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
