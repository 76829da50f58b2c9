//! Routing: the immutable snapshot of applied policies, and the lookup from a request's
//! authority (`name`, `name.namespace`, `name.namespace.svc.cluster.local`) to an upstream.
//! A new snapshot reuses every upstream whose policy did not change, keeping its connections.

use std::collections::HashMap;
use std::sync::Arc;

use bulwark_proto::policy::{
    API_VERSION, Endpoints, Metadata, Protocol, Resource, ServicePolicy, UpstreamPolicy,
    UpstreamSpec,
};

use crate::headers::host_of;
use crate::health::levels::ServiceActions;
use crate::source::PolicySet;
use crate::upstream::{BuildEnv, Upstream};

/// What a snapshot is built for: who this sidecar is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub namespace: String,
    pub service: Option<String>,
    /// `--app-port`: overrides the ServicePolicy's `spec.app.port`.
    pub app_port: Option<u16>,
    /// The sidecar's own inbound port: an app port equal to it would loop.
    pub inbound_port: Option<u16>,
}

/// The policies in force; requests hold the snapshot they started with.
pub struct Snapshot {
    pub version: String,
    pub source: String,
    pub resources: Vec<Resource>,
    /// name → namespace → upstream.
    upstreams: HashMap<String, HashMap<String, Arc<Upstream>>>,
    /// The local app, for inbound traffic.
    pub inbound: Option<Arc<Upstream>>,
    pub service: Option<ServicePolicy>,
    /// The own ServicePolicy's degradation actions and priority header, compiled.
    pub actions: ServiceActions,
    own_namespace: String,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("upstreams", &self.upstream_count())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// The snapshot before any policy arrived: routes nothing.
    pub fn empty(identity: &Identity) -> Snapshot {
        Snapshot {
            version: String::new(),
            source: String::new(),
            resources: Vec::new(),
            upstreams: HashMap::new(),
            inbound: None,
            service: None,
            actions: ServiceActions::default(),
            own_namespace: identity.namespace.clone(),
        }
    }

    pub fn is_loaded(&self) -> bool {
        !self.version.is_empty()
    }

    pub fn upstream_count(&self) -> usize {
        self.upstreams.values().map(HashMap::len).sum()
    }

    /// Builds the snapshot for `set`, reusing `previous`'s upstreams whose policy is unchanged.
    pub fn build(
        set: &PolicySet,
        previous: &Snapshot,
        identity: &Identity,
        env: &BuildEnv,
    ) -> Result<Snapshot, String> {
        let mut upstreams: HashMap<String, HashMap<String, Arc<Upstream>>> = HashMap::new();
        let mut service = None;
        for resource in &set.resources {
            match resource {
                Resource::UpstreamPolicy(p) => {
                    let old = previous
                        .upstreams
                        .get(&p.metadata.name)
                        .and_then(|by_ns| by_ns.get(&p.metadata.namespace));
                    let upstream = match old {
                        Some(u) if u.policy == *p => u.clone(),
                        _ => Upstream::build(p, "outbound", env, old.map(|u| &**u))
                            .map_err(|e| format!("{}: {e}", resource.id()))?,
                    };
                    upstreams
                        .entry(p.metadata.name.clone())
                        .or_default()
                        .insert(p.metadata.namespace.clone(), upstream);
                }
                Resource::ServicePolicy(p) => {
                    let ours = identity.service.as_deref() == Some(p.metadata.name.as_str())
                        && p.metadata.namespace == identity.namespace;
                    if ours {
                        service = Some(p.clone());
                    }
                }
            }
        }
        let app_port = identity.app_port.or_else(|| {
            service
                .as_ref()
                .and_then(|s| s.spec.app.as_ref())
                .map(|a| a.port)
        });
        let app_protocol = service
            .as_ref()
            .and_then(|s| s.spec.app.as_ref())
            .and_then(|a| a.protocol)
            .unwrap_or(Protocol::Auto);
        let inbound = match app_port {
            None => None,
            Some(port) if identity.inbound_port == Some(port) => {
                return Err(format!(
                    "ServicePolicy {}/{}: spec.app.port {port} is this sidecar's own inbound port; inbound requests would loop",
                    identity.namespace,
                    identity.service.as_deref().unwrap_or("")
                ));
            }
            Some(port) => {
                let policy = app_policy(identity, port, app_protocol);
                match &previous.inbound {
                    Some(u) if u.policy == policy => Some(u.clone()),
                    old => Some(Upstream::build(&policy, "inbound", env, old.as_deref())?),
                }
            }
        };
        Ok(Snapshot {
            version: set.version.clone(),
            source: set.source.clone(),
            resources: set.resources.clone(),
            upstreams,
            inbound,
            actions: ServiceActions::from_policy(service.as_ref()),
            service,
            own_namespace: identity.namespace.clone(),
        })
    }

