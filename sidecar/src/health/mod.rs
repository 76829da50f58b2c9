//! Health and degradation as this sidecar knows them: per-upstream counters for the health
//! reports ([`stats`]), the app probe ([`probe`]), the levels the control plane sends back
//! ([`levels`]) and what they make the sidecar do ([`actions`]: shed inbound requests, cap
//! retries, fail low-priority calls to an EMERGENCY upstream fast), and whether this pod is
//! ready ([`readiness`]).

pub mod actions;
pub mod levels;
pub mod probe;
pub mod readiness;
pub mod stats;
