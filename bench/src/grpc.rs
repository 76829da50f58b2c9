//! gRPC over HTTP/2 with prior knowledge, as the load tool speaks it: the two Echo messages it
//! needs (written out with prost's derive: generating all of `tests/proto/echo.proto` would add
//! a build script for two structs), the 5-byte message frame, and unary calls with a prepared
//! body on a few multiplexed connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::BoxError;
use crate::open_loop::{Call, Outcome};

/// `bulwark.test.v1.EchoRequest`, the fields the load tool sets.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
}

/// `bulwark.test.v1.EchoReply`, the fields the load tool reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
    #[prost(uint64, tag = "3")]
    pub count: u64,
}

pub const UNARY: &str = "/bulwark.test.v1.Echo/Unary";
pub const BIDI: &str = "/bulwark.test.v1.Echo/Bidi";

/// One length-prefixed gRPC message: flag 0 (not compressed), length (4 bytes, big endian), bytes.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message
        .encode(&mut buf)
        .unwrap_or_else(|_| unreachable!("a BytesMut sized for the message has room for it"));
    buf.freeze()
}

/// The `grpc-status` in these headers or trailers, if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What an answer with `grpc-status: code` says of its failure, for the report:
/// `x-bulwark-error` (a proxy's reason) and `grpc-message`, each as ` (name: value)`; empty for
/// a success or when neither is there.
fn failure_detail(code: i32, headers: &HeaderMap, trailers: Option<&HeaderMap>) -> String {
    let mut detail = String::new();
    if code == 0 {
        return detail;
    }
    for name in ["x-bulwark-error", "grpc-message"] {
        let value = trailers
            .and_then(|t| t.get(name))
            .or_else(|| headers.get(name))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if let Some(value) = value {
            detail.push_str(&format!(" ({name}: {value})"));
        }
    }
    detail
}

/// Opens an HTTP/2 connection (prior knowledge, no Nagle delay) to `addr`.
pub async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Unary calls of one prepared request, spread round-robin over `connections` HTTP/2
/// connections; a closed connection is replaced.
#[derive(Debug)]
pub struct GrpcUnary {
    addr: SocketAddr,
    uri: Uri,
    body: Bytes,
    connections: Vec<tokio::sync::Mutex<SendRequest<Full<Bytes>>>>,
    next: AtomicUsize,
}

impl GrpcUnary {
    /// Calls `path` with `:authority: authority` on `addr`; connects before the run.
    pub async fn new(
        addr: SocketAddr,
        authority: &str,
        path: &str,
        request: &EchoRequest,
        connections: usize,
    ) -> Result<GrpcUnary, BoxError> {
        let mut conns = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            conns.push(tokio::sync::Mutex::new(connect(addr).await?));
        }
        Ok(GrpcUnary {
            addr,
            uri: format!("http://{authority}{path}").parse()?,
            body: frame(request),
            connections: conns,
            next: AtomicUsize::new(0),
        })
    }

    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, BoxError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut slot = self.connections[i].lock().await;
        if slot.is_closed() {
            *slot = connect(self.addr).await?;
        }
        Ok(slot.clone())
    }

    /// The call's `grpc-status`, from a trailers-only answer or from the trailers, and what
    /// the answer says of a failure (`grpc-message`, a proxy's `x-bulwark-error`).
    async fn unary(&self) -> Result<Result<(i32, String), String>, BoxError> {
        let mut sender = self.sender().await?;
        sender.ready().await?;
        let req = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(self.body.clone()))?;
        let res = sender.send_request(req).await?;
        if res.status() != StatusCode::OK {
            return Ok(Err(format!("HTTP {}", res.status().as_u16())));
        }
        if let Some(code) = grpc_status(res.headers()) {
            return Ok(Ok((code, failure_detail(code, res.headers(), None))));
        }
        let (parts, body) = res.into_parts();
        let body = body.collect().await?;
        Ok(body
            .trailers()
            .and_then(|t| {
                let code = grpc_status(t)?;
                Some((code, failure_detail(code, &parts.headers, Some(t))))
            })
            .ok_or_else(|| "no grpc-status".to_string()))
    }
}

impl Call for GrpcUnary {
    async fn call(&self) -> Outcome {
        match self.unary().await {
            Ok(Ok((0, _))) => Outcome::Ok,
            Ok(Ok((code, detail))) => Outcome::Failed(format!("grpc-status {code}{detail}")),
            Ok(Err(why)) => Outcome::Failed(why),
            Err(e) => Outcome::Error(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_matches_the_bytes_h2load_sends() {
        // bench/run gives h2load this body: EchoRequest { message: "hi" }, framed.
        let req = EchoRequest {
            message: "hi".into(),
            payload: Bytes::new(),
        };
        assert_eq!(&frame(&req)[..], b"\x00\x00\x00\x00\x04\x0a\x02hi");
    }

    #[test]
    fn reads_grpc_status() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(14));
    }
}
