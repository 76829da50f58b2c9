//! Failover through the sidecar (`fallback`): when the primary fails after its own retries, or
//! its breaker is open, the failover targets are tried in order, each with its own policy, all
//! within the primary's deadline; the answer names the upstream that served it; when every one
//! fails, the static `response` (HTTP, or trailers-only for gRPC callers) is the answer.

use std::time::Duration;

use bulwark_tests::client::{self, full, request};
use bulwark_tests::fault::refused_addr;
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::{Fault, GrpcUpstream, HttpUpstream, Sidecar, eventually, grpc_wire, policy};
use http::{Method, StatusCode};
use tokio::time::Instant;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_millis(700);

async fn sidecar(policies: &[String]) -> Sidecar {
    Sidecar::builder()
        .policies_yaml(policy::documents(policies))
        .start()
        .await
}

async fn failing(status: u16) -> HttpUpstream {
    HttpUpstream::builder()
        .always_fail(status)
        .start()
        .await
        .expect("start")
}

/// The answer named no upstream, or the primary.
fn assert_upstream_header_absent_or(res: &client::Collected, primary: &str) {
    let named = res.header("x-bulwark-upstream");
    assert!(
        named.is_none() || named == Some(primary),
        "x-bulwark-upstream: {named:?}"
    );
}

