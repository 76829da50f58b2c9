//! Requests that turn their connection into something else: an HTTP/1.1 `Upgrade` (WebSocket,
//! and any other protocol the upstream agrees to), WebSocket over HTTP/2 (extended CONNECT,
//! RFC 8441) — sent to the upstream as an HTTP/1.1 upgrade — and `CONNECT name:port` tunnels to
//! an UpstreamPolicy that allows them. The request itself goes through the policy stack like any
//! other; once the upstream agrees (`101`), both connections are handed over and spliced as a
//! [`tunnel`](super::tunnel).

use std::sync::Arc;

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::tunnel::{self, TunnelLog};
use crate::body::Body;
use crate::errors::ProxyError;
use crate::headers::strip_hop_by_hop;
use crate::state::Shared;

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// How a request wants its connection to change.
#[derive(Debug, Clone)]
pub enum Upgrade {
    /// HTTP/1.1 `Connection: upgrade` with `Upgrade: <protocol>`.
    Http1 { protocol: HeaderValue },
    /// HTTP/2 extended CONNECT with `:protocol` (WebSocket over HTTP/2).
    ExtendedConnect { protocol: String },
    /// `CONNECT name:port`: a TCP tunnel.
    Connect,
}

impl Upgrade {
    /// The upgrade `req` asks for, if any.
    pub fn of<B>(req: &Request<B>) -> Option<Upgrade> {
        if req.method() == Method::CONNECT {
            return Some(match req.extensions().get::<hyper::ext::Protocol>() {
                Some(p) => Upgrade::ExtendedConnect {
                    protocol: p.as_str().to_string(),
                },
                None => Upgrade::Connect,
            });
        }
        if req.version() != Version::HTTP_11 {
            return None;
        }
        let asks = req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        let protocol = req.headers().get(header::UPGRADE)?.clone();
        asks.then_some(Upgrade::Http1 { protocol })
    }

    /// Shapes the request's head, after its hop-by-hop headers were removed, into the
    /// HTTP/1.1 upgrade the upstream is asked for. `Err` for what cannot be sent.
    pub fn prepare(&self, parts: &mut http::request::Parts) -> Result<(), ProxyError> {
        match self {
            Upgrade::Http1 { protocol } => {
                set_upgrade(&mut parts.headers, protocol.clone());
            }
            Upgrade::ExtendedConnect { protocol } => {
                if !protocol.eq_ignore_ascii_case("websocket") {
                    return Err(ProxyError::BadRequest(format!(
                        "extended CONNECT for {protocol:?} cannot be sent to an HTTP/1.1 upstream; only websocket can"
                    )));
                }
                parts.method = Method::GET;
                parts.version = Version::HTTP_11;
                parts.extensions.remove::<hyper::ext::Protocol>();
                set_upgrade(&mut parts.headers, HeaderValue::from_static("websocket"));
                // HTTP/1.1's handshake proves the server speaks WebSocket with a key only it
                // can answer; HTTP/2 has no key (RFC 8441 §5), so this hop makes one.
                let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
                let key = base64::engine::general_purpose::STANDARD.encode(key);
                if let Ok(v) = HeaderValue::from_str(&key) {
                    parts.headers.insert(SEC_WEBSOCKET_KEY, v);
                }
                parts
                    .headers
                    .entry(SEC_WEBSOCKET_VERSION)
                    .or_insert(HeaderValue::from_static("13"));
            }
            Upgrade::Connect => {}
        }
        // An upgrade is an HTTP/1.1 affair, whatever the caller spoke.
        parts.version = Version::HTTP_11;
        Ok(())
    }
}

fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// What a spliced upgrade logs and counts.
pub struct Splice {
    pub shared: Arc<Shared>,
    pub direction: &'static str,
    pub upstream: Arc<str>,
    pub destination: String,
}

/// The upstream's answer to an upgrade request, made the caller's (its hop-by-hop headers are
/// still on it). When the upstream agreed (`101`), both sides' connections are spliced once hyper hands them over, and the caller is
/// told in its own protocol: `101` with the upgrade headers on HTTP/1.1, `200` on HTTP/2.
pub fn finish(
    upgrade: &Upgrade,
    mut rsp: Response<Body>,
    downstream: OnUpgrade,
    splice: Splice,
) -> Response<Body> {
    if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return rsp;
    }
    let upstream = hyper::upgrade::on(&mut rsp);
    let protocol = rsp.headers().get(header::UPGRADE).cloned();
    strip_hop_by_hop(rsp.headers_mut());
    spawn_splice(downstream, upstream, "upgrade", splice);
    match upgrade {
        Upgrade::ExtendedConnect { .. } => {
            let mut ok = Response::new(Body::Empty);
            let headers = ok.headers_mut();
            for (name, value) in rsp.headers() {
                if name != header::CONNECTION
                    && name != header::UPGRADE
                    && name != SEC_WEBSOCKET_ACCEPT
                {
                    headers.append(name.clone(), value.clone());
                }
            }
            ok
        }
        _ => {
            if let Some(p) = protocol {
                set_upgrade(rsp.headers_mut(), p);
            }
            rsp
        }
    }
}

