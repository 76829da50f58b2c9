//! Bodies, the bottom of the request path: the one [`Body`] type that flows through the sidecar
//! and every kind it can be — streamed from a peer, from an upstream connection
//! ([`upstream`]), replayable for retries ([`replay`]), holding a bulkhead slot, or made by the
//! sidecar itself. An enum rather than a boxed trait object so the hot path does not allocate
//! for it. Nothing here knows about policies or connections: an upstream body returns its
//! connection through [`upstream::ConnectionOwner`], which the connection pool implements.

mod error;
mod http2;
mod replay;
mod upstream;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

pub use error::BodyError;
pub use http2::H2Body;
pub use replay::ReplayBody;
pub use upstream::{ConnectionOwner, UpstreamBody, UpstreamStream};

/// An HTTP/1.1 upstream connection, as the pool keeps it (returned by an [`UpstreamBody`]
/// that ended cleanly).
pub type H1Connection = hyper::client::conn::http1::SendRequest<Body>;

#[derive(Debug, Default)]
pub enum Body {
    /// Streamed from a client or an upstream, frame by frame (data and trailers).
    Incoming(Incoming),
    /// Streamed from an upstream, releasing its connection when it ends.
    Upstream(UpstreamBody<H1Connection>),
    /// A request body that retries and failover can send again.
    Replay(ReplayBody<Body>),
    /// A body that holds a slot (bulkhead, concurrency limit) until it is dropped.
    Guarded(Box<Guarded>),
    /// A complete body held in memory (taken on first poll).
    Full(Option<Bytes>),
    #[default]
    Empty,
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(bytes))
        }
    }

    /// Keeps `slot` (a bulkhead permit, a concurrency limit's slot) taken until this body is
    /// dropped: a streaming response occupies its upstream as long as it streams.
    pub fn guarded(self, slot: impl Slot + 'static) -> Body {
        Body::Guarded(Box::new(Guarded {
            inner: self,
            _slot: slot,
        }))
    }
}

/// What a body can keep taken until it is dropped, released by its own `Drop`.
pub trait Slot: Send + Sync + std::fmt::Debug {}

impl<T: Send + Sync + std::fmt::Debug> Slot for T {}

/// A body and the slot it keeps taken until it is dropped (one allocation for both, the slot's
/// type erased).
#[derive(Debug)]
pub struct Guarded<S: ?Sized + Slot = dyn Slot> {
    pub inner: Body,
    _slot: S,
}

impl From<Incoming> for Body {
    fn from(b: Incoming) -> Self {
        Body::Incoming(b)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Incoming(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BodyError::from))),
            Body::Upstream(b) => Pin::new(b).poll_frame(cx),
            Body::Replay(b) => Pin::new(b).poll_frame(cx),
            Body::Guarded(g) => Pin::new(&mut g.inner).poll_frame(cx),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(b) => b.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
            Body::Replay(b) => b.is_end_stream(),
            Body::Guarded(g) => g.inner.is_end_stream(),
            Body::Full(b) => b.is_none(),
            Body::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(b) => b.size_hint(),
            Body::Upstream(b) => b.size_hint(),
            Body::Replay(b) => b.size_hint(),
            Body::Guarded(g) => g.inner.size_hint(),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) | Body::Empty => SizeHint::with_exact(0),
        }
    }
}
