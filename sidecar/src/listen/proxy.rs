//! One proxied request, both directions: route it to an upstream (outbound: by authority or by
//! local port; inbound: the local app), clean its headers, give it its ids, send it through the
//! upstream's [`Stack`](crate::policy_stack::Stack), and answer errors through
//! [`rescue`](crate::errors::rescue). The access log line and request metrics are written when
//! the response ends ([`observe`](super::observe)).

use std::sync::Arc;

use http::uri::Authority;
use http::{Request, Response, Version, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::observe::{Completion, ObservedBody};
use crate::body::Body;
use crate::errors::{ProxyError, rescue};
use crate::headers::{GRPC_STATUS, is_grpc, strip_hop_by_hop};
use crate::metrics::ProtocolLabel;
use crate::policy_stack::layer::CallState;
use crate::route::Route;
use crate::state::Shared;
use crate::trace;

/// Which upstream a listener's requests go to.
#[derive(Debug, Clone)]
pub enum Target {
    /// Outbound: the upstream named by the request's authority.
    ByAuthority,
    /// Outbound on a per-upstream local port: always this upstream (`name` or `name.namespace`).
    Fixed(Arc<str>),
    /// Inbound: the local app.
    App,
}

impl Target {
    fn direction(&self) -> &'static str {
        match self {
            Target::ByAuthority | Target::Fixed(_) => "outbound",
            Target::App => "inbound",
        }
    }
}

/// Proxies one request; never fails — errors become responses.
pub async fn handle(
    shared: Arc<Shared>,
    target: Target,
    req: Request<Incoming>,
) -> Response<ObservedBody> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let downstream_version = parts.version;
    let grpc = is_grpc(&parts.headers);
    let protocol = match (grpc, parts.version) {
        (true, _) => ProtocolLabel::Grpc,
        (false, Version::HTTP_2) => ProtocolLabel::Http2,
        (false, _) => ProtocolLabel::Http1,
    };
    let authority = request_authority(&parts);
    strip_hop_by_hop(&mut parts.headers);
    let ids = trace::ensure(&mut parts.headers);

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
        error: None,
        in_flight: shared.in_flight.start(),
    };

    let table = shared.table.load_full();
    let routed = route(&shared, &table, &target, authority);
    let state = CallState::default();
    let result = match routed {
        Err(e) => Err(e),
        Ok((route, authority)) => {
            completion.upstream = Some(route.name.clone());
            completion.metrics = Some(route.metrics.clone());
            let req = Request::from_parts(parts, Body::Incoming(body));
            route.stack.call(req, &authority, &state).await
        }
    };
    completion.attempts = state.attempts();

    let rsp = match result {
        Ok(mut rsp) => {
            strip_hop_by_hop(rsp.headers_mut());
            // The response travels on the caller's connection, in the caller's HTTP version.
            *rsp.version_mut() = downstream_version;
            rsp
        }
        Err(err) => {
            tracing::debug!(error = %err, "request failed");
            completion.error = Some(err.kind());
            rescue(&err, grpc)
        }
    };
    completion.status = rsp.status();
    if grpc {
        completion.grpc_status = rsp.headers().get(GRPC_STATUS).cloned();
    }
    let (parts, body) = rsp.into_parts();
    Response::from_parts(parts, ObservedBody::new(body, completion))
}

/// The route a request takes and the authority it goes out with.
fn route<'t>(
    shared: &Shared,
    table: &'t crate::route::RouteTable,
    target: &Target,
    authority: Option<Authority>,
) -> Result<(&'t Route, Authority), ProxyError> {
    match target {
        Target::ByAuthority => {
            let a = authority.ok_or(ProxyError::NoAuthority)?;
            match table.route(a.as_str()) {
                Some(r) => Ok((r, a)),
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
            Some(r) => Ok((r, authority.unwrap_or_else(|| authority_of_name(name)))),
            None => {
                tracing::warn!(upstream = %name, "the upstream of this local port has no UpstreamPolicy");
                Err(ProxyError::NoRoute {
                    authority: name.to_string(),
                })
            }
        },
        Target::App => match &table.inbound {
            Some(app) => Ok((
                app,
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
