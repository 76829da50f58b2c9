//! Who a certificate request comes from: a join token from the tokens file (outside
//! Kubernetes), or a projected ServiceAccount token the API server vouches for (TokenReview).
//! Either gives the namespace and service account — never the request itself.

use std::path::PathBuf;

use serde::Deserialize;

use super::principal::{Principal, ProofError};
use super::token_review::TokenReview;

/// A request's proof.
#[derive(Debug, Clone)]
pub enum Proof {
    ServiceAccountToken(String),
    JoinToken(String),
}

impl Proof {
    pub fn kind(&self) -> &'static str {
        match self {
            Proof::ServiceAccountToken(_) => "service-account-token",
            Proof::JoinToken(_) => "join-token",
        }
    }
}

/// The tokens file: `{"tokens": [{"token", "namespace", "serviceAccount", "pod"?}]}` (YAML or
/// JSON); a token with `pod` is good for that pod's certificate only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<JoinToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JoinToken {
    token: String,
    namespace: String,
    service_account: String,
    #[serde(default)]
    pod: Option<String>,
}

/// Checks proofs.
#[derive(Debug, Default)]
pub struct Verifier {
    /// Read at every request, so that tokens added or revoked count at once.
    pub join_tokens: Option<PathBuf>,
    pub token_review: Option<std::sync::Arc<TokenReview>>,
}

impl Verifier {
    pub async fn verify(&self, proof: Option<&Proof>) -> Result<Principal, ProofError> {
        match proof {
            None => Err(ProofError::Missing),
            Some(Proof::JoinToken(token)) => self.join_token(token),
            Some(Proof::ServiceAccountToken(token)) => match &self.token_review {
                Some(review) => review.review(token).await,
                None => Err(ProofError::NoTokenReview),
            },
        }
    }

    fn join_token(&self, presented: &str) -> Result<Principal, ProofError> {
        let Some(path) = &self.join_tokens else {
            return Err(ProofError::NoJoinTokens);
        };
        let file_error = |reason: String| ProofError::TokensFile {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let file: TokensFile =
            serde_saphyr::from_str(&text).map_err(|e| file_error(e.to_string()))?;
        // Every entry is compared (in constant time each), so that the time taken says
        // nothing about which token came close.
        let mut found = None;
        for entry in &file.tokens {
            if constant_time_eq(entry.token.as_bytes(), presented.as_bytes())
                && !entry.token.is_empty()
            {
                found = Some(Principal {
                    namespace: entry.namespace.clone(),
                    service_account: entry.service_account.clone(),
                    pod: entry.pod.clone(),
                });
            }
        }
        found.ok_or(ProofError::UnknownJoinToken)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
