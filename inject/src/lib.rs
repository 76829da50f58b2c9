//! Sidecar injection for Kubernetes: the one implementation behind `meshctl inject` (workload
//! manifests, offline) and the control plane's mutating admission webhook (pods, as JSON Patch).
//!
//! Objects are plain `serde_json::Value`s — no Kubernetes type crate: injection touches a handful
//! of fields and must leave every other field, known to us or not, exactly as it was.
//!
//! ```text
//!  meshctl inject ─► inject_object ─────────────┐  (kind → pod template; opted out → Skipped)
//!                                               ▼
//!                                    pod::inject_template ─► annotations::Settings (overrides)
//!                                               ▲            sidecar::container, volume
//!  webhook ─► admission_review_response         │
//!             └ should_inject ─► json_patch_for_pod ─► patch::diff (submitted → injected)
//! ```
//!
//! With capture (the default), a `bulwark-init` container runs first and installs the iptables
//! rules that send the pod's TCP traffic through the sidecar; without it (`bulwark.dev/capture:
//! disabled`), apps call the sidecar on localhost.
//!
//! The sidecar is added as a native sidecar (an init container with `restartPolicy: Always`,
//! Kubernetes 1.29+): it starts before the app containers, stops after them, and does not keep
//! a Job's pod from completing.

mod admission;
pub mod annotations;
mod errors;
mod options;
mod patch;
mod pod;
mod quantity;
mod sidecar;
mod values;
mod workload;

pub use admission::{admission_review_response, should_inject};
pub use errors::InjectError;
pub use options::{
    DEFAULT_CONTROL_PLANE, DEFAULT_IMAGE, DEFAULT_INIT_IMAGE, DEFAULT_TRUST_ANCHORS, InjectOptions,
    Ports, Resources,
};
pub use patch::{PatchError, apply_patch, diff};
pub use sidecar::{INIT_NAME, SIDECAR_NAME, SIDECAR_UID, SNAPSHOT_DIR, SNAPSHOT_VOLUME};
pub use workload::{Injected, Skip, inject_object, json_patch_for_pod};
