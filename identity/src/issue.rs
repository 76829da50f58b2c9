//! The control plane's side: an issuer certificate and key (loaded from PEM), and issuing a
//! short-lived leaf certificate for a certificate request — only for the identity the caller's
//! proof allows. Of the request only the public key and the requested SPIFFE ID are used; every
//! other field of the leaf (validity, usages, not a CA) is the issuer's choice.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use crate::cert::CertInfo;
use crate::spiffe::SpiffeId;

/// How long leaf certificates live unless configured otherwise.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Certificates are dated this much before issuance, for clocks slightly behind.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why an issuer cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("issuer certificate: {0}")]
    Certificate(String),
    #[error("issuer key: {0}")]
    Key(String),
    #[error("the issuer key does not belong to the issuer certificate")]
    KeyMismatch,
}

/// Why a certificate request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("the certificate request cannot be read: {0}")]
    Unreadable(String),
    #[error(
        "the certificate request must name exactly one SPIFFE ID (a URI subject alternative name) and nothing else; it names {0}"
    )]
    Names(String),
    #[error("the certificate request asks for {asked}, but the proof given is for {allowed}")]
    WrongIdentity { asked: String, allowed: SpiffeId },
    #[error("the issuer's certificate expired; it cannot issue until it is replaced")]
    IssuerExpired,
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A leaf certificate and the chain to send with it (leaf first, without the root).
#[derive(Debug, Clone)]
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

/// The issuing certificate authority.
pub struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    /// The issuer's certificate and those above it that are not trust anchors.
    chain: Vec<CertificateDer<'static>>,
    info: CertInfo,
    lifetime: Duration,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("subject", &self.info.subject)
            .field("not_after", &self.info.not_after)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// `chain_pem`: the issuer's certificate first, then any intermediates up to (not
    /// including) the root; `key_pem`: the issuer's private key.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &str,
        lifetime: Duration,
    ) -> Result<Issuer, IssuerError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| IssuerError::Certificate(e.to_string()))?;
        let Some(first) = chain.first() else {
            return Err(IssuerError::Certificate("no PEM certificate found".into()));
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| IssuerError::Key(e.to_string()))?;
        let info = CertInfo::parse(first).map_err(IssuerError::Certificate)?;
        if info.public_key != rcgen::PublicKeyData::der_bytes(&key) {
            return Err(IssuerError::KeyMismatch);
        }
        let signer = rcgen::Issuer::from_ca_cert_der(first, key)
            .map_err(|e| IssuerError::Certificate(e.to_string()))?;
        Ok(Issuer {
            signer,
            chain,
            info,
            lifetime,
        })
    }

    /// The issuer's own certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The issuer's certificate and those above it that are not trust anchors.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    #[cfg(test)]
    pub(crate) fn signer(&self) -> &rcgen::Issuer<'static, KeyPair> {
        &self.signer
    }

    /// A leaf for `csr`'s public key and `allowed` — the identity the caller proved — valid from
    /// a minute before `now` for the configured lifetime (never past the issuer's own expiry).
    /// `pod`, when given, is the subject's common name: the pod the certificate is bound to
    /// (the control plane accepts a pod's streams only under that name).
    pub fn issue(
        &self,
        csr: &[u8],
        allowed: &SpiffeId,
        pod: Option<&str>,
        now: SystemTime,
    ) -> Result<Issued, IssueError> {
        let der = CertificateSigningRequestDer::from(csr);
        let mut request = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| IssueError::Unreadable(e.to_string()))?;
        let asked = match request.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] => uri.as_str().to_string(),
            [] => return Err(IssueError::Names("none".into())),
            names => return Err(IssueError::Names(describe(names))),
        };
        if asked != allowed.to_string() {
            return Err(IssueError::WrongIdentity {
                asked,
                allowed: allowed.clone(),
            });
        }
        if now >= self.info.not_after {
            return Err(IssueError::IssuerExpired);
        }
        let not_after = (now + self.lifetime).min(self.info.not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(pod) = pod.filter(|p| !p.is_empty()) {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, pod);
        }
        // The SPIFFE ID, and its server-name form as a DNS name: a client that asks for an
        // identity by server name verifies it with standard host-name verification.
        let dns = allowed
            .server_name()
            .try_into()
            .map_err(|e: rcgen::Error| IssueError::Signing(e.to_string()))?;
        params.subject_alt_names = vec![
            request.params.subject_alt_names[0].clone(),
            SanType::DnsName(dns),
        ];
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(serial()?);
        params.use_authority_key_identifier_extension = true;
        request.params = params;
        let leaf = request
            .signed_by(&self.signer)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(Issued { chain, not_after })
    }
}

impl Issuer {
    /// A serving certificate for the control plane itself, with a key made here: the DNS names
    /// and IP addresses clients reach it by (each of `names` is one or the other), and
    /// `identity` as its SPIFFE ID. Valid like a workload's certificate.
    pub fn issue_server(
        &self,
        names: &[String],
        identity: &SpiffeId,
        now: SystemTime,
    ) -> Result<(Issued, rustls_pki_types::PrivateKeyDer<'static>), IssueError> {
        if now >= self.info.not_after {
            return Err(IssueError::IssuerExpired);
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let not_after = (now + self.lifetime).min(self.info.not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bulwark control plane");
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| IssueError::Signing(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName(name.as_str().try_into().map_err(|e: rcgen::Error| {
                        IssueError::Names(format!("server name {name:?}: {e}"))
                    })?)
                }
            });
        }
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(serial()?);
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&key, &self.signer)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.chain.iter().cloned());
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Ok((Issued { chain, not_after }, key))
    }
}

/// 16 random bytes, the top bit clear (a positive integer).
fn serial() -> Result<SerialNumber, IssueError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IssueError::Signing("no randomness for a serial number".into()))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn describe(names: &[SanType]) -> String {
    names
        .iter()
        .map(|n| match n {
            SanType::URI(u) => format!("URI {}", u.as_str()),
            SanType::DnsName(d) => format!("DNS {}", d.as_str()),
            SanType::IpAddress(ip) => format!("IP {ip}"),
            SanType::Rfc822Name(m) => format!("email {}", m.as_str()),
            _ => "another name".to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
