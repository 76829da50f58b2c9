//! The accept loop of the test upstreams: hyper-util's auto builder (HTTP/1.1 and h2c prior
//! knowledge on one port), one task per connection, all stopped when the handle drops; it
//! counts the connections open now.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};

use crate::body::BoxError;

/// A running accept loop. Dropping it aborts the loop, which drops the set of connection tasks
/// and so aborts every connection (and the request futures in them) at once.
#[derive(Debug)]
pub(crate) struct Serving {
    addr: SocketAddr,
    accept: AbortHandle,
    open: Arc<AtomicUsize>,
}

impl Serving {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now (accepted, not yet closed by either side).
    pub(crate) fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Counts one connection open until dropped (with its task, however that ends).
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Serves `service` on every connection `listener` accepts.
pub(crate) fn spawn<S, B>(listener: TcpListener, service: S) -> std::io::Result<Serving>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    spawn_tls(listener, service, None)
}

/// Serves `service` on every connection `listener` accepts, over TLS with `tls` when given
/// (ALPN h2 or http/1.1; a failed handshake ends only that connection).
pub(crate) fn spawn_tls<S, B>(
    listener: TcpListener,
    service: S,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> std::io::Result<Serving>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let addr = listener.local_addr()?;
    let open = Arc::new(AtomicUsize::new(0));
    let counted = open.clone();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _peer)) = accepted else { continue };
                    // Small echo replies must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let service = service.clone();
                    let tls = tls.clone();
                    let open = OpenConnection::new(&counted);
                    connections.spawn(async move {
                        let _open = open;
                        let builder = auto::Builder::new(TokioExecutor::new());
                        // A connection error ends only that connection; the peer sees it.
                        match tls {
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                            Some(config) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                                if let Ok(tls) = acceptor.accept(stream).await {
                                    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                                }
                            }
                        }
                    });
                }
                // Reap finished connections so the set does not grow without bound.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(Serving {
        addr,
        accept: task.abort_handle(),
        open,
    })
}
