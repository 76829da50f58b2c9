//! Traffic capture for a pod: the iptables rules that send the app's outbound TCP to the
//! sidecar's outbound listener and every inbound TCP connection to its inbound listener, as the
//! `bulwark-init` container installs them in the pod's network namespace before the app starts.
//!
//! [`rules`] writes the rules from a [`Capture`](rules::Capture) (pure, and what `--dry-run`
//! prints); [`tables`] reads and replaces the `nat` table through `iptables-save` and
//! `iptables-restore` of the chosen backend (nf_tables or legacy), so that installing is
//! idempotent and removing leaves the table as it was.

pub mod rules;
pub mod tables;
