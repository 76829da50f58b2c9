//! One upstream endpoint (`ip:port`) and its connections: an idle list of HTTP/1.1 keep-alive
//! connections and one multiplexed HTTP/2 connection, plus the in-flight count the balancer
//! reads. A response body keeps its endpoint busy until it ends and hands an HTTP/1.1
//! connection back here ([`ConnectionOwner`]). Connections unused for the upstream's idle
//! timeout are closed (between one and one and a half timeouts; no clock is read on a
//! request's path): idle HTTP/1.1 ones by a sweeper task that runs while any are kept and
//! counts sweeps of half a timeout, the HTTP/2 one by its own task once the endpoint has had
//! nothing in flight that long ([`crate::idle`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, Response};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::connect::{ConnectSettings, DEFAULT_IDLE_TIMEOUT, connect};
use super::http2;
use super::wire::Wire;
use crate::body::{
    Body, BodyError, ConnectionOwner, H1Connection, H2Body, UpstreamBody, UpstreamStream,
};
use crate::errors::ProxyError;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when returned.
const MAX_IDLE_H1: usize = 64;

pub struct Endpoint {
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    /// How often `in_flight` fell to zero: the HTTP/2 idle watch samples it (no clock read on
    /// a request's path).
    quieted: AtomicU64,
    /// The upstream's idle timeout (milliseconds), as its last request's settings say.
    idle_timeout_ms: AtomicU64,
    h1_idle: Mutex<IdleH1>,
    h2: ArcSwapOption<http2::Connection>,
    h2_connect: tokio::sync::Mutex<()>,
    /// Itself, for the tasks that close idle connections.
    me: Weak<Endpoint>,
}

/// Idle HTTP/1.1 connections, oldest first, each with the sweep it became idle in.
#[derive(Default)]
struct IdleH1 {
    connections: Vec<(H1Connection, u64)>,
    /// Sweeps so far: one every half idle timeout while connections are kept.
    sweep: u64,
    /// A sweeper task is running.
    sweeping: bool,
}

