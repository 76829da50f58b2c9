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
//! | `/work/{ms}` | 200 `worked {ms}ms`: takes one of the builder's `workers` (waiting for one, as a server with a fixed pool does), keeps it that long — an app of known capacity |
//! | `/work-stats` | JSON `{"most_busy", "most_in_app"}`: the most `/work` requests at work, and in the app (at work or waiting for a worker), at once since the last `/work-stats`; reads reset them |
//! | `/trailers` | body `payload` then the trailer `x-checksum: abc` |
//! | `/no-content` | 204 · `/not-modified`: 304 |
//! | `/health/live`, `/health/ready` | 200 `ok` (for policies that probe an app's health) |
//! | anything else | 404 `no route {path}` |
//!
//! Before routing, a request may be failed on purpose: by the builder's plan (`fail_first`,
//! `fail_percent`: 503), or by a [`Fault`] from its `x-fault-*` headers or the builder's
//! `fault` / `always_fail` (see [`crate::fault`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::body::{Body, BoxError};
use crate::counters::{self, CancelGuard, FailurePlan, Record, Verdict};
use crate::fault::{self, Fault};
use crate::pattern::{PatternBody, PatternCheck};
use crate::serve::{self, Serving};

/// A running HTTP test upstream; stops (and drops every open request) when dropped.
#[derive(Debug)]
pub struct HttpUpstream {
    record: Arc<Record>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    workers: Arc<Workers>,
    serving: Serving,
}

/// The worker pool of `/work/{ms}`, and how busy it got.
#[derive(Debug)]
struct Workers {
    pool: tokio::sync::Semaphore,
    busy: std::sync::atomic::AtomicUsize,
    most_busy: std::sync::atomic::AtomicUsize,
    in_app: std::sync::atomic::AtomicUsize,
    most_in_app: std::sync::atomic::AtomicUsize,
}

/// Where and how an [`HttpUpstream`] runs.
#[derive(Debug, Clone)]
pub struct HttpUpstreamBuilder {
    bind: SocketAddr,
    failures: FailurePlan,
    fault: Option<Fault>,
    tls: Option<Arc<rustls::ServerConfig>>,
    workers: usize,
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
            fault: None,
            tls: None,
            workers: tokio::sync::Semaphore::MAX_PERMITS,
        }
    }

    /// Connections open to it now.
    /// The most `/work` requests it ever worked on at once (never more than its workers).
    pub fn most_busy(&self) -> usize {
        self.workers
            .most_busy
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn open_connections(&self) -> usize {
        self.serving.open_connections()
    }

    pub fn addr(&self) -> SocketAddr {
        self.serving.addr()
    }

    /// Lets every `/gate` request (waiting or future) answer.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

impl std::ops::Deref for HttpUpstream {
    type Target = Record;

    /// The request counters and records: `requests()`, `attempts_for(key)`, `seen()`, …
    fn deref(&self) -> &Record {
        &self.record
    }
}

impl HttpUpstreamBuilder {
    /// Listen here instead of a free port of 127.0.0.1.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Answer the first `n` requests with 503.
    /// Serves HTTPS with this configuration (see [`crate::streams::TestCa::server_config`]).
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Workers of `/work/{ms}` (default: as many as there are requests).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub fn fail_first(mut self, n: u64) -> Self {
        self.failures.first = n;
        self
    }

    /// Answer this share (0–100) of the requests after those with 503, evenly spread.
    pub fn fail_percent(mut self, percent: u32) -> Self {
        self.failures.percent = percent;
        self
    }

    /// Inject `fault` into every request whose headers ask for no fault of their own.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Answer every request with `status` (body `injected failure`), unless its headers ask
    /// for another fault.
    pub fn always_fail(self, status: u16) -> Self {
        self.fault(Fault::new().status(status))
    }

    pub async fn start(self) -> std::io::Result<HttpUpstream> {
        let listener = TcpListener::bind(self.bind).await?;
        self.start_on(listener)
    }

    /// Serves on `listener` (one bound inside a network namespace, say) instead of binding.
    pub fn start_on(self, listener: TcpListener) -> std::io::Result<HttpUpstream> {
        let record = Record::new(self.failures, self.fault);
        let handler_record = record.clone();
        let gate = Arc::new(tokio::sync::watch::Sender::new(false));
        let handler_gate = gate.clone();
        let workers = Arc::new(Workers {
            pool: tokio::sync::Semaphore::new(self.workers),
            busy: Default::default(),
            most_busy: Default::default(),
            in_app: Default::default(),
            most_in_app: Default::default(),
        });
        let handler_workers = workers.clone();
        let service = hyper::service::service_fn(move |req| {
            let record = handler_record.clone();
            let gate = handler_gate.subscribe();
            handle(record, gate, handler_workers.clone(), req)
        });
        let serving = serve::spawn_tls(listener, service, self.tls)?;
        Ok(HttpUpstream {
            record,
            gate,
            workers,
            serving,
        })
    }
}

/// One `/work` request counted (in the app, or at work) until it ends or is dropped, with the
/// most counted at once.
struct Count<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Count<'a> {
    fn start(
        count: &'a std::sync::atomic::AtomicUsize,
        most: &std::sync::atomic::AtomicUsize,
    ) -> Count<'a> {
        use std::sync::atomic::Ordering::SeqCst;
        most.fetch_max(count.fetch_add(1, SeqCst) + 1, SeqCst);
        Count(count)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An injected reset: returned as the service's error, which makes hyper close an HTTP/1.1
/// connection without answering and reset an HTTP/2 stream (`RST_STREAM`).
#[derive(Debug)]
struct InjectedReset;

impl std::fmt::Display for InjectedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected reset")
    }
}

