//! Retries through the sidecar: attempts counted to the upstream, the access log and metrics;
//! which outcomes are retried (`retryOn` and its default); the backoff schedule measured at the
//! upstream; which requests may be retried at all (methods, `Idempotency-Key`, the replay
//! buffer); `Retry-After` / `grpc-retry-pushback-ms`; gRPC; and the retry budget.

use std::time::Duration;

use bulwark_tests::client::{self, full, request};
use bulwark_tests::fault::{gaps, refused_addr};
use bulwark_tests::pattern::PatternBody;
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::{Fault, GrpcUpstream, HttpUpstream, Sidecar, eventually, grpc_wire, policy};
use http::{Method, StatusCode};
use tokio::time::Instant;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);
/// Added to upper bounds of measured delays: a loaded 2-core CI machine may be late, never
/// early, so lower bounds stay tight and upper bounds do not.
const SLACK: Duration = Duration::from_millis(250);
/// Tokio timers have millisecond resolution: allow that much below a lower bound.
const TICK: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn sidecar(policies: &[String]) -> Sidecar {
    Sidecar::builder()
        .policies_yaml(policy::documents(policies))
        .start()
        .await
}

/// The one static endpoint of the UpstreamPolicy `name`, as `/config` shows it.
async fn sidecar_policy_addr(sidecar: &Sidecar, name: &str) -> String {
    let config = sidecar.admin_get("/config").await.json();
    config["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["metadata"]["name"] == name)
        .and_then(|r| r["spec"]["endpoints"]["static"][0].as_str())
        .unwrap_or_else(|| panic!("{name} in {config}"))
        .to_string()
}

/// The attempt numbers the upstream saw for `key`.
fn attempt_headers(upstream: &HttpUpstream, key: &str) -> Vec<Option<u32>> {
    upstream.seen_for(key).iter().map(|s| s.attempt).collect()
}

#[tokio::test]
async fn retries_until_success_counting_attempts_everywhere() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec("retry: { maxAttempts: 3, retryOn: [5xx], backoff: { initial: 10ms } }")
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());

    let req = Fault::new()
        .status(500)
        .first(2)
        .key("k")
        .request(Method::GET, "http://echo/headers")
        .header("x-request-id", "retry-attempts-1")
        .body(client::empty())
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.header("x-bulwark-upstream"), Some("echo"));
    assert_eq!(res.json()["headers"]["x-bulwark-attempt"][0], "3");
    assert_eq!(upstream.attempts_for("k"), 3);
    assert_eq!(attempt_headers(&upstream, "k"), [Some(1), Some(2), Some(3)]);

    let line = eventually(WAIT, || async { sidecar.access_log("retry-attempts-1") }).await;
    assert_eq!(line["attempts"], 3, "{line}");
    assert_eq!(line["status"], 200, "{line}");
    let echo = [("upstream", "echo")];
    sidecar
        .await_metric("bulwark_attempts_total", &echo, 3.0, WAIT)
        .await;
    sidecar
        .await_metric("bulwark_retries_total", &echo, 2.0, WAIT)
        .await;

    // A request that succeeds at once is one attempt, and says so to the upstream (whatever
    // the caller claimed).
    let req = request(Method::GET, "http://echo/headers")
        .header("x-bulwark-attempt", "99")
        .body(client::empty())
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.json()["headers"]["x-bulwark-attempt"][0], "1");
    assert_eq!(res.header("x-bulwark-upstream"), Some("echo"));
    sidecar
        .await_metric("bulwark_attempts_total", &echo, 4.0, WAIT)
        .await;
    sidecar
        .await_metric("bulwark_retries_total", &echo, 2.0, WAIT)
        .await;
}

#[tokio::test]
async fn gives_up_after_max_attempts_with_the_last_answer() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec("retry: { maxAttempts: 3, retryOn: [5xx], backoff: { initial: 5ms } }")
        .to_yaml()])
    .await;
    for (i, http) in [
        client::http1_client(sidecar.outbound()),
        client::h2c_client(sidecar.outbound()),
    ]
    .iter()
    .enumerate()
    {
        let key = format!("always-{i}");
        let res = client::send(
            http,
            Fault::new()
                .status(503)
                .key(&key)
                .get("http://echo/status/200"),
        )
        .await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.text(),
            "injected failure\n",
            "the upstream's own answer"
        );
        assert_eq!(res.header("x-bulwark-upstream"), Some("echo"));
        assert_eq!(upstream.attempts_for(&key), 3, "{key}");
    }
}