/// Idle since sweep `since` and now at sweep `now`: through three sweeps of half a timeout,
/// at least one timeout (it became idle somewhere in the first).
fn expired(now: u64, since: u64) -> bool {
    now >= since + 3
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
        Arc::new_cyclic(|me| Endpoint {
            addr,
            in_flight: AtomicUsize::new(0),
            quieted: AtomicU64::new(0),
            idle_timeout_ms: AtomicU64::new(millis(DEFAULT_IDLE_TIMEOUT)),
            h1_idle: Mutex::new(IdleH1::default()),
            h2: ArcSwapOption::empty(),
            h2_connect: tokio::sync::Mutex::new(()),
            me: me.clone(),
        })
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    /// With nothing in flight, how often that has been so (it changes when requests came and
    /// went); `None` while something is in flight.
    fn quiet(&self) -> Option<u64> {
        if self.in_flight() > 0 {
            return None;
        }
        Some(self.quieted.load(Ordering::Relaxed))
    }

    /// One request in flight ended.
    fn done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.quieted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests sent to this endpoint whose response has not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the lease is dropped or handed to a response body.
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease {
            endpoint: Some(self.clone()),
        }
    }

    /// Sends one request; the response body keeps the endpoint busy (and, for HTTP/1.1, the
    /// connection leased) until it ends or is dropped.
    pub async fn send(
        self: &Arc<Self>,
        wire: Wire,
        req: Request<Body>,
        settings: &ConnectSettings,
    ) -> Result<Response<UpstreamBody<H1Connection>>, ProxyError> {
        let lease = self.lease();
        let timeout = millis(settings.idle_timeout);
        if self.idle_timeout_ms.load(Ordering::Relaxed) != timeout {
            self.idle_timeout_ms.store(timeout, Ordering::Relaxed);
        }
        match wire {
            Wire::Http1 => {
                let mut conn = self.h1_checkout(settings).await?;
                let rsp = conn
                    .send_request(req)
                    .await
                    .map_err(|e| self.request_error(settings, e.into()))?;
                // A connection that switched protocols belongs to the upgrade now.
                let reusable =
                    (rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS).then_some(conn);
                Ok(rsp.map(|b| lease.into_body(UpstreamStream::H1(b), reusable)))
            }
            Wire::Http2 => {
                let (conn, sender) = self.h2_ready(settings).await?;
                let rsp = http2::send(sender, req).await.map_err(|e| {
                    if e.connection_lost {
                        self.forget_h2(&conn);
                    }
                    self.request_error(settings, e.error.into())
                })?;
                Ok(rsp.map(|b| lease.into_body(UpstreamStream::H2(H2Body::new(b)), None)))
            }
        }
    }

    fn request_error(&self, settings: &ConnectSettings, source: BodyError) -> ProxyError {
        if let Some(why) = callers_body_error(source.as_ref()) {
            return ProxyError::MalformedBody(why);
        }
        ProxyError::Reset {
            upstream: settings.upstream.to_string(),
            endpoint: self.addr,
            source,
        }
    }

    fn handshake_error(&self, settings: &ConnectSettings, source: BodyError) -> ProxyError {
        ProxyError::Handshake {
            upstream: settings.upstream.to_string(),
            endpoint: self.addr,
            source,
        }
    }

    async fn h1_checkout(&self, settings: &ConnectSettings) -> Result<H1Connection, ProxyError> {
        loop {
            let idle = self.h1_idle.lock().ok().and_then(|mut idle| {
                let (conn, since) = idle.connections.pop()?;
                if expired(idle.sweep, since) {
                    // It and every older one are past the idle timeout: closed.
                    idle.connections.clear();
                    return None;
                }
                Some(conn)
            });
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

    async fn h1_dial(&self, settings: &ConnectSettings) -> Result<H1Connection, ProxyError> {
        let io = connect(self.addr, settings, Wire::Http1).await?;
        let (conn, task) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.handshake_error(settings, e.into()))?;
        settings.connects_http1.inc();
        let upstream = settings.upstream.clone();
        let addr = self.addr;
        tokio::spawn(async move {
            // With upgrades: a `101` hands the connection to whoever asked for the upgrade.
            if let Err(e) = task.with_upgrades().await {
                tracing::debug!(%upstream, endpoint = %addr, error = %e, "HTTP/1.1 connection ended");
            }
        });
        Ok(conn)
    }

    fn h1_checkin(&self, conn: H1Connection) {
        if conn.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.h1_idle.lock()
            && idle.connections.len() < MAX_IDLE_H1
        {
            let sweep = idle.sweep;
            idle.connections.push((conn, sweep));
            if !idle.sweeping {
                idle.sweeping = true;
                tokio::spawn(sweep_idle_h1(self.me.clone()));
            }
        }
    }

    /// The shared HTTP/2 connection with a stream slot for one request. A pooled connection
    /// that ended, or cannot take a stream (it is going away), is dropped and a new one is
    /// dialled once: the request was not sent, so nothing is repeated.
    async fn h2_ready(
        &self,
        settings: &ConnectSettings,
    ) -> Result<(Arc<http2::Connection>, h2::client::SendRequest<Bytes>), ProxyError> {
        let mut redialled = false;
        loop {
            let conn = self.h2_checkout(settings).await?;
            match http2::ready(&conn).await {
                Ok(sender) => return Ok((conn, sender)),
                Err(e) => {
                    self.forget_h2(&conn);
                    if redialled {
                        return Err(self.request_error(settings, e.into()));
                    }
                    tracing::debug!(upstream = %settings.upstream, endpoint = %self.addr, error = %e, "HTTP/2 connection cannot take a stream; dialling a new one");
                    redialled = true;
                }
            }
        }
    }

    async fn h2_checkout(
        &self,
        settings: &ConnectSettings,
    ) -> Result<Arc<http2::Connection>, ProxyError> {
        if let Some(conn) = self.h2.load_full() {
            if !conn.is_closed() {
                return Ok(conn);
            }
            self.forget_h2(&conn);
        }
        // Boxed: connecting is rare, and its state would otherwise sit in every request's.
        Box::pin(self.h2_dial(settings)).await
    }

    async fn h2_dial(
        &self,
        settings: &ConnectSettings,
    ) -> Result<Arc<http2::Connection>, ProxyError> {
        // One caller connects; the others wait for it and share the connection.
        let _connecting = self.h2_connect.lock().await;
        if let Some(conn) = self.h2.load_full()
            && !conn.is_closed()
        {
            return Ok(conn);
        }
        let io = connect(self.addr, settings, Wire::Http2).await?;
        let me = self.me.clone();
        // Gone from the endpoint set: quiet for ever.
        let idle = move || me.upgrade().map_or(Some(u64::MAX), |e| e.quiet());
        let conn = http2::handshake(
            io,
            settings.upstream.clone(),
            self.addr,
            (settings.idle_timeout, Box::new(idle)),
        )
        .await
        .map_err(|e| self.handshake_error(settings, e.into()))?;
        settings.connects_http2.inc();
        let conn = Arc::new(conn);
        self.h2.store(Some(conn.clone()));
        Ok(conn)
    }

    /// Drops the shared HTTP/2 connection if it is still `conn` (a later one stays).
    fn forget_h2(&self, conn: &Arc<http2::Connection>) {
        let current = self.h2.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            self.h2.compare_and_swap(&*current, None);
        }
    }
}