impl std::error::Error for InjectedReset {}

async fn handle(
    record: Arc<Record>,
    gate: tokio::sync::watch::Receiver<bool>,
    workers: Arc<Workers>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    let path = req.uri().path().to_string();
    match record.observe(req.method(), &path, req.headers()) {
        Verdict::Serve => {}
        Verdict::Planned => {
            return Ok(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", fault::INJECTED),
            ));
        }
        Verdict::BadFault(e) => return Ok(text(StatusCode::BAD_REQUEST, format!("{e}\n"))),
        Verdict::Fault(fault) => {
            counters::fault_delay(&record, &fault, req.headers()).await;
            if fault.reset {
                return Err(InjectedReset.into());
            }
            if let Some(status) = fault.status {
                // Read the body first, as an application that failed after reading the request
                // would, so that a proxy still sending it sees an answer and not a reset.
                let _ = req.into_body().collect().await;
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                let mut res = text(status, format!("{}\n", fault::INJECTED));
                add_pushback(res.headers_mut(), &fault);
                return Ok(res);
            }
        }
    }
    Ok(route(record, gate, &workers, req, path).await)
}

/// `Retry-After` / `grpc-retry-pushback-ms` on an injected failure, as the fault asks.
fn add_pushback(headers: &mut HeaderMap, fault: &Fault) {
    if let Some(v) = fault
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert(header::RETRY_AFTER, v);
    }
    if let Some(v) = fault
        .pushback_ms
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert("grpc-retry-pushback-ms", v);
    }
}

async fn route(
    record: Arc<Record>,
    mut gate: tokio::sync::watch::Receiver<bool>,
    workers: &Workers,
    req: Request<Incoming>,
    path: String,
) -> Response<Body> {
    let key = fault::request_key(req.headers());
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
            let _guard = CancelGuard::for_key(&record, key);
            std::future::pending::<()>().await;
            unreachable!("a pending future never completes")
        }
        ["slow", ms] => match ms.parse::<u64>() {
            Ok(ms) => {
                let guard = CancelGuard::for_key(&record, key);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                guard.disarm();
                text(StatusCode::OK, format!("slept {ms}ms"))
            }
            Err(_) => text(StatusCode::BAD_REQUEST, format!("bad delay {ms:?}\n")),
        },
        ["work", ms] => match ms.parse::<u64>() {
            Ok(ms) => {
                let _in_app = Count::start(&workers.in_app, &workers.most_in_app);
                let Ok(_worker) = workers.pool.acquire().await else {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "no workers\n");
                };
                let _busy = Count::start(&workers.busy, &workers.most_busy);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, format!("worked {ms}ms"))
            }
            Err(_) => text(StatusCode::BAD_REQUEST, format!("bad duration {ms:?}\n")),
        },
        ["work-stats"] => {
            use std::sync::atomic::Ordering::SeqCst;
            let stats = serde_json::json!({
                "most_busy": workers.most_busy.swap(workers.busy.load(SeqCst), SeqCst),
                "most_in_app": workers.most_in_app.swap(workers.in_app.load(SeqCst), SeqCst),
            });
            json(StatusCode::OK, &stats)
        }
        ["gate"] => {
            let guard = CancelGuard::for_key(&record, key);
            let _ = gate.wait_for(|open| *open).await;
            guard.disarm();
            text(StatusCode::OK, "gate opened")
        }
        ["trailers"] => trailers(),
        ["health", "live" | "ready"] => text(StatusCode::OK, "ok\n"),
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
