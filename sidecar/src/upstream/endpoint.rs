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
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::Body;
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
    h2: ArcSwapOption<http2::SendRequest<Body>>,
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
                    .map_err(|e| self.request_error(settings, e))?;
                Ok(rsp.map(|b| UpstreamBody::new(b, lease.with_h1(conn))))
            }
            Wire::Http2 => {
                let mut conn = self.h2_checkout(settings).await?;
                let rsp = conn.send_request(req).await.map_err(|e| {
                    if e.is_closed() || e.is_canceled() {
                        self.h2.store(None);
                    }
                    self.request_error(settings, e)
                })?;
                Ok(rsp.map(|b| UpstreamBody::new(b, lease)))
            }
        }
    }

    fn request_error(&self, settings: &ConnectSettings, source: hyper::Error) -> ProxyError {
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

    fn handshake_error(&self, settings: &ConnectSettings, source: hyper::Error) -> ProxyError {
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
        let io = self.connect(settings).await?;
        let (conn, task) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| self.handshake_error(settings, e))?;
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
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        if let Some(conn) = self.h2.load().as_deref()
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        // One caller connects; the others wait for it and share the connection.
        let _connecting = self.h2_connect.lock().await;
        if let Some(conn) = self.h2.load().as_deref()
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        let io = self.connect(settings).await?;
        let (conn, task) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await
            .map_err(|e| self.handshake_error(settings, e))?;
        settings.connects_http2.inc();
        let upstream = settings.upstream.clone();
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::debug!(%upstream, endpoint = %addr, error = %e, "HTTP/2 connection ended");
            }
        });
        self.h2.store(Some(Arc::new(conn.clone())));
        Ok(conn)
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

/// A response body streamed from an upstream, holding its endpoint lease until it ends.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    fn new(inner: Incoming, lease: Lease) -> UpstreamBody {
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
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
        self.inner.size_hint()
    }
}
