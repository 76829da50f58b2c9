//! The sidecar stream (`bulwark.v1.Discovery/Stream`): Hello, then a snapshot whenever the
//! content the pod needs changes — never one not newer than the last sent on the stream, and
//! none when the pod already applied the current version — and each ACK/NACK recorded; the
//! levels of the pod's service and of the services it calls whenever they change; and the
//! pod's health reports handed to the health recorder. A stream depends only on the index and
//! the recorders, so it stays up while etcd is away. Who a stream may speak for comes from its
//! workload certificate ([`binding`](crate::identity::binding)): a Hello, or a report, for
//! another namespace, service account or pod is refused, logged and counted, and nothing of it
//! is stored.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bulwark_proto::v1 as pb;
use bulwark_proto::v1::discovery_server::Discovery;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::acks::AckRecorder;
use crate::degradation::reports::HealthRecorder;
use crate::identity::binding::{self, Enforcement, Refused, Workload};
use crate::index::{Content, SharedIndex};
use crate::metrics::Metrics;
use crate::serve::Peer;
use crate::store::keys::{PodKey, check_segment};
use crate::timestamp::unix_millis;

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stream waits for this replica's index to reach a pod's `last_applied_version`
/// (the pod came from a replica that was ahead) before sending what it has anyway.
const CATCH_UP: Duration = Duration::from_secs(5);

/// The Discovery service.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    index: SharedIndex,
    acks: AckRecorder,
    health: HealthRecorder,
    shutdown: watch::Receiver<bool>,
    streams: Arc<AtomicUsize>,
    guard: Guard,
}

/// How streams are held to their certificates.
#[derive(Debug, Clone)]
pub struct Guard {
    pub enforcement: Enforcement,
    pub trust_domain: String,
    pub metrics: Arc<Metrics>,
    /// The most streams one workload identity may hold at once on this replica.
    pub max_streams_per_identity: usize,
    /// Streams held per identity.
    pub held: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// One stream counted against its identity; uncounted when dropped.
struct Held {
    held: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    identity: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.identity);
            }
        }
    }
}

impl Guard {
    /// Counts a stream of `workload` (none without a certificate); refused past the limit.
    fn hold(&self, workload: Option<&Workload>) -> Result<Option<Held>, Refused> {
        let Some(workload) = workload else {
            return Ok(None);
        };
        let identity = workload.id.to_string();
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = held.entry(identity.clone()).or_default();
        if *n >= self.max_streams_per_identity {
            return Err(Refused {
                reason: "too-many-streams",
                status: Status::resource_exhausted(format!(
                    "{identity} already holds {n} Discovery streams, the most this control plane allows one identity (--max-streams-per-identity)"
                )),
            });
        }
        *n += 1;
        Ok(Some(Held {
            held: self.held.clone(),
            identity,
        }))
    }
}

impl Guard {
    fn refuse(&self, peer: Option<&Peer>, pod: Option<&PodKey>, refused: Refused) -> Status {
        self.metrics.rejected_report(refused.reason);
        let addr = peer.map(|p| p.addr.to_string()).unwrap_or_default();
        let pod = pod.map(|p| p.to_string()).unwrap_or_default();
        tracing::warn!(peer = %addr, %pod, reason = refused.reason, error = %refused.status.message(), "sidecar stream refused");
        refused.status
    }
}

impl DiscoveryService {
    pub fn new(
        index: SharedIndex,
        acks: AckRecorder,
        health: HealthRecorder,
        shutdown: watch::Receiver<bool>,
        guard: Guard,
    ) -> Self {
        DiscoveryService {
            index,
            acks,
            health,
            shutdown,
            streams: Arc::default(),
            guard,
        }
    }
}

