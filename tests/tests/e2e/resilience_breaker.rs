//! The circuit breaker through the sidecar: it opens on the failure rate over `minRequests`
//! counting only `failureOn` outcomes, fails fast with the exact answer without reaching the
//! upstream (HTTP and gRPC), half-opens after `openFor` with exactly `halfOpenProbes` let
//! through, closes on their success or reopens for twice as long on a failure; `/breakers` and
//! the metrics follow; and a policy reload that leaves `circuitBreaker` alone keeps its state.

use std::time::Duration;

use bulwark_tests::client::{self, HttpClient};
use bulwark_tests::fault::refused_addr;
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::{Fault, GrpcUpstream, HttpUpstream, Sidecar, eventually, grpc_wire, policy};
use http::StatusCode;
use tokio::time::Instant;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);
const RELOAD_WAIT: Duration = Duration::from_secs(10);
const OPEN_FOR: Duration = Duration::from_secs(1);

fn breaker(open_for: &str, probes: u32) -> String {
    format!(
        "circuitBreaker: {{ window: 10s, buckets: 10, minRequests: 4, failureRate: 50%, openFor: {open_for}, halfOpenProbes: {probes} }}"
    )
}

async fn sidecar(policies: &[String]) -> Sidecar {
    Sidecar::builder()
        .policies_yaml(policy::documents(policies))
        .start()
        .await
}

/// `n` requests the upstream answers 503.
async fn fail(http: &HttpClient, authority: &str, n: usize) {
    for _ in 0..n {
        let res = client::send(
            http,
            Fault::new()
                .status(503)
                .get(&format!("http://{authority}/status/200")),
        )
        .await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.header("x-bulwark-error"), None, "{:?}", res.headers);
        assert_eq!(res.header("x-bulwark-upstream"), Some(authority));
    }
}

fn assert_breaker_open_answer(res: &client::Collected, upstream: &str, reason: &str) {
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        res.text()
    );
    assert_eq!(res.header("x-bulwark-error"), Some("breaker-open"));
    assert_eq!(res.header("x-bulwark-breaker"), Some("open"));
    assert_eq!(
        res.text(),
        format!("circuit breaker of upstream \"{upstream}\" is open: {reason}\n")
    );
}

#[tokio::test]
async fn an_open_breaker_fails_fast_without_reaching_the_upstream() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec(&breaker("30s", 2))
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    assert_eq!(
        sidecar.breaker_state("echo").await.as_deref(),
        Some("closed")
    );

    fail(&http, "echo", 4).await;
    sidecar.await_breaker_state("echo", "open", WAIT).await;
    assert_eq!(upstream.requests(), 4);

    for client in [http.clone(), client::h2c_client(sidecar.outbound())] {
        let started = Instant::now();
        let res = client::get(&client, "http://echo/status/200").await;
        assert_breaker_open_answer(
            &res,
            "echo",
            "failure rate 100% >= 50% over 4 requests in 10s",
        );
        assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
    }
    assert_eq!(upstream.requests(), 4, "nothing reached the upstream");

    let entry = sidecar.breaker_entry("echo").await.expect("echo listed");
    assert_eq!(entry["namespace"], "default", "{entry}");
    assert_eq!(entry["breaker"]["state"], "open", "{entry}");
    assert!(entry["outlier"].is_null(), "no outlierDetection: {entry}");
    let echo = [("upstream", "echo")];
    sidecar
        .await_metric("bulwark_breaker_state", &echo, 1.0, WAIT)
        .await;
    sidecar
        .await_metric(
            "bulwark_breaker_transitions_total",
            &[("upstream", "echo"), ("to", "open")],
            1.0,
            WAIT,
        )
        .await;
    sidecar
        .await_metric("bulwark_breaker_rejections_total", &echo, 2.0, WAIT)
        .await;
}

