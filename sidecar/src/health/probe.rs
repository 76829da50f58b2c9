//! The app probe: when the own ServicePolicy has `spec.app.healthCheck`, the app on
//! 127.0.0.1 is asked every `interval`, within `timeout`, whether it is healthy: an HTTP GET of
//! the path (2xx is healthy) or the gRPC health-checking protocol's `Check` (SERVING is
//! healthy). Each probe opens its own connection, as the kubelet does, so a wedged pooled
//! connection cannot hide a dead app. The latest result feeds readiness, reports and a metric.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bulwark_proto::policy::units::DurationText;
use bulwark_proto::policy::{ServicePolicy, defaults};
use bulwark_proto::v1 as pb;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::metrics::Metrics;

const GRPC_CHECK: &str = "/grpc.health.v1.Health/Check";

/// What the probe checks, from the ServicePolicy (and `--app-port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub port: u16,
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// GET this path; 2xx is healthy.
    Http { path: String },
    /// `grpc.health.v1.Health/Check` for this service name (`""`: the whole server).
    Grpc { service: String },
}

impl ProbeTarget {
    /// The probe a ServicePolicy asks for; `None` without `app.healthCheck`. `app_port`
    /// (`--app-port`) overrides `app.port`, as it does for inbound traffic.
    pub fn from_policy(policy: Option<&ServicePolicy>, app_port: Option<u16>) -> Option<Self> {
        let app = policy?.spec.app.as_ref()?;
        let hc = app.health_check.as_ref()?;
        let check = match (&hc.http, &hc.grpc) {
            (Some(path), _) => Check::Http { path: path.clone() },
            (None, Some(service)) => Check::Grpc {
                service: service.clone(),
            },
            (None, None) => return None,
        };
        Some(ProbeTarget {
            port: app_port.unwrap_or(app.port),
            check,
            interval: hc
                .interval
                .as_ref()
                .map_or(defaults::HEALTH_CHECK_INTERVAL, |d| d.get()),
            timeout: hc
                .timeout
                .as_ref()
                .map_or(defaults::HEALTH_CHECK_TIMEOUT, |d| d.get()),
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// The latest probe result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealth {
    /// False while no probe result is known (no health check, or none finished yet).
    pub probed: bool,
    pub healthy: bool,
    /// Why the last probe failed; empty when it succeeded.
    pub detail: String,
}

impl AppHealth {
    /// No probe configured or none finished yet: counts as healthy.
    pub fn unprobed() -> AppHealth {
        AppHealth {
            probed: false,
            healthy: true,
            detail: String::new(),
        }
    }

    pub fn from_result(result: Result<(), String>) -> AppHealth {
        match result {
            Ok(()) => AppHealth {
                probed: true,
                healthy: true,
                detail: String::new(),
            },
            Err(detail) => AppHealth {
                probed: true,
                healthy: false,
                detail,
            },
        }
    }

    pub fn to_wire(&self) -> pb::AppHealth {
        pb::AppHealth {
            probed: self.probed,
            healthy: self.healthy,
            detail: self.detail.clone(),
        }
    }
}

impl Default for AppHealth {
    fn default() -> Self {
        AppHealth::unprobed()
    }
}

/// Probes the app for as long as the sidecar runs, following `targets`: a new target (the
/// ServicePolicy changed) restarts the schedule at once; none stops probing.
pub async fn run(
    app: Arc<ArcSwap<AppHealth>>,
    metrics: Arc<Metrics>,
    mut targets: watch::Receiver<Option<ProbeTarget>>,
) {
    loop {
        let target = targets.borrow_and_update().clone();
        let Some(target) = target else {
            record(&app, &metrics, AppHealth::unprobed());
            if targets.changed().await.is_err() {
                return;
            }
            continue;
        };
        tracing::info!(port = target.port, check = ?target.check, interval = ?target.interval, "probing the app");
        let mut tick = tokio::time::interval(target.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = targets.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = tick.tick() => {
                    let result = probe(&target).await;
                    record(&app, &metrics, AppHealth::from_result(result));
                }
            }
        }
    }
}

/// Keeps a result, and logs and counts a change between healthy and failing.
fn record(app: &ArcSwap<AppHealth>, metrics: &Metrics, health: AppHealth) {
    let previous = app.swap(Arc::new(health.clone()));
    metrics.app_healthy(health.healthy);
    if previous.healthy != health.healthy {
        if health.healthy {
            tracing::info!("app health check passing");
        } else {
            tracing::warn!(detail = %health.detail, "app health check failing");
        }
    }
}

/// One probe within the target's timeout; `Err` says why the app is not healthy.
pub async fn probe(target: &ProbeTarget) -> Result<(), String> {
    let addr = target.addr();
    let what = match &target.check {
        Check::Http { path } => format!("GET {path}"),
        Check::Grpc { .. } => GRPC_CHECK.trim_start_matches('/').to_string(),
    };
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {}", e.kind()))?;
        match &target.check {
            Check::Http { path } => http_check(stream, addr, path, &what).await,
            Check::Grpc { service } => grpc_check(stream, service, &what).await,
        }
    };
    match tokio::time::timeout(target.timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{what}: no answer within {}",
            DurationText(target.timeout)
        )),
    }
}

