//! Per-route policy through the sidecar: the most specific route wins (`path`, `grpcMethod`
//! method over service, `pathPrefix` by whole segments, `method` adding specificity), and a
//! route's `retry` / `timeouts` replace the upstream's field by field, keeping the rest.

use std::time::Duration;

use bulwark_tests::client::{self, HttpClient, full};
use bulwark_tests::fault::gaps;
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::{Fault, GrpcUpstream, HttpUpstream, Sidecar, grpc_wire, policy};
use http::{Method, StatusCode};
use tonic::Code;

const SLACK: Duration = Duration::from_millis(250);
const TICK: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn sidecar(policy: String) -> Sidecar {
    Sidecar::builder().policies_yaml(policy).start().await
}

/// Sends `method uri` with a fault of `status` on every attempt, under `key`; returns how many
/// attempts the upstream saw.
async fn attempts(
    http: &HttpClient,
    upstream: &HttpUpstream,
    method: Method,
    uri: &str,
    status: u16,
) -> u64 {
    let key = format!("{method} {uri}");
    let req = Fault::new()
        .status(status)
        .key(&key)
        .request(method, uri)
        .body(full("x"))
        .expect("request");
    let res = client::send(http, req).await;
    assert_eq!(res.status.as_u16(), status, "{key}");
    upstream.attempts_for(&key)
}

#[tokio::test]
async fn a_path_prefix_route_overrides_max_attempts_and_keeps_the_rest() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(
        policy::upstream("echo", upstream.addr())
            .spec("retry: { maxAttempts: 2, retryOn: [5xx], backoff: { initial: 5ms } }")
            .spec("routes:")
            .spec("  - name: a")
            .spec("    match: { pathPrefix: /a }")
            .spec("    retry: { maxAttempts: 5 }")
            .to_yaml(),
    )
    .await;
    let http = client::http1_client(sidecar.outbound());
    // 500 is retried only through the upstream's retryOn [5xx] (the default would not):
    // the route kept it.
    for (path, want) in [
        ("/a/x", 5),
        ("/a", 5),
        ("/a/", 5),
        ("/ab/x", 2),
        ("/other", 2),
    ] {
        let uri = format!("http://echo{path}");
        assert_eq!(
            attempts(&http, &upstream, Method::GET, &uri, 500).await,
            want,
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_routes_backoff_merges_field_by_field() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(
        policy::upstream("echo", upstream.addr())
            .spec("retry: { maxAttempts: 3, retryOn: [5xx], backoff: { initial: 10ms, max: 2s, multiplier: 3.0, jitter: 0% } }")
            .spec("routes:")
            .spec("  - match: { pathPrefix: /slow }")
            .spec("    retry: { backoff: { initial: 100ms } }")
            .to_yaml(),
    )
    .await;
    let http = client::http1_client(sidecar.outbound());
    for (path, nominal) in [("/slow/1", [ms(100), ms(300)]), ("/fast", [ms(10), ms(30)])] {
        let res = client::send(
            &http,
            Fault::new()
                .status(503)
                .key(path)
                .get(&format!("http://echo{path}")),
        )
        .await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        let gaps = gaps(&upstream.arrivals_for(path));
        assert_eq!(gaps.len(), 2, "{path}: 3 attempts");
        for (gap, nominal) in gaps.iter().zip(nominal) {
            assert!(
                *gap >= nominal - TICK && *gap <= nominal + SLACK,
                "{path}: gap {gap:?}, nominal {nominal:?} (multiplier 3, no jitter)"
            );
        }
    }
}

#[tokio::test]
async fn method_and_idempotent_routes() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(
        policy::upstream("echo", upstream.addr())
            .spec("retry: { maxAttempts: 3, retryOn: [5xx], backoff: { initial: 5ms } }")
            .spec("routes:")
            .spec("  - match: { pathPrefix: /charge, method: POST }")
            .spec("    retry: { nonIdempotent: always }")
            .spec("  - match: { pathPrefix: /safe }")
            .spec("    idempotent: true")
            .to_yaml(),
    )
    .await;
    let http = client::http1_client(sidecar.outbound());
    for (method, path, want) in [
        (Method::POST, "/charge/1", 3),
        (Method::POST, "/chargeback", 1),
        (Method::POST, "/safe/x", 3),
        (Method::POST, "/other", 1),
        (Method::GET, "/charge/2", 3),
        (Method::PATCH, "/charge/3", 1),
    ] {
        let uri = format!("http://echo{path}");
        assert_eq!(
            attempts(&http, &upstream, method.clone(), &uri, 503).await,
            want,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_routes_timeouts_replace_the_upstreams() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(
        policy::upstream("echo", upstream.addr())
            .spec("timeouts: { request: 5s }")
            .spec("routes:")
            .spec("  - match: { path: /quick }")
            .spec("    timeouts: { request: 200ms }")
            .to_yaml(),
    )
    .await;
    let http = client::http1_client(sidecar.outbound());
    let res = client::send(&http, Fault::new().delay_ms(3000).get("http://echo/quick")).await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.header("x-bulwark-error"), Some("deadline-exceeded"));
    assert_eq!(
        res.text(),
        "deadline of 200ms exceeded before echo answered\n"
    );
    // `path` is exact: /quick/1 keeps the upstream's 5s.
    let res = client::send(
        &http,
        Fault::new().delay_ms(400).get("http://echo/status/200"),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let res = client::send(&http, Fault::new().delay_ms(400).get("http://echo/quick/1")).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "served, after the delay");
}

#[tokio::test]
async fn grpc_method_routes_beat_service_routes() {
    let upstream = GrpcUpstream::start().await;
    let sidecar = sidecar(
        policy::upstream("echo", upstream.addr())
            .protocol("grpc")
            .spec("retry: { maxAttempts: 2, retryOn: [grpc-unavailable], nonIdempotent: always, backoff: { initial: 5ms } }")
            .spec("routes:")
            .spec("  - match: { grpcMethod: /bulwark.test.v1.Other/ }")
            .spec("    retry: { maxAttempts: 3 }")
            .spec("  - match: { grpcMethod: /bulwark.test.v1.Other/Special }")
            .spec("    retry: { maxAttempts: 4 }")
            .spec("  - match: { grpcMethod: /bulwark.test.v1.Echo/Unary }")
            .spec("    retry: { maxAttempts: 5 }")
            .to_yaml(),
    )
    .await;
    let h2 = client::h2c_client(sidecar.outbound());
    for (path, want) in [
        ("/bulwark.test.v1.Echo/Unary", 5),
        ("/bulwark.test.v1.Other/Special", 4),
        ("/bulwark.test.v1.Other/Call", 3),
        ("/bulwark.test.v1.Third/Call", 2),
    ] {
        let mut req = grpc_wire::unary("echo", path, &EchoRequest::default(), &[]);
        Fault::new()
            .grpc(Code::Unavailable)
            .key(path)
            .insert_into(req.headers_mut());
        let res = client::send(&h2, req).await;
        assert_eq!(
            grpc_wire::status(&res).map(|s| s.0),
            Some(Code::Unavailable as i32),
            "{path}"
        );
        assert_eq!(upstream.attempts_for(path), want, "{path}");
    }
}