/// Splices the two upgraded connections once both are handed over.
fn spawn_splice(
    downstream: OnUpgrade,
    upstream: impl std::future::Future<Output = Result<hyper::upgrade::Upgraded, hyper::Error>>
    + Send
    + 'static,
    kind: &'static str,
    splice: Splice,
) {
    let in_flight = splice.shared.in_flight.start();
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "an upgraded connection was not handed over");
                return;
            }
        };
        let metrics = splice.shared.metrics.tunnel(splice.direction, kind);
        let log = TunnelLog {
            direction: splice.direction,
            kind,
            upstream: splice.upstream,
            destination: splice.destination,
            sni: None,
        };
        tunnel::forward(
            TokioIo::new(down),
            TokioIo::new(up),
            &[],
            &metrics,
            log,
            in_flight,
        )
        .await;
    });
}

/// A `CONNECT` to an upstream that allows it: a TCP connection to one of its endpoints, spliced
/// with the caller's once the caller is told `200`.
pub async fn connect(
    downstream: OnUpgrade,
    destination: std::net::SocketAddr,
    connect_timeout: std::time::Duration,
    splice: Splice,
) -> Result<Response<Body>, ProxyError> {
    let up = tunnel::connect(destination, connect_timeout)
        .await
        .map_err(|source| ProxyError::Connect {
            upstream: splice.upstream.to_string(),
            endpoint: destination,
            source,
        })?;
    let in_flight = splice.shared.in_flight.start();
    tokio::spawn(async move {
        let down = match downstream.await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "the CONNECT caller's connection was not handed over");
                return;
            }
        };
        let metrics = splice.shared.metrics.tunnel(splice.direction, "connect");
        let log = TunnelLog {
            direction: splice.direction,
            kind: "connect",
            upstream: splice.upstream,
            destination: splice.destination,
            sni: None,
        };
        tunnel::forward(TokioIo::new(down), up, &[], &metrics, log, in_flight).await;
    });
    Ok(Response::new(Body::Empty))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        method: Method,
        version: Version,
        headers: &[(&'static str, &'static str)],
    ) -> Request<()> {
        let mut req = Request::builder()
            .method(method)
            .version(version)
            .uri("/")
            .body(())
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().append(*k, HeaderValue::from_static(v));
        }
        req
    }

    #[test]
    fn upgrades_are_recognised() {
        let ws = req(
            Method::GET,
            Version::HTTP_11,
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket"),
            ],
        );
        assert!(
            matches!(Upgrade::of(&ws), Some(Upgrade::Http1 { protocol }) if protocol == "websocket")
        );
        let plain = req(Method::GET, Version::HTTP_11, &[("upgrade", "websocket")]);
        assert!(
            Upgrade::of(&plain).is_none(),
            "Upgrade without Connection: upgrade"
        );
        let h2 = req(
            Method::GET,
            Version::HTTP_2,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        );
        assert!(Upgrade::of(&h2).is_none());
        assert!(matches!(
            Upgrade::of(&req(Method::CONNECT, Version::HTTP_11, &[])),
            Some(Upgrade::Connect)
        ));
    }

    #[test]
    fn websocket_over_http2_becomes_an_http1_upgrade_with_a_key() {
        let mut parts = req(
            Method::CONNECT,
            Version::HTTP_2,
            &[("sec-websocket-version", "13")],
        )
        .into_parts()
        .0;
        Upgrade::ExtendedConnect {
            protocol: "websocket".into(),
        }
        .prepare(&mut parts)
        .unwrap();
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["connection"], "upgrade");
        assert_eq!(parts.headers["upgrade"], "websocket");
        let key = parts.headers["sec-websocket-key"].to_str().unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .unwrap()
                .len(),
            16
        );

        let mut parts = req(Method::CONNECT, Version::HTTP_2, &[]).into_parts().0;
        let err = Upgrade::ExtendedConnect {
            protocol: "webtransport".into(),
        }
        .prepare(&mut parts)
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid request: extended CONNECT for \"webtransport\" cannot be sent to an HTTP/1.1 upstream; only websocket can"
        );
    }
}
