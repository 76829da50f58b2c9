//! HTTP/2 and gRPC through the sidecar: h2c prior knowledge beside HTTP/1.1 on one port, the
//! forced protocols, every gRPC call shape with flow control, status and trailers passed
//! through exactly, `grpc-timeout`, and cancellation in both directions.

use std::time::Duration;

use bulwark_tests::client::{self, empty, full, request};
use bulwark_tests::grpc_wire;
use bulwark_tests::pattern::{PatternBody, PatternCheck};
use bulwark_tests::pb::echo_client::EchoClient;
use bulwark_tests::pb::{EchoRequest, StreamRequest};
use bulwark_tests::{GrpcUpstream, HttpUpstream, Sidecar, eventually, policy};
use futures_util::StreamExt;
use http::{Method, StatusCode, Version};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(5);

async fn grpc_setup() -> (GrpcUpstream, Sidecar, EchoClient<Channel>) {
    let upstream = GrpcUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(
            policy::upstream("echo", upstream.addr())
                .protocol("grpc")
                .spec("timeouts: { request: 30s }")
                .to_yaml(),
        )
        // Every other test runs the default single-threaded runtime; the gRPC call shapes run
        // on the multi-threaded one.
        .args(["--workers", "2"])
        .start()
        .await;
    let echo = client::grpc_client(sidecar.outbound()).await;
    (upstream, sidecar, echo)
}

fn meta<'a>(md: &'a tonic::metadata::MetadataMap, key: &str) -> Option<&'a str> {
    md.get(key).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn h2c_and_http1_share_the_outbound_port() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
        .start()
        .await;

    let h2 = client::h2c_client(sidecar.outbound());
    let res = client::get(&h2, "http://echo/headers").await;
    assert_eq!((res.status, res.version), (StatusCode::OK, Version::HTTP_2));
    let seen = res.json();
    assert_eq!(
        seen["version"], "HTTP/2.0",
        "auto speaks the caller's version"
    );
    assert_eq!(seen["headers"]["x-bulwark-attempt"][0], "1");

    let http1 = client::http1_client(sidecar.outbound());
    let res = client::get(&http1, "http://echo/headers").await;
    assert_eq!(
        (res.status, res.version),
        (StatusCode::OK, Version::HTTP_11)
    );
    assert_eq!(res.json()["version"], "HTTP/1.1");
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn h2c_bodies_stream_and_trailers_arrive() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
        .start()
        .await;
    let h2 = client::h2c_client(sidecar.outbound());

    let req = request(Method::POST, "http://echo/echo")
        .body(PatternBody::sized(4 * 1024 * 1024).boxed())
        .expect("request");
    let res = client::send(&h2, req).await;
    let mut check = PatternCheck::new();
    check.feed(&res.body);
    assert_eq!(
        (check.len(), check.first_mismatch()),
        (4 * 1024 * 1024, None)
    );

    let res = client::get(&h2, "http://echo/trailers").await;
    assert_eq!(res.text(), "payload");
    let trailers = res.trailers.expect("trailers");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"abc"[..])
    );

    let res = client::get(&h2, "http://echo/no-content").await;
    assert_eq!((res.status, res.body.len()), (StatusCode::NO_CONTENT, 0));
}

#[tokio::test]
async fn forced_protocols_override_the_callers_version() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::documents([
            policy::upstream("as-http1", upstream.addr())
                .protocol("http1")
                .to_yaml(),
            policy::upstream("as-http2", upstream.addr())
                .protocol("http2")
                .to_yaml(),
        ]))
        .start()
        .await;
    let h2 = client::h2c_client(sidecar.outbound());
    let http1 = client::http1_client(sidecar.outbound());

    let seen = client::get(&h2, "http://as-http1/headers").await.json();
    assert_eq!(seen["version"], "HTTP/1.1");
    let seen = client::get(&http1, "http://as-http2/headers").await.json();
    assert_eq!(seen["version"], "HTTP/2.0");
}

#[tokio::test]
async fn h2c_caller_reset_cancels_the_upstream_request() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
        .start()
        .await;
    let h2 = client::h2c_client(sidecar.outbound());
    let call = tokio::spawn(async move { client::get(&h2, "http://echo/hold").await });
    eventually(WAIT, || async {
        (upstream.requests_to("/hold") == 1).then_some(())
    })
    .await;
    call.abort();
    let _ = call.await;
    eventually(WAIT, || async { (upstream.cancelled() == 1).then_some(()) }).await;
}