#[tokio::test]
async fn failover_tries_the_targets_in_order_with_their_own_retries() {
    let a = failing(503).await;
    let b = failing(503).await;
    let c = HttpUpstream::start().await;
    let sidecar = sidecar(&[
        policy::upstream("echo", a.addr())
            .spec("retry: { maxAttempts: 2, retryOn: [5xx], backoff: { initial: 5ms } }")
            .spec("fallback: { failover: [b, c] }")
            .to_yaml(),
        policy::upstream("b", b.addr())
            .spec("retry: { maxAttempts: 3, retryOn: [5xx], backoff: { initial: 5ms } }")
            .to_yaml(),
        policy::upstream("c", c.addr()).to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());
    let res = client::get(&http, "http://echo/headers").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.header("x-bulwark-upstream"), Some("c"));
    assert_eq!((a.requests(), b.requests(), c.requests()), (2, 3, 1));
    let last_a = a.seen().last().expect("a").at;
    let first_b = b.seen().first().expect("b").at;
    let last_b = b.seen().last().expect("b").at;
    let first_c = c.seen().first().expect("c").at;
    assert!(last_a <= first_b && last_b <= first_c, "a, then b, then c");
    // Each target counts its attempts from 1 and is addressed by its own name.
    let attempts = |u: &HttpUpstream| u.seen().iter().map(|s| s.attempt).collect::<Vec<_>>();
    assert_eq!(attempts(&a), [Some(1), Some(2)]);
    assert_eq!(attempts(&b), [Some(1), Some(2), Some(3)]);
    assert_eq!(attempts(&c), [Some(1)]);
    assert_eq!(res.json()["headers"]["host"][0], "c");
    sidecar
        .await_metric(
            "bulwark_fallbacks_total",
            &[("upstream", "echo"), ("kind", "failover")],
            1.0,
            WAIT,
        )
        .await;

    // A request the primary serves is not failed over.
    let d = HttpUpstream::start().await;
    let sidecar = self::sidecar(&[
        policy::upstream("echo", d.addr())
            .spec("fallback: { failover: [c] }")
            .to_yaml(),
        policy::upstream("c", c.addr()).to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.header("x-bulwark-upstream"), Some("echo"));
    assert_eq!((d.requests(), c.requests()), (1, 1));
}

#[tokio::test]
async fn failover_judges_by_failure_on_not_retry_on() {
    let b = HttpUpstream::start().await;
    // Builder faults, not request headers: those would travel to b as well.
    let broken = failing(500).await;
    let conflict = failing(409).await;
    let sidecar = sidecar(&[
        policy::upstream("broken", broken.addr())
            .spec("fallback: { failover: [b] }")
            .to_yaml(),
        policy::upstream("conflict", conflict.addr())
            .spec("fallback: { failover: [b] }")
            .to_yaml(),
        policy::upstream("b", b.addr()).to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());
    // A 500 is not retried by the default retryOn, but the default failureOn has 5xx.
    let res = client::get(&http, "http://broken/status/200").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("x-bulwark-upstream"), Some("b"));
    assert_eq!((broken.requests(), b.requests()), (1, 1));
    // A 4xx is the caller's business: passed through.
    let res = client::get(&http, "http://conflict/status/200").await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    assert_eq!(res.header("x-bulwark-upstream"), Some("conflict"));
    assert_eq!((conflict.requests(), b.requests()), (1, 1));
}

#[tokio::test]
async fn an_unreachable_primary_fails_over_with_the_request_body() {
    let b = HttpUpstream::start().await;
    let sidecar = sidecar(&[
        policy::upstream("echo", refused_addr())
            .spec("fallback: { failover: [b] }")
            .to_yaml(),
        policy::upstream("b", b.addr()).to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("x-bulwark-upstream"), Some("b"));

    // A connection that was never made cannot have consumed the body: it goes to b whole.
    let req = request(Method::POST, "http://echo/echo")
        .body(full("order 42"))
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("x-bulwark-upstream"), Some("b"));
    assert_eq!(res.text(), "order 42");
}

#[tokio::test]
async fn grpc_fails_over_to_the_next_upstream() {
    let b = GrpcUpstream::start().await;
    let sidecar = sidecar(&[
        policy::upstream("echo", refused_addr())
            .protocol("grpc")
            .spec("fallback: { failover: [b] }")
            .to_yaml(),
        policy::upstream("b", b.addr()).protocol("grpc").to_yaml(),
    ])
    .await;
    let mut echo = client::grpc_client(sidecar.outbound()).await;
    let res = echo
        .unary(EchoRequest {
            message: "via b".into(),
            ..Default::default()
        })
        .await
        .expect("b answers");
    assert_eq!(res.get_ref().message, "via b");
    assert_eq!(
        res.metadata()
            .get("x-bulwark-upstream")
            .and_then(|v| v.to_str().ok()),
        Some("b")
    );
    assert_eq!(b.requests(), 1);
}

#[tokio::test]
async fn the_static_response_answers_when_every_target_failed() {
    let a = failing(503).await;
    let b = failing(502).await;
    let sidecar = sidecar(&[
        policy::upstream("echo", a.addr())
            .spec("fallback:")
            .spec("  failover: [b]")
            .spec("  response: { status: 503, body: \"payments temporarily unavailable\", headers: { x-reason: maintenance } }")
            .to_yaml(),
        policy::upstream("b", b.addr()).to_yaml(),
        // No failover list: the response straight after the primary.
        policy::upstream("queued", a.addr())
            .spec("fallback: { response: { status: 202, body: queued } }")
            .to_yaml(),
    ])
    .await;
    for http in [
        client::http1_client(sidecar.outbound()),
        client::h2c_client(sidecar.outbound()),
    ] {
        let res = client::get(&http, "http://echo/status/200").await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.text(), "payments temporarily unavailable");
        assert_eq!(res.header("x-reason"), Some("maintenance"));
        assert_eq!(
            res.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(res.header("x-bulwark-fallback"), Some("response"));
        assert_eq!(res.header("x-bulwark-error"), None);
        assert_upstream_header_absent_or(&res, "echo");
    }
    assert_eq!((a.requests(), b.requests()), (2, 2));

    let http = client::http1_client(sidecar.outbound());
    let res = client::get(&http, "http://queued/status/200").await;
    assert_eq!(
        (res.status, res.text().as_str()),
        (StatusCode::ACCEPTED, "queued")
    );
    assert_eq!(res.header("x-bulwark-fallback"), Some("response"));
    assert_upstream_header_absent_or(&res, "queued");
    assert_eq!(a.requests(), 3);

    let echo = [("upstream", "echo"), ("kind", "response")];
    sidecar
        .await_metric("bulwark_fallbacks_total", &echo, 2.0, WAIT)
        .await;
    sidecar
        .await_metric(
            "bulwark_fallbacks_total",
            &[("upstream", "queued"), ("kind", "response")],
            1.0,
            WAIT,
        )
        .await;
}

#[tokio::test]
async fn grpc_callers_get_the_static_response_trailers_only() {
    let sidecar = sidecar(&[policy::upstream("echo", refused_addr())
        .protocol("grpc")
        .spec("fallback: { response: { grpcStatus: unavailable, grpcMessage: \"dispatch unavailable; order queued\" } }")
        .to_yaml()])
    .await;
    let h2 = client::h2c_client(sidecar.outbound());
    let res = client::send(
        &h2,
        grpc_wire::unary(
            "echo",
            "/bulwark.test.v1.Echo/Unary",
            &EchoRequest::default(),
            &[],
        ),
    )
    .await;
    assert!(grpc_wire::is_trailers_only(&res), "{res:?}");
    assert_eq!(
        grpc_wire::status(&res),
        Some((
            Code::Unavailable as i32,
            "dispatch unavailable; order queued".to_string()
        ))
    );
    assert_eq!(res.header("x-bulwark-fallback"), Some("response"));
    assert_eq!(res.header("x-bulwark-error"), Some("fallback"));
    assert_upstream_header_absent_or(&res, "echo");

    // Without grpcMessage the body is the message; without grpcStatus it is UNAVAILABLE.
    let sidecar = self::sidecar(&[policy::upstream("echo", refused_addr())
        .protocol("grpc")
        .spec("fallback: { response: { status: 500, body: try later } }")
        .to_yaml()])
    .await;
    let h2 = client::h2c_client(sidecar.outbound());
    let res = client::send(
        &h2,
        grpc_wire::unary(
            "echo",
            "/bulwark.test.v1.Echo/Unary",
            &EchoRequest::default(),
            &[],
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "gRPC answers are HTTP 200");
    assert_eq!(
        grpc_wire::status(&res),
        Some((Code::Unavailable as i32, "try later".to_string()))
    );
}

#[tokio::test]
async fn a_full_bulkhead_fails_over() {
    let a = HttpUpstream::start().await;
    let b = HttpUpstream::start().await;
    let sidecar = sidecar(&[
        policy::upstream("echo", a.addr())
            .spec("limits: { maxConcurrent: 1 }")
            .spec("fallback: { failover: [b] }")
            .to_yaml(),
        policy::upstream("b", b.addr()).to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());
    let held = {
        let http = http.clone();
        tokio::spawn(async move { client::get(&http, "http://echo/gate").await })
    };
    eventually(WAIT, || async {
        (a.requests_to("/gate") == 1).then_some(())
    })
    .await;
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("x-bulwark-upstream"), Some("b"));
    assert_eq!(a.requests(), 1, "the full bulkhead kept it from a");
    a.open_gate();
    let held = held.await.expect("join");
    assert_eq!(held.header("x-bulwark-upstream"), Some("echo"));
}

#[tokio::test]
async fn an_open_breaker_sends_requests_straight_to_the_failover_target() {
    let a = failing(503).await;
    let b = HttpUpstream::start().await;
    let sidecar = sidecar(&[
        policy::upstream("echo", a.addr())
            .spec("circuitBreaker: { minRequests: 2, failureRate: 50%, openFor: 30s }")
            .spec("fallback: { failover: [b] }")
            .to_yaml(),
        policy::upstream("b", b.addr()).to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());
    for _ in 0..2 {
        let res = client::get(&http, "http://echo/status/200").await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.header("x-bulwark-upstream"), Some("b"));
    }
    sidecar.await_breaker_state("echo", "open", WAIT).await;
    for _ in 0..3 {
        let res = client::get(&http, "http://echo/status/200").await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.header("x-bulwark-upstream"), Some("b"));
    }
    assert_eq!((a.requests(), b.requests()), (2, 5), "a rests while open");
}

#[tokio::test]
async fn failover_runs_within_the_primarys_deadline() {
    let a = HttpUpstream::builder()
        .fault(Fault::new().delay_ms(3000))
        .start()
        .await
        .expect("start");
    let slow_b = HttpUpstream::builder()
        .fault(Fault::new().delay_ms(3000))
        .start()
        .await
        .expect("start");
    let quick_b = HttpUpstream::start().await;
    let sidecar = sidecar(&[
        policy::upstream("echo", a.addr())
            .spec("timeouts: { request: 500ms, perTry: 300ms }")
            .spec("fallback: { failover: [slow-b] }")
            .to_yaml(),
        policy::upstream("slow-b", slow_b.addr()).to_yaml(),
        policy::upstream("echo2", a.addr())
            .spec("timeouts: { request: 2s, perTry: 300ms }")
            .spec("fallback: { failover: [quick-b] }")
            .to_yaml(),
        policy::upstream("quick-b", quick_b.addr()).to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());

    // a's attempt times out at 300ms; b (15s of its own) is cut at the 500ms deadline.
    let started = Instant::now();
    let res = client::get(&http, "http://echo/status/200").await;
    let took = started.elapsed();
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT, "{}", res.text());
    assert_eq!(res.header("x-bulwark-error"), Some("deadline-exceeded"));
    assert!(
        took >= Duration::from_millis(499) && took < Duration::from_millis(500) + SLACK,
        "{took:?}"
    );
    assert_eq!((a.requests(), slow_b.requests()), (1, 1));

    // Same, with a quick target: its answer after a's per-try timeout.
    let started = Instant::now();
    let res = client::get(&http, "http://echo2/status/200").await;
    let took = started.elapsed();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("x-bulwark-upstream"), Some("quick-b"));
    assert!(took >= Duration::from_millis(299), "{took:?}");
}
