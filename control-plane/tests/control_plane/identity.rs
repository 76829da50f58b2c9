//! The Identity service from the caller's side: a sidecar's certificate request signed for the
//! identity its proof allows — a join token from the tokens file, or a ServiceAccount token the
//! Kubernetes API vouches for — and refused, with the reason, for anything else.

use std::path::Path;
use std::time::SystemTime;

use bulwark_identity::verify::MeshServerVerifier;
use bulwark_identity::{CertInfo, Credentials, PendingKey, SpiffeId, TrustAnchors};
use bulwark_proto::v1::identity_client::IdentityClient;
use bulwark_proto::v1::{CertifyRequest, certify_request};
use bulwark_tests::kube::{KnownToken, TokenReviewApi};
use bulwark_tests::{ControlPlane, Etcd, TempDir};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::Code;

use crate::replica_with;

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).expect("an identity")
}

async fn certify(
    cp: &ControlPlane,
    csr: Vec<u8>,
    proof: Option<certify_request::Proof>,
) -> Result<bulwark_proto::v1::CertifyResponse, tonic::Status> {
    let mut client = IdentityClient::connect(cp.grpc_url())
        .await
        .expect("connect to the control plane");
    client
        .certify(CertifyRequest {
            csr,
            proof,
            pod: "test-pod".into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn join(token: &str) -> Option<certify_request::Proof> {
    Some(certify_request::Proof::JoinToken(token.into()))
}

fn sa_token(token: &str) -> Option<certify_request::Proof> {
    Some(certify_request::Proof::ServiceAccountToken(token.into()))
}

fn refused(result: Result<bulwark_proto::v1::CertifyResponse, tonic::Status>) -> (Code, String) {
    let status = result.expect_err("refused");
    (status.code(), status.message().to_string())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A certified chain verifies against the development root as the identity's server name.
fn assert_verifies(root_pem: &[u8], chain: &[Vec<u8>], expected: &SpiffeId) {
    let anchors = std::sync::Arc::new(TrustAnchors::from_pem(root_pem).expect("the root"));
    let chain: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let name = ServerName::try_from(expected.server_name()).expect("a server name");
    MeshServerVerifier::new(anchors)
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .expect("the chain leads to the root");
}

#[tokio::test]
async fn join_tokens_certify_their_own_service_account_and_nothing_else() {
    let dir = TempDir::new();
    let ca_dir = dir.path().join("ca");
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - { token: orders-secret, namespace: shop, serviceAccount: orders }\n",
    )
    .expect("write the tokens file");
    let etcd = Etcd::start().await;
    let args = [
        "--dev-identity",
        path(&ca_dir),
        "--join-tokens",
        path(&tokens),
    ];
    let cp = replica_with(&[etcd.endpoint()], &args).await;
    let root_pem = std::fs::read(ca_dir.join("root.pem")).expect("the development root");

    // Its own identity: certified, for a day, and the chain leads to the root.
    let orders = id("shop", "orders");
    let (pending, csr) = PendingKey::new(&orders).expect("a request");
    let issued = certify(&cp, csr, join("orders-secret"))
        .await
        .expect("certified");
    assert_eq!(issued.spiffe_id, "spiffe://cluster.local/ns/shop/sa/orders");
    assert_eq!(issued.chain.len(), 2, "leaf and issuer");
    let leaf = CertInfo::parse(&CertificateDer::from(issued.chain[0].clone())).expect("a leaf");
    assert_eq!(leaf.spiffe_id, Some(orders.clone()));
    let lifetime = leaf
        .not_after
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(
        lifetime.as_secs() > 23 * 3600 && lifetime.as_secs() <= 24 * 3600,
        "{lifetime:?}"
    );
    assert_eq!(
        issued.not_after_unix_ms,
        i64::try_from(bulwark_identity::cert::unix_seconds(leaf.not_after) * 1000).unwrap()
    );
    assert_verifies(&root_pem, &issued.chain, &orders);
    let chain = issued
        .chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    Credentials::new()
        .install(pending, chain)
        .expect("the sidecar installs it");

    // Another service account with the same token: refused, nothing issued.
    let (_, csr) = PendingKey::new(&id("pay", "payments")).expect("a request");
    assert_eq!(
        refused(certify(&cp, csr, join("orders-secret")).await),
        (
            Code::PermissionDenied,
            "the certificate request asks for spiffe://cluster.local/ns/pay/sa/payments, but the proof given is for spiffe://cluster.local/ns/shop/sa/orders".into()
        )
    );
    let (_, csr) = PendingKey::new(&orders).expect("a request");
    assert_eq!(
        refused(certify(&cp, csr.clone(), join("guessed")).await),
        (
            Code::Unauthenticated,
            "the join token is not in the control plane's tokens file".into()
        )
    );
    assert_eq!(
        refused(certify(&cp, csr.clone(), None).await),
        (
            Code::Unauthenticated,
            "no proof: send the pod's service account token or a join token".into()
        )
    );
    assert_eq!(
        refused(certify(&cp, csr.clone(), sa_token("a-jwt")).await),
        (
            Code::Unauthenticated,
            "service account tokens are not accepted: this control plane has no Kubernetes API to check them with".into()
        )
    );
    assert_eq!(
        refused(certify(&cp, b"not a request".to_vec(), join("orders-secret")).await),
        (
            Code::InvalidArgument,
            "the certificate request cannot be read: Could not parse certificate signing request"
                .into()
        )
    );

    // Revoked by removing it from the file: refused from the next request on.
    std::fs::write(&tokens, "tokens: []\n").expect("rewrite the tokens file");
    assert_eq!(
        refused(certify(&cp, csr, join("orders-secret")).await).0,
        Code::Unauthenticated
    );

    let http = bulwark_tests::client::http1_client(cp.http());
    let metrics = bulwark_tests::client::get(&http, &cp.url("/metrics"))
        .await
        .text();
    assert!(
        metrics.contains("bulwark_certificates_total{proof=\"join-token\",result=\"issued\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bulwark_certificates_total{proof=\"join-token\",result=\"refused\"} 4\n"),
        "{metrics}"
    );
    let log = cp.wait_log("certificate issued", 1).await;
    assert!(
        log.contains("identity=spiffe://cluster.local/ns/shop/sa/orders"),
        "{log}"
    );

    // A restart keeps the development root: sidecars keep trusting what they were given.
    cp.terminate().await;
    let again = replica_with(&[etcd.endpoint()], &args).await;
    assert_eq!(
        std::fs::read(ca_dir.join("root.pem")).expect("the root"),
        root_pem
    );
    std::fs::write(
        &tokens,
        "tokens:\n  - { token: orders-secret, namespace: shop, serviceAccount: orders }\n",
    )
    .expect("write the tokens file");
    let (_, csr) = PendingKey::new(&orders).expect("a request");
    let issued = certify(&again, csr, join("orders-secret"))
        .await
        .expect("certified");
    assert_verifies(&root_pem, &issued.chain, &orders);
}

#[tokio::test]
async fn service_account_tokens_are_checked_with_a_token_review() {
    let api = TokenReviewApi::start(
        "control-plane-token",
        vec![
            KnownToken {
                token: "orders-projected".into(),
                namespace: "shop".into(),
                service_account: "orders".into(),
                audiences: vec!["bulwark".into()],
            },
            KnownToken {
                token: "orders-for-another-audience".into(),
                namespace: "shop".into(),
                service_account: "orders".into(),
                audiences: vec!["vault".into()],
            },
        ],
    )
    .await;
    let dir = TempDir::new();
    let ca = dir.path().join("kube-ca.pem");
    let own_token = dir.path().join("token");
    std::fs::write(&ca, api.ca_pem()).expect("write the CA");
    std::fs::write(&own_token, "control-plane-token\n").expect("write the token");
    let etcd = Etcd::start().await;
    let ca_dir = dir.path().join("authority");
    let cp = replica_with(
        &[etcd.endpoint()],
        &[
            "--dev-identity",
            path(&ca_dir),
            "--kube-api",
            &api.url(),
            "--kube-ca",
            path(&ca),
            "--kube-token",
            path(&own_token),
        ],
    )
    .await;

    let orders = id("shop", "orders");
    let (_, csr) = PendingKey::new(&orders).expect("a request");
    let issued = certify(&cp, csr.clone(), sa_token("orders-projected"))
        .await
        .expect("certified");
    assert_eq!(issued.spiffe_id, orders.to_string());
    let reviews = api.reviews();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["spec"]["token"], "orders-projected");
    assert_eq!(
        reviews[0]["spec"]["audiences"],
        serde_json::json!(["bulwark"])
    );

    // The same token cannot get another service account's certificate.
    let (_, other) = PendingKey::new(&id("shop", "admin")).expect("a request");
    assert_eq!(
        refused(certify(&cp, other, sa_token("orders-projected")).await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        refused(certify(&cp, csr.clone(), sa_token("orders-for-another-audience")).await),
        (
            Code::Unauthenticated,
            "the service account token was refused: [invalid bearer token, token audiences [\"other\"] is invalid for the target audiences [\"bulwark\"]]".into()
        )
    );
    assert_eq!(
        refused(certify(&cp, csr.clone(), sa_token("stolen-elsewhere")).await),
        (
            Code::Unauthenticated,
            "the service account token was refused: [invalid bearer token, service account token has been invalidated]".into()
        )
    );

    // The control plane's own token no longer accepted: it says so, and nothing is issued.
    std::fs::write(&own_token, "expired-token\n").expect("rewrite the token");
    let (code, message) = refused(certify(&cp, csr.clone(), sa_token("orders-projected")).await);
    assert_eq!(code, Code::Unavailable);
    assert!(
        message.starts_with("cannot check the service account token with the Kubernetes API: the API server answered 401 Unauthorized"),
        "{message}"
    );

    // The API server down: unavailable, which a sidecar retries.
    drop(api);
    std::fs::write(&own_token, "control-plane-token\n").expect("rewrite the token");
    let (code, message) = refused(certify(&cp, csr, sa_token("orders-projected")).await);
    assert_eq!(code, Code::Unavailable, "{message}");
    assert!(
        message.starts_with("cannot check the service account token with the Kubernetes API"),
        "{message}"
    );
}

/// The issuer's files are renewed in place (cert-manager renews the Secret, the kubelet updates
/// the mounted files): certificates are signed by the new issuer from then on, without a
/// restart; files that do not hold an issuer leave the one in force.
#[tokio::test]
async fn a_renewed_issuer_signs_from_then_on() {
    use bulwark_identity::dev::DevAuthority;
    let dir = TempDir::new();
    let (old, _) = DevAuthority::ensure(&dir.path().join("old")).expect("an authority");
    let (new, _) = DevAuthority::ensure(&dir.path().join("new")).expect("another");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let install = |from: &DevAuthority| {
        std::fs::copy(&from.issuer, &cert).expect("copy the issuer");
        std::fs::copy(&from.issuer_key, &key).expect("copy its key");
    };
    install(&old);
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - { token: t, namespace: shop, serviceAccount: orders }\n",
    )
    .expect("write the tokens file");
    let etcd = Etcd::start().await;
    let args = [
        "--issuer-cert",
        path(&cert),
        "--issuer-key",
        path(&key),
        "--issuer-reload-interval",
        "100ms",
        "--join-tokens",
        path(&tokens),
    ];
    let cp = replica_with(&[etcd.endpoint()], &args).await;
    let orders = id("shop", "orders");
    let issuer_of = |chain: &[Vec<u8>]| {
        CertInfo::parse(&CertificateDer::from(chain[0].clone()))
            .expect("a leaf")
            .issuer
    };
    let subject = |file: &Path| {
        let pem = std::fs::read(file).expect("the issuer");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem).expect("a certificate");
        CertInfo::parse(&der).expect("an issuer").subject
    };
    let (_, csr) = PendingKey::new(&orders).expect("a request");
    let first = certify(&cp, csr, join("t")).await.expect("certified");
    assert_eq!(issuer_of(&first.chain), subject(&old.issuer));

    // Garbage first: refused, the old issuer stays.
    std::fs::write(&cert, "not a certificate").expect("write garbage");
    cp.wait_log("identity issuer not reloaded; keeping the one in force", 1)
        .await;
    let (_, csr) = PendingKey::new(&orders).expect("a request");
    let still = certify(&cp, csr, join("t")).await.expect("certified");
    assert_eq!(issuer_of(&still.chain), subject(&old.issuer));

    install(&new);
    cp.wait_log("identity issuer reloaded", 1).await;
    let (_, csr) = PendingKey::new(&orders).expect("a request");
    let renewed = certify(&cp, csr, join("t")).await.expect("certified");
    assert_eq!(issuer_of(&renewed.chain), subject(&new.issuer));
    let new_root = std::fs::read(&new.root).expect("the new root");
    assert_verifies(&new_root, &renewed.chain, &orders);
}
