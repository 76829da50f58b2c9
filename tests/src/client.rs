//! Clients that dial one address (the sidecar's) whatever the URI says, so a test writes the
//! upstream's name as the URI's authority — `http://echo/headers` — exactly as an app would.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::body::{Body, BoxError};
use crate::netns::Netns;
use crate::pb::echo_client::EchoClient;

/// A hyper-util client whose every connection goes to one address.
pub type HttpClient = Client<Dial, Body>;

/// The connector behind [`HttpClient`]: ignores the URI and dials its address, from inside a
/// network namespace when it has one.
#[derive(Debug, Clone)]
pub struct Dial {
    pub addr: SocketAddr,
    pub netns: Option<Arc<Netns>>,
}

impl Dial {
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = match &self.netns {
            Some(ns) => ns.connect(self.addr).await?,
            None => TcpStream::connect(self.addr).await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl tower::Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let dial = self.clone();
        Box::pin(async move { Ok(TokioIo::new(dial.connect().await?)) })
    }
}

/// An HTTP/1.1 client to `addr`; `Host` comes from the URI unless the request sets one.
pub fn http1_client(addr: SocketAddr) -> HttpClient {
    Client::builder(TokioExecutor::new()).build(Dial { addr, netns: None })
}

/// An HTTP/2 prior-knowledge (h2c) client to `addr`; `:authority` comes from the URI.
pub fn h2c_client(addr: SocketAddr) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(Dial { addr, netns: None })
}

/// An HTTP/1.1 client that connects to `addr` from inside `netns`, as an app there would.
pub fn http1_client_in(netns: &Arc<Netns>, addr: SocketAddr) -> HttpClient {
    Client::builder(TokioExecutor::new()).build(Dial {
        addr,
        netns: Some(netns.clone()),
    })
}

/// An h2c client that connects to `addr` from inside `netns`.
pub fn h2c_client_in(netns: &Arc<Netns>, addr: SocketAddr) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(Dial {
            addr,
            netns: Some(netns.clone()),
        })
}

/// A gRPC channel that connects to `addr` from inside `netns`; calls carry
/// `:authority: {authority}`.
pub async fn grpc_channel_in(netns: &Arc<Netns>, addr: SocketAddr, authority: &str) -> Channel {
    let origin: Uri = format!("http://{authority}")
        .parse()
        .expect("the authority makes a URI");
    let dial = Dial {
        addr,
        netns: Some(netns.clone()),
    };
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a URI")
        .origin(origin)
        .connect_with_connector(dial)
        .await
        .unwrap_or_else(|e| panic!("gRPC connect to {addr} in {}: {e}", netns.name()))
}

/// An Echo client to `addr` whose calls carry `:authority: echo`.
pub async fn grpc_client(addr: SocketAddr) -> EchoClient<Channel> {
    grpc_client_for(addr, "echo").await
}

/// An Echo client to `addr` whose calls carry `:authority: {authority}`.
pub async fn grpc_client_for(addr: SocketAddr, authority: &str) -> EchoClient<Channel> {
    EchoClient::new(grpc_channel(addr, authority).await)
}

/// A gRPC channel to `addr` whose calls carry `:authority: {authority}`.
pub async fn grpc_channel(addr: SocketAddr, authority: &str) -> Channel {
    let origin: Uri = format!("http://{authority}")
        .parse()
        .expect("the authority makes a URI");
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a URI")
        .origin(origin)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("gRPC connect to {addr}: {e}"))
}

/// A whole response: head, body and trailers.
#[derive(Debug, Clone)]
pub struct Collected {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Collected {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }

    /// A header's value as text, `None` when absent (or not text).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Reads a response to its end.
pub async fn collect(res: Response<Incoming>) -> Result<Collected, hyper::Error> {
    let (head, body) = res.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Collected {
        status: head.status,
        version: head.version,
        headers: head.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Sends `req` and reads the whole response.
pub async fn try_send(client: &HttpClient, req: Request<Body>) -> Result<Collected, BoxError> {
    let res = client.request(req).await?;
    Ok(collect(res).await?)
}

/// Sends `req` and reads the whole response; panics on a transport error.
pub async fn send(client: &HttpClient, req: Request<Body>) -> Collected {
    let what = format!("{} {}", req.method(), req.uri());
    try_send(client, req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

/// `GET uri` with no body.
pub async fn get(client: &HttpClient, uri: &str) -> Collected {
    send(
        client,
        request(Method::GET, uri).body(empty()).expect("request"),
    )
    .await
}

/// A request builder; finish it with `.body(empty())` or `.body(full(...))`.
pub fn request(method: Method, uri: &str) -> http::request::Builder {
    Request::builder().method(method).uri(uri)
}

pub fn empty() -> Body {
    Empty::new().map_err(BoxError::from).boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(BoxError::from)
        .boxed_unsync()
}
