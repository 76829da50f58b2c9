//! The routing table: the applied policy snapshot, compiled. Which upstream a request's
//! authority names (`name`, `name.namespace`, `name.namespace.svc.cluster.local`), the local
//! app for inbound requests, and for each what a request goes through. A new table reuses every
//! upstream whose policy did not change, keeping its connections and state; the layers above
//! the attempts (gate, deadline, failover) are rebuilt every time, so failover targets and the
//! own ServicePolicy's actions are resolved here, once per snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use bulwark_proto::policy::{
    API_VERSION, Endpoints, Limits, Metadata, MtlsMode, Protocol, Resource, Route as PolicyRoute,
    ServicePolicy, UpstreamPolicy, UpstreamSpec,
};

use super::access::InboundAccess;
use super::upstream::{BuildEnv, Side, Upstream};
use crate::headers::host_of;
use crate::health::actions::ServiceActions;
use crate::policy_stack::failover::StaticResponse;
use crate::policy_stack::gate::Direction;
use crate::policy_stack::rate_limit::{RateLimiter, RateSettings};
use crate::policy_stack::{self, Attempts, Stack, StackParts};

/// A complete, validated set of policies with its version, as a source delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySet {
    /// Changes whenever the content changes.
    pub version: String,
    /// Where it came from (`file:/etc/bulwark/policies`).
    pub source: String,
    pub resources: Vec<Resource>,
}

/// Who this sidecar serves: what a table is built for.
#[derive(Debug, Clone)]
pub struct LocalService {
    pub namespace: String,
    pub service: Option<String>,
    /// `--app-port`: overrides the ServicePolicy's `spec.app.port`.
    pub app_port: Option<u16>,
    /// The sidecar's own inbound port: an app port equal to it would loop.
    pub inbound_port: Option<u16>,
    /// `--inbound-mtls`: unless the ServicePolicy sets `spec.inbound.mtls`.
    pub mtls_default: MtlsMode,
}

/// An upstream in the table: the compiled upstream and what a request routed to it goes
/// through.
pub struct Route {
    pub upstream: Arc<Upstream>,
    pub stack: Stack,
}

impl std::ops::Deref for Route {
    type Target = Upstream;
    fn deref(&self) -> &Upstream {
        &self.upstream
    }
}

/// A route found in the table, or built for a captured destination on demand.
pub enum RouteRef<'t> {
    Table(&'t Route),
    Built(Arc<Route>),
}

impl std::ops::Deref for RouteRef<'_> {
    type Target = Route;
    fn deref(&self) -> &Route {
        match self {
            RouteRef::Table(r) => r,
            RouteRef::Built(r) => r,
        }
    }
}

/// Destinations remembered for passthrough at most; past this the cache starts again (a pod
/// that talks to more distinct unknown destinations than this pays a rebuild now and then).
const MAX_BUILT: usize = 1024;

/// Routes built on demand, per destination: read without a lock on every request (a captured
/// request finds its route here), replaced whole on the rare insert.
type Built = ArcSwap<HashMap<SocketAddr, Arc<Route>>>;

/// The policies in force; requests hold the table they started with.
pub struct RouteTable {
    pub version: String,
    pub source: String,
    pub resources: Vec<Resource>,
    /// name → namespace → upstream.
    upstreams: HashMap<String, HashMap<String, Route>>,
    /// The local app, for inbound traffic.
    pub inbound: Option<Route>,
    pub service: Option<ServicePolicy>,
    /// The own ServicePolicy's degradation actions and priority header, compiled.
    pub actions: Arc<ServiceActions>,
    /// Whether inbound callers must use mTLS, and which may call.
    pub access: Arc<InboundAccess>,
    /// `spec.inbound.rateLimit` of the own ServicePolicy: one bucket per caller, for every
    /// address of the app.
    inbound_rate: Option<Arc<RateLimiter>>,
    own_namespace: String,
    /// What routes built on demand are built with.
    local: LocalService,
    env: BuildEnv,
    /// Captured destinations no policy names: forwarded without resilience policies.
    passthrough: Built,
    /// Captured inbound connections, per address of the app they were sent to.
    app_addrs: Built,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("version", &self.version)
            .field("upstreams", &self.upstream_count())
            .finish_non_exhaustive()
    }
}

