//! The admin listener (health, Prometheus metrics — classified by status, gRPC status and the
//! breaker's rules — the applied config) and hot reload of the
//! policy file: a new upstream appears without a restart, an invalid file is refused with its
//! validation error logged and the running policies kept.

use std::time::Duration;

use bulwark_tests::client::{self, HttpClient};
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::{GrpcUpstream, HttpUpstream, Sidecar, eventually, metrics, policy};
use http::StatusCode;
use tonic::{Code, IntoRequest};

/// Reloads poll every 100 ms; allow a generous multiple for a loaded machine.
const RELOAD_WAIT: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn health_endpoints_answer() {
    let sidecar = Sidecar::builder().start().await;
    let live = sidecar.admin_get("/health/live").await;
    assert_eq!(
        (live.status, live.text().as_str()),
        (StatusCode::OK, "live\n")
    );
    let ready = sidecar.admin_get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
}

#[tokio::test]
async fn the_health_listener_serves_probes_and_metrics_and_nothing_of_the_admin_listener() {
    let sidecar = Sidecar::builder()
        .args(["--health", "127.0.0.1:0"])
        .start()
        .await;
    let health = sidecar
        .ready()
        .health
        .expect("the health listener is bound");
    let http = client::http1_client(health);
    let ready = client::get(&http, &format!("http://{health}/health/ready")).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let live = client::get(&http, &format!("http://{health}/health/live")).await;
    assert_eq!(
        (live.status, live.text().as_str()),
        (StatusCode::OK, "live\n")
    );
    let metrics = client::get(&http, &format!("http://{health}/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.text().contains("bulwark_"), "{}", metrics.text());
    for private in ["/config", "/breakers", "/identity", "/capabilities"] {
        let answer = client::get(&http, &format!("http://{health}{private}")).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{private}");
        assert_eq!(
            answer.text(),
            format!(
                "{private} is not served on the health listener (only /health/live, /health/ready, /metrics); the admin listener serves it on loopback\n"
            )
        );
    }
    // The admin listener still serves everything.
    assert_eq!(sidecar.admin_get("/config").await.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_requests_by_upstream_protocol_and_status_class() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    for _ in 0..5 {
        assert_eq!(
            client::get(&http, "http://echo/status/200").await.status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            client::get(&http, "http://echo/status/404").await.status,
            404
        );
    }
    assert_eq!(
        client::get(&http, "http://echo/status/503").await.status,
        503
    );

    let outbound_echo_http1 = |class: &'static str| {
        [
            ("direction", "outbound"),
            ("upstream", "echo"),
            ("protocol", "http1"),
            ("status_class", class),
        ]
    };
    let text = eventually(WAIT, || async {
        let res = sidecar.admin_get("/metrics").await;
        let text = res.text();
        (res.status == StatusCode::OK
            && metrics::value(&text, "bulwark_requests_total", &outbound_echo_http1("5xx"))
                == Some(1.0))
        .then_some(text)
    })
    .await;
    assert_eq!(
        metrics::value(&text, "bulwark_requests_total", &outbound_echo_http1("2xx")),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        metrics::value(&text, "bulwark_requests_total", &outbound_echo_http1("4xx")),
        Some(2.0),
        "{text}"
    );
    let durations: f64 = metrics::parse(&text)
        .iter()
        .filter(|s| s.name == "bulwark_request_duration_seconds_count")
        .filter(|s| s.labels.get("upstream").is_none_or(|u| u == "echo"))
        .map(|s| s.value)
        .sum();
    assert_eq!(durations, 8.0, "one duration per request: {text}");
    assert!(
        text.contains("bulwark_request_duration_seconds_bucket"),
        "a histogram: {text}"
    );
    metrics::assert_build_and_process(&text);
    // The client's pooled keep-alive connection is still open.
    let active = metrics::value(
        &text,
        "bulwark_active_connections",
        &[("listener", "outbound")],
    )
    .expect("bulwark_active_connections{listener=\"outbound\"}");
    assert!(active >= 1.0, "{text}");
    drop(http);
}

/// A gRPC call that ends with UNAVAILABLE is counted with its code and as a failure (not as
/// the 2xx its HTTP status says), one that ends OK as a success, one that ends NOT_FOUND (the
/// caller's doing) as a success with its code; a request that matches no upstream is counted
/// too, under `upstream=""`; and the latency histogram is split by classification.
#[tokio::test]
async fn metrics_classify_grpc_statuses_and_count_unrouted_requests() {
    let healthy = GrpcUpstream::start().await;
    let broken = GrpcUpstream::builder()
        .always_fail(Code::Unavailable)
        .start()
        .await
        .expect("gRPC upstream");
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::documents([
            policy::upstream("echo", healthy.addr())
                .protocol("grpc")
                .to_yaml(),
            policy::upstream("broken", broken.addr())
                .protocol("grpc")
                .spec("retry: { maxAttempts: 1 }")
                .to_yaml(),
            // Same name, another namespace: its own series.
            policy::upstream("echo", healthy.addr())
                .namespace("shop")
                .protocol("grpc")
                .to_yaml(),
        ]))
        .start()
        .await;
    let mut echo = client::grpc_client_for(sidecar.outbound(), "echo").await;
    for _ in 0..2 {
        echo.unary(EchoRequest::default()).await.expect("OK");
    }
    let mut missing = EchoRequest::default().into_request();
    missing
        .metadata_mut()
        .insert("x-fault-grpc", "5".parse().expect("metadata"));
    let status = echo.unary(missing).await.expect_err("NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let mut shop_echo = client::grpc_client_for(sidecar.outbound(), "echo.shop").await;
    shop_echo.unary(EchoRequest::default()).await.expect("OK");
    let mut broken_client = client::grpc_client_for(sidecar.outbound(), "broken").await;
    for _ in 0..3 {
        let status = broken_client
            .unary(EchoRequest::default())
            .await
            .expect_err("UNAVAILABLE");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let http = client::http1_client(sidecar.outbound());
    assert_eq!(
        client::get(&http, "http://nowhere/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let grpc = |upstream: &'static str, code: &'static str, classification: &'static str| {
        let (upstream, namespace) = upstream.split_once('.').unwrap_or((upstream, "default"));
        [
            ("direction", "outbound"),
            ("upstream", upstream),
            ("namespace", namespace),
            ("protocol", "grpc"),
            ("status_class", "2xx"),
            ("grpc_status", code),
            ("classification", classification),
        ]
    };
    let unrouted = [
        ("direction", "outbound"),
        ("upstream", ""),
        ("protocol", "http1"),
        ("status_class", "5xx"),
        ("grpc_status", ""),
        ("classification", "failure"),
    ];
    let text = eventually(WAIT, || async {
        let text = sidecar.admin_get("/metrics").await.text();
        (metrics::value(&text, "bulwark_requests_total", &unrouted) == Some(1.0)).then_some(text)
    })
    .await;
    for (labels, count) in [
        (grpc("broken", "UNAVAILABLE", "failure"), 3.0),
        (grpc("echo", "OK", "success"), 2.0),
        (grpc("echo", "NOT_FOUND", "success"), 1.0),
        (grpc("echo.shop", "OK", "success"), 1.0),
    ] {
        assert_eq!(
            metrics::value(&text, "bulwark_requests_total", &labels),
            Some(count),
            "{labels:?}:\n{text}"
        );
    }
    for (label, n) in [("success", Some(0.0)), ("failure", Some(3.0))] {
        assert_eq!(
            metrics::value(
                &text,
                "bulwark_request_duration_seconds_count",
                &[("upstream", "broken"), ("classification", label)]
            ),
            n,
            "{text}"
        );
    }
}

#[tokio::test]
async fn config_shows_the_applied_policies() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
        .start()
        .await;
    let config = sidecar.admin_get("/config").await;
    assert_eq!(config.status, StatusCode::OK);
    let config = config.json();
    assert!(config["version"].is_string(), "{config}");
    assert!(config["source"].is_string(), "{config}");
    let resources = config["resources"].as_array().expect("resources");
    assert_eq!(resources.len(), 1, "{config}");
    assert_eq!(resources[0]["kind"], "UpstreamPolicy");
    assert_eq!(resources[0]["metadata"]["name"], "echo");
    assert_eq!(
        resources[0]["spec"]["endpoints"]["static"],
        serde_json::json!([upstream.addr().to_string()])
    );
}

async fn config_version(sidecar: &Sidecar) -> String {
    let config = sidecar.admin_get("/config").await.json();
    config["version"]
        .as_str()
        .expect("a version string")
        .to_string()
}

async fn status_of(http: &HttpClient, uri: &str) -> StatusCode {
    client::get(http, uri).await.status
}

#[tokio::test]
async fn a_new_upstream_appears_without_a_restart() {
    let first = HttpUpstream::start().await;
    let second = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", first.addr()).to_yaml())
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    assert_eq!(
        status_of(&http, "http://echo2/status/200").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let before = config_version(&sidecar).await;

    sidecar.write_policies(&policy::documents([
        policy::upstream("echo", first.addr()).to_yaml(),
        policy::upstream("echo2", second.addr()).to_yaml(),
    ]));
    eventually(RELOAD_WAIT, || async {
        (status_of(&http, "http://echo2/status/200").await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(second.requests_to("/status/200"), 1);
    let after = config_version(&sidecar).await;
    assert_ne!(before, after, "a reload changes the version");
    let config = sidecar.admin_get("/config").await.json();
    assert_eq!(config["resources"].as_array().map(Vec::len), Some(2));

    // And an upstream can go away the same way.
    sidecar.write_policies(&policy::upstream("echo2", second.addr()).to_yaml());
    eventually(RELOAD_WAIT, || async {
        (status_of(&http, "http://echo/status/200").await == StatusCode::SERVICE_UNAVAILABLE)
            .then_some(())
    })
    .await;
    assert_ne!(config_version(&sidecar).await, after);
    assert_eq!(
        status_of(&http, "http://echo2/status/200").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_invalid_file_is_refused_and_the_old_policies_kept() {
    let first = HttpUpstream::start().await;
    let second = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", first.addr()).to_yaml())
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    let version = config_version(&sidecar).await;

    // Valid YAML, invalid policy: what the sidecar must log is the validator's own message.
    let invalid = policy::documents([
        policy::upstream("echo", first.addr())
            .spec("retry: { maxAttempts: 0 }")
            .to_yaml(),
        policy::upstream("echo2", second.addr()).to_yaml(),
    ]);
    let error = bulwark_proto::policy::parse_yaml(&invalid)
        .expect("the file parses")
        .iter()
        .find_map(|r| r.validate().err())
        .expect("the file is invalid");
    let field_error = error.errors[0].to_string();
    assert!(
        field_error.starts_with("spec.retry.maxAttempts"),
        "{field_error}"
    );
    sidecar.write_policies(&invalid);
    eventually(RELOAD_WAIT, || async {
        sidecar.logs_contain(&field_error).then_some(())
    })
    .await;

    assert_eq!(
        config_version(&sidecar).await,
        version,
        "nothing was applied"
    );
    assert_eq!(
        status_of(&http, "http://echo2/status/200").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status_of(&http, "http://echo/status/200").await,
        StatusCode::OK
    );
    assert_eq!(second.requests(), 0);

    // Not YAML at all: refused the same way.
    let broken = "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: [unclosed\n";
    let load_error = bulwark_proto::policy::parse_yaml(broken)
        .expect_err("not YAML")
        .to_string();
    sidecar.write_policies(broken);
    eventually(RELOAD_WAIT, || async {
        sidecar.logs_contain(&load_error).then_some(())
    })
    .await;
    assert_eq!(config_version(&sidecar).await, version);
    assert_eq!(
        status_of(&http, "http://echo/status/200").await,
        StatusCode::OK
    );

    // A good file after bad ones is applied.
    sidecar.write_policies(&policy::documents([
        policy::upstream("echo", first.addr()).to_yaml(),
        policy::upstream("echo2", second.addr()).to_yaml(),
    ]));
    eventually(RELOAD_WAIT, || async {
        (status_of(&http, "http://echo2/status/200").await == StatusCode::OK).then_some(())
    })
    .await;
    assert_ne!(config_version(&sidecar).await, version);
    assert_eq!(
        sidecar.admin_get("/health/ready").await.status,
        StatusCode::OK
    );
}
