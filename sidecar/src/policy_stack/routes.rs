//! An upstream's routes (`spec.routes`): which route a request falls under, and the timeouts
//! and retry settings that result from merging that route over the upstream's own. The route is
//! selected once, where a request enters the upstream's stack, and travels down with it.
//!
//! Everything is computed once per policy snapshot by [`UpstreamRoutes::compile`]; per request,
//! [`UpstreamRoutes::select`] only compares strings and methods against pre-sorted routes and
//! returns a reference — no allocation on the hot path.
//!
//! # Defaults
//!
//! Absent fields take the values in `bulwark_proto::policy::defaults` (and `docs/policies.md`).
//! Absent `retry` means `maxAttempts: 1`: no retries. Absent `retryOn` means
//! `DEFAULT_RETRY_ON` = `[connect-failure, reset, gateway-error]`, the set Linkerd and Envoy
//! treat as safe: a refused connection and a reset before response headers mean the upstream
//! application never saw a complete request or never answered, and 502/503/504 are produced by
//! gateways or overloaded servers before any work was done. Plain 500 is *not* in the set: it
//! usually means the application ran and failed, and retrying it mostly repeats the failure.
//! Absent `honorRetryAfter` means `false`.
//!
//! # Merging
//!
//! A route's `timeouts` and `retry` merge over the upstream's **field by field**: a route with
//! `retry: { maxAttempts: 5 }` keeps the upstream's backoff, `retryOn`, `nonIdempotent` and the
//! rest, and a route with `backoff: { initial: 2s }` keeps the upstream's backoff `max`,
//! `multiplier` and `jitter`. A list (`retryOn`) is one field: a route's list replaces the
//! upstream's, it is not added to it. Per upstream only, ignored in routes: `timeouts.connect`
//! (connections are shared by all routes) and `retry.budget` (one budget per upstream, so that
//! it bounds the load on the upstream as a whole).
//!
//! # Precedence
//!
//! The most specific matching route wins:
//!
//! | rank | match | a request matches when |
//! | --- | --- | --- |
//! | 1 | `path` | its path equals the value |
//! | 2 | `grpcMethod: /pkg.Svc/Method` | it is gRPC and its path equals the value |
//! | 3 | `grpcMethod: /pkg.Svc/` | it is gRPC and its path starts with the value |
//! | 4 | `pathPrefix`, longest first | its path is the prefix or continues it after a `/` |
//! | 5 | `method` only | its method equals the value |
//!
//! Within a rank (and, for `pathPrefix`, the same prefix length) a route that also has a
//! `method` condition beats one without. Remaining ties keep the route written first. Every
//! condition of a route must hold for it to match. `pathPrefix` matches whole segments:
//! `/charge` (or `/charge/`) matches `/charge`, `/charge/` and `/charge/42` but not
//! `/chargeback`, so an override never leaks onto a neighbouring endpoint.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::policy::{Route, RouteMatch, Timeouts, UpstreamSpec, defaults};

use super::retry::budget::BudgetConfig;
use super::retry::policy::RetryConfig;
use crate::priority::Criticality;

/// Request deadlines of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutConfig {
    /// Deadline of the whole request, retries included (default `15s`).
    pub request: Option<Duration>,
    /// Deadline of one attempt; `None`: only the request deadline applies.
    pub per_try: Option<Duration>,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            request: Some(defaults::REQUEST_TIMEOUT),
            per_try: None,
        }
    }
}

impl TimeoutConfig {
    /// An upstream's `timeouts`, with defaults for absent fields.
    pub fn from_policy(timeouts: Option<&Timeouts>) -> TimeoutConfig {
        TimeoutConfig::default().merge(timeouts)
    }

    /// These timeouts with the fields written in `over` replacing ours. `connect` is ignored:
    /// it is per upstream ([`UpstreamRoutes::connect_timeout`]).
    pub fn merge(&self, over: Option<&Timeouts>) -> TimeoutConfig {
        let Some(t) = over else { return self.clone() };
        TimeoutConfig {
            request: t.request.as_ref().map(|d| d.get()).or(self.request),
            per_try: t.per_try.as_ref().map(|d| d.get()).or(self.per_try),
        }
    }
}

