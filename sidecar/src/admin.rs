//! The admin listener (default 127.0.0.1:15000, loopback only): liveness and readiness probes,
//! Prometheus metrics, the applied policies with their version, breaker state, the workload
//! identity, and the own service's degradation level and capabilities. And the health listener
//! (`--health`, e.g. 0.0.0.0:15021 in Kubernetes): the probes and the metrics only, for the
//! kubelet and Prometheus, which reach the pod's IP — nothing else of the admin endpoints is
//! served beyond the pod.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::health::readiness::readiness;
use crate::listen::conn::stopped;
use crate::state::Shared;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Everything (the admin listener).
    All,
    /// `/health/live`, `/health/ready` and `/metrics` (the health listener).
    Health,
}

/// Serves admin requests until `stop` turns true.
pub async fn serve(
    tcp: TcpListener,
    shared: Arc<Shared>,
    endpoints: Endpoints,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stopped(&mut stop) => return,
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, endpoints, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn handle(shared: &Shared, endpoints: Endpoints, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here\n".into(),
        );
    }
    let path = req.uri().path();
    if endpoints == Endpoints::Health
        && !matches!(path, "/health/live" | "/health/ready" | "/metrics")
    {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{path} is not served on the health listener (only /health/live, /health/ready, /metrics); the admin listener serves it on loopback\n"
            ),
        );
    }
    match path {
        "/health/live" => text(StatusCode::OK, "live\n".into()),
        "/health/ready" => ready(shared),
        "/metrics" => {
            let mut rsp = text(StatusCode::OK, shared.metrics.encode());
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            rsp
        }
        "/config" => config(shared),
        "/breakers" => breakers(shared),
        "/capabilities" => json(&shared.health.degradation.levels().capabilities_json()),
        "/identity" => match &shared.identity {
            Some(identity) => json(&identity.describe()),
            None => text(
                StatusCode::NOT_FOUND,
                "no workload identity: start the sidecar with --trust-anchors\n".into(),
            ),
        },
        other => text(
            StatusCode::NOT_FOUND,
            format!(
                "no admin endpoint {other}; try /health/live, /health/ready, /metrics, /config, /breakers, /capabilities, /identity\n"
            ),
        ),
    }
}

fn ready(shared: &Shared) -> Response<Full<Bytes>> {
    let verdict = readiness(
        shared.draining.load(Ordering::Relaxed),
        shared.table.load().is_loaded(),
        &shared.health.pod,
        &shared.health.degradation.levels(),
        &shared.health.app.load(),
    )
    .map_err(|why| match shared.boot_problem.load_full() {
        Some(problem) if !shared.table.load().is_loaded() => format!("{why}: {problem}"),
        _ => why,
    })
    .and_then(|()| match &shared.identity {
        Some(identity) => identity.readiness(std::time::SystemTime::now()),
        None => Ok(()),
    });
    match verdict {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why + "\n"),
    }
}

fn json(body: &serde_json::Value) -> Response<Full<Bytes>> {
    let text_body =
        serde_json::to_string_pretty(body).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    let mut rsp = text(StatusCode::OK, text_body + "\n");
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    rsp
}

fn config(shared: &Shared) -> Response<Full<Bytes>> {
    let table = shared.table.load();
    let body = serde_json::json!({
        "version": table.version,
        "source": table.source,
        "namespace": shared.local.namespace,
        "service": shared.local.service,
        "resources": table.resources,
    });
    json(&body)
}

/// Breaker and outlier state of every upstream.
fn breakers(shared: &Shared) -> Response<Full<Bytes>> {
    let table = shared.table.load();
    let now = tokio::time::Instant::now();
    let upstreams: Vec<serde_json::Value> = table
        .upstreams()
        .into_iter()
        .map(|u| {
            let breaker = u
                .breaker
                .as_ref()
                .and_then(|b| b.lock().ok().map(|b| b.snapshot(now)));
            let outlier = u
                .outlier
                .as_ref()
                .and_then(|o| o.lock().ok().map(|o| o.snapshot(now)));
            serde_json::json!({
                "name": u.name.as_ref(),
                "namespace": u.namespace.as_ref(),
                "breaker": breaker,
                "outlier": outlier,
                "bulkhead": u.slots.as_ref().map(|b| serde_json::json!({
                    "inFlight": b.in_flight(),
                    "maxConcurrent": b.max_concurrent,
                    "maxPending": b.max_pending,
                })),
            })
        })
        .collect();
    let body = serde_json::json!({ "upstreams": upstreams });
    json(&body)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}
