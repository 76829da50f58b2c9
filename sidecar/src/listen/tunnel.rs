//! Byte streams forwarded as they are: captured TCP that is not HTTP, TLS passed through, HTTP
//! upgrades (WebSocket) and CONNECT tunnels. Both directions are copied until each side has
//! finished; the tunnel counts its bytes, holds the sidecar's drain until it ends, and writes
//! one access log line when it does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::TunnelMetrics;
use crate::state::InFlightGuard;

/// What an access log line says about a tunnel.
#[derive(Debug)]
pub struct TunnelLog {
    pub direction: &'static str,
    /// `tcp`, `tls`, `upgrade` or `connect`.
    pub kind: &'static str,
    /// The UpstreamPolicy it went to, or empty for a passthrough.
    pub upstream: Arc<str>,
    pub destination: String,
    /// TLS: the server name the client asked for.
    pub sni: Option<String>,
}

/// Opens a TCP connection to `destination` within `timeout`.
pub async fn connect(destination: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(destination))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {destination} timed out after {timeout:?}"),
            )
        })??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copies `down` ↔ `up` until both directions ended (or one failed), then logs and counts.
/// `first` is written to `up` before anything else (bytes read while detecting).
pub async fn forward<D, U>(
    mut down: D,
    mut up: U,
    first: &[u8],
    metrics: &TunnelMetrics,
    log: TunnelLog,
    _in_flight: InFlightGuard,
) where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    metrics.opened.inc();
    metrics.open.inc();
    let mut sent = first.len() as u64;
    let result = async {
        if !first.is_empty() {
            up.write_all(first).await?;
        }
        let (to_up, to_down) = tokio::io::copy_bidirectional(&mut down, &mut up).await?;
        sent += to_up;
        Ok::<u64, std::io::Error>(to_down)
    }
    .await;
    metrics.open.dec();
    let (received, error) = match result {
        Ok(received) => (received, None),
        Err(e) => (0, Some(e.to_string())),
    };
    metrics.sent.inc_by(sent);
    metrics.received.inc_by(received);
    tracing::info!(
        target: "bulwark::access",
        direction = log.direction,
        upstream = &*log.upstream,
        protocol = log.kind,
        destination = %log.destination,
        sni = log.sni.as_deref().unwrap_or(""),
        bytes_sent = sent,
        bytes_received = received,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        error = error.as_deref().unwrap_or(""),
        outcome = if error.is_some() { "error" } else { "complete" },
        "tunnel"
    );
}
