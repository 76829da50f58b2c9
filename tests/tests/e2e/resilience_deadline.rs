//! Deadlines through the sidecar: `timeouts.perTry` abandons a slow attempt (the upstream sees
//! the cancellation) and counts as `timeout` for `retryOn`; `timeouts.request` bounds the whole
//! request, retries included, with the exact 504 / DEADLINE_EXCEEDED answer; and the upstream
//! receives the remaining budget as `grpc-timeout`.

use std::time::Duration;

use bulwark_tests::client;
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::{Fault, GrpcUpstream, HttpUpstream, Sidecar, eventually, grpc_wire, policy};
use http::StatusCode;
use tokio::time::Instant;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);
/// Upper slack for a loaded 2-core CI machine; lower bounds stay tight.
const SLACK: Duration = Duration::from_millis(700);
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

#[tokio::test]
async fn per_try_timeout_abandons_the_attempt_and_retries_on_timeout() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[
        policy::upstream("echo", upstream.addr())
            .spec("timeouts: { request: 5s, perTry: 200ms }")
            .spec("retry: { maxAttempts: 3, retryOn: [timeout], backoff: { initial: 10ms } }")
            .to_yaml(),
        // Default retryOn has no `timeout`.
        policy::upstream("no-timeout-retry", upstream.addr())
            .spec("timeouts: { request: 5s, perTry: 200ms }")
            .spec("retry: { maxAttempts: 3, backoff: { initial: 10ms } }")
            .to_yaml(),
    ])
    .await;
    let http = client::http1_client(sidecar.outbound());

    // The first attempt hangs past perTry; the second answers.
    let started = Instant::now();
    let fault = Fault::new().delay_ms(3000).first(1).key("once");
    let res = client::send(&http, fault.get("http://echo/status/200")).await;
    let took = started.elapsed();
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.header("x-bulwark-upstream"), Some("echo"));
    assert_eq!(upstream.attempts_for("once"), 2);
    assert!(took >= ms(200) - TICK && took < ms(200) + SLACK, "{took:?}");
    let seen = upstream.seen_for("once");
    assert_eq!(seen[1].attempt, Some(2));
    assert!(seen[1].at - seen[0].at >= ms(200) - TICK);
    eventually(WAIT, || async {
        (upstream.cancelled_for("once") == 1).then_some(())
    })
    .await;

    // Every attempt hangs: the last attempt's timeout is the answer.
    let started = Instant::now();
    let fault = Fault::new().delay_ms(3000).key("always");
    let res = client::send(&http, fault.get("http://echo/status/200")).await;
    let took = started.elapsed();
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.header("x-bulwark-error"), Some("attempt-timeout"));
    assert_eq!(
        res.text(),
        "upstream \"echo\": attempt timed out after 200ms\n"
    );
    assert_eq!(upstream.attempts_for("always"), 3);
    assert!(took >= ms(600) - TICK && took < ms(620) + SLACK, "{took:?}");
    eventually(WAIT, || async {
        (upstream.cancelled_for("always") == 3).then_some(())
    })
    .await;

    // Without `timeout` in retryOn: one attempt.
    let fault = Fault::new().delay_ms(3000).key("not-retried");
    let res = client::send(&http, fault.get("http://no-timeout-retry/status/200")).await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.header("x-bulwark-error"), Some("attempt-timeout"));
    assert_eq!(
        res.text(),
        "upstream \"no-timeout-retry\": attempt timed out after 200ms\n"
    );
    assert_eq!(upstream.attempts_for("not-retried"), 1);
}

#[tokio::test]
async fn request_timeout_bounds_the_request_with_retries_included() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[
        policy::upstream("echo", upstream.addr())
            .spec("timeouts: { request: 300ms }")
            .to_yaml(),
        policy::upstream("echo-retry", upstream.addr())
            .spec("timeouts: { request: 300ms, perTry: 200ms }")
            .spec("retry: { maxAttempts: 5, retryOn: [timeout], backoff: { initial: 10ms } }")
            .to_yaml(),
    ])
    .await;
    for (key, http) in [
        ("slow-http1", client::http1_client(sidecar.outbound())),
        ("slow-h2", client::h2c_client(sidecar.outbound())),
    ] {
        let started = Instant::now();
        let fault = Fault::new().delay_ms(3000).key(key);
        let res = client::send(&http, fault.get("http://echo/status/200")).await;
        let took = started.elapsed();
        assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(res.header("x-bulwark-error"), Some("deadline-exceeded"));
        assert_eq!(
            res.text(),
            "deadline of 300ms exceeded before echo answered\n"
        );
        assert!(took >= ms(300) - TICK && took < ms(300) + SLACK, "{took:?}");
        eventually(WAIT, || async {
            (upstream.cancelled_for(key) == 1).then_some(())
        })
        .await;
    }

    // An HTTP caller's grpc-timeout is ignored.
    let http = client::http1_client(sidecar.outbound());
    let req = Fault::new()
        .delay_ms(100)
        .request(http::Method::GET, "http://echo/status/200")
        .header("grpc-timeout", "10m")
        .body(client::empty())
        .expect("request");
    assert_eq!(client::send(&http, req).await.status, StatusCode::OK);

    // Attempt 1 times out at 200ms, attempt 2 starts at ~210ms and is cut by the deadline.
    let http = client::http1_client(sidecar.outbound());
    let started = Instant::now();
    let fault = Fault::new().delay_ms(3000).key("retrying");
    let res = client::send(&http, fault.get("http://echo-retry/status/200")).await;
    let took = started.elapsed();
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.header("x-bulwark-error"), Some("deadline-exceeded"));
    assert_eq!(
        res.text(),
        "deadline of 300ms exceeded before echo-retry answered\n"
    );
    assert!(took >= ms(300) - TICK && took < ms(300) + SLACK, "{took:?}");
    assert_eq!(upstream.attempts_for("retrying"), 2);
}

