//! Opening a TCP connection to an upstream endpoint within the upstream's connect timeout,
//! classifying the failure where it happens (refused or unreachable vs timed out).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use crate::errors::ProxyError;

/// How connections to an upstream's endpoints are made.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    pub upstream: Arc<str>,
    pub connect_timeout: Duration,
    pub connects_http1: Counter,
    pub connects_http2: Counter,
}

/// A TCP connection to `addr`, with Nagle off.
pub async fn connect(
    addr: SocketAddr,
    settings: &ConnectSettings,
) -> Result<TokioIo<TcpStream>, ProxyError> {
    let stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ProxyError::ConnectTimeout {
            upstream: settings.upstream.to_string(),
            endpoint: addr,
            timeout: settings.connect_timeout,
        })?
        .map_err(|source| ProxyError::Connect {
            upstream: settings.upstream.to_string(),
            endpoint: addr,
            source,
        })?;
    // Small writes (headers, gRPC messages) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}
