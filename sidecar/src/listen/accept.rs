//! Accepting: bind the listeners, accept TCP connections, serve each with hyper (HTTP/1.1 or
//! HTTP/2 prior knowledge, told apart by hyper-util's auto builder; upgrades allowed), and drain
//! them gracefully on shutdown. A connection iptables redirected to a capturing listener is
//! first looked at ([`captured`](super::captured)): its original destination, and whether it
//! speaks HTTP at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::captured;
use super::conn::{Conn, stopped};
use super::proxy::Target;
use crate::state::Shared;

/// Limits applied to every downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Request head size limit (HTTP/1.1 buffer; HTTP/2 header list size).
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// Connections one listener serves at once.
    pub max_connections: usize,
    /// How long a connection may go without a request in progress.
    pub idle_timeout: Duration,
}

/// How much later than the guard's hyper's header-read timer fires.
const HEADER_TIMEOUT_BACKSTOP: Duration = Duration::from_secs(1);

pub fn connection_builder(limits: ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The connection's guard times request heads (and answers 408); hyper's own timer is a
        // backstop for connections the guard stepped aside from.
        .header_read_timeout(limits.header_read_timeout + HEADER_TIMEOUT_BACKSTOP)
        // hyper answers 431 when the head does not fit (its minimum buffer is 8 KiB).
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024)
        // One connection from another sidecar carries a whole pod's calls: when that pod's
        // clients go away with calls in flight, their resets arrive together. hyper's default
        // (20 reset streams not yet accepted) would then close the connection under every
        // other call on it; a higher bound still stops a rapid-reset flood.
        .max_pending_accept_reset_streams(512)
        .keep_alive_interval(Duration::from_secs(30))
        // WebSocket over HTTP/2 (RFC 8441): extended CONNECT with `:protocol`.
        .enable_connect_protocol();
    builder
}

/// One bound listener and where its requests go.
pub struct Listener {
    pub name: &'static str,
    pub tcp: TcpListener,
    pub target: Target,
    /// Serves connections iptables redirected to it, waiting this long for a silent one.
    pub capture: Option<Duration>,
}

