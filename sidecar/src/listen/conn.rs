//! Serving one accepted connection with hyper: HTTP/1.1 or HTTP/2, upgrades allowed, every
//! request to [`proxy::handle`](super::proxy::handle), a graceful end (in-flight requests
//! finish) once its listener stops, and the same graceful end once no request has been in
//! progress on it for its idle timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::activity::{Active, Activity};
use super::guard::{FramedTwice, Framing, Guarded};
use super::mtls::{PeerIdentity, terminate};
use super::observe::ObservedBody;
use super::proxy::{self, Target};
use crate::body::BodyError;
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
    /// Closed (gracefully) once no request has been in progress for this long.
    idle_timeout: Option<Duration>,
    /// HTTP/1.1: how long a request head may take once the connection waits for one.
    header_read_timeout: Option<Duration>,
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
            idle_timeout: None,
            header_read_timeout: None,
        }
    }

    /// Closes the connection gracefully once no request has been in progress on it for
    /// `idle` (HTTP/2: GOAWAY; HTTP/1.1: closed between requests); on HTTP/1.1, guards each
    /// request head ([`Guarded`]): a head begun and not finished within `header_read` gets 408,
    /// a connection silent that long is closed, and a head framed both ways is marked.
    pub fn timeouts(mut self, header_read: Duration, idle: Duration) -> Conn {
        self.header_read_timeout = Some(header_read);
        self.idle_timeout = Some(idle);
        self
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
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.shared.clone();
        let identity = self.identity.clone();
        let activity = Arc::new(Activity::new());
        let tracked = activity.clone();
        let framing = Arc::new(Framing::default());
        let marks = framing.clone();
        let requests = AtomicU64::new(0);
        let direction = target.direction();
        let client = self.peer.ip();
        let service = service_fn(move |mut req: Request<Incoming>| {
            let shared = shared.clone();
            let target = target.clone();
            let identity = identity.clone();
            let active = tracked.begin();
            // hyper hands requests over in the order their heads arrived.
            let index = requests.fetch_add(1, Ordering::Relaxed);
            if marks.framed_twice(index) {
                req.extensions_mut().insert(FramedTwice);
            }
            // A request's whole path through the stack is one state machine of a few kilobytes.
            // Boxed, hyper's server moves a pointer into the task it spawns per HTTP/2 stream
            // instead of the state; written into a box allocated first, the state is built in
            // place rather than on the stack and copied (bench/profile: 9,700 bytes of memcpy
            // per request).
            let call = Box::into_pin(Box::write(
                Box::new_uninit(),
                proxy::handle(shared, target, client, identity, req),
            ));
            async move {
                let response = call.await;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                    inner,
                    _active: Some(active),
                }))
            }
        });
        let io = Guarded::new(
            io,
            framing,
            activity.clone(),
            self.header_read_timeout,
            self.shared.metrics.clone(),
            direction,
        );
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let idle = async {
            match self.idle_timeout {
                Some(timeout) => activity.idle_for(timeout).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stopped(&mut self.stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            () = idle => {
                tracing::debug!(listener = self.name, peer = %self.peer, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(listener = self.name, peer = %self.peer, error = %e, "connection closed with an error");
        }
    }
}

/// A response body that keeps its request counted as in progress on the connection.
pub struct TrackedBody {
    inner: ObservedBody,
    _active: Option<Active>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
                self.with_identity(peer).serve_http(tls, target).await;
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
