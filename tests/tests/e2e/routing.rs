//! Routing: which UpstreamPolicy a request's `:authority` / `Host` names (`name`,
//! `name.namespace`, the cluster FQDN, port ignored, own namespace first), per-upstream local
//! ports, and the exact answers for an authority nothing matches (HTTP and gRPC).

use bulwark_tests::client::{self, empty, request};
use bulwark_tests::grpc_wire;
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::{GrpcUpstream, HttpUpstream, Sidecar, policy};
use http::{Method, StatusCode};
use tonic::Code;

const NO_ROUTE_HOST: &str = "nowhere:8080";

#[tokio::test]
async fn unknown_authority_gets_503_no_route() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
        .start()
        .await;

    let http1 = client::http1_client(sidecar.outbound());
    let res = client::get(&http1, &format!("http://{NO_ROUTE_HOST}/status/200")).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("x-bulwark-error"), Some("no-route"));
    assert_eq!(
        res.text(),
        "no UpstreamPolicy matches authority \"nowhere:8080\"\n"
    );

    let h2 = client::h2c_client(sidecar.outbound());
    let res = client::get(&h2, "http://nowhere/headers").await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("x-bulwark-error"), Some("no-route"));
    assert_eq!(
        res.text(),
        "no UpstreamPolicy matches authority \"nowhere\"\n"
    );
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn unknown_authority_gets_grpc_unavailable_trailers_only() {
    let upstream = GrpcUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(
            policy::upstream("echo", upstream.addr())
                .protocol("grpc")
                .to_yaml(),
        )
        .start()
        .await;

    let h2 = client::h2c_client(sidecar.outbound());
    let res = client::send(
        &h2,
        grpc_wire::unary(
            "nowhere",
            "/bulwark.test.v1.Echo/Unary",
            &EchoRequest::default(),
            &[],
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(grpc_wire::is_trailers_only(&res), "trailers-only: {res:?}");
    assert_eq!(
        grpc_wire::status(&res),
        Some((
            Code::Unavailable as i32,
            "no UpstreamPolicy matches authority \"nowhere\"".to_string()
        ))
    );

    let mut echo = client::grpc_client_for(sidecar.outbound(), "nowhere:9090").await;
    let status = echo
        .unary(EchoRequest::default())
        .await
        .expect_err("no route");
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unavailable,
            "no UpstreamPolicy matches authority \"nowhere:9090\""
        )
    );
    assert_eq!(upstream.requests(), 0);
}

/// `echo` in `default` and `echo` in `payments`, each its own upstream.
async fn two_namespaces(sidecar_namespace: Option<&str>) -> (HttpUpstream, HttpUpstream, Sidecar) {
    let in_default = HttpUpstream::start().await;
    let in_payments = HttpUpstream::start().await;
    let mut builder = Sidecar::builder().policies_yaml(policy::documents([
        policy::upstream("echo", in_default.addr()).to_yaml(),
        policy::upstream("echo", in_payments.addr())
            .namespace("payments")
            .to_yaml(),
    ]));
    if let Some(ns) = sidecar_namespace {
        builder = builder.args(["--namespace", ns]);
    }
    (in_default, in_payments, builder.start().await)
}

#[tokio::test]
async fn name_namespace_and_fqdn_forms_route() {
    let (in_default, in_payments, sidecar) = two_namespaces(None).await;
    let http = client::http1_client(sidecar.outbound());
    let cases = [
        ("echo", 1, 0),
        ("echo:8080", 2, 0),
        ("echo.default", 3, 0),
        ("echo.default.svc.cluster.local", 4, 0),
        ("echo.default.svc.cluster.local:80", 5, 0),
        ("echo.payments", 5, 1),
        ("echo.payments:8080", 5, 2),
        ("echo.payments.svc.cluster.local", 5, 3),
        ("echo.payments.svc.cluster.local:8443", 5, 4),
    ];
    for (authority, want_default, want_payments) in cases {
        let res = client::get(&http, &format!("http://{authority}/status/200")).await;
        assert_eq!(res.status, StatusCode::OK, "{authority}: {}", res.text());
        assert_eq!(
            (in_default.requests(), in_payments.requests()),
            (want_default, want_payments),
            "after {authority}"
        );
    }
    for unknown in ["echo.nowhere", "other.payments"] {
        let res = client::get(&http, &format!("http://{unknown}/status/200")).await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{unknown}");
        assert_eq!(
            res.text(),
            format!("no UpstreamPolicy matches authority \"{unknown}\"\n")
        );
    }
}

#[tokio::test]
async fn a_bare_name_prefers_the_sidecars_own_namespace() {
    let (in_default, in_payments, sidecar) = two_namespaces(Some("payments")).await;
    let http = client::http1_client(sidecar.outbound());
    assert_eq!(
        client::get(&http, "http://echo/status/200").await.status,
        200
    );
    assert_eq!((in_default.requests(), in_payments.requests()), (0, 1));
    assert_eq!(
        client::get(&http, "http://echo.default/status/200")
            .await
            .status,
        200
    );
    assert_eq!((in_default.requests(), in_payments.requests()), (1, 1));
}

#[tokio::test]
async fn a_per_upstream_port_routes_everything_to_its_upstream() {
    let http_upstream = HttpUpstream::start().await;
    let grpc_upstream = GrpcUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::documents([
            policy::upstream("web", http_upstream.addr()).to_yaml(),
            policy::upstream("echo", grpc_upstream.addr())
                .protocol("grpc")
                .to_yaml(),
        ]))
        .args(["--upstream-port", "127.0.0.1:0=web"])
        .args(["--upstream-port", "127.0.0.1:0=echo"])
        .start()
        .await;
    let web_port = sidecar.port("web");
    let echo_port = sidecar.port("echo");
    assert_ne!(web_port, echo_port);
    assert_ne!(web_port, sidecar.outbound());

    // Whatever the Host says, the port decides.
    let http = client::http1_client(web_port);
    let req = request(Method::GET, "http://localhost:1234/headers")
        .body(empty())
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["headers"]["host"][0], "localhost:1234");
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(http_upstream.requests(), 2);
    assert_eq!(grpc_upstream.requests(), 0);

    let mut echo = client::grpc_client_for(echo_port, "127.0.0.1").await;
    let reply = echo
        .unary(EchoRequest {
            message: "via port".into(),
            ..Default::default()
        })
        .await
        .expect("unary via the echo port");
    assert_eq!(reply.get_ref().message, "via port");
    assert_eq!(grpc_upstream.requests(), 1);
}
