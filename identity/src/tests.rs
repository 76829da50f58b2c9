//! Issuance and real TLS 1.3 handshakes (tokio-rustls over an in-memory pipe) between two
//! sidecars' configurations — and every way a peer or a request may try to pass for someone
//! else: another root, an expired certificate, another identity, no certificate, a request for
//! another service account.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dev::{DevAuthority, ca_params};
use crate::issue::DEFAULT_LEAF_LIFETIME;
use crate::tls::{ALPN_H2, mesh_client, mesh_server};
use crate::*;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bulwark-identity-{tag}-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn fastrand_suffix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A development authority and its issuer.
struct Authority {
    issuer: Issuer,
    root_pem: Vec<u8>,
}

impl Authority {
    fn new(tag: &str) -> Authority {
        let dir = temp_dir(tag);
        let (files, made) = DevAuthority::ensure(&dir).unwrap();
        assert!(made);
        // A second start reuses it.
        let (_, made_again) = DevAuthority::ensure(&dir).unwrap();
        assert!(!made_again);
        let issuer = Issuer::from_pem(
            &std::fs::read(&files.issuer).unwrap(),
            &std::fs::read_to_string(&files.issuer_key).unwrap(),
            DEFAULT_LEAF_LIFETIME,
        )
        .unwrap();
        let root_pem = std::fs::read(&files.root).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Authority { issuer, root_pem }
    }

    /// Credentials for `ns/sa`, issued at `now`.
    fn credentials(&self, ns: &str, sa: &str, now: SystemTime) -> Arc<Credentials> {
        let id = SpiffeId::new("cluster.local", ns, sa).unwrap();
        let (pending, csr) = PendingKey::new(&id).unwrap();
        let issued = self.issuer.issue(&csr, &id, None, now).unwrap();
        let credentials = Arc::new(Credentials::new());
        credentials.install(pending, issued.chain).unwrap();
        credentials
    }
}

fn anchors(pems: &[&[u8]]) -> Arc<TrustAnchors> {
    Arc::new(TrustAnchors::from_pem(&pems.concat()).unwrap())
}

/// A handshake from `client` to `server` asking for `wanted`; the server's view of the client
/// identity, or the client's and the server's errors.
async fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
    wanted: &SpiffeId,
) -> Result<Option<SpiffeId>, (String, String)> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let name = ServerName::try_from(wanted.server_name()).unwrap();
    let (client, server) = tokio::join!(
        async {
            let mut tls = connector.connect(name, a).await?;
            tls.write_all(b"hello").await?;
            tls.flush().await?;
            let mut back = [0u8; 5];
            tls.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        },
        async {
            let mut tls = acceptor.accept(b).await?;
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(verify::peer_identity);
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            tls.write_all(&buf).await?;
            tls.flush().await?;
            Ok::<_, std::io::Error>((peer, alpn))
        }
    );
    match (client, server) {
        (Ok(back), Ok((peer, alpn))) => {
            assert_eq!(&back, b"hello");
            assert_eq!(alpn.as_deref(), Some(ALPN_H2));
            Ok(peer)
        }
        (client, server) => Err((
            client.err().map(|e| e.to_string()).unwrap_or_default(),
            server.err().map(|e| e.to_string()).unwrap_or_default(),
        )),
    }
}

#[tokio::test]
async fn two_sidecars_authenticate_each_other_by_identity() {
    let ca = Authority::new("pair");
    let now = SystemTime::now();
    let orders = ca.credentials("shop", "orders", now);
    let payments = ca.credentials("pay", "payments", now);
    let trust = anchors(&[&ca.root_pem]);
    let payments_id: SpiffeId = "spiffe://cluster.local/ns/pay/sa/payments".parse().unwrap();

    let info = &payments.current().unwrap().info;
    assert_eq!(info.spiffe_id, Some(payments_id.clone()));
    assert!(!info.is_ca);
    let lifetime = info.not_after.duration_since(now).unwrap();
    assert!(
        lifetime <= DEFAULT_LEAF_LIFETIME
            && lifetime > DEFAULT_LEAF_LIFETIME - Duration::from_secs(5)
    );

    let peer = handshake(
        mesh_client(orders, trust.clone(), ALPN_H2).unwrap(),
        mesh_server(payments, trust).unwrap(),
        &payments_id,
    )
    .await
    .unwrap();
    assert_eq!(
        peer.map(|p| p.to_string()).as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/orders"),
        "the server knows who called"
    );
}

