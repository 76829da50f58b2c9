//! One upstream endpoint (`ip:port`) and its connections: an idle list of HTTP/1.1 keep-alive
//! connections and one multiplexed HTTP/2 connection, plus the in-flight count the balancer
//! reads. Connections are set up here, so connect failures are classified where they happen.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::h2_client::{self, H2Body};
use crate::body::{Body, BodyError};
use crate::errors::ProxyError;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when returned.
const MAX_IDLE_H1: usize = 64;

/// The wire protocol of one upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

/// How connections to an upstream's endpoints are made.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    pub upstream: Arc<str>,
    pub connect_timeout: Duration,
    pub connects_http1: prometheus_client::metrics::counter::Counter,
    pub connects_http2: prometheus_client::metrics::counter::Counter,
}

pub struct Endpoint {
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    h1_idle: Mutex<Vec<http1::SendRequest<Body>>>,
    h2: ArcSwapOption<h2::client::SendRequest<Bytes>>,
    h2_connect: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            addr,
            in_flight: AtomicUsize::new(0),
            h1_idle: Mutex::new(Vec::new()),
            h2: ArcSwapOption::empty(),
            h2_connect: tokio::sync::Mutex::new(()),
        })
    }

    /// Requests sent to this endpoint whose response has not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Sends one request; the response body keeps the endpoint busy (and, for HTTP/1.1, the
    /// connection leased) until it ends or is dropped.
    pub async fn send(
        self: &Arc<Self>,
        wire: Wire,
        req: Request<Body>,
        settings: &ConnectSettings,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let lease = Lease::new(self.clone());
        match wire {
            Wire::Http1 => {
                let mut conn = self.h1_checkout(settings).await?;
                let rsp = conn
                    .send_request(req)
                    .await
                    .map_err(|e| self.request_error(settings, e.into()))?;
                Ok(rsp.map(|b| UpstreamBody::new(Inner::H1(b), lease.with_h1(conn))))
            }
            Wire::Http2 => {
                let conn = self.h2_checkout(settings).await?;
                let rsp = h2_client::send(&conn, req).await.map_err(|e| {
                    if e.connection_lost {
                        self.forget_h2(&conn);
                    }
                    self.request_error(settings, e.error.into())
                })?;
                Ok(rsp.map(|b| UpstreamBody::new(Inner::H2(b), lease)))
            }
        }
    }

    fn request_error(&self, settings: &ConnectSettings, source: BodyError) -> ProxyError {
        ProxyError::Reset {
            upstream: settings.upstream.to_string(),
            endpoint: self.addr,
            source,
        }
    }

    async fn connect(&self, settings: &ConnectSettings) -> Result<TokioIo<TcpStream>, ProxyError> {
        let stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ProxyError::ConnectTimeout {
                upstream: settings.upstream.to_string(),
                endpoint: self.addr,
                timeout: settings.connect_timeout,
            })?
            .map_err(|source| ProxyError::Connect {
                upstream: settings.upstream.to_string(),
                endpoint: self.addr,
                source,
            })?;
        // Small writes (headers, gRPC messages) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    fn handshake_error(&self, settings: &ConnectSettings, source: BodyError) -> ProxyError {
        ProxyError::Handshake {
            upstream: settings.upstream.to_string(),
            endpoint: self.addr,
            source,
        }
    }

    async fn h1_checkout(
        &self,
        settings: &ConnectSettings,
    ) -> Result<http1::SendRequest<Body>, ProxyError> {
        loop {
            let idle = self.h1_idle.lock().ok().and_then(|mut idle| idle.pop());
            let Some(mut conn) = idle else { break };
            if conn.is_closed() {
                continue;
            }
            // A connection returned at the end of a response body becomes ready as soon as its
            // task has seen the end of the message; this wait is short.
            if conn.ready().await.is_ok() {
                return Ok(conn);
            }
        }
        // Boxed: connecting is rare, and its state would otherwise sit in every request's.
        Box::pin(self.h1_dial(settings)).await
    }

    async fn h1_dial(
        &self,
        settings: &ConnectSettings,
    ) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = self.connect(settings).await?;
        let (conn, task) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| self.handshake_error(settings, e.into()))?;
        settings.connects_http1.inc();
        let upstream = settings.upstream.clone();
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::debug!(%upstream, endpoint = %addr, error = %e, "HTTP/1.1 connection ended");
            }
        });
        Ok(conn)
    }

    fn h1_checkin(&self, conn: http1::SendRequest<Body>) {
        if conn.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.h1_idle.lock()
            && idle.len() < MAX_IDLE_H1
        {
            idle.push(conn);
        }
    }

    async fn h2_checkout(
        &self,
        settings: &ConnectSettings,
    ) -> Result<Arc<h2::client::SendRequest<Bytes>>, ProxyError> {
        if let Some(conn) = self.h2.load_full() {
            return Ok(conn);
        }
        // Boxed: connecting is rare, and its state would otherwise sit in every request's.
        Box::pin(self.h2_dial(settings)).await
    }

    async fn h2_dial(
        &self,
        settings: &ConnectSettings,
    ) -> Result<Arc<h2::client::SendRequest<Bytes>>, ProxyError> {
        // One caller connects; the others wait for it and share the connection.
        let _connecting = self.h2_connect.lock().await;
        if let Some(conn) = self.h2.load_full() {
            return Ok(conn);
        }
        let io = self.connect(settings).await?;
        let conn = h2_client::handshake(io.into_inner(), settings.upstream.clone(), self.addr)
            .await
            .map_err(|e| self.handshake_error(settings, e.into()))?;
        settings.connects_http2.inc();
        let conn = Arc::new(conn);
        self.h2.store(Some(conn.clone()));
        Ok(conn)
    }

    /// Drops the shared HTTP/2 connection if it is still `conn` (a later one stays).
    fn forget_h2(&self, conn: &Arc<h2::client::SendRequest<Bytes>>) {
        let current = self.h2.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            self.h2.compare_and_swap(&*current, None);
        }
    }
}

