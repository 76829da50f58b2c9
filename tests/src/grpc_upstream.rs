//! The gRPC test upstream: the `Echo` service of `proto/echo.proto`, counting calls and
//! cancellations, echoing selected request metadata back in the response metadata.
//!
//! It runs tonic's generated `EchoServer` on the kit's own hyper accept loop rather than on
//! `tonic::transport::Server`, because tonic's server enforces the caller's `grpc-timeout`
//! itself (answering CANCELLED): the deadline tests must see the *sidecar* end a call, so this
//! upstream waits for as long as the handler says.
//!
//! Echoed metadata: `x-request-id`, `traceparent`, `x-bulwark-attempt`,
//! `x-bulwark-peer-identity`, and `x-seen-authority`
//! (the `:authority`, or `Host`, this upstream received).
//!
//! A method outside `bulwark.test.v1.Echo` (e.g. `/bbd.v1.Dispatch/CreateOrder` of an example
//! policy) is served as `Unary`, so policies written for real services can be exercised; it is
//! counted under the path it was called with.
//!
//! Before that, a call may be failed on purpose: by the builder's plan (`fail_first`,
//! `fail_percent`: UNAVAILABLE), or by a [`Fault`] from its `x-fault-*` metadata or the
//! builder's `fault` / `always_fail` (see [`crate::fault`]): `x-fault-grpc` answers that code
//! trailers-only, `x-fault-status` answers that HTTP status without any `grpc-status`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status, Streaming};
use tower::ServiceExt;

use crate::body::BoxError;
use crate::counters::{self, CancelGuard, FailurePlan, Record, Verdict};
use crate::fault::{self, Fault};
use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::{EchoReply, EchoRequest, StreamRequest};
use crate::serve::{self, Serving};

/// A running gRPC test upstream; stops (and drops every open call) when dropped.
#[derive(Debug)]
pub struct GrpcUpstream {
    record: Arc<Record>,
    serving: Serving,
}

/// Where and how a [`GrpcUpstream`] runs.
#[derive(Debug, Clone)]
pub struct GrpcUpstreamBuilder {
    bind: SocketAddr,
    failures: FailurePlan,
    fault: Option<Fault>,
}

impl GrpcUpstream {
    /// An upstream on a free port of 127.0.0.1 that never fails on purpose.
    pub async fn start() -> Self {
        GrpcUpstream::builder()
            .start()
            .await
            .expect("the gRPC test upstream binds 127.0.0.1:0")
    }

    pub fn builder() -> GrpcUpstreamBuilder {
        GrpcUpstreamBuilder {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            failures: FailurePlan::default(),
            fault: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.serving.addr()
    }
}

impl std::ops::Deref for GrpcUpstream {
    type Target = Record;

    /// The request counters and records: `requests()`, `attempts_for(key)`, `seen()`, …
    fn deref(&self) -> &Record {
        &self.record
    }
}

impl GrpcUpstreamBuilder {
    /// Listen here instead of a free port of 127.0.0.1.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Answer the first `n` calls with UNAVAILABLE.
    pub fn fail_first(mut self, n: u64) -> Self {
        self.failures.first = n;
        self
    }

    /// Answer this share (0–100) of the calls after those with UNAVAILABLE, evenly spread.
    pub fn fail_percent(mut self, percent: u32) -> Self {
        self.failures.percent = percent;
        self
    }

    /// Inject `fault` into every call whose metadata asks for no fault of its own.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Answer every call with `code` (message `injected failure`), unless its metadata asks
    /// for another fault.
    pub fn always_fail(self, code: Code) -> Self {
        self.fault(Fault::new().grpc(code))
    }

    pub async fn start(self) -> std::io::Result<GrpcUpstream> {
        let listener = TcpListener::bind(self.bind).await?;
        self.start_on(listener)
    }