#[tokio::test]
async fn a_server_from_another_root_expired_or_with_another_identity_is_refused() {
    let ca = Authority::new("server-side");
    let foreign = Authority::new("foreign");
    let now = SystemTime::now();
    let trust = anchors(&[&ca.root_pem]);
    let orders = ca.credentials("shop", "orders", now);
    let payments_id: SpiffeId = "spiffe://cluster.local/ns/pay/sa/payments".parse().unwrap();
    let refused = |server: Arc<Credentials>| {
        let client = mesh_client(orders.clone(), trust.clone(), ALPN_H2).unwrap();
        let server = mesh_server(server, anchors(&[&ca.root_pem, &foreign.root_pem])).unwrap();
        let wanted = payments_id.clone();
        async move { handshake(client, server, &wanted).await.unwrap_err().0 }
    };

    // Signed by another root.
    let error = refused(foreign.credentials("pay", "payments", now)).await;
    assert_eq!(error, "invalid peer certificate: UnknownIssuer");

    // Expired: issued two days ago for a day. (Its own resolver would not even offer it, so
    // present it through a resolver that ignores expiry.)
    let expired = ca.credentials("pay", "payments", now - Duration::from_secs(2 * 24 * 3600));
    assert!(
        expired.valid(now).is_none(),
        "an expired certificate is not offered"
    );
    let (client_error, server_error) = handshake(
        mesh_client(orders.clone(), trust.clone(), ALPN_H2).unwrap(),
        mesh_server(expired.clone(), anchors(&[&ca.root_pem])).unwrap(),
        &payments_id,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (client_error.as_str(), server_error.as_str()),
        (
            "received fatal alert: AccessDenied",
            "unexpected error: no server certificate chain resolved"
        )
    );
    let stale = Arc::new(Credentials::new());
    let forced = expired.current().unwrap();
    let error = {
        let client = mesh_client(orders.clone(), trust.clone(), ALPN_H2).unwrap();
        let mut server = mesh_server(stale, anchors(&[&ca.root_pem])).unwrap();
        server.cert_resolver = Arc::new(Always(forced.key.clone()));
        handshake(client, server, &payments_id).await.unwrap_err().0
    };
    assert!(
        error.starts_with("invalid peer certificate: certificate expired"),
        "{error}"
    );

    // Another identity: the certificate of orders, offered for payments.
    let error = refused(ca.credentials("shop", "orders", now)).await;
    assert_eq!(
        error,
        "invalid peer certificate: Other(OtherError(the server presented spiffe://cluster.local/ns/shop/sa/orders, not spiffe://cluster.local/ns/pay/sa/payments))"
    );

    // A certificate whose DNS name says payments but whose SPIFFE ID says orders: not valid
    // for the identity it claims.
    let forged = forge(
        &ca,
        "spiffe://cluster.local/ns/shop/sa/orders",
        &payments_id.server_name(),
        now,
    );
    let error = refused(forged).await;
    assert_eq!(
        error,
        "invalid peer certificate: certificate not valid for name \"orders.shop.sa.bulwark.cluster.local\"; certificate is only valid for UniformResourceIdentifier(\"spiffe://cluster.local/ns/shop/sa/orders\") or DnsName(\"payments.pay.sa.bulwark.cluster.local\")"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_or_from_another_root_is_refused() {
    let ca = Authority::new("client-side");
    let foreign = Authority::new("foreign-client");
    let now = SystemTime::now();
    let payments = ca.credentials("pay", "payments", now);
    let payments_id: SpiffeId = "spiffe://cluster.local/ns/pay/sa/payments".parse().unwrap();

    // No certificate at all: an empty resolver.
    let client = mesh_client(
        Arc::new(Credentials::new()),
        anchors(&[&ca.root_pem]),
        ALPN_H2,
    )
    .unwrap();
    let server = mesh_server(payments.clone(), anchors(&[&ca.root_pem])).unwrap();
    let (_, server_error) = handshake(client, server, &payments_id).await.unwrap_err();
    assert_eq!(server_error, "peer sent no certificates");

    // A certificate from another root (which the client itself trusts).
    let intruder = foreign.credentials("shop", "orders", now);
    let client = mesh_client(
        intruder,
        anchors(&[&ca.root_pem, &foreign.root_pem]),
        ALPN_H2,
    )
    .unwrap();
    let server = mesh_server(payments, anchors(&[&ca.root_pem])).unwrap();
    let (_, server_error) = handshake(client, server, &payments_id).await.unwrap_err();
    assert_eq!(server_error, "invalid peer certificate: UnknownIssuer");
}

#[tokio::test]
async fn root_rotation_trusts_both_roots_during_the_overlap() {
    let old = Authority::new("old-root");
    let new = Authority::new("new-root");
    let now = SystemTime::now();
    let payments_id: SpiffeId = "spiffe://cluster.local/ns/pay/sa/payments".parse().unwrap();
    let trust = anchors(&[&old.root_pem, &new.root_pem]);
    assert_eq!(trust.load().roots.len(), 2);
    // During the overlap, a client of either root reaches a server of either root.
    for (client_ca, server_ca) in [(&old, &new), (&new, &old)] {
        let client = mesh_client(
            client_ca.credentials("shop", "orders", now),
            trust.clone(),
            ALPN_H2,
        )
        .unwrap();
        let server =
            mesh_server(server_ca.credentials("pay", "payments", now), trust.clone()).unwrap();
        handshake(client, server, &payments_id).await.unwrap();
    }
    // Once the old root is gone, its certificates are refused.
    trust.replace(&new.root_pem).unwrap();
    let client = mesh_client(
        new.credentials("shop", "orders", now),
        trust.clone(),
        ALPN_H2,
    )
    .unwrap();
    let server = mesh_server(
        old.credentials("pay", "payments", now),
        anchors(&[&old.root_pem, &new.root_pem]),
    )
    .unwrap();
    let (client_error, _) = handshake(client, server, &payments_id).await.unwrap_err();
    assert_eq!(client_error, "invalid peer certificate: UnknownIssuer");
    // A bad bundle leaves the roots in force.
    assert_eq!(
        trust.replace(b"not pem").unwrap_err(),
        "trust anchors: no PEM certificate found"
    );
    assert_eq!(trust.load().roots.len(), 1);
}

#[test]
fn requests_for_another_identity_or_with_other_names_are_refused() {
    let ca = Authority::new("requests");
    let now = SystemTime::now();
    let orders: SpiffeId = "spiffe://cluster.local/ns/shop/sa/orders".parse().unwrap();
    let payments: SpiffeId = "spiffe://cluster.local/ns/pay/sa/payments".parse().unwrap();
    let (_, csr) = PendingKey::new(&payments).unwrap();
    assert_eq!(
        ca.issuer
            .issue(&csr, &orders, None, now)
            .unwrap_err()
            .to_string(),
        "the certificate request asks for spiffe://cluster.local/ns/pay/sa/payments, but the proof given is for spiffe://cluster.local/ns/shop/sa/orders"
    );

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(orders.to_string().try_into().unwrap()),
        SanType::DnsName("payments.pay.svc".try_into().unwrap()),
    ];
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    assert_eq!(
        ca.issuer
            .issue(&csr, &orders, None, now)
            .unwrap_err()
            .to_string(),
        "the certificate request must name exactly one SPIFFE ID (a URI subject alternative name) and nothing else; it names URI spiffe://cluster.local/ns/shop/sa/orders, DNS payments.pay.svc"
    );
    assert_eq!(
        ca.issuer
            .issue(b"garbage", &orders, None, now)
            .unwrap_err()
            .to_string(),
        "the certificate request cannot be read: Could not parse certificate signing request"
    );

    // A leaf that is not for the key that asked is not installed.
    let (pending, _) = PendingKey::new(&orders).unwrap();
    let (_, other_csr) = PendingKey::new(&orders).unwrap();
    let issued = ca.issuer.issue(&other_csr, &orders, None, now).unwrap();
    let credentials = Credentials::new();
    assert_eq!(
        credentials.install(pending, issued.chain).unwrap_err(),
        "the certificate is not for the key that requested it"
    );
    assert!(credentials.current().is_none());
}

#[test]
fn an_issuer_key_that_is_not_the_certificates_is_refused() {
    let dir = temp_dir("mismatch");
    let (files, _) = DevAuthority::ensure(&dir).unwrap();
    let err = Issuer::from_pem(
        &std::fs::read(&files.issuer).unwrap(),
        &std::fs::read_to_string(&files.root_key).unwrap(),
        DEFAULT_LEAF_LIFETIME,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the issuer key does not belong to the issuer certificate"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Presents one certificate whatever its validity.
#[derive(Debug)]
struct Always(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Always {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A leaf signed by `ca`'s issuer with the given URI and DNS names, outside the issuing rules.
fn forge(ca: &Authority, uri: &str, dns: &str, now: SystemTime) -> Arc<Credentials> {
    let key = KeyPair::generate().unwrap();
    let mut params = ca_params("forged", now, 1, None);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![
        SanType::URI(uri.try_into().unwrap()),
        SanType::DnsName(dns.try_into().unwrap()),
    ];
    let cert = params.signed_by(&key, ca.issuer.signer()).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        vec![cert.der().clone(), ca.issuer.chain()[0].clone()];
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
    let forged = Arc::new(Credentials::new());
    forged.force(
        Arc::new(rustls::sign::CertifiedKey::new(chain.clone(), signer)),
        chain,
    );
    forged
}

/// A second connection between the same two sidecars resumes the first one's session (a TLS
/// 1.3 ticket): no certificate exchange, no signatures.
#[tokio::test]
async fn a_second_connection_resumes_the_session() {
    let ca = Authority::new("resumption");
    let now = SystemTime::now();
    let trust = anchors(&[&ca.root_pem]);
    let client = Arc::new(
        mesh_client(
            ca.credentials("shop", "orders", now),
            trust.clone(),
            ALPN_H2,
        )
        .unwrap(),
    );
    let server = Arc::new(mesh_server(ca.credentials("pay", "payments", now), trust).unwrap());
    let payments: SpiffeId = "spiffe://cluster.local/ns/pay/sa/payments".parse().unwrap();
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
        let name = ServerName::try_from(payments.server_name()).unwrap();
        let (kind, _) = tokio::join!(
            async {
                let mut tls = connector.connect(name, a).await.unwrap();
                tls.write_all(b"ping").await.unwrap();
                let mut back = [0u8; 4];
                // Reading the answer also reads the ticket the server sent after the handshake.
                tls.read_exact(&mut back).await.unwrap();
                tls.get_ref().1.handshake_kind()
            },
            async {
                let mut tls = acceptor.accept(b).await.unwrap();
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.unwrap();
                tls.write_all(&buf).await.unwrap();
                tls.flush().await.unwrap();
            }
        );
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
}
