//! The Identity service: signs a sidecar's certificate request for the SPIFFE ID its proof
//! allows — `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` of the join token or
//! the ServiceAccount token ([`proof`]) — and nothing else. The issuer comes from PEM files
//! (a Kubernetes Secret) or, for development, from `--dev-identity DIR`.

pub mod principal;
pub mod proof;
pub mod token_review;

use std::sync::Arc;
use std::time::SystemTime;

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
    pub issuer: Issuer,
    pub verifier: Verifier,
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
        let issued = self
            .config
            .issuer
            .issue(&request.csr, &allowed, SystemTime::now())
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