#[tokio::test]
async fn default_retry_on_is_connect_failure_reset_and_gateway_errors() {
    let upstream = HttpUpstream::start().await;
    let retry = "retry: { maxAttempts: 3, backoff: { initial: 5ms } }";
    let sidecar = sidecar(&[
        policy::upstream("echo", upstream.addr())
            .spec(retry)
            .to_yaml(),
        policy::upstream("echo-h2", upstream.addr())
            .protocol("http2")
            .spec(retry)
            .to_yaml(),
        policy::upstream("dead", refused_addr())
            .spec(retry)
            .to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());

    for (status, attempts) in [(500, 1), (502, 3), (503, 3), (504, 3), (429, 1), (404, 1)] {
        let key = format!("status-{status}");
        let res = client::send(
            &http,
            Fault::new()
                .status(status)
                .key(&key)
                .get("http://echo/status/200"),
        )
        .await;
        assert_eq!(res.status.as_u16(), status);
        assert_eq!(upstream.attempts_for(&key), attempts, "status {status}");
    }

    // A reset before the answer: the HTTP/1.1 connection closes, the HTTP/2 stream is reset.
    for authority in ["echo", "echo-h2"] {
        let key = format!("reset-{authority}");
        let res = client::send(
            &http,
            Fault::new()
                .reset()
                .first(1)
                .key(&key)
                .get(&format!("http://{authority}/status/200")),
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{authority}: {}", res.text());
        assert_eq!(upstream.attempts_for(&key), 2, "{authority}");
    }

    // Nobody listens: three connect failures, then the sidecar's own answer.
    let req = request(Method::GET, "http://dead/status/200")
        .header("x-request-id", "retry-connect-failure")
        .body(client::empty())
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("x-bulwark-error"), Some("connect-failure"));
    let dead = sidecar_policy_addr(&sidecar, "dead").await;
    assert!(
        res.text()
            .starts_with(&format!("upstream dead: connect to {dead} failed: ")),
        "{}",
        res.text()
    );
    let line = eventually(WAIT, || async {
        sidecar.access_log("retry-connect-failure")
    })
    .await;
    assert_eq!(line["attempts"], 3, "{line}");
    sidecar
        .await_metric("bulwark_attempts_total", &[("upstream", "dead")], 3.0, WAIT)
        .await;
}

#[tokio::test]
async fn retry_on_lists_exact_statuses() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec(r#"retry: { maxAttempts: 3, retryOn: ["429", gateway-error], backoff: { initial: 5ms } }"#)
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    for (status, attempts) in [(429, 3), (502, 3), (500, 1), (404, 1), (409, 1)] {
        let key = format!("status-{status}");
        let res = client::send(
            &http,
            Fault::new()
                .status(status)
                .key(&key)
                .get("http://echo/status/200"),
        )
        .await;
        assert_eq!(res.status.as_u16(), status);
        assert_eq!(upstream.attempts_for(&key), attempts, "status {status}");
    }
}

#[tokio::test]
async fn backoff_grows_by_the_multiplier_within_the_jitter_band() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec("retry: { maxAttempts: 4, retryOn: [5xx], backoff: { initial: 100ms, max: 250ms, multiplier: 2.0, jitter: 20% } }")
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    let res = client::send(
        &http,
        Fault::new()
            .status(503)
            .key("b")
            .get("http://echo/status/200"),
    )
    .await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    let gaps = gaps(&upstream.arrivals_for("b"));
    assert_eq!(gaps.len(), 3, "4 attempts");
    // Nominal waits 100ms, 200ms, then min(250ms, 400ms); ±20%.
    for (gap, nominal) in gaps.iter().zip([ms(100), ms(200), ms(250)]) {
        let low = nominal.mul_f64(0.8) - TICK;
        let high = nominal.mul_f64(1.2) + SLACK;
        assert!(
            (low..=high).contains(gap),
            "gap {gap:?} outside [{low:?}, {high:?}] (nominal {nominal:?}); all: {gaps:?}"
        );
    }
}

#[tokio::test]
async fn backoff_without_jitter_is_exact_and_capped() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec("retry: { maxAttempts: 4, retryOn: [5xx], backoff: { initial: 100ms, max: 150ms, multiplier: 5.0, jitter: 0% } }")
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    client::send(
        &http,
        Fault::new()
            .status(503)
            .key("c")
            .get("http://echo/status/200"),
    )
    .await;
    let gaps = gaps(&upstream.arrivals_for("c"));
    assert_eq!(gaps.len(), 3, "4 attempts");
    // Uncapped these would be 100ms, 500ms, 2.5s.
    for (gap, nominal) in gaps.iter().zip([ms(100), ms(150), ms(150)]) {
        assert!(
            *gap >= nominal - TICK && *gap <= nominal + SLACK,
            "gap {gap:?}, nominal {nominal:?}; all: {gaps:?}"
        );
    }
}

