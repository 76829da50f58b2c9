//! Who a caller turned out to be, or why they could not be told: the values authentication
//! produces and the rest of the control plane consumes.

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// A user name, or `system:serviceaccount:<namespace>:<name>`.
    pub name: String,
    pub groups: Vec<String>,
    /// How it was authenticated: `token`, `oidc`, `token-review`, `certificate`,
    /// `workload-certificate`, `insecure-dev`.
    pub method: &'static str,
    /// No credentials, let through by `--insecure-dev`.
    pub anonymous: bool,
}

impl User {
    /// The anonymous administrator of `--insecure-dev`.
    pub fn anonymous() -> User {
        User {
            name: "anonymous".into(),
            groups: Vec::new(),
            method: "insecure-dev",
            anonymous: true,
        }
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credentials: send a bearer token (Authorization: Bearer …) or a client certificate"
    )]
    Missing,
    #[error("{0}")]
    Refused(String),
    /// The authority that checks the credential cannot be reached: 503, not 401.
    #[error("{0}")]
    Unavailable(String),
}

/// Compares in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
