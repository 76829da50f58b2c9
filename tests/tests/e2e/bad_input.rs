//! Callers that misbehave: oversized headers get 431, malformed requests get 400 or a closed
//! connection, garbage after the HTTP/2 preface closes only that connection — and the sidecar
//! keeps serving everyone else.

use bulwark_tests::client;
use bulwark_tests::raw::RawConn;
use bulwark_tests::{HttpUpstream, Sidecar, policy};
use http::StatusCode;

const MAX_HEADER_BYTES: usize = 8192;

async fn setup() -> (HttpUpstream, Sidecar) {
    echo_sidecar(&["--max-header-bytes", &MAX_HEADER_BYTES.to_string()]).await
}

/// An upstream `echo` and a sidecar routing to it, started with `args`.
async fn echo_sidecar(args: &[&str]) -> (HttpUpstream, Sidecar) {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
        .args(args)
        .start()
        .await;
    (upstream, sidecar)
}

/// Waits until the sidecar's outbound listener holds no connection.
async fn no_outbound_connections(sidecar: &Sidecar) {
    bulwark_tests::eventually(bulwark_tests::PATIENCE, || async {
        (sidecar
            .metric("bulwark_active_connections", &[("listener", "outbound")])
            .await
            == Some(0.0))
        .then_some(())
    })
    .await;
}

/// A keep-alive request on `conn` that must still be answered 200 by the upstream.
async fn still_served(conn: &mut RawConn) {
    assert!(
        conn.write(b"GET /status/200 HTTP/1.1\r\nHost: echo\r\n\r\n")
            .await
    );
    let head = conn.read_head().await.expect("an answer");
    assert_eq!(head.status, 200);
    assert_eq!(conn.read_body(&head).await, b"status 200");
}

/// 400, or the connection closed without an answer: both are acceptable for garbage.
async fn rejected(conn: &mut RawConn) {
    if let Some(head) = conn.read_head().await {
        assert_eq!(head.status, 400, "{}", head.status_line);
    }
}

#[tokio::test]
async fn oversized_headers_get_431_and_others_are_unaffected() {
    let (upstream, sidecar) = setup().await;
    let mut bystander = RawConn::connect(sidecar.outbound()).await;
    still_served(&mut bystander).await;

    let mut conn = RawConn::connect(sidecar.outbound()).await;
    let big = "a".repeat(2 * MAX_HEADER_BYTES);
    let req = format!("GET /status/200 HTTP/1.1\r\nHost: echo\r\nX-Big: {big}\r\n\r\n");
    // The sidecar may answer and close before it has read everything we send.
    let _ = conn.write(req.as_bytes()).await;
    let head = conn.read_head().await.expect("an answer, not just a close");
    assert_eq!(head.status, 431, "{}", head.status_line);
    assert_eq!(
        upstream.requests(),
        1,
        "the oversized request never reached the upstream"
    );

    // Under the limit is fine.
    let mut conn = RawConn::connect(sidecar.outbound()).await;
    let medium = "b".repeat(MAX_HEADER_BYTES / 4);
    let req = format!("GET /status/200 HTTP/1.1\r\nHost: echo\r\nX-Medium: {medium}\r\n\r\n");
    assert!(conn.write(req.as_bytes()).await);
    assert_eq!(conn.read_head().await.expect("answer").status, 200);

    still_served(&mut bystander).await;
    let http = client::http1_client(sidecar.outbound());
    assert_eq!(
        client::get(&http, "http://echo/status/200").await.status,
        StatusCode::OK
    );
    assert!(!sidecar.has_exited());
}

#[tokio::test]
async fn malformed_requests_get_400_or_a_close() {
    let (upstream, sidecar) = setup().await;
    let mut bystander = RawConn::connect(sidecar.outbound()).await;
    still_served(&mut bystander).await;

    let garbage: [&[u8]; 4] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET /status/200 HTTP/1.1\r\nHost: echo\r\nNo-Colon-Here\r\n\r\n",
        b"GET /status/200 HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
    ];
    for bytes in garbage {
        let mut conn = RawConn::connect(sidecar.outbound()).await;
        let _ = conn.write(bytes).await;
        rejected(&mut conn).await;
    }
    assert_eq!(
        upstream.requests(),
        1,
        "no malformed request reached the upstream"
    );

    still_served(&mut bystander).await;
    let mut fresh = RawConn::connect(sidecar.outbound()).await;
    still_served(&mut fresh).await;
    assert!(!sidecar.has_exited());
}

