//! HTTP/1.1 through the sidecar's outbound listener: methods and bodies (content-length,
//! chunked, 100 MB each way), bodiless answers, `Expect: 100-continue`, hop-by-hop headers,
//! request ids and trace context, `Host` handling, cancellation and the access log.

use std::time::Duration;

use bulwark_tests::client::{self, HttpClient, empty, full, request};
use bulwark_tests::pattern::{PatternBody, PatternCheck};
use bulwark_tests::raw::RawConn;
use bulwark_tests::{HttpUpstream, Sidecar, eventually, policy};
use http::{Method, StatusCode};
use http_body_util::BodyExt;

const WAIT: Duration = Duration::from_secs(5);

/// An HTTP upstream behind UpstreamPolicy `echo`, a sidecar, and an HTTP/1.1 client to it.
async fn setup() -> (HttpUpstream, Sidecar, HttpClient) {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(
            policy::upstream("echo", upstream.addr())
                .spec("timeouts: { request: 60s }")
                .to_yaml(),
        )
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    (upstream, sidecar, http)
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 4
        && parts[0] == "00"
        && is_lower_hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && is_lower_hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        // Sampled or not: a trace the sidecar starts follows --trace-sampling.
        && matches!(parts[3], "00" | "01")
}

#[tokio::test]
async fn get_passes_status_and_body_through_once() {
    let (upstream, _sidecar, http) = setup().await;
    for code in [200u16, 201, 404, 418, 503] {
        let res = client::get(&http, &format!("http://echo/status/{code}")).await;
        assert_eq!(res.status.as_u16(), code);
        assert_eq!(res.text(), format!("status {code}"));
        assert_eq!(
            res.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            upstream.requests_to(&format!("/status/{code}")),
            1,
            "{code} sent once"
        );
    }
    assert_eq!(upstream.requests(), 5);
}

#[tokio::test]
async fn post_bodies_with_content_length_and_chunked() {
    let (upstream, _sidecar, http) = setup().await;

    let req = request(Method::POST, "http://echo/echo")
        .header("content-type", "application/x-test")
        .body(full("hello, world"))
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("content-type"), Some("application/x-test"));
    assert_eq!(res.text(), "hello, world");
    let seen = upstream.last_headers().expect("seen");
    assert_eq!(
        seen.get("content-length").map(|v| v.as_bytes()),
        Some(&b"12"[..])
    );

    let req = request(Method::POST, "http://echo/echo")
        .body(PatternBody::chunked(300_000).boxed())
        .expect("request");
    let res = client::send(&http, req).await;
    let mut check = PatternCheck::new();
    check.feed(&res.body);
    assert_eq!((check.len(), check.first_mismatch()), (300_000, None));
    let seen = upstream.last_headers().expect("seen");
    assert_eq!(seen.get("content-length"), None);
    assert_eq!(
        seen.get("transfer-encoding").map(|v| v.as_bytes()),
        Some(&b"chunked"[..])
    );

    for method in [Method::PUT, Method::PATCH, Method::DELETE] {
        let req = request(method.clone(), "http://echo/echo")
            .body(full(method.as_str().to_string()))
            .expect("request");
        assert_eq!(client::send(&http, req).await.text(), method.as_str());
    }
    assert_eq!(upstream.requests_to("/echo"), 5);
}

#[tokio::test]
async fn streams_100_mb_up_and_down_without_buffering() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let (upstream, sidecar, http) = setup().await;

    let req = request(Method::POST, "http://echo/sink")
        .body(PatternBody::chunked(SIZE).boxed())
        .expect("request");
    let res = client::send(&http, req).await.json();
    assert_eq!(res["bytes"], SIZE);
    assert_eq!(res["pattern_ok"], true);

    let req = request(Method::GET, &format!("http://echo/bytes/{SIZE}"))
        .body(empty())
        .expect("request");
    let res = http.request(req).await.expect("download");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers().get("content-length").map(|v| v.as_bytes()),
        Some(SIZE.to_string().as_bytes())
    );
    let mut body = res.into_body();
    let mut check = PatternCheck::new();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("download frame").data_ref() {
            check.feed(data);
        }
    }
    assert_eq!((check.len(), check.first_mismatch()), (SIZE, None));
    assert_eq!(upstream.requests(), 2);

    // Streaming, not buffering: the sidecar never held a whole body in memory.
    let peak = sidecar.peak_rss_bytes();
    assert!(peak < 64 * 1024 * 1024, "sidecar peak RSS {peak} bytes");
}