impl Listener {
    pub async fn bind(
        name: &'static str,
        addr: SocketAddr,
        target: Target,
    ) -> anyhow::Result<Listener> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({name}): {e}"))?;
        Ok(Listener {
            name,
            tcp,
            target,
            capture: None,
        })
    }

    /// The IPv6 twin of an IPv4 listener, for connections ip6tables redirected: `[::1]` for
    /// `127.0.0.1`, `[::]` (IPv6 only, beside the IPv4 socket) for `0.0.0.0`; `None` for
    /// other addresses, which have no twin.
    pub fn bind_v6_twin(
        name: &'static str,
        v4: SocketAddr,
        target: Target,
    ) -> Option<std::io::Result<Listener>> {
        let ip = match v4.ip() {
            std::net::IpAddr::V4(ip) if ip.is_loopback() => std::net::Ipv6Addr::LOCALHOST,
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv6Addr::UNSPECIFIED,
            _ => return None,
        };
        let addr = SocketAddr::from((ip, v4.port()));
        let bind = || -> std::io::Result<TcpListener> {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
            socket.set_only_v6(true)?;
            socket.set_reuse_address(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            TcpListener::from_std(socket.into())
        };
        Some(bind().map(|tcp| Listener {
            name,
            tcp,
            target,
            capture: None,
        }))
    }

    /// Serves captured connections too (`--capture`).
    pub fn capturing(mut self, detect_timeout: Duration) -> Listener {
        self.capture = Some(detect_timeout);
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// Counts open connections so shutdown can wait for them to drain.
#[derive(Debug, Clone)]
pub struct Connections(Arc<watch::Sender<usize>>);

impl Default for Connections {
    fn default() -> Self {
        Connections(Arc::new(watch::Sender::new(0)))
    }
}

impl Connections {
    fn open(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    fn close(&self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }

    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Waits until every connection closed, or `limit` passed; returns those still open.
    pub async fn drained(&self, limit: Duration) -> usize {
        let mut rx = self.0.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
        self.count()
    }
}

fn target_is_app(target: &Target) -> bool {
    matches!(target, Target::App)
}

/// Whether the connection starts with a TLS handshake record (HTTP never starts with 0x16);
/// waits for its first byte at most [`FIRST_BYTE_WAIT`], then lets HTTP have it.
async fn starts_tls(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(FIRST_BYTE_WAIT, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

/// Whether the client sends anything within `limit`; `Err` says why not.
async fn first_byte_within(
    stream: &tokio::net::TcpStream,
    limit: Duration,
) -> Result<(), &'static str> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(limit, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed by the client"),
        Ok(Err(_)) => Err("read error"),
        Err(_) => Err("nothing sent within the header-read timeout"),
    }
}

/// How long an inbound connection may stay silent before it is served as HTTP (whose own
/// header-read timeout then applies).
const FIRST_BYTE_WAIT: Duration = Duration::from_secs(10);

/// Accepts until `stop` turns true. Each connection then finishes its in-flight requests
/// (HTTP/1.1: closes after the current response; HTTP/2: GOAWAY) and closes.
pub async fn serve(
    listener: Listener,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    connections: Connections,
    mut stop: watch::Receiver<bool>,
) {
    let gauge = shared.metrics.connections(listener.name);
    // Inbound connections may be mesh TLS when the pod has an identity.
    let mesh_tls = shared.identity.is_some();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        // At the limit, new connections wait in the kernel's backlog: said once per time the
        // listener fills up, and counted.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                shared.metrics.connection_limit_reached(listener.name);
                tracing::warn!(
                    listener = listener.name,
                    max = limits.max_connections,
                    "listener holds its most connections (--max-connections): new ones wait until one closes"
                );
                tokio::select! {
                    _ = stopped(&mut stop) => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break, // never closed
                    },
                }
            }
        };
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn::new(
            listener.name,
            peer,
            shared.clone(),
            builder.clone(),
            stop.clone(),
        )
        .timeouts(limits.header_read_timeout, limits.idle_timeout);
        let target = listener.target.clone();
        let capture = listener.capture;
        let listener_name = listener.name;
        let gauge = gauge.clone();
        let connections = connections.clone();
        gauge.inc();
        connections.open();
        tokio::spawn(async move {
            let _slot = slot;
            let original = capture.and_then(|_| captured::original_destination(&stream));
            match (capture, original) {
                (Some(timeout), Some(original)) => {
                    captured::serve(conn, stream, original, &target, timeout).await
                }
                _ if mesh_tls && target_is_app(&target) && starts_tls(&stream).await => {
                    conn.serve_mtls(stream, target).await
                }
                // A client that connects and never sends a byte holds a connection (and a
                // task) for nothing: it gets the header-read timeout to start, as a slow one
                // gets it to finish.
                _ => match first_byte_within(&stream, limits.header_read_timeout).await {
                    Ok(()) => conn.serve_http(stream, target).await,
                    Err(why) => {
                        tracing::debug!(listener = listener_name, %peer, why, "connection closed before its first request");
                    }
                },
            }
            gauge.dec();
            connections.close();
        });
    }
    tracing::info!(listener = listener.name, "stopped accepting");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bulwark_proto::policy::parse_yaml;
    use http::{StatusCode, Version};

    use super::*;
    use crate::route::{LocalService, PolicySet};
    use crate::testing::{TestServer, get};

    /// A sidecar's state routing `echo` to `upstream`, and its outbound and inbound listeners
    /// serving until the returned sender says stop.
    async fn serving(
        upstream: std::net::SocketAddr,
    ) -> (
        SocketAddr,
        SocketAddr,
        watch::Sender<bool>,
        Vec<tokio::task::JoinHandle<()>>,
    ) {
        let local = LocalService {
            namespace: "shop".into(),
            service: None,
            app_port: None,
            inbound_port: None,
            mtls_default: Default::default(),
        };
        let shared = Arc::new(Shared::new(local, "pod-1".into(), None));
        let yaml = format!(
            "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: echo, namespace: shop }}\nspec: {{ endpoints: {{ static: [\"{upstream}\"] }} }}\n"
        );
        shared
            .apply(&PolicySet {
                version: "1".into(),
                source: "test".into(),
                resources: parse_yaml(&yaml).unwrap(),
            })
            .unwrap();
        let limits = ConnLimits {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(5),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(3600),
        };
        let builder = Arc::new(connection_builder(limits));
        let any = "127.0.0.1:0".parse().unwrap();
        let outbound = Listener::bind("outbound", any, Target::ByAuthority)
            .await
            .unwrap();
        let inbound = Listener::bind("inbound", any, Target::App).await.unwrap();
        let (out_addr, in_addr) = (outbound.local_addr(), inbound.local_addr());
        let (stop, stop_rx) = watch::channel(false);
        let connections = Connections::default();
        let tasks = [outbound, inbound]
            .into_iter()
            .map(|l| {
                tokio::spawn(serve(
                    l,
                    shared.clone(),
                    builder.clone(),
                    limits,
                    connections.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        (out_addr, in_addr, stop, tasks)
    }

    #[tokio::test]
    async fn one_listener_serves_http1_and_http2_prior_knowledge() {
        let upstream = TestServer::start().await;
        let (outbound, _, _stop, _tasks) = serving(upstream.addr).await;
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let (status, headers, body) = get(outbound, version, "http://echo.shop/a").await;
            assert_eq!(status, StatusCode::OK, "{version:?}");
            assert_eq!(headers["x-bulwark-upstream"], "echo");
            assert_eq!(body, "ok");
        }
        assert_eq!(upstream.requests(), 2);
    }

    #[tokio::test]
    async fn requests_no_policy_matches_are_answered_503_naming_the_authority() {
        let upstream = TestServer::start().await;
        let (outbound, inbound, _stop, _tasks) = serving(upstream.addr).await;
        let (status, headers, body) = get(outbound, Version::HTTP_11, "http://nowhere:8080/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["x-bulwark-error"], "no-route");
        assert_eq!(
            body,
            "no UpstreamPolicy matches authority \"nowhere:8080\"\n"
        );

        let (status, headers, body) = get(inbound, Version::HTTP_2, "http://orders/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["x-bulwark-error"], "no-app");
        assert_eq!(
            body,
            "no local app port is configured for inbound traffic (set --app-port or spec.app.port of ServicePolicy <unset: --service>)\n"
        );
        assert_eq!(upstream.requests(), 0);
    }

    #[tokio::test]
    async fn stop_ends_accepting() {
        let upstream = TestServer::start().await;
        let (outbound, _, stop, tasks) = serving(upstream.addr).await;
        stop.send_replace(true);
        for task in tasks {
            task.await.unwrap();
        }
        assert!(tokio::net::TcpStream::connect(outbound).await.is_err());
    }
}
