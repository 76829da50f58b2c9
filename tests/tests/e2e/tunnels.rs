//! Connections that stop being request/response, in the localhost mode: `CONNECT name:port`
//! tunnels to an UpstreamPolicy that allows them (and the refusal of one that does not),
//! WebSocket over HTTP/2 (extended CONNECT, RFC 8441) to an HTTP/1.1 WebSocket server, and an
//! open tunnel holding the sidecar's drain on shutdown until it ends.

use std::time::Duration;

use bulwark_tests::streams::{StreamServer, read_line, round_trip};
use bulwark_tests::{Sidecar, eventually, policy};
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const WAIT: Duration = Duration::from_secs(10);

async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port")
}

/// Sends `head` on a new connection to `addr` and reads the response head (up to the blank
/// line), leaving the connection ready for what follows.
async fn raw_request(addr: std::net::SocketAddr, head: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = stream
            .read(&mut byte)
            .await
            .expect("read the response head");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn connect_tunnels_to_a_policy_that_allows_it_and_refuses_one_that_does_not() {
    let db = StreamServer::line_echo(loopback().await);
    let other = StreamServer::line_echo(loopback().await);
    let sidecar = Sidecar::builder()
        .policies_yaml(format!(
            "{}---\n{}",
            policy::upstream("db", db.addr)
                .spec("allowConnect: true")
                .to_yaml(),
            policy::upstream("cache", other.addr).to_yaml(),
        ))
        .start()
        .await;

    let (mut tunnel, head) = raw_request(
        sidecar.outbound(),
        "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(
        round_trip(&mut tunnel, "through the tunnel").await,
        "through the tunnel"
    );
    assert_eq!(round_trip(&mut tunnel, "and again").await, "and again");
    drop(tunnel);
    assert_eq!(db.connections(), 1);
    let line = eventually(WAIT, || async {
        sidecar
            .access_lines()
            .into_iter()
            .find(|l| l["protocol"] == "connect")
    })
    .await;
    assert_eq!(line["upstream"], "db", "{line}");
    assert_eq!(line["destination"], db.addr.to_string(), "{line}");
    // Both lines, newline included, each way.
    assert_eq!(line["bytes_sent"], 29, "{line}");
    assert_eq!(line["bytes_received"], 29, "{line}");
    sidecar
        .await_metric(
            "bulwark_tunnels_total",
            &[("direction", "outbound"), ("kind", "connect")],
            1.0,
            WAIT,
        )
        .await;

    // A policy without `allowConnect`: refused, and nothing reaches its endpoint.
    let (mut refused, head) = raw_request(
        sidecar.outbound(),
        "CONNECT cache:6379 HTTP/1.1\r\nHost: cache:6379\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert!(
        head.contains("x-bulwark-error: connect-not-allowed\r\n"),
        "{head}"
    );
    let mut body = String::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 256];
        while let Ok(n) = refused.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            body.push_str(&String::from_utf8_lossy(&chunk[..n]));
            if body.ends_with('\n') {
                break;
            }
        }
    })
    .await;
    assert_eq!(
        body,
        "CONNECT to cache:6379 is not allowed: UpstreamPolicy cache does not set spec.allowConnect\n"
    );
    assert_eq!(other.connections(), 0);

    // A name no policy knows.
    let (_, head) = raw_request(
        sidecar.outbound(),
        "CONNECT nowhere:1 HTTP/1.1\r\nHost: nowhere:1\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(head.contains("x-bulwark-error: no-route\r\n"), "{head}");
}

/// An HTTP/2 connection to the sidecar's outbound listener, its SETTINGS already exchanged
/// (extended CONNECT may only be sent once the server announced it).
async fn h2_connection(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("the HTTP/2 handshake");
    tokio::spawn(conn);
    // A first request completes only after the server's SETTINGS were read; to a name no
    // policy knows, it reaches no server.
    let warm = Request::get("http://warm-up/")
        .body(Empty::new())
        .expect("request");
    let _ = send.send_request(warm).await;
    send
}

fn extended_connect(protocol: &'static str) -> Request<Empty<bytes::Bytes>> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri("http://chat/chat")
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .expect("request");
    req.extensions_mut().insert(Protocol::from_static(protocol));
    req
}

#[tokio::test]
async fn websocket_over_http2_reaches_an_http1_websocket_server() {
    let chat = StreamServer::websocket_echo(loopback().await);
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("chat", chat.addr).to_yaml())
        .start()
        .await;
    let mut h2 = h2_connection(sidecar.outbound()).await;

    let mut rsp = h2
        .send_request(extended_connect("websocket"))
        .await
        .expect("the extended CONNECT is answered");
    assert_eq!(rsp.status(), StatusCode::OK, "{:?}", rsp.headers());
    let upgraded = hyper::upgrade::on(&mut rsp)
        .await
        .expect("the stream becomes a WebSocket");
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    ws.send(Message::text("over h2")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("a reply").expect("ok"),
        Message::text("over h2")
    );
    let big = vec![7u8; 100 * 1024];
    ws.send(Message::binary(big.clone())).await.expect("send");
    assert_eq!(
        ws.next().await.expect("a reply").expect("ok"),
        Message::binary(big)
    );
    drop(ws);
    assert_eq!(chat.connections(), 1, "one HTTP/1.1 upgrade to the server");

    // Another protocol over extended CONNECT cannot become an HTTP/1.1 upgrade: told why.
    let rsp = h2
        .send_request(extended_connect("webtransport"))
        .await
        .expect("answered");
    assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        rsp.headers().get("x-bulwark-error").map(|v| v.as_bytes()),
        Some(&b"bad-request"[..])
    );
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "invalid request: extended CONNECT for \"webtransport\" cannot be sent to an HTTP/1.1 upstream; only websocket can\n"
    );
    assert_eq!(chat.connections(), 1, "nothing more reached the server");
}

#[tokio::test]
async fn an_open_tunnel_holds_the_drain_until_it_ends() {
    let db = StreamServer::line_echo(loopback().await);
    let sidecar = Sidecar::builder()
        .policies_yaml(
            policy::upstream("db", db.addr)
                .spec("allowConnect: true")
                .to_yaml(),
        )
        .args(["--drain-timeout", "30s"])
        .start()
        .await;
    let (mut tunnel, head) = raw_request(
        sidecar.outbound(),
        "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    sidecar
        .await_metric(
            "bulwark_open_tunnels",
            &[("direction", "outbound")],
            1.0,
            WAIT,
        )
        .await;

    sidecar.signal_term();
    eventually(WAIT, || async {
        let ready = sidecar.admin_get("/health/ready").await.text();
        (ready == "not ready: draining for shutdown\n").then_some(())
    })
    .await;
    // Draining, the tunnel still carries bytes: the sidecar stays up for it.
    assert_eq!(round_trip(&mut tunnel, "still here").await, "still here");

    // The tunnel ends: the sidecar exits at once, long before its drain timeout.
    tunnel.shutdown().await.expect("close our side");
    assert_eq!(
        read_line(&mut tunnel).await,
        "",
        "the server closed its side too"
    );
    let status = sidecar
        .wait_exit(WAIT)
        .await
        .expect("exits once the tunnel ended");
    assert_eq!(status.code(), Some(0), "{status}");
}
