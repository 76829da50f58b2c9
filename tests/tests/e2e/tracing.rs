//! Request tracing end to end: the real sidecar exporting spans with OTLP/gRPC to the kit's
//! OTLP receiver process (`bulwark-otlp-receiver`, built on the OpenTelemetry project's protocol
//! types: no OpenTelemetry Collector can be installed here). A sampled request's span has the
//! caller's span as its parent, each attempt a span under it that the upstream sees as its
//! parent, and the retry decisions as events; an unsampled request makes no span, and a trace
//! the sidecar starts says in its `traceparent` whether it is sampled.

use bulwark_tests::client::{self, request};
use bulwark_tests::otlp::{OtlpReceiver, ReceivedSpan};
use bulwark_tests::{Fault, HttpUpstream, PATIENCE, Sidecar, eventually, policy};
use http::{Method, StatusCode};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn traced_sidecar(
    receiver: &OtlpReceiver,
    upstream: &HttpUpstream,
    sampling: &str,
) -> Sidecar {
    Sidecar::builder()
        .policies_yaml(
            policy::upstream("echo", upstream.addr())
                .spec("retry: { maxAttempts: 3, retryOn: [5xx], backoff: { initial: 10ms } }")
                .to_yaml(),
        )
        .args([
            "--service",
            "orders",
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--otlp-export-interval",
            "100ms",
            "--trace-sampling",
            sampling,
        ])
        .start()
        .await
}

/// The spans of `trace` once the request span (whose parent is `parent`) and `attempts`
/// attempt spans have arrived.
async fn await_trace(
    receiver: &OtlpReceiver,
    trace: &str,
    parent: &str,
    attempts: usize,
) -> (ReceivedSpan, Vec<ReceivedSpan>) {
    eventually(PATIENCE, || async {
        let spans = receiver.trace(trace);
        let request = spans.iter().find(|s| s.parent_span_id == parent)?.clone();
        let mut tries: Vec<ReceivedSpan> = spans
            .into_iter()
            .filter(|s| s.parent_span_id == request.span_id)
            .collect();
        tries.sort_by_key(|s| s.attr("bulwark.attempt").map(str::to_string));
        (tries.len() == attempts).then_some((request, tries))
    })
    .await
}

#[tokio::test]
async fn a_sampled_request_has_a_span_under_its_caller_and_one_per_attempt() {
    let receiver = OtlpReceiver::start().await;
    let upstream = HttpUpstream::start().await;
    let sidecar = traced_sidecar(&receiver, &upstream, "1").await;
    let http = client::http1_client(sidecar.outbound());

    let req = Fault::new()
        .status(500)
        .first(2)
        .key("traced")
        .request(Method::GET, "http://echo/headers")
        .header("x-request-id", "traced-1")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(client::empty())
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());

    let (span, attempts) = await_trace(&receiver, TRACE, CALLER_SPAN, 3).await;
    assert_eq!(span.service, "orders");
    assert_eq!(span.name, "outbound GET");
    assert_eq!(span.kind, "internal");
    assert_eq!(span.status, "unset", "{span:?}");
    for (key, value) in [
        ("bulwark.direction", "outbound"),
        ("bulwark.upstream", "echo"),
        ("bulwark.request_id", "traced-1"),
        ("bulwark.attempts", "3"),
        ("http.request.method", "GET"),
        ("url.path", "/headers"),
        ("server.address", "echo"),
        ("http.response.status_code", "200"),
        ("network.peer.port", &upstream.addr().port().to_string()),
    ] {
        assert_eq!(span.attr(key), Some(value), "{key} of {span:?}");
    }
    let retries: Vec<_> = span.events.iter().filter(|e| e.name == "retry").collect();
    assert_eq!(retries.len(), 2, "{:?}", span.events);
    for (i, retry) in retries.iter().enumerate() {
        let attempt = (i + 1).to_string();
        assert_eq!(retry.attributes["bulwark.attempt"], attempt);
        assert_eq!(retry.attributes["bulwark.outcome"], "status 500");
        assert!(retry.attributes.contains_key("bulwark.backoff_ms"));
    }

    let statuses: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a.attr("bulwark.attempt").unwrap_or(""),
                a.attr("http.response.status_code").unwrap_or(""),
                a.status.as_str(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("1", "500", "error"),
            ("2", "500", "error"),
            ("3", "200", "unset")
        ]
    );
    for a in &attempts {
        assert_eq!(a.kind, "client");
        assert_eq!(a.name, "attempt echo");
        assert_eq!(a.attr("network.peer.address"), Some("127.0.0.1"));
        assert_eq!(
            a.attr("network.peer.port"),
            Some(upstream.addr().port().to_string().as_str())
        );
    }

    // Each attempt went out with its own span as the upstream's parent.
    let sent: Vec<_> = upstream
        .seen_for("traced")
        .iter()
        .map(|s| s.traceparent.clone().unwrap_or_default())
        .collect();
    let expected: Vec<_> = attempts
        .iter()
        .map(|a| format!("00-{TRACE}-{}-01", a.span_id))
        .collect();
    assert_eq!(sent, expected);

    // The access log names the trace and the endpoint.
    let line = eventually(PATIENCE, || async { sidecar.access_log("traced-1") }).await;
    assert_eq!(line["trace_id"], TRACE, "{line}");
    assert_eq!(line["endpoint"], upstream.addr().to_string(), "{line}");
}