#[tokio::test]
async fn half_open_lets_exactly_the_probes_through_then_closes() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec(&breaker("1s", 2))
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    fail(&http, "echo", 4).await;
    let opened = Instant::now();
    sidecar.await_breaker_state("echo", "open", WAIT).await;
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.header("x-bulwark-error"), Some("breaker-open"));

    sidecar.await_breaker_due("echo", OPEN_FOR, WAIT).await;
    // Probe 1 moves the breaker to half-open; it and probe 2 wait at the gate.
    let mut probes = Vec::new();
    for n in 1..=2 {
        let http = http.clone();
        probes.push(tokio::spawn(async move {
            client::get(&http, "http://echo/gate").await
        }));
        eventually(WAIT, || async {
            (upstream.requests_to("/gate") == n).then_some(())
        })
        .await;
    }
    let first_probe = upstream
        .seen()
        .iter()
        .find(|s| s.path == "/gate")
        .expect("probe")
        .at;
    assert!(
        first_probe - opened >= OPEN_FOR - Duration::from_millis(50),
        "probe after {:?}",
        first_probe - opened
    );
    sidecar.await_breaker_state("echo", "half-open", WAIT).await;

    // A third request while both probes are out is refused.
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("x-bulwark-error"), Some("breaker-open"));
    assert_eq!(upstream.requests_to("/status/200"), 4);

    upstream.open_gate();
    for probe in probes {
        let res = probe.await.expect("join");
        assert_eq!(res.status, StatusCode::OK);
    }
    sidecar.await_breaker_state("echo", "closed", WAIT).await;
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(upstream.requests_to("/status/200"), 5);

    let to = |state: &'static str| [("upstream", "echo"), ("to", state)];
    for state in ["open", "half-open", "closed"] {
        sidecar
            .await_metric("bulwark_breaker_transitions_total", &to(state), 1.0, WAIT)
            .await;
    }
    sidecar
        .await_metric("bulwark_breaker_state", &[("upstream", "echo")], 0.0, WAIT)
        .await;
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker_for_twice_as_long() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec(&breaker("1s", 1))
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    fail(&http, "echo", 4).await;
    sidecar.await_breaker_state("echo", "open", WAIT).await;

    sidecar.await_breaker_due("echo", OPEN_FOR, WAIT).await;
    fail(&http, "echo", 1).await;
    let reopened = Instant::now();
    sidecar.await_breaker_state("echo", "open", WAIT).await;
    assert_eq!(upstream.requests(), 5);
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.header("x-bulwark-error"), Some("breaker-open"));
    assert_eq!(upstream.requests(), 5);

    // The second trip in a row opens for 2 × openFor.
    sidecar.await_breaker_due("echo", 2 * OPEN_FOR, WAIT).await;
    let waited = reopened.elapsed();
    assert!(
        waited >= 2 * OPEN_FOR - Duration::from_millis(50),
        "due again after {waited:?}"
    );
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::OK, "the probe succeeds");
    sidecar.await_breaker_state("echo", "closed", WAIT).await;
    sidecar
        .await_metric(
            "bulwark_breaker_transitions_total",
            &[("upstream", "echo"), ("to", "open")],
            2.0,
            WAIT,
        )
        .await;
}

#[tokio::test]
async fn min_requests_and_failure_on_decide_what_trips() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[
        policy::upstream("echo", upstream.addr())
            .spec(&breaker("30s", 1))
            .to_yaml(),
        policy::upstream("echo-4xx", upstream.addr())
            .spec(&breaker("30s", 1))
            .to_yaml(),
        policy::upstream("only-resets", upstream.addr())
            .spec("circuitBreaker: { minRequests: 4, failureRate: 50%, openFor: 30s, failureOn: [reset] }")
            .to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());

    // 3 failures are fewer than minRequests; the 4th request, a success, makes it 75% of 4.
    fail(&http, "echo", 3).await;
    assert_eq!(
        sidecar.breaker_state("echo").await.as_deref(),
        Some("closed")
    );
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::OK);
    sidecar.await_breaker_state("echo", "open", WAIT).await;
    let res = client::get(&http, "http://echo/status/200").await;
    assert_breaker_open_answer(
        &res,
        "echo",
        "failure rate 75% >= 50% over 4 requests in 10s",
    );

    // 4xx is not a failure by default; 5xx is not one when failureOn says only resets.
    for (status, authority) in [(404, "echo-4xx"), (500, "only-resets")] {
        let before = upstream.requests();
        for _ in 0..6 {
            let res = client::send(
                &http,
                Fault::new()
                    .status(status)
                    .get(&format!("http://{authority}/status/200")),
            )
            .await;
            assert_eq!(res.status.as_u16(), status, "{authority}");
        }
        assert_eq!(upstream.requests(), before + 6, "{authority}");
        assert_eq!(
            sidecar.breaker_state(authority).await.as_deref(),
            Some("closed"),
            "{authority}"
        );
    }
}

