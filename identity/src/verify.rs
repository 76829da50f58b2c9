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
