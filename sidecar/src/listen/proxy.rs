//! One proxied request, both directions: route it to an upstream (outbound: by authority or by
//! local port; inbound: the local app), clean its headers, give it its ids, send it through the
//! upstream's [`Stack`](crate::policy_stack::Stack), and answer errors through
//! [`rescue`](crate::errors::rescue). The access log line and request metrics are written when
//! the response ends ([`observe`](super::observe)).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bulwark_proto::policy::Protocol;
use http::uri::Authority;
use http::{Request, Response, Version, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::admit::admit;
use super::guard::FramedTwice;
use super::mtls::PeerIdentity;
use super::observe::{Completion, ObservedBody};
use super::upgrade::{self, Splice, Upgrade};
use crate::balance::p2c::p2c;
use crate::body::Body;
use crate::errors::{ProxyError, rescue};
use crate::headers::{GRPC_STATUS, is_grpc, strip_hop_by_hop};
use crate::metrics::ProtocolLabel;
use crate::policy_stack::layer::CallState;
use crate::route::{RouteRef, RouteTable};
use crate::state::Shared;
use crate::trace::{self, RequestAttributes};

/// Which upstream a listener's requests go to.
#[derive(Debug, Clone)]
pub enum Target {
    /// Outbound: the upstream named by the request's authority.
    ByAuthority,
    /// Outbound on a per-upstream local port: always this upstream (`name` or `name.namespace`).
    Fixed(Arc<str>),
    /// Inbound: the local app.
    App,
    /// Outbound, captured by iptables on its way to this address: the policy the authority
    /// names, else the one whose endpoints include the address, else straight to it.
    Captured(SocketAddr),
    /// Inbound, captured by iptables on its way to this address of the pod: the app there.
    AppAddr(SocketAddr),
}

impl Target {
    fn inbound(&self) -> bool {
        matches!(self, Target::App | Target::AppAddr(_))
    }

    /// `outbound` or `inbound`, as metrics and logs say.
    pub fn direction(&self) -> &'static str {
        match self {
            Target::ByAuthority | Target::Fixed(_) | Target::Captured(_) => "outbound",
            Target::App | Target::AppAddr(_) => "inbound",
        }
    }
}