    /// Serves on `listener` (one bound inside a network namespace, say) instead of binding.
    pub fn start_on(self, listener: TcpListener) -> std::io::Result<GrpcUpstream> {
        let record = Record::new(self.failures, self.fault);
        let echo = EchoServer::new(EchoService {
            record: record.clone(),
        });
        let handler_record = record.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let record = handler_record.clone();
            let echo = echo.clone();
            async move {
                match record.observe(req.method(), req.uri().path(), req.headers()) {
                    Verdict::Serve => {}
                    Verdict::Planned => {
                        return Ok(Status::unavailable(fault::INJECTED).into_http());
                    }
                    Verdict::BadFault(e) => return Ok(Status::invalid_argument(e).into_http()),
                    Verdict::Fault(fault) => {
                        counters::fault_delay(&record, &fault, req.headers()).await;
                        if fault.reset {
                            // An error from the service makes hyper reset the stream.
                            return Err(BoxError::from("injected reset"));
                        }
                        if let Some(res) = injected_answer(&fault) {
                            return Ok(res);
                        }
                    }
                }
                if !req.uri().path().starts_with(ECHO_SERVICE) {
                    serve_as_unary(&mut req);
                }
                let authority = req
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_string())
                    .or_else(|| {
                        req.headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_string)
                    })
                    .unwrap_or_default();
                req.extensions_mut().insert(SeenAuthority(authority));
                echo.oneshot(req).await.map_err(|never| match never {})
            }
        });
        let serving = serve::spawn(listener, service)?;
        Ok(GrpcUpstream { record, serving })
    }
}

/// The path prefix of the methods [`EchoServer`] serves.
const ECHO_SERVICE: &str = "/bulwark.test.v1.Echo/";

/// Points a call of any other method at `Unary`, keeping the rest of its URI.
fn serve_as_unary(req: &mut Request<Incoming>) {
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static(
        "/bulwark.test.v1.Echo/Unary",
    ));
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// The answer a fault asks for, if it asks for one: a gRPC status trailers-only, or a bare
/// HTTP status; with `Retry-After` / `grpc-retry-pushback-ms` as asked.
fn injected_answer(fault: &Fault) -> Option<http::Response<tonic::body::Body>> {
    let mut res = if let Some(code) = fault.grpc {
        Status::new(Code::from(code), fault::INJECTED).into_http()
    } else {
        let status = http::StatusCode::from_u16(fault.status?).ok()?;
        let mut res = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(format!("{}\n", fault::INJECTED)),
        )));
        *res.status_mut() = status;
        res
    };
    let headers = res.headers_mut();
    if let Some(v) = fault
        .retry_after
        .as_deref()
        .and_then(|v| http::HeaderValue::from_str(v).ok())
    {
        headers.insert(http::header::RETRY_AFTER, v);
    }
    if let Some(v) = fault
        .pushback_ms
        .as_deref()
        .and_then(|v| http::HeaderValue::from_str(v).ok())
    {
        headers.insert("grpc-retry-pushback-ms", v);
    }
    Some(res)
}

/// The `:authority` the upstream received, handed from the HTTP layer to the handlers.
#[derive(Debug, Clone)]
struct SeenAuthority(String);

#[derive(Debug, Clone)]
struct EchoService {
    record: Arc<Record>,
}

const ECHOED: [&str; 4] = [
    "x-request-id",
    "traceparent",
    "x-bulwark-attempt",
    "x-bulwark-peer-identity",
];

/// The response metadata: selected request metadata and the authority seen.
fn echoed<T>(req: &tonic::Request<T>) -> MetadataMap {
    let mut out = MetadataMap::new();
    for key in ECHOED {
        if let Some(v) = req.metadata().get(key) {
            out.insert(key, v.clone());
        }
    }
    if let Some(SeenAuthority(a)) = req.extensions().get::<SeenAuthority>()
        && let Ok(v) = MetadataValue::try_from(a.as_str())
    {
        out.insert("x-seen-authority", v);
    }
    out
}

