//! Tests of the kit itself: the test upstreams answer as documented when called directly
//! (fault injection included), and the `bulwark-upstream` binary starts, serves and stops.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bulwark_tests::client::{self, empty, full, request};
use bulwark_tests::pattern::{CHUNK, PatternBody, PatternCheck};
use bulwark_tests::pb::{EchoReply, EchoRequest, StreamRequest};
use bulwark_tests::{Fault, GrpcUpstream, HttpUpstream, eventually, fault, grpc_wire};
use futures_util::StreamExt;
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;
use prost::Message;
use tokio::time::Instant;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn http_upstream_echoes_over_http1_and_h2c() {
    let upstream = HttpUpstream::start().await;
    for http in [
        client::http1_client(upstream.addr()),
        client::h2c_client(upstream.addr()),
    ] {
        let req = request(Method::POST, "http://echo/echo")
            .header("content-type", "text/x-test")
            .body(full("hello, upstream"))
            .expect("request");
        let res = client::send(&http, req).await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.header("content-type"), Some("text/x-test"));
        assert_eq!(res.text(), "hello, upstream");
    }
    assert_eq!(upstream.requests(), 2);
    assert_eq!(upstream.requests_to("/echo"), 2);
}

#[tokio::test]
async fn http_upstream_reports_what_it_saw() {
    let upstream = HttpUpstream::start().await;
    let http1 = client::http1_client(upstream.addr());
    let req = request(Method::GET, "http://echo:8080/headers?x=1")
        .header("x-test", "one")
        .body(empty())
        .expect("request");
    let seen = client::send(&http1, req).await.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["uri"], "/headers?x=1");
    assert_eq!(seen["headers"]["host"][0], "echo:8080");
    assert_eq!(seen["headers"]["x-test"][0], "one");
    let last = upstream.last_headers().expect("a request was seen");
    assert_eq!(last.get("x-test").map(|v| v.as_bytes()), Some(&b"one"[..]));

    let h2 = client::h2c_client(upstream.addr());
    let seen = client::get(&h2, "http://echo/headers").await.json();
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["uri"], "http://echo/headers");
}

#[tokio::test]
async fn http_upstream_status_bytes_and_empty_routes() {
    let upstream = HttpUpstream::start().await;
    let http = client::http1_client(upstream.addr());

    let res = client::get(&http, "http://echo/status/418").await;
    assert_eq!(res.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(res.text(), "status 418");

    let n = 3 * CHUNK as u64 + 5;
    let res = client::get(&http, &format!("http://echo/bytes/{n}")).await;
    assert_eq!(res.header("content-length"), Some(n.to_string().as_str()));
    let mut check = PatternCheck::new();
    check.feed(&res.body);
    assert_eq!((check.len(), check.first_mismatch()), (n, None));

    let res = client::get(&http, "http://echo/bytes/1000?chunked").await;
    assert_eq!(res.header("transfer-encoding"), Some("chunked"));
    assert_eq!(res.body.len(), 1000);

    let head = request(Method::HEAD, "http://echo/bytes/777")
        .body(empty())
        .expect("request");
    let res = client::send(&http, head).await;
    assert_eq!(res.header("content-length"), Some("777"));
    assert!(res.body.is_empty());

    let res = client::get(&http, "http://echo/no-content").await;
    assert_eq!((res.status, res.body.len()), (StatusCode::NO_CONTENT, 0));
    let res = client::get(&http, "http://echo/not-modified").await;
    assert_eq!((res.status, res.body.len()), (StatusCode::NOT_MODIFIED, 0));
    let res = client::get(&http, "http://echo/nowhere").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn http_upstream_sink_checks_the_pattern() {
    let upstream = HttpUpstream::start().await;
    let http = client::http1_client(upstream.addr());
    for body in [PatternBody::sized(200_000), PatternBody::chunked(200_000)] {
        let req = request(Method::POST, "http://echo/sink")
            .body(body.boxed())
            .expect("request");
        let res = client::send(&http, req).await.json();
        assert_eq!(res["bytes"], 200_000);
        assert_eq!(res["pattern_ok"], true);
    }
    let req = request(Method::POST, "http://echo/sink")
        .body(full(vec![7u8; 10]))
        .expect("request");
    assert_eq!(client::send(&http, req).await.json()["pattern_ok"], false);
}

#[tokio::test]
async fn http_upstream_sends_trailers_over_h2() {
    let upstream = HttpUpstream::start().await;
    let res = client::get(&client::h2c_client(upstream.addr()), "http://echo/trailers").await;
    assert_eq!(res.version, Version::HTTP_2);
    assert_eq!(res.text(), "payload");
    let trailers = res.trailers.expect("trailers");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"abc"[..])
    );
}

