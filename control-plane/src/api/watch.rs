//! Watches: `GET /v1/watch/{kind}`, `/v1/watch/status` and `/v1/watch/events` stream a listing
//! as newline-delimited JSON, as a Kubernetes watch does: every item first (`ADDED`), then each
//! change as it happens (`ADDED`, `MODIFIED`, `DELETED`), one line per event:
//! `{"type":"MODIFIED","object":{…}}`. The listing is computed again — by the same operation
//! as the plain read, the caller's permissions checked again — each time etcd moves (coalesced
//! to at most one computation per [`COALESCE`]); a refusal ends the stream with an `ERROR`
//! event. A watch ends after its `timeoutSeconds` or when the replica shuts down; clients
//! start it again, as `kubectl get -w` does.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::ops::OpError;

/// Computations of a watched listing are at least this far apart: a mesh whose pods report
/// every few seconds moves etcd many times a second.
pub const COALESCE: Duration = Duration::from_millis(200);
/// How long a watch lasts unless the caller asks for less.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// The longest watch a caller may ask for (`timeoutSeconds`).
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;
/// A listing that could not be computed (etcd away, for events) is tried again this often.
const RETRY: Duration = Duration::from_secs(2);

/// What happened to one item of a watched listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
    /// The watch ends: the object says why (`error`, `message`).
    Error,
}

/// One line of a watch stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub object: Value,
}

/// The items of a listing, each under the key that identifies it across computations.
pub type Items = Vec<(String, Value)>;

/// What changed between computations of a listing.
#[derive(Debug, Default)]
pub struct Differ {
    seen: BTreeMap<String, Value>,
    /// Whether items that drop out of the listing are `DELETED` (resources, statuses), or only
    /// fell out of its window (events, which are never deleted).
    deletions: bool,
}

impl Differ {
    pub fn new(deletions: bool) -> Differ {
        Differ {
            seen: BTreeMap::new(),
            deletions,
        }
    }

    /// The events that take the previous listing to `items`, in the listing's order (the
    /// deletions last).
    pub fn diff(&mut self, items: Items) -> Vec<WatchEvent> {
        let mut events = Vec::new();
        let mut next = BTreeMap::new();
        for (key, object) in items {
            match self.seen.remove(&key) {
                None => events.push(WatchEvent {
                    kind: EventType::Added,
                    object: object.clone(),
                }),
                Some(old) if old != object => events.push(WatchEvent {
                    kind: EventType::Modified,
                    object: object.clone(),
                }),
                Some(_) => {}
            }
            next.insert(key, object);
        }
        let gone = std::mem::replace(&mut self.seen, next);
        if self.deletions {
            events.extend(gone.into_values().map(|object| WatchEvent {
                kind: EventType::Deleted,
                object,
            }));
        } else {
            // Out of the window, not gone: remembered so it is not added again.
            self.seen.extend(gone);
        }
        events
    }
}

/// Whether a failed computation ends the watch (the caller may no longer read it, or asked
/// something wrong), rather than being tried again.
fn ends_watch(e: &OpError) -> bool {
    !matches!(e, OpError::Unavailable(_) | OpError::Internal(_))
}

/// Streams the listing `compute` gives, starting from `first` (computed already, so that a
/// refusal was answered with its status), until `timeout`, `stop` or the client goes. Each
/// line is one [`WatchEvent`] as JSON.
pub fn stream<T, F, Fut>(
    first: Items,
    deletions: bool,
    mut changes: watch::Receiver<T>,
    stop: Option<watch::Receiver<bool>>,
    timeout: Duration,
    mut compute: F,
) -> mpsc::Receiver<Vec<u8>>
where
    T: Send + Sync + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Items, OpError>> + Send,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let stopped = async move {
            match stop {
                Some(mut stop) => {
                    let _ = stop.wait_for(|s| *s).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        let mut differ = Differ::new(deletions);
        let mut pending = Some(Ok(first));
        changes.mark_unchanged();
        loop {
            let mut failed = false;
            let events = match pending.take() {
                Some(Ok(items)) => differ.diff(items),
                Some(Err(e)) if ends_watch(&e) => {
                    let _ = tx.send(line(&error_event(&e))).await;
                    return;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "a watched listing could not be computed");
                    failed = true;
                    Vec::new()
                }
                None => Vec::new(),
            };
            for event in &events {
                if tx.send(line(event)).await.is_err() {
                    return; // the client went away
                }
            }
            // Wait for etcd to move (or to retry a listing that failed), then for the
            // coalescing interval, whichever comes; stop at the deadline or on shutdown.
            let retry = tokio::time::sleep(RETRY);
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                changed = changes.changed() => if changed.is_err() { return },
                _ = retry, if failed => {}
            }
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(COALESCE) => {}
            }
            changes.mark_unchanged();
            pending = Some(compute().await);
        }
    });
    rx
}