impl RouteTable {
    /// The table before any policy arrived: routes nothing by name (captured connections pass
    /// through).
    pub fn empty(local: &LocalService, env: &BuildEnv) -> RouteTable {
        RouteTable {
            version: String::new(),
            source: String::new(),
            resources: Vec::new(),
            upstreams: HashMap::new(),
            inbound: None,
            service: None,
            actions: Arc::default(),
            access: Arc::new(InboundAccess::compile(None, local.mtls_default)),
            inbound_rate: None,
            own_namespace: local.namespace.clone(),
            local: local.clone(),
            env: env.clone(),
            passthrough: Built::default(),
            app_addrs: Built::default(),
        }
    }

    pub fn is_loaded(&self) -> bool {
        !self.version.is_empty()
    }

    pub fn upstream_count(&self) -> usize {
        self.upstreams.values().map(HashMap::len).sum()
    }

    /// Builds the table for `set`, reusing `previous`'s upstreams whose policy is unchanged.
    pub fn build(
        set: &PolicySet,
        previous: &RouteTable,
        local: &LocalService,
        env: &BuildEnv,
    ) -> Result<RouteTable, String> {
        let mut compiled: HashMap<String, HashMap<String, Arc<Upstream>>> = HashMap::new();
        let mut service = None;
        for resource in &set.resources {
            match resource {
                Resource::UpstreamPolicy(p) => {
                    let old = previous
                        .upstreams
                        .get(&p.metadata.name)
                        .and_then(|by_ns| by_ns.get(&p.metadata.namespace))
                        .map(|r| &r.upstream);
                    let upstream = match old {
                        Some(u) if u.policy == *p => u.clone(),
                        _ => Arc::new(
                            Upstream::build(p, Side::Outbound, env, old.map(|u| &**u))
                                .map_err(|e| format!("{}: {e}", resource.id()))?,
                        ),
                    };
                    compiled
                        .entry(p.metadata.name.clone())
                        .or_default()
                        .insert(p.metadata.namespace.clone(), upstream);
                }
                Resource::ServicePolicy(p) => {
                    let ours = local.service.as_deref() == Some(p.metadata.name.as_str())
                        && p.metadata.namespace == local.namespace;
                    if ours {
                        service = Some(p.clone());
                    }
                }
            }
        }
        let actions = Arc::new(ServiceActions::from_policy(service.as_ref()));
        let inbound_rate = service
            .as_ref()
            .and_then(|s| s.spec.inbound.as_ref())
            .and_then(|i| i.rate_limit.as_ref())
            .map(|r| {
                let settings = RateSettings::inbound(r);
                match &previous.inbound_rate {
                    Some(old) if *old.settings() == settings => old.clone(),
                    _ => RateLimiter::new(settings),
                }
            });
        let parts = |direction, failover, response, rate_limiter| StackParts {
            direction,
            degradation: env.degradation.clone(),
            actions: actions.clone(),
            deadline_header: env.deadline_header.clone(),
            failover,
            response,
            rate_limiter,
        };
        let mut upstreams: HashMap<String, HashMap<String, Route>> = HashMap::new();
        for (name, by_ns) in &compiled {
            for (namespace, upstream) in by_ns {
                let fallback = upstream.policy.spec.fallback.as_ref();
                let failover = fallback
                    .map(|f| failover_targets(&compiled, upstream, &f.failover))
                    .unwrap_or_default();
                let response = fallback
                    .and_then(|f| f.response.as_ref())
                    .map(StaticResponse::compile);
                let stack = policy_stack::stack(
                    upstream.attempts.clone(),
                    parts(
                        Direction::Outbound,
                        failover,
                        response,
                        upstream.rate_limiter.clone(),
                    ),
                );
                upstreams.entry(name.clone()).or_default().insert(
                    namespace.clone(),
                    Route {
                        upstream: upstream.clone(),
                        stack,
                    },
                );
            }
        }
        let inbound = match app_policy(local, service.as_ref(), None)? {
            None => None,
            Some(policy) => {
                let upstream = match &previous.inbound {
                    Some(r) if r.upstream.policy == policy => r.upstream.clone(),
                    old => {
                        let side = Side::Inbound(Arc::from(format!(
                            "{}/{}",
                            local.namespace,
                            local.service.as_deref().unwrap_or("app")
                        )));
                        let old = old.as_ref().map(|r| &*r.upstream);
                        Arc::new(Upstream::build(&policy, side, env, old)?)
                    }
                };
                let stack = policy_stack::stack(
                    upstream.attempts.clone(),
                    parts(Direction::Inbound, Vec::new(), None, inbound_rate.clone()),
                );
                Some(Route { upstream, stack })
            }
        };
        Ok(RouteTable {
            version: set.version.clone(),
            source: set.source.clone(),
            resources: set.resources.clone(),
            upstreams,
            inbound,
            actions,
            access: Arc::new(InboundAccess::compile(service.as_ref(), local.mtls_default)),
            inbound_rate,
            service,
            own_namespace: local.namespace.clone(),
            local: local.clone(),
            env: env.clone(),
            passthrough: Built::default(),
            app_addrs: Built::default(),
        })
    }

