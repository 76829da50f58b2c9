//! Where policies come from. Every source produces whole
//! [`PolicySet`](crate::route::PolicySet)s, already parsed and validated; the sidecar applies
//! each one atomically. Standalone mode reads files ([`file`]); otherwise a control-plane stream
//! ([`control_plane`]) delivers them, and carries the sidecar's health [`report`]s back, over
//! a [`channel`](crate::channel) that is TLS for `https://` addresses.

pub mod control_plane;
pub mod file;
pub mod report;
