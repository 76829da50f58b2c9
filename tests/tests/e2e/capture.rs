//! Transparent capture, as root, in network namespaces each test makes and removes: two "pods"
//! (A calls, B serves) and an un-meshed external host (C) on one bridge. Each pod runs the real
//! `bulwark-init` (its iptables rules) and the real sidecar as the uid the rules leave alone;
//! A's app and B's apps are the test's own clients and servers, made inside the namespaces. The
//! app in A calls B's and C's addresses as it would without a mesh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bulwark_tests::client::{self, empty};
use bulwark_tests::netns::{Lan, Netns};
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::pb::echo_client::EchoClient;
use bulwark_tests::sidecar::init_bin;
use bulwark_tests::streams::{StreamServer, TestCa, read_line, round_trip};
use bulwark_tests::{GrpcUpstream, HttpUpstream, PATIENCE, Sidecar, eventually};
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);
/// The uid the sidecars run as, which the rules leave uncaptured.
const SIDECAR_UID: u32 = 65532;

fn addr(member: usize, port: u16) -> SocketAddr {
    SocketAddr::new(Lan::ip(member), port)
}

/// A: the caller's pod. B: the called pod. C: an external host without a sidecar.
struct Mesh {
    lan: Lan,
    a: Sidecar,
    b: Sidecar,
    b_http: HttpUpstream,
    /// B's second HTTP app, behind A's `flaky` policy (a circuit breaker).
    b_flaky: HttpUpstream,
    b_grpc: GrpcUpstream,
    b_ws: StreamServer,
    b_echo: StreamServer,
    b_greeter: StreamServer,
    c_http: HttpUpstream,
    /// An HTTP server no policy names.
    c_plain: HttpUpstream,
    c_tls: StreamServer,
    ca: TestCa,
}

impl Mesh {
    fn ns(&self, member: usize) -> &Arc<Netns> {
        &self.lan.members[member]
    }

    async fn start(backend: &str, skip: &[&str]) -> Mesh {
        Mesh::start_with(backend, skip, "").await
    }

