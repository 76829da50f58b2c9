//! The control plane's own serving certificate, signed by the workload issuer: for the DNS
//! names and addresses its clients dial (`--server-name`), with the control plane's SPIFFE ID.
//! Sidecars verify it against the trust anchors they already hold, so the mesh needs no second
//! PKI. Renewed at about two thirds of its lifetime, and at once when the issuer is replaced.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use bulwark_identity::SpiffeId;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::IdentityConfig;

/// How often renewal looks at the certificate and the issuer.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The serving certificate in force.
#[derive(Debug)]
pub struct SelfIssued {
    names: Vec<String>,
    identity: SpiffeId,
    current: ArcSwapOption<CertifiedKey>,
}

/// Why a serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot issue the control plane's serving certificate: {0}")]
pub struct IssueFailed(String);

impl SelfIssued {
    /// Issues the first certificate now.
    pub fn new(
        config: &IdentityConfig,
        names: Vec<String>,
        identity: SpiffeId,
    ) -> Result<Arc<SelfIssued>, IssueFailed> {
        let issued = SelfIssued {
            names,
            identity,
            current: ArcSwapOption::empty(),
        };
        issued.issue(config)?;
        Ok(Arc::new(issued))
    }

    fn issue(&self, config: &IdentityConfig) -> Result<SystemTime, IssueFailed> {
        let issuer = config.issuer.load();
        let (issued, key) = issuer
            .issue_server(&self.names, &self.identity, SystemTime::now())
            .map_err(|e| IssueFailed(e.to_string()))?;
        let provider = bulwark_identity::provider();
        let key = CertifiedKey::from_der(issued.chain, key, &provider)
            .map_err(|e| IssueFailed(e.to_string()))?;
        self.current.store(Some(Arc::new(key)));
        tracing::info!(names = ?self.names, identity = %self.identity, not_after = bulwark_identity::cert::unix_seconds(issued.not_after), "serving certificate issued");
        Ok(issued.not_after)
    }

    /// Renews the certificate until the process ends.
    pub async fn renew(self: Arc<Self>, config: Arc<IdentityConfig>) {
        let mut issuer_serial = config.issuer.load().info().serial.clone();
        let mut not_after = SystemTime::now() + config.issuer.load().lifetime();
        let mut renew_at = SystemTime::now() + config.issuer.load().lifetime() * 2 / 3;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let serial = config.issuer.load().info().serial.clone();
            let now = SystemTime::now();
            if now < renew_at && serial == issuer_serial {
                continue;
            }
            match self.issue(&config) {
                Ok(expires) => {
                    issuer_serial = serial;
                    let lifetime = expires.duration_since(now).unwrap_or_default();
                    renew_at = now + lifetime * 2 / 3;
                    not_after = expires;
                }
                Err(e) => {
                    let left = not_after.duration_since(now).unwrap_or_default();
                    tracing::warn!(error = %e, expires_in = ?left, "serving certificate not renewed; retrying");
                }
            }
        }
    }
}

impl ResolvesServerCert for SelfIssued {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}
