//! Workload identity and mutual TLS between sidecars, as root, in network namespaces each test
//! makes and removes: two captured pods (A, service account `frontend`, calls; B, service
//! account `orders`, serves) and an un-meshed host (C) on one bridge. The real control plane
//! (with a development root and join tokens, over a real etcd) issues both sidecars their
//! certificates; it runs outside the namespaces, and each pod reaches it on 127.0.0.1:15012
//! through a relay the test runs. The apps are the test's own servers and clients, and neither
//! changes: A's app calls B's address in plaintext, the sidecars speak mTLS between them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_tests::client::{self, HttpClient, empty};
use bulwark_tests::netns::{Lan, Netns};
use bulwark_tests::pb::echo_client::EchoClient;
use bulwark_tests::pb::{EchoRequest, StreamRequest};
use bulwark_tests::sidecar::init_bin;
use bulwark_tests::streams::{StreamServer, TestCa, read_line};
use bulwark_tests::{
    ControlPlane, Etcd, GrpcUpstream, HttpUpstream, PATIENCE, Sidecar, TempDir, eventually,
};
use futures_util::StreamExt;
use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(10);
/// The uid the sidecars run as, which the capture rules leave alone.
const SIDECAR_UID: u32 = 65532;
/// Where, inside each pod, the relay to the control plane listens.
const CONTROL_PLANE_IN_POD: &str = "127.0.0.1:15012";

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";

