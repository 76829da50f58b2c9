//! Sync: keeps the index equal to etcd. List everything under the prefix at revision R, watch
//! from R+1 and apply each batch; when etcd goes away, mark the index stale and resume the
//! watch where it stopped once etcd is back; when the resume point was compacted, list again.

use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::backoff::Backoff;
use bulwark_proto::policy::parse_json;
use tokio::sync::watch;

use crate::index::{Change, HistoryEntry, SharedIndex, StoredResource};
use crate::store::keys::{Keys, ParsedKey};
use crate::store::values::ServiceStatus;
use crate::store::values::{AckRecord, HealthRecord, HistoryRecord, OverrideRecord, RoleBinding};
use crate::store::{Entry, EtcdStore, StoreError, WatchEvent, WatchMessage};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Decodes one key/value under the prefix; `None` for keys that are not ours or values that
/// do not parse (logged: someone wrote around the API).
pub fn decode(keys: &Keys, entry: &Entry) -> Option<Change> {
    let parsed = keys.parse(&entry.key)?;
    let text = match std::str::from_utf8(&entry.value) {
        Ok(text) => text,
        Err(_) => {
            tracing::warn!(key = %entry.key, "skipping a value that is not UTF-8");
            return None;
        }
    };
    match parsed {
        ParsedKey::Policy(key) => {
            let resource = match parse_json(text) {
                Ok(mut parsed) if parsed.len() == 1 => parsed.remove(0),
                Ok(_) => {
                    tracing::warn!(key = %entry.key, "skipping a value that is not one resource");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(key = %entry.key, error = %e, "skipping a resource that does not parse");
                    return None;
                }
            };
            let m = resource.metadata();
            if resource.kind() != key.kind || m.namespace != key.namespace || m.name != key.name {
                tracing::warn!(key = %entry.key, id = %resource.id(), "skipping a resource stored under another resource's key");
                return None;
            }
            if let Err(e) = resource.validate() {
                // Not written by the API (it validates); sidecars will NACK it.
                tracing::warn!(key = %entry.key, error = %e, "an invalid resource is stored");
            }
            Some(Change::Policy(Arc::new(StoredResource::new(
                key,
                resource,
                entry.mod_revision,
            ))))
        }
        ParsedKey::History(key, seq) => match serde_json::from_str::<HistoryRecord>(text) {
            Ok(record) => Some(Change::History {
                key,
                seq,
                entry: HistoryEntry {
                    // The key's revision is exact; the recorded one is the writer's guess.
                    revision: entry.mod_revision,
                    op: record.op,
                    by: record.by,
                    at: record.at,
                    resource: record.resource,
                },
            }),
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "skipping a history entry that does not parse");
                None
            }
        },
        ParsedKey::Ack(pod) => match serde_json::from_str::<AckRecord>(text) {
            Ok(record) => Some(Change::Ack { pod, record }),
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "skipping an ack that does not parse");
                None
            }
        },
        ParsedKey::Health(pod) => match serde_json::from_str::<HealthRecord>(text) {
            Ok(record) => Some(Change::Health {
                pod,
                record: Arc::new(record),
            }),
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "skipping a health report that does not parse");
                None
            }
        },
        ParsedKey::Status(service) => match serde_json::from_str::<ServiceStatus>(text) {
            Ok(status) => Some(Change::Status {
                service,
                status: Arc::new(status),
            }),
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "skipping a status that does not parse");
                None
            }
        },
        ParsedKey::Override(target) => match serde_json::from_str::<OverrideRecord>(text) {
            Ok(record) => Some(Change::Override { target, record }),
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "skipping an override that does not parse");
                None
            }
        },
        ParsedKey::RoleBinding(name) => match serde_json::from_str::<RoleBinding>(text) {
            Ok(binding) => Some(Change::RoleBinding { name, binding }),
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "skipping a role binding that does not parse");
                None
            }
        },
        ParsedKey::Event => Some(Change::Event),
        ParsedKey::Audit => None,
    }
}