#[tokio::test]
async fn head_204_and_304_carry_no_body() {
    let (upstream, sidecar, _http) = setup().await;
    // One keep-alive connection, by hand: a body sent where none belongs would be read as
    // the start of the next response and break it.
    let mut conn = RawConn::connect(sidecar.outbound()).await;

    assert!(
        conn.write(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: echo\r\n\r\n")
            .await
    );
    let head = conn.read_head().await.expect("HEAD answer");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));

    assert!(
        conn.write(b"GET /no-content HTTP/1.1\r\nHost: echo\r\n\r\n")
            .await
    );
    let head = conn.read_head().await.expect("204 answer");
    assert_eq!(head.status, 204);
    assert_eq!(head.header("content-length"), None);
    assert_eq!(head.header("transfer-encoding"), None);

    assert!(
        conn.write(b"GET /not-modified HTTP/1.1\r\nHost: echo\r\n\r\n")
            .await
    );
    let head = conn.read_head().await.expect("304 answer");
    assert_eq!(head.status, 304);
    assert_eq!(head.header("etag"), Some("\"v1\""));
    assert_eq!(head.header("transfer-encoding"), None);

    assert!(
        conn.write(b"GET /status/200 HTTP/1.1\r\nHost: echo\r\n\r\n")
            .await
    );
    let head = conn.read_head().await.expect("200 answer");
    assert_eq!(head.status, 200);
    assert_eq!(conn.read_body(&head).await, b"status 200");
    assert_eq!(upstream.requests(), 4);
}

#[tokio::test]
async fn expect_100_continue_waits_for_the_go_ahead() {
    let (upstream, sidecar, _http) = setup().await;
    let mut conn = RawConn::connect(sidecar.outbound()).await;
    assert!(
        conn.write(
            b"POST /echo HTTP/1.1\r\nHost: echo\r\nContent-Type: text/plain\r\n\
              Content-Length: 11\r\nExpect: 100-continue\r\n\r\n"
        )
        .await
    );
    let interim = conn.read_head().await.expect("an interim answer");
    assert_eq!(interim.status_line, "HTTP/1.1 100 Continue");

    assert!(conn.write(b"hello world").await);
    let head = conn.read_head().await.expect("the final answer");
    assert_eq!(head.status, 200);
    assert_eq!(conn.read_body(&head).await, b"hello world");
    assert_eq!(upstream.requests_to("/echo"), 1);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed() {
    let (upstream, sidecar, _http) = setup().await;
    let mut conn = RawConn::connect(sidecar.outbound()).await;
    assert!(
        conn.write(
            b"GET /headers HTTP/1.1\r\nHost: echo\r\n\
              Connection: keep-alive, X-Drop-Me\r\n\
              Keep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\n\
              Upgrade: example/1\r\n\
              TE: gzip\r\n\
              X-Drop-Me: secret\r\n\
              X-Keep-Me: kept\r\n\r\n"
        )
        .await
    );
    let head = conn.read_head().await.expect("answer");
    assert_eq!(head.status, 200);
    let seen: serde_json::Value =
        serde_json::from_slice(&conn.read_body(&head).await).expect("JSON");
    let headers = &seen["headers"];
    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "x-drop-me",
        "transfer-encoding",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the upstream: {seen}"
        );
    }
    assert_eq!(headers["x-keep-me"][0], "kept");
    assert_eq!(headers["host"][0], "echo");

    // `te: trailers` is the one TE value that survives.
    assert!(
        conn.write(b"GET /headers HTTP/1.1\r\nHost: echo\r\nTE: trailers\r\n\r\n")
            .await
    );
    let head = conn.read_head().await.expect("answer");
    let seen: serde_json::Value =
        serde_json::from_slice(&conn.read_body(&head).await).expect("JSON");
    assert_eq!(seen["headers"]["te"][0], "trailers");
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn request_id_and_traceparent_are_created_when_missing() {
    let (_upstream, _sidecar, http) = setup().await;
    let first = client::get(&http, "http://echo/headers").await.json();
    let second = client::get(&http, "http://echo/headers").await.json();
    let mut ids = Vec::new();
    for seen in [&first, &second] {
        let headers = &seen["headers"];
        let id = headers["x-request-id"][0].as_str().expect("x-request-id");
        assert!(is_lower_hex(id, 32), "x-request-id {id:?}");
        let tp = headers["traceparent"][0].as_str().expect("traceparent");
        assert!(is_traceparent(tp), "traceparent {tp:?}");
        assert_eq!(headers["x-bulwark-attempt"][0], "1");
        ids.push(id.to_string());
    }
    assert_ne!(ids[0], ids[1], "every request gets its own id");
}