    /// `b_spec`: more lines under B's ServicePolicy `spec`.
    async fn start_with(backend: &str, skip: &[&str], b_spec: &str) -> Mesh {
        let lan = Lan::new(&["a", "b", "c"]);
        let (a_ns, b_ns, c_ns) = (&lan.members[0], &lan.members[1], &lan.members[2]);
        let b_http = HttpUpstream::builder()
            .fail_first(1)
            .start_on(b_ns.listen(addr(1, 8080)))
            .expect("B's HTTP app");
        let b_flaky = HttpUpstream::builder()
            .start_on(b_ns.listen(addr(1, 8082)))
            .expect("B's second HTTP app");
        let b_grpc = GrpcUpstream::builder()
            .start_on(b_ns.listen(addr(1, 9090)))
            .expect("B's gRPC app");
        let b_ws = StreamServer::websocket_echo(b_ns.listen(addr(1, 8081)));
        let b_echo = StreamServer::line_echo(b_ns.listen(addr(1, 7000)));
        let b_greeter = StreamServer::greeter(b_ns.listen(addr(1, 2525)));
        let c_http = HttpUpstream::builder()
            .start_on(c_ns.listen(addr(2, 8080)))
            .expect("C's HTTP server");
        let c_plain = HttpUpstream::builder()
            .start_on(c_ns.listen(addr(2, 8090)))
            .expect("C's other HTTP server");
        let ca = TestCa::new();
        let c_tls = StreamServer::tls_echo(
            c_ns.listen(addr(2, 8443)),
            &ca,
            &["external.test", "secure.shop.svc.cluster.local"],
        );

        let a_policies = format!(
            "\
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: orders, namespace: shop }}
spec:
  endpoints: {{ static: [\"{b_http}\"] }}
  retry: {{ maxAttempts: 3, retryOn: [\"503\"], backoff: {{ initial: 1ms }} }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: flaky, namespace: shop }}
spec:
  endpoints: {{ static: [\"{b_flaky}\"] }}
  circuitBreaker: {{ minRequests: 2, failureRate: 60%, openFor: 5m }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: orders-grpc, namespace: shop }}
spec:
  endpoints: {{ static: [\"{b_grpc}\"] }}
  protocol: grpc
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: catalog, namespace: shop }}
spec:
  endpoints: {{ static: [\"{c_http}\"] }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: secure, namespace: shop }}
spec:
  endpoints: {{ static: [\"{c_tls}\"] }}
",
            b_http = addr(1, 8080),
            b_flaky = addr(1, 8082),
            b_grpc = addr(1, 9090),
            c_http = addr(2, 8080),
            c_tls = addr(2, 8443),
        );
        let b_policies = format!(
            "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  app: {{ port: 8080 }}\n{b_spec}"
        );
        for ns in [a_ns, b_ns] {
            let mut args = vec![
                init_bin().display().to_string(),
                "--backend".into(),
                backend.into(),
                "--sidecar-uid".into(),
                SIDECAR_UID.to_string(),
            ];
            args.extend(skip.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ns.exec_ok(&args);
        }
        let sidecar = |ns: &Arc<Netns>, policies: &str| {
            Sidecar::builder()
                .netns(ns)
                .uid(SIDECAR_UID)
                .capture()
                .policies_yaml(policies.to_string())
                .args(["--namespace", "shop", "--service", "orders"])
                .args(["--detect-timeout", "300ms"])
                .start()
        };
        let a = sidecar(a_ns, &a_policies).await;
        let b = sidecar(b_ns, &b_policies).await;
        Mesh {
            lan,
            a,
            b,
            b_http,
            b_flaky,
            b_grpc,
            b_ws,
            b_echo,
            b_greeter,
            c_http,
            c_plain,
            c_tls,
            ca,
        }
    }

    /// Access log lines of `sidecar` with `field == value`.
    fn lines(sidecar: &Sidecar, field: &str, value: &str) -> Vec<serde_json::Value> {
        sidecar
            .access_lines()
            .into_iter()
            .filter(|l| l[field] == value)
            .collect()
    }
}

#[tokio::test]
async fn http_h2c_and_grpc_pass_the_callers_and_the_callees_sidecars() {
    let mesh = Mesh::start("nft", &[]).await;
    let a = mesh.ns(0);

    // HTTP/1.1 to B's address: A's sidecar retries B's first 503 (the caller's policy).
    let http = client::http1_client_in(a, addr(1, 8080));
    let res = client::send(
        &http,
        client::request(Method::GET, &format!("http://{}/status/200", addr(1, 8080)))
            .header("x-request-id", "capture-h1")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(
        mesh.b_http.requests(),
        2,
        "one failure, retried by A's sidecar"
    );
    let out = eventually(WAIT, || async { mesh.a.access_log("capture-h1") }).await;
    assert_eq!(
        (&out["direction"], &out["upstream"]),
        (&"outbound".into(), &"orders".into()),
        "{out}"
    );
    assert_eq!(out["attempts"], 2, "{out}");
    let inbound = eventually(WAIT, || async {
        let lines = Mesh::lines(&mesh.b, "request_id", "capture-h1");
        (lines.len() == 2).then_some(lines)
    })
    .await;
    assert!(
        inbound.iter().all(|l| l["direction"] == "inbound"),
        "{inbound:?}"
    );

    // h2c prior knowledge, same path.
    let h2 = client::h2c_client_in(a, addr(1, 8080));
    let res = client::get(&h2, &format!("http://{}/headers", addr(1, 8080))).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.header("x-bulwark-upstream"), Some("orders"));

    // gRPC to B's gRPC port, through A's `orders-grpc` policy and B's inbound.
    let channel = client::grpc_channel_in(a, addr(1, 9090), &addr(1, 9090).to_string()).await;
    let reply = EchoClient::new(channel)
        .unary(EchoRequest {
            message: "through the mesh".into(),
            ..Default::default()
        })
        .await
        .expect("the call passes both sidecars")
        .into_inner();
    assert_eq!(reply.message, "through the mesh");
    assert_eq!(mesh.b_grpc.requests_to("/bulwark.test.v1.Echo/Unary"), 1);
    eventually(WAIT, || async {
        (!Mesh::lines(&mesh.a, "upstream", "orders-grpc").is_empty()).then_some(())
    })
    .await;

    // A's own connections to B are not captured again: one captured connection per app
    // connection (no loop through its own listener).
    let name = "bulwark_captured_connections_total";
    let http1 = [("direction", "outbound"), ("protocol", "http1")];
    let http2 = [("direction", "outbound"), ("protocol", "http2")];
    mesh.a.await_metric(name, &http1, 1.0, PATIENCE).await;
    // The h2c and the gRPC connection.
    mesh.a.await_metric(name, &http2, 2.0, PATIENCE).await;
}

/// The caller's sidecar applies its policies to what the app sends to a pod address, and the
/// callee's sidecar its inbound policy — one `inbound.maxConcurrent` for every app port.
#[tokio::test]
async fn the_callers_breaker_and_the_callees_inbound_limit_apply_to_captured_calls() {
    let mesh = Mesh::start_with("nft", &[], "  inbound: { maxConcurrent: 1 }\n").await;
    let a = mesh.ns(0);
    let orders = client::http1_client_in(a, addr(1, 8080));
    let flaky = client::http1_client_in(a, addr(1, 8082));

    // One call holds B's only inbound slot (on port 8082)...
    let held = {
        let flaky = flaky.clone();
        let url = format!("http://{}/gate", addr(1, 8082));
        tokio::spawn(async move { client::get(&flaky, &url).await })
    };
    eventually(WAIT, || async {
        (mesh.b_flaky.requests_to("/gate") == 1).then_some(())
    })
    .await;
    // ...so B refuses calls to its other port, which never reach that app; A's `orders`
    // policy retries the 503 (three attempts), refused each time.
    let res = client::get(&orders, &format!("http://{}/status/200", addr(1, 8080))).await;
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        res.text()
    );
    assert_eq!(res.header("x-bulwark-error"), Some("bulkhead-full"));
    assert_eq!(
        res.text(),
        "shop/orders is at its inbound concurrency limit (spec.inbound.maxConcurrent 1)\n"
    );
    assert_eq!(mesh.b_http.requests(), 0);
    mesh.b
        .await_metric(
            "bulwark_bulkhead_rejections_total",
            &[("direction", "inbound")],
            3.0,
            WAIT,
        )
        .await;
    // The kubelet's probes (here from C, where no sidecar is) are not held to the limit.
    let kubelet = client::http1_client_in(mesh.ns(2), addr(1, 8082));
    let probe = client::send(
        &kubelet,
        client::request(Method::GET, &format!("http://{}/status/200", addr(1, 8082)))
            .header("user-agent", "kube-probe/1.34")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(probe.status, StatusCode::OK, "{}", probe.text());
    mesh.b_flaky.open_gate();
    let res = held.await.expect("the held call ends");
    assert_eq!(res.status, StatusCode::OK);

    // A's breaker for `flaky` (60% of at least 2) has seen one success; two failures open it...
    for _ in 0..2 {
        let res = client::get(&flaky, &format!("http://{}/status/500", addr(1, 8082))).await;
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    mesh.a.await_breaker_state("flaky", "open", WAIT).await;
    // ...and A answers for B without calling it.
    let res = client::get(&flaky, &format!("http://{}/status/200", addr(1, 8082))).await;
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        res.text()
    );
    assert_eq!(res.header("x-bulwark-error"), Some("breaker-open"));
    assert_eq!(
        mesh.b_flaky.requests(),
        4,
        "the gate, the probe and the two 500s"
    );
}

/// ip6tables captures IPv6 the same way: the original destination is read for IPv6 too, on
/// the sidecars' IPv6 listeners.
#[tokio::test]
async fn ipv6_connections_pass_both_sidecars() {
    let mesh = Mesh::start("nft", &[]).await;
    let (a, b) = (mesh.ns(0), mesh.ns(1));
    let b6 = |port| SocketAddr::new(Lan::ip6(1), port);
    let http6 = HttpUpstream::builder()
        .start_on(b.listen(b6(8080)))
        .expect("B's HTTP app on IPv6");
    let echo6 = StreamServer::line_echo(b.listen(b6(7000)));

    let http = client::http1_client_in(a, b6(8080));
    let res = client::get(&http, &format!("http://{}/status/202", b6(8080))).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text());
    assert_eq!(http6.requests_to("/status/202"), 1);
    let mut echo = a.connect(b6(7000)).await.expect("connect over IPv6");
    assert_eq!(round_trip(&mut echo, "over ipv6").await, "over ipv6");
    drop(echo);
    assert_eq!(echo6.connections(), 1);

    let name = "bulwark_captured_connections_total";
    mesh.a
        .await_metric(
            name,
            &[("direction", "outbound"), ("protocol", "http1")],
            1.0,
            WAIT,
        )
        .await;
    mesh.a
        .await_metric(
            name,
            &[("direction", "outbound"), ("protocol", "tcp")],
            1.0,
            WAIT,
        )
        .await;
    mesh.b
        .await_metric(
            name,
            &[("direction", "inbound"), ("protocol", "http1")],
            1.0,
            WAIT,
        )
        .await;
    mesh.b
        .await_metric(
            name,
            &[("direction", "inbound"), ("protocol", "tcp")],
            1.0,
            WAIT,
        )
        .await;
    let passed = eventually(WAIT, || async {
        let lines = Mesh::lines(&mesh.a, "upstream", "passthrough");
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(passed[0]["path"], "/status/202", "{passed:?}");
}

#[tokio::test]
async fn names_addresses_and_unknown_destinations_are_each_routed_their_way() {
    let mesh = Mesh::start("nft", &[]).await;
    let a = mesh.ns(0);

    // A name a policy knows wins over the address the app dialled (nothing listens there).
    let nowhere = addr(9, 80);
    let http = client::http1_client_in(a, nowhere);
    let res = client::get(&http, "http://catalog.shop/headers").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.header("x-bulwark-upstream"), Some("catalog"));
    assert_eq!(mesh.c_http.requests_to("/headers"), 1);

    // An address no policy names passes through to it, untouched, and is logged.
    let http = client::http1_client_in(a, addr(2, 8090));
    let res = client::get(&http, &format!("http://{}/status/201", addr(2, 8090))).await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(mesh.c_plain.requests_to("/status/201"), 1);
    let passed = eventually(WAIT, || async {
        let lines = Mesh::lines(&mesh.a, "upstream", "passthrough");
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(passed.len(), 1, "{passed:?}");
    assert_eq!(passed[0]["path"], "/status/201");
}

#[tokio::test]
async fn tcp_server_first_protocols_and_tls_pass_as_bytes() {
    let mesh = Mesh::start("nft", &[]).await;
    let a = mesh.ns(0);

    // A line-echo server: opaque TCP, through both sidecars.
    let mut echo = a.connect(addr(1, 7000)).await.expect("connect");
    assert_eq!(
        round_trip(&mut echo, "hello over tcp").await,
        "hello over tcp"
    );
    drop(echo);
    assert_eq!(mesh.b_echo.connections(), 1);

    // A server that speaks first: after the detection timeout, its greeting arrives.
    let mut greeter = a.connect(addr(1, 2525)).await.expect("connect");
    assert_eq!(read_line(&mut greeter).await, "220 ready");
    assert_eq!(round_trip(&mut greeter, "EHLO a").await, "EHLO a");
    drop(greeter);
    assert_eq!(mesh.b_greeter.connections(), 1);

    // TLS to an external host passes through untouched: the client verifies C's certificate.
    let tls = |dial: SocketAddr, name: &'static str| {
        let connector = mesh.ca.connector();
        let a = a.clone();
        async move {
            let tcp = a.connect(dial).await.expect("connect");
            let server = rustls::pki_types::ServerName::try_from(name).expect("a name");
            let mut stream = connector
                .connect(server, tcp)
                .await
                .expect("the TLS handshake");
            round_trip(&mut stream, "over tls").await
        }
    };
    assert_eq!(tls(addr(2, 8443), "external.test").await, "over tls");
    // A server name a policy knows is routed by it, whatever address the app dialled.
    assert_eq!(
        tls(addr(9, 443), "secure.shop.svc.cluster.local").await,
        "over tls"
    );
    assert_eq!(
        mesh.c_tls.server_names(),
        ["external.test", "secure.shop.svc.cluster.local"]
    );
    let by_name = eventually(WAIT, || async {
        let lines = Mesh::lines(&mesh.a, "sni", "secure.shop.svc.cluster.local");
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(by_name.len(), 1, "{by_name:?}");
    assert_eq!(by_name[0]["upstream"], "secure");
    let tunnels = mesh
        .a
        .metric(
            "bulwark_tunnels_total",
            &[("direction", "outbound"), ("kind", "tls")],
        )
        .await;
    assert_eq!(tunnels, Some(2.0));
}

#[tokio::test]
async fn websockets_pass_both_sidecars() {
    let mesh = Mesh::start("nft", &[]).await;
    let tcp = mesh.ns(0).connect(addr(1, 8081)).await.expect("connect");
    let url = format!("ws://{}/chat", addr(1, 8081));
    let (mut ws, response) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("the WebSocket handshake passes both sidecars");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    ws.send(Message::text("hello")).await.expect("send text");
    assert_eq!(
        ws.next().await.expect("a reply").expect("ok"),
        Message::text("hello")
    );
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone()))
        .await
        .expect("send binary");
    assert_eq!(
        ws.next().await.expect("a reply").expect("ok"),
        Message::binary(big)
    );
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("send a ping");
    assert_eq!(
        ws.next().await.expect("a pong").expect("ok"),
        Message::Pong(b"are you there".to_vec().into())
    );
    ws.close(None).await.expect("close");
    drop(ws);
    assert_eq!(mesh.b_ws.connections(), 1);
    let upgrades = eventually(WAIT, || async {
        let lines: Vec<_> = Mesh::lines(&mesh.a, "protocol", "upgrade");
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert!(
        upgrades[0]["bytes_sent"].as_u64().unwrap_or(0) > 200 * 1024,
        "{upgrades:?}"
    );
}

#[tokio::test]
async fn skipped_ports_and_networks_go_direct_and_removing_the_rules_restores_the_table() {
    let fresh = Netns::create("pre");
    let before = [
        fresh.nat_rules("iptables-save"),
        fresh.nat_rules("ip6tables-save"),
    ];
    drop(fresh);
    let mesh = Mesh::start(
        "nft",
        &[
            "--skip-outbound-ports",
            "7000",
            "--skip-outbound-cidrs",
            "10.66.0.3/32",
        ],
    )
    .await;
    let a = mesh.ns(0);
    let http = client::http1_client_in(a, addr(2, 8080));
    let res = client::get(&http, &format!("http://{}/status/204", addr(2, 8080))).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let mut echo = a.connect(addr(1, 7000)).await.expect("connect");
    assert_eq!(round_trip(&mut echo, "direct").await, "direct");
    drop(echo);
    let captured = mesh
        .a
        .metric(
            "bulwark_captured_connections_total",
            &[("direction", "outbound")],
        )
        .await;
    assert_eq!(captured, None, "A's sidecar saw neither");
    assert!(mesh.a.access_lines().is_empty());
    // B still captures what reaches it: its inbound side saw the echo connection.
    mesh.b
        .await_metric(
            "bulwark_captured_connections_total",
            &[("direction", "inbound"), ("protocol", "tcp")],
            1.0,
            WAIT,
        )
        .await;

    // Removing the rules leaves each namespace's nat table as a fresh one is.
    for ns in [mesh.ns(0), mesh.ns(1)] {
        assert_ne!(
            ns.nat_rules("iptables-save"),
            before[0],
            "IPv4 rules were installed"
        );
        assert_ne!(
            ns.nat_rules("ip6tables-save"),
            before[1],
            "IPv6 rules were installed"
        );
        ns.exec_ok(&[
            &init_bin().display().to_string(),
            "--remove",
            "--backend",
            "nft",
        ]);
        assert_eq!(ns.nat_rules("iptables-save"), before[0]);
        assert_eq!(ns.nat_rules("ip6tables-save"), before[1]);
    }
}

#[tokio::test]
async fn the_legacy_backend_captures_too() {
    let mesh = Mesh::start("legacy", &[]).await;
    let a = mesh.ns(0);
    assert!(
        a.nat_rules("iptables-legacy-save")
            .contains("BULWARK_OUTPUT")
    );
    let http = client::http1_client_in(a, addr(1, 8080));
    let res = client::get(&http, &format!("http://{}/status/200", addr(1, 8080))).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.header("x-bulwark-upstream"), Some("orders"));
    for ns in [mesh.ns(0), mesh.ns(1)] {
        ns.exec_ok(&[
            &init_bin().display().to_string(),
            "--remove",
            "--backend",
            "legacy",
        ]);
        assert!(!ns.nat_rules("iptables-legacy-save").contains("BULWARK"));
    }
}