#[tokio::test]
async fn grpc_unary_round_trip_with_metadata() {
    let (upstream, _sidecar, mut echo) = grpc_setup().await;
    let res = echo
        .unary(EchoRequest {
            message: "ping".into(),
            payload: vec![7; 1000],
            ..Default::default()
        })
        .await
        .expect("unary");
    assert_eq!(res.get_ref().message, "ping");
    assert_eq!(res.get_ref().payload, vec![7; 1000]);
    let md = res.metadata();
    assert_eq!(meta(md, "x-seen-authority"), Some("echo"));
    assert_eq!(meta(md, "x-bulwark-attempt"), Some("1"));
    let id = meta(md, "x-request-id").expect("a created request id");
    assert_eq!(id.len(), 32, "x-request-id {id:?}");
    assert!(meta(md, "traceparent").is_some_and(|tp| tp.starts_with("00-")));

    let mut req = tonic::Request::new(EchoRequest::default());
    req.metadata_mut()
        .insert("x-request-id", "grpc-id-1".parse().expect("ascii"));
    let res = echo.unary(req).await.expect("unary");
    assert_eq!(meta(res.metadata(), "x-request-id"), Some("grpc-id-1"));
    assert_eq!(upstream.requests_to("/bulwark.test.v1.Echo/Unary"), 2);
}

#[tokio::test]
async fn grpc_server_streaming_delivers_every_message_in_order() {
    let (upstream, _sidecar, mut echo) = grpc_setup().await;
    let counts: Vec<u64> = echo
        .server_stream(StreamRequest {
            count: 200,
            payload_size: 1024,
            delay_ms: 0,
        })
        .await
        .expect("server stream")
        .into_inner()
        .map(|r| {
            let r = r.expect("reply");
            assert_eq!(r.payload.len(), 1024);
            r.count
        })
        .collect()
        .await;
    assert_eq!(counts, (1..=200).collect::<Vec<u64>>());

    // 32 MiB in 64 KiB messages: more than any window, so flow control must do its work.
    let mut stream = echo
        .server_stream(StreamRequest {
            count: 512,
            payload_size: 64 * 1024,
            delay_ms: 0,
        })
        .await
        .expect("server stream")
        .into_inner();
    let (mut n, mut bytes) = (0u64, 0usize);
    while let Some(reply) = stream.next().await {
        let reply = reply.expect("reply");
        n += 1;
        assert_eq!(reply.count, n);
        bytes += reply.payload.len();
    }
    assert_eq!((n, bytes), (512, 512 * 64 * 1024));
    assert_eq!(upstream.cancelled(), 0);
}

#[tokio::test]
async fn grpc_client_streaming_counts_every_message() {
    let (_upstream, _sidecar, mut echo) = grpc_setup().await;
    let requests = futures_util::stream::iter((0..100).map(|i| EchoRequest {
        message: format!("m{i}"),
        payload: vec![1; 10_000],
        ..Default::default()
    }));
    let reply = echo
        .client_stream(requests)
        .await
        .expect("client stream")
        .into_inner();
    assert_eq!((reply.count, reply.total_bytes), (100, 1_000_000));
    assert_eq!(reply.message, "received 100");
}

#[tokio::test]
async fn grpc_bidi_ping_pong() {
    const N: usize = 300;
    let (_upstream, _sidecar, mut echo) = grpc_setup().await;
    let (tx, rx) = mpsc::channel(1);
    let mut replies = echo
        .bidi(ReceiverStream::new(rx))
        .await
        .expect("bidi")
        .into_inner();
    // Each message waits for the previous reply: no buffering anywhere may hold a message back.
    for i in 0..N {
        tx.send(EchoRequest {
            message: format!("ping {i}"),
            payload: vec![(i % 256) as u8; 512],
            ..Default::default()
        })
        .await
        .expect("send");
        let reply = tokio::time::timeout(WAIT, replies.next())
            .await
            .expect("a reply within 5 s")
            .expect("the stream is open")
            .expect("reply");
        assert_eq!(reply.message, format!("ping {i}"));
        assert_eq!(reply.count, i as u64 + 1);
        assert_eq!(reply.payload, vec![(i % 256) as u8; 512]);
    }
    drop(tx);
    assert!(
        replies.next().await.is_none(),
        "the stream ends after the caller's end"
    );
}

#[tokio::test]
async fn grpc_status_and_message_pass_through_exactly() {
    let (upstream, _sidecar, mut echo) = grpc_setup().await;
    for (code, message) in [
        (
            Code::FailedPrecondition,
            "card declined: insufficient funds",
        ),
        (Code::NotFound, "order \"A-1\" not found (100% sure) ✓"),
        (Code::Unavailable, "upstream says: try later"),
        (Code::Internal, "boom"),
    ] {
        let status = echo
            .unary(EchoRequest {
                fail_with_code: code as i32,
                fail_message: message.into(),
                ..Default::default()
            })
            .await
            .expect_err("asked to fail");
        assert_eq!((status.code(), status.message()), (code, message));
    }
    assert_eq!(upstream.requests(), 4, "no call was retried");
}

