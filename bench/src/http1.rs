//! HTTP/1.1 as the load tool speaks it: a fixed set of keep-alive connections with one request at
//! a time on each (as wrk uses them), and the open loop's `GET`.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::BoxError;
use crate::open_loop::{Call, Outcome};

/// Opens an HTTP/1.1 connection to `addr` (no Nagle delay) and drives it on the runtime.
pub async fn connect<B>(addr: SocketAddr) -> Result<SendRequest<B>, BoxError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `GET path` with `Host: host` on up to `connections` keep-alive connections: a request waits
/// for a free connection (its wait counts in its latency) and a broken connection is replaced.
#[derive(Debug)]
pub struct Http1Get {
    addr: SocketAddr,
    host: HeaderValue,
    path: String,
    free: Semaphore,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
}

impl Http1Get {
    /// Opens every connection before the run, so that connecting is not measured.
    pub async fn new(
        addr: SocketAddr,
        host: &str,
        path: &str,
        connections: usize,
    ) -> Result<Http1Get, BoxError> {
        let mut idle = Vec::with_capacity(connections);
        for _ in 0..connections {
            idle.push(connect(addr).await?);
        }
        Ok(Http1Get {
            addr,
            host: HeaderValue::from_str(host)?,
            path: path.to_string(),
            free: Semaphore::new(connections),
            idle: Mutex::new(idle),
        })
    }

    async fn get(&self) -> Result<StatusCode, BoxError> {
        let _slot = self.free.acquire().await?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut sender = match idle {
            Some(sender) if !sender.is_closed() => sender,
            _ => connect(self.addr).await?,
        };
        sender.ready().await?;
        let req = Request::get(self.path.as_str())
            .header(header::HOST, self.host.clone())
            .body(Empty::new())?;
        let res = sender.send_request(req).await?;
        let status = res.status();
        // The whole body, so that the connection can take the next request.
        res.into_body().collect().await?;
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sender);
        Ok(status)
    }
}

impl Call for Http1Get {
    async fn call(&self) -> Outcome {
        match self.get().await {
            Ok(StatusCode::OK) => Outcome::Ok,
            Ok(status) => Outcome::Failed(format!("HTTP {}", status.as_u16())),
            Err(e) => Outcome::Error(e.to_string()),
        }
    }
}
