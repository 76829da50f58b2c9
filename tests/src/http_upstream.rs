//! The HTTP test upstream: a hyper server (HTTP/1.1 and h2c on one port) with the routes the
//! end-to-end tests need, counting what it sees.
//!
//! | route | answer |
//! | --- | --- |
//! | `/echo` | the request body, streamed back as it arrives, with the request's `content-type` |
//! | `/sink` | reads the body; JSON `{"bytes": N, "pattern_ok": bool}` ([`crate::pattern`]) |
//! | `/status/{code}` | that status, body `status {code}` |
//! | `/bytes/{n}` | `n` pattern bytes in 64 KiB chunks (`?chunked` hides the length); HEAD: headers only |
//! | `/headers` | JSON `{"method", "version", "uri", "headers": {name: [values]}}` of the request |
//! | `/hold` | never answers; counts a cancellation when the request is dropped |
//! | `/slow/{ms}` | 200 `slept {ms}ms` after that long |
//! | `/gate` | 200 `gate opened` once the test calls [`HttpUpstream::open_gate`] |
//! | `/trailers` | body `payload` then the trailer `x-checksum: abc` |
//! | `/no-content` | 204 · `/not-modified`: 304 |
//! | anything else | 404 `no route {path}` |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::counters::{CancelGuard, FailurePlan, Record};
use crate::pattern::{PatternBody, PatternCheck};
use crate::serve::{self, Serving};
use crate::{Body, BoxError};

/// A running HTTP test upstream; stops (and drops every open request) when dropped.
#[derive(Debug)]
pub struct HttpUpstream {
    record: Arc<Record>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    serving: Serving,
}

/// Where and how an [`HttpUpstream`] runs.
#[derive(Debug, Clone)]
pub struct HttpUpstreamBuilder {
    bind: SocketAddr,
    failures: FailurePlan,
}

impl HttpUpstream {
    /// An upstream on a free port of 127.0.0.1 that never fails on purpose.
    pub async fn start() -> Self {
        HttpUpstream::builder()
            .start()
            .await
            .expect("the HTTP test upstream binds 127.0.0.1:0")
    }

    pub fn builder() -> HttpUpstreamBuilder {
        HttpUpstreamBuilder {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            failures: FailurePlan::default(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.serving.addr()
    }

    /// Requests received, injected failures included.
    pub fn requests(&self) -> u64 {
        self.record.requests()
    }

    /// Requests received for exactly this path (no query).
    pub fn requests_to(&self, path: &str) -> u64 {
        self.record.requests_to(path)
    }

    /// Requests dropped before they were answered (`/hold`, an abandoned `/slow/...`).
    pub fn cancelled(&self) -> u64 {
        self.record.cancelled()
    }

    /// The headers of the last request received.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.record.last_headers()
    }

    /// Lets every `/gate` request (waiting or future) answer.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

impl HttpUpstreamBuilder {
    /// Listen here instead of a free port of 127.0.0.1.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Answer the first `n` requests with 503.
    pub fn fail_first(mut self, n: u64) -> Self {
        self.failures.first = n;
        self
    }

    /// Answer this share (0–100) of the requests after those with 503, evenly spread.
    pub fn fail_percent(mut self, percent: u32) -> Self {
        self.failures.percent = percent;
        self
    }

    pub async fn start(self) -> std::io::Result<HttpUpstream> {
        let listener = TcpListener::bind(self.bind).await?;
        let record = Record::new(self.failures);
        let handler_record = record.clone();
        let gate = Arc::new(tokio::sync::watch::Sender::new(false));
        let handler_gate = gate.clone();
        let service = hyper::service::service_fn(move |req| {
            let record = handler_record.clone();
            let gate = handler_gate.subscribe();
            async move { Ok::<_, Infallible>(handle(record, gate, req).await) }
        });
        let serving = serve::spawn(listener, service)?;
        Ok(HttpUpstream {
            record,
            gate,
            serving,
        })
    }
}

async fn handle(
    record: Arc<Record>,
    mut gate: tokio::sync::watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if record.observe(&path, req.headers()) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "injected failure\n");
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["echo"] => echo(req),
        ["sink"] => sink(req).await,
        ["status", code] => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => text(status, format!("status {code}")),
            None => text(StatusCode::BAD_REQUEST, format!("bad status {code:?}\n")),
        },
        ["bytes", n] => match n.parse::<u64>() {
            Ok(n) => bytes(&req, n),
            Err(_) => text(StatusCode::BAD_REQUEST, format!("bad length {n:?}\n")),
        },
        ["headers"] => headers(&req),
        ["hold"] => {
            let _guard = CancelGuard::new(&record);
            std::future::pending::<()>().await;
            unreachable!("a pending future never completes")
        }
        ["slow", ms] => match ms.parse::<u64>() {
            Ok(ms) => {
                let guard = CancelGuard::new(&record);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                guard.disarm();
                text(StatusCode::OK, format!("slept {ms}ms"))
            }
            Err(_) => text(StatusCode::BAD_REQUEST, format!("bad delay {ms:?}\n")),
        },
        ["gate"] => {
            let guard = CancelGuard::new(&record);
            let _ = gate.wait_for(|open| *open).await;
            guard.disarm();
            text(StatusCode::OK, "gate opened")
        }
        ["trailers"] => trailers(),
        ["no-content"] => empty(StatusCode::NO_CONTENT),
        ["not-modified"] => {
            let mut res = empty(StatusCode::NOT_MODIFIED);
            res.headers_mut()
                .insert(header::ETAG, HeaderValue::from_static("\"v1\""));
            res
        }
        _ => text(StatusCode::NOT_FOUND, format!("no route {path}\n")),
    }
}

fn echo(req: Request<Incoming>) -> Response<Body> {
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let body = req.into_body().map_err(BoxError::from).boxed_unsync();
    let mut res = Response::new(body);
    if let Some(ct) = content_type {
        res.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    res
}

async fn sink(req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut check = PatternCheck::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    check.feed(data);
                }
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("body error: {e}\n")),
        }
    }
    json(
        StatusCode::OK,
        &serde_json::json!({
            "bytes": check.len(),
            "pattern_ok": check.first_mismatch().is_none(),
        }),
    )
}

fn bytes(req: &Request<Incoming>, n: u64) -> Response<Body> {
    let chunked = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "chunked"));
    if req.method() == Method::HEAD {
        let mut res = empty(StatusCode::OK);
        if !chunked {
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        return res;
    }
    let body = if chunked {
        PatternBody::chunked(n)
    } else {
        PatternBody::sized(n)
    };
    let mut res = Response::new(body.boxed());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    res
}

fn headers(req: &Request<Incoming>) -> Response<Body> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        seen.entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    json(
        StatusCode::OK,
        &serde_json::json!({
            "method": req.method().as_str(),
            "version": format!("{:?}", req.version()),
            "uri": req.uri().to_string(),
            "headers": seen,
        }),
    )
}

fn trailers() -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let frames = futures_util::stream::iter([
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"payload"))),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut res = Response::new(StreamBody::new(frames).boxed_unsync());
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(
        Full::new(body.into())
            .map_err(BoxError::from)
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut res = text(status, value.to_string());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Empty::new().map_err(BoxError::from).boxed_unsync());
    *res.status_mut() = status;
    res
}
