//! An upstream as the sidecar runs it: compiled once from its `UpstreamPolicy` (endpoints,
//! protocol, connection settings, metric handles) and reused across policy reloads while the
//! policy is unchanged, so its connections and counters survive.

mod balance;
mod discovery;
mod endpoint;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::policy::{Protocol, UpstreamPolicy, defaults};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};

pub use discovery::EndpointSet;
pub use endpoint::{ConnectSettings, Endpoint, UpstreamBody, Wire};

use crate::body::Body;
use crate::errors::ProxyError;
use crate::metrics::{Metrics, UpstreamMetrics};

pub struct Upstream {
    /// `name` of the policy (what callers put in `:authority`).
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    /// The policy this upstream was compiled from; compared on reload.
    pub policy: UpstreamPolicy,
    protocol: Protocol,
    host_rewrite: bool,
    request_timeout: Option<Duration>,
    endpoints: Arc<EndpointSet>,
    connect: ConnectSettings,
    pub metrics: Arc<UpstreamMetrics>,
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
    /// Compiles a validated policy. Must run inside a tokio runtime (DNS refresh task).
    pub fn build(
        policy: &UpstreamPolicy,
        direction: &'static str,
        metrics: &Arc<Metrics>,
    ) -> Result<Arc<Upstream>, String> {
        let spec = &policy.spec;
        let refresh = spec
            .endpoints
            .dns_refresh
            .as_ref()
            .map(|d| d.get())
            .unwrap_or(defaults::DNS_REFRESH);
        let endpoints = match (&spec.endpoints.static_addrs, &spec.endpoints.dns) {
            (Some(addrs), _) => {
                let parsed = addrs
                    .iter()
                    .map(|a| {
                        a.parse::<SocketAddr>()
                            .map_err(|e| format!("endpoint {a:?}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                EndpointSet::fixed(&parsed)
            }
            (None, Some(target)) => match target.parse::<SocketAddr>() {
                Ok(addr) => EndpointSet::fixed(&[addr]),
                Err(_) => EndpointSet::dns(target, refresh),
            },
            (None, None) => return Err("spec.endpoints: one of dns or static is required".into()),
        };
        let timeouts = spec.timeouts.as_ref();
        let connect_timeout = timeouts
            .and_then(|t| t.connect.as_ref())
            .map(|d| d.get())
            .unwrap_or(defaults::CONNECT_TIMEOUT);
        let request_timeout = timeouts.and_then(|t| t.request.as_ref()).map(|d| d.get());
        let name: Arc<str> = Arc::from(policy.metadata.name.as_str());
        let upstream_metrics = Arc::new(metrics.upstream(direction, &name));
        Ok(Arc::new(Upstream {
            namespace: Arc::from(policy.metadata.namespace.as_str()),
            policy: policy.clone(),
            protocol: spec.protocol,
            host_rewrite: spec.host_rewrite.unwrap_or(false),
            request_timeout,
            endpoints,
            connect: ConnectSettings {
                upstream: name.clone(),
                connect_timeout,
                connects_http1: upstream_metrics.connects_http1.clone(),
                connects_http2: upstream_metrics.connects_http2.clone(),
            },
            metrics: upstream_metrics,
            name,
        }))
    }

    /// The overall time limit of a call: the policy's `timeouts.request`, shortened by the
    /// caller's own deadline (`grpc-timeout`).
    pub fn deadline(&self, caller: Option<Duration>) -> Option<Duration> {
        match (self.request_timeout, caller) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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

    /// Sends one attempt of `req` to an endpoint chosen by the balancer.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        authority: &Authority,
    ) -> Result<Response<Body>, ProxyError> {
        let wait = self.connect.connect_timeout;
        let endpoint =
            self.endpoints
                .pick(wait)
                .await
                .map_err(|reason| ProxyError::NoEndpoints {
                    upstream: self.name.to_string(),
                    reason,
                })?;
        let wire = self.wire_for(req.version());
        let target = if self.host_rewrite {
            Authority::try_from(endpoint.addr.to_string().as_str())
                .map_err(|e| ProxyError::BadRequest(format!("endpoint address: {e}")))?
        } else {
            authority.clone()
        };
        prepare_for_wire(&mut req, wire, &target)?;
        let rsp = endpoint.send(wire, req, &self.connect).await?;
        Ok(rsp.map(Body::Upstream))
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
