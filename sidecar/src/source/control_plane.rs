//! Policies from the control plane: one `Discovery.Stream` per sidecar. The sidecar says who
//! it is, applies every snapshot it receives atomically (validated again here; a snapshot it
//! cannot apply is NACKed with the reason and the policies in force stay), persists each
//! applied snapshot to disk, and reconnects with jittered exponential backoff across the
//! control-plane addresses. Traffic never waits for the control plane. On the same stream the
//! sidecar sends a health report every report interval and receives the degradation levels,
//! which stay in force while the control plane is away.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::backoff::Backoff;
use bulwark_proto::fs::{Durability, write_atomically};
use bulwark_proto::policy::{Resource, parse_json};
use bulwark_proto::v1::discovery_client::DiscoveryClient;
use bulwark_proto::v1::{
    Ack, Hello, Levels, SidecarMessage, Snapshot, control_plane_message, sidecar_message,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::route::PolicySet;
use crate::state::Shared;

/// Reconnects wait 100 ms, 200 ms, … up to 10 s, with equal jitter (`bulwark_proto::backoff`).
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How the sidecar reaches the control plane.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// TLS for `https://` addresses.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Turns true once the pod has its first workload certificate: streams over TLS wait for
    /// it (the control plane admits none without).
    pub certified: Option<watch::Receiver<bool>>,
}

/// Who this sidecar is, as the control plane needs to know.
#[derive(Debug, Clone)]
pub struct Registration {
    pub namespace: String,
    pub service: String,
    pub pod: String,
}

/// An applied snapshot as persisted on disk.
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    version: i64,
    source: String,
    resources: Vec<Resource>,
}