#[tokio::test]
async fn unsampled_requests_make_no_spans_and_a_started_trace_says_it_is_not_sampled() {
    let receiver = OtlpReceiver::start().await;
    let upstream = HttpUpstream::start().await;
    let sidecar = traced_sidecar(&receiver, &upstream, "0").await;
    let http = client::http1_client(sidecar.outbound());

    // Started here at ratio 0: the trace goes on, marked not sampled.
    let seen = client::get(&http, "http://echo/headers").await.json();
    let started = seen["headers"]["traceparent"][0]
        .as_str()
        .unwrap_or_default();
    assert!(started.ends_with("-00"), "{started}");
    // The caller said not sampled: passed on as it came.
    let unsampled = format!("00-{}-{CALLER_SPAN}-00", "1".repeat(32));
    let req = request(Method::GET, "http://echo/headers")
        .header("traceparent", &unsampled)
        .body(client::empty())
        .expect("request");
    let seen = client::send(&http, req).await.json();
    assert_eq!(seen["headers"]["traceparent"][0], unsampled.as_str());

    // The caller said sampled: its decision stands against the ratio.
    let req = request(Method::GET, "http://echo/headers")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(client::empty())
        .expect("request");
    assert_eq!(client::send(&http, req).await.status, StatusCode::OK);
    let (span, _) = await_trace(&receiver, TRACE, CALLER_SPAN, 1).await;
    assert_eq!(span.attr("http.response.status_code"), Some("200"));

    // Spans are exported in the order they end: by now, those of the first two would be here.
    let others: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id != TRACE)
        .collect();
    assert!(others.is_empty(), "{others:?}");
}

#[tokio::test]
async fn a_trace_continues_across_two_sidecars_each_hop_under_the_last_attempt() {
    let receiver = OtlpReceiver::start().await;
    let app = HttpUpstream::start().await;
    let callee = Sidecar::builder()
        .policies_yaml(policy::service("payments", "shop", app.addr().port()))
        .args([
            "--service",
            "payments",
            "--namespace",
            "shop",
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--otlp-export-interval",
            "100ms",
        ])
        .start()
        .await;
    let caller = Sidecar::builder()
        .policies_yaml(policy::upstream("payments", callee.inbound()).to_yaml())
        .args([
            "--service",
            "orders",
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--otlp-export-interval",
            "100ms",
        ])
        .start()
        .await;
    let http = client::http1_client(caller.outbound());
    let req = Fault::new()
        .key("chain")
        .request(Method::GET, "http://payments/headers")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(client::empty())
        .expect("request");
    assert_eq!(client::send(&http, req).await.status, StatusCode::OK);

    let (outbound, out_attempts) = await_trace(&receiver, TRACE, CALLER_SPAN, 1).await;
    assert_eq!(
        (outbound.service.as_str(), outbound.kind.as_str()),
        ("orders", "internal")
    );
    let (inbound, in_attempts) = await_trace(&receiver, TRACE, &out_attempts[0].span_id, 1).await;
    assert_eq!(inbound.service, "payments");
    assert_eq!(inbound.kind, "server");
    assert_eq!(inbound.name, "inbound GET");
    assert_eq!(inbound.attr("bulwark.direction"), Some("inbound"));
    let sent = app.seen_for("chain")[0].traceparent.clone();
    assert_eq!(
        sent,
        Some(format!("00-{TRACE}-{}-01", in_attempts[0].span_id))
    );
}

#[tokio::test]
async fn spans_still_batched_are_sent_when_the_sidecar_stops() {
    let receiver = OtlpReceiver::start().await;
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
        .args([
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--otlp-export-interval",
            "1h",
        ])
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    let req = request(Method::GET, "http://echo/headers")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(client::empty())
        .expect("request");
    assert_eq!(client::send(&http, req).await.status, StatusCode::OK);
    drop(http);
    sidecar.signal_term();
    let exit = sidecar
        .wait_exit(PATIENCE)
        .await
        .expect("the sidecar exits");
    assert!(exit.success(), "{exit:?}");
    let (span, _) = await_trace(&receiver, TRACE, CALLER_SPAN, 1).await;
    assert_eq!(
        span.service, "bulwark-sidecar",
        "no --service: the sidecar's own name"
    );
}
