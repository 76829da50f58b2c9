//! Verifying peers between sidecars. Chains are checked by rustls' WebPKI verifiers over the
//! trust anchors in force; on top of that a server must present the SPIFFE ID its server name
//! asked for, and a client must present a SPIFFE ID at all — the one authorization then sees.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::anchors::TrustAnchors;
use crate::cert::CertInfo;
use crate::spiffe::SpiffeId;

/// The SPIFFE ID a verified peer certificate carries.
pub fn peer_identity(end_entity: &CertificateDer<'_>) -> Option<SpiffeId> {
    CertInfo::parse(end_entity).ok()?.spiffe_id
}

fn other(message: String) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        IdentityMismatch(message),
    ))))
}

/// Why a verified chain is still not the peer wanted. Its `Debug` is the message itself, as
/// rustls prints it inside its own error.
struct IdentityMismatch(String);

impl std::fmt::Debug for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityMismatch {}

/// A sidecar verifying the sidecar it connects to.
#[derive(Debug)]
pub struct MeshServerVerifier {
    anchors: Arc<TrustAnchors>,
}

impl MeshServerVerifier {
    pub fn new(anchors: Arc<TrustAnchors>) -> MeshServerVerifier {
        MeshServerVerifier { anchors }
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let ServerName::DnsName(name) = server_name else {
            return Err(other(format!("{server_name:?} names no mesh identity")));
        };
        let Some(expected) = SpiffeId::from_server_name(name.as_ref()) else {
            return Err(other(format!("{:?} names no mesh identity", name.as_ref())));
        };
        let presented = peer_identity(end_entity);
        // Another identity than the one asked for: the chain is still verified first (as the
        // name it claims), so that a certificate from outside the mesh is named as such; a
        // genuine one is then refused naming both identities.
        let verified_as = match &presented {
            Some(p) if *p != expected => {
                ServerName::try_from(p.server_name()).map_err(|e| other(format!("{p}: {e}")))?
            }
            _ => server_name.to_owned(),
        };
        self.anchors.load().server.verify_server_cert(
            end_entity,
            intermediates,
            &verified_as,
            ocsp,
            now,
        )?;
        match presented {
            Some(presented) if presented == expected => Ok(ServerCertVerified::assertion()),
            Some(presented) => Err(other(format!(
                "the server presented {presented}, not {expected}"
            ))),
            None => Err(other(format!(
                "the server's certificate carries no SPIFFE ID (expected {expected})"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.anchors
            .load()
            .server
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.anchors
            .load()
            .server
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.anchors.load().server.supported_verify_schemes()
    }
}

/// A sidecar verifying a sidecar that connects to it: the client certificate is required.
#[derive(Debug)]
pub struct MeshClientVerifier {
    anchors: Arc<TrustAnchors>,
}

impl MeshClientVerifier {
    pub fn new(anchors: Arc<TrustAnchors>) -> MeshClientVerifier {
        MeshClientVerifier { anchors }
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: every sidecar has exactly one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.anchors
            .load()
            .client
            .verify_client_cert(end_entity, intermediates, now)?;
        match peer_identity(end_entity) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(other(
                "the client's certificate carries no SPIFFE ID".to_string(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.anchors
            .load()
            .client
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.anchors
            .load()
            .client
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.anchors.load().client.supported_verify_schemes()
    }
}

/// A client of the control plane verifying it: the chain leads to the trust anchors in force
/// and the certificate names the host the client dialled (standard host-name verification; the
/// control plane's certificate carries its DNS names and addresses).
#[derive(Debug)]
pub struct AnchoredServerVerifier {
    anchors: Arc<TrustAnchors>,
}

impl AnchoredServerVerifier {
    pub fn new(anchors: Arc<TrustAnchors>) -> AnchoredServerVerifier {
        AnchoredServerVerifier { anchors }
    }
}

impl ServerCertVerifier for AnchoredServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.anchors.load().server.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.anchors
            .load()
            .server
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.anchors
            .load()
            .server
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.anchors.load().server.supported_verify_schemes()
    }
}

/// Whose chain a client certificate of the control plane's clients leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRoot {
    /// The mesh's trust anchors: a workload (its SPIFFE ID is the identity).
    Mesh,
    /// The operators' client CA: a person or tool (its subject names it).
    Operators,
}

/// The control plane verifying its clients: a certificate is optional (a sidecar asks for its
/// first one without; operators may use bearer tokens), but one that is presented must lead
/// to the mesh's trust anchors — and carry a SPIFFE ID — or to the operators' CA.
#[derive(Debug)]
pub struct ControlPlaneClientVerifier {
    mesh: Arc<TrustAnchors>,
    operators: Option<Arc<dyn ClientCertVerifier>>,
}

impl ControlPlaneClientVerifier {
    /// `operators_ca_pem`: the CA bundle of operators' client certificates, if any.
    pub fn new(
        mesh: Arc<TrustAnchors>,
        operators_ca_pem: Option<&[u8]>,
    ) -> Result<ControlPlaneClientVerifier, String> {
        let operators = match operators_ca_pem {
            None => None,
            Some(pem) => {
                let mut store = rustls::RootCertStore::empty();
                for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(pem) {
                    let cert: CertificateDer<'static> =
                        cert.map_err(|e| format!("client CA: {e}"))?;
                    store.add(cert).map_err(|e| format!("client CA: {e}"))?;
                }
                if store.is_empty() {
                    return Err("client CA: no PEM certificate found".into());
                }
                Some(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(store),
                        crate::provider(),
                    )
                    .build()
                    .map_err(|e| format!("client CA: {e}"))?,
                )
            }
        };
        Ok(ControlPlaneClientVerifier { mesh, operators })
    }

    /// Which root a presented chain leads to (the handshake already verified that one does).
    pub fn root_of(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<ClientRoot> {
        let now = UnixTime::now();
        if peer_identity(end_entity).is_some()
            && self
                .mesh
                .load()
                .client
                .verify_client_cert(end_entity, intermediates, now)
                .is_ok()
        {
            return Some(ClientRoot::Mesh);
        }
        match &self.operators {
            Some(v) if v.verify_client_cert(end_entity, intermediates, now).is_ok() => {
                Some(ClientRoot::Operators)
            }
            _ => None,
        }
    }
}

impl ClientCertVerifier for ControlPlaneClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let mesh = self
            .mesh
            .load()
            .client
            .verify_client_cert(end_entity, intermediates, now);
        match (&mesh, peer_identity(end_entity)) {
            (Ok(_), Some(_)) => return Ok(ClientCertVerified::assertion()),
            (Ok(_), None) => {
                return Err(other(
                    "the client's certificate carries no SPIFFE ID".to_string(),
                ));
            }
            (Err(_), _) => {}
        }
        match &self.operators {
            Some(v) => v
                .verify_client_cert(end_entity, intermediates, now)
                .or(mesh),
            None => mesh,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.mesh
            .load()
            .client
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.mesh
            .load()
            .client
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.mesh.load().client.supported_verify_schemes()
    }
}