#[tokio::test]
async fn garbage_after_the_http2_preface_closes_only_that_connection() {
    let (upstream, sidecar) = setup().await;
    let mut conn = RawConn::connect(sidecar.outbound()).await;
    let _ = conn
        .write(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nthis is not an HTTP/2 frame at all, not even close",
        )
        .await;
    // HTTP/2 answers with a GOAWAY frame (binary) and closes: read until the close.
    let mut closed = false;
    for _ in 0..64 {
        if conn.closed_by_peer().await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the connection is closed");

    let h2 = client::h2c_client(sidecar.outbound());
    assert_eq!(
        client::get(&h2, "http://echo/status/200").await.status,
        StatusCode::OK
    );
    assert_eq!(upstream.requests(), 1);
    assert!(!sidecar.has_exited());
}

/// Requests that name two destinations (RFC 9112): two Host headers, a Host that disagrees with
/// an absolute-form target, or framed both by Content-Length and Transfer-Encoding (in either
/// order, also after a well-framed request on the same connection). Each is a 400 naming the
/// problem, the connection is closed, nothing reaches the upstream — neither the request nor
/// one hidden behind its body — and it is counted.
#[tokio::test]
async fn requests_naming_two_destinations_are_refused_and_smuggling_gets_nothing_through() {
    let (upstream, sidecar) = setup().await;
    let framed_twice = "invalid request: a request is framed by Content-Length or by Transfer-Encoding; this one has both";
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "content-length-and-transfer-encoding",
            b"POST /status/200 HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: echo\r\n\r\n",
            framed_twice,
        ),
        (
            "content-length-and-transfer-encoding",
            b"POST /status/200 HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: echo\r\n\r\n",
            framed_twice,
        ),
        (
            "duplicate-host",
            b"GET /status/200 HTTP/1.1\r\nHost: echo\r\nHost: other\r\n\r\n",
            "invalid request: a request carries one Host header; this one carries 2",
        ),
        (
            "host-mismatch",
            b"GET http://echo/status/200 HTTP/1.1\r\nHost: other\r\n\r\n",
            "invalid request: the Host header \"other\" disagrees with the request target's authority \"echo\"",
        ),
    ];
    let mut counts = std::collections::HashMap::new();
    for (reason, request, message) in cases {
        *counts.entry(reason).or_insert(0.0) += 1.0;
        let mut conn = RawConn::connect(sidecar.outbound()).await;
        assert!(conn.write(request).await, "{reason}");
        let head = conn.read_head().await.expect("an answer");
        assert_eq!(head.status, 400, "{reason}");
        assert_eq!(head.header("connection"), Some("close"), "{reason}");
        let body = conn.read_body(&head).await;
        assert_eq!(
            String::from_utf8_lossy(&body).trim_end(),
            message,
            "{reason}"
        );
        assert!(
            conn.closed_by_peer().await,
            "{reason}: the connection is closed"
        );
        assert_eq!(
            sidecar
                .metric(
                    "bulwark_malformed_requests_total",
                    &[("direction", "outbound"), ("reason", reason)]
                )
                .await,
            counts.get(reason).copied(),
            "{reason}"
        );
    }
    assert_eq!(upstream.requests(), 0, "nothing reached the upstream");
    // After a well-framed request on the same connection: that one is served, the second is
    // refused, and what hides behind it reaches no one.
    let mut conn = RawConn::connect(sidecar.outbound()).await;
    still_served(&mut conn).await;
    assert!(
        conn.write(b"POST /status/200 HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: echo\r\n\r\n")
            .await
    );
    let head = conn.read_head().await.expect("an answer");
    assert_eq!(head.status, 400);
    let _ = conn.read_body(&head).await;
    assert!(conn.closed_by_peer().await, "the connection is closed");
    assert_eq!(upstream.requests(), 1, "only the well-framed request");
    assert_eq!(upstream.requests_to("/smuggled"), 0);
    // A body that merely contains such a head is a body: served.
    let inner = "GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut conn = RawConn::connect(sidecar.outbound()).await;
    let request = format!(
        "POST /status/200 HTTP/1.1\r\nHost: echo\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    assert!(conn.write(request.as_bytes()).await);
    assert_eq!(conn.read_head().await.expect("an answer").status, 200);
}