/// Everything a request needs from its route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// `spec.routes[i].name`, for metric labels and logs; `None` for the upstream's default
    /// and for unnamed routes.
    pub name: Option<Arc<str>>,
    pub timeouts: TimeoutConfig,
    pub retry: RetryConfig,
    /// The route's `idempotent` override; `None`: decided by the HTTP method.
    pub idempotent: Option<bool>,
    /// The criticality of the route's requests that name none.
    pub criticality: Criticality,
}

/// An upstream's routes, compiled and sorted by precedence, plus its per-upstream settings.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRoutes {
    default: RouteConfig,
    /// Most specific first, so the first match is the winner.
    routes: Box<[CompiledRoute]>,
    connect_timeout: Duration,
    budget: BudgetConfig,
}

#[derive(Debug, Clone, PartialEq)]
struct CompiledRoute {
    matcher: Matcher,
    config: RouteConfig,
}

/// One route's `match`, ready for comparison; every condition present must hold. Inbound
/// authorization rules match requests with it too.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    path: Option<Box<str>>,
    grpc: Option<GrpcMatch>,
    /// Without a trailing `/` (except the root prefix `/` itself).
    path_prefix: Option<Box<str>>,
    method: Option<http::Method>,
}

#[derive(Debug, Clone, PartialEq)]
enum GrpcMatch {
    /// `/pkg.Svc/Method`.
    Method(Box<str>),
    /// `/pkg.Svc/`, trailing slash included.
    Service(Box<str>),
}

/// Where a route stands in the precedence order; compared field by field, greater wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    rank: Rank,
    prefix_len: usize,
    has_method: bool,
}

/// Declaration order is the order of precedence, least specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    MethodOnly,
    PathPrefix,
    GrpcService,
    GrpcMethod,
    ExactPath,
}

impl UpstreamRoutes {
    /// Compiles an upstream's settings and routes. Meant for validated specs; on others it
    /// stays total: a route whose `method` is not an HTTP method token never matches.
    pub fn compile(spec: &UpstreamSpec) -> UpstreamRoutes {
        let default = RouteConfig {
            name: None,
            timeouts: TimeoutConfig::from_policy(spec.timeouts.as_ref()),
            retry: RetryConfig::from_policy(spec.retry.as_ref()),
            idempotent: None,
            criticality: criticality(spec.criticality.as_deref())
                .unwrap_or(Criticality::SheddablePlus),
        };
        let mut ranked: Vec<(Specificity, CompiledRoute)> = spec
            .routes
            .iter()
            .filter_map(|route| {
                let matcher = Matcher::compile(&route.matches)?;
                Some((
                    matcher.specificity(),
                    compile_route(&default, route, matcher),
                ))
            })
            .collect();
        // Most specific first; stable, so equally specific routes keep the file's order.
        ranked.sort_by_key(|(specificity, _)| Reverse(*specificity));
        UpstreamRoutes {
            routes: ranked.into_iter().map(|(_, r)| r).collect(),
            default,
            connect_timeout: spec
                .timeouts
                .as_ref()
                .and_then(|t| t.connect.as_ref())
                .map_or(defaults::CONNECT_TIMEOUT, |d| d.get()),
            budget: BudgetConfig::from_policy(spec.retry.as_ref().and_then(|r| r.budget.as_ref())),
        }
    }

    /// The configuration for a request: the most specific matching route's, or the upstream's
    /// default when none matches. `path` is the request path without the query string
    /// (`uri.path()`); `grpc` says whether the request is a gRPC call (`content-type:
    /// application/grpc…`), which `grpcMethod` routes require.
    pub fn select(&self, method: &http::Method, path: &str, grpc: bool) -> &RouteConfig {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(method, path, grpc))
            .map_or(&self.default, |r| &r.config)
    }

    /// The configuration of requests no route matches.
    pub fn default_route(&self) -> &RouteConfig {
        &self.default
    }

    /// `timeouts.connect` of the upstream (default `1s`); routes cannot change it.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// `retry.budget` of the upstream, with defaults; routes cannot change it.
    pub fn budget(&self) -> BudgetConfig {
        self.budget
    }
}

