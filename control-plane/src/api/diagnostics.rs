//! `GET /v1/diagnostics`: what `meshctl check` asks the control plane about itself — whether
//! it reaches etcd, which replica leads, and when the certificates it serves with run out (the
//! injection webhook's, the identity issuer's). Each part says what it could not find out
//! rather than failing the whole answer.

use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;

use super::ops::{OpError, Ops};
use crate::auth::Actor;
use crate::auth::rbac::{Resource, Scope, Verb};
use crate::store::Read;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostics {
    /// The replica that answered.
    pub replica: String,
    pub etcd: Etcd,
    pub leader: Leader,
    /// `None` when the webhook is off.
    pub webhook: Option<Certificate>,
    /// `None` when the identity authority is off.
    pub identity_issuer: Option<Certificate>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Etcd {
    pub reachable: bool,
    /// The revision this replica's index has reached.
    pub revision: i64,
    /// Why etcd could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Leader {
    /// The elected replica (`{replica}/{lease}`), `None` when none is.
    pub replica: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// When it runs out, unix milliseconds (0 when it could not be read).
    pub not_after_unix_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Ops {
    /// The control plane's own health, for callers allowed to read the mesh's status.
    pub async fn diagnostics(&self, actor: &Actor) -> Result<Diagnostics, OpError> {
        self.authorize(actor, Verb::Get, Resource::Status, Scope::Cluster)?;
        let (revision, stale) = {
            let index = self.index.lock();
            let state = index.state();
            (state.revision, state.stale || !state.loaded)
        };
        let (leader, etcd_error) = match self.store.read(&[Read::Key(self.keys.leader())]).await {
            Ok(read) => (
                Leader {
                    replica: read.answers[0]
                        .first()
                        .map(|e| String::from_utf8_lossy(&e.value).into_owned()),
                    error: None,
                },
                None,
            ),
            Err(e) => (
                Leader {
                    replica: None,
                    error: Some(format!("cannot read the election key: {e}")),
                },
                Some(e.to_string()),
            ),
        };
        Ok(Diagnostics {
            replica: self.replica.clone(),
            etcd: Etcd {
                reachable: etcd_error.is_none() && !stale,
                revision,
                error: etcd_error
                    .or_else(|| stale.then(|| "this replica's index is stale".to_string())),
            },
            leader,
            webhook: self
                .diagnostics
                .webhook_cert
                .as_ref()
                .map(|path| webhook_certificate(path)),
            identity_issuer: self
                .diagnostics
                .identity
                .as_ref()
                .map(|identity| certificate(Ok(identity.issuer.load().info().not_after))),
        })
    }
}

/// The first certificate of the webhook's chain file, read now (it is reloaded when it
/// changes, so the file is what is served).
fn webhook_certificate(path: &std::path::Path) -> Certificate {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let not_after = pem.and_then(|pem| {
        let der = CertificateDer::pem_slice_iter(&pem)
            .next()
            .ok_or_else(|| format!("{}: no certificate in it", path.display()))?
            .map_err(|e| format!("{}: {e}", path.display()))?;
        bulwark_identity::cert::CertInfo::parse(&der).map(|info| info.not_after)
    });
    certificate(not_after)
}

fn certificate(not_after: Result<SystemTime, String>) -> Certificate {
    match not_after {
        Ok(t) => Certificate {
            not_after_unix_ms: i64::try_from(bulwark_identity::cert::unix_seconds(t))
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
            error: None,
        },
        Err(error) => Certificate {
            not_after_unix_ms: 0,
            error: Some(error),
        },
    }
}
