//! The trust anchors: the root certificates a peer's chain must lead to, from a PEM bundle
//! mounted into every pod. A bundle may hold several roots — during a root rotation the old and
//! the new one — and is replaced whole when its file changes; connections made before keep the
//! verification they had.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::cert::CertInfo;
use crate::provider;

/// One bundle of roots and the verifiers made from it.
pub struct AnchorSet {
    pub roots: Vec<CertInfo>,
    pub(crate) server: Arc<WebPkiServerVerifier>,
    pub(crate) client: Arc<dyn ClientCertVerifier>,
}

/// The roots in force, replaceable.
pub struct TrustAnchors {
    current: ArcSwap<AnchorSet>,
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let subjects: Vec<String> = self
            .current
            .load()
            .roots
            .iter()
            .map(|r| r.subject.clone())
            .collect();
        f.debug_struct("TrustAnchors")
            .field("roots", &subjects)
            .finish()
    }
}

impl TrustAnchors {
    /// The roots of a PEM bundle; at least one, each a CA certificate.
    pub fn from_pem(pem: &[u8]) -> Result<TrustAnchors, String> {
        Ok(TrustAnchors {
            current: ArcSwap::from_pointee(AnchorSet::from_pem(pem)?),
        })
    }

    /// Replaces the roots (a rotation). On an error the roots in force stay.
    pub fn replace(&self, pem: &[u8]) -> Result<(), String> {
        self.current.store(Arc::new(AnchorSet::from_pem(pem)?));
        Ok(())
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<AnchorSet>> {
        self.current.load()
    }
}

impl AnchorSet {
    fn from_pem(pem: &[u8]) -> Result<AnchorSet, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("trust anchors: {e}"))?;
        if certs.is_empty() {
            return Err("trust anchors: no PEM certificate found".into());
        }
        let mut store = RootCertStore::empty();
        let mut roots = Vec::new();
        for (i, cert) in certs.into_iter().enumerate() {
            let info =
                CertInfo::parse(&cert).map_err(|e| format!("trust anchor {}: {e}", i + 1))?;
            if !info.is_ca {
                return Err(format!(
                    "trust anchor {} ({}) is not a CA certificate",
                    i + 1,
                    info.subject
                ));
            }
            store
                .add(cert)
                .map_err(|e| format!("trust anchor {}: {e}", i + 1))?;
            roots.push(info);
        }
        let store = Arc::new(store);
        let server = WebPkiServerVerifier::builder_with_provider(store.clone(), provider())
            .build()
            .map_err(|e| format!("trust anchors: {e}"))?;
        let client = WebPkiClientVerifier::builder_with_provider(store, provider())
            .build()
            .map_err(|e| format!("trust anchors: {e}"))?;
        Ok(AnchorSet {
            roots,
            server,
            client,
        })
    }
}