fn compile_route(default: &RouteConfig, route: &Route, matcher: Matcher) -> CompiledRoute {
    CompiledRoute {
        matcher,
        config: RouteConfig {
            name: route.name.as_deref().map(Arc::from),
            timeouts: default.timeouts.merge(route.timeouts.as_ref()),
            retry: default.retry.merge(route.retry.as_ref()),
            idempotent: route.idempotent,
            criticality: criticality(route.criticality.as_deref()).unwrap_or(default.criticality),
        },
    }
}

/// A tier a policy names; `None` when it names none (validated policies name known tiers).
fn criticality(name: Option<&str>) -> Option<Criticality> {
    name.and_then(Criticality::from_name)
}

impl Matcher {
    /// `None` when the route can never match (a method that is not an HTTP token).
    pub fn compile(m: &RouteMatch) -> Option<Matcher> {
        let method = match &m.method {
            Some(text) => Some(http::Method::from_bytes(text.as_bytes()).ok()?),
            None => None,
        };
        let grpc = m.grpc_method.as_deref().map(|g| {
            if g.ends_with('/') {
                GrpcMatch::Service(g.into())
            } else {
                GrpcMatch::Method(g.into())
            }
        });
        let path_prefix = m.path_prefix.as_deref().map(|p| {
            // `/charge/` and `/charge` mean the same segment prefix; keep `/` itself.
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() { "/" } else { trimmed }.into()
        });
        Some(Matcher {
            path: m.path.as_deref().map(Into::into),
            grpc,
            path_prefix,
            method,
        })
    }

    fn specificity(&self) -> Specificity {
        let rank = if self.path.is_some() {
            Rank::ExactPath
        } else if let Some(g) = &self.grpc {
            match g {
                GrpcMatch::Method(_) => Rank::GrpcMethod,
                GrpcMatch::Service(_) => Rank::GrpcService,
            }
        } else if self.path_prefix.is_some() {
            Rank::PathPrefix
        } else {
            Rank::MethodOnly
        };
        Specificity {
            rank,
            prefix_len: self.path_prefix.as_ref().map_or(0, |p| p.len()),
            has_method: self.method.is_some(),
        }
    }

    pub fn matches(&self, method: &http::Method, path: &str, grpc: bool) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        if self.path.as_deref().is_some_and(|p| p != path) {
            return false;
        }
        match &self.grpc {
            Some(GrpcMatch::Method(full)) if !grpc || path != &**full => return false,
            Some(GrpcMatch::Service(prefix)) if !grpc || !path.starts_with(&**prefix) => {
                return false;
            }
            _ => {}
        }
        self.path_prefix
            .as_deref()
            .is_none_or(|prefix| segment_prefix(prefix, path))
    }
}