async fn http_check(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    what: &str,
) -> Result<(), String> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    // The connection task ends when the request is answered and `send` is dropped.
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "bulwark-sidecar-probe")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{what}: {e}"))?;
    let rsp = send
        .send_request(req)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if rsp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{what} answered {}", rsp.status().as_u16()))
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `HealthCheckResponse.ServingStatus` names, by value.
fn serving_status(status: i32) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "an unknown status",
    }
}

async fn grpc_check(stream: TcpStream, service: &str, what: &str) -> Result<(), String> {
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("{what}: {e}"))?;
    tokio::spawn(conn);
    let origin = http::Uri::from_static("http://127.0.0.1");
    let mut grpc = tonic::client::Grpc::with_origin(H2Client(send), origin);
    grpc.ready().await.map_err(|e| format!("{what}: {e}"))?;
    let rsp = grpc
        .unary(
            tonic::Request::new(HealthCheckRequest {
                service: service.to_string(),
            }),
            http::uri::PathAndQuery::from_static(GRPC_CHECK),
            tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default(),
        )
        .await
        .map_err(|status| {
            let code = status.code() as i32;
            let name = bulwark_proto::policy::GrpcCode::from_i32(code)
                .map_or("unknown code", |c| c.name());
            format!(
                "{what} answered grpc-status {code} ({name}): {}",
                status.message()
            )
        })?;
    match rsp.get_ref().status {
        1 => Ok(()),
        other => Err(format!("{what} answered {}", serving_status(other))),
    }
}