/// Keeps an endpoint's in-flight count (and an HTTP/1.1 connection) for one response.
struct Lease {
    endpoint: Arc<Endpoint>,
    h1: Option<http1::SendRequest<Body>>,
}

impl Lease {
    fn new(endpoint: Arc<Endpoint>) -> Lease {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease { endpoint, h1: None }
    }

    fn with_h1(mut self, conn: http1::SendRequest<Body>) -> Lease {
        self.h1 = Some(conn);
        self
    }

    /// The response ended cleanly: the HTTP/1.1 connection may serve another request.
    fn release_clean(&mut self) {
        if let Some(conn) = self.h1.take() {
            self.endpoint.h1_checkin(conn);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body of one upstream connection kind.
enum Inner {
    H1(Incoming),
    H2(H2Body),
}

impl Inner {
    fn is_end_stream(&self) -> bool {
        match self {
            Inner::H1(b) => b.is_end_stream(),
            Inner::H2(b) => b.is_end_stream(),
        }
    }
}

/// A response body streamed from an upstream, holding its endpoint lease until it ends.
pub struct UpstreamBody {
    inner: Inner,
    lease: Option<Lease>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    fn new(inner: Inner, lease: Lease) -> UpstreamBody {
        UpstreamBody {
            inner,
            lease: Some(lease),
        }
    }

    fn finish(&mut self, clean: bool) {
        if let Some(mut lease) = self.lease.take()
            && clean
        {
            lease.release_clean();
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Bodies that were empty from the start (HEAD, 204, 304) are never polled.
        let clean = self.inner.is_end_stream();
        self.finish(clean);
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BodyError::from))),
            Inner::H2(b) => Pin::new(b).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(true),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::H1(b) => b.size_hint(),
            Inner::H2(b) => b.size_hint(),
        }
    }
}
