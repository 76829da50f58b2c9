//! Loopback servers for the unit tests of the connection, balancing and listening code: a real
//! hyper server (HTTP/1.1 and HTTP/2 prior knowledge on one port) that counts the connections
//! it accepts and the requests it answers, and records each request's authority.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// What a test server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2) of every request, and its version.
    pub authorities: Mutex<Vec<(String, http::Version)>>,
}

/// A running server; it stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// `/status/N` answers N; `/hold` never answers; anything else 200 `ok`.
    pub async fn start() -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    seen.connections.fetch_add(1, Ordering::SeqCst);
                    let seen = seen.clone();
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer(&seen, req).await) }
                    });
                    tokio::spawn(async move {
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        TestServer { addr, seen, task }
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    pub fn authorities(&self) -> Vec<(String, http::Version)> {
        self.seen.authorities.lock().unwrap().clone()
    }
}

async fn answer(seen: &Seen, req: Request<Incoming>) -> Response<Full<Bytes>> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    seen.authorities
        .lock()
        .unwrap()
        .push((authority, req.version()));
    let path = req.uri().path();
    if path == "/hold" {
        std::future::pending::<()>().await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut rsp = Response::new(Full::new(Bytes::from_static(b"ok")));
    *rsp.status_mut() = status;
    rsp
}

/// An address nothing listens on (bound, then released).
pub fn closed_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One GET to `addr` over a new connection, in HTTP/1.1 or HTTP/2 prior knowledge; the answer's
/// status, headers and body.
pub async fn get(
    addr: SocketAddr,
    version: http::Version,
    uri: &str,
) -> (StatusCode, http::HeaderMap, Bytes) {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = TokioIo::new(stream);
    let uri: http::Uri = uri.parse().unwrap();
    let mut req = Request::get(uri.clone())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = if version == http::Version::HTTP_2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        *req.version_mut() = http::Version::HTTP_2;
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        if let Some(a) = uri.authority() {
            req.headers_mut()
                .insert(http::header::HOST, a.as_str().parse().unwrap());
        }
        *req.uri_mut() = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}