    /// The upstream a request's authority names; `None` when no policy matches.
    pub fn route(&self, authority: &str) -> Option<&Arc<Upstream>> {
        let host = host_of(authority);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.route_host(&host.to_ascii_lowercase());
        }
        self.route_host(host)
    }

    fn route_host(&self, host: &str) -> Option<&Arc<Upstream>> {
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

    /// A failover target named by an upstream in `namespace`: `name` means that namespace,
    /// `name.namespace` another.
    pub fn route_from(&self, name: &str, namespace: &str) -> Option<&Arc<Upstream>> {
        match name.split_once('.') {
            Some((n, ns)) => self.upstreams.get(n)?.get(ns),
            None => self.upstreams.get(name)?.get(namespace),
        }
    }

    /// Every outbound upstream, sorted by namespace and name (admin views).
    pub fn upstreams(&self) -> Vec<&Arc<Upstream>> {
        let mut all: Vec<&Arc<Upstream>> =
            self.upstreams.values().flat_map(|m| m.values()).collect();
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }

    /// A bare name resolves in the sidecar's own namespace first, then in the one namespace
    /// that has it (ambiguous names do not resolve).
    fn by_bare_name(&self, name: &str) -> Option<&Arc<Upstream>> {
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

/// The inbound "upstream": the local app on 127.0.0.1.
fn app_policy(identity: &Identity, port: u16, protocol: Protocol) -> UpstreamPolicy {
    let name = identity
        .service
        .clone()
        .unwrap_or_else(|| "app".to_string());
    UpstreamPolicy {
        api_version: API_VERSION.to_string(),
        metadata: Metadata::new(name, identity.namespace.clone()),
        spec: UpstreamSpec {
            endpoints: Endpoints {
                static_addrs: Some(vec![format!("127.0.0.1:{port}")]),
                ..Endpoints::default()
            },
            protocol,
            ..UpstreamSpec::default()
        },
    }
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

    fn snapshot(yaml: &str, ns: &str) -> Snapshot {
        let identity = Identity {
            namespace: ns.into(),
            service: None,
            app_port: None,
            inbound_port: None,
        };
        let set = PolicySet {
            version: "1".into(),
            source: "test".into(),
            resources: parse_yaml(yaml).unwrap(),
        };
        Snapshot::build(&set, &Snapshot::empty(&identity), &identity, &env()).unwrap()
    }

    fn env() -> BuildEnv {
        BuildEnv {
            metrics: Arc::new(Metrics::new()),
            events: tokio::sync::broadcast::channel(16).0,
            degradation: Arc::default(),
            deadline_header: None,
        }
    }

    #[tokio::test]
    async fn authority_forms_and_own_namespace_preference() {
        let yaml = upstream("echo", "default", 1)
            + &upstream("echo", "other", 2)
            + &upstream("pay", "payments", 3);
        let s = snapshot(&yaml, "default");
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

        let s = snapshot(&yaml, "third");
        assert_eq!(
            s.route("echo").map(|u| u.namespace.to_string()),
            None,
            "ambiguous"
        );
    }

    #[tokio::test]
    async fn an_app_port_equal_to_the_inbound_port_is_refused() {
        let identity = Identity {
            namespace: "shop".into(),
            service: Some("orders".into()),
            app_port: None,
            inbound_port: Some(15006),
        };
        let set = PolicySet {
            version: "1".into(),
            source: "test".into(),
            resources: parse_yaml(
                "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: { name: orders, namespace: shop }\nspec: { app: { port: 15006 } }\n",
            )
            .unwrap(),
        };
        let err =
            Snapshot::build(&set, &Snapshot::empty(&identity), &identity, &env()).unwrap_err();
        assert_eq!(
            err,
            "ServicePolicy shop/orders: spec.app.port 15006 is this sidecar's own inbound port; inbound requests would loop"
        );
    }

    #[tokio::test]
    async fn unchanged_upstreams_are_reused() {
        let identity = Identity {
            namespace: "default".into(),
            service: None,
            app_port: None,
            inbound_port: None,
        };
        let env = env();
        let set = |yaml: &str| PolicySet {
            version: "v".into(),
            source: "test".into(),
            resources: parse_yaml(yaml).unwrap(),
        };
        let first = Snapshot::build(
            &set(&(upstream("a", "default", 1) + &upstream("b", "default", 2))),
            &Snapshot::empty(&identity),
            &identity,
            &env,
        )
        .unwrap();
        let second = Snapshot::build(
            &set(&(upstream("a", "default", 1) + &upstream("b", "default", 3))),
            &first,
            &identity,
            &env,
        )
        .unwrap();
        assert!(Arc::ptr_eq(
            first.route("a").unwrap(),
            second.route("a").unwrap()
        ));
        assert!(!Arc::ptr_eq(
            first.route("b").unwrap(),
            second.route("b").unwrap()
        ));
    }
}
