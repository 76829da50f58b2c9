//! The sidecar-injection webhook of the real binary, over real TLS (a test CA and serving
//! certificates made with rcgen, trusted by a tokio-rustls client): AdmissionReviews answered
//! with the library's patch, opt-out and denial; bad requests; no plain HTTP; a certificate
//! rotated on disk served without a restart; a certificate that appears after start-up.
// Helpers outside the tests panic too: a failed set-up step is a failed test.
#![allow(clippy::unwrap_used)]

use crate::replica_with;
use bulwark_tests::rest::try_request;
use bulwark_tests::{ControlPlane, Etcd, PATIENCE, TempDir, wait_for};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The name the API server checks: the webhook Service's.
const SERVICE_NAME: &str = "bulwark-control-plane.bulwark.svc";
const SIDECAR_IMAGE: &str = "registry.test/bulwark/sidecar:9.9.9";
const SIDECAR_CONTROL_PLANE: &str = "http://control-plane.test:8081";
const INIT_IMAGE: &str = "registry.test/bulwark/init:9.9.9";
const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

// ───────────────────────────── certificates ─────────────────────────────

/// A test CA, and the files the control plane reads its serving certificate from.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: TempDir,
    /// Where the control plane is told the files are: `<dir>/secret/tls.{crt,key}`.
    cert: PathBuf,
    key: PathBuf,
}

