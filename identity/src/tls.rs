//! The rustls configurations of the mesh: TLS 1.3 only, both sides authenticated, ALPN `h2` or
//! `http/1.1` so that HTTP/2 (and gRPC) stay multiplexed end to end; session resumption on
//! both sides (tickets on the server, an in-memory cache on the client). And TLS origination to
//! external APIs (`tls.mode: simple`), verified against the system's or a given CA's roots.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::anchors::TrustAnchors;
use crate::credentials::Credentials;
use crate::provider;
use crate::verify::{
    AnchoredServerVerifier, ControlPlaneClientVerifier, MeshClientVerifier, MeshServerVerifier,
};

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The inbound side: presents the sidecar's certificate, requires the caller's.
pub fn mesh_server(
    credentials: Arc<Credentials>,
    anchors: Arc<TrustAnchors>,
) -> Result<ServerConfig, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier::new(anchors)))
        .with_cert_resolver(credentials);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The outbound side towards sidecars: presents the sidecar's certificate and checks that the
/// server is the identity its server name asks for. `alpn`: what the connection will speak.
pub fn mesh_client(
    credentials: Arc<Credentials>,
    anchors: Arc<TrustAnchors>,
    alpn: &[u8],
) -> Result<ClientConfig, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier::new(anchors)))
        .with_client_cert_resolver(credentials);
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Roots for TLS to external servers: a PEM bundle, or the system's (webpki-roots: Mozilla's).
pub fn roots(ca_pem: Option<&[u8]>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("CA file: {e}"))?;
                store.add(cert).map_err(|e| format!("CA file: {e}"))?;
            }
            if store.is_empty() {
                return Err("CA file: no PEM certificate found".into());
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(store)
}

/// TLS origination to an external server (`tls.mode: simple`): TLS 1.2 or 1.3, the server's
/// name checked against its certificate.
pub fn simple_client(roots: RootCertStore, alpn: &[u8]) -> Result<ClientConfig, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// A sidecar (or any client) of the control plane: the control plane's certificate verified
/// against `anchors` and the host dialled; the workload certificate presented once there is one
/// (`credentials`), for the streams that require it. ALPN `h2` (gRPC).
pub fn control_plane_client(
    anchors: Arc<TrustAnchors>,
    credentials: Option<Arc<Credentials>>,
) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnchoredServerVerifier::new(anchors)));
    let mut config = match credentials {
        Some(credentials) => builder.with_client_cert_resolver(credentials),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: a session resumed from the certificate request (made before there was a
    // certificate) would carry no client certificate into the Discovery stream. Connections
    // to the control plane are few and long-lived.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The control plane's listeners: its certificate from `certs`, client certificates optional
/// and verified by `verifier`; ALPN as given (`h2` for gRPC; `h2` and `http/1.1` for REST).
pub fn control_plane_server(
    certs: Arc<dyn rustls::server::ResolvesServerCert>,
    verifier: Arc<ControlPlaneClientVerifier>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