/// The call's `x-fault-key` (empty when absent), so that cancellations count per key.
fn fault_key<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get(fault::KEY)
        .and_then(|v| v.to_str().ok())
        .map(|k| k.trim().to_string())
        .unwrap_or_default()
}

fn respond<T>(metadata: MetadataMap, message: T) -> tonic::Response<T> {
    let mut res = tonic::Response::new(message);
    *res.metadata_mut() = metadata;
    res
}

/// The status a request asks for, if any.
fn requested_failure(req: &EchoRequest) -> Option<Status> {
    (req.fail_with_code != 0)
        .then(|| Status::new(Code::from(req.fail_with_code), req.fail_message.clone()))
}

fn reply_to(req: EchoRequest, count: u64) -> EchoReply {
    EchoReply {
        total_bytes: req.payload.len() as u64,
        message: req.message,
        payload: req.payload,
        count,
    }
}

type ReplyStream = ReceiverStream<Result<EchoReply, Status>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        let metadata = echoed(&req);
        let key = fault_key(&req);
        let req = req.into_inner();
        if let Some(status) = requested_failure(&req) {
            return Err(status);
        }
        if req.delay_ms > 0 {
            let guard = CancelGuard::for_key(&self.record, key);
            tokio::time::sleep(Duration::from_millis(req.delay_ms.into())).await;
            guard.disarm();
        }
        Ok(respond(metadata, reply_to(req, 1)))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: tonic::Request<StreamRequest>,
    ) -> Result<tonic::Response<ReplyStream>, Status> {
        let metadata = echoed(&req);
        let req = req.into_inner();
        // A small channel: the sender waits for the caller, so flow control reaches it.
        let (tx, rx) = mpsc::channel(4);
        let guard = CancelGuard::new(&self.record);
        tokio::spawn(async move {
            let payload = vec![b'x'; req.payload_size as usize];
            for i in 1..=u64::from(req.count) {
                if req.delay_ms > 0 {
                    tokio::select! {
                        // The response body was dropped: the caller went away.
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(req.delay_ms.into())) => {}
                    }
                }
                let reply = EchoReply {
                    message: format!("reply {i}"),
                    payload: payload.clone(),
                    count: i,
                    total_bytes: payload.len() as u64,
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
            guard.disarm();
        });
        Ok(respond(metadata, ReceiverStream::new(rx)))
    }

    async fn client_stream(
        &self,
        req: tonic::Request<Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        let metadata = echoed(&req);
        let mut stream = req.into_inner();
        let guard = CancelGuard::new(&self.record);
        let (mut count, mut total_bytes) = (0u64, 0u64);
        // An error here is the caller resetting the stream: the guard counts it.
        while let Some(msg) = stream.message().await? {
            if let Some(status) = requested_failure(&msg) {
                guard.disarm();
                return Err(status);
            }
            count += 1;
            total_bytes += msg.payload.len() as u64;
        }
        guard.disarm();
        Ok(respond(
            metadata,
            EchoReply {
                message: format!("received {count}"),
                payload: Vec::new(),
                count,
                total_bytes,
            },
        ))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        req: tonic::Request<Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<ReplyStream>, Status> {
        let metadata = echoed(&req);
        let mut stream = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let guard = CancelGuard::new(&self.record);
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                let msg = match stream.message().await {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(_reset) => return,
                };
                if let Some(status) = requested_failure(&msg) {
                    let _ = tx.send(Err(status)).await;
                    break;
                }
                count += 1;
                if tx.send(Ok(reply_to(msg, count))).await.is_err() {
                    return;
                }
            }
            guard.disarm();
        });
        Ok(respond(metadata, ReceiverStream::new(rx)))
    }

    async fn hold(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        let _guard = CancelGuard::for_key(&self.record, fault_key(&req));
        std::future::pending::<()>().await;
        unreachable!("a pending future never completes")
    }
}
