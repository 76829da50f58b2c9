//! A response body streamed from an upstream connection. It keeps its endpoint busy until it
//! ends, and then hands an HTTP/1.1 connection back to its owner (the endpoint's pool) when the
//! response was read to its end, so the connection can serve another request; a body dropped
//! early or failed closes it instead. The owner is the endpoint itself, behind `Arc<dyn _>`:
//! no allocation per response.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

use super::error::BodyError;
use super::http2::H2Body;

/// Who gets an upstream body's connection back when the body ends.
pub trait ConnectionOwner<C>: Send + Sync {
    /// The response ended: `clean` when it was read to its end; `connection` is the HTTP/1.1
    /// connection it came on (none for HTTP/2 streams, or when not clean).
    fn release(&self, connection: Option<C>, clean: bool);
}

/// The response body of one upstream connection kind.
pub enum UpstreamStream {
    H1(Incoming),
    H2(H2Body),
}

impl UpstreamStream {
    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamStream::H1(b) => b.is_end_stream(),
            UpstreamStream::H2(b) => b.is_end_stream(),
        }
    }
}

/// A response body streamed from an upstream, holding its endpoint until it ends.
pub struct UpstreamBody<C> {
    stream: UpstreamStream,
    owner: Option<Arc<dyn ConnectionOwner<C>>>,
    connection: Option<C>,
}

impl<C> std::fmt::Debug for UpstreamBody<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl<C> UpstreamBody<C> {
    /// `owner.release` is called exactly once: when the body ends, fails or is dropped.
    pub fn new(
        stream: UpstreamStream,
        owner: Option<Arc<dyn ConnectionOwner<C>>>,
        connection: Option<C>,
    ) -> UpstreamBody<C> {
        UpstreamBody {
            stream,
            owner,
            connection,
        }
    }

    fn finish(&mut self, clean: bool) {
        if let Some(owner) = self.owner.take() {
            let connection = self.connection.take().filter(|_| clean);
            owner.release(connection, clean);
        }
    }
}

impl<C> Drop for UpstreamBody<C> {
    fn drop(&mut self) {
        // Bodies that were empty from the start (HEAD, 204, 304) are never polled.
        let clean = self.stream.is_end_stream();
        self.finish(clean);
    }
}

impl<C> http_body::Body for UpstreamBody<C> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.stream {
            UpstreamStream::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BodyError::from))),
            UpstreamStream::H2(b) => Pin::new(b).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(Some(Ok(_))) if this.stream.is_end_stream() => this.finish(true),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.stream {
            UpstreamStream::H1(b) => b.size_hint(),
            UpstreamStream::H2(b) => b.size_hint(),
        }
    }
}

// No field is ever pinned: the body is `Unpin` whatever the connection type is.
impl<C> Unpin for UpstreamBody<C> {}
