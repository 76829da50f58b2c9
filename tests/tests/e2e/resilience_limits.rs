//! Bulkheads through the sidecar (`limits`): past `maxConcurrent` in flight and `maxPending`
//! waiting, a request is refused at once with 503 `bulkhead-full` (gRPC RESOURCE_EXHAUSTED)
//! without reaching the upstream; a waiting one goes ahead when a slot frees; the metric counts
//! the refusals.

use std::time::Duration;

use bulwark_tests::client;
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::{GrpcUpstream, HttpUpstream, Sidecar, eventually, policy};
use http::StatusCode;
use tokio::time::Instant;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn past_max_concurrent_requests_are_refused_at_once() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(
            policy::upstream("echo", upstream.addr())
                .spec("limits: { maxConcurrent: 2, maxPending: 0 }")
                .to_yaml(),
        )
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    let held: Vec<_> = (1..=2)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move { client::get(&http, "http://echo/gate").await })
        })
        .collect();
    eventually(WAIT, || async {
        (upstream.requests_to("/gate") == 2).then_some(())
    })
    .await;

    for client in [http.clone(), client::h2c_client(sidecar.outbound())] {
        let started = Instant::now();
        let res = client::get(&client, "http://echo/status/200").await;
        assert_eq!(
            res.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            res.text()
        );
        assert_eq!(res.header("x-bulwark-error"), Some("bulkhead-full"));
        assert_eq!(
            res.text(),
            "upstream \"echo\" is at its concurrency limit (maxConcurrent 2, maxPending 0)\n"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );
    }
    let entry = sidecar.breaker_entry("echo").await.expect("echo listed");
    let bulkhead = &entry["bulkhead"];
    assert_eq!(
        (
            &bulkhead["inFlight"],
            &bulkhead["maxConcurrent"],
            &bulkhead["maxPending"]
        ),
        (&2.into(), &2.into(), &0.into()),
        "{entry}"
    );
    assert_eq!(upstream.requests_to("/status/200"), 0);
    sidecar
        .await_metric(
            "bulwark_bulkhead_rejections_total",
            &[("upstream", "echo")],
            2.0,
            WAIT,
        )
        .await;

    upstream.open_gate();
    for call in held {
        assert_eq!(call.await.expect("join").status, StatusCode::OK);
    }
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::OK, "the slots are free again");
}

#[tokio::test]
async fn a_pending_request_waits_for_a_free_slot() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(
            policy::upstream("echo", upstream.addr())
                .spec("limits: { maxConcurrent: 1, maxPending: 1 }")
                .to_yaml(),
        )
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    let held = {
        let http = http.clone();
        tokio::spawn(async move { client::get(&http, "http://echo/gate").await })
    };
    eventually(WAIT, || async {
        (upstream.requests_to("/gate") == 1).then_some(())
    })
    .await;

    // Two more: one may wait, the other is refused — whichever the sidecar saw second.
    let more: Vec<_> = [201, 202]
        .into_iter()
        .map(|status| {
            let http = http.clone();
            tokio::spawn(async move {
                client::get(&http, &format!("http://echo/status/{status}")).await
            })
        })
        .collect();
    let refused = eventually(WAIT, || async {
        more.iter().position(|call| call.is_finished())
    })
    .await;
    let mut more = more;
    let refused_call = more.remove(refused);
    let res = refused_call.await.expect("join");
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("x-bulwark-error"), Some("bulkhead-full"));
    let waiting = more.pop().expect("the other one");
    assert!(!waiting.is_finished(), "it waits for the slot");
    assert_eq!(
        upstream.requests_to("/status/201") + upstream.requests_to("/status/202"),
        0
    );

    upstream.open_gate();
    assert_eq!(held.await.expect("join").status, StatusCode::OK);
    let res = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting request goes ahead")
        .expect("join");
    assert!(res.status.is_success(), "{}", res.status);
}