/// Proxies one request from `client` (`peer`: the caller's verified identity, on an inbound
/// mTLS connection); never fails — errors become responses.
pub async fn handle(
    shared: Arc<Shared>,
    target: Target,
    client: std::net::IpAddr,
    peer: Option<Arc<PeerIdentity>>,
    mut req: Request<Incoming>,
) -> Response<ObservedBody> {
    let started = Instant::now();
    let upgrade = Upgrade::of(&req);
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let downstream_version = parts.version;
    // Before anything reads or strips a header: framing a proxy must not pass on.
    let malformed = malformed(&parts);
    if let Some((reason, _)) = &malformed {
        shared.metrics.malformed(target.direction(), reason);
    }
    let grpc = is_grpc(&parts.headers);
    let protocol = match (grpc, parts.version) {
        (true, _) => ProtocolLabel::Grpc,
        (false, Version::HTTP_2) => ProtocolLabel::Http2,
        (false, _) => ProtocolLabel::Http1,
    };
    let authority = request_authority(&parts);
    strip_hop_by_hop(&mut parts.headers);
    let mut ids = trace::ensure(&mut parts.headers, shared.tracer.ratio());
    let span = shared.tracer.request(
        &mut ids,
        &mut parts.headers,
        SystemTime::now(),
        RequestAttributes {
            direction: target.direction(),
            method: &parts.method,
            path: parts.uri.path(),
            authority: authority.as_ref().map_or("", Authority::as_str),
        },
    );

    let mut completion = Completion {
        direction: target.direction(),
        upstream: None,
        metrics: None,
        protocol,
        method: parts.method.clone(),
        authority: authority.clone(),
        uri: parts.uri.clone(),
        ids,
        started,
        attempts: 0,
        status: http::StatusCode::OK,
        grpc_status: None,
        failure_on: None,
        failed: None,
        error: None,
        refused: None,
        peer_identity: None,
        caller: None,
        endpoint: None,
        span: None,
        in_flight: shared.in_flight.start(),
    };

    let table = shared.table.load_full();
    let admitted = if target.inbound() {
        let probe = shared.is_probe(&parts);
        admit(
            &table.access,
            &shared.metrics,
            peer.as_deref(),
            &mut parts,
            grpc,
            probe,
        )
    } else {
        Ok(())
    };
    completion.peer_identity = peer.as_ref().map(|p| p.text.clone());
    completion.caller = peer;
    let routed = match malformed {
        Some((_, message)) => Err(ProxyError::BadRequest(message)),
        None => admitted.and_then(|()| route(&shared, &table, &target, authority)),
    };
    let state = CallState::from_client(client).with_trace(span);
    let prepared = match &upgrade {
        Some(u) => u.prepare(&mut parts),
        None => Ok(()),
    };
    let result = match (routed, prepared) {
        (Err(e), _) | (_, Err(e)) => Err(e),
        (Ok((route, authority)), Ok(())) => {
            completion.upstream = Some(route.name.clone());
            if completion.peer_identity.is_none() {
                completion.peer_identity = route.upstream.peer_identity.clone();
            }
            completion.metrics = Some(route.metrics.clone());
            completion.failure_on = Some(route.upstream.failure_on.clone());
            let splice = |destination: String| Splice {
                shared: shared.clone(),
                direction: target.direction(),
                upstream: route.name.clone(),
                destination,
            };
            match (upgrade, on_upgrade) {
                (Some(Upgrade::Connect), Some(down)) => {
                    tunnel(&route, &authority, down, splice).await
                }
                (Some(u), Some(down)) => {
                    if matches!(route.policy.spec.protocol, Protocol::Http2 | Protocol::Grpc) {
                        Err(ProxyError::BadRequest(format!(
                            "an upgrade needs an HTTP/1.1 upstream; UpstreamPolicy {} speaks HTTP/2",
                            route.name
                        )))
                    } else {
                        let req = Request::from_parts(parts, Body::Incoming(body));
                        let result = route.stack.call(req, &authority, &state).await;
                        result.map(|rsp| {
                            upgrade::finish(&u, rsp, down, splice(authority.to_string()))
                        })
                    }
                }
                _ => {
                    let req = Request::from_parts(parts, Body::Incoming(body));
                    route.stack.call(req, &authority, &state).await
                }
            }
        }
    };
    completion.attempts = state.attempts();
    completion.endpoint = state.last_endpoint();
    completion.span = state.into_trace();

    let rsp = match result {
        Ok(mut rsp) => {
            if rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                strip_hop_by_hop(rsp.headers_mut());
            }
            // The response travels on the caller's connection, in the caller's HTTP version.
            *rsp.version_mut() = downstream_version;
            rsp
        }
        Err(err) => {
            tracing::debug!(error = %err, "request failed");
            completion.error = Some(err.kind());
            completion.failed = Some(err.is_failure());
            completion.refused = err.refusal();
            let mut rsp = rescue(&err, grpc);
            if matches!(err, ProxyError::MalformedBody(_)) {
                shared
                    .metrics
                    .malformed(target.direction(), "malformed-body");
            }
            if matches!(
                err,
                ProxyError::BadRequest(_) | ProxyError::MalformedBody(_)
            ) && downstream_version < Version::HTTP_2
            {
                // Where the request ended is not known for sure: nothing more is read from
                // this connection.
                rsp.headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            rsp
        }
    };
    completion.status = rsp.status();
    if completion.metrics.is_none() {
        // It matched no upstream: counted under `upstream=""`.
        completion.metrics = Some(shared.unrouted(target.direction()));
    }
    if grpc {
        completion.grpc_status = rsp.headers().get(GRPC_STATUS).cloned();
    }
    let (parts, body) = rsp.into_parts();
    Response::from_parts(parts, ObservedBody::new(body, completion))
}

/// An HTTP/1.1 request a proxy must refuse (RFC 9112): one framed both by `Content-Length`
/// and `Transfer-Encoding` (request smuggling; hyper drops the length, the connection's guard
/// saw it), more than one `Host`, or a `Host` that disagrees with an absolute-form target — a
/// request that names two destinations. The metric's reason and the message.
fn malformed(parts: &http::request::Parts) -> Option<(&'static str, String)> {
    if parts.version >= Version::HTTP_2 {
        return None;
    }
    if parts.extensions.get::<FramedTwice>().is_some() {
        return Some((
            "content-length-and-transfer-encoding",
            "a request is framed by Content-Length or by Transfer-Encoding; this one has both"
                .to_string(),
        ));
    }
    let headers = &parts.headers;
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Some((
            "duplicate-host",
            format!("a request carries one Host header; this one carries {hosts}"),
        ));
    }
    if let (Some(target), Some(host)) = (parts.uri.authority(), headers.get(header::HOST))
        && !host
            .as_bytes()
            .eq_ignore_ascii_case(target.as_str().as_bytes())
    {
        return Some((
            "host-mismatch",
            format!(
                "the Host header {:?} disagrees with the request target's authority {:?}",
                String::from_utf8_lossy(host.as_bytes()),
                target.as_str()
            ),
        ));
    }
    None
}

