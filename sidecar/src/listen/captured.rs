//! Connections iptables redirected to a listener (`bulwark-init`, `--capture`): where they were
//! going (`SO_ORIGINAL_DST`), what they speak ([`detect`](super::detect)), and what becomes of
//! them. HTTP is served and routed like any request — by the policy its authority names, else
//! by the policy whose endpoints include the original destination, else passed through to it
//! unchanged. TLS and everything else are forwarded as bytes to where they were going: TLS to
//! an endpoint of the policy its SNI names, when one does. Inbound, everything goes to the app
//! at the address it was sent to (the sidecar's own connection is not captured again).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::policy::{MtlsMode, defaults};
use tokio::net::TcpStream;

use super::conn::Conn;
use super::detect::{Prefixed, Protocol, detect};
use super::mtls::{Verdict, inbound_tls};
use super::proxy::Target;
use super::tunnel::{self, TunnelLog};
use crate::balance::p2c::p2c;
use crate::state::Shared;

/// Where a redirected connection was going; `None` when it was not redirected (a connection
/// made to the listener itself, as in the localhost mode).
pub fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let socket = socket2::SockRef::from(stream);
    let original = if local.is_ipv4() {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    let original = original.ok()?.as_socket()?;
    (original != local).then_some(original)
}

/// Serves one captured connection that was going to `original`.
pub async fn serve(
    conn: Conn,
    mut stream: TcpStream,
    original: SocketAddr,
    target: &Target,
    detect_timeout: Duration,
) {
    let inbound = matches!(target, Target::App);
    let direction = if inbound { "inbound" } else { "outbound" };
    let (protocol, first) = match detect(&mut stream, detect_timeout).await {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(%original, error = %e, "captured connection failed before it said anything");
            return;
        }
    };
    conn.shared.metrics.captured(direction, protocol.label());
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let target = if inbound {
                Target::AppAddr(original)
            } else {
                Target::Captured(original)
            };
            conn.serve_http(Prefixed::new(first, stream), target).await;
        }
        Protocol::Tls { sni } if inbound => {
            let mtls = conn.shared.table.load().access.mtls;
            let verdict = inbound_tls(conn.shared.identity.as_deref(), mtls, sni.as_deref());
            match verdict {
                Verdict::Terminate => {
                    let io = Prefixed::new(first, stream);
                    conn.serve_mtls(io, Target::AppAddr(original)).await;
                }
                Verdict::Refuse(reason) => refuse(&conn, original, reason),
                Verdict::PassThrough => {
                    let log = TunnelLog {
                        direction,
                        kind: "tls",
                        upstream: Arc::from(""),
                        destination: original.to_string(),
                        sni,
                    };
                    forward(&conn.shared, stream, &first, original, log).await;
                }
            }
        }
        Protocol::Opaque if inbound && conn.shared.table.load().access.mtls == MtlsMode::Strict => {
            refuse(&conn, original, "plaintext");
        }
        Protocol::Tls { sni } => {
            let (destination, upstream) = match sni.as_deref() {
                Some(name) => by_server_name(&conn.shared, name)
                    .await
                    .unwrap_or((original, Arc::from(""))),
                None => (original, Arc::from("")),
            };
            let log = TunnelLog {
                direction,
                kind: "tls",
                upstream,
                destination: destination.to_string(),
                sni,
            };
            forward(&conn.shared, stream, &first, destination, log).await;
        }
        Protocol::Opaque => {
            let log = TunnelLog {
                direction,
                kind: "tcp",
                upstream: Arc::from(""),
                destination: original.to_string(),
                sni: None,
            };
            forward(&conn.shared, stream, &first, original, log).await;
        }
    }
}

/// A connection to the app refused by strict mutual TLS: closed, logged and counted.
fn refuse(conn: &Conn, original: SocketAddr, reason: &'static str) {
    conn.shared.metrics.mtls_refused(reason);
    tracing::warn!(
        peer = %conn.peer,
        destination = %original,
        reason,
        "inbound connection refused: mutual TLS is strict and this is not mesh TLS for this pod"
    );
}

/// An endpoint of the UpstreamPolicy a TLS server name names, with the policy's name.
async fn by_server_name(shared: &Shared, name: &str) -> Option<(SocketAddr, Arc<str>)> {
    let table = shared.table.load_full();
    let route = table.route(name)?;
    let upstream = route.upstream.clone();
    drop(table);
    let endpoints = upstream
        .endpoints
        .ready(defaults::CONNECT_TIMEOUT)
        .await
        .ok()?;
    let endpoint = p2c(&endpoints, |_| true)?;
    Some((endpoint.addr, upstream.name.clone()))
}

/// Connects to `destination` and forwards the connection to it, `first` (what detection read)
/// first. A destination that cannot be reached closes the connection, logged and counted.
async fn forward(
    shared: &Shared,
    stream: TcpStream,
    first: &[u8],
    destination: SocketAddr,
    log: TunnelLog,
) {
    let metrics = shared.metrics.tunnel(log.direction, log.kind);
    let in_flight = shared.in_flight.start();
    match tunnel::connect(destination, defaults::CONNECT_TIMEOUT).await {
        Ok(up) => tunnel::forward_sockets(stream, up, first, &metrics, log, in_flight).await,
        Err(e) => {
            metrics.opened.inc();
            tracing::info!(
                target: "bulwark::access",
                direction = log.direction,
                upstream = &*log.upstream,
                protocol = log.kind,
                destination = %log.destination,
                sni = log.sni.as_deref().unwrap_or(""),
                bytes_sent = 0u64,
                bytes_received = 0u64,
                duration_ms = 0.0,
                error = %e,
                outcome = "connect-failure",
                "tunnel"
            );
        }
    }
}
