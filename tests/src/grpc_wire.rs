//! gRPC by hand over the kit's h2c client, for what tonic's client would get in the way of:
//! tonic enforces `grpc-timeout` on the client side too, so a deadline test that must see the
//! *sidecar's* DEADLINE_EXCEEDED sends the call this way; and tests that check the exact HTTP
//! shape of an answer (trailers-only, HTTP status) read it here.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request};
use prost::Message;

use crate::body::Body;
use crate::client::{Collected, full};

/// A unary gRPC call of `path` (e.g. `/bulwark.test.v1.Echo/Hold`) to `authority`, with extra
/// headers such as `grpc-timeout`; send it with [`crate::client::send`] on an
/// [`crate::client::h2c_client`].
pub fn unary(
    authority: &str,
    path: &str,
    message: &impl Message,
    headers: &[(&str, &str)],
) -> Request<Body> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(unary_body(message)).expect("a valid gRPC request")
}

/// The body of a unary call carrying `message`: one length-prefixed, uncompressed frame.
pub fn unary_body(message: &impl Message) -> Body {
    full(frame(message))
}

/// One gRPC message frame: flag 0 (uncompressed), big-endian length, the encoded message.
pub fn frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut buf = BytesMut::with_capacity(5 + encoded.len());
    buf.put_u8(0);
    buf.put_u32(u32::try_from(encoded.len()).expect("test messages are small"));
    buf.put_slice(&encoded);
    buf.freeze()
}

/// `grpc-status` and `grpc-message` of a response: from its trailers, or from its headers when
/// it is trailers-only. `None` when neither carries a `grpc-status`.
pub fn status(res: &Collected) -> Option<(i32, String)> {
    let from = |map: &HeaderMap| {
        let code = map.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = map
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        Some((code, message))
    };
    res.trailers
        .as_ref()
        .and_then(from)
        .or_else(|| from(&res.headers))
}

/// Whether the answer is trailers-only: `grpc-status` in the headers, no body, no trailers.
pub fn is_trailers_only(res: &Collected) -> bool {
    res.headers.contains_key("grpc-status") && res.body.is_empty() && res.trailers.is_none()
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec).
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_grpc_message() {
        assert_eq!(
            percent_decode("no UpstreamPolicy matches authority %22nowhere%22"),
            "no UpstreamPolicy matches authority \"nowhere\""
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%E2%9C%93 ok"), "✓ ok");
    }
}