#[tokio::test]
async fn grpc_status_after_messages_arrives_in_trailers() {
    let (_upstream, _sidecar, mut echo) = grpc_setup().await;
    let requests = futures_util::stream::iter([
        EchoRequest {
            message: "one".into(),
            ..Default::default()
        },
        EchoRequest {
            message: "two".into(),
            ..Default::default()
        },
        EchoRequest {
            fail_with_code: Code::ResourceExhausted as i32,
            fail_message: "quota used up".into(),
            ..Default::default()
        },
    ]);
    let mut replies = echo.bidi(requests).await.expect("bidi").into_inner();
    assert_eq!(replies.next().await.expect("1").expect("ok").message, "one");
    assert_eq!(replies.next().await.expect("2").expect("ok").message, "two");
    let status = replies
        .next()
        .await
        .expect("the status")
        .expect_err("the third fails");
    assert_eq!(
        (status.code(), status.message()),
        (Code::ResourceExhausted, "quota used up")
    );
}

#[tokio::test]
async fn grpc_timeout_ends_the_call_with_deadline_exceeded() {
    let (upstream, sidecar, _echo) = grpc_setup().await;
    // By hand: tonic's client would enforce the deadline itself and hide the sidecar's answer.
    let h2 = client::h2c_client(sidecar.outbound());
    let call = grpc_wire::unary(
        "echo",
        "/bulwark.test.v1.Echo/Hold",
        &EchoRequest::default(),
        &[("grpc-timeout", "300m")],
    );
    let res = tokio::time::timeout(WAIT, client::send(&h2, call))
        .await
        .expect("the sidecar answers within 5 s");
    assert_eq!(res.status, StatusCode::OK);
    let (code, _message) = grpc_wire::status(&res).expect("a grpc-status");
    assert_eq!(code, Code::DeadlineExceeded as i32, "{res:?}");
    // The upstream call is abandoned too, not left running.
    eventually(WAIT, || async { (upstream.cancelled() == 1).then_some(()) }).await;
}

#[tokio::test]
async fn grpc_caller_cancel_reaches_the_upstream() {
    let (upstream, _sidecar, echo) = grpc_setup().await;
    let mut hold = echo.clone();
    let call = tokio::spawn(async move { hold.hold(EchoRequest::default()).await });
    eventually(WAIT, || async {
        (upstream.requests_to("/bulwark.test.v1.Echo/Hold") == 1).then_some(())
    })
    .await;
    call.abort();
    let _ = call.await;
    eventually(WAIT, || async { (upstream.cancelled() == 1).then_some(()) }).await;

    // A server stream the caller stops reading and drops.
    let mut stream = echo
        .clone()
        .server_stream(StreamRequest {
            count: 10_000,
            payload_size: 100,
            delay_ms: 5,
        })
        .await
        .expect("server stream")
        .into_inner();
    assert_eq!(stream.next().await.expect("1").expect("ok").count, 1);
    assert_eq!(stream.next().await.expect("2").expect("ok").count, 2);
    drop(stream);
    eventually(WAIT, || async { (upstream.cancelled() == 2).then_some(()) }).await;
}

#[tokio::test]
async fn upstream_going_away_ends_the_callers_call() {
    let (upstream, _sidecar, echo) = grpc_setup().await;
    let mut hold = echo.clone();
    let call = tokio::spawn(async move { hold.hold(EchoRequest::default()).await });
    eventually(WAIT, || async {
        (upstream.requests_to("/bulwark.test.v1.Echo/Hold") == 1).then_some(())
    })
    .await;
    // The upstream process "dies": its listener and every connection close.
    drop(upstream);
    let result = tokio::time::timeout(WAIT, call)
        .await
        .expect("the caller learns within 5 s")
        .expect("join");
    let status = result.expect_err("the call cannot succeed");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn grpc_and_plain_http2_mix_on_one_connection() {
    let grpc = GrpcUpstream::start().await;
    let http = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::documents([
            policy::upstream("echo", grpc.addr())
                .protocol("grpc")
                .to_yaml(),
            policy::upstream("web", http.addr()).to_yaml(),
        ]))
        .start()
        .await;
    let h2 = client::h2c_client(sidecar.outbound());
    let res = client::send(
        &h2,
        grpc_wire::unary(
            "echo",
            "/bulwark.test.v1.Echo/Unary",
            &EchoRequest {
                message: "raw".into(),
                ..Default::default()
            },
            &[],
        ),
    )
    .await;
    assert_eq!(grpc_wire::status(&res), Some((0, String::new())));
    let res = client::send(
        &h2,
        request(Method::POST, "http://web/echo")
            .body(full("plain"))
            .expect("request"),
    )
    .await;
    assert_eq!(res.text(), "plain");
    let res = client::send(
        &h2,
        request(Method::GET, "http://web/status/202")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
    assert_eq!((grpc.requests(), http.requests()), (1, 2));
}