#[tokio::test]
async fn connect_failures_trip_the_breaker() {
    let sidecar = sidecar(&[policy::upstream("dead", refused_addr())
        .spec(&breaker("30s", 1))
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    for _ in 0..4 {
        let res = client::get(&http, "http://dead/status/200").await;
        assert_eq!(res.header("x-bulwark-error"), Some("connect-failure"));
    }
    sidecar.await_breaker_state("dead", "open", WAIT).await;
    let res = client::get(&http, "http://dead/status/200").await;
    assert_breaker_open_answer(
        &res,
        "dead",
        "failure rate 100% >= 50% over 4 requests in 10s",
    );
}

#[tokio::test]
async fn grpc_callers_get_unavailable_with_the_breakers_reason() {
    let upstream = GrpcUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .protocol("grpc")
        .spec("circuitBreaker: { window: 10s, minRequests: 4, failureRate: 50%, openFor: 30s, failureOn: [grpc-unavailable] }")
        .to_yaml()])
    .await;
    let h2 = client::h2c_client(sidecar.outbound());
    let call = || {
        let mut req = grpc_wire::unary(
            "echo",
            "/bulwark.test.v1.Echo/Unary",
            &EchoRequest::default(),
            &[],
        );
        Fault::new()
            .grpc(Code::Unavailable)
            .insert_into(req.headers_mut());
        req
    };
    for _ in 0..4 {
        let res = client::send(&h2, call()).await;
        assert_eq!(
            grpc_wire::status(&res),
            Some((Code::Unavailable as i32, "injected failure".to_string()))
        );
    }
    sidecar.await_breaker_state("echo", "open", WAIT).await;
    let res = client::send(&h2, call()).await;
    assert_eq!(
        grpc_wire::status(&res),
        Some((
            Code::Unavailable as i32,
            "circuit breaker of upstream \"echo\" is open: failure rate 100% >= 50% over 4 requests in 10s"
                .to_string()
        ))
    );
    assert_eq!(res.header("x-bulwark-error"), Some("breaker-open"));
    assert_eq!(res.header("x-bulwark-breaker"), Some("open"));
    assert_eq!(upstream.requests(), 4);

    // Through tonic as well.
    let mut echo = client::grpc_client(sidecar.outbound()).await;
    let status = echo
        .unary(EchoRequest::default())
        .await
        .expect_err("the breaker is open");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .starts_with("circuit breaker of upstream \"echo\" is open: "),
        "{status:?}"
    );
    assert_eq!(upstream.requests(), 4);
}

#[tokio::test]
async fn a_reload_keeps_the_breaker_unless_its_settings_change() {
    let upstream = HttpUpstream::start().await;
    let write = |circuit_breaker: &str, max_attempts: u32| {
        policy::upstream("echo", upstream.addr())
            .spec(circuit_breaker)
            .spec(&format!(
                "retry: {{ maxAttempts: {max_attempts}, backoff: {{ initial: 5ms }} }}"
            ))
            .to_yaml()
    };
    let settings = "circuitBreaker: { minRequests: 4, failureRate: 50%, openFor: 30s }";
    let sidecar = sidecar(&[write(settings, 1)]).await;
    let http = client::http1_client(sidecar.outbound());
    fail(&http, "echo", 4).await;
    sidecar.await_breaker_state("echo", "open", WAIT).await;
    let applied = |pointer: &'static str, want: serde_json::Value| {
        let sidecar = &sidecar;
        async move {
            eventually(RELOAD_WAIT, || async {
                let config = sidecar.admin_get("/config").await.json();
                (config["resources"][0]["spec"].pointer(pointer) == Some(&want)).then_some(())
            })
            .await
        }
    };

    // Only the retry block changes: the breaker stays open.
    sidecar.write_policies(&write(settings, 2));
    applied("/retry/maxAttempts", 2.into()).await;
    assert_eq!(sidecar.breaker_state("echo").await.as_deref(), Some("open"));
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.header("x-bulwark-error"), Some("breaker-open"));

    // Writing a default out is no change either.
    let explicit = "circuitBreaker: { minRequests: 4, failureRate: 50%, openFor: 30s, maxOpenFor: 5m, window: 10s }";
    sidecar.write_policies(&write(explicit, 2));
    applied("/circuitBreaker/maxOpenFor", "5m".into()).await;
    assert_eq!(sidecar.breaker_state("echo").await.as_deref(), Some("open"));
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.header("x-bulwark-error"), Some("breaker-open"));
    assert_eq!(upstream.requests(), 4);

    // New settings: a new breaker, closed.
    let changed = "circuitBreaker: { minRequests: 5, failureRate: 50%, openFor: 30s }";
    sidecar.write_policies(&write(changed, 2));
    applied("/circuitBreaker/minRequests", 5.into()).await;
    assert_eq!(
        sidecar.breaker_state("echo").await.as_deref(),
        Some("closed")
    );
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(upstream.requests(), 5);
}

/// Calls that succeed but take at least `slowCall.duration` open the breaker when their share
/// reaches `slowCall.rate`: the upstream answers too slowly to be worth waiting for.
#[tokio::test]
async fn slow_calls_open_the_breaker() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec("circuitBreaker: { window: 10s, minRequests: 2, slowCall: { duration: 200ms, rate: 50% }, openFor: 30s }")
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());

    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        sidecar.breaker_state("echo").await.as_deref(),
        Some("closed"),
        "one call is below minRequests"
    );
    let res = client::get(&http, "http://echo/slow/300").await;
    assert_eq!(res.status, StatusCode::OK, "a slow call still answers");
    sidecar.await_breaker_state("echo", "open", WAIT).await;

    let res = client::get(&http, "http://echo/status/204").await;
    assert_breaker_open_answer(
        &res,
        "echo",
        "slow-call rate 50% >= 50% (calls >= 200ms) over 2 requests in 10s",
    );
    assert_eq!(upstream.requests_to("/status/204"), 0, "failed fast");
    let entry = sidecar.breaker_entry("echo").await.expect("echo listed");
    assert_eq!(entry["breaker"]["slowCalls"], 1, "{entry}");
    assert_eq!(entry["breaker"]["failures"], 0, "{entry}");
}
