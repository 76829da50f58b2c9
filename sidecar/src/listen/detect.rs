//! What a captured connection speaks, read from its first bytes: HTTP/2 prior knowledge (the
//! connection preface), TLS (a ClientHello, with its SNI), HTTP/1.x (a request line), or
//! anything else — which is forwarded as opaque TCP. A connection that sends nothing within the
//! detection timeout is opaque too: server-speaks-first protocols (MySQL, SMTP) wait for the
//! server, and must not wait for us. The bytes read are handed back with the verdict, to be
//! replayed ([`Prefixed`]) to whoever serves the connection.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most bytes read before deciding: a request line or a ClientHello longer than this is
/// forwarded as opaque TCP.
const MAX_PEEK: usize = 16 * 1024;

/// What a connection speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// TLS, passed through untouched; the server name the client asked for, if it said.
    Tls {
        sni: Option<String>,
    },
    /// Anything else, or nothing within the timeout.
    Opaque,
}

impl Protocol {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls { .. } => "tls",
            Protocol::Opaque => "tcp",
        }
    }
}

/// Reads from `io` until its protocol is known, at most `timeout` and [`MAX_PEEK`] bytes;
/// the verdict and every byte read.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> std::io::Result<(Protocol, BytesMut)> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            // Silent for too long: whatever it is, it does not speak first.
            Err(_) => return Ok((Protocol::Opaque, buf)),
            Ok(Err(e)) => return Err(e),
            // The peer closed before we could tell: forward what it sent.
            Ok(Ok(0)) => return Ok((classify(&buf, true).unwrap_or(Protocol::Opaque), buf)),
            Ok(Ok(_)) => {}
        }
        if let Some(protocol) = classify(&buf, buf.len() >= MAX_PEEK) {
            return Ok((protocol, buf));
        }
    }
}

/// The protocol `buf` starts with, or `None` when more bytes are needed; `complete` says no
/// more will come (then every undecided start is opaque).
pub fn classify(buf: &[u8], complete: bool) -> Option<Protocol> {
    let decided = classify_prefix(buf);
    match decided {
        None if complete => Some(Protocol::Opaque),
        other => other,
    }
}

fn classify_prefix(buf: &[u8]) -> Option<Protocol> {
    let first = *buf.first()?;
    if first == H2_PREFACE[0] && buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return None;
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    if first == 0x16 {
        return tls(buf);
    }
    http1(buf)
}

/// A TLS handshake record holding a ClientHello (parsed by rustls), with its SNI.
fn tls(buf: &[u8]) -> Option<Protocol> {
    // Record header: type 22 (handshake), version 3.x, length.
    if buf.len() >= 2 && buf[1] != 3 {
        return Some(Protocol::Opaque);
    }
    if buf.len() < 5 {
        return None;
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut input = buf;
    while !input.is_empty() {
        match acceptor.read_tls(&mut input) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(Protocol::Tls {
            sni: accepted.client_hello().server_name().map(str::to_string),
        }),
        Ok(None) => None,
        // Not a ClientHello after all (or one rustls refuses): still TLS-looking bytes that
        // are none of our business; forward them as they are.
        Err(_) => Some(Protocol::Tls { sni: None }),
    }
}

/// An HTTP/1.x request line: `METHOD SP target SP HTTP/1.x CRLF`.
fn http1(buf: &[u8]) -> Option<Protocol> {
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == 0 || method_len > 16 {
        return Some(Protocol::Opaque);
    }
    match buf.get(method_len) {
        None => return None,
        Some(b' ') => {}
        Some(_) => return Some(Protocol::Opaque),
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        // No line end yet: a request line is printable ASCII; anything else is not HTTP.
        return if buf.iter().all(|b| (0x20..0x7f).contains(b)) {
            None
        } else {
            Some(Protocol::Opaque)
        };
    };
    let line = &buf[..end];
    if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
        Some(Protocol::Http1)
    } else {
        Some(Protocol::Opaque)
    }
}

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Prefixed<I> {
    prefix: BytesMut,
    inner: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: BytesMut, inner: I) -> Prefixed<I> {
        Prefixed { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello for `name`, written by rustls's own client.
    fn client_hello(name: &str) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn http2_prior_knowledge_is_its_preface() {
        assert_eq!(classify(&H2_PREFACE[..10], false), None, "more needed");
        assert_eq!(classify(H2_PREFACE, false), Some(Protocol::Http2));
        // A `PRI` request line that is not the preface is HTTP/1.1 (an odd one).
        assert_eq!(
            classify(b"PRI * HTTP/1.1\r\n", false),
            Some(Protocol::Http1)
        );
    }

    #[test]
    fn http1_is_a_request_line() {
        assert_eq!(classify(b"GET", false), None);
        assert_eq!(
            classify(b"GET /a?b HTTP/1.1\r\nHost: x\r\n", false),
            Some(Protocol::Http1)
        );
        assert_eq!(
            classify(b"POST / HTTP/1.0\r\n", false),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"GET /", false), None);
        assert_eq!(classify(b"GET /", true), Some(Protocol::Opaque));
        assert_eq!(classify(b"HELLO world\r\n", false), Some(Protocol::Opaque));
        assert_eq!(
            classify(b"get / HTTP/1.1\r\n", false),
            Some(Protocol::Opaque)
        );
        assert_eq!(classify(b"\x00\x01binary", false), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET /\x00", false), Some(Protocol::Opaque));
    }

    #[test]
    fn tls_is_a_client_hello_with_its_server_name() {
        let hello = client_hello("payments.example.com");
        assert_eq!(
            classify(&hello, false),
            Some(Protocol::Tls {
                sni: Some("payments.example.com".into())
            })
        );
        assert_eq!(
            classify(&hello[..hello.len() / 2], false),
            None,
            "half a hello"
        );
        assert_eq!(classify(&[0x16, 0x01], false), Some(Protocol::Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_opaque_after_the_timeout() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let start = Instant::now();
        let (protocol, bytes) = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!((protocol, bytes.len()), (Protocol::Opaque, 0));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        // A partial line that never ends is opaque too, with its bytes kept.
        use tokio::io::AsyncWriteExt;
        client.write_all(b"GET /").await.unwrap();
        let (protocol, bytes) = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!((protocol, &bytes[..]), (Protocol::Opaque, &b"GET /"[..]));
    }

    #[tokio::test]
    async fn the_bytes_read_are_replayed_first() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (protocol, bytes) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        client.write_all(b"Host: x\r\n\r\n").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        Prefixed::new(bytes, server)
            .read_to_end(&mut all)
            .await
            .unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
}