    /// The upstream whose endpoints include `addr` (a static address, or one its DNS name
    /// resolved to): how a captured connection to a Service IP finds its policy.
    pub fn route_addr(&self, addr: SocketAddr) -> Option<&Route> {
        self.upstreams
            .values()
            .flat_map(|by_ns| by_ns.values())
            .find(|r| {
                r.upstream
                    .endpoints
                    .endpoints()
                    .iter()
                    .any(|e| e.addr == addr)
            })
    }

    /// A route to `destination` with no resilience policy: a captured connection that no
    /// policy names is forwarded as it is, never dropped.
    pub fn passthrough(&self, destination: SocketAddr) -> Result<Arc<Route>, String> {
        let policy = UpstreamPolicy {
            api_version: API_VERSION.to_string(),
            metadata: Metadata::new("passthrough".to_string(), self.own_namespace.clone()),
            spec: UpstreamSpec {
                endpoints: Endpoints {
                    static_addrs: Some(vec![destination.to_string()]),
                    ..Endpoints::default()
                },
                ..UpstreamSpec::default()
            },
        };
        self.built(&self.passthrough, destination, || {
            let upstream = Arc::new(Upstream::build(&policy, Side::Outbound, &self.env, None)?);
            Ok(self.route_without_fallback(upstream, Direction::Outbound))
        })
    }

    /// The route of a captured inbound connection to the app at `addr` (the pod's address
    /// and the port it was sent to): the app's inbound policy (shedding, `inbound.maxConcurrent`
    /// — one limit for all its ports) in front of that address. The sidecar's own connection
    /// to it is not captured again, and an app that listens on loopback only stays unreachable
    /// from outside the pod, as it was before the mesh.
    pub fn app_addr(&self, addr: SocketAddr) -> Result<Arc<Route>, String> {
        let app = self.inbound.as_ref();
        let built = |previous: Option<&Upstream>| -> Result<Arc<Route>, String> {
            let Some(policy) = app_policy(&self.local, self.service.as_ref(), Some(addr))? else {
                return Err("no app port".into());
            };
            let side = Side::Inbound(Arc::from(format!(
                "{}/{}",
                self.local.namespace,
                self.local.service.as_deref().unwrap_or("app")
            )));
            let upstream = Arc::new(Upstream::build(&policy, side, &self.env, previous)?);
            Ok(self.route_without_fallback(upstream, Direction::Inbound))
        };
        self.built(&self.app_addrs, addr, || built(app.map(|r| &*r.upstream)))
    }