#[tokio::test]
async fn jitter_spreads_the_waits_of_concurrent_requests() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec("retry: { maxAttempts: 2, retryOn: [5xx], backoff: { initial: 200ms, jitter: 50% } }")
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let http = http.clone();
            tokio::spawn(async move {
                let key = format!("j{i}");
                let fault = Fault::new().status(503).first(1).key(&key);
                client::send(&http, fault.get("http://echo/status/200")).await
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("join").status, StatusCode::OK);
    }
    let waits: Vec<Duration> = (0..8)
        .map(|i| gaps(&upstream.arrivals_for(&format!("j{i}")))[0])
        .collect();
    for wait in &waits {
        assert!(
            *wait >= ms(100) - TICK && *wait <= ms(300) + SLACK,
            "{wait:?} outside 200ms ± 50%: {waits:?}"
        );
    }
    let spread = waits
        .iter()
        .max()
        .expect("8")
        .saturating_sub(*waits.iter().min().expect("8"));
    assert!(
        spread > ms(10),
        "8 jittered waits within {spread:?} of each other: {waits:?}"
    );
}

#[tokio::test]
async fn non_idempotent_requests_retry_only_when_the_policy_allows() {
    let upstream = HttpUpstream::start().await;
    let retry = |extra: &str| {
        format!("retry: {{ maxAttempts: 3, retryOn: [5xx], backoff: {{ initial: 5ms }}{extra} }}")
    };
    let sidecar = sidecar(&[
        policy::upstream("never", upstream.addr())
            .spec(&retry(""))
            .to_yaml(),
        policy::upstream("keyed", upstream.addr())
            .spec(&retry(", nonIdempotent: with-idempotency-key"))
            .to_yaml(),
        policy::upstream("always", upstream.addr())
            .spec(&retry(", nonIdempotent: always"))
            .to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());
    let cases: [(&str, Method, Option<&str>, u64); 10] = [
        ("never", Method::POST, None, 1),
        ("never", Method::PATCH, None, 1),
        ("never", Method::POST, Some("key-1"), 1),
        ("never", Method::PUT, None, 3),
        ("never", Method::DELETE, None, 3),
        ("keyed", Method::POST, None, 1),
        ("keyed", Method::POST, Some("key-2"), 3),
        ("keyed", Method::PATCH, Some("key-3"), 3),
        ("always", Method::POST, None, 3),
        ("always", Method::PATCH, None, 3),
    ];
    for (i, (upstream_name, method, idempotency_key, attempts)) in cases.into_iter().enumerate() {
        let key = format!("case-{i}");
        let mut req = Fault::new()
            .status(503)
            .key(&key)
            .request(method.clone(), &format!("http://{upstream_name}/echo"));
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let res = client::send(&http, req.body(full("charge 100")).expect("request")).await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            upstream.attempts_for(&key),
            attempts,
            "{method} to {upstream_name} with Idempotency-Key {idempotency_key:?}"
        );
    }
}

#[tokio::test]
async fn bodies_beyond_the_replay_buffer_are_sent_once() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec("retry: { maxAttempts: 3, retryOn: [5xx], nonIdempotent: always, replayBufferBytes: 1024, backoff: { initial: 5ms } }")
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());

    // Within the buffer: replayed byte for byte.
    let fault = Fault::new().status(503).first(1).key("small");
    let req = fault
        .request(Method::POST, "http://echo/sink")
        .body(PatternBody::sized(1000).boxed())
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["bytes"], 1000);
    assert_eq!(res.json()["pattern_ok"], true);
    assert_eq!(upstream.attempts_for("small"), 2);

    // Beyond it, with and without a known length: one attempt, the upstream's answer.
    for (key, body) in [
        ("big", PatternBody::sized(64 * 1024)),
        ("big-chunked", PatternBody::chunked(64 * 1024)),
    ] {
        let fault = Fault::new().status(503).first(1).key(key);
        let req = fault
            .request(Method::POST, "http://echo/sink")
            .body(body.boxed())
            .expect("request");
        let res = client::send(&http, req).await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{key}");
        assert_eq!(upstream.attempts_for(key), 1, "{key}");
    }
}

