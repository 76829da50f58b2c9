//! The Identity service: signs a sidecar's certificate request for the SPIFFE ID its proof
//! allows — `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` of the join token or
//! the ServiceAccount token ([`proof`]) — and nothing else. The issuer comes from PEM files
//! (a Kubernetes Secret) or, for development, from `--dev-identity DIR`.

pub mod binding;
pub mod principal;
pub mod proof;
pub mod serving;
pub mod token_review;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use bulwark_identity::{IssueError, Issuer, SpiffeId};
use bulwark_proto::v1::identity_server::Identity;
use bulwark_proto::v1::{CertifyRequest, CertifyResponse, certify_request};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use principal::ProofError;
use proof::{Proof, Verifier};

/// What the Identity service is given.
#[derive(Debug)]
pub struct IdentityConfig {
    pub trust_domain: String,
    /// Replaced when its files change ([`watch_issuer`]).
    pub issuer: ArcSwap<Issuer>,
    pub verifier: Verifier,
    /// Where the issuer was read from, to reload it (`None`: development, made once).
    pub issuer_files: Option<IssuerFiles>,
    pub issuer_reload_interval: Duration,
}

/// The issuer's PEM files and the lifetime of the certificates it signs.
#[derive(Debug, Clone)]
pub struct IssuerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub lifetime: Duration,
}

impl IssuerFiles {
    /// The issuer the files hold now, and their bytes.
    pub fn load(&self) -> Result<(Issuer, Vec<u8>), String> {
        let chain = std::fs::read(&self.cert)
            .map_err(|e| format!("reading {}: {e}", self.cert.display()))?;
        let key = std::fs::read_to_string(&self.key)
            .map_err(|e| format!("reading {}: {e}", self.key.display()))?;
        let issuer = Issuer::from_pem(&chain, &key, self.lifetime)
            .map_err(|e| format!("issuer {}: {e}", self.cert.display()))?;
        let mut seen = chain;
        seen.extend_from_slice(key.as_bytes());
        Ok((issuer, seen))
    }
}

/// Reloads the issuer every `every` when its files changed (cert-manager renews the Secret;
/// the kubelet updates the mounted files): certificates are signed by the new one from then
/// on. Files that cannot be used leave the issuer in force, and say why.
pub async fn watch_issuer(config: Arc<IdentityConfig>, every: Duration) {
    let Some(files) = config.issuer_files.clone() else {
        return;
    };
    let mut last = files.load().map(|(_, seen)| seen).unwrap_or_default();
    loop {
        tokio::time::sleep(every).await;
        let mut seen = std::fs::read(&files.cert).unwrap_or_default();
        seen.extend(std::fs::read(&files.key).unwrap_or_default());
        if seen == last {
            continue;
        }
        match files.load() {
            Ok((issuer, seen)) => {
                tracing::info!(issuer = %issuer.info().subject, not_after = bulwark_identity::cert::unix_seconds(issuer.info().not_after), "identity issuer reloaded");
                config.issuer.store(Arc::new(issuer));
                last = seen;
            }
            Err(e) => {
                tracing::warn!(error = %e, "identity issuer not reloaded; keeping the one in force");
                last = seen;
            }
        }
    }
}

/// The gRPC service.
pub struct IdentityService {
    config: Arc<IdentityConfig>,
    metrics: Arc<Metrics>,
}

impl IdentityService {
    pub fn new(config: Arc<IdentityConfig>, metrics: Arc<Metrics>) -> IdentityService {
        IdentityService { config, metrics }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let request = request.into_inner();
        let proof = request.proof.map(|p| match p {
            certify_request::Proof::ServiceAccountToken(t) => Proof::ServiceAccountToken(t),
            certify_request::Proof::JoinToken(t) => Proof::JoinToken(t),
        });
        let kind = proof.as_ref().map_or("none", Proof::kind);
        let refuse = |status: Status, reason: &str| {
            self.metrics.certificate(kind, "refused");
            tracing::warn!(pod = %request.pod, proof = kind, reason, "certificate request refused");
            status
        };
        let principal = match self.config.verifier.verify(proof.as_ref()).await {
            Ok(p) => p,
            Err(e @ ProofError::Unavailable(_)) => {
                return Err(refuse(Status::unavailable(e.to_string()), &e.to_string()));
            }
            Err(e @ ProofError::TokensFile { .. }) => {
                return Err(refuse(Status::internal(e.to_string()), &e.to_string()));
            }
            Err(e) => {
                return Err(refuse(
                    Status::unauthenticated(e.to_string()),
                    &e.to_string(),
                ));
            }
        };
        let allowed = SpiffeId::new(
            &self.config.trust_domain,
            &principal.namespace,
            &principal.service_account,
        )
        .map_err(|e| {
            let reason = format!("the proof's service account cannot be an identity: {e}");
            refuse(Status::permission_denied(&reason), &reason)
        })?;
        // The certificate is bound to the pod the request names: the control plane accepts
        // the pod's streams under that name only. A proof that names its pod allows no other.
        crate::store::keys::check_segment(&request.pod).map_err(|e| {
            let reason = format!("the request's pod name {:?}: {e}", request.pod);
            refuse(Status::invalid_argument(&reason), &reason)
        })?;
        if let Some(bound) = principal.pod.as_deref()
            && bound != request.pod
        {
            let reason = format!(
                "the proof is for pod {bound}; it cannot get a certificate for pod {}",
                request.pod
            );
            return Err(refuse(Status::permission_denied(&reason), &reason));
        }
        let issued = self
            .config
            .issuer
            .load()
            .issue(
                &request.csr,
                &allowed,
                Some(&request.pod),
                SystemTime::now(),
            )
            .map_err(|e| {
                let status = match e {
                    IssueError::Unreadable(_) | IssueError::Names(_) => {
                        Status::invalid_argument(e.to_string())
                    }
                    IssueError::WrongIdentity { .. } => Status::permission_denied(e.to_string()),
                    IssueError::IssuerExpired | IssueError::Signing(_) => {
                        Status::internal(e.to_string())
                    }
                };
                refuse(status, &e.to_string())
            })?;
        self.metrics.certificate(kind, "issued");
        tracing::info!(
            pod = %request.pod,
            identity = %allowed,
            proof = kind,
            not_after = bulwark_identity::cert::unix_seconds(issued.not_after),
            "certificate issued"
        );
        Ok(Response::new(CertifyResponse {
            chain: issued.chain.iter().map(|c| c.to_vec()).collect(),
            not_after_unix_ms: i64::try_from(
                bulwark_identity::cert::unix_seconds(issued.not_after) * 1000,
            )
            .unwrap_or(i64::MAX),
            spiffe_id: allowed.to_string(),
        }))
    }
}