/// An HTTP/2 connection as the service tonic's client sends requests over.
#[derive(Clone)]
struct H2Client(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for H2Client {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_proto::policy::{Resource, parse_yaml};
    use std::convert::Infallible;

    fn policy(app: &str) -> ServicePolicy {
        let yaml = format!(
            "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec: {{ app: {app} }}\n"
        );
        match parse_yaml(&yaml).unwrap().remove(0) {
            Resource::ServicePolicy(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn targets_come_from_the_service_policy() {
        let p =
            policy("{ port: 8080, healthCheck: { http: /health, interval: 2s, timeout: 500ms } }");
        assert_eq!(
            ProbeTarget::from_policy(Some(&p), None),
            Some(ProbeTarget {
                port: 8080,
                check: Check::Http {
                    path: "/health".into()
                },
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
            })
        );
        let t = ProbeTarget::from_policy(Some(&p), Some(9000)).unwrap();
        assert_eq!(t.port, 9000, "--app-port wins");

        let p = policy("{ port: 8080, healthCheck: { grpc: \"\" } }");
        let t = ProbeTarget::from_policy(Some(&p), None).unwrap();
        assert_eq!(
            t.check,
            Check::Grpc {
                service: String::new()
            }
        );
        assert_eq!(t.interval, Duration::from_secs(5));
        assert_eq!(t.timeout, Duration::from_secs(1));

        assert_eq!(
            ProbeTarget::from_policy(Some(&policy("{ port: 8080 }")), None),
            None
        );
        assert_eq!(ProbeTarget::from_policy(None, Some(8080)), None);
    }

    /// A one-route HTTP/1.1 app on a free port answering `status` to everything.
    async fn http_app(status: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(move |_req| async move {
                    let mut rsp = http::Response::new(http_body_util::Full::new(Bytes::new()));
                    *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(rsp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        port
    }

    fn http_target(port: u16) -> ProbeTarget {
        ProbeTarget {
            port,
            check: Check::Http {
                path: "/health".into(),
            },
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn http_probes_want_2xx() {
        assert_eq!(probe(&http_target(http_app(204).await)).await, Ok(()));
        assert_eq!(
            probe(&http_target(http_app(503).await)).await,
            Err("GET /health answered 503".into())
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_connection_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(
            probe(&http_target(port)).await,
            Err(format!("connect to 127.0.0.1:{port}: connection refused"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_app_times_out() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = ProbeTarget {
            timeout: Duration::from_millis(300),
            ..http_target(port)
        };
        assert_eq!(
            probe(&target).await,
            Err("GET /health: no answer within 300ms".into())
        );
        drop(listener);
    }

    /// A gRPC server answering every call: `Some(status)` with a HealthCheckResponse of that
    /// ServingStatus, `None` with a trailers-only UNIMPLEMENTED. Records the service names
    /// asked for.
    async fn grpc_app(status: Option<u8>) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
        use futures_util::stream;
        use http_body::Frame;
        use http_body_util::{BodyExt, StreamBody};
        use prost::Message;

        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let record = asked.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            assert_eq!(req.uri().path(), GRPC_CHECK);
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let asked = HealthCheckRequest::decode(&body[5..]).unwrap();
                            record.lock().unwrap().push(asked.service);
                            let mut trailers = http::HeaderMap::new();
                            let mut frames = Vec::new();
                            let mut rsp = http::Response::builder()
                                .header(header::CONTENT_TYPE, "application/grpc");
                            match status {
                                Some(s) => {
                                    frames.push(Frame::data(Bytes::from(vec![
                                        0, 0, 0, 0, 2, 0x08, s,
                                    ])));
                                    trailers.insert("grpc-status", "0".parse().unwrap());
                                    frames.push(Frame::trailers(trailers));
                                }
                                None => {
                                    rsp = rsp
                                        .header("grpc-status", "12")
                                        .header("grpc-message", "unknown service");
                                }
                            }
                            let body = StreamBody::new(stream::iter(
                                frames.into_iter().map(Ok::<_, Infallible>),
                            ));
                            Ok::<_, Infallible>(rsp.body(body).unwrap())
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (port, asked)
    }

    fn grpc_target(port: u16, service: &str) -> ProbeTarget {
        ProbeTarget {
            port,
            check: Check::Grpc {
                service: service.into(),
            },
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn grpc_probes_want_serving() {
        let (port, asked) = grpc_app(Some(1)).await;
        assert_eq!(probe(&grpc_target(port, "orders.v1.Orders")).await, Ok(()));
        assert_eq!(*asked.lock().unwrap(), ["orders.v1.Orders"]);

        let (port, _) = grpc_app(Some(2)).await;
        assert_eq!(
            probe(&grpc_target(port, "")).await,
            Err("grpc.health.v1.Health/Check answered NOT_SERVING".into())
        );
        let (port, _) = grpc_app(None).await;
        assert_eq!(
            probe(&grpc_target(port, "")).await,
            Err("grpc.health.v1.Health/Check answered grpc-status 12 (unimplemented): unknown service".into())
        );
    }
}