/// Turns a received snapshot into a validated policy set; `Err` is the NACK reason.
pub fn to_policy_set(snapshot: &Snapshot, source: &str) -> Result<PolicySet, String> {
    let mut resources = Vec::with_capacity(snapshot.resources.len());
    let mut errors = Vec::new();
    for r in &snapshot.resources {
        match parse_json(&r.json) {
            Ok(mut parsed) => resources.append(&mut parsed),
            Err(e) => errors.push(format!("{}/{}/{}: {e}", r.kind, r.namespace, r.name)),
        }
    }
    for r in &resources {
        if let Err(e) = r.validate() {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(PolicySet {
            version: snapshot.version.to_string(),
            source: source.to_string(),
            resources,
        })
    } else {
        Err(errors.join("; "))
    }
}

/// The first line of a snapshot file: the SHA-256 of the rest, so that a corrupt or truncated
/// file is told from a good one.
const HEADER: &str = "bulwark-snapshot sha256=";

/// Where the previous good snapshot is kept: beside the file (`snapshot.json` →
/// `snapshot.prev.json`).
pub fn previous_path(snapshot_file: &Path) -> PathBuf {
    snapshot_file.with_extension("prev.json")
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A snapshot file's content: the checksum line, then the JSON.
fn encode(persisted: &Persisted) -> serde_json::Result<Vec<u8>> {
    let body = serde_json::to_vec(persisted)?;
    let mut bytes = format!("{HEADER}{}\n", sha256_hex(&body)).into_bytes();
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// A snapshot file read back: its checksum must hold (a file written before checksums is taken
/// as it is), and every resource must validate.
fn decode(path: &Path) -> Result<(i64, PolicySet), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let body = match bytes.strip_prefix(HEADER.as_bytes()) {
        Some(rest) => {
            let newline = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| format!("{}: truncated in its checksum line", path.display()))?;
            let (want, body) = (&rest[..newline], &rest[newline + 1..]);
            if want != sha256_hex(body).as_bytes() {
                return Err(format!(
                    "{}: the checksum does not match: the file is corrupt or truncated",
                    path.display()
                ));
            }
            body
        }
        None => bytes.as_slice(),
    };
    let p: Persisted =
        serde_json::from_slice(body).map_err(|e| format!("{}: {e}", path.display()))?;
    for r in &p.resources {
        r.validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok((
        p.version,
        PolicySet {
            version: p.version.to_string(),
            source: format!("snapshot-file:{} ({})", path.display(), p.source),
            resources: p.resources,
        },
    ))
}

/// The newest usable snapshot: the file, else the previous generation beside it. The error
/// names what was wrong with each.
pub fn load_persisted(path: &Path) -> Result<(i64, PolicySet), String> {
    let current = decode(path);
    let previous = decode(&previous_path(path));
    match (current, previous) {
        (Ok(current), Ok(previous)) if previous.0 > current.0 => Ok(previous),
        (Ok(current), _) => Ok(current),
        (Err(e), Ok(previous)) => {
            tracing::warn!(error = %e, previous = %previous_path(path).display(), "the snapshot file is not usable: booting from the previous generation");
            Ok(previous)
        }
        (Err(e), Err(p)) => Err(format!("{e}; {p}")),
    }
}

/// Writes the snapshot durably; the good one it replaces becomes the previous generation.
fn persist(path: &Path, version: i64, set: &PolicySet) -> std::io::Result<()> {
    let body = encode(&Persisted {
        version,
        source: set.source.clone(),
        resources: set.resources.clone(),
    })?;
    if decode(path).is_ok() {
        std::fs::rename(path, previous_path(path))?;
    }
    write_atomically(path, &body, Durability::Synced)
}

/// Where the last received levels are kept: beside the snapshot file
/// (`snapshot.json` → `snapshot.levels.pb`).
pub fn levels_path(snapshot_file: &Path) -> PathBuf {
    snapshot_file.with_extension("levels.pb")
}

/// Keeps the last received levels (the protobuf message as received), so a sidecar that
/// restarts while the control plane is away boots on them with the persisted snapshot.
fn persist_levels(path: &Path, levels: &Levels) -> std::io::Result<()> {
    write_atomically(path, &levels.encode_to_vec(), Durability::Synced)
}

/// The levels persisted at `path`.
pub fn load_persisted_levels(path: &Path) -> Result<Levels, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Levels::decode(bytes.as_slice()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Follows the control plane forever: connect, stream, apply, ACK; reconnect on any failure.
/// `applied` carries the last applied version (0: none) and tells the caller when the first
/// snapshot is in.
pub async fn follow(
    shared: Arc<Shared>,
    addrs: Vec<String>,
    link: Link,
    who: Registration,
    snapshot_file: Option<PathBuf>,
    report_interval: Duration,
    applied: watch::Sender<i64>,
) {
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    let mut next = 0usize;
    loop {
        let addr = &addrs[next % addrs.len()];
        next += 1;
        let stream = stream_once(
            &shared,
            addr,
            &link,
            &who,
            snapshot_file.as_deref(),
            report_interval,
            &applied,
        );
        match stream.await {
            Ok(()) => {
                tracing::warn!(control_plane = %addr, "control-plane stream ended; reconnecting");
                backoff.reset();
            }
            Err(e) => {
                tracing::warn!(control_plane = %addr, error = %e, retry_within = ?backoff.step(), "control plane unreachable; serving with the policies in force");
            }
        }
        // Jittered: spreads a fleet's reconnects after a control-plane restart.
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

async fn stream_once(
    shared: &Arc<Shared>,
    addr: &str,
    link: &Link,
    who: &Registration,
    snapshot_file: Option<&Path>,
    report_interval: Duration,
    applied: &watch::Sender<i64>,
) -> Result<(), String> {
    if crate::channel::Address::parse(addr)?.tls
        && let Some(mut certified) = link.certified.clone()
        && !*certified.borrow()
    {
        tracing::info!(control_plane = %addr, "waiting for the workload certificate before opening the Discovery stream");
        certified
            .wait_for(|c| *c)
            .await
            .map_err(|_| "the identity task ended".to_string())?;
    }
    let channel =
        crate::channel::connect(addr, link.tls.as_ref(), crate::channel::stream_settings).await?;
    let mut client = DiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel::<SidecarMessage>(16);
    let hello = SidecarMessage {
        message: Some(sidecar_message::Message::Hello(Hello {
            namespace: who.namespace.clone(),
            service: who.service.clone(),
            pod: who.pod.clone(),
            last_applied_version: *applied.borrow(),
        })),
    };
    tx.send(hello).await.map_err(|e| e.to_string())?;
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("{}: {}", e.code(), e.message()))?
        .into_inner();
    tracing::info!(control_plane = %addr, "connected to the control plane");
    // Reports go out on their own task, so a report never delays a snapshot; it ends with
    // this stream.
    let _reporter = AbortOnDrop(tokio::spawn(super::report::run(
        shared.clone(),
        report_interval,
        tx.clone(),
        applied.subscribe(),
    )));
    let source = format!("control-plane:{addr}");
    while let Some(msg) = inbound
        .message()
        .await
        .map_err(|e| format!("{}: {}", e.code(), e.message()))?
    {
        let snapshot = match msg.message {
            Some(control_plane_message::Message::Snapshot(s)) => s,
            Some(control_plane_message::Message::Levels(levels)) => {
                shared.apply_levels(&levels);
                if let Some(path) = snapshot_file.map(levels_path)
                    && let Err(e) = persist_levels(&path, &levels)
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot persist the degradation levels");
                }
                continue;
            }
            None => continue,
        };
        let ack = receive(shared, &snapshot, &source, snapshot_file, applied);
        let reply = SidecarMessage {
            message: Some(sidecar_message::Message::Ack(ack)),
        };
        tx.send(reply).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Aborts a task when dropped: the reporter of a stream ends with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies one snapshot; the answer is its ACK (empty error) or NACK.
fn receive(
    shared: &Shared,
    snapshot: &Snapshot,
    source: &str,
    snapshot_file: Option<&Path>,
    applied: &watch::Sender<i64>,
) -> Ack {
    let current = *applied.borrow();
    if snapshot.version <= current && current != 0 {
        tracing::debug!(
            version = snapshot.version,
            current,
            "ignoring a snapshot not newer than the one in force"
        );
        return Ack {
            version: snapshot.version,
            error: String::new(),
        };
    }
    let result = to_policy_set(snapshot, source).and_then(|set| {
        shared.apply(&set)?;
        Ok(set)
    });
    match result {
        Ok(set) => {
            if let Some(path) = snapshot_file
                && let Err(e) = persist(path, snapshot.version, &set)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot persist the applied snapshot");
            }
            applied.send_replace(snapshot.version);
            Ack {
                version: snapshot.version,
                error: String::new(),
            }
        }
        Err(reason) => {
            shared.metrics.reload(false);
            tracing::error!(version = snapshot.version, %reason, "snapshot refused (NACK); keeping the policies in force");
            Ack {
                version: snapshot.version,
                error: reason,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_proto::v1::Resource as WireResource;

    fn wire(json: &str) -> WireResource {
        WireResource {
            kind: "UpstreamPolicy".into(),
            namespace: "default".into(),
            name: "echo".into(),
            resource_version: 7,
            json: json.into(),
        }
    }

    const GOOD: &str = r#"{"apiVersion":"bulwark/v1","kind":"UpstreamPolicy","metadata":{"name":"echo"},"spec":{"endpoints":{"static":["127.0.0.1:1"]}}}"#;

    #[test]
    fn snapshots_are_validated_again() {
        let ok = Snapshot {
            version: 7,
            resources: vec![wire(GOOD)],
        };
        let set = to_policy_set(&ok, "test").unwrap();
        assert_eq!(set.version, "7");
        assert_eq!(set.resources.len(), 1);

        let bad = Snapshot {
            version: 8,
            resources: vec![wire(&GOOD.replace("127.0.0.1:1", "nowhere"))],
        };
        let reason = to_policy_set(&bad, "test").unwrap_err();
        assert!(
            reason.starts_with("UpstreamPolicy/default/echo is invalid: spec.endpoints.static[0]"),
            "{reason}"
        );
    }

    #[test]
    fn persisted_snapshots_round_trip() {
        let dir = std::env::temp_dir().join(format!("bulwark-cp-{}", std::process::id()));
        let path = dir.join("snapshot.json");
        let set = to_policy_set(
            &Snapshot {
                version: 9,
                resources: vec![wire(GOOD)],
            },
            "control-plane:x",
        )
        .unwrap();
        persist(&path, 9, &set).unwrap();
        let (version, loaded) = load_persisted(&path).unwrap();
        assert_eq!(version, 9);
        assert_eq!(loaded.resources, set.resources);
        assert!(!path.with_extension("tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_or_truncated_snapshot_falls_back_to_the_previous_generation() {
        let dir = std::env::temp_dir().join(format!("bulwark-cp-gen-{}", std::process::id()));
        let path = dir.join("snapshot.json");
        let set = |version: i64| {
            to_policy_set(
                &Snapshot {
                    version,
                    resources: vec![wire(GOOD)],
                },
                "control-plane:x",
            )
            .unwrap()
        };
        persist(&path, 9, &set(9)).unwrap();
        persist(&path, 10, &set(10)).unwrap();
        assert_eq!(load_persisted(&path).unwrap().0, 10);
        // Truncated: the checksum no longer holds; the previous generation is used.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(load_persisted(&path).unwrap().0, 9);
        // A flipped byte is caught as well.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(load_persisted(&path).unwrap().0, 9);
        // Both unusable: the error names both files.
        std::fs::write(previous_path(&path), b"garbage").unwrap();
        let err = load_persisted(&path).unwrap_err();
        assert!(
            err.contains(
                "snapshot.json: the checksum does not match: the file is corrupt or truncated"
            ),
            "{err}"
        );
        assert!(err.contains("snapshot.prev.json: "), "{err}");
        // The next good write does not make a corrupt file the previous generation.
        persist(&path, 11, &set(11)).unwrap();
        assert_eq!(load_persisted(&path).unwrap().0, 11);
        assert!(std::fs::read(previous_path(&path)).unwrap() == b"garbage");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn persisted_levels_round_trip_beside_the_snapshot() {
        let dir = std::env::temp_dir().join(format!("bulwark-levels-{}", std::process::id()));
        let snapshot = dir.join("snapshot.json");
        let path = levels_path(&snapshot);
        assert_eq!(path, dir.join("snapshot.levels.pb"));
        let levels = Levels {
            services: vec![bulwark_proto::v1::ServiceLevel {
                namespace: "shop".into(),
                service: "orders".into(),
                level: bulwark_proto::v1::Level::Severe as i32,
                reasons: vec!["payments unhealthy".into()],
                ..Default::default()
            }],
        };
        persist_levels(&path, &levels).unwrap();
        assert_eq!(load_persisted_levels(&path), Ok(levels));
        std::fs::write(&path, b"\xff\xff").unwrap();
        assert!(load_persisted_levels(&path).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