#[tokio::test]
async fn http_upstream_counts_dropped_holds() {
    let upstream = HttpUpstream::start().await;
    for http in [
        client::http1_client(upstream.addr()),
        client::h2c_client(upstream.addr()),
    ] {
        let before = upstream.requests_to("/hold");
        let call = tokio::spawn(async move { client::get(&http, "http://echo/hold").await });
        eventually(WAIT, || async {
            (upstream.requests_to("/hold") > before).then_some(())
        })
        .await;
        call.abort();
        let _ = call.await;
    }
    eventually(WAIT, || async { (upstream.cancelled() == 2).then_some(()) }).await;
}

#[tokio::test]
async fn http_upstream_fails_on_plan() {
    let upstream = HttpUpstream::builder()
        .fail_first(1)
        .fail_percent(50)
        .start()
        .await
        .expect("start");
    let http = client::http1_client(upstream.addr());
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            client::get(&http, "http://echo/status/200")
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [503, 200, 503, 200, 503]);
}

#[tokio::test]
async fn grpc_upstream_answers_every_call_shape() {
    let upstream = GrpcUpstream::start().await;
    let mut echo = client::grpc_client_for(upstream.addr(), "echo.default").await;

    let mut req = tonic::Request::new(EchoRequest {
        message: "hi".into(),
        payload: vec![1, 2, 3],
        ..Default::default()
    });
    req.metadata_mut().insert(
        "x-request-id",
        "0123456789abcdef0123456789abcdef".parse().expect("ascii"),
    );
    let res = echo.unary(req).await.expect("unary");
    assert_eq!(
        res.metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(
        res.metadata()
            .get("x-seen-authority")
            .and_then(|v| v.to_str().ok()),
        Some("echo.default")
    );
    assert_eq!(res.get_ref().message, "hi");
    assert_eq!(res.get_ref().payload, vec![1, 2, 3]);

    let status = echo
        .unary(EchoRequest {
            fail_with_code: Code::FailedPrecondition as i32,
            fail_message: "card declined".into(),
            ..Default::default()
        })
        .await
        .expect_err("asked to fail");
    assert_eq!(
        (status.code(), status.message()),
        (Code::FailedPrecondition, "card declined")
    );

    let replies: Vec<_> = echo
        .server_stream(StreamRequest {
            count: 5,
            payload_size: 10,
            delay_ms: 0,
        })
        .await
        .expect("server stream")
        .into_inner()
        .map(|r| r.expect("reply").count)
        .collect()
        .await;
    assert_eq!(replies, [1, 2, 3, 4, 5]);

    let sent = futures_util::stream::iter((0..7).map(|_| EchoRequest {
        payload: vec![0; 100],
        ..Default::default()
    }));
    let reply = echo
        .client_stream(sent)
        .await
        .expect("client stream")
        .into_inner();
    assert_eq!((reply.count, reply.total_bytes), (7, 700));

    let sent = futures_util::stream::iter((0..3).map(|i| EchoRequest {
        message: format!("m{i}"),
        ..Default::default()
    }));
    let replies: Vec<_> = echo
        .bidi(sent)
        .await
        .expect("bidi")
        .into_inner()
        .map(|r| r.expect("reply").message)
        .collect()
        .await;
    assert_eq!(replies, ["m0", "m1", "m2"]);
    assert_eq!(upstream.requests_to("/bulwark.test.v1.Echo/Unary"), 2);
    assert_eq!(upstream.requests(), 5);
    assert_eq!(upstream.cancelled(), 0);
}

#[tokio::test]
async fn grpc_upstream_counts_abandoned_calls() {
    let upstream = GrpcUpstream::start().await;
    let echo = client::grpc_client(upstream.addr()).await;

    let mut hold = echo.clone();
    let call = tokio::spawn(async move { hold.hold(EchoRequest::default()).await });
    eventually(WAIT, || async {
        (upstream.requests_to("/bulwark.test.v1.Echo/Hold") == 1).then_some(())
    })
    .await;
    call.abort();
    let _ = call.await;
    eventually(WAIT, || async { (upstream.cancelled() == 1).then_some(()) }).await;

    let mut stream = echo
        .clone()
        .server_stream(StreamRequest {
            count: 1000,
            payload_size: 10,
            delay_ms: 10,
        })
        .await
        .expect("server stream")
        .into_inner();
    assert_eq!(stream.next().await.expect("one").expect("reply").count, 1);
    drop(stream);
    eventually(WAIT, || async { (upstream.cancelled() == 2).then_some(()) }).await;
}

#[tokio::test]
async fn grpc_upstream_ignores_grpc_timeout_so_the_sidecar_must_enforce_it() {
    let upstream = GrpcUpstream::start().await;
    let h2 = client::h2c_client(upstream.addr());
    let call = grpc_wire::unary(
        "echo",
        "/bulwark.test.v1.Echo/Unary",
        &EchoRequest {
            message: "late".into(),
            delay_ms: 300,
            ..Default::default()
        },
        &[("grpc-timeout", "50m")],
    );
    let res = client::send(&h2, call).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(grpc_wire::status(&res), Some((0, String::new())));
    assert!(!res.body.is_empty(), "a reply message");
    let seen = upstream.last_headers().expect("headers");
    assert_eq!(
        seen.get("grpc-timeout").map(|v| v.as_bytes()),
        Some(&b"50m"[..])
    );

    let failing = grpc_wire::unary(
        "echo",
        "/bulwark.test.v1.Echo/Unary",
        &EchoRequest {
            fail_with_code: Code::NotFound as i32,
            fail_message: "no such \"thing\"".into(),
            ..Default::default()
        },
        &[],
    );
    let res = client::send(&h2, failing).await;
    assert!(grpc_wire::is_trailers_only(&res), "{res:?}");
    assert_eq!(
        grpc_wire::status(&res),
        Some((Code::NotFound as i32, "no such \"thing\"".to_string()))
    );
}

#[tokio::test]
async fn grpc_upstream_fails_on_plan() {
    let upstream = GrpcUpstream::builder()
        .fail_percent(100)
        .start()
        .await
        .expect("start");
    let mut echo = client::grpc_client(upstream.addr()).await;
    let status = echo
        .unary(EchoRequest::default())
        .await
        .expect_err("injected");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "injected failure")
    );
}

