//! The control plane's listeners: the REST API, gRPC (Discovery, Identity, the operator API)
//! and the webhook all accept here — TLS or, with `--insecure-dev`, plain TCP — and hand each
//! request to an axum router with the [`Peer`] it came from (address and verified client
//! certificate) as a request extension, where authentication reads it.
//!
//! ```text
//!  accept (≤ max connections) ─► TLS handshake (≤ timeout; certs: files, or self-issued by
//!     the identity issuer,
//!     client certificate optional: mesh anchors or operators' CA) ─► Peer
//!     ─► hyper (HTTP/1.1 | HTTP/2) ─► router + Extension(Peer)
//! ```

pub mod certs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bulwark_identity::CertInfo;
use bulwark_identity::verify::{ClientRoot, ControlPlaneClientVerifier};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

/// A verified client certificate.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Whose CA the chain leads to.
    pub root: ClientRoot,
    pub info: CertInfo,
}

/// Where a request came from: set on every request by [`serve`].
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client certificate verified in the handshake, if one was presented.
    pub certificate: Option<Arc<ClientCert>>,
}

impl Peer {
    /// A peer for requests that did not come through [`serve`] (tests of routers).
    pub fn local() -> Peer {
        Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            certificate: None,
        }
    }
}

/// TLS on a listener: the server configuration, and the verifier that tells a mesh workload's
/// certificate from an operator's.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ServerConfig>,
    pub verifier: Option<Arc<ControlPlaneClientVerifier>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// How one listener serves.
#[derive(Debug, Clone)]
pub struct Options {
    /// For the log: `REST API`, `gRPC`, `webhook`.
    pub what: &'static str,
    /// `None`: plain TCP (`--insecure-dev`).
    pub tls: Option<Tls>,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// A client must finish its TLS handshake, and send its request headers, within this.
    pub client_timeout: Duration,
    /// HTTP/2 pings on idle connections (finds sidecars that vanished without closing their
    /// stream): interval and timeout.
    pub keepalive: Option<(Duration, Duration)>,
}

/// Accepts connections on `listener` until `stop` turns true, then lets the open ones finish
/// their requests (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    options: Options,
    app: Router,
    stop: watch::Receiver<bool>,
) {
    let acceptor = options
        .tls
        .as_ref()
        .map(|tls| TlsAcceptor::from(tls.config.clone()));
    let verifier = options.tls.as_ref().and_then(|t| t.verifier.clone());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let what = options.what;
    let stopped = async move {
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let slot = tokio::select! {
            _ = &mut stopped => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let (tcp, addr) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let connections close.
                    tracing::warn!(error = %e, "{what}: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let verifier = verifier.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let options = options.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(options.client_timeout);
            if let Some((interval, timeout)) = options.keepalive {
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(interval)
                    .keep_alive_timeout(timeout);
            }
            let Some(acceptor) = acceptor else {
                let peer = Peer {
                    addr,
                    tls: false,
                    certificate: None,
                };
                let service = TowerToHyperService::new(app.layer(axum::Extension(peer)));
                let conn = builder
                    .serve_connection(TokioIo::new(tcp), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%addr, error = %e, "{what}: connection ended with an error");
                }
                return;
            };
            let tls = match tokio::time::timeout(options.client_timeout, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                // Plain text, a client that does not trust us, a certificate we do not trust:
                // the client was told in the handshake.
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "{what}: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "{what}: TLS handshake timed out");
                    return;
                }
            };
            let certificate = client_certificate(tls.get_ref().1, verifier.as_deref());
            let peer = Peer {
                addr,
                tls: true,
                certificate,
            };
            let service = TowerToHyperService::new(app.layer(axum::Extension(peer)));
            let conn = builder
                .serve_connection(TokioIo::new(tls), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%addr, error = %e, "{what}: connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The client certificate the handshake verified, and whose root it leads to.
fn client_certificate(
    conn: &rustls::ServerConnection,
    verifier: Option<&ControlPlaneClientVerifier>,
) -> Option<Arc<ClientCert>> {
    let verifier = verifier?;
    let chain: &[CertificateDer<'static>] = conn.peer_certificates()?;
    let (end_entity, intermediates) = chain.split_first()?;
    let root = verifier.root_of(end_entity, intermediates)?;
    let info = CertInfo::parse(end_entity).ok()?;
    Some(Arc::new(ClientCert { root, info }))
}