/// `prefix` (without trailing `/`, or `/`) matches `path` at a segment boundary.
fn segment_prefix(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix == "/" || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use bulwark_proto::policy::{GrpcCode, Resource, parse_yaml};
    use http::Method;

    use super::super::outcome::{ConditionSet, Outcome};
    use super::super::retry::backoff::BackoffSchedule;
    use super::super::retry::policy::DEFAULT_RETRY_ON;
    use super::*;
    use bulwark_proto::policy::NonIdempotent;

    /// An UpstreamSpec from the YAML under `spec:` (endpoints added), validated so that the
    /// tests only use policies users can write.
    fn spec(body: &str) -> UpstreamSpec {
        let doc = format!(
            "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: up }}\nspec:\n  endpoints: {{ dns: up:80 }}\n{body}"
        );
        let resource = parse_yaml(&doc).expect("parses").remove(0);
        resource.validate().expect("valid");
        match resource {
            Resource::UpstreamPolicy(p) => p.spec,
            Resource::ServicePolicy(_) => unreachable!(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn name(cfg: &RouteConfig) -> Option<&str> {
        cfg.name.as_deref()
    }

    fn rsp(status: u16) -> Outcome {
        Outcome::Response { status, grpc: None }
    }

    #[test]
    fn absent_settings_take_the_defaults() {
        let routes = UpstreamRoutes::compile(&spec(""));
        let d = routes.default_route();
        assert_eq!(d.name, None);
        assert_eq!(d.idempotent, None);
        assert_eq!(
            d.timeouts,
            TimeoutConfig {
                request: Some(Duration::from_secs(15)),
                per_try: None,
            }
        );
        assert_eq!(
            d.retry,
            RetryConfig {
                max_attempts: 1,
                backoff: BackoffSchedule {
                    initial: ms(25),
                    max: ms(1000),
                    multiplier: 2.0,
                    jitter: 0.2,
                },
                max_elapsed: None,
                retry_on: ConditionSet::new(&DEFAULT_RETRY_ON),
                non_idempotent: NonIdempotent::Never,
                honor_retry_after: false,
                replay_buffer_bytes: 65536,
            }
        );
        assert_eq!(routes.connect_timeout(), Duration::from_secs(1));
        assert_eq!(routes.budget(), BudgetConfig::default());
    }

    #[test]
    fn default_retry_on_is_the_safe_set() {
        let on = RetryConfig::default().retry_on;
        assert!(on.matches(&Outcome::ConnectFailure));
        assert!(on.matches(&Outcome::Reset));
        assert!(on.matches(&rsp(502)) && on.matches(&rsp(503)) && on.matches(&rsp(504)));
        assert!(!on.matches(&rsp(500)));
        assert!(!on.matches(&rsp(429)));
        assert!(!on.matches(&Outcome::Timeout));
        assert!(!on.matches(&Outcome::Response {
            status: 200,
            grpc: Some(GrpcCode::Unavailable)
        }));
    }

    #[test]
    fn upstream_settings_are_compiled() {
        let routes = UpstreamRoutes::compile(&spec(
            r#"  timeouts: { request: 10s, perTry: 3s, connect: 500ms }
  retry:
    maxAttempts: 3
    backoff: { initial: 200ms, max: 5s, multiplier: 3.0, jitter: 30% }
    maxElapsed: 30s
    retryOn: ["429", grpc-unavailable]
    nonIdempotent: with-idempotency-key
    budget: { ratio: 50%, minPerSecond: 3, window: 20s }
    honorRetryAfter: true
    replayBufferBytes: 1024
"#,
        ));
        let d = routes.default_route();
        assert_eq!(
            d.timeouts,
            TimeoutConfig {
                request: Some(Duration::from_secs(10)),
                per_try: Some(Duration::from_secs(3)),
            }
        );
        assert_eq!(d.retry.max_attempts, 3);
        assert_eq!(
            d.retry.backoff,
            BackoffSchedule {
                initial: ms(200),
                max: ms(5000),
                multiplier: 3.0,
                jitter: 0.3,
            }
        );
        assert_eq!(d.retry.max_elapsed, Some(Duration::from_secs(30)));
        assert!(d.retry.retry_on.matches(&rsp(429)));
        assert!(
            !d.retry.retry_on.matches(&rsp(502)),
            "the list replaces the default"
        );
        assert_eq!(d.retry.non_idempotent, NonIdempotent::WithIdempotencyKey);
        assert!(d.retry.honor_retry_after);
        assert_eq!(d.retry.replay_buffer_bytes, 1024);
        assert_eq!(routes.connect_timeout(), ms(500));
        assert_eq!(
            routes.budget(),
            BudgetConfig {
                ratio: 0.5,
                min_per_second: 3,
                window: Duration::from_secs(20),
            }
        );
    }

    #[test]
    fn a_retry_block_without_max_attempts_still_does_not_retry() {
        let routes = UpstreamRoutes::compile(&spec("  retry: { retryOn: [5xx] }\n"));
        assert_eq!(routes.default_route().retry.max_attempts, 1);
    }

    #[test]
    fn route_retry_merges_field_by_field() {
        let routes = UpstreamRoutes::compile(&spec(
            r#"  retry:
    maxAttempts: 3
    backoff: { initial: 200ms, max: 5s, multiplier: 3.0, jitter: 30% }
    retryOn: [5xx]
    nonIdempotent: always
    honorRetryAfter: true
  routes:
    - name: status
      match: { grpcMethod: /payments.v1.Payments/GetStatus }
      retry: { maxAttempts: 5 }
    - name: slow-start
      match: { pathPrefix: /slow }
      retry: { backoff: { initial: 2s } }
"#,
        ));
        let up = routes.default_route().retry.clone();
        let status = routes.select(&Method::POST, "/payments.v1.Payments/GetStatus", true);
        assert_eq!(name(status), Some("status"));
        assert_eq!(
            status.retry,
            RetryConfig {
                max_attempts: 5,
                ..up.clone()
            }
        );
        let slow = routes.select(&Method::GET, "/slow/x", false);
        assert_eq!(
            slow.retry.backoff,
            BackoffSchedule {
                initial: Duration::from_secs(2),
                max: ms(5000),
                multiplier: 3.0,
                jitter: 0.3,
            }
        );
        assert_eq!(slow.retry.max_attempts, 3);
        assert_eq!(slow.retry.retry_on, up.retry_on);
        assert_eq!(slow.retry.non_idempotent, NonIdempotent::Always);
        assert!(slow.retry.honor_retry_after);
    }

    #[test]
    fn route_over_absent_upstream_retry_merges_over_the_defaults() {
        let routes = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - match: { path: /x }
      retry: { maxAttempts: 4, retryOn: [reset] }
"#,
        ));
        let x = routes.select(&Method::GET, "/x", false);
        assert_eq!(x.retry.max_attempts, 4);
        assert_eq!(x.retry.backoff, BackoffSchedule::default());
        assert_eq!(x.retry.retry_on, ConditionSet::parse(&["reset".into()]));
        assert_eq!(x.timeouts, TimeoutConfig::default());
    }

    #[test]
    fn route_timeouts_merge_field_by_field_and_connect_stays_per_upstream() {
        let routes = UpstreamRoutes::compile(&spec(
            r#"  timeouts: { request: 10s, perTry: 3s, connect: 2s }
  routes:
    - match: { path: /a }
      timeouts: { perTry: 1s }
    - match: { path: /b }
      timeouts: { request: 20s, connect: 100ms }
"#,
        ));
        assert_eq!(
            routes.select(&Method::GET, "/a", false).timeouts,
            TimeoutConfig {
                request: Some(Duration::from_secs(10)),
                per_try: Some(Duration::from_secs(1)),
            }
        );
        assert_eq!(
            routes.select(&Method::GET, "/b", false).timeouts,
            TimeoutConfig {
                request: Some(Duration::from_secs(20)),
                per_try: Some(Duration::from_secs(3)),
            }
        );
        assert_eq!(routes.connect_timeout(), Duration::from_secs(2));
    }

    #[test]
    fn route_budget_is_ignored() {
        let routes = UpstreamRoutes::compile(&spec(
            r#"  retry: { budget: { ratio: 10% } }
  routes:
    - match: { path: /a }
      retry: { budget: { ratio: 90% } }
"#,
        ));
        assert_eq!(routes.budget().ratio, 0.1);
    }

    #[test]
    fn idempotent_and_name_come_from_the_route() {
        let routes = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: get-status
      match: { grpcMethod: /pkg.Svc/GetStatus }
      idempotent: true
    - match: { path: /pay }
      idempotent: false
"#,
        ));
        let g = routes.select(&Method::POST, "/pkg.Svc/GetStatus", true);
        assert_eq!((name(g), g.idempotent), (Some("get-status"), Some(true)));
        let p = routes.select(&Method::GET, "/pay", false);
        assert_eq!((name(p), p.idempotent), (None, Some(false)));
    }

    #[test]
    fn criticality_defaults_to_the_upstreams_then_sheddable_plus() {
        let routes = UpstreamRoutes::compile(&spec(
            r#"  criticality: critical
  routes:
    - match: { path: /pay }
      criticality: critical-plus
    - match: { path: /report }
"#,
        ));
        let tier = |path| routes.select(&Method::GET, path, false).criticality;
        assert_eq!(tier("/pay"), Criticality::CriticalPlus);
        assert_eq!(tier("/report"), Criticality::Critical);
        assert_eq!(tier("/other"), Criticality::Critical);
        let plain = UpstreamRoutes::compile(&spec(""));
        assert_eq!(
            plain.default_route().criticality,
            Criticality::SheddablePlus
        );
    }

    #[test]
    fn no_match_returns_the_default() {
        let routes = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: a
      match: { path: /a }
"#,
        ));
        assert!(std::ptr::eq(
            routes.select(&Method::GET, "/b", false),
            routes.default_route()
        ));
    }

    /// One route of every kind, each named after what it matches, written least specific
    /// first so that file order cannot explain the results.
    fn every_kind() -> UpstreamRoutes {
        UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: method-post
      match: { method: POST }
    - name: prefix-root
      match: { pathPrefix: / }
    - name: prefix-pkg
      match: { pathPrefix: /pkg.Svc }
    - name: grpc-service
      match: { grpcMethod: /pkg.Svc/ }
    - name: grpc-method
      match: { grpcMethod: /pkg.Svc/Get }
    - name: exact
      match: { path: /pkg.Svc/Get }
"#,
        ))
    }

    #[test]
    fn exact_path_beats_everything() {
        let r = every_kind();
        assert_eq!(
            name(r.select(&Method::POST, "/pkg.Svc/Get", true)),
            Some("exact")
        );
        assert_eq!(
            name(r.select(&Method::POST, "/pkg.Svc/Get", false)),
            Some("exact")
        );
    }

    #[test]
    fn grpc_full_method_beats_service_and_prefix() {
        let r = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: prefix
      match: { pathPrefix: /pkg.Svc/Get }
    - name: service
      match: { grpcMethod: /pkg.Svc/ }
    - name: method
      match: { grpcMethod: /pkg.Svc/Get }
"#,
        ));
        assert_eq!(
            name(r.select(&Method::POST, "/pkg.Svc/Get", true)),
            Some("method")
        );
        assert_eq!(
            name(r.select(&Method::POST, "/pkg.Svc/Put", true)),
            Some("service")
        );
    }

    #[test]
    fn grpc_service_beats_any_path_prefix() {
        let r = every_kind();
        assert_eq!(
            name(r.select(&Method::POST, "/pkg.Svc/Put", true)),
            Some("grpc-service")
        );
    }

    #[test]
    fn grpc_routes_match_only_grpc_requests() {
        let r = every_kind();
        // Not gRPC: the gRPC routes are skipped, the longest prefix wins.
        assert_eq!(
            name(r.select(&Method::POST, "/pkg.Svc/Put", false)),
            Some("prefix-pkg")
        );
        let only_grpc = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: svc
      match: { grpcMethod: /pkg.Svc/ }
"#,
        ));
        assert_eq!(
            name(only_grpc.select(&Method::POST, "/pkg.Svc/Get", false)),
            None
        );
        assert_eq!(
            name(only_grpc.select(&Method::POST, "/pkg.Svc/Get", true)),
            Some("svc")
        );
        assert_eq!(
            name(only_grpc.select(&Method::POST, "/pkg.Svc2/Get", true)),
            None
        );
        assert_eq!(
            name(only_grpc.select(&Method::POST, "/other.Svc/Get", true)),
            None
        );
    }

    #[test]
    fn longest_path_prefix_wins_and_beats_method_only() {
        let r = every_kind();
        assert_eq!(
            name(r.select(&Method::GET, "/pkg.Svc", false)),
            Some("prefix-pkg")
        );
        assert_eq!(
            name(r.select(&Method::POST, "/other", false)),
            Some("prefix-root")
        );
        let no_root = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: method-post
      match: { method: POST }
    - name: api
      match: { pathPrefix: /api }
    - name: api-v1
      match: { pathPrefix: /api/v1/ }
"#,
        ));
        assert_eq!(
            name(no_root.select(&Method::POST, "/api/v1/x", false)),
            Some("api-v1")
        );
        assert_eq!(
            name(no_root.select(&Method::POST, "/api/v2", false)),
            Some("api")
        );
        assert_eq!(
            name(no_root.select(&Method::POST, "/web", false)),
            Some("method-post")
        );
        assert_eq!(name(no_root.select(&Method::GET, "/web", false)), None);
    }

    #[test]
    fn path_prefix_matches_whole_segments() {
        let r = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: charge
      match: { pathPrefix: /charge }
    - name: slash
      match: { pathPrefix: /refund/ }
"#,
        ));
        for path in ["/charge", "/charge/", "/charge/42"] {
            assert_eq!(
                name(r.select(&Method::GET, path, false)),
                Some("charge"),
                "{path}"
            );
        }
        assert_eq!(name(r.select(&Method::GET, "/chargeback", false)), None);
        // A trailing slash in the prefix means the same segment prefix.
        for path in ["/refund", "/refund/", "/refund/7"] {
            assert_eq!(
                name(r.select(&Method::GET, path, false)),
                Some("slash"),
                "{path}"
            );
        }
        assert_eq!(name(r.select(&Method::GET, "/refunds", false)), None);
    }

    #[test]
    fn method_condition_breaks_ties_within_a_rank() {
        let r = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: charge
      match: { pathPrefix: /charge }
    - name: charge-post
      match: { pathPrefix: /charge, method: POST }
    - name: short-post
      match: { pathPrefix: /c, method: POST }
"#,
        ));
        assert_eq!(
            name(r.select(&Method::POST, "/charge", false)),
            Some("charge-post")
        );
        assert_eq!(
            name(r.select(&Method::GET, "/charge", false)),
            Some("charge")
        );
        // A longer prefix outranks a method condition on a shorter one.
        assert_eq!(
            name(r.select(&Method::POST, "/charge/1", false)),
            Some("charge-post")
        );
        assert_eq!(
            name(r.select(&Method::POST, "/c/1", false)),
            Some("short-post")
        );
        let exact = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: any
      match: { path: /x }
    - name: put
      match: { path: /x, method: PUT }
