//! The request path of both directions: route the request to an upstream (outbound: by
//! authority or by local port; inbound: the local app), clean its headers, give it an identity,
//! send it within its deadline, and answer errors through [`rescue`](crate::errors::rescue).

use std::sync::Arc;

use http::uri::Authority;
use http::{Request, Response, Version, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::Shared;
use crate::body::Body;
use crate::errors::{ProxyError, rescue};
use crate::headers::{is_grpc, strip_hop_by_hop};
use crate::identity;
use crate::metrics::ProtocolLabel;
use crate::observe::{Completion, ObservedBody};
use crate::policy_stack::{Call, CallState};
use crate::upstream::{TargetAuthority, Upstream};

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
    let request_id = identity::ensure(&mut parts.headers);

    let mut completion = Completion {
        direction: target.direction(),
        upstream: None,
        metrics: None,
        protocol,
        method: parts.method.clone(),
        authority: authority.clone(),
        uri: parts.uri.clone(),
        request_id,
        started,
        attempts: 0,
        status: http::StatusCode::OK,
        grpc_status: None,
        error: None,
        in_flight: shared.in_flight.start(),
    };

    let snapshot = shared.snapshot.load_full();
    let routed: Result<(&Arc<Upstream>, Authority), ProxyError> = match &target {
        Target::ByAuthority => match authority {
            None => Err(ProxyError::NoAuthority),
            Some(a) => match snapshot.route(a.as_str()) {
                Some(u) => Ok((u, a)),
                None => {
                    tracing::warn!(
                        authority = a.as_str(),
                        "no UpstreamPolicy matches authority"
                    );
                    Err(ProxyError::NoRoute {
                        authority: a.as_str().to_string(),
                    })
                }
            },
        },
        Target::Fixed(name) => match snapshot.route(name) {
            Some(u) => {
                let a = authority.unwrap_or_else(|| authority_of_name(name));
                Ok((u, a))
            }
            None => {
                tracing::warn!(upstream = %name, "the upstream of this local port has no UpstreamPolicy");
                Err(ProxyError::NoRoute {
                    authority: name.to_string(),
                })
            }
        },
        Target::App => match &snapshot.inbound {
            Some(app) => Ok((
                app,
                authority.unwrap_or_else(|| authority_of_name("localhost")),
            )),
            None => Err(ProxyError::NoApp {
                service: shared
                    .identity
                    .service
                    .clone()
                    .unwrap_or_else(|| "<unset: --service>".into()),
            }),
        },
    };

    let state = Arc::new(CallState::default());
    let result = match routed {
        Err(e) => Err(e),
        Ok((upstream, authority)) => {
            completion.upstream = Some(upstream.name.clone());
            completion.metrics = Some(upstream.metrics.clone());
            parts.extensions.insert(TargetAuthority(authority));
            parts.extensions.insert(state.clone());
            parts.extensions.insert(snapshot.clone());
            let req = Request::from_parts(parts, Body::Incoming(body));
            upstream.stack.call(req).await
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
        completion.grpc_status = rsp.headers().get(crate::headers::GRPC_STATUS).cloned();
    }
    let (parts, body) = rsp.into_parts();
    Response::from_parts(parts, ObservedBody::new(body, completion))
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
