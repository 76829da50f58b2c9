//! Opening a connection to an upstream endpoint within the upstream's connect timeout: TCP,
//! then TLS when the upstream's policy asks for it (mutual TLS to another sidecar, or TLS
//! origination to an external server), classifying the failure where it happens (refused or
//! unreachable, timed out, or the TLS handshake with the peer's reason).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::wire::Wire;
use crate::errors::ProxyError;

/// How connections to an upstream's endpoints are made.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    pub upstream: Arc<str>,
    pub connect_timeout: Duration,
    /// Connections unused this long are closed (`--upstream-idle-timeout`).
    pub idle_timeout: Duration,
    pub connects_http1: Counter,
    pub connects_http2: Counter,
    /// TLS over the TCP connection, if the policy asks for it.
    pub tls: Option<Arc<UpstreamTls>>,
}

/// `--upstream-idle-timeout`'s default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// TLS towards one upstream: a client configuration per wire protocol (each offers its ALPN
/// only) and the server name sent and verified.
pub struct UpstreamTls {
    /// `mesh` or `simple`, for errors and logs.
    pub mode: &'static str,
    /// `mesh`: the SPIFFE ID the endpoints must present.
    pub identity: Option<Arc<str>>,
    pub server_name: ServerName<'static>,
    pub h2: Arc<ClientConfig>,
    pub http1: Arc<ClientConfig>,
    /// Counts handshakes that succeeded (`mesh`: the outbound mTLS connections metric).
    pub established: Option<Counter>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("mode", &self.mode)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A connection to an endpoint: plain TCP, or TLS over it.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection to `addr` (Nagle off), with TLS if the upstream's policy asks for it; the TLS
/// handshake counts against the connect timeout.
pub async fn connect(
    addr: SocketAddr,
    settings: &ConnectSettings,
    wire: Wire,
) -> Result<Io, ProxyError> {
    let timed_out = || ProxyError::ConnectTimeout {
        upstream: settings.upstream.to_string(),
        endpoint: addr,
        timeout: settings.connect_timeout,
    };
    let deadline = tokio::time::Instant::now() + settings.connect_timeout;
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| ProxyError::Connect {
            upstream: settings.upstream.to_string(),
            endpoint: addr,
            source,
        })?;
    // Small writes (headers, gRPC messages) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let Some(tls) = &settings.tls else {
        return Ok(Io::Tcp(stream));
    };
    let config = match wire {
        Wire::Http2 => tls.h2.clone(),
        Wire::Http1 => tls.http1.clone(),
    };
    let handshake = TlsConnector::from(config).connect(tls.server_name.clone(), stream);
    let stream = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| ProxyError::Tls {
            upstream: settings.upstream.to_string(),
            endpoint: addr,
            mode: tls.mode,
            reason: tls_reason(&e),
        })?;
    if let Some(c) = &tls.established {
        c.inc();
    }
    Ok(Io::Tls(Box::new(stream)))
}

/// The handshake failure as rustls names it ("invalid peer certificate: UnknownIssuer"), not
/// wrapped in I/O error text.
fn tls_reason(e: &io::Error) -> String {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(ToString::to_string)
        .unwrap_or_else(|| e.to_string())
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