#[tokio::test]
async fn upstream_binary_serves_until_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulwark-upstream"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--fail-percent",
            "50",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bulwark-upstream");
    let guard = KillOnDrop(child.id());
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("read the listening line");
    let (http, grpc) = parse_listening(&line);

    let client = client::http1_client(http);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(
            client::get(&client, "http://echo/status/200")
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(seen, [200, 503, 200, 503]);
    let mut echo = client::grpc_client(grpc).await;
    assert!(echo.unary(EchoRequest::default()).await.is_ok());
    assert_eq!(
        echo.unary(EchoRequest::default())
            .await
            .expect_err("every second call fails")
            .code(),
        Code::Unavailable
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = eventually(WAIT, || {
        let exited = child.try_wait().expect("wait");
        async move { exited }
    })
    .await;
    assert!(status.success(), "exit status {status}");
    drop(guard);
}

fn parse_listening(line: &str) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let mut http = None;
    let mut grpc = None;
    for word in line
        .trim()
        .strip_prefix("listening ")
        .expect("listening line")
        .split(' ')
    {
        match word.split_once('=') {
            Some(("http", a)) => http = a.parse().ok(),
            Some(("grpc", a)) => grpc = a.parse().ok(),
            _ => {}
        }
    }
    (http.expect("http address"), grpc.expect("grpc address"))
}

