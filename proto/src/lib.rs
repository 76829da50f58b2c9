//! Bulwark's shared crate: the protobuf messages of the control-plane protocols and the policy
//! model (`UpstreamPolicy`, `ServicePolicy`) with its parsing and validation — and the few
//! mechanisms every binary needs the same way: the reconnect [`backoff`], atomic file writes
//! ([`fs`]), degradation [`level`]s, [`breaker`] states, RFC 3339 [`time`] and workload identities
//! ([`spiffe`]).
//!
//! Every part of Bulwark — the sidecar, the control plane and `meshctl` — reads policies through
//! this crate, so a policy means the same thing everywhere and is validated by the same code.

pub mod backoff;
pub mod breaker;
pub mod fs;
pub mod level;
pub mod policy;
pub mod spiffe;
pub mod time;

/// Generated protobuf and gRPC code for `bulwark.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("bulwark.v1");
}