#[tokio::test]
async fn request_id_and_valid_traceparent_are_kept() {
    let (_upstream, _sidecar, http) = setup().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = request(Method::GET, "http://echo/headers")
        .header("x-request-id", "order-42-attempt")
        .header("traceparent", traceparent)
        .body(empty())
        .expect("request");
    let seen = client::send(&http, req).await.json();
    assert_eq!(
        seen["headers"]["x-request-id"],
        serde_json::json!(["order-42-attempt"])
    );
    assert_eq!(
        seen["headers"]["traceparent"],
        serde_json::json!([traceparent])
    );

    let req = request(Method::GET, "http://echo/headers")
        .header("traceparent", "not-a-trace-context")
        .body(empty())
        .expect("request");
    let seen = client::send(&http, req).await.json();
    let tp = seen["headers"]["traceparent"][0]
        .as_str()
        .expect("traceparent");
    assert!(
        is_traceparent(tp),
        "an invalid traceparent is replaced: {tp:?}"
    );
    assert_eq!(
        seen["headers"]["traceparent"].as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn host_is_kept_unless_the_policy_rewrites_it() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::documents([
            policy::upstream("echo", upstream.addr()).to_yaml(),
            policy::upstream("echo-rewrite", upstream.addr())
                .host_rewrite(true)
                .to_yaml(),
        ]))
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());

    let seen = client::get(&http, "http://echo:8080/headers").await.json();
    assert_eq!(seen["headers"]["host"], serde_json::json!(["echo:8080"]));

    let seen = client::get(&http, "http://echo-rewrite/headers")
        .await
        .json();
    assert_eq!(
        seen["headers"]["host"],
        serde_json::json!([upstream.addr().to_string()])
    );
}

#[tokio::test]
async fn a_caller_that_hangs_up_cancels_the_upstream_request() {
    let (upstream, _sidecar, http) = setup().await;
    let call = tokio::spawn(async move { client::get(&http, "http://echo/hold").await });
    eventually(WAIT, || async {
        (upstream.requests_to("/hold") == 1).then_some(())
    })
    .await;
    // Aborting the call drops the client and its connection: the caller hung up.
    call.abort();
    let _ = call.await;
    eventually(WAIT, || async { (upstream.cancelled() == 1).then_some(()) }).await;
}

#[tokio::test]
async fn every_request_gets_one_access_log_line() {
    let (_upstream, sidecar, http) = setup().await;
    let req = request(Method::POST, "http://echo/status/201")
        .header("x-request-id", "access-log-test-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(full("x"))
        .expect("request");
    assert_eq!(client::send(&http, req).await.status, StatusCode::CREATED);
    let line = eventually(WAIT, || async { sidecar.access_log("access-log-test-1") }).await;
    assert_eq!(
        line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["authority"], "echo", "{line}");
    assert_eq!(line["path"], "/status/201", "{line}");
    assert_eq!(line["status"], 201, "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert!(line["duration_ms"].is_number(), "{line}");
    let lines = sidecar
        .json_logs()
        .into_iter()
        .filter(|l| {
            l["fields"]["request_id"] == "access-log-test-1" && l["fields"].get("status").is_some()
        })
        .count();
    assert_eq!(lines, 1, "exactly one access-log line per request");

    // Without a traceparent the sidecar starts a trace, and logs its id.
    let req = request(Method::GET, "http://echo/headers")
        .header("x-request-id", "access-log-test-2")
        .body(full(""))
        .expect("request");
    let res = client::send(&http, req).await;
    let sent = res.json()["headers"]["traceparent"][0]
        .as_str()
        .expect("the upstream got a traceparent")
        .to_string();
    let line = eventually(WAIT, || async { sidecar.access_log("access-log-test-2") }).await;
    assert_eq!(line["trace_id"], sent[3..35], "{line}");
}