"#,
        ));
        assert_eq!(name(exact.select(&Method::PUT, "/x", false)), Some("put"));
        assert_eq!(name(exact.select(&Method::GET, "/x", false)), Some("any"));
    }

    #[test]
    fn method_only_routes_are_least_specific() {
        let r = every_kind();
        assert_eq!(
            name(r.select(&Method::POST, "", false)),
            Some("method-post")
        );
        let r = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: post
      match: { method: POST }
    - name: get
      match: { method: GET }
"#,
        ));
        assert_eq!(
            name(r.select(&Method::GET, "/anything", false)),
            Some("get")
        );
        assert_eq!(name(r.select(&Method::DELETE, "/anything", false)), None);
    }

    #[test]
    fn ties_keep_the_first_route_in_the_file() {
        let r = UpstreamRoutes::compile(&spec(
            r#"  routes:
    - name: first
      match: { pathPrefix: /ab }
    - name: second
      match: { pathPrefix: /ab/ }
    - name: get
      match: { method: GET }
    - name: put
      match: { method: PUT }
"#,
        ));
        // `/ab` and `/ab/` are the same prefix: equal specificity.
        assert_eq!(name(r.select(&Method::GET, "/ab/c", false)), Some("first"));
    }

    #[test]
    fn routes_are_compiled_from_unvalidated_specs_without_panicking() {
        let spec = UpstreamSpec {
            routes: vec![
                Route {
                    name: Some("bad-method".into()),
                    matches: RouteMatch {
                        method: Some("NOT A METHOD".into()),
                        ..RouteMatch::default()
                    },
                    ..Route::default()
                },
                Route {
                    name: Some("both".into()),
                    matches: RouteMatch {
                        grpc_method: Some("/a.B/".into()),
                        path_prefix: Some("/a.B/C".into()),
                        ..RouteMatch::default()
                    },
                    ..Route::default()
                },
            ],
            ..UpstreamSpec::default()
        };
        let r = UpstreamRoutes::compile(&spec);
        // Every condition must hold.
        assert_eq!(name(r.select(&Method::POST, "/a.B/C", true)), Some("both"));
        assert_eq!(name(r.select(&Method::POST, "/a.B/D", true)), None);
        assert_eq!(name(r.select(&Method::POST, "/a.B/C", false)), None);
    }
}