/// One request counted in flight on its endpoint: given back when dropped before a response
/// came, or handed to the response body, which gives it back when it ends.
#[derive(Debug)]
pub struct Lease {
    endpoint: Option<Arc<Endpoint>>,
}

impl Lease {
    /// The response came: its body holds the endpoint (and `connection`) from here on.
    fn into_body(
        mut self,
        stream: UpstreamStream,
        connection: Option<H1Connection>,
    ) -> UpstreamBody<H1Connection> {
        let owner = self
            .endpoint
            .take()
            .map(|e| e as Arc<dyn ConnectionOwner<H1Connection>>);
        UpstreamBody::new(stream, owner, connection)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(e) = self.endpoint.take() {
            e.done();
        }
    }
}

impl ConnectionOwner<H1Connection> for Endpoint {
    fn release(&self, connection: Option<H1Connection>, clean: bool) {
        self.done();
        if let (Some(conn), true) = (connection, clean) {
            self.h1_checkin(conn);
        }
    }
}

/// Closes the endpoint's idle HTTP/1.1 connections as each passes the idle timeout; ends when
/// none is left (the next one kept starts another) or the endpoint is gone.
async fn sweep_idle_h1(endpoint: Weak<Endpoint>) {
    loop {
        let step = {
            let Some(endpoint) = endpoint.upgrade() else {
                return;
            };
            endpoint.idle_timeout() / 2
        };
        tokio::time::sleep(step.max(Duration::from_millis(5))).await;
        let Some(endpoint) = endpoint.upgrade() else {
            return;
        };
        let Ok(mut idle) = endpoint.h1_idle.lock() else {
            return;
        };
        idle.sweep += 1;
        let sweep = idle.sweep;
        idle.connections
            .retain(|(conn, since)| !conn.is_closed() && !expired(sweep, *since));
        if idle.connections.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When sending failed because the caller's own request body could not be read (hyper's
/// client reports its body stream's error, itself hyper's error reading the caller — a chunk
/// size that overflows, a body cut short): the innermost reason. The caller sent it wrong; the
/// upstream did nothing.
fn callers_body_error(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let outer = error.downcast_ref::<hyper::Error>()?;
    if !outer.is_user() {
        return None;
    }
    let body = std::error::Error::source(outer)?.downcast_ref::<hyper::Error>()?;
    let mut innermost: &(dyn std::error::Error + 'static) = body;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    Some(innermost.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;

    use super::*;
    use crate::testing::{TestServer, closed_addr};

    fn settings() -> ConnectSettings {
        ConnectSettings {
            upstream: Arc::from("echo"),
            connect_timeout: Duration::from_secs(1),
            connects_http1: Counter::default(),
            connects_http2: Counter::default(),
            tls: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    fn get(version: http::Version) -> Request<Body> {
        let mut req = Request::get("http://echo/").body(Body::Empty).unwrap();
        *req.version_mut() = version;
        if version == http::Version::HTTP_11 {
            *req.uri_mut() = "/".parse().unwrap();
            req.headers_mut()
                .insert(http::header::HOST, "echo".parse().unwrap());
        }
        req
    }

    #[tokio::test]
    async fn http1_connections_are_reused_once_a_response_is_read_to_its_end() {
        let server = TestServer::start().await;
        let endpoint = Endpoint::new(server.addr);
        let s = settings();
        for _ in 0..3 {
            let rsp = endpoint
                .send(Wire::Http1, get(http::Version::HTTP_11), &s)
                .await
                .unwrap();
            assert_eq!(endpoint.in_flight(), 1, "the body holds the endpoint");
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
            assert_eq!(endpoint.in_flight(), 0);
        }
        assert_eq!(server.requests(), 3);
        assert_eq!(server.connections(), 1);
        assert_eq!(s.connects_http1.get(), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_does_not_return_its_connection() {
        let server = TestServer::start().await;
        let endpoint = Endpoint::new(server.addr);
        let s = settings();
        let rsp = endpoint
            .send(Wire::Http1, get(http::Version::HTTP_11), &s)
            .await
            .unwrap();
        drop(rsp);
        assert_eq!(endpoint.in_flight(), 0);
        let rsp = endpoint
            .send(Wire::Http1, get(http::Version::HTTP_11), &s)
            .await
            .unwrap();
        rsp.into_body().collect().await.unwrap();
        assert_eq!(
            server.connections(),
            2,
            "a half-read connection is not reused"
        );
    }

    #[tokio::test]
    async fn http2_requests_share_one_connection() {
        let server = TestServer::start().await;
        let endpoint = Endpoint::new(server.addr);
        let s = settings();
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let (endpoint, s) = (endpoint.clone(), s.clone());
                tokio::spawn(async move {
                    let rsp = endpoint
                        .send(Wire::Http2, get(http::Version::HTTP_2), &s)
                        .await
                        .unwrap();
                    rsp.into_body().collect().await.unwrap().to_bytes()
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), "ok");
        }
        assert_eq!(server.requests(), 5);
        assert_eq!(server.connections(), 1);
        assert_eq!(s.connects_http2.get(), 1);
        assert_eq!(endpoint.in_flight(), 0);
    }

    /// An HTTP/2 server that answers one request per connection, then sends GOAWAY and closes
    /// it (as a server does that saw too many resets); the connections it accepted.
    async fn one_request_per_connection() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    if let Some(Ok((_, mut respond))) = conn.accept().await {
                        let rsp = http::Response::new(());
                        let mut body = respond.send_response(rsp, false).unwrap();
                        body.send_data(Bytes::from_static(b"ok"), true).unwrap();
                    }
                    conn.graceful_shutdown();
                    while conn.accept().await.is_some() {}
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_pooled_http2_connection_the_server_closed_is_replaced_not_used() {
        let (addr, accepted) = one_request_per_connection().await;
        let endpoint = Endpoint::new(addr);
        let s = settings();
        for round in 1..=3 {
            let rsp = endpoint
                .send(Wire::Http2, get(http::Version::HTTP_2), &s)
                .await
                .unwrap_or_else(|e| panic!("request {round}: {e}"));
            assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "ok");
            // Until the client has seen the connection end, whichever comes first: the pool
            // notices it ended, or the stream slot is refused — either way a new connection.
            let closed = async {
                while endpoint.h2.load().as_ref().is_some_and(|c| !c.is_closed()) {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(5), closed)
                .await
                .expect("the client sees the server close the connection");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(s.connects_http2.get(), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure_naming_the_endpoint() {
        let addr = closed_addr();
        let endpoint = Endpoint::new(addr);
        let err = endpoint
            .send(Wire::Http1, get(http::Version::HTTP_11), &settings())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "connect-failure");
        assert!(
            err.to_string()
                .starts_with(&format!("upstream echo: connect to {addr} failed: ")),
            "{err}"
        );
        assert_eq!(endpoint.in_flight(), 0, "a failed attempt holds nothing");
    }
}
