//! What a certificate says, read with x509-parser: its SPIFFE ID (the one URI subject
//! alternative name), validity, issuer and subject, for logs, `/identity` and the checks that
//! path validation does not make.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::SpiffeId;

/// The fields of a certificate Bulwark looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The SPIFFE ID among its URI names, when it has exactly one URI name that is one.
    pub spiffe_id: Option<SpiffeId>,
    pub subject: String,
    /// The subject's common name; a workload certificate's is the pod it is bound to.
    pub common_name: Option<String>,
    /// The subject's organizations (an operator's certificate: its groups).
    pub organizations: Vec<String>,
    pub issuer: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// The subject public key's bits (as in the certificate's SubjectPublicKeyInfo).
    pub public_key: Vec<u8>,
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
        let uris: Vec<&str> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(format!("unreadable subject alternative names: {e}")),
        };
        let spiffe_id = match uris.as_slice() {
            [one] => one.parse().ok(),
            _ => None,
        };
        let validity = cert.validity();
        Ok(CertInfo {
            spiffe_id,
            subject: cert.subject().to_string(),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string),
            organizations: cert
                .subject()
                .iter_organization()
                .filter_map(|o| o.as_str().ok())
                .map(str::to_string)
                .collect(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
            is_ca: cert.is_ca(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// Seconds since the Unix epoch (0 before it), for metrics and JSON.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