#[tokio::test]
async fn retry_after_sets_the_wait_only_when_honored() {
    let upstream = HttpUpstream::start().await;
    let retry = |honor: bool| {
        format!(
            "retry: {{ maxAttempts: 2, retryOn: [5xx], honorRetryAfter: {honor}, backoff: {{ initial: 10ms, jitter: 0% }} }}"
        )
    };
    let sidecar = sidecar(&[
        policy::upstream("honor", upstream.addr())
            .spec(&retry(true))
            .to_yaml(),
        policy::upstream("plain", upstream.addr())
            .spec(&retry(false))
            .to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());
    for name in ["honor", "plain"] {
        let fault = Fault::new().status(503).retry_after("1").first(1).key(name);
        let res = client::send(&http, fault.get(&format!("http://{name}/status/200"))).await;
        assert_eq!(res.status, StatusCode::OK, "{name}");
    }
    let honored = gaps(&upstream.arrivals_for("honor"))[0];
    assert!(
        honored >= ms(1000) - TICK && honored <= ms(1000) + SLACK,
        "Retry-After: 1 honored: waited {honored:?}"
    );
    let plain = gaps(&upstream.arrivals_for("plain"))[0];
    assert!(
        plain >= ms(10) - TICK && plain <= ms(10) + SLACK,
        "Retry-After ignored: waited {plain:?}"
    );

    // A wait that would reach the deadline (15s by default) is not waited for: the answer,
    // with its Retry-After, comes at once.
    let started = Instant::now();
    let fault = Fault::new()
        .status(503)
        .retry_after("120")
        .first(1)
        .key("too-long");
    let res = client::send(&http, fault.get("http://honor/status/200")).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("retry-after"), Some("120"));
    assert_eq!(upstream.attempts_for("too-long"), 1);
    assert!(started.elapsed() < SLACK, "{:?}", started.elapsed());
}

#[tokio::test]
async fn no_retry_starts_after_max_elapsed() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec("retry: { maxAttempts: 10, retryOn: [5xx], maxElapsed: 500ms, backoff: { initial: 200ms, multiplier: 1.0, jitter: 0% } }")
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    let res = client::send(
        &http,
        Fault::new()
            .status(503)
            .key("e")
            .get("http://echo/status/200"),
    )
    .await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    // Attempts start at 0, 200ms and 400ms; a fourth would start at 600ms > 500ms.
    assert_eq!(upstream.attempts_for("e"), 3);
}

#[tokio::test]
async fn a_retry_goes_to_an_endpoint_not_tried_yet() {
    let bad = HttpUpstream::builder()
        .always_fail(503)
        .start()
        .await
        .expect("start");
    let good = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", bad.addr())
        .endpoint(good.addr())
        .spec("retry: { maxAttempts: 2, backoff: { initial: 1ms } }")
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    for _ in 0..20 {
        let res = client::get(&http, "http://echo/status/200").await;
        assert_eq!(
            res.status,
            StatusCode::OK,
            "the retry went to the other endpoint"
        );
    }
    assert_eq!(good.requests(), 20);
    assert!(
        (1..=20).contains(&bad.requests()),
        "the bad endpoint was tried first sometimes: {}",
        bad.requests()
    );
}

fn grpc_call(
    authority: &str,
    path: &str,
    fault: &Fault,
    extra: &[(&str, &str)],
) -> http::Request<bulwark_tests::Body> {
    let mut req = grpc_wire::unary(
        authority,
        path,
        &EchoRequest {
            message: "hello".into(),
            ..Default::default()
        },
        extra,
    );
    fault.insert_into(req.headers_mut());
    req
}

#[tokio::test]
async fn grpc_pushback_sets_the_wait_and_a_negative_one_stops_retrying() {
    let upstream = GrpcUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .protocol("grpc")
        .spec("retry: { maxAttempts: 3, retryOn: [grpc-unavailable], nonIdempotent: always, honorRetryAfter: true, backoff: { initial: 10ms, jitter: 0% } }")
        .to_yaml()])
    .await;
    let h2 = client::h2c_client(sidecar.outbound());
    const UNARY: &str = "/bulwark.test.v1.Echo/Unary";

    let fault = Fault::new()
        .grpc(Code::Unavailable)
        .pushback_ms(300)
        .first(1)
        .key("wait");
    let res = client::send(&h2, grpc_call("echo", UNARY, &fault, &[])).await;
    assert_eq!(grpc_wire::status(&res), Some((0, String::new())));
    let waited = gaps(&upstream.arrivals_for("wait"))[0];
    assert!(
        waited >= ms(300) - TICK && waited <= ms(300) + SLACK,
        "grpc-retry-pushback-ms: 300 honored: waited {waited:?}"
    );

    let fault = Fault::new()
        .grpc(Code::Unavailable)
        .pushback_ms(-1)
        .key("stop");
    let res = client::send(&h2, grpc_call("echo", UNARY, &fault, &[])).await;
    assert_eq!(
        grpc_wire::status(&res),
        Some((Code::Unavailable as i32, "injected failure".to_string()))
    );
    assert_eq!(upstream.attempts_for("stop"), 1);
}