/// `NNNm` → NNN.
fn grpc_timeout_ms(value: &str) -> u64 {
    let digits = value
        .strip_suffix('m')
        .unwrap_or_else(|| panic!("grpc-timeout {value:?} is not in milliseconds"));
    assert!(
        !digits.is_empty() && digits.len() <= 8 && digits.bytes().all(|b| b.is_ascii_digit()),
        "grpc-timeout {value:?}"
    );
    digits.parse().expect("digits")
}

#[tokio::test]
async fn grpc_deadlines_answer_deadline_exceeded_and_propagate_the_budget() {
    let upstream = GrpcUpstream::start().await;
    let sidecar = sidecar(&[
        policy::upstream("echo", upstream.addr())
            .protocol("grpc")
            .spec("timeouts: { request: 300ms }")
            .to_yaml(),
        policy::upstream("echo-try", upstream.addr())
            .protocol("grpc")
            .spec("timeouts: { request: 5s, perTry: 100ms }")
            .to_yaml(),
    ])
    .await;
    let h2 = client::h2c_client(sidecar.outbound());
    let unary = |authority: &str, delay_ms: u32, key: &str, headers: &[(&str, &str)]| {
        let mut req = grpc_wire::unary(
            authority,
            "/bulwark.test.v1.Echo/Unary",
            &EchoRequest {
                message: "m".into(),
                delay_ms,
                ..Default::default()
            },
            headers,
        );
        Fault::new().key(key).insert_into(req.headers_mut());
        req
    };

    // A quick call: the upstream is told how much of the 300ms is left.
    let res = client::send(&h2, unary("echo", 0, "quick", &[])).await;
    assert_eq!(grpc_wire::status(&res), Some((0, String::new())));
    let sent = upstream.seen_for("quick")[0]
        .grpc_timeout
        .clone()
        .expect("the upstream receives grpc-timeout");
    let left = grpc_timeout_ms(&sent);
    assert!(left > 0 && left <= 300, "grpc-timeout {sent}");

    // A slow call: cut at 300ms.
    let started = Instant::now();
    let res = client::send(&h2, unary("echo", 3000, "slow", &[])).await;
    let took = started.elapsed();
    assert_eq!(
        grpc_wire::status(&res),
        Some((
            Code::DeadlineExceeded as i32,
            "deadline of 300ms exceeded before echo answered".to_string()
        ))
    );
    assert!(took >= ms(300) - TICK && took < ms(300) + SLACK, "{took:?}");
    eventually(WAIT, || async {
        (upstream.cancelled_for("slow") == 1).then_some(())
    })
    .await;

    // The caller's own grpc-timeout, shorter than the policy's, bounds the call and is what
    // the upstream is told.
    let started = Instant::now();
    let res = client::send(
        &h2,
        unary("echo", 3000, "caller", &[("grpc-timeout", "100m")]),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        grpc_wire::status(&res),
        Some((
            Code::DeadlineExceeded as i32,
            "deadline of 100ms exceeded before echo answered".to_string()
        ))
    );
    assert_eq!(res.header("x-bulwark-error"), Some("deadline-exceeded"));
    assert!(took >= ms(100) - TICK && took < ms(100) + SLACK, "{took:?}");
    let sent = upstream.seen_for("caller")[0]
        .grpc_timeout
        .clone()
        .expect("grpc-timeout");
    let left = grpc_timeout_ms(&sent);
    assert!(left > 0 && left <= 100, "grpc-timeout {sent}");

    // The per-try timeout of the last attempt answers DEADLINE_EXCEEDED too.
    let started = Instant::now();
    let res = client::send(&h2, unary("echo-try", 3000, "per-try", &[])).await;
    let took = started.elapsed();
    assert_eq!(
        grpc_wire::status(&res),
        Some((
            Code::DeadlineExceeded as i32,
            "upstream \"echo-try\": attempt timed out after 100ms".to_string()
        ))
    );
    assert_eq!(res.header("x-bulwark-error"), Some("attempt-timeout"));
    assert!(took >= ms(100) - TICK && took < ms(100) + SLACK, "{took:?}");
    let sent = upstream.seen_for("per-try")[0]
        .grpc_timeout
        .clone()
        .expect("grpc-timeout");
    let left = grpc_timeout_ms(&sent);
    assert!(
        left > 0 && left <= 100,
        "the attempt's own time left: {sent}"
    );
}