/// Clients that connect and never send a byte get the header-read timeout to start, then are
/// closed: they hold no connection (nor task) for ever. So do keep-alive connections left idle
/// between requests.
#[tokio::test]
async fn silent_connections_are_closed_after_the_header_read_timeout() {
    let (_upstream, sidecar) = echo_sidecar(&["--header-read-timeout", "300ms"]).await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(RawConn::connect(sidecar.outbound()).await);
    }
    for conn in &mut silent {
        assert!(conn.closed_by_peer().await, "a silent connection is closed");
    }
    no_outbound_connections(&sidecar).await;
    // A client that speaks is served as ever; once it stops, its idle keep-alive connection
    // gets the same time before it is closed.
    let mut conn = RawConn::connect(sidecar.outbound()).await;
    still_served(&mut conn).await;
    assert!(
        conn.closed_by_peer().await,
        "an idle keep-alive connection is closed"
    );
}

/// A client that starts a request head and does not finish it within the header-read timeout
/// (a slowloris) gets 408 and a closed connection, counted; so does one that starts its next
/// head on a keep-alive connection and stalls. A request whose upstream takes longer than the
/// timeout is not a slow head: it is answered.
#[tokio::test]
async fn a_request_head_that_never_finishes_gets_408() {
    let (upstream, sidecar) = echo_sidecar(&["--header-read-timeout", "500ms"]).await;
    let timed_out = "the request head did not arrive within the header-read timeout";
    let mut slow = RawConn::connect(sidecar.outbound()).await;
    assert!(slow.write(b"GET /status/200 HTTP/1.1\r\nHost: ec").await);
    let head = slow.read_head().await.expect("an answer");
    assert_eq!(head.status, 408);
    assert_eq!(head.header("connection"), Some("close"));
    assert_eq!(head.header("x-bulwark-error"), Some("request-timeout"));
    assert_eq!(
        String::from_utf8_lossy(&slow.read_body(&head).await).trim_end(),
        timed_out
    );
    assert!(slow.closed_by_peer().await);
    // A slow upstream (three timeouts) holds no timer against its caller; the next head,
    // begun and stalled, is timed from the end of that response.
    let mut conn = RawConn::connect(sidecar.outbound()).await;
    assert!(
        conn.write(b"GET /status/200 HTTP/1.1\r\nHost: echo\r\nx-fault-delay-ms: 1500\r\n\r\n")
            .await
    );
    let head = conn.read_head().await.expect("an answer");
    assert_eq!(head.status, 200);
    let _ = conn.read_body(&head).await;
    assert!(conn.write(b"GET /status/2").await);
    assert_eq!(conn.read_head().await.expect("an answer").status, 408);
    assert_eq!(
        sidecar
            .metric(
                "bulwark_malformed_requests_total",
                &[("direction", "outbound"), ("reason", "head-timeout")]
            )
            .await,
        Some(2.0)
    );
    assert_eq!(upstream.requests(), 1, "only the complete request");
}

/// A listener serves at most `--max-connections` at once: one more waits in the backlog — and
/// is served as soon as one closes — and the listener says it is full.
#[tokio::test]
async fn a_full_listener_makes_new_connections_wait_and_says_so() {
    let (upstream, sidecar) = echo_sidecar(&["--max-connections", "2"]).await;
    let mut first = RawConn::connect(sidecar.outbound()).await;
    still_served(&mut first).await;
    let mut second = RawConn::connect(sidecar.outbound()).await;
    still_served(&mut second).await;
    // The third waits: it is connected (the kernel's backlog) but nothing reads its request.
    let mut third = RawConn::connect(sidecar.outbound()).await;
    assert!(
        third
            .write(b"GET /status/200 HTTP/1.1\r\nHost: echo\r\n\r\n")
            .await
    );
    bulwark_tests::eventually(bulwark_tests::PATIENCE, || async {
        (sidecar
            .metric(
                "bulwark_connection_limit_reached_total",
                &[("listener", "outbound")],
            )
            .await
            >= Some(1.0))
        .then_some(())
    })
    .await;
    assert!(sidecar.logs_contain("listener holds its most connections (--max-connections)"));
    assert_eq!(upstream.requests(), 2, "the third request waits");
    // One closes: the third is served.
    drop(first);
    let head = third
        .read_head()
        .await
        .expect("served once a place is free");
    assert_eq!(head.status, 200);
    assert_eq!(third.read_body(&head).await, b"status 200");
    drop(second);
}

