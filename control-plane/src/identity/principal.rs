//! What checking a proof gives: the namespace and service account it stands for, or why it does
//! not hold.

use std::path::PathBuf;

/// The namespace and service account a proof stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub namespace: String,
    pub service_account: String,
    /// The pod the proof is bound to, when it names one (a bound ServiceAccount token does;
    /// a join token may).
    pub pod: Option<String>,
}

/// Why a proof does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("no proof: send the pod's service account token or a join token")]
    Missing,
    #[error("join tokens are not accepted by this control plane (no --join-tokens file)")]
    NoJoinTokens,
    #[error("the join token is not in the control plane's tokens file")]
    UnknownJoinToken,
    #[error("cannot read the join tokens file {path}: {reason}")]
    TokensFile { path: PathBuf, reason: String },
    #[error(
        "service account tokens are not accepted: this control plane has no Kubernetes API to check them with"
    )]
    NoTokenReview,
    #[error("the service account token was refused: {0}")]
    Refused(String),
    #[error("cannot check the service account token with the Kubernetes API: {0}")]
    Unavailable(String),
}