type Outbound =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ControlPlaneMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = Outbound;

    async fn stream(
        &self,
        request: Request<Streaming<pb::SidecarMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let workload = binding::workload(peer.as_ref(), &self.guard.trust_domain)
            .map_err(|refused| self.guard.refuse(peer.as_ref(), None, refused))?;
        let inbound = request.into_inner();
        // Snapshots supersede each other; a small buffer is enough.
        let (tx, rx) = mpsc::channel(2);
        let session = Session {
            index: self.index.clone(),
            acks: self.acks.clone(),
            health: self.health.clone(),
            shutdown: self.shutdown.clone(),
            streams: self.streams.clone(),
            guard: self.guard.clone(),
            peer,
            workload,
        };
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One sidecar's stream.
struct Session {
    index: SharedIndex,
    acks: AckRecorder,
    health: HealthRecorder,
    shutdown: watch::Receiver<bool>,
    streams: Arc<AtomicUsize>,
    guard: Guard,
    peer: Option<Peer>,
    workload: Option<Workload>,
}

type Tx = mpsc::Sender<Result<pb::ControlPlaneMessage, Status>>;

/// Reads the Hello; the error is what the stream ends with.
async fn hello(inbound: &mut Streaming<pb::SidecarMessage>) -> Result<(PodKey, i64), Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Hello within 30s"))??;
    match first.and_then(|m| m.message) {
        Some(pb::sidecar_message::Message::Hello(hello)) => check_hello(hello),
        Some(_) => Err(Status::invalid_argument("the first message must be Hello")),
        None => Err(Status::cancelled("the stream ended before Hello")),
    }
}

