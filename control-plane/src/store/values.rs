//! The values stored under `history/` and `acks/` (docs/control-plane.md, "etcd keys"), as
//! JSON. Resources under `policies/` are the policy model's own JSON, without
//! `metadata.resourceVersion` (the key's `mod_revision` is the version).

use serde::{Deserialize, Serialize};

/// What a history entry says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HistoryOp {
    Created,
    Updated,
    Deleted,
    RolledBack,
}

impl HistoryOp {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryOp::Created => "created",
            HistoryOp::Updated => "updated",
            HistoryOp::Deleted => "deleted",
            HistoryOp::RolledBack => "rolled-back",
        }
    }
}

/// `history/{kind}/{namespace}/{name}/{revision:020}`: one change of a resource.
///
/// `revision` is the revision the writer expected the change to get (the store's revision
/// when it read, plus one); it is exact unless another write landed in between. Readers take
/// the revision from the key's `mod_revision`, which is always exact (it is written in the
/// same transaction as the change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub revision: i64,
    /// The resource after the change (without `resourceVersion`); `null` for a deletion.
    pub resource: Option<serde_json::Value>,
    pub by: String,
    pub at: String,
    pub op: HistoryOp,
}

/// `acks/{namespace}/{service}/{pod}`: what one pod did with the snapshots it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    /// The version the pod answered last (ACK or NACK); on connect, the one it had applied.
    pub version: i64,
    /// Empty after an ACK; the NACK's reason otherwise.
    pub error: String,
    /// The replica holding the pod's stream (and the lease the key is bound to).
    pub replica: String,
    pub at: String,
    /// The newest version the pod applied (an extension of the documented fields: a NACK
    /// leaves the pod on its previous version, and convergence needs that one).
    #[serde(default)]
    pub applied: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_records_read_as_documented() {
        let record = HistoryRecord {
            revision: 12,
            resource: None,
            by: "alice".into(),
            at: "2025-11-22T03:12:00.000Z".into(),
            op: HistoryOp::RolledBack,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"revision": 12, "resource": null, "by": "alice",
                "at": "2025-11-22T03:12:00.000Z", "op": "rolled-back"})
        );
        assert_eq!(
            serde_json::from_value::<HistoryRecord>(json).unwrap(),
            record
        );
    }

    #[test]
    fn ack_records_without_applied_still_read() {
        let record: AckRecord = serde_json::from_str(
            r#"{"version": 7, "error": "", "replica": "cp-1", "at": "2025-11-22T03:12:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(record.applied, 0);
        assert_eq!(record.version, 7);
    }
}
