//! Serving one accepted connection with hyper: HTTP/1.1 or HTTP/2, upgrades allowed, every
//! request to [`proxy::handle`](super::proxy::handle), and a graceful end (in-flight requests
//! finish) once its listener stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::mtls::{PeerIdentity, terminate};
use super::proxy::{self, Target};
use crate::state::Shared;

/// One accepted connection and what serving it needs.
pub struct Conn {
    pub name: &'static str,
    pub peer: SocketAddr,
    pub shared: Arc<Shared>,
    /// The caller's verified identity, on an mTLS connection.
    pub identity: Option<Arc<PeerIdentity>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
}

impl Conn {
    pub fn new(
        name: &'static str,
        peer: SocketAddr,
        shared: Arc<Shared>,
        builder: Arc<auto::Builder<TokioExecutor>>,
        stop: watch::Receiver<bool>,
    ) -> Conn {
        Conn {
            name,
            peer,
            shared,
            identity: None,
            builder,
            stop,
        }
    }

    /// The connection's caller proved this identity (mTLS).
    pub fn with_identity(mut self, identity: Arc<PeerIdentity>) -> Conn {
        self.identity = Some(identity);
        self
    }

    /// Serves HTTP on `io` until it closes, or gracefully until in-flight requests end once
    /// the listener stops.
    pub async fn serve_http<I>(mut self, io: I, target: Target)
    where
        I: Read + Write + Unpin + Send + 'static,
    {
        let shared = self.shared.clone();
        let identity = self.identity.clone();
        let service = service_fn(move |req| {
            let shared = shared.clone();
            let target = target.clone();
            let identity = identity.clone();
            // A request's whole path through the stack is one state machine of a few kilobytes.
            // Boxed, hyper's server moves a pointer into the task it spawns per HTTP/2 stream
            // instead of the state; written into a box allocated first, the state is built in
            // place rather than on the stack and copied (bench/profile: 9,700 bytes of memcpy
            // per request).
            let call = Box::into_pin(Box::write(
                Box::new_uninit(),
                proxy::handle(shared, target, identity, req),
            ));
            async move { Ok::<_, Infallible>(call.await) }
        });
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stopped(&mut self.stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(listener = self.name, peer = %self.peer, error = %e, "connection closed with an error");
        }
    }
}

impl Conn {
    /// Terminates mesh TLS on `io` with the pod's identity, then serves HTTP on it with the
    /// caller's identity; a refused handshake is logged and counted.
    pub async fn serve_mtls<I>(self, io: I, target: Target)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(identity) = self.shared.identity.clone() else {
            return;
        };
        match terminate(io, &identity, &self.shared.metrics).await {
            Ok((tls, peer)) => {
                self.with_identity(peer)
                    .serve_http(TokioIo::new(tls), target)
                    .await;
            }
            Err((reason, why)) => {
                self.shared.metrics.mtls_refused(reason);
                tracing::warn!(listener = self.name, peer = %self.peer, reason, error = %why, "inbound mTLS refused");
            }
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