/// A serving certificate issued by the test CA.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "bulwark-webhook-test-ca");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = TempDir::new();
        let secret = dir.path().join("secret");
        Pki {
            ca,
            cert: secret.join("tls.crt"),
            key: secret.join("tls.key"),
            dir,
        }
    }

    /// An end-entity certificate for the Service's names, told apart by serial and subject.
    fn issue(&self, serial: u64) -> Leaf {
        let mut params = CertificateParams::new(vec![
            SERVICE_NAME.to_string(),
            format!("{SERVICE_NAME}.cluster.local"),
        ])
        .unwrap();
        params.is_ca = IsCa::NoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("bulwark-webhook-{serial}"));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Puts `leaf` in place the way the kubelet fills a Secret volume: both files appear at
    /// once (a directory renamed into place).
    fn install(&self, leaf: &Leaf) {
        let staging = self.dir.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(staging.join("tls.key"), &leaf.key_pem).unwrap();
        std::fs::rename(&staging, self.cert.parent().unwrap()).unwrap();
    }

    /// Overwrites both files in place, certificate first: a reader may see the new
    /// certificate beside the old key for a moment.
    fn overwrite(&self, leaf: &Leaf) {
        std::fs::write(&self.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&self.key, &leaf.key_pem).unwrap();
    }

    /// A client trusting the test CA only, offering `alpn`.
    fn client(&self, alpn: &[u8]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

// ───────────────────────────── clients ─────────────────────────────

/// A TLS connection to the webhook, checked against the test CA and the Service's name.
async fn handshake(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(SERVICE_NAME).unwrap();
    tokio::time::timeout(PATIENCE, pki.client(alpn).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// The certificate the webhook presents to a new connection.
async fn presented(pki: &Pki, addr: SocketAddr) -> std::io::Result<CertificateDer<'static>> {
    let tls = handshake(pki, addr, b"http/1.1").await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
}

#[derive(Clone, Copy, PartialEq)]
enum Http {
    One,
    Two,
}

/// One request over a new TLS connection: status and body.
async fn call(
    pki: &Pki,
    addr: SocketAddr,
    http: Http,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> (u16, Bytes) {
    let alpn: &[u8] = if http == Http::Two {
        b"h2"
    } else {
        b"http/1.1"
    };
    let tls = handshake(pki, addr, alpn).await.expect("a TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(alpn),
        "the server agreed on the protocol"
    );
    let io = TokioIo::new(tls);
    let request = hyper::Request::builder()
        .method(method)
        .header("content-type", "application/json");
    let response = match http {
        Http::One => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let request = request
                .uri(path)
                .header("host", SERVICE_NAME)
                .body(Full::new(body.into()))
                .unwrap();
            sender.send_request(request).await.unwrap()
        }
        Http::Two => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let request = request
                .uri(format!("https://{SERVICE_NAME}{path}"))
                .body(Full::new(body.into()))
                .unwrap();
            sender.send_request(request).await.unwrap()
        }
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

/// POSTs `review` to `/inject` and parses the answer, which must be a 200.
async fn review(pki: &Pki, addr: SocketAddr, http: Http, review: &Value) -> Value {
    let (status, body) = call(
        pki,
        addr,
        http,
        "POST",
        "/inject?timeout=5s",
        review.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

// ───────────────────────────── set-up ─────────────────────────────

/// etcd, and the control plane with its webhook on a free port, its certificate files at
/// `pki`'s paths (which may not exist yet).
async fn start(pki: &Pki) -> (Etcd, ControlPlane) {
    start_with(pki, &[]).await
}

async fn start_with(pki: &Pki, extra: &[&str]) -> (Etcd, ControlPlane) {
    let etcd = Etcd::start().await;
    let mut args = vec![
        "--webhook",
        "127.0.0.1:0",
        "--webhook-cert",
        path(&pki.cert),
        "--webhook-key",
        path(&pki.key),
        "--sidecar-image",
        SIDECAR_IMAGE,
        "--sidecar-control-plane",
        SIDECAR_CONTROL_PLANE,
        "--init-image",
        INIT_IMAGE,
    ];
    args.extend_from_slice(extra);
    let cp = replica_with(&[etcd.endpoint()], &args).await;
    (etcd, cp)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn webhook(cp: &ControlPlane) -> SocketAddr {
    cp.webhook().expect("the ready file names the webhook")
}

/// A pod as the API server sends it for a Deployment's ReplicaSet: no name yet, a
/// `generateName`, an owner.
fn replica_pod(annotations: Value, ports: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7d9f8c6b5-",
            "namespace": "shop",
            "labels": {"app": "checkout", "pod-template-hash": "7d9f8c6b5"},
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "checkout-7d9f8c6b5",
                "uid": "4b1e6a43-32f4-4b43-9a6c-2f3c4a1d0e11",
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "containers": [{"name": "web", "image": "shop/checkout:1", "ports": ports}],
        },
    })
}

fn admission_review(pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

fn app_port() -> Value {
    json!([{"containerPort": 8080, "protocol": "TCP"}])
}

// ───────────────────────────── tests ─────────────────────────────

#[tokio::test]
async fn an_opted_in_pod_gets_the_sidecar_over_http1_and_h2() {
    let pki = Pki::new();
    pki.install(&pki.issue(1));
    let (_etcd, cp) = start(&pki).await;
    let addr = webhook(&cp);
    let pod = replica_pod(json!({}), app_port());

    let answer = review(&pki, addr, Http::One, &admission_review(pod.clone())).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");

    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    let injected = bulwark_inject::apply_patch(&pod, &patch).unwrap();
    // The capture container first, then the sidecar.
    let init = &injected["spec"]["initContainers"][0];
    assert_eq!(init["name"], "bulwark-init");
    assert_eq!(init["image"], INIT_IMAGE);
    let sidecar = &injected["spec"]["initContainers"][1];
    assert_eq!(sidecar["name"], "bulwark-sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    // The flags reach the injected sidecar.
    assert_eq!(sidecar["image"], SIDECAR_IMAGE);
    let env = |name: &str| {
        sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        env("BULWARK_CONTROL_PLANE"),
        Some(json!(SIDECAR_CONTROL_PLANE))
    );
    // The app is untouched.
    assert_eq!(injected["spec"]["containers"], pod["spec"]["containers"]);

    // The same answer over HTTP/2, which the API server may speak.
    let again = review(&pki, addr, Http::Two, &admission_review(pod)).await;
    assert_eq!(again, answer);

    // One log line per review.
    let log = cp.wait_log("admission review", 2).await;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admission review"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    for line in lines {
        for part in [
            "namespace=shop",
            "pod=checkout-7d9f8c6b5-",
            "decision=\"injected\"",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
    }
}

/// `--inject-capture disabled`: pods get no NET_ADMIN container unless they ask for one.
#[tokio::test]
async fn capture_can_be_off_by_default_and_on_per_pod() {
    let pki = Pki::new();
    pki.install(&pki.issue(1));
    let (_etcd, cp) = start_with(&pki, &["--inject-capture", "disabled"]).await;
    let addr = webhook(&cp);
    let injected = |pod: Value| {
        let pki = &pki;
        async move {
            let answer = review(pki, addr, Http::One, &admission_review(pod.clone())).await;
            let patch = base64::engine::general_purpose::STANDARD
                .decode(answer["response"]["patch"].as_str().expect("a patch"))
                .expect("base64");
            let patch: Vec<Value> = serde_json::from_slice(&patch).expect("JSON");
            let injected = bulwark_inject::apply_patch(&pod, &patch).expect("the patch applies");
            injected["spec"]["initContainers"]
                .as_array()
                .expect("initContainers")
                .iter()
                .map(|c| c["name"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        injected(replica_pod(json!({}), app_port())).await,
        ["bulwark-sidecar"]
    );
    assert_eq!(
        injected(replica_pod(
            json!({"bulwark.dev/capture": "enabled"}),
            app_port()
        ))
        .await,
        ["bulwark-init", "bulwark-sidecar"]
    );
}

#[tokio::test]
async fn opted_out_pods_pass_unchanged_and_refused_pods_are_denied() {
    let pki = Pki::new();
    pki.install(&pki.issue(1));
    let (_etcd, cp) = start(&pki).await;
    let addr = webhook(&cp);

    let opted_out = replica_pod(json!({"bulwark.dev/inject": "disabled"}), app_port());
    let answer = review(&pki, addr, Http::One, &admission_review(opted_out)).await;
    assert_eq!(
        answer["response"],
        json!({"uid": UID, "allowed": true}),
        "no patch"
    );

    let clashing = replica_pod(
        json!({}),
        json!([{"containerPort": 15001, "protocol": "TCP"}]),
    );
    let answer = review(&pki, addr, Http::One, &admission_review(clashing)).await;
    let response = &answer["response"];
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], false);
    assert_eq!(response.get("patch"), None);
    assert_eq!(
        response["status"]["message"],
        "cannot inject the Bulwark sidecar: container \"web\" already uses port 15001, which \
         the Bulwark sidecar needs; set bulwark.dev/outbound-port to another port"
    );
    assert_eq!(response["status"]["code"], 400);

    cp.wait_log("decision=\"unchanged\"", 1).await;
    cp.wait_log("decision=\"denied\"", 1).await;
}

#[tokio::test]
async fn bad_requests_and_plain_http() {
    let pki = Pki::new();
    pki.install(&pki.issue(1));
    let (_etcd, cp) = start(&pki).await;
    let addr = webhook(&cp);

    let (status, body) = call(&pki, addr, Http::One, "POST", "/inject", "{\"request\": ").await;
    assert_eq!(status, 400);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "the body is not valid JSON: EOF while parsing a value at line 1 column 12\n"
    );
    let (status, _) = call(&pki, addr, Http::One, "GET", "/inject", "").await;
    assert_eq!(status, 405);
    let (status, _) = call(&pki, addr, Http::One, "POST", "/mutate", "{}").await;
    assert_eq!(status, 404);

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = try_request(
        hyper::Method::POST,
        &format!("http://{addr}/inject"),
        Some(&admission_review(replica_pod(json!({}), app_port()))),
    )
    .await;
    assert!(plain.is_none(), "{plain:?}");
    // And the webhook still serves TLS clients afterwards.
    let answer = review(
        &pki,
        addr,
        Http::One,
        &admission_review(replica_pod(json!({}), app_port())),
    )
    .await;
    assert_eq!(answer["response"]["allowed"], true);
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    let first = pki.issue(1);
    pki.install(&first);
    let (_etcd, cp) = start(&pki).await;
    let addr = webhook(&cp);
    assert_eq!(presented(&pki, addr).await.unwrap(), first.der);

    let second = pki.issue(2);
    assert_ne!(first.der, second.der);
    pki.overwrite(&second);
    // Every handshake meanwhile succeeds, with the old certificate until the new one is read.
    wait_for("the new certificate", || async {
        let served = presented(&pki, addr).await.expect("a TLS handshake");
        assert!(served == first.der || served == second.der);
        (served == second.der).then_some(())
    })
    .await;

    let answer = review(
        &pki,
        addr,
        Http::One,
        &admission_review(replica_pod(json!({}), app_port())),
    )
    .await;
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    cp.wait_log("webhook certificate loaded", 1).await;
}

#[tokio::test]
async fn the_webhook_waits_for_its_certificate() {
    let pki = Pki::new();
    let (_etcd, cp) = start(&pki).await;
    let addr = webhook(&cp);

    // No certificate: handshakes fail, the rest of the control plane works.
    assert!(presented(&pki, addr).await.is_err());
    assert!(presented(&pki, addr).await.is_err());
    assert_eq!(cp.get("/health/live").await.status, 200);
    cp.wait_fresh().await;

    let leaf = pki.issue(7);
    pki.install(&leaf);
    wait_for("the certificate", || async {
        let served = presented(&pki, addr).await.ok()?;
        assert_eq!(served, leaf.der);
        Some(())
    })
    .await;
    let answer = review(
        &pki,
        addr,
        Http::Two,
        &admission_review(replica_pod(json!({}), app_port())),
    )
    .await;
    assert_eq!(answer["response"]["allowed"], true);

    // Told once, however many handshakes failed.
    let log = cp.log();
    assert_eq!(
        log.matches("no usable webhook certificate").count(),
        1,
        "{log}"
    );
}
