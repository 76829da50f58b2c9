//! Where policies come from. Every source produces whole [`PolicySet`]s, already parsed and
//! validated; the sidecar applies each one atomically. Standalone mode reads files ([`file`]);
//! otherwise a control-plane stream ([`control_plane`]) delivers them.

pub mod control_plane;
pub mod file;

use bulwark_proto::policy::Resource;

/// A complete, validated set of policies with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySet {
    /// Changes whenever the content changes.
    pub version: String,
    /// Where it came from (`file:/etc/bulwark/policies`).
    pub source: String,
    pub resources: Vec<Resource>,
}
