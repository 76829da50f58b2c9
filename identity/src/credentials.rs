//! A sidecar's own certificate and key. The key is made in memory for each certificate request
//! and never leaves the process; the certificate the control plane returns replaces the one in
//! force in one step — handshakes that start afterwards use the new one, established
//! connections keep theirs. Past its expiry a certificate is not offered any more: mTLS stops
//! instead of presenting something peers would refuse.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::cert::CertInfo;
use crate::spiffe::SpiffeId;

/// A key made for one certificate request, kept until its certificate arrives.
pub struct PendingKey {
    key: KeyPair,
    identity: SpiffeId,
}

impl PendingKey {
    /// A new key (ECDSA P-256) and a certificate request for `identity` signed with it.
    pub fn new(identity: &SpiffeId) -> Result<(PendingKey, Vec<u8>), String> {
        let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| format!("{identity}: {e}"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("cannot make a certificate request: {e}"))?;
        Ok((
            PendingKey {
                key,
                identity: identity.clone(),
            },
            csr.der().to_vec(),
        ))
    }
}

/// A certificate in force.
#[derive(Debug)]
pub struct Certified {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
}

/// The sidecar's certificate, shared by every TLS configuration that presents it.
#[derive(Debug, Default)]
pub struct Credentials {
    current: ArcSwapOption<Certified>,
}

impl Credentials {
    pub fn new() -> Credentials {
        Credentials::default()
    }

    /// Puts `chain` (leaf first), issued for `pending`'s request, in force. Refused when the leaf
    /// is not for that key or that identity.
    pub fn install(
        &self,
        pending: PendingKey,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<Certified>, String> {
        let Some(leaf) = chain.first() else {
            return Err("the certificate chain is empty".into());
        };
        let info = CertInfo::parse(leaf)?;
        if info.public_key != rcgen::PublicKeyData::der_bytes(&pending.key) {
            return Err("the certificate is not for the key that requested it".into());
        }
        if info.spiffe_id.as_ref() != Some(&pending.identity) {
            return Err(format!(
                "the certificate is for {}, not {}",
                info.spiffe_id
                    .as_ref()
                    .map_or_else(|| "no SPIFFE ID".to_string(), ToString::to_string),
                pending.identity
            ));
        }
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pending.key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| format!("unusable key: {e}"))?;
        let certified = Arc::new(Certified {
            key: Arc::new(CertifiedKey::new(chain.clone(), signer)),
            info,
            chain,
        });
        self.current.store(Some(certified.clone()));
        Ok(certified)
    }

    /// Puts any certificate in force, unchecked: for tests that present what no issuer would.
    #[cfg(test)]
    pub(crate) fn force(&self, key: Arc<CertifiedKey>, chain: Vec<CertificateDer<'static>>) {
        if let Some(info) = chain.first().and_then(|c| CertInfo::parse(c).ok()) {
            self.current
                .store(Some(Arc::new(Certified { key, info, chain })));
        }
    }

    /// The certificate in force, expired or not.
    pub fn current(&self) -> Option<Arc<Certified>> {
        self.current.load_full()
    }

    /// The certificate in force if it has not expired.
    pub fn valid(&self, now: SystemTime) -> Option<Arc<Certified>> {
        self.current
            .load_full()
            .filter(|c| now < c.info.not_after && now >= c.info.not_before)
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.valid(SystemTime::now()).map(|c| c.key.clone())
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.valid(SystemTime::now()).map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