    fn route_without_fallback(&self, upstream: Arc<Upstream>, direction: Direction) -> Arc<Route> {
        let rate_limiter = match direction {
            Direction::Inbound => self.inbound_rate.clone(),
            Direction::Outbound => upstream.rate_limiter.clone(),
        };
        let stack = policy_stack::stack(
            upstream.attempts.clone(),
            StackParts {
                direction,
                degradation: self.env.degradation.clone(),
                actions: self.actions.clone(),
                deadline_header: self.env.deadline_header.clone(),
                failover: Vec::new(),
                response: None,
                rate_limiter,
            },
        );
        Arc::new(Route { upstream, stack })
    }

    /// A route from `cache`, built and kept on first use.
    fn built(
        &self,
        cache: &Built,
        key: SocketAddr,
        build: impl FnOnce() -> Result<Arc<Route>, String>,
    ) -> Result<Arc<Route>, String> {
        if let Some(r) = cache.load().get(&key) {
            return Ok(r.clone());
        }
        let route = build()?;
        // Two requests may build the same route at once; the first one stored wins, so that
        // every later request shares one route (and its connections).
        let mut stored = route.clone();
        cache.rcu(|current| {
            if let Some(r) = current.get(&key) {
                stored = r.clone();
                return Arc::clone(current);
            }
            let mut next = if current.len() >= MAX_BUILT {
                HashMap::new()
            } else {
                HashMap::clone(current)
            };
            next.insert(key, route.clone());
            stored = route.clone();
            Arc::new(next)
        });
        Ok(stored)
    }

    /// The upstream a request's authority names; `None` when no policy matches.
    pub fn route(&self, authority: &str) -> Option<&Route> {
        let host = host_of(authority);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.route_host(&host.to_ascii_lowercase());
        }
        self.route_host(host)
    }

    fn route_host(&self, host: &str) -> Option<&Route> {
        let host = host.strip_suffix('.').unwrap_or(host);
        let host = host
            .strip_suffix(".svc.cluster.local")
            .or_else(|| host.strip_suffix(".svc"))
            .unwrap_or(host);
        match host.split_once('.') {
            None => self.by_bare_name(host),
            Some((name, ns)) if !ns.contains('.') => self.upstreams.get(name)?.get(ns),
            Some(_) => None,
        }
    }

    /// Every outbound upstream, sorted by namespace and name (admin views, health reports).
    pub fn upstreams(&self) -> Vec<&Arc<Upstream>> {
        let mut all: Vec<&Arc<Upstream>> = self
            .upstreams
            .values()
            .flat_map(|m| m.values())
            .map(|r| &r.upstream)
            .collect();
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }

    /// A bare name resolves in the sidecar's own namespace first, then in the one namespace
    /// that has it (ambiguous names do not resolve).
    fn by_bare_name(&self, name: &str) -> Option<&Route> {
        let by_ns = self.upstreams.get(name)?;
        if let Some(u) = by_ns.get(&self.own_namespace) {
            return Some(u);
        }
        if by_ns.len() == 1 {
            return by_ns.values().next();
        }
        None
    }
}

/// The attempts of an upstream's failover targets, in order. A name means an upstream in the
/// same namespace, `name.namespace` one in another; a name without an UpstreamPolicy is left
/// out (and said once, here).
fn failover_targets(
    compiled: &HashMap<String, HashMap<String, Arc<Upstream>>>,
    from: &Upstream,
    names: &[String],
) -> Vec<Arc<Attempts>> {
    names
        .iter()
        .filter_map(|target| {
            let (name, ns) = bulwark_proto::policy::refs::resolve(target, &from.namespace);
            let found = compiled.get(name).and_then(|by_ns| by_ns.get(ns));
            if found.is_none() {
                tracing::warn!(upstream = %from.name, failover = %target, "failover target has no UpstreamPolicy; it is skipped");
            }
            found.map(|u| u.attempts.clone())
        })
        .collect()
}

