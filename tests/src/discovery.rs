//! A sidecar's end of `Discovery.Stream`, driven by the test: it says Hello, reads snapshots,
//! and ACKs or NACKs them — what a sidecar does, without a sidecar, to test the control plane's
//! side of the protocol.

use bulwark_proto::v1::discovery_client::DiscoveryClient;
use bulwark_proto::v1::{
    Ack, ControlPlaneMessage, Hello, SidecarMessage, Snapshot, control_plane_message,
    sidecar_message,
};
use tokio::sync::mpsc;

use crate::control_plane::ControlPlane;
use crate::poll::PATIENCE;

/// One open stream.
#[derive(Debug)]
pub struct DiscoveryStream {
    tx: mpsc::Sender<SidecarMessage>,
    inbound: tonic::Streaming<ControlPlaneMessage>,
}

impl DiscoveryStream {
    /// Opens a stream to `cp` as pod `pod` of `namespace/service`.
    pub async fn connect(
        cp: &ControlPlane,
        namespace: &str,
        service: &str,
        pod: &str,
        last_applied_version: i64,
    ) -> DiscoveryStream {
        DiscoveryStream::open(
            cp,
            cp.access(),
            namespace,
            service,
            pod,
            last_applied_version,
        )
        .await
        .expect("the stream opens")
    }

    /// Opens a stream with `access`'s credentials (a workload certificate, or none); the error
    /// is the status the control plane refused it with.
    pub async fn open(
        cp: &ControlPlane,
        access: &crate::rest::Access,
        namespace: &str,
        service: &str,
        pod: &str,
        last_applied_version: i64,
    ) -> Result<DiscoveryStream, tonic::Status> {
        let channel = crate::workload::channel(&cp.grpc_url(), access)
            .await
            .map_err(tonic::Status::unavailable)?;
        let mut client = DiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        tx.send(SidecarMessage {
            message: Some(sidecar_message::Message::Hello(Hello {
                namespace: namespace.into(),
                service: service.into(),
                pod: pod.into(),
                last_applied_version,
            })),
        })
        .await
        .expect("the hello is queued");
        let inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(DiscoveryStream { tx, inbound })
    }

    /// Sends a health report on the stream.
    pub async fn report(&self, report: bulwark_proto::v1::HealthReport) {
        let _ = self
            .tx
            .send(SidecarMessage {
                message: Some(sidecar_message::Message::Health(report)),
            })
            .await;
    }

    /// The next snapshot (levels sent in between are skipped).
    pub async fn next_snapshot(&mut self) -> Snapshot {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.inbound.message())
                .await
                .expect("a snapshot in time")
                .expect("the stream is healthy")
                .expect("the stream is open");
            match message.message {
                Some(control_plane_message::Message::Snapshot(s)) => return s,
                Some(control_plane_message::Message::Levels(_)) => continue,
                None => panic!("an empty message"),
            }
        }
    }

    /// The next snapshot, or the status the stream ended with (levels are skipped).
    pub async fn next_snapshot_or_end(&mut self) -> Result<Snapshot, Option<tonic::Status>> {
        loop {
            match self.inbound.message().await {
                Ok(Some(ControlPlaneMessage {
                    message: Some(control_plane_message::Message::Snapshot(s)),
                })) => return Ok(s),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(None),
                Err(status) => return Err(Some(status)),
            }
        }
    }

    /// The stream's end: its error, if any (snapshots and levels sent before it are skipped).
    pub async fn end(&mut self) -> Option<tonic::Status> {
        loop {
            match tokio::time::timeout(PATIENCE, self.inbound.message())
                .await
                .expect("the stream ends in time")
            {
                Ok(None) => return None,
                Ok(Some(_)) => continue,
                Err(status) => return Some(status),
            }
        }
    }

    /// The stream's end: its error, if any (levels sent before it are skipped).
    pub async fn closed(&mut self) -> Option<tonic::Status> {
        loop {
            match tokio::time::timeout(PATIENCE, self.inbound.message())
                .await
                .expect("the stream ends in time")
            {
                Ok(None) => return None,
                Ok(Some(ControlPlaneMessage {
                    message: Some(control_plane_message::Message::Levels(_)),
                })) => continue,
                Ok(Some(m)) => panic!("expected the end of the stream, got {m:?}"),
                Err(status) => return Some(status),
            }
        }
    }

    pub async fn ack(&self, version: i64) {
        self.answer(version, "").await;
    }

    pub async fn nack(&self, version: i64, error: &str) {
        self.answer(version, error).await;
    }

    async fn answer(&self, version: i64, error: &str) {
        self.tx
            .send(SidecarMessage {
                message: Some(sidecar_message::Message::Ack(Ack {
                    version,
                    error: error.into(),
                })),
            })
            .await
            .expect("the answer is queued");
    }
}

/// Names of a snapshot's resources, `Kind/namespace/name`.
pub fn names(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .resources
        .iter()
        .map(|r| format!("{}/{}/{}", r.kind, r.namespace, r.name))
        .collect()
}