/// A chunked body the caller gets wrong (a chunk size that overflows) is the caller's fault: a
/// 400 in our words, the connection closed, counted — not a 502 blaming the upstream, and not a
/// failure counted against its breaker.
#[tokio::test]
async fn a_malformed_chunked_body_is_a_400_in_our_words_not_an_upstream_failure() {
    let (_upstream, sidecar) = setup().await;
    let mut conn = RawConn::connect(sidecar.outbound()).await;
    assert!(
        conn.write(b"POST /status/200 HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n")
            .await
    );
    let head = conn.read_head().await.expect("an answer");
    assert_eq!(head.status, 400);
    assert_eq!(head.header("x-bulwark-error"), Some("bad-request"));
    assert_eq!(head.header("connection"), Some("close"));
    let body = conn.read_body(&head).await;
    assert_eq!(
        String::from_utf8_lossy(&body).trim_end(),
        "invalid request: the request body is malformed: invalid chunk size: overflow"
    );
    assert!(conn.closed_by_peer().await);
    assert_eq!(
        sidecar
            .metric(
                "bulwark_malformed_requests_total",
                &[("direction", "outbound"), ("reason", "malformed-body")]
            )
            .await,
        Some(1.0)
    );
    let mut conn = RawConn::connect(sidecar.outbound()).await;
    still_served(&mut conn).await;
}

/// An HTTP/2 connection from a caller holds no resources for ever: once no stream has been
/// open on it for `--idle-timeout` it gets GOAWAY and closes — but never under a request still
/// in progress, however long that takes.
#[tokio::test]
async fn idle_http2_connections_from_callers_are_closed_but_not_under_a_request() {
    let (_upstream, sidecar) = echo_sidecar(&["--idle-timeout", "500ms"]).await;
    let stream = tokio::net::TcpStream::connect(sidecar.outbound())
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    // A request that takes three idle timeouts is not cut short.
    let slow = bulwark_tests::Fault::new()
        .delay_ms(1500)
        .apply(client::request(http::Method::GET, "http://echo/status/200"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let answer = sender.send_request(slow).await.expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    drop(answer);
    // Then, idle, the connection ends by itself (GOAWAY, then close).
    tokio::time::timeout(bulwark_tests::PATIENCE, connection)
        .await
        .expect("the idle connection is closed")
        .expect("join")
        .expect("a graceful close");
    no_outbound_connections(&sidecar).await;
}

/// Connections to upstreams are closed once unused for `--upstream-idle-timeout`: HTTP/1.1
/// keep-alive ones and an endpoint's HTTP/2 one; the next request opens a new one.
#[tokio::test]
async fn idle_upstream_connections_are_closed_and_reopened_when_needed() {
    let upstream = HttpUpstream::start().await;
    let h2 = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::documents([
            policy::upstream("echo", upstream.addr()).to_yaml(),
            policy::upstream("grpcish", h2.addr())
                .protocol("http2")
                .to_yaml(),
        ]))
        .args(["--upstream-idle-timeout", "500ms"])
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    for (name, server) in [("echo", &upstream), ("grpcish", &h2)] {
        for round in 0..2 {
            let answer = client::get(&http, &format!("http://{name}/status/200")).await;
            assert_eq!(answer.status, StatusCode::OK, "{name}");
            assert_eq!(
                server.open_connections(),
                1,
                "{name}: one connection in use"
            );
            bulwark_tests::eventually(bulwark_tests::PATIENCE, || async {
                (server.open_connections() == 0).then_some(())
            })
            .await;
            assert_eq!(server.requests(), round + 1, "{name}");
        }
    }
    assert_eq!(
        sidecar
            .metric(
                "bulwark_upstream_connections_total",
                &[("upstream", "echo"), ("protocol", "http1")]
            )
            .await,
        Some(2.0),
        "the second request needed a new connection"
    );
}