/// Kills a process on drop (the binary test must leave nothing running, even when it fails).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn pattern_body_streams_through_echo_without_buffering_it_all() {
    let upstream = HttpUpstream::start().await;
    let http = client::http1_client(upstream.addr());
    let n = 8 * 1024 * 1024;
    let req = request(Method::POST, "http://echo/echo")
        .body(PatternBody::chunked(n).boxed())
        .expect("request");
    let res = http.request(req).await.expect("echo");
    let mut body = res.into_body();
    let mut check = PatternCheck::new();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("frame").data_ref() {
            check.feed(data);
        }
    }
    assert_eq!((check.len(), check.first_mismatch()), (n, None));
}

#[tokio::test]
async fn http_faults_follow_the_request_headers() {
    let upstream = HttpUpstream::start().await;
    let http = client::http1_client(upstream.addr());

    // A status with pushback headers, only for the first two requests of key "a".
    let fault = Fault::new()
        .status(503)
        .retry_after("2")
        .pushback_ms(150)
        .first(2)
        .key("a");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let req = fault
            .apply(request(Method::GET, "http://echo/status/200"))
            .header("x-bulwark-attempt", "7")
            .header("grpc-timeout", "250m")
            .body(empty())
            .expect("request");
        let res = client::send(&http, req).await;
        seen.push((
            res.status.as_u16(),
            res.header("retry-after").map(str::to_string),
            res.header("grpc-retry-pushback-ms").map(str::to_string),
        ));
    }
    assert_eq!(
        seen,
        [
            (503, Some("2".into()), Some("150".into())),
            (503, Some("2".into()), Some("150".into())),
            (200, None, None),
        ]
    );
    assert_eq!(upstream.attempts_for("a"), 3);
    assert_eq!(upstream.attempts_for("b"), 0);
    let records = upstream.seen_for("a");
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].attempt, Some(7));
    assert_eq!(records[0].grpc_timeout.as_deref(), Some("250m"));
    assert_eq!(records[0].path, "/status/200");
    assert_eq!(upstream.arrivals_for("a").len(), 3);

    // Another key counts on its own; a request without fault headers is served.
    let req = Fault::new()
        .status(429)
        .first(1)
        .key("b")
        .apply(request(Method::GET, "http://echo/status/201"))
        .body(empty())
        .expect("request");
    assert_eq!(client::send(&http, req).await.status, 429);
    assert_eq!(
        client::get(&http, "http://echo/status/201").await.status,
        201
    );
    assert_eq!(upstream.requests(), 5);

    // A typo in a fault header is answered 400, not ignored.
    let req = request(Method::GET, "http://echo/status/200")
        .header(fault::STATUS, "five hundred")
        .body(empty())
        .expect("request");
    assert_eq!(client::send(&http, req).await.status, 400);
}

#[tokio::test]
async fn http_fault_delay_then_serve_and_count_cancellations() {
    let upstream = HttpUpstream::start().await;
    let http = client::http1_client(upstream.addr());
    let started = Instant::now();
    let req = Fault::new()
        .delay_ms(150)
        .key("slow")
        .apply(request(Method::GET, "http://echo/status/200"))
        .body(empty())
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, 200, "a delay alone delays, then serves");
    assert!(started.elapsed() >= Duration::from_millis(150));

    let http2 = http.clone();
    let call = tokio::spawn(async move {
        let req = Fault::new()
            .delay_ms(60_000)
            .key("dropped")
            .apply(request(Method::GET, "http://echo/status/200"))
            .body(empty())
            .expect("request");
        client::send(&http2, req).await
    });
    eventually(WAIT, || async {
        (upstream.attempts_for("dropped") == 1).then_some(())
    })
    .await;
    call.abort();
    let _ = call.await;
    eventually(WAIT, || async {
        (upstream.cancelled_for("dropped") == 1).then_some(())
    })
    .await;
    assert_eq!(upstream.cancelled_for("slow"), 0);
}

#[tokio::test]
async fn http_fault_reset_drops_http1_connections_and_resets_h2_streams() {
    let upstream = HttpUpstream::start().await;
    for http in [
        client::http1_client(upstream.addr()),
        client::h2c_client(upstream.addr()),
    ] {
        let req = Fault::new()
            .reset()
            .apply(request(Method::GET, "http://echo/status/200"))
            .body(empty())
            .expect("request");
        let err = client::try_send(&http, req)
            .await
            .expect_err("no answer to a reset request");
        drop(err);
        // The client (and, for h2, its connection) still works.
        assert_eq!(
            client::get(&http, "http://echo/status/200").await.status,
            200
        );
    }
}