/// Decodes a deletion seen on the watch.
pub fn decode_delete(keys: &Keys, key: &str, revision: i64) -> Option<Change> {
    Some(match keys.parse(key)? {
        ParsedKey::Policy(key) => Change::PolicyDeleted { key, revision },
        ParsedKey::History(key, seq) => Change::HistoryDeleted { key, seq },
        ParsedKey::Ack(pod) => Change::AckDeleted { pod },
        ParsedKey::Health(pod) => Change::HealthDeleted { pod },
        ParsedKey::Status(service) => Change::StatusDeleted { service },
        ParsedKey::Override(target) => Change::OverrideDeleted { target },
        ParsedKey::RoleBinding(name) => Change::RoleBindingDeleted { name },
        ParsedKey::Event | ParsedKey::Audit => return None,
    })
}

/// Why the watch loop stopped following.
enum Interrupted {
    /// The resume point was compacted: list again.
    Compacted,
    /// etcd went away: resume from the index's revision.
    Broken(StoreError),
    Shutdown,
}

/// Runs until `shutdown` turns true.
pub async fn run(
    store: Arc<EtcdStore>,
    keys: Keys,
    index: SharedIndex,
    mut shutdown: watch::Receiver<bool>,
) {
    // Jittered, so that replicas do not reconnect in step.
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    // Whether to list before watching (at start and after a compaction).
    let mut relist = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if relist {
            match store.list(&keys.root()).await {
                Ok(listing) => {
                    let changes = listing
                        .entries
                        .iter()
                        .filter_map(|e| decode(&keys, e))
                        .collect::<Vec<_>>();
                    let count = changes.len();
                    index.lock().reset(listing.revision, changes);
                    tracing::info!(
                        revision = listing.revision,
                        keys = count,
                        "index loaded from etcd"
                    );
                    relist = false;
                }
                Err(e) => {
                    outage(&index, &e);
                    if back_off(&mut backoff, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let from = index.lock().state().revision + 1;
        let watcher = match store.watch(&keys.root(), from).await {
            Ok(watcher) => watcher,
            Err(e) => {
                outage(&index, &e);
                if back_off(&mut backoff, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        {
            let mut index = index.lock();
            if index.state().stale {
                tracing::info!(from, "etcd watch resumed");
            }
            index.mark_fresh();
        }
        backoff.reset();
        match follow(watcher, &keys, &index, &mut shutdown).await {
            Interrupted::Compacted => relist = true,
            Interrupted::Broken(e) => {
                outage(&index, &e);
                if back_off(&mut backoff, &mut shutdown).await {
                    return;
                }
            }
            Interrupted::Shutdown => return,
        }
    }
}

async fn follow(
    mut watcher: crate::store::Watcher,
    keys: &Keys,
    index: &SharedIndex,
    shutdown: &mut watch::Receiver<bool>,
) -> Interrupted {
    loop {
        let message = tokio::select! {
            message = watcher.next() => message,
            _ = shutdown.changed() => return Interrupted::Shutdown,
        };
        match message {
            Ok(WatchMessage::Events { revision, events }) => {
                let changes = events
                    .iter()
                    .filter_map(|event| match event {
                        WatchEvent::Put(entry) => decode(keys, entry),
                        WatchEvent::Delete { key, revision } => decode_delete(keys, key, *revision),
                    })
                    .collect::<Vec<_>>();
                tracing::debug!(revision, changes = changes.len(), "watch batch");
                index.lock().apply(revision, changes);
            }
            Ok(WatchMessage::Compacted { compact_revision }) => {
                tracing::warn!(
                    compact_revision,
                    "etcd compacted past the watch's revision; listing again"
                );
                return Interrupted::Compacted;
            }
            Err(e) => return Interrupted::Broken(e),
        }
    }
}

fn outage(index: &SharedIndex, error: &StoreError) {
    let mut index = index.lock();
    let state = index.state();
    if state.problem.is_some() {
        tracing::debug!(error = %error, "etcd still unreachable");
    } else if state.loaded {
        tracing::warn!(error = %error, "lost etcd; serving reads from the index until it is back");
    } else {
        tracing::warn!(error = %error, "cannot reach etcd; nothing to serve until it answers");
    }
    index.mark_stale(error.to_string());
}

/// Marks the problems the quorum probe found (and only those are cleared by it).
const NO_QUORUM: &str = "etcd does not answer linearizable reads (no quorum?)";

/// Asks etcd for a linearizable read every `every`: a member that lost its quorum keeps the
/// watch open but sees no changes and answers no read, so without this the index would serve
/// reads as fresh while it can no longer know. A failed probe marks the index stale (reads
/// then carry `x-bulwark-stale: true`); the next answer marks it fresh again — unless the watch
/// itself is down, which the watch loop reports and clears.
pub async fn probe_quorum(
    store: Arc<EtcdStore>,
    keys: Keys,
    index: SharedIndex,
    every: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let probed = store.read(&[crate::store::Read::Key(keys.leader())]).await;
        let mut index = index.lock();
        let state = index.state();
        match probed {
            Err(e) if state.loaded && !state.stale => {
                tracing::warn!(error = %e, "etcd answers no reads; serving reads from the index, marked stale");
                index.mark_stale(format!("{NO_QUORUM}: {e}"));
            }
            Ok(_)
                if state
                    .problem
                    .as_deref()
                    .is_some_and(|p| p.starts_with(NO_QUORUM)) =>
            {
                tracing::info!("etcd answers reads again");
                index.mark_fresh();
            }
            _ => {}
        }
    }
}

/// Waits the next backoff step; `true` when shutdown came first.
async fn back_off(backoff: &mut Backoff, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(backoff.next_wait()) => false,
        _ = shutdown.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_proto::policy::Kind;

    use crate::store::keys::{PodKey, ResourceKey};
    use crate::store::values::HistoryOp;

    fn keys() -> Keys {
        Keys::new("/b").unwrap()
    }

    fn entry(key: &str, value: &str, mod_revision: i64) -> Entry {
        Entry {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            mod_revision,
        }
    }

    const ECHO: &str = r#"{"apiVersion":"bulwark/v1","kind":"UpstreamPolicy","metadata":{"name":"echo"},"spec":{"endpoints":{"static":["127.0.0.1:1"]}}}"#;

    #[test]
    fn policies_decode_with_their_version() {
        let change = decode(
            &keys(),
            &entry("/b/policies/UpstreamPolicy/default/echo", ECHO, 9),
        );
        let Some(Change::Policy(stored)) = change else {
            panic!("{change:?}")
        };
        assert_eq!(stored.mod_revision, 9);
        assert_eq!(
            stored.resource.metadata().resource_version.as_deref(),
            Some("9")
        );
    }

    #[test]
    fn mismatched_or_broken_values_are_skipped() {
        let k = keys();
        assert_eq!(
            decode(
                &k,
                &entry("/b/policies/UpstreamPolicy/default/other", ECHO, 9)
            ),
            None
        );
        assert_eq!(
            decode(
                &k,
                &entry("/b/policies/ServicePolicy/default/echo", ECHO, 9)
            ),
            None
        );
        assert_eq!(
            decode(
                &k,
                &entry("/b/policies/UpstreamPolicy/default/echo", "{", 9)
            ),
            None
        );
        assert_eq!(decode(&k, &entry("/b/acks/a/b/c", "[]", 9)), None);
        assert_eq!(decode(&k, &entry("/b/leader", "x", 9)), None);
    }

    #[test]
    fn history_takes_the_revision_from_the_key() {
        let value =
            r#"{"revision": 41, "resource": null, "by": "bob", "at": "t", "op": "deleted"}"#;
        let change = decode(
            &keys(),
            &entry(
                "/b/history/UpstreamPolicy/default/echo/00000000000000000041",
                value,
                43,
            ),
        );
        assert_eq!(
            change,
            Some(Change::History {
                key: ResourceKey::new(Kind::UpstreamPolicy, "default", "echo"),
                seq: 41,
                entry: HistoryEntry {
                    revision: 43,
                    op: HistoryOp::Deleted,
                    by: "bob".into(),
                    at: "t".into(),
                    resource: None
                }
            })
        );
    }

    #[test]
    fn deletions_decode_per_family() {
        let k = keys();
        assert_eq!(
            decode_delete(&k, "/b/acks/shop/orders/p1", 5),
            Some(Change::AckDeleted {
                pod: PodKey {
                    namespace: "shop".into(),
                    service: "orders".into(),
                    pod: "p1".into()
                }
            })
        );
        assert_eq!(
            decode_delete(&k, "/b/policies/UpstreamPolicy/default/echo", 5),
            Some(Change::PolicyDeleted {
                key: ResourceKey::new(Kind::UpstreamPolicy, "default", "echo"),
                revision: 5
            })
        );
        assert_eq!(decode_delete(&k, "/elsewhere", 5), None);
    }
}