/// A `CONNECT name:port` to an upstream that allows it: a tunnel to one of its endpoints.
async fn tunnel(
    route: &crate::route::Route,
    authority: &Authority,
    down: hyper::upgrade::OnUpgrade,
    splice: impl FnOnce(String) -> Splice,
) -> Result<Response<Body>, ProxyError> {
    if route.policy.spec.allow_connect != Some(true) {
        return Err(ProxyError::ConnectNotAllowed {
            authority: authority.to_string(),
            upstream: route.name.to_string(),
        });
    }
    let timeout = route
        .policy
        .spec
        .timeouts
        .as_ref()
        .and_then(|t| t.connect.as_ref())
        .map_or(bulwark_proto::policy::defaults::CONNECT_TIMEOUT, |d| {
            d.get()
        });
    let endpoints = route
        .upstream
        .endpoints
        .ready(timeout)
        .await
        .map_err(|reason| ProxyError::NoEndpoints {
            upstream: route.name.to_string(),
            reason,
        })?;
    let destination =
        p2c(&endpoints, |_| true)
            .map(|e| e.addr)
            .ok_or_else(|| ProxyError::NoEndpoints {
                upstream: route.name.to_string(),
                reason: "no endpoints".into(),
            })?;
    upgrade::connect(down, destination, timeout, splice(destination.to_string())).await
}

/// The route a request takes and the authority it goes out with.
fn route<'t>(
    shared: &Shared,
    table: &'t RouteTable,
    target: &Target,
    authority: Option<Authority>,
) -> Result<(RouteRef<'t>, Authority), ProxyError> {
    match target {
        Target::ByAuthority => {
            let a = authority.ok_or(ProxyError::NoAuthority)?;
            match table.route(a.as_str()) {
                Some(r) => Ok((RouteRef::Table(r), a)),
                None => {
                    tracing::warn!(
                        authority = a.as_str(),
                        "no UpstreamPolicy matches authority"
                    );
                    Err(ProxyError::NoRoute {
                        authority: a.as_str().to_string(),
                    })
                }
            }
        }
        Target::Fixed(name) => match table.route(name) {
            Some(r) => Ok((
                RouteRef::Table(r),
                authority.unwrap_or_else(|| authority_of_name(name)),
            )),
            None => {
                tracing::warn!(upstream = %name, "the upstream of this local port has no UpstreamPolicy");
                Err(ProxyError::NoRoute {
                    authority: name.to_string(),
                })
            }
        },
        Target::App => match &table.inbound {
            Some(app) => Ok((
                RouteRef::Table(app),
                authority.unwrap_or_else(|| authority_of_name("localhost")),
            )),
            None => Err(ProxyError::NoApp {
                service: shared
                    .local
                    .service
                    .clone()
                    .unwrap_or_else(|| "<unset: --service>".into()),
            }),
        },
        Target::Captured(original) => {
            let by_name = authority.as_ref().and_then(|a| table.route(a.as_str()));
            let authority = authority.unwrap_or_else(|| authority_of_name(&original.to_string()));
            if let Some(r) = by_name.or_else(|| table.route_addr(*original)) {
                return Ok((RouteRef::Table(r), authority));
            }
            let r = table
                .passthrough(*original)
                .map_err(|e| ProxyError::BadRequest(format!("passthrough to {original}: {e}")))?;
            Ok((RouteRef::Built(r), authority))
        }
        Target::AppAddr(addr) => {
            let authority = authority.unwrap_or_else(|| authority_of_name("localhost"));
            let r = table
                .app_addr(*addr)
                .map_err(|e| ProxyError::BadRequest(format!("app at {addr}: {e}")))?;
            Ok((RouteRef::Built(r), authority))
        }
    }
}

/// The authority a request names: `:authority` / absolute-form URI first, else `Host`.
fn request_authority(parts: &http::request::Parts) -> Option<Authority> {
    if let Some(a) = parts.uri.authority() {
        return Some(a.clone());
    }
    let host = parts.headers.get(header::HOST)?;
    Authority::try_from(host.as_bytes()).ok()
}

fn authority_of_name(name: &str) -> Authority {
    Authority::try_from(name).unwrap_or_else(|_| Authority::from_static("localhost"))
}
