//! The HTTP/2 side of upstream connections, on the `h2` crate directly. A request is sent, its
//! body piped and its response awaited in the calling task: hyper's HTTP/2 client spawned two
//! tasks per request (one awaiting the response, one piping the body) and handed every request
//! and response across a channel, about a tenth of a proxied gRPC call's instructions
//! (bench/profile). Only a request body still streaming when the response arrives (client
//! streaming, bidirectional calls) gets a task of its own.
//!
//! Flow control follows hyper's client: 2 MiB stream and 5 MiB connection windows, and a body
//! chunk is read before any send capacity is reserved for it, so an idle body never holds
//! connection window another stream needs.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use super::connect::Io;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::Body as _;

use crate::body::Body;

const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// A PING every interval; no answer within the timeout closes the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/2 connection to an endpoint, shared by every request to it.
#[derive(Debug)]
pub struct Connection {
    pub send: SendRequest<Bytes>,
    /// Set when the task driving the connection ended (the peer closed it, sent GOAWAY and
    /// finished, or stopped answering pings): the pool must not hand it out again.
    closed: Arc<AtomicBool>,
}

impl Connection {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// With nothing in flight to the connection's endpoint, a count that changes whenever requests
/// came and went; `None` while something is in flight.
pub type Quiet = Box<dyn Fn() -> Option<u64> + Send>;

/// Handshakes over `io` and spawns the task that drives the connection (and its keep-alive
/// pings) until every handle is gone, the peer goes away, or the endpoint has had nothing in
/// flight for the idle timeout (closed between one and one and a half timeouts after the last
/// request ended: the watch looks every half timeout).
pub async fn handshake(
    io: Io,
    upstream: std::sync::Arc<str>,
    endpoint: std::net::SocketAddr,
    (idle_timeout, quiet): (Duration, Quiet),
) -> Result<Connection, h2::Error> {
    let (send, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let ping_pong = connection.ping_pong();
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    tokio::spawn(async move {
        let keepalive = async move {
            let Some(mut ping_pong) = ping_pong else {
                return std::future::pending::<&str>().await;
            };
            loop {
                tokio::time::sleep(KEEPALIVE_INTERVAL).await;
                match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque()))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return "keep-alive ping failed",
                    Err(_) => return "keep-alive ping timed out",
                }
            }
        };
        let idle = crate::idle::until_idle(idle_timeout, quiet);
        tokio::select! {
            () = idle => {
                tracing::debug!(%upstream, %endpoint, "closing an idle HTTP/2 connection");
            }
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!(%upstream, %endpoint, error = %e, "HTTP/2 connection ended");
                }
            }
            reason = keepalive => {
                tracing::debug!(%upstream, %endpoint, reason, "closing the HTTP/2 connection");
            }
        }
        ended.store(true, Ordering::Release);
    });
    Ok(Connection { send, closed })
}

/// Waits for a stream slot on `connection`; an error means the connection cannot take the
/// request (it is going away or gone), and the request was not sent.
pub async fn ready(connection: &Connection) -> Result<SendRequest<Bytes>, h2::Error> {
    connection.send.clone().ready().await
}

/// Why a request failed on an HTTP/2 connection.
#[derive(Debug)]
pub struct SendError {
    pub error: h2::Error,
    /// The connection itself failed (or is going away): open a new one.
    pub connection_lost: bool,
}

impl From<h2::Error> for SendError {
    fn from(error: h2::Error) -> Self {
        let connection_lost = error.is_go_away() || error.is_io() || error.reason().is_none();
        SendError {
            error,
            connection_lost,
        }
    }
}

/// Sends one request on a connection that has a stream slot for it ([`ready`]): sends the
/// head, pipes the body while awaiting the response head.
pub async fn send(
    mut sender: SendRequest<Bytes>,
    req: Request<Body>,
) -> Result<Response<RecvStream>, SendError> {
    let (parts, body) = req.into_parts();
    let end_of_stream = body.is_end_stream();
    let (mut response, stream) =
        sender.send_request(Request::from_parts(parts, ()), end_of_stream)?;
    let mut pipe = (!end_of_stream).then(|| Pipe::new(body, stream));
    let head = poll_fn(|cx| {
        if let Some(p) = pipe.as_mut()
            && p.poll(cx).is_ready()
        {
            pipe = None;
        }
        Pin::new(&mut response).poll(cx)
    })
    .await?;
    if let Some(pipe) = pipe {
        // The response began before the request body ended: the body goes on by itself.
        tokio::spawn(pipe.finish());
    }
    Ok(head)
}

/// Copies a request body into its HTTP/2 stream, within the stream's send capacity.
struct Pipe {
    body: Body,
    stream: SendStream<Bytes>,
    /// A chunk read from the body, waiting for send capacity (and whether it ends the body).
    pending: Option<(Bytes, bool)>,
}

impl Pipe {
    fn new(body: Body, stream: SendStream<Bytes>) -> Pipe {
        Pipe {
            body,
            stream,
            pending: None,
        }
    }

    async fn finish(mut self) {
        poll_fn(|cx| self.poll(cx)).await;
    }

    /// Ready when the body is sent, or when sending it failed (the stream is then reset, and
    /// the response, if still awaited, reports why).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.poll_send(cx) {
            Poll::Ready(Err(reason)) => {
                if let Some(reason) = reason {
                    self.stream.send_reset(reason);
                }
                Poll::Ready(())
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// `Err(Some(reason))`: reset the stream with it; `Err(None)`: the stream is already gone.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Option<Reason>>> {
        loop {
            // The peer may reset the stream while the body is idle or waiting for capacity.
            if let Poll::Ready(reset) = self.stream.poll_reset(cx) {
                tracing::debug!(
                    ?reset,
                    "upstream reset the stream while the request body was sent"
                );
                return Poll::Ready(Err(None));
            }
            if let Some((chunk, end)) = self.pending.take() {
                if self.stream.capacity() == 0 {
                    match self.stream.poll_capacity(cx) {
                        Poll::Pending => {
                            self.pending = Some((chunk, end));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {
                            self.pending = Some((chunk, end));
                            continue;
                        }
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Err(None)),
                    }
                }
                // Data beyond the capacity is buffered by h2 and sent as the window opens.
                self.stream
                    .send_data(chunk, end)
                    .map_err(|_| None::<Reason>)?;
                if end {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.stream
                        .send_data(Bytes::new(), true)
                        .map_err(|_| None::<Reason>)?;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "request body failed; resetting the upstream stream");
                    return Poll::Ready(Err(Some(Reason::CANCEL)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        let end = self.body.is_end_stream();
                        if chunk.is_empty() {
                            // Needs no capacity (and would never get any): an empty frame
                            // only matters when it ends the body.
                            if end {
                                self.stream
                                    .send_data(chunk, true)
                                    .map_err(|_| None::<Reason>)?;
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                        self.stream.reserve_capacity(chunk.len());
                        self.pending = Some((chunk, end));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.stream
                                .send_trailers(trailers)
                                .map_err(|_| None::<Reason>)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
            }
        }
    }
}