#[tokio::test]
async fn an_http_callers_deadline_header_shortens_the_deadline_and_travels_upstream() {
    let upstream = HttpUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .spec("timeouts: { request: 5s }")
        .to_yaml()])
    .await;
    let http = client::http1_client(sidecar.outbound());

    // In time: the upstream is told what is left of the caller's 800 ms.
    let mut req = Fault::new().get("http://echo/headers");
    req.headers_mut().insert(
        "x-bulwark-timeout-ms",
        http::HeaderValue::from_static("800"),
    );
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::OK);
    let budget: u64 = res.json()["headers"]["x-bulwark-timeout-ms"][0]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("the upstream sees the remaining budget");
    assert!(budget > 0 && budget <= 800, "{budget}");

    // Too slow for the caller's 300 ms, though the policy allows 5 s.
    let started = Instant::now();
    let mut req = Fault::new()
        .delay_ms(3000)
        .key("slow")
        .get("http://echo/status/200");
    req.headers_mut().insert(
        "x-bulwark-timeout-ms",
        http::HeaderValue::from_static("300"),
    );
    let res = client::send(&http, req).await;
    let took = started.elapsed();
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.header("x-bulwark-error"), Some("deadline-exceeded"));
    assert_eq!(
        res.text(),
        "deadline of 300ms exceeded before echo answered\n"
    );
    assert!(took >= ms(300) - TICK && took < ms(300) + SLACK, "{took:?}");
}

#[tokio::test]
async fn a_grpc_deadline_too_short_to_meet_never_reaches_the_upstream_and_a_malformed_one_is_ignored()
 {
    let upstream = GrpcUpstream::start().await;
    let sidecar = sidecar(&[policy::upstream("echo", upstream.addr())
        .protocol("grpc")
        .to_yaml()])
    .await;
    let h2 = client::h2c_client(sidecar.outbound());
    let call = |key: &str, timeout: &str| {
        let mut req = grpc_wire::unary(
            "echo",
            "/bulwark.test.v1.Echo/Unary",
            &EchoRequest {
                message: "m".into(),
                ..Default::default()
            },
            &[("grpc-timeout", timeout)],
        );
        Fault::new().key(key).insert_into(req.headers_mut());
        req
    };
    for (key, timeout, shown) in [
        ("zero", "0n", "0ns"),
        ("one-nano", "1n", "1ns"),
        ("one-micro", "1u", "1µs"),
        ("almost-a-ms", "999u", "999µs"),
    ] {
        let res = client::send(&h2, call(key, timeout)).await;
        assert_eq!(
            grpc_wire::status(&res),
            Some((
                Code::DeadlineExceeded as i32,
                format!("the caller's deadline of {shown} is too short to call echo")
            )),
            "grpc-timeout {timeout}"
        );
        assert!(
            upstream.seen_for(key).is_empty(),
            "{timeout} reached the upstream"
        );
    }
    // Malformed deadlines are ignored: the call goes through, without one.
    for (key, timeout) in [
        ("letters", "abc"),
        ("unit", "5x"),
        ("too-long", "123456789m"),
    ] {
        let res = client::send(&h2, call(key, timeout)).await;
        assert_eq!(
            grpc_wire::status(&res),
            Some((0, String::new())),
            "grpc-timeout {timeout}"
        );
        assert_eq!(upstream.seen_for(key).len(), 1);
    }
    // A millisecond is met as any deadline is.
    let res = client::send(&h2, call("one-ms", "5m")).await;
    assert_eq!(grpc_wire::status(&res), Some((0, String::new())));
    assert_eq!(
        sidecar
            .metric(
                "bulwark_caller_deadlines_total",
                &[("upstream", "echo"), ("kind", "too-short")]
            )
            .await,
        Some(4.0)
    );
    assert_eq!(
        sidecar
            .metric(
                "bulwark_caller_deadlines_total",
                &[("upstream", "echo"), ("kind", "malformed")]
            )
            .await,
        Some(3.0)
    );
}