fn addr(member: usize, port: u16) -> SocketAddr {
    SocketAddr::new(Lan::ip(member), port)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A file the sidecars (another uid) can read.
fn write_readable(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .expect("make the file readable");
}

/// Forwards every connection `listener` accepts to the current `target`; stops when dropped.
struct Relay(tokio::task::AbortHandle);

impl Relay {
    fn start(listener: tokio::net::TcpListener, target: Arc<Mutex<SocketAddr>>) -> Relay {
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut down, _)) = accepted else { continue };
                        let to = *target.lock().expect("the relay's target");
                        connections.spawn(async move {
                            if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Relay(task.abort_handle())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The control plane as a certificate authority: etcd, a replica with a development root in
/// `dir/ca-N`, and the join tokens of both pods.
struct Authority {
    dir: TempDir,
    etcd: Etcd,
    replica: ControlPlane,
    /// The replica's gRPC address, where the relays send the pods' connections.
    target: Arc<Mutex<SocketAddr>>,
    lifetime: String,
}

impl Authority {
    async fn start(lifetime: &str) -> Authority {
        let dir = TempDir::new();
        std::fs::write(
            dir.path().join("tokens.yaml"),
            "tokens:\n  - { token: frontend-token, namespace: shop, serviceAccount: frontend }\n  - { token: orders-token, namespace: shop, serviceAccount: orders }\n",
        )
        .expect("write the join tokens");
        let etcd = Etcd::start().await;
        let replica = Authority::replica(&dir, &etcd, 1, lifetime).await;
        let target = Arc::new(Mutex::new(grpc_addr(&replica)));
        Authority {
            dir,
            etcd,
            replica,
            target,
            lifetime: lifetime.to_string(),
        }
    }

    async fn replica(dir: &TempDir, etcd: &Etcd, root: u32, lifetime: &str) -> ControlPlane {
        let ca = dir.path().join(format!("ca-{root}"));
        let tokens = dir.path().join("tokens.yaml");
        let args = [
            "--dev-identity",
            path(&ca),
            "--join-tokens",
            path(&tokens),
            "--cert-lifetime",
            lifetime,
        ];
        ControlPlane::start_with(&etcd.endpoint(), &format!("authority-{root}"), &args).await
    }

    /// The PEM of development root `n` (made by the replica that uses it).
    fn root(&self, n: u32) -> String {
        let file = self.dir.path().join(format!("ca-{n}")).join("root.pem");
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    }

    /// Replaces the replica by one whose certificates come from development root `n`.
    async fn switch_root(&mut self, n: u32) {
        self.replica.kill();
        self.replica = Authority::replica(&self.dir, &self.etcd, n, &self.lifetime).await;
        *self.target.lock().expect("the relay's target") = grpc_addr(&self.replica);
    }
}

fn grpc_addr(cp: &ControlPlane) -> SocketAddr {
    cp.grpc_url()
        .trim_start_matches("http://")
        .parse()
        .expect("the control plane's gRPC address")
}

/// One meshed pod: its sidecar and the files it was given.
struct Pod {
    sidecar: Sidecar,
    anchors: PathBuf,
    _relay: Relay,
}

impl Pod {
    /// Waits until the sidecar holds a certificate it was issued `n` times or more.
    async fn await_certificates(&self, n: f64) {
        let sidecar = &self.sidecar;
        eventually(PATIENCE, || async {
            let issued = sidecar
                .metric(
                    "bulwark_certificate_requests_total",
                    &[("result", "issued")],
                )
                .await
                .unwrap_or(0.0);
            (issued >= n).then_some(())
        })
        .await;
    }

    async fn identity(&self) -> serde_json::Value {
        let res = self.sidecar.admin_get("/identity").await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        res.json()
    }

    fn set_anchors(&self, pem: &str) {
        write_readable(&self.anchors, pem);
    }
}

/// A: the caller's pod. B: the called pod. C: an external host without a sidecar.
struct Mesh {
    lan: Lan,
    authority: Authority,
    a: Pod,
    b: Pod,
    b_http: HttpUpstream,
    b_grpc: GrpcUpstream,
    _b_echo: StreamServer,
    _c_https: HttpUpstream,
    _c_impostor: HttpUpstream,
    /// The CA of C's servers: outside the mesh.
    ca: TestCa,
    _dir: TempDir,
}

impl Mesh {
    fn ns(&self, member: usize) -> &Arc<Netns> {
        &self.lan.members[member]
    }

    /// `b_spec`: lines under B's ServicePolicy `spec`; `lifetime`: of the certificates.
    async fn start(b_spec: &str, lifetime: &str) -> Mesh {
        let lan = Lan::new(&["a", "b", "c"]);
        let (a_ns, b_ns, c_ns) = (&lan.members[0], &lan.members[1], &lan.members[2]);
        let authority = Authority::start(lifetime).await;
        let dir = TempDir::new();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("make the pods' directory readable");
        }
        let b_http = HttpUpstream::builder()
            .start_on(b_ns.listen(addr(1, 8080)))
            .expect("B's HTTP app");
        let b_grpc = GrpcUpstream::builder()
            .start_on(b_ns.listen(addr(1, 9090)))
            .expect("B's gRPC app");
        let b_echo = StreamServer::line_echo(b_ns.listen(addr(1, 7000)));
        // An external HTTPS API with its own CA, and a server that claims B's mesh name with a
        // certificate from outside the mesh.
        let ca = TestCa::new();
        let ca_file = dir.path().join("external-ca.pem");
        write_readable(&ca_file, ca.cert_pem());
        let c_https = HttpUpstream::builder()
            .tls(ca.server_config(&["api.external.test"]))
            .start_on(c_ns.listen(addr(2, 8443)))
            .expect("C's HTTPS API");
        let c_impostor = HttpUpstream::builder()
            .tls(ca.server_config(&["orders.shop.sa.bulwark.cluster.local"]))
            .start_on(c_ns.listen(addr(2, 9443)))
            .expect("C's impostor");

        let b_http_addr = addr(1, 8080);
        let b_grpc_addr = addr(1, 9090);
        let c_https_addr = addr(2, 8443);
        let c_impostor_addr = addr(2, 9443);
        let ca_path = path(&ca_file);
        let a_policies = format!(
            "\
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: orders, namespace: shop }}
spec:
  endpoints: {{ static: [\"{b_http_addr}\"] }}
  tls: {{ mode: mesh, serverIdentity: \"{ORDERS}\" }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: orders-grpc, namespace: shop }}
spec:
  endpoints: {{ static: [\"{b_grpc_addr}\"] }}
  protocol: grpc
  tls: {{ mode: mesh, serverIdentity: \"{ORDERS}\" }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: payments, namespace: shop }}
spec:
  endpoints: {{ static: [\"{b_http_addr}\"] }}
  tls: {{ mode: mesh, serverIdentity: \"spiffe://cluster.local/ns/shop/sa/payments\" }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: plain, namespace: shop }}
spec:
  endpoints: {{ static: [\"{b_http_addr}\"] }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: impostor, namespace: shop }}
spec:
  endpoints: {{ static: [\"{c_impostor_addr}\"] }}
  tls: {{ mode: mesh, serverIdentity: \"{ORDERS}\" }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: external, namespace: shop }}
spec:
  endpoints: {{ static: [\"{c_https_addr}\"] }}
  tls: {{ mode: simple, sni: api.external.test, caFile: {ca_path} }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: external-wrong-name, namespace: shop }}
spec:
  endpoints: {{ static: [\"{c_https_addr}\"] }}
  tls: {{ mode: simple, sni: api.other.test, caFile: {ca_path} }}
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: external-public-roots, namespace: shop }}
spec:
  endpoints: {{ static: [\"{c_https_addr}\"] }}
  tls: {{ mode: simple, sni: api.external.test }}
"
        );
        let b_policies = format!(
            "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  app: {{ port: 8080 }}\n{b_spec}"
        );
        for ns in [a_ns, b_ns] {
            ns.exec_ok(&[
                path(&init_bin()),
                "--backend",
                "nft",
                "--sidecar-uid",
                &SIDECAR_UID.to_string(),
            ]);
        }
        let root = authority.root(1);
        let pod = |ns: &Arc<Netns>, sa: &str, policies: String| {
            let anchors = dir.path().join(format!("{sa}-anchors.pem"));
            write_readable(&anchors, &root);
            let token = dir.path().join(format!("{sa}-token"));
            write_readable(&token, format!("{sa}-token\n"));
            let relay = Relay::start(
                ns.listen(CONTROL_PLANE_IN_POD.parse().expect("an address")),
                authority.target.clone(),
            );
            let sidecar = Sidecar::builder()
                .netns(ns)
                .uid(SIDECAR_UID)
                .capture()
                .policies_yaml(policies)
                .reload_interval("100ms")
                .args(["--namespace", "shop", "--service", sa])
                .args(["--service-account", sa])
                .args(["--detect-timeout", "300ms"])
                .args(["--probe-paths", "/health/ready"])
                .arg("--trust-anchors")
                .arg(&anchors)
                .arg("--join-token-file")
                .arg(&token)
                .args([
                    "--identity-server",
                    &format!("http://{CONTROL_PLANE_IN_POD}"),
                ])
                .start();
            async move {
                Pod {
                    sidecar: sidecar.await,
                    anchors,
                    _relay: relay,
                }
            }
        };
        let a = pod(a_ns, "frontend", a_policies).await;
        let b = pod(b_ns, "orders", b_policies).await;
        a.await_certificates(1.0).await;
        b.await_certificates(1.0).await;
        Mesh {
            lan,
            authority,
            a,
            b,
            b_http,
            b_grpc,
            _b_echo: b_echo,
            _c_https: c_https,
            _c_impostor: c_impostor,
            ca,
            _dir: dir,
        }
    }

    /// An HTTP/1.1 client in A, as A's app: its connections go to B's app address (captured).
    fn a_http(&self) -> HttpClient {
        client::http1_client_in(self.ns(0), addr(1, 8080))
    }

    /// A gRPC client in A whose calls name `orders-grpc`.
    async fn a_grpc(&self) -> EchoClient<tonic::transport::Channel> {
        EchoClient::new(client::grpc_channel_in(self.ns(0), addr(1, 9090), "orders-grpc").await)
    }
}

/// `GET http://{host}{path}` from `client`, with `x-request-id: {id}` and a forged identity.
async fn get(client: &HttpClient, host: &str, path: &str, id: &str) -> client::Collected {
    client::send(
        client,
        client::request(Method::GET, &format!("http://{host}{path}"))
            .header("x-request-id", id)
            .header(
                "x-bulwark-peer-identity",
                "spiffe://cluster.local/ns/kube-system/sa/admin",
            )
            .body(empty())
            .expect("a request"),
    )
    .await
}

/// The values of `name` B's app saw, from its `/headers` answer.
fn seen(res: &client::Collected, name: &str) -> serde_json::Value {
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    res.json()["headers"][name].clone()
}

async fn metric_at_least(sidecar: &Sidecar, name: &str, labels: &[(&str, &str)], n: f64) {
    eventually(WAIT, || async {
        let have = sidecar.metric(name, labels).await.unwrap_or(0.0);
        (have >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn strict_mtls_carries_the_callers_identity_and_refuses_plaintext() {
    let mesh = Mesh::start("  inbound: { mtls: strict }\n", "24h").await;
    let http = mesh.a_http();

    // HTTP/1.1: the app's plaintext call leaves A as mTLS; B's app gets the verified caller,
    // not what the caller wrote.
    let res = get(&http, "orders", "/headers", "mtls-h1").await;
    assert_eq!(
        seen(&res, "x-bulwark-peer-identity"),
        serde_json::json!([FRONTEND])
    );
    let out = eventually(WAIT, || async { mesh.a.sidecar.access_log("mtls-h1") }).await;
    assert_eq!(out["peer_identity"], ORDERS, "{out}");
    let inbound = eventually(WAIT, || async { mesh.b.sidecar.access_log("mtls-h1") }).await;
    assert_eq!(inbound["direction"], "inbound", "{inbound}");
    assert_eq!(inbound["peer_identity"], FRONTEND, "{inbound}");
    metric_at_least(
        &mesh.a.sidecar,
        "bulwark_mtls_connections_total",
        &[("direction", "outbound")],
        1.0,
    )
    .await;
    metric_at_least(
        &mesh.b.sidecar,
        "bulwark_mtls_connections_total",
        &[("direction", "inbound")],
        1.0,
    )
    .await;
    // Request metrics name both ends: the caller's and the callee's identity.
    let between = [
        ("client_id", FRONTEND),
        ("server_id", ORDERS),
        ("status_class", "2xx"),
    ];
    let outbound = [
        &between[..],
        &[("direction", "outbound"), ("upstream", "orders")],
    ]
    .concat();
    metric_at_least(&mesh.a.sidecar, "bulwark_requests_total", &outbound, 1.0).await;
    let inbound_labels = [&between[..], &[("direction", "inbound")]].concat();
    metric_at_least(
        &mesh.b.sidecar,
        "bulwark_requests_total",
        &inbound_labels,
        1.0,
    )
    .await;

    // h2c from the app: HTTP/2 end to end (ALPN h2 between the sidecars).
    let h2 = client::h2c_client_in(mesh.ns(0), addr(1, 8080));
    let res = get(&h2, "orders", "/headers", "mtls-h2").await;
    assert_eq!(res.json()["version"], "HTTP/2.0", "{}", res.text());
    assert_eq!(
        seen(&res, "x-bulwark-peer-identity"),
        serde_json::json!([FRONTEND])
    );

    // gRPC, every kind of call.
    let mut echo = mesh.a_grpc().await;
    let unary = echo
        .unary(EchoRequest {
            message: "over mTLS".into(),
            ..Default::default()
        })
        .await
        .expect("a unary call over mTLS");
    assert_eq!(
        unary
            .metadata()
            .get("x-bulwark-peer-identity")
            .map(|v| v.to_str().ok()),
        Some(Some(FRONTEND))
    );
    assert_eq!(unary.into_inner().message, "over mTLS");
    let counts: Vec<u64> = echo
        .server_stream(StreamRequest {
            count: 100,
            payload_size: 4096,
            delay_ms: 0,
        })
        .await
        .expect("a server stream")
        .into_inner()
        .map(|r| r.expect("a reply").count)
        .collect()
        .await;
    assert_eq!(counts, (1..=100).collect::<Vec<u64>>());
    let requests = futures_util::stream::iter((0..50).map(|i| EchoRequest {
        message: format!("m{i}"),
        payload: vec![7; 10_000],
        ..Default::default()
    }));
    let reply = echo
        .client_stream(requests)
        .await
        .expect("a client stream")
        .into_inner();
    assert_eq!((reply.count, reply.total_bytes), (50, 500_000));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = echo
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("a bidi stream")
        .into_inner();
    for i in 0..20 {
        tx.send(EchoRequest {
            message: format!("ping {i}"),
            ..Default::default()
        })
        .await
        .expect("send");
        let reply = replies.next().await.expect("open").expect("a reply");
        assert_eq!(reply.message, format!("ping {i}"));
    }
    drop(tx);
    assert_eq!(mesh.b_grpc.requests_to("/bulwark.test.v1.Echo/Unary"), 1);

    // Plaintext is refused in strict mode: from A's sidecar by a policy without TLS, and from
    // the un-meshed host straight to B's app.
    let strict = "ServicePolicy shop/orders requires mutual TLS (spec.inbound.mtls strict): a plaintext request is refused; call it through a meshed sidecar\n";
    let before = mesh.b_http.requests();
    let res = get(&http, "plain", "/headers", "plain-1").await;
    assert_eq!(
        (res.status, res.text().as_str()),
        (StatusCode::FORBIDDEN, strict)
    );
    assert_eq!(res.header("x-bulwark-error"), Some("mtls-required"));
    let outside = client::http1_client_in(mesh.ns(2), addr(1, 8080));
    let res = get(&outside, "orders", "/headers", "plain-2").await;
    assert_eq!(
        (res.status, res.text().as_str()),
        (StatusCode::FORBIDDEN, strict)
    );
    // A kubelet probe of a probe path passes; the same agent elsewhere does not.
    let probe = |path: &str| {
        client::request(Method::GET, &format!("http://{}{path}", addr(1, 8080)))
            .header("user-agent", "kube-probe/1.34")
            .body(empty())
            .expect("a probe")
    };
    let res = client::send(&outside, probe("/health/ready")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let res = client::send(&outside, probe("/headers")).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.text());
    // Plaintext TCP to another port of B: closed without a byte.
    let mut tcp = mesh
        .ns(2)
        .connect(addr(1, 7000))
        .await
        .expect("connect to B");
    tcp.write_all(b"hello\n").await.expect("write");
    assert_eq!(read_line(&mut tcp).await, "", "nothing echoed");
    assert_eq!(
        mesh.b_http.requests(),
        before + 1,
        "only the probe reached B's app"
    );
    mesh.b
        .sidecar
        .await_metric(
            "bulwark_inbound_mtls_refused_total",
            &[("reason", "plaintext")],
            4.0,
            WAIT,
        )
        .await;

    // A caller from outside the mesh that claims A's identity with a certificate of another
    // CA: B's sidecar refuses the handshake, and nothing reaches the app.
    let impostor = mesh
        .ca
        .impostor_client(FRONTEND, mesh.authority.root(1).as_bytes());
    let tcp = mesh
        .ns(2)
        .connect(addr(1, 8080))
        .await
        .expect("connect to B");
    let name = rustls::pki_types::ServerName::try_from("orders.shop.sa.bulwark.cluster.local")
        .expect("a server name");
    let answered = async {
        let mut tls = impostor.connect(name, tcp).await?;
        tls.write_all(b"GET /headers HTTP/1.1\r\nHost: orders\r\n\r\n")
            .await?;
        tls.flush().await?;
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match answered.await {
        Ok(buf) => assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf)),
        Err(e) => assert!(e.to_string().contains("alert"), "{e}"),
    }
    mesh.b
        .sidecar
        .await_metric(
            "bulwark_inbound_mtls_refused_total",
            &[("reason", "handshake")],
            1.0,
            WAIT,
        )
        .await;
    assert!(
        mesh.b
            .sidecar
            .logs_contain("invalid peer certificate: UnknownIssuer"),
        "{:?}",
        mesh.b.sidecar.logs()
    );
    assert_eq!(
        mesh.b_http.requests(),
        before + 1,
        "the impostor reached nothing"
    );

    // The wrong identity, and a certificate from outside the mesh, fail A's check.
    let res = get(&http, "payments", "/headers", "wrong-id").await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY, "{}", res.text());
    assert_eq!(res.header("x-bulwark-error"), Some("tls-failure"));
    let text = res.text();
    assert!(
        text.starts_with(&format!(
            "upstream payments: TLS (mesh) with {} failed: invalid peer certificate: ",
            addr(1, 8080)
        )) && text.contains(&format!(
            "the server presented {ORDERS}, not spiffe://cluster.local/ns/shop/sa/payments"
        )),
        "{text}"
    );
    let res = get(&http, "impostor", "/headers", "impostor").await;
    assert_eq!(
        res.text(),
        format!(
            "upstream impostor: TLS (mesh) with {} failed: invalid peer certificate: UnknownIssuer\n",
            addr(2, 9443)
        )
    );
    assert_eq!(
        mesh.b_http.requests(),
        before + 1,
        "nothing more reached B's app"
    );
}

#[tokio::test]
async fn simple_tls_originates_https_to_an_external_api() {
    let mesh = Mesh::start("", "24h").await;
    let http = mesh.a_http();
    // The app speaks plaintext HTTP to `external`; the sidecar speaks TLS with the name and CA
    // of the policy.
    let res = get(&http, "external", "/headers", "simple-1").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(
        res.json()["headers"]["host"],
        serde_json::json!(["external"])
    );
    let res = get(&http, "external-wrong-name", "/headers", "simple-2").await;
    assert_eq!(
        res.text(),
        format!(
            "upstream external-wrong-name: TLS (simple) with {} failed: invalid peer certificate: certificate not valid for name \"api.other.test\"; certificate is only valid for DnsName(\"api.external.test\")\n",
            addr(2, 8443)
        )
    );
    let res = get(&http, "external-public-roots", "/headers", "simple-3").await;
    assert_eq!(
        res.text(),
        format!(
            "upstream external-public-roots: TLS (simple) with {} failed: invalid peer certificate: UnknownIssuer\n",
            addr(2, 8443)
        )
    );
}

#[tokio::test]
async fn permissive_mode_and_authorization_rules_with_their_dry_run() {
    let rules = concat!(
        "  inbound:\n",
        "    mtls: permissive\n",
        "    authorization:\n",
        "      dryRun: DRY\n",
        "      rules:\n",
        "        - from: { serviceAccounts: [shop/frontend] }\n",
        "          to: [{ pathPrefix: /status }, { grpcMethod: /bulwark.test.v1.Echo/Unary }]\n",
        "        - to: [{ path: /headers, method: GET }, { path: /health/ready }]\n",
    );
    let mesh = Mesh::start(&rules.replace("DRY", "false"), "24h").await;
    let http = mesh.a_http();

    // Allowed: the caller's service account, on its paths and method.
    let res = get(&http, "orders", "/status/200", "authz-1").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let mut echo = mesh.a_grpc().await;
    echo.unary(EchoRequest::default())
        .await
        .expect("Unary is allowed");

    // Permissive: plaintext is accepted, without an identity (a forged one is removed).
    let res = get(&http, "plain", "/headers", "authz-2").await;
    assert_eq!(
        seen(&res, "x-bulwark-peer-identity"),
        serde_json::Value::Null
    );
    let res = get(&http, "orders", "/headers", "authz-3").await;
    assert_eq!(
        seen(&res, "x-bulwark-peer-identity"),
        serde_json::json!([FRONTEND])
    );

    // Denied: another path of the same caller, a plaintext caller on an mTLS-only rule, and a
    // gRPC method no rule names.
    let before = mesh.b_http.requests();
    let res = get(&http, "orders", "/bytes/10", "authz-4").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(res.header("x-bulwark-error"), Some("unauthorized"));
    assert_eq!(
        res.text(),
        format!(
            "{FRONTEND} may not call GET /bytes/10: no rule of spec.inbound.authorization of ServicePolicy shop/orders allows it (2 rules)\n"
        )
    );
    let res = get(&http, "plain", "/status/200", "authz-5").await;
    assert_eq!(
        (res.status, res.text()),
        (
            StatusCode::FORBIDDEN,
            "a caller without identity may not call GET /status/200: no rule of spec.inbound.authorization of ServicePolicy shop/orders allows it (2 rules)\n".to_string()
        )
    );
    let status = echo
        .server_stream(StreamRequest {
            count: 1,
            payload_size: 1,
            delay_ms: 0,
        })
        .await
        .expect_err("ServerStream is not allowed");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!(
            "{FRONTEND} may not call POST /bulwark.test.v1.Echo/ServerStream: no rule of spec.inbound.authorization of ServicePolicy shop/orders allows it (2 rules)"
        )
    );
    assert_eq!(
        mesh.b_http.requests(),
        before,
        "nothing denied reached the app"
    );
    let denied = [("decision", "denied")];
    mesh.b
        .sidecar
        .await_metric("bulwark_inbound_authorization_total", &denied, 3.0, WAIT)
        .await;

    // dryRun: the same request is allowed, logged and counted.
    let applied = [("result", "applied")];
    mesh.b.sidecar.write_policies(&format!(
        "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  app: {{ port: 8080 }}\n{}",
        rules.replace("DRY", "true")
    ));
    mesh.b
        .sidecar
        .await_metric("bulwark_policy_reloads_total", &applied, 2.0, WAIT)
        .await;
    let res = get(&http, "orders", "/bytes/10", "authz-6").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let dry = [("decision", "dry-run-denied")];
    mesh.b
        .sidecar
        .await_metric("bulwark_inbound_authorization_total", &dry, 1.0, WAIT)
        .await;
    assert!(
        mesh.b.sidecar.logs_contain(
            "request would be denied by spec.inbound.authorization (dryRun: allowed)"
        ),
        "{:?}",
        mesh.b.sidecar.logs()
    );
}

/// Certificates that live a few seconds are renewed with traffic flowing, without one failed
/// request; when the control plane is gone they expire, and the pod says so and refuses mTLS.
#[tokio::test]
async fn renewal_keeps_traffic_flowing_and_expiry_stops_mtls() {
    let mesh = Mesh::start("  inbound: { mtls: strict }\n", "3s").await;
    let http = mesh.a_http();
    let mut sent = 0u32;
    let mut failed = Vec::new();
    // Until both pods renewed twice: at least two more certificates each.
    let renewed = async {
        mesh.a.await_certificates(3.0).await;
        mesh.b.await_certificates(3.0).await;
    };
    let mut renewed = std::pin::pin!(renewed);
    loop {
        tokio::select! {
            () = &mut renewed => break,
            res = get(&http, "orders", "/status/200", "renewal") => {
                sent += 1;
                if res.status != StatusCode::OK {
                    failed.push(res.text());
                }
            }
        }
    }
    assert!(sent > 10, "traffic flowed during renewal: {sent} requests");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    let identity = mesh.b.identity().await;
    assert_eq!(identity["spiffeId"], ORDERS, "{identity}");
    assert_eq!(identity["certificate"]["spiffeId"], ORDERS, "{identity}");
    assert_eq!(identity["certificate"]["valid"], true, "{identity}");
    assert!(identity.get("key").is_none() && !identity.to_string().contains("PRIVATE KEY"));

    // Without the control plane, renewal fails and the certificate runs out.
    mesh.authority.replica.kill();
    let ready = eventually(WAIT, || async {
        let res = mesh.b.sidecar.admin_get("/health/ready").await;
        (res.status == StatusCode::SERVICE_UNAVAILABLE).then_some(res.text())
    })
    .await;
    assert!(
        ready.contains("not ready: the workload certificate expired at ")
            && ready.contains(" and could not be renewed: "),
        "{ready}"
    );
    // A new connection (gRPC: not used before) is refused by B, whose certificate is gone.
    let mut echo = mesh.a_grpc().await;
    let status = echo
        .unary(EchoRequest::default())
        .await
        .expect_err("no mTLS without a certificate");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("upstream orders-grpc: TLS (mesh) with"),
        "{status:?}"
    );
    metric_at_least(
        &mesh.b.sidecar,
        "bulwark_inbound_mtls_refused_total",
        &[("reason", "no-certificate")],
        1.0,
    )
    .await;
}

/// A new root is rolled out with both roots trusted during the overlap: certificates from the
/// old and the new root verify each other, traffic never fails, and the old root goes last.
#[tokio::test]
async fn root_rotation_with_two_anchors_in_the_overlap() {
    let mut mesh = Mesh::start("  inbound: { mtls: strict }\n", "4s").await;
    let http = mesh.a_http();
    let send = |id: &'static str| get(&http, "orders", "/status/200", id);
    assert_eq!(send("root-1").await.status, StatusCode::OK);

    // 1. Both pods trust the old and the new root. The new root exists once a replica uses it.
    let old_issuer = mesh.b.identity().await["certificate"]["issuer"].clone();
    let next = Authority::replica(&mesh.authority.dir, &mesh.authority.etcd, 2, "4s").await;
    drop(next);
    let both = format!("{}{}", mesh.authority.root(1), mesh.authority.root(2));
    for pod in [&mesh.a, &mesh.b] {
        pod.set_anchors(&both);
    }
    for pod in [&mesh.a, &mesh.b] {
        eventually(WAIT, || async {
            let anchors = pod.identity().await["trustAnchors"].clone();
            (anchors.as_array().map(Vec::len) == Some(2)).then_some(())
        })
        .await;
    }

    // 2. The control plane signs with the new root; each pod renews on its own schedule, so for
    // a while one presents the old root's chain and the other the new one's.
    let issued_a = mesh
        .a
        .sidecar
        .metric(
            "bulwark_certificate_requests_total",
            &[("result", "issued")],
        )
        .await
        .unwrap_or(0.0);
    let issued_b = mesh
        .b
        .sidecar
        .metric(
            "bulwark_certificate_requests_total",
            &[("result", "issued")],
        )
        .await
        .unwrap_or(0.0);
    mesh.authority.switch_root(2).await;
    let mut failed = Vec::new();
    let mut sent = 0;
    {
        let renewed = async {
            mesh.a.await_certificates(issued_a + 1.0).await;
            mesh.b.await_certificates(issued_b + 1.0).await;
        };
        let mut renewed = std::pin::pin!(renewed);
        loop {
            tokio::select! {
                () = &mut renewed => break,
                res = send("rotation") => {
                    sent += 1;
                    if res.status != StatusCode::OK {
                        failed.push(res.text());
                    }
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    let new_issuer = mesh.b.identity().await["certificate"]["issuer"].clone();
    assert_ne!(
        new_issuer, old_issuer,
        "B's certificate comes from the new root's issuer"
    );

    // 3. The old root is removed; new connections (gRPC) verify against the new root alone.
    let new_root = mesh.authority.root(2);
    for pod in [&mesh.a, &mesh.b] {
        pod.set_anchors(&new_root);
    }
    for pod in [&mesh.a, &mesh.b] {
        eventually(WAIT, || async {
            let anchors = pod.identity().await["trustAnchors"].clone();
            (anchors.as_array().map(Vec::len) == Some(1)).then_some(())
        })
        .await;
    }
    let mut echo = mesh.a_grpc().await;
    echo.unary(EchoRequest::default())
        .await
        .expect("mTLS with the new root alone");
    assert_eq!(send("root-2").await.status, StatusCode::OK);
}

/// Without capture (the app calls its sidecar on localhost) and with Kubernetes' proof of
/// identity — projected ServiceAccount tokens, checked by a TokenReview against the test kit's
/// stand-in for the Kubernetes API (no API server can run here). Policies come from the control
/// plane, which fills in the identity the callee's ServicePolicy names; `meshctl pods` shows
/// each pod's identity and expiry.
#[tokio::test]
async fn service_account_tokens_policies_from_the_control_plane_and_meshctl_pods() {
    use bulwark_tests::kube::{KnownToken, TokenReviewApi};
    let known = |token: &str, sa: &str| KnownToken {
        token: token.into(),
        namespace: "shop".into(),
        service_account: sa.into(),
        audiences: vec!["bulwark".into()],
    };
    let api = TokenReviewApi::start(
        "control-plane-token",
        vec![
            known("frontend-projected", "frontend"),
            known("orders-projected", "orders"),
        ],
    )
    .await;
    let dir = TempDir::new();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write a file");
        p
    };
    let kube_ca = file("kube-ca.pem", &api.ca_pem());
    let own_token = file("cp-token", "control-plane-token\n");
    let ca_dir = dir.path().join("ca");
    let etcd = Etcd::start().await;
    let args = [
        "--dev-identity",
        path(&ca_dir),
        "--kube-api",
        &api.url(),
        "--kube-ca",
        path(&kube_ca),
        "--kube-token",
        path(&own_token),
    ];
    let cp = ControlPlane::start_with(&etcd.endpoint(), "cp-1", &args).await;
    let anchors = ca_dir.join("root.pem");
    let app = HttpUpstream::start().await;
    let sidecar = |sa: &'static str| {
        let token = file(&format!("{sa}-token"), &format!("{sa}-projected\n"));
        Sidecar::builder()
            .control_plane(cp.grpc_url())
            .args(["--namespace", "shop", "--service", sa])
            .args(["--pod", &format!("{sa}-1"), "--service-account", sa])
            .args(["--report-interval", "200ms", "--inbound-mtls", "strict"])
            .arg("--trust-anchors")
            .arg(&anchors)
            .arg("--identity-token-file")
            .arg(&token)
            .start()
    };
    let orders = sidecar("orders").await;
    let frontend = sidecar("frontend").await;
    let service = format!(
        "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  app: {{ port: {} }}\n  serviceAccount: orders\n",
        app.addr().port()
    );
    let upstream = format!(
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  endpoints: {{ static: [\"{}\"] }}\n  tls: {{ mode: mesh }}\n",
        orders.inbound()
    );
    let res = cp.apply(&format!("{service}---\n{upstream}")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());

    // The frontend's app calls its sidecar; the orders sidecar's inbound listener takes mTLS.
    let http = client::http1_client(frontend.outbound());
    // Until the policies reached the frontend's sidecar (it answers 503 no-route before).
    eventually(WAIT, || async {
        let res = get(&http, "orders", "/status/200", "loopback-0").await;
        (res.status == StatusCode::OK).then_some(())
    })
    .await;
    let res = get(&http, "orders", "/headers", "loopback-1").await;
    assert_eq!(
        seen(&res, "x-bulwark-peer-identity"),
        serde_json::json!([FRONTEND])
    );
    let out = eventually(WAIT, || async { frontend.access_log("loopback-1") }).await;
    assert_eq!(
        out["peer_identity"], ORDERS,
        "the identity the control plane filled in: {out}"
    );
    let reviews = api.reviews();
    assert!(
        reviews
            .iter()
            .any(|r| r["spec"]["token"] == "frontend-projected")
            && reviews
                .iter()
                .any(|r| r["spec"]["token"] == "orders-projected"),
        "{reviews:?}"
    );
    // Plaintext to the inbound listener, as an un-meshed caller: refused.
    let plain = client::http1_client(orders.inbound());
    let res = get(&plain, "orders", "/headers", "loopback-2").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.text());

    // Each pod's identity reaches the control plane in its health reports.
    let pods = eventually(WAIT, || async {
        let reply = cp.get("/v1/pods?namespace=shop").await;
        let pods = reply.json["pods"].as_array()?.clone();
        let with_expiry = pods
            .iter()
            .filter(|p| p["identity"]["expiresUnixMs"].as_i64().unwrap_or(0) > 0)
            .count();
        (with_expiry == 2).then_some(pods)
    })
    .await;
    let orders_pod = pods
        .iter()
        .find(|p| p["pod"] == "orders-1")
        .expect("orders-1");
    assert_eq!(orders_pod["service"], "orders");
    assert_eq!(orders_pod["identity"]["spiffeId"], ORDERS);
    let out = cp.meshctl(&["pods", "-n", "shop"]);
    let line = out
        .lines()
        .find(|l| l.contains("orders-1"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(ORDERS) && line.contains("(in 23h"), "{out}");
    assert!(out.starts_with("NAMESPACE   SERVICE    POD"), "{out}");
}
