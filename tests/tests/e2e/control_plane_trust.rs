//! The control plane as production runs it — TLS on every listener, certificates from a
//! development authority, over a real etcd — seen from sidecars and from an attacker holding
//! a real workload certificate of another service: streams are bound to what their certificate
//! proves (namespace, service account, pod), a sidecar receives only what it may read, and
//! everything else is refused, counted and never stored.

use std::path::Path;

use bulwark_proto::v1::HealthReport;
use bulwark_tests::discovery::{DiscoveryStream, names};
use bulwark_tests::rest::Access;
use bulwark_tests::streams::TestCa;
use bulwark_tests::workload::{WorkloadCert, certify};
use bulwark_tests::{ControlPlane, Etcd, PATIENCE, Sidecar, TempDir, eventually};
use http::StatusCode;

const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// etcd and one secure replica with join tokens for shop/orders and shop/frontend.
struct Secure {
    dir: TempDir,
    _etcd: Etcd,
    cp: ControlPlane,
}

impl Secure {
    async fn start() -> Secure {
        Secure::start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> Secure {
        let dir = TempDir::new();
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            "tokens:\n  - { token: orders-token, namespace: shop, serviceAccount: orders }\n  - { token: frontend-token, namespace: shop, serviceAccount: frontend, pod: frontend-1 }\n",
        )
        .expect("write the join tokens");
        let etcd = Etcd::start().await;
        let mut args = vec!["--join-tokens", tokens.to_str().expect("a UTF-8 path")];
        args.extend_from_slice(extra);
        let cp =
            ControlPlane::start_secure(&etcd.endpoint(), "trust-1", &dir.path().join("ca"), &args)
                .await;
        cp.wait_fresh().await;
        let applied = cp
            .apply(
                "\
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: { name: orders, namespace: shop }
spec:
  serviceAccount: orders
---
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: { name: ledger, namespace: pay }
spec:
  serviceAccount: ledger
  alerts:
    webhook: https://hooks.example.test/secret-token
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: inventory, namespace: shop }
spec:
  endpoints: { static: [\"127.0.0.1:1\"] }
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: ledger, namespace: pay }
spec:
  endpoints: { static: [\"127.0.0.1:2\"] }
  exportTo: [\".\"]
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: gateway, namespace: pay }
spec:
  endpoints: { static: [\"127.0.0.1:3\"] }
  exportTo: [shop]
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: search, namespace: catalog }
spec:
  endpoints: { static: [\"127.0.0.1:4\"] }
",
            )
            .await;
        assert_eq!(applied.status, StatusCode::OK, "{}", applied.text());
        Secure {
            dir,
            _etcd: etcd,
            cp,
        }
    }

    fn root(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca").join("root.pem")).expect("the development root")
    }

    /// A real workload certificate for `id`, bound to `pod`, got with `token`.
    async fn certificate(&self, id: &str, pod: &str, token: &str) -> WorkloadCert {
        certify(&self.cp.grpc_url(), self.cp.access(), id, pod, token)
            .await
            .expect("a certificate")
    }

    /// The kit's access with `cert` as client certificate.
    fn presenting(&self, cert: &WorkloadCert) -> Access {
        self.cp
            .access()
            .with_certificate(&cert.chain_pem, &cert.key_pem)
    }

    async fn rejected(&self, reason: &str) -> f64 {
        self.cp
            .metric("bulwark_rejected_reports_total", &[("reason", reason)])
            .await
            .unwrap_or(0.0)
    }

    async fn pods(&self) -> Vec<String> {
        let reply = self.cp.get("/v1/pods?namespace=shop").await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        reply.json["pods"]
            .as_array()
            .map(|pods| {
                pods.iter()
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p["service"].as_str().unwrap_or(""),
                            p["pod"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[tokio::test]
async fn a_sidecar_gets_its_certificate_and_then_only_the_policies_it_may_read_over_tls() {
    let secure = Secure::start().await;
    let files = TempDir::new();
    let anchors = files.path().join("roots.pem");
    std::fs::write(&anchors, secure.root()).expect("write the anchors");
    let token = files.path().join("join-token");
    std::fs::write(&token, "orders-token").expect("write the join token");
    let sidecar = Sidecar::builder()
        .control_plane(secure.cp.grpc_url())
        .args([
            "--namespace",
            "shop",
            "--service",
            "orders",
            "--pod",
            "orders-1",
            "--service-account",
            "orders",
            "--trust-anchors",
            path(&anchors),
            "--join-token-file",
            path(&token),
        ])
        .start()
        .await;
    assert!(secure.cp.grpc_url().starts_with("https://"));
    let config = eventually(PATIENCE, || async {
        let config = sidecar.admin_get("/config").await.json();
        (config["version"].as_str() != Some("0") && config["resources"].is_array())
            .then_some(config)
    })
    .await;
    let mut got: Vec<String> = config["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            format!(
                "{}/{}/{}",
                r["kind"].as_str().unwrap_or(""),
                r["metadata"]["namespace"].as_str().unwrap_or(""),
                r["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "ServicePolicy/shop/orders",
            "UpstreamPolicy/catalog/search",
            "UpstreamPolicy/pay/gateway",
            "UpstreamPolicy/shop/inventory",
        ],
        "its own ServicePolicy, its namespace's upstreams and those exported to it; never \
         pay/ledger (exported to pay only) nor another service's ServicePolicy (with its alert token)"
    );
    // The control plane knows the pod by its certificate, and its report was stored.
    eventually(PATIENCE, || async {
        secure
            .pods()
            .await
            .contains(&"orders/orders-1".to_string())
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn streams_are_held_to_their_certificate_and_refusals_are_counted_and_never_stored() {
    let secure = Secure::start().await;
    // No certificate at all: TLS, but no workload behind it.
    let anonymous = DiscoveryStream::open(
        &secure.cp,
        secure.cp.access(),
        "shop",
        "orders",
        "orders-1",
        0,
    )
    .await;
    let status = match anonymous {
        Ok(mut stream) => stream.closed().await.expect("refused"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("sidecar streams need the pod's workload certificate (mutual TLS)"),
        "{status:?}"
    );

    // A real certificate of shop/frontend, bound to pod frontend-1, speaking for others.
    let frontend = secure
        .certificate(FRONTEND, "frontend-1", "frontend-token")
        .await;
    let as_frontend = secure.presenting(&frontend);
    let refused = |namespace: &'static str, service: &'static str, pod: &'static str| {
        let access = as_frontend.clone();
        let cp = &secure.cp;
        async move {
            let mut stream = DiscoveryStream::open(cp, &access, namespace, service, pod, 0)
                .await
                .expect("the certificate is good: the Hello is what is refused");
            // Reports sent before the refusal arrives are not stored either.
            stream
                .report(HealthReport {
                    ..Default::default()
                })
                .await;
            let status = stream.closed().await.expect("refused");
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
            status.message().to_string()
        }
    };
    assert_eq!(
        refused("shop", "orders", "frontend-1").await,
        "service shop/orders runs under service account orders (spec.serviceAccount of its \
         ServicePolicy, default when it declares none); the certificate is for \
         spiffe://cluster.local/ns/shop/sa/frontend"
    );
    assert_eq!(
        refused("pay", "frontend", "frontend-1").await,
        "the certificate is for spiffe://cluster.local/ns/shop/sa/frontend: it cannot speak for \
         namespace pay"
    );
    assert_eq!(
        refused("shop", "frontend", "frontend-2").await,
        "the certificate is bound to pod frontend-1: it cannot speak for pod frontend-2"
    );
    // A service without a ServicePolicy (nothing is computed from its reports): any service
    // account of the namespace may speak for it.
    let mut cart = DiscoveryStream::open(&secure.cp, &as_frontend, "shop", "cart", "frontend-1", 0)
        .await
        .expect("admitted");
    let snapshot = cart.next_snapshot().await;
    assert!(
        !names(&snapshot)
            .iter()
            .any(|n| n.starts_with("ServicePolicy/")),
        "{:?}",
        names(&snapshot)
    );
    drop(cart);
    assert_eq!(secure.rejected("no-certificate").await, 1.0);
    assert_eq!(secure.rejected("service-account").await, 1.0);
    assert_eq!(secure.rejected("namespace").await, 1.0);
    assert_eq!(secure.rejected("pod").await, 1.0);

    // The real pod of orders is admitted, and its reports are stored — the forged ones never
    // were.
    let orders = secure.certificate(ORDERS, "orders-1", "orders-token").await;
    let mut real = DiscoveryStream::open(
        &secure.cp,
        &secure.presenting(&orders),
        "shop",
        "orders",
        "orders-1",
        0,
    )
    .await
    .expect("the real pod is admitted");
    let first = real.next_snapshot().await;
    assert!(
        names(&first).contains(&"UpstreamPolicy/shop/inventory".to_string()),
        "{:?}",
        names(&first)
    );
    real.report(HealthReport::default()).await;
    eventually(PATIENCE, || async {
        let pods = secure.pods().await;
        (pods == ["orders/orders-1"]).then_some(())
    })
    .await;

    // The service moves to another service account: the stream's next report is refused.
    let moved = secure
        .cp
        .apply(
            "\
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: { name: orders, namespace: shop }
spec:
  serviceAccount: orders-v2
",
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text());
    real.report(HealthReport::default()).await;
    let status = real.end().await.expect("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("service shop/orders runs under service account orders-v2"),
        "{status:?}"
    );
    assert_eq!(secure.rejected("service-account").await, 2.0);
}

#[tokio::test]
async fn a_join_token_bound_to_a_pod_gets_no_certificate_for_another() {
    let secure = Secure::start().await;
    let err = certify(
        &secure.cp.grpc_url(),
        secure.cp.access(),
        FRONTEND,
        "frontend-2",
        "frontend-token",
    )
    .await
    .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "the proof is for pod frontend-1; it cannot get a certificate for pod frontend-2"
    );
}

#[tokio::test]
async fn client_certificates_from_another_ca_or_expired_are_refused_in_the_handshake() {
    let secure = Secure::start().await;
    // A certificate naming orders' identity, from a CA outside the mesh.
    let foreign = TestCa::new();
    let (chain, key) = foreign.leaf_pem_with(|params| {
        params.subject_alt_names = vec![rcgen::SanType::URI(ORDERS.try_into().expect("a URI"))];
    });
    let access = secure
        .cp
        .access()
        .with_certificate(chain.as_bytes(), key.as_bytes());
    let err =
        match DiscoveryStream::open(&secure.cp, &access, "shop", "orders", "orders-1", 0).await {
            Ok(mut stream) => stream.closed().await.expect("refused"),
            Err(status) => status,
        };
    assert_ne!(err.code(), tonic::Code::Ok);
    secure.cp.wait_log("TLS handshake failed", 1).await;

    // A certificate from the mesh's own issuer that expired an hour ago.
    let ca = secure.dir.path().join("ca");
    let issuer_pem = std::fs::read_to_string(ca.join("issuer.pem")).expect("the issuer");
    let issuer_key = std::fs::read_to_string(ca.join("issuer.key")).expect("the issuer key");
    let (chain, key) = TestCa::sign_with(&issuer_pem, &issuer_key, |params| {
        params.subject_alt_names = vec![rcgen::SanType::URI(ORDERS.try_into().expect("a URI"))];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(25);
        params.not_after = now - time::Duration::hours(1);
    });
    let access = secure
        .cp
        .access()
        .with_certificate(chain.as_bytes(), key.as_bytes());
    let err =
        match DiscoveryStream::open(&secure.cp, &access, "shop", "orders", "orders-1", 0).await {
            Ok(mut stream) => stream.closed().await.expect("refused"),
            Err(status) => status,
        };
    assert_ne!(err.code(), tonic::Code::Ok);
    secure.cp.wait_log("TLS handshake failed", 2).await;
    assert!(secure.pods().await.is_empty(), "nothing was stored");
}

#[tokio::test]
async fn one_identity_holds_a_bounded_number_of_discovery_streams() {
    let secure = Secure::start_with(&["--max-streams-per-identity", "2"]).await;
    let orders = secure.certificate(ORDERS, "orders-1", "orders-token").await;
    let access = secure.presenting(&orders);
    let mut first = DiscoveryStream::open(&secure.cp, &access, "shop", "orders", "orders-1", 0)
        .await
        .expect("admitted");
    first.next_snapshot().await;
    let mut second = DiscoveryStream::open(&secure.cp, &access, "shop", "orders", "orders-1", 0)
        .await
        .expect("admitted");
    second.next_snapshot().await;
    let mut third = DiscoveryStream::open(&secure.cp, &access, "shop", "orders", "orders-1", 0)
        .await
        .expect("the stream opens, then its Hello is refused");
    let status = third.end().await.expect("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "spiffe://cluster.local/ns/shop/sa/orders already holds 2 Discovery streams, the most this control plane allows one identity (--max-streams-per-identity)"
    );
    assert_eq!(secure.rejected("too-many-streams").await, 1.0);
    // A stream that ends frees its place.
    drop(second);
    eventually(PATIENCE, || async {
        let mut again = DiscoveryStream::open(&secure.cp, &access, "shop", "orders", "orders-1", 0)
            .await
            .ok()?;
        match tokio::time::timeout(
            std::time::Duration::from_secs(2),
            again.next_snapshot_or_end(),
        )
        .await
        {
            Ok(Ok(_)) => Some(()),
            _ => None,
        }
    })
    .await;
    drop(first);
}

#[tokio::test]
async fn forged_reports_never_move_a_level_that_the_services_real_pods_drive() {
    use bulwark_proto::v1::{BreakerState, UpstreamHealth};
    let secure = Secure::start().await;
    let applied = secure
        .cp
        .apply(
            "\
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: { name: orders, namespace: shop }
spec:
  serviceAccount: orders
  dependencies: { inventory: {} }
  unhealthyWhen: { breakerOpenPods: 50% }
  levels: { DEGRADED: { unhealthyDependencies: 1 } }
",
        )
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.text());
    let broken = || HealthReport {
        interval_ms: 1000,
        upstreams: vec![UpstreamHealth {
            namespace: "shop".into(),
            name: "inventory".into(),
            requests: 20,
            failures: 20,
            breaker: BreakerState::Open as i32,
            endpoints: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    // An attacker with frontend's real certificate reports inventory broken in orders' name.
    let frontend = secure
        .certificate(FRONTEND, "frontend-1", "frontend-token")
        .await;
    let mut forged = DiscoveryStream::open(
        &secure.cp,
        &secure.presenting(&frontend),
        "shop",
        "orders",
        "frontend-1",
        0,
    )
    .await
    .expect("the stream opens, then its Hello is refused");
    forged.report(broken()).await;
    forged.report(broken()).await;
    let status = forged.end().await.expect("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(secure.rejected("service-account").await, 1.0);
    // The elected replica computes orders' level from no report: NORMAL, no pod reporting.
    let cp = &secure.cp;
    let level = || async move {
        let reply = cp.get("/v1/levels/shop/orders").await;
        (reply.status == 200).then_some(reply.json)
    };
    let normal = eventually(PATIENCE, level).await;
    assert_eq!(normal["level"], "NORMAL", "{normal}");
    assert_eq!(normal["reportingPods"], 0, "{normal}");
    // orders' real pod reports the same: its report counts, and the level moves.
    let orders = secure.certificate(ORDERS, "orders-1", "orders-token").await;
    let real = DiscoveryStream::open(
        &secure.cp,
        &secure.presenting(&orders),
        "shop",
        "orders",
        "orders-1",
        0,
    )
    .await
    .expect("admitted");
    let degraded = eventually(PATIENCE, || async {
        real.report(broken()).await;
        let now = level().await?;
        (now["level"] == "DEGRADED").then_some(now)
    })
    .await;
    assert_eq!(degraded["reportingPods"], 1, "{degraded}");
}
