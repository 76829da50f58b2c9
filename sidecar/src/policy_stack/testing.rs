//! The stage-test kit: a scripted inner service ([`Script`]) that answers each call with the
//! next step of its script and records what it was called with, and helpers to build a layer's
//! settings and a request's context. Layers are tested on their own over it, in tokio's paused
//! time, so waits are exact and tests are deterministic.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bulwark_proto::policy::{Resource, UpstreamSpec, parse_yaml};
use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::layer::{AttemptDeadline, Call, CallState, Cx, Req, Rsp, UpstreamInfo};
use super::routes::{RouteConfig, UpstreamRoutes};
use crate::body::Body;
use crate::errors::ProxyError;
use crate::metrics::Metrics;

/// What the script does on one call.
#[derive(Debug, Clone)]
pub enum Step {
    /// Answer with this HTTP status.
    Status(u16),
    /// Answer 200 with this `grpc-status` (a trailers-only gRPC answer).
    Grpc(i32),
    /// Answer with this status and headers.
    Headers(u16, Vec<(&'static str, &'static str)>),
    /// The connection is refused.
    Refused,
    /// The upstream resets the request.
    Reset,
    /// Wait, then do the next thing.
    After(Duration, Box<Step>),
    /// Never answer.
    Hang,
}

/// One call the script saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Since the script was made.
    pub at: Duration,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub route: Option<Arc<str>>,
    pub authority: String,
    pub deadline: Option<Duration>,
    pub attempt: Option<AttemptDeadline>,
}

/// A scripted inner service; once its steps are used up it repeats the last one.
pub struct Script {
    name: &'static str,
    start: Instant,
    steps: Mutex<VecDeque<Step>>,
    last: Mutex<Step>,
    calls: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
}

impl Script {
    pub fn new(name: &'static str, steps: impl IntoIterator<Item = Step>) -> Arc<Script> {
        let steps: VecDeque<Step> = steps.into_iter().collect();
        let last = steps.back().cloned().unwrap_or(Step::Status(200));
        Arc::new(Script {
            name,
            start: Instant::now(),
            steps: Mutex::new(steps),
            last: Mutex::new(last),
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Answers 200 to everything.
    pub fn ok(name: &'static str) -> Arc<Script> {
        Script::new(name, [Step::Status(200)])
    }

    pub fn calls(&self) -> Vec<Seen> {
        self.calls.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// When each call came, since the script was made.
    pub fn times(&self) -> Vec<Duration> {
        self.calls().iter().map(|c| c.at).collect()
    }

    /// Calls being answered right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn next(&self) -> Step {
        let mut steps = self.steps.lock().unwrap();
        match steps.pop_front() {
            Some(step) => step,
            None => self.last.lock().unwrap().clone(),
        }
    }

    fn error(&self, step: &Step) -> ProxyError {
        let endpoint = "127.0.0.1:9".parse().unwrap();
        match step {
            Step::Refused => ProxyError::Connect {
                upstream: self.name.into(),
                endpoint,
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            },
            _ => ProxyError::Reset {
                upstream: self.name.into(),
                endpoint,
                source: "stream reset".into(),
            },
        }
    }
}

/// Decrements the in-flight count however the call ends.
struct Answering<'a>(&'a AtomicUsize);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Call for Script {
    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _answering = Answering(&self.in_flight);
        let now = Instant::now();
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        self.calls.lock().unwrap().push(Seen {
            at: now - self.start,
            headers: parts.headers,
            body,
            route: cx.route.name.clone(),
            authority: cx.authority.to_string(),
            deadline: cx.deadline.map(|d| d - now),
            attempt: cx.attempt,
        });
        let mut step = self.next();
        loop {
            match step {
                Step::After(wait, then) => {
                    tokio::time::sleep(wait).await;
                    step = *then;
                }
                Step::Hang => std::future::pending::<()>().await,
                Step::Refused | Step::Reset => return Err(self.error(&step)),
                Step::Status(status) => return Ok(response(status, &[])),
                Step::Headers(status, headers) => return Ok(response(status, &headers)),
                Step::Grpc(code) => {
                    let mut rsp = response(200, &[("content-type", "application/grpc")]);
                    rsp.headers_mut()
                        .insert("grpc-status", HeaderValue::from(code));
                    return Ok(rsp);
                }
            }
        }
    }
}

fn response(status: u16, headers: &[(&'static str, &'static str)]) -> Rsp {
    let mut rsp = Response::new(Body::full("answer"));
    *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        rsp.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    rsp
}

/// An upstream's identity and metrics, with the registry to read them back from.
pub fn info(name: &str) -> (Arc<UpstreamInfo>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let info = Arc::new(UpstreamInfo {
        name: Arc::from(name),
        namespace: Arc::from("shop"),
        metrics: Arc::new(metrics.upstream("outbound", "default", name)),
        stats: Default::default(),
    });
    (info, metrics)
}

/// An UpstreamPolicy's spec from the YAML of its `spec` (endpoints added).
pub fn spec(yaml: &str) -> UpstreamSpec {
    let doc = format!(
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: up, namespace: shop }}\nspec:\n  endpoints: {{ static: [\"127.0.0.1:9\"] }}\n{}",
        yaml.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    let mut resources = parse_yaml(&doc).unwrap();
    let resource = resources.remove(0);
    resource.validate().unwrap();
    let Resource::UpstreamPolicy(p) = resource else {
        panic!("not an UpstreamPolicy")
    };
    p.spec
}

/// The compiled routes of a spec.
pub fn routes(yaml: &str) -> UpstreamRoutes {
    UpstreamRoutes::compile(&spec(yaml))
}

static AUTHORITY: LazyLock<Authority> = LazyLock::new(|| Authority::from_static("up"));

/// The context of a request entering a layer on `route`, with nothing decided above it.
pub fn cx<'a>(route: &'a RouteConfig, state: &'a CallState) -> Cx<'a> {
    Cx {
        route,
        grpc: false,
        authority: &AUTHORITY,
        state,
        deadline: None,
        attempt: None,
        criticality: route.criticality,
    }
}

/// A GET request.
pub fn get(path: &str) -> Req {
    Request::get(path).body(Body::Empty).unwrap()
}

/// A request with a body and headers.
pub fn request(method: &str, body: &'static str, headers: &[(&'static str, &'static str)]) -> Req {
    let mut req = Request::builder()
        .method(method)
        .uri("/")
        .body(Body::full(body))
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    req
}

/// The status of a result, or the kind of its error.
pub fn outcome(result: &Result<Rsp, ProxyError>) -> String {
    match result {
        Ok(rsp) => rsp.status().as_u16().to_string(),
        Err(e) => e.kind().to_string(),
    }
}

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