#[tokio::test]
async fn grpc_callers_get_resource_exhausted() {
    let upstream = GrpcUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(
            policy::upstream("echo", upstream.addr())
                .protocol("grpc")
                .spec("limits: { maxConcurrent: 2, maxPending: 0 }")
                .to_yaml(),
        )
        .start()
        .await;
    let echo = client::grpc_client(sidecar.outbound()).await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut echo = echo.clone();
            tokio::spawn(async move { echo.hold(EchoRequest::default()).await })
        })
        .collect();
    eventually(WAIT, || async {
        (upstream.requests_to("/bulwark.test.v1.Echo/Hold") == 2).then_some(())
    })
    .await;

    let status = echo
        .clone()
        .unary(EchoRequest::default())
        .await
        .expect_err("the bulkhead is full");
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::ResourceExhausted,
            "upstream \"echo\" is at its concurrency limit (maxConcurrent 2, maxPending 0)"
        )
    );
    assert_eq!(upstream.requests_to("/bulwark.test.v1.Echo/Unary"), 0);
    sidecar
        .await_metric(
            "bulwark_bulkhead_rejections_total",
            &[("upstream", "echo")],
            1.0,
            WAIT,
        )
        .await;

    // Cancelled calls give their slots back.
    for call in held {
        call.abort();
        let _ = call.await;
    }
    eventually(WAIT, || async {
        echo.clone().unary(EchoRequest::default()).await.ok()
    })
    .await;
}

/// `spec.inbound.maxConcurrent` of the own ServicePolicy bounds the requests in flight to the
/// app: past it, callers are refused at once (503 / RESOURCE_EXHAUSTED) and the app never sees
/// them; a slot frees when a response ends.
#[tokio::test]
async fn the_apps_inbound_limit_refuses_callers_past_it() {
    let app = HttpUpstream::start().await;
    let grpc_app = GrpcUpstream::start().await;
    let service = |port: u16, protocol: &str| {
        format!(
            "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  app: {{ port: {port}, protocol: {protocol} }}\n  inbound: {{ maxConcurrent: 1 }}\n"
        )
    };
    let sidecar = Sidecar::builder()
        .policies_yaml(service(app.addr().port(), "auto"))
        .args(["--service", "orders", "--namespace", "shop"])
        .start()
        .await;
    let http = client::http1_client(sidecar.inbound());
    let held = {
        let http = http.clone();
        tokio::spawn(async move { client::get(&http, "http://orders/gate").await })
    };
    eventually(WAIT, || async {
        (app.requests_to("/gate") == 1).then_some(())
    })
    .await;

    let res = client::get(&http, "http://orders/status/200").await;
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        res.text()
    );
    assert_eq!(res.header("x-bulwark-error"), Some("bulkhead-full"));
    assert_eq!(
        res.text(),
        "shop/orders is at its inbound concurrency limit (spec.inbound.maxConcurrent 1)\n"
    );
    assert_eq!(app.requests_to("/status/200"), 0, "the app never saw it");
    sidecar
        .await_metric(
            "bulwark_bulkhead_rejections_total",
            &[("direction", "inbound"), ("upstream", "orders")],
            1.0,
            WAIT,
        )
        .await;

    app.open_gate();
    assert_eq!(held.await.expect("join").status, StatusCode::OK);
    let res = client::get(&http, "http://orders/status/200").await;
    assert_eq!(res.status, StatusCode::OK, "the slot is free again");

    // gRPC callers of a gRPC app are told RESOURCE_EXHAUSTED.
    sidecar.write_policies(&service(grpc_app.addr().port(), "grpc"));
    sidecar
        .await_metric(
            "bulwark_policy_reloads_total",
            &[("result", "applied")],
            2.0,
            WAIT,
        )
        .await;
    let echo = client::grpc_client(sidecar.inbound()).await;
    let hold = {
        let mut echo = echo.clone();
        tokio::spawn(async move { echo.hold(EchoRequest::default()).await })
    };
    eventually(WAIT, || async {
        (grpc_app.requests_to("/bulwark.test.v1.Echo/Hold") == 1).then_some(())
    })
    .await;
    let status = echo
        .clone()
        .unary(EchoRequest::default())
        .await
        .expect_err("the app is at its limit");
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::ResourceExhausted,
            "shop/orders is at its inbound concurrency limit (spec.inbound.maxConcurrent 1)"
        )
    );
    assert_eq!(grpc_app.requests_to("/bulwark.test.v1.Echo/Unary"), 0);
    hold.abort();
}