#[tokio::test]
async fn grpc_calls_retry_on_idempotent_routes_only() {
    let upstream = GrpcUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .protocol("grpc")
        .spec("retry: { maxAttempts: 3, retryOn: [grpc-unavailable], backoff: { initial: 10ms } }")
        .spec("routes:")
        .spec("  - match: { grpcMethod: /bulwark.test.v1.Echo/Unary }")
        .spec("    idempotent: true")
        .to_yaml()])
    .await;

    // Through tonic: retried on UNAVAILABLE, the reply tells the attempt.
    let mut echo = client::grpc_client(sidecar.outbound()).await;
    let mut req = tonic::Request::new(EchoRequest {
        message: "twice failed".into(),
        ..Default::default()
    });
    Fault::new()
        .grpc(Code::Unavailable)
        .first(2)
        .key("unary")
        .insert_into_metadata(req.metadata_mut());
    let res = echo.unary(req).await.expect("the third attempt answers");
    let meta = |k: &str| res.metadata().get(k).and_then(|v| v.to_str().ok());
    assert_eq!(meta("x-bulwark-attempt"), Some("3"));
    assert_eq!(meta("x-bulwark-upstream"), Some("echo"));
    assert_eq!(res.get_ref().message, "twice failed");
    assert_eq!(upstream.attempts_for("unary"), 3);

    let h2 = client::h2c_client(sidecar.outbound());
    // Not in retryOn.
    let fault = Fault::new().grpc(Code::Internal).key("internal");
    let res = client::send(
        &h2,
        grpc_call("echo", "/bulwark.test.v1.Echo/Unary", &fault, &[]),
    )
    .await;
    assert_eq!(
        grpc_wire::status(&res).map(|s| s.0),
        Some(Code::Internal as i32)
    );
    assert_eq!(upstream.attempts_for("internal"), 1);

    // Another method: gRPC calls are not idempotent unless their route says so.
    let fault = Fault::new().grpc(Code::Unavailable).first(2).key("other");
    let res = client::send(
        &h2,
        grpc_call("echo", "/bulwark.test.v1.Other/Call", &fault, &[]),
    )
    .await;
    assert_eq!(
        grpc_wire::status(&res).map(|s| s.0),
        Some(Code::Unavailable as i32)
    );
    assert_eq!(upstream.attempts_for("other"), 1);
}

#[tokio::test]
async fn the_retry_budget_caps_retries_against_a_failing_upstream() {
    let upstream = HttpUpstream::builder()
        .always_fail(503)
        .start()
        .await
        .expect("start");
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec("retry: { maxAttempts: 3, retryOn: [5xx], backoff: { initial: 1ms, max: 1ms, jitter: 0% }, budget: { ratio: 20%, minPerSecond: 1, window: 10s } }")
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());
    const REQUESTS: u64 = 60;
    for _ in 0..REQUESTS {
        let res = client::get(&http, "http://echo/status/200").await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // Retries ≤ 20% of the requests + 1/s × 10s of reserve; without a budget it would be 180.
    let seen = upstream.requests();
    let cap = REQUESTS + REQUESTS / 5 + 10;
    assert!(
        seen <= cap,
        "{seen} requests reached the upstream, cap {cap}"
    );
    assert!(
        seen >= REQUESTS + 10,
        "{seen} requests: the reserve of 10 retries was not used"
    );
    let exhausted = eventually(WAIT, || async {
        sidecar
            .metric(
                "bulwark_retry_budget_exhausted_total",
                &[("upstream", "echo")],
            )
            .await
            .filter(|n| *n >= 1.0)
    })
    .await;
    // At most one refusal per request: a refused retry ends it.
    assert!(exhausted <= REQUESTS as f64, "{exhausted} refusals");
    sidecar
        .await_metric(
            "bulwark_retries_total",
            &[("upstream", "echo")],
            (seen - REQUESTS) as f64,
            WAIT,
        )
        .await;
}