#[tokio::test]
async fn http_always_fail_answers_every_request() {
    let upstream = HttpUpstream::builder()
        .always_fail(502)
        .start()
        .await
        .expect("start");
    let http = client::http1_client(upstream.addr());
    for _ in 0..3 {
        let res = client::get(&http, "http://echo/headers").await;
        assert_eq!(
            (res.status.as_u16(), res.text().as_str()),
            (502, "injected failure\n")
        );
    }
    // The request's own fault wins.
    let req = Fault::new()
        .status(504)
        .apply(request(Method::GET, "http://echo/headers"))
        .body(empty())
        .expect("request");
    assert_eq!(client::send(&http, req).await.status, 504);
    assert_eq!(upstream.requests(), 4);
}

#[tokio::test]
async fn grpc_faults_follow_the_metadata() {
    let upstream = GrpcUpstream::start().await;
    let h2 = client::h2c_client(upstream.addr());
    let call = |fault: &Fault| {
        let mut req = grpc_wire::unary(
            "echo",
            "/bulwark.test.v1.Echo/Unary",
            &EchoRequest {
                message: "hi".into(),
                ..Default::default()
            },
            &[("grpc-timeout", "99m")],
        );
        fault.insert_into(req.headers_mut());
        req
    };
    let fault = Fault::new()
        .grpc(Code::Unavailable)
        .pushback_ms(-1)
        .first(1)
        .key("g");
    let res = client::send(&h2, call(&fault)).await;
    assert!(grpc_wire::is_trailers_only(&res), "{res:?}");
    assert_eq!(
        grpc_wire::status(&res),
        Some((Code::Unavailable as i32, "injected failure".to_string()))
    );
    assert_eq!(res.header("grpc-retry-pushback-ms"), Some("-1"));
    let res = client::send(&h2, call(&fault)).await;
    assert_eq!(grpc_wire::status(&res), Some((0, String::new())));
    assert_eq!(upstream.attempts_for("g"), 2);
    assert_eq!(
        upstream.seen_for("g")[0].grpc_timeout.as_deref(),
        Some("99m")
    );

    // An HTTP status without grpc-status, and a reset stream.
    let res = client::send(&h2, call(&Fault::new().status(503))).await;
    assert_eq!(res.status, 503);
    assert_eq!(grpc_wire::status(&res), None);
    client::try_send(&h2, call(&Fault::new().reset()))
        .await
        .expect_err("a reset stream");

    // Through tonic: the same metadata.
    let mut echo = client::grpc_client(upstream.addr()).await;
    let mut req = tonic::Request::new(EchoRequest::default());
    Fault::new()
        .grpc(Code::ResourceExhausted)
        .insert_into_metadata(req.metadata_mut());
    let status = echo.unary(req).await.expect_err("injected");
    assert_eq!(status.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn grpc_upstream_serves_other_methods_as_unary() {
    let upstream = GrpcUpstream::builder()
        .fault(Fault::new().grpc(Code::Unavailable).first(1))
        .start()
        .await
        .expect("start");
    let h2 = client::h2c_client(upstream.addr());
    let call = || {
        grpc_wire::unary(
            "bbd",
            "/bbd.v1.Dispatch/CreateOrder",
            &EchoRequest {
                message: "order 1".into(),
                ..Default::default()
            },
            &[],
        )
    };
    let res = client::send(&h2, call()).await;
    assert_eq!(
        grpc_wire::status(&res).map(|(code, _)| code),
        Some(Code::Unavailable as i32),
        "the builder's fault, first call only"
    );
    let res = client::send(&h2, call()).await;
    assert_eq!(grpc_wire::status(&res), Some((0, String::new())));
    let reply = EchoReply::decode(res.body.slice(5..)).expect("an EchoReply");
    assert_eq!(reply.message, "order 1");
    assert_eq!(upstream.requests_to("/bbd.v1.Dispatch/CreateOrder"), 2);
}