/// The pod a Hello names and the version it last applied, or why the Hello is refused.
pub fn check_hello(hello: pb::Hello) -> Result<(PodKey, i64), Status> {
    for (field, value) in [
        ("namespace", &hello.namespace),
        ("service", &hello.service),
        ("pod", &hello.pod),
    ] {
        check_segment(value)
            .map_err(|e| Status::invalid_argument(format!("Hello.{field} {value:?}: {e}")))?;
    }
    let pod = PodKey {
        namespace: hello.namespace,
        service: hello.service,
        pod: hello.pod,
    };
    Ok((pod, hello.last_applied_version.max(0)))
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::SidecarMessage>, tx: Tx) {
        let (pod, last_applied) = match hello(&mut inbound).await {
            Ok(who) => who,
            Err(status) => {
                tracing::debug!(%status, "sidecar stream refused");
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let admitted = binding::admit(
            self.guard.enforcement,
            self.workload.as_ref(),
            &pod,
            &self.index.lock(),
        );
        if let Err(refused) = admitted {
            let status = self.guard.refuse(self.peer.as_ref(), Some(&pod), refused);
            let _ = tx.send(Err(status)).await;
            return;
        }
        let _held = match self.guard.hold(self.workload.as_ref()) {
            Ok(held) => held,
            Err(refused) => {
                let status = self.guard.refuse(self.peer.as_ref(), Some(&pod), refused);
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let open = self.streams.fetch_add(1, Ordering::Relaxed) + 1;
        let metrics = self.guard.metrics.clone();
        metrics.sidecar_stream(&pod.namespace, 1);
        tracing::info!(%pod, last_applied, streams = open, "sidecar connected");
        let stream = self.acks.connect(&pod, last_applied);
        let service = pod.service_key();
        let (mut snapshots, mut state, mut levels) = {
            let mut index = self.index.lock();
            (
                index.subscribe(&service),
                index.watch_state(),
                index.watch_levels(),
            )
        };
        // Levels go out once the index is loaded, then on every change that concerns the pod.
        let mut levels_sent: Option<pb::Levels> = None;
        let catch_up_until = Instant::now() + CATCH_UP;
        let mut last_sent = 0i64;
        let reason = loop {
            if *self.shutdown.borrow() {
                break "shutting down";
            }
            // Send what there is to send first, then wait for something to happen.
            let ready = {
                let s = state.borrow_and_update();
                // Never from an index that was never loaded (it would empty the pod), and
                // not before the index reached what the pod has, for a while.
                s.loaded && (s.revision >= last_applied || Instant::now() >= catch_up_until)
            };
            if ready {
                let snapshot = snapshots.borrow_and_update().clone();
                if snapshot.version != last_applied && snapshot.version > last_sent {
                    let message = to_message(&snapshot);
                    tokio::select! {
                        sent = tx.send(Ok(message)) => if sent.is_err() {
                            break "the sidecar went away";
                        },
                        _ = self.shutdown.changed() => break "shutting down",
                    }
                    last_sent = snapshot.version;
                    metrics.snapshot_sent();
                    tracing::debug!(%pod, version = snapshot.version, resources = snapshot.resources.len(), "snapshot sent");
                }
            }
            if state.borrow().loaded {
                let current = self.levels(&service);
                if levels_sent.as_ref() != Some(&current) {
                    let message = pb::ControlPlaneMessage {
                        message: Some(pb::control_plane_message::Message::Levels(current.clone())),
                    };
                    tokio::select! {
                        sent = tx.send(Ok(message)) => if sent.is_err() {
                            break "the sidecar went away";
                        },
                        _ = self.shutdown.changed() => break "shutting down",
                    }
                    tracing::debug!(%pod, services = current.services.len(), "levels sent");
                    metrics.levels_sent();
                    levels_sent = Some(current);
                }
            }
            let waiting_for_catch_up = !ready && state.borrow().loaded;
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(pb::SidecarMessage { message: Some(pb::sidecar_message::Message::Ack(ack)) })) => {
                        if ack.error.is_empty() {
                            tracing::debug!(%pod, version = ack.version, "ACK");
                            metrics.snapshot_answer("ack");
                        } else {
                            tracing::warn!(%pod, version = ack.version, error = %ack.error, "NACK: the sidecar refused a snapshot");
                            metrics.snapshot_answer("nack");
                        }
                        self.acks.answer(&pod, stream, ack.version, &ack.error);
                    }
                    Ok(Some(pb::SidecarMessage { message: Some(pb::sidecar_message::Message::Health(report)) })) => {
                        // The service's account may have changed since Hello.
                        let allowed = match &self.workload {
                            Some(w) => binding::service_account(w, &pod, &self.index.lock()),
                            None => Ok(()),
                        };
                        if let Err(refused) = allowed {
                            let status = self.guard.refuse(self.peer.as_ref(), Some(&pod), refused);
                            let _ = tx.send(Err(status)).await;
                            break "its certificate no longer covers its service";
                        }
                        self.health.report(&pod, &report, unix_millis());
                    }
                    Ok(Some(_)) => tracing::debug!(%pod, "ignoring a message that is neither an Ack nor a report"),
                    Ok(None) => break "the sidecar closed the stream",
                    Err(_) => break "the stream broke",
                },
                changed = snapshots.changed() => if changed.is_err() {
                    break "the index went away";
                },
                changed = state.changed() => if changed.is_err() {
                    break "the index went away";
                },
                changed = levels.changed() => if changed.is_err() {
                    break "the index went away";
                },
                _ = tokio::time::sleep_until(catch_up_until), if waiting_for_catch_up => {}
                _ = self.shutdown.changed() => break "shutting down",
                _ = tx.closed() => break "the sidecar went away",
            }
        };
        self.acks.disconnect(&pod, stream);
        metrics.sidecar_stream(&pod.namespace, -1);
        let open = self.streams.fetch_sub(1, Ordering::Relaxed) - 1;
        tracing::info!(%pod, reason, streams = open, "sidecar disconnected");
    }
}

impl Session {
    /// The levels the pod acts on, as the index holds them.
    fn levels(&self, service: &crate::store::keys::ServiceKey) -> pb::Levels {
        let statuses = self.index.lock().levels_for(service);
        pb::Levels {
            services: statuses.iter().map(|s| s.to_pb()).collect(),
        }
    }
}

fn to_message(snapshot: &Content) -> pb::ControlPlaneMessage {
    pb::ControlPlaneMessage {
        message: Some(pb::control_plane_message::Message::Snapshot(pb::Snapshot {
            version: snapshot.version,
            resources: snapshot
                .resources
                .iter()
                .map(|r| pb::Resource {
                    kind: r.key.kind.to_string(),
                    namespace: r.key.namespace.clone(),
                    name: r.key.name.clone(),
                    resource_version: r.mod_revision,
                    json: r.json.clone(),
                })
                .collect(),
        })),
    }
}