/// The inbound "upstream": the local app at `addr`, or on 127.0.0.1 at its port, with
/// `spec.inbound.maxConcurrent` as its limit, `spec.inbound.adaptiveConcurrency` in front of
/// it, and the criticality of requests that name none from `spec.inbound.criticality` and
/// `spec.inbound.routes`. `None` when no app port is known.
fn app_policy(
    local: &LocalService,
    service: Option<&ServicePolicy>,
    addr: Option<SocketAddr>,
) -> Result<Option<UpstreamPolicy>, String> {
    let app = service.and_then(|s| s.spec.app.as_ref());
    let endpoint = match addr {
        Some(a) => a,
        None => match local.app_port.or_else(|| app.map(|a| a.port)) {
            Some(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            None => return Ok(None),
        },
    };
    let port = endpoint.port();
    if local.inbound_port == Some(port) {
        return Err(format!(
            "ServicePolicy {}/{}: spec.app.port {port} is this sidecar's own inbound port; inbound requests would loop",
            local.namespace,
            local.service.as_deref().unwrap_or("")
        ));
    }
    let name = local.service.clone().unwrap_or_else(|| "app".to_string());
    let inbound = service.and_then(|s| s.spec.inbound.as_ref());
    let max_concurrent = inbound.and_then(|i| i.max_concurrent);
    Ok(Some(UpstreamPolicy {
        api_version: API_VERSION.to_string(),
        metadata: Metadata::new(name, local.namespace.clone()),
        spec: UpstreamSpec {
            endpoints: Endpoints {
                static_addrs: Some(vec![endpoint.to_string()]),
                ..Endpoints::default()
            },
            protocol: app.and_then(|a| a.protocol).unwrap_or(Protocol::Auto),
            limits: max_concurrent.map(|max| Limits {
                max_concurrent: Some(max),
                max_pending: Some(0),
            }),
            adaptive_concurrency: inbound.and_then(|i| i.adaptive_concurrency.clone()),
            criticality: inbound.and_then(|i| i.criticality.clone()),
            routes: inbound
                .map(|i| {
                    i.routes
                        .iter()
                        .map(|r| PolicyRoute {
                            name: r.name.clone(),
                            matches: r.matches.clone(),
                            criticality: Some(r.criticality.clone()),
                            ..PolicyRoute::default()
                        })
                        .collect()
                })
                .unwrap_or_default(),
            ..UpstreamSpec::default()
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use bulwark_proto::policy::parse_yaml;

    fn upstream(name: &str, ns: &str, port: u16) -> String {
        format!(
            "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: {name}, namespace: {ns} }}\nspec: {{ endpoints: {{ static: [\"127.0.0.1:{port}\"] }} }}\n---\n"
        )
    }

    fn table(yaml: &str, ns: &str) -> RouteTable {
        let local = LocalService {
            namespace: ns.into(),
            service: None,
            app_port: None,
            inbound_port: None,
            mtls_default: Default::default(),
        };
        let set = PolicySet {
            version: "1".into(),
            source: "test".into(),
            resources: parse_yaml(yaml).unwrap(),
        };
        RouteTable::build(&set, &RouteTable::empty(&local, &env()), &local, &env()).unwrap()
    }

    fn env() -> BuildEnv {
        BuildEnv {
            metrics: Arc::new(Metrics::new()),
            events: tokio::sync::broadcast::channel(16).0,
            degradation: Arc::default(),
            deadline_header: None,
            identity: None,
            upstream_idle_timeout: crate::upstream::connect::DEFAULT_IDLE_TIMEOUT,
        }
    }

    #[tokio::test]
    async fn authority_forms_and_own_namespace_preference() {
        let yaml = upstream("echo", "default", 1)
            + &upstream("echo", "other", 2)
            + &upstream("pay", "payments", 3);
        let s = table(&yaml, "default");
        let ns = |a: &str| s.route(a).map(|u| u.namespace.to_string());
        assert_eq!(ns("echo"), Some("default".into()));
        assert_eq!(ns("echo:8080"), Some("default".into()));
        assert_eq!(ns("echo.other"), Some("other".into()));
        assert_eq!(ns("echo.other.svc.cluster.local:80"), Some("other".into()));
        assert_eq!(ns("ECHO.Other"), Some("other".into()));
        assert_eq!(
            ns("pay"),
            Some("payments".into()),
            "unique name in another namespace"
        );
        assert_eq!(ns("pay.default"), None);
        assert_eq!(ns("nowhere"), None);
        assert_eq!(ns("echo.example.com"), None);

        let s = table(&yaml, "third");
        assert_eq!(
            s.route("echo").map(|u| u.namespace.to_string()),
            None,
            "ambiguous"
        );
    }

    #[tokio::test]
    async fn captured_destinations_find_their_policy_or_a_shared_passthrough_route() {
        let s = table(
            &(upstream("echo", "default", 7001) + &upstream("pay", "p", 7002)),
            "default",
        );
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        // A policy's static endpoint is found by address.
        assert_eq!(
            s.route_addr(at(7002)).map(|r| r.name.to_string()),
            Some("pay".into())
        );
        assert!(s.route_addr(at(7003)).is_none());

        // Unknown destinations get a passthrough route, built once per destination and shared
        // by every request to it.
        let first = s.passthrough(at(7003)).unwrap();
        let again = s.passthrough(at(7003)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.name.as_ref(), "passthrough");
        let other = s.passthrough(at(7004)).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        let endpoints = other.upstream.endpoints.endpoints();
        assert_eq!(
            endpoints.iter().map(|e| e.addr).collect::<Vec<_>>(),
            [at(7004)]
        );

        // Past MAX_BUILT destinations the cache starts again, and still answers.
        for port in 0..=MAX_BUILT as u16 {
            s.passthrough(at(20_000 + port)).unwrap();
        }
        assert!(s.passthrough.load().len() <= MAX_BUILT);
        assert!(!Arc::ptr_eq(&s.passthrough(at(7003)).unwrap(), &first));
    }

    #[tokio::test]
    async fn an_app_port_equal_to_the_inbound_port_is_refused() {
        let local = LocalService {
            namespace: "shop".into(),
            service: Some("orders".into()),
            app_port: None,
            inbound_port: Some(15006),
            mtls_default: Default::default(),
        };
        let set = PolicySet {
            version: "1".into(),
            source: "test".into(),
            resources: parse_yaml(
                "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: { name: orders, namespace: shop }\nspec: { app: { port: 15006 } }\n",
            )
            .unwrap(),
        };
        let err = RouteTable::build(&set, &RouteTable::empty(&local, &env()), &local, &env())
            .unwrap_err();
        assert_eq!(
            err,
            "ServicePolicy shop/orders: spec.app.port 15006 is this sidecar's own inbound port; inbound requests would loop"
        );
    }

    #[tokio::test]
    async fn unchanged_upstreams_are_reused() {
        let local = LocalService {
            namespace: "default".into(),
            service: None,
            app_port: None,
            inbound_port: None,
            mtls_default: Default::default(),
        };
        let env = env();
        let set = |yaml: &str| PolicySet {
            version: "v".into(),
            source: "test".into(),
            resources: parse_yaml(yaml).unwrap(),
        };
        let first = RouteTable::build(
            &set(&(upstream("a", "default", 1) + &upstream("b", "default", 2))),
            &RouteTable::empty(&local, &env),
            &local,
            &env,
        )
        .unwrap();
        let second = RouteTable::build(
            &set(&(upstream("a", "default", 1) + &upstream("b", "default", 3))),
            &first,
            &local,
            &env,
        )
        .unwrap();
        assert!(Arc::ptr_eq(
            &first.route("a").unwrap().upstream,
            &second.route("a").unwrap().upstream
        ));
        assert!(!Arc::ptr_eq(
            &first.route("b").unwrap().upstream,
            &second.route("b").unwrap().upstream
        ));
    }
}
