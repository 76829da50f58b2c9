//! Who calls the operator API, and what they may do. Every request (REST and gRPC) is
//! authenticated by one of: a bearer token — from the static tokens file ([`tokens`]), an
//! OIDC JWT checked against its issuer's keys ([`oidc`]), or any token the Kubernetes API
//! vouches for (TokenReview) — or a client certificate (an operator's, from `--client-ca`; or a
//! workload's, as its service account). Then [`rbac`] decides. `--insecure-dev` alone lets a
//! request without credentials through, as an anonymous administrator.
//!
//! ```text
//!  Authorization: Bearer T ─► static tokens ─► OIDC (a JWT, when configured) ─► TokenReview
//!  client certificate       ─► operator CA: CN = user, O = groups │ mesh: system:serviceaccount:ns:sa
//!  nothing                  ─► 401 (anonymous administrator with --insecure-dev)
//!                                 └─► User ─► rbac::Authorizer (bindings from the index) ─► 403 or go
//! ```

pub mod oidc;
pub mod rbac;
pub mod tokens;
pub mod user;

pub use user::{AuthError, User};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bulwark_identity::verify::ClientRoot;
use tokio::time::Instant;

use crate::identity::token_review::TokenReview;
use crate::serve::Peer;

/// How long a token the Kubernetes API vouched for is trusted without asking again.
const REVIEW_CACHE_TTL: Duration = Duration::from_secs(10);
/// Tokens remembered at most (a flood of new tokens evicts everything).
const REVIEW_CACHE_MAX: usize = 4096;

/// A request's caller and where it came from.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user: Arc<User>,
    pub from: SocketAddr,
}

impl Actor {
    /// An actor for calls made inside the process and for unit tests of routers.
    pub fn local(user: User) -> Actor {
        Actor {
            user: Arc::new(user),
            from: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// What authentication accepts.
#[derive(Debug, Default)]
pub struct AuthConfig {
    pub insecure_dev: bool,
    pub tokens: Option<tokens::StaticTokens>,
    pub oidc: Option<oidc::Oidc>,
    pub token_review: Option<Arc<TokenReview>>,
    /// The audiences operators' tokens are reviewed for (empty: the API server's own).
    pub token_review_audiences: Vec<String>,
    /// Members of these groups are administrators everywhere.
    pub admin_groups: Vec<String>,
}

/// Authenticates requests.
#[derive(Debug)]
pub struct Authenticator {
    config: AuthConfig,
    reviewed: Mutex<HashMap<[u8; 32], (User, Instant)>>,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Authenticator {
        Authenticator {
            config,
            reviewed: Mutex::default(),
        }
    }

    pub fn authorizer(&self) -> rbac::Authorizer {
        rbac::Authorizer {
            admin_groups: self.config.admin_groups.clone(),
        }
    }

    /// Who sent a request that came from `peer` with the `Authorization` header
    /// `authorization`.
    pub async fn authenticate(
        &self,
        peer: Option<&Peer>,
        authorization: Option<&[u8]>,
    ) -> Result<User, AuthError> {
        if let Some(header) = authorization {
            let text = std::str::from_utf8(header)
                .map_err(|_| AuthError::Refused("the Authorization header is not text".into()))?;
            let token = match text.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
                _ => {
                    return Err(AuthError::Refused(
                        "the Authorization header must be `Bearer <token>`".into(),
                    ));
                }
            };
            if token.is_empty() {
                return Err(AuthError::Refused("the bearer token is empty".into()));
            }
            return self.token(token).await;
        }
        if let Some(cert) = peer.and_then(|p| p.certificate.as_deref()) {
            return Ok(match (cert.root, &cert.info.spiffe_id) {
                (ClientRoot::Mesh, Some(id)) => User {
                    name: format!(
                        "system:serviceaccount:{}:{}",
                        id.namespace(),
                        id.service_account()
                    ),
                    groups: vec![
                        "system:serviceaccounts".into(),
                        format!("system:serviceaccounts:{}", id.namespace()),
                    ],
                    method: "workload-certificate",
                    anonymous: false,
                },
                _ => User {
                    name: cert.info.common_name.clone().ok_or_else(|| {
                        AuthError::Refused(format!(
                            "the client certificate ({}) has no common name to name its user",
                            cert.info.subject
                        ))
                    })?,
                    groups: cert.info.organizations.clone(),
                    method: "certificate",
                    anonymous: false,
                },
            });
        }
        if self.config.insecure_dev {
            return Ok(User::anonymous());
        }
        Err(AuthError::Missing)
    }

    async fn token(&self, token: &str) -> Result<User, AuthError> {
        if let Some(tokens) = &self.config.tokens
            && let Some(user) = tokens.find(token)?
        {
            return Ok(user);
        }
        if let Some(oidc) = &self.config.oidc
            && oidc::looks_like_jwt(token)
        {
            return oidc.verify(token).await;
        }
        let Some(review) = &self.config.token_review else {
            return Err(AuthError::Refused(
                "the bearer token is not known to this control plane".into(),
            ));
        };
        let hash = sha256(token);
        let cached = self
            .reviewed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash)
            .filter(|(_, at)| at.elapsed() < REVIEW_CACHE_TTL)
            .map(|(user, _)| user.clone());
        if let Some(user) = cached {
            return Ok(user);
        }
        let reviewed = review
            .user(token, &self.config.token_review_audiences)
            .await
            .map_err(|e| match e {
                crate::identity::principal::ProofError::Unavailable(m) => AuthError::Unavailable(
                    format!("cannot check the token with the Kubernetes API: {m}"),
                ),
                e => AuthError::Refused(format!("the Kubernetes API refused the token: {e}")),
            })?;
        let user = User {
            name: reviewed.username,
            groups: reviewed.groups,
            method: "token-review",
            anonymous: false,
        };
        let mut cache = self.reviewed.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= REVIEW_CACHE_MAX {
            cache.clear();
        }
        cache.insert(hash, (user.clone(), Instant::now()));
        Ok(user)
    }
}

fn sha256(text: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