fn error_event(e: &OpError) -> WatchEvent {
    WatchEvent {
        kind: EventType::Error,
        object: serde_json::json!({"error": e.kind(), "message": e.to_string()}),
    }
}

fn line(event: &WatchEvent) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(event).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// A watch's length: `timeoutSeconds` if given (1 to [`MAX_TIMEOUT_SECONDS`]).
pub fn timeout(seconds: Option<u64>) -> Result<Duration, OpError> {
    match seconds {
        None => Ok(DEFAULT_TIMEOUT),
        Some(s) if (1..=MAX_TIMEOUT_SECONDS).contains(&s) => Ok(Duration::from_secs(s)),
        Some(s) => Err(OpError::invalid(format!(
            "timeoutSeconds must be between 1 and {MAX_TIMEOUT_SECONDS}, got {s}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn items(list: &[(&str, Value)]) -> Items {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn kinds(events: &[WatchEvent]) -> Vec<(EventType, Value)> {
        events.iter().map(|e| (e.kind, e.object.clone())).collect()
    }

    #[test]
    fn a_listing_is_added_then_changed_and_deleted_item_by_item() {
        let mut differ = Differ::new(true);
        let a1 = json!({"name": "a", "v": 1});
        let b1 = json!({"name": "b", "v": 1});
        assert_eq!(
            kinds(&differ.diff(items(&[("a", a1.clone()), ("b", b1.clone())]))),
            [
                (EventType::Added, a1.clone()),
                (EventType::Added, b1.clone())
            ]
        );
        assert!(
            differ
                .diff(items(&[("a", a1.clone()), ("b", b1.clone())]))
                .is_empty()
        );
        let a2 = json!({"name": "a", "v": 2});
        let c1 = json!({"name": "c", "v": 1});
        assert_eq!(
            kinds(&differ.diff(items(&[("a", a2.clone()), ("c", c1.clone())]))),
            [
                (EventType::Modified, a2),
                (EventType::Added, c1),
                (EventType::Deleted, b1)
            ]
        );
    }

    #[test]
    fn events_that_leave_the_window_are_not_deleted_nor_added_again() {
        let mut differ = Differ::new(false);
        let e1 = json!({"at": 1});
        let e2 = json!({"at": 2});
        differ.diff(items(&[("1", e1.clone())]));
        assert_eq!(
            kinds(&differ.diff(items(&[("2", e2.clone())]))),
            [(EventType::Added, e2.clone())]
        );
        assert!(differ.diff(items(&[("1", e1), ("2", e2)])).is_empty());
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout(None).ok(), Some(DEFAULT_TIMEOUT));
        assert_eq!(timeout(Some(5)).ok(), Some(Duration::from_secs(5)));
        assert_eq!(
            timeout(Some(0)).map_err(|e| e.to_string()),
            Err("timeoutSeconds must be between 1 and 3600, got 0".to_string())
        );
    }

    #[test]
    fn lines_are_kubernetes_watch_events() {
        let event = WatchEvent {
            kind: EventType::Deleted,
            object: json!({"a": 1}),
        };
        assert_eq!(
            line(&event),
            b"{\"type\":\"DELETED\",\"object\":{\"a\":1}}\n"
        );
    }
}
