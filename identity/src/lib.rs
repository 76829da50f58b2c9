//! Workload identity and mutual TLS, shared by the control plane (which issues) and the sidecar
//! (which requests, presents and verifies).
//!
//! ```text
//!  sidecar: credentials::PendingKey ─ CSR ─► control plane: issue::Issuer (proof checked there)
//!           credentials::Credentials ◄─ leaf + chain ─┘
//!           tls::mesh_server / tls::mesh_client ─ verify (anchors::TrustAnchors, spiffe::SpiffeId)
//! ```
//!
//! Identities are SPIFFE IDs (`spiffe::SpiffeId`); leaves carry the ID as a URI name and its
//! server-name form as a DNS name, so that a client asking for an identity by server name gets
//! standard host-name verification plus the SPIFFE check. Everything uses one crypto provider
//! (ring), as every other TLS user in Bulwark does.

pub mod anchors;
pub mod cert;
pub mod credentials;
pub mod dev;
pub mod issue;
pub mod tls;
pub mod verify;

pub use anchors::TrustAnchors;
/// Workload identities, defined beside the policy model (which names them).
pub use bulwark_proto::spiffe;
pub use cert::CertInfo;
pub use credentials::{Certified, Credentials, PendingKey};
pub use issue::{IssueError, Issued, Issuer};
pub use spiffe::SpiffeId;

use std::sync::Arc;

/// The crypto provider of every configuration here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests;
