//! `grpc.health.v1.Health` on the gRPC listener (tonic-health): `SERVING` for the whole server
//! (`""`) and each of its services while the index follows etcd — what snapshots and reads are
//! served from — and `NOT_SERVING` while it cannot (not loaded yet, or etcd away), as
//! `/health/ready` says on the REST listener.

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::index::IndexState;

/// The services the status is reported for, besides the whole server.
const SERVICES: [&str; 4] = [
    "",
    "bulwark.v1.Discovery",
    "bulwark.v1.Operator",
    "bulwark.v1.Identity",
];

/// Whether a replica whose index is in `state` serves.
pub fn status(state: &IndexState) -> ServingStatus {
    if state.loaded && !state.stale {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Keeps the reported status equal to the index's until `stop`.
pub async fn report(
    reporter: HealthReporter,
    mut state: watch::Receiver<IndexState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reported = None;
    loop {
        let now = {
            let current = state.borrow_and_update();
            status(&current)
        };
        if reported != Some(now) {
            for service in SERVICES {
                reporter.set_service_status(service, now).await;
            }
            reported = Some(now);
        }
        let stopping = async {
            // The borrow `wait_for` returns is dropped here, not held across the awaits below.
            let _ = stop.wait_for(|s| *s).await;
        };
        let stopped = tokio::select! {
            changed = state.changed() => if changed.is_err() { return } else { false },
            () = stopping => true,
        };
        if stopped {
            for service in SERVICES {
                reporter
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_only_while_the_index_follows_etcd() {
        let state = |loaded, stale| IndexState {
            loaded,
            stale,
            ..IndexState::default()
        };
        assert_eq!(status(&state(true, false)), ServingStatus::Serving);
        assert_eq!(status(&state(true, true)), ServingStatus::NotServing);
        assert_eq!(status(&state(false, false)), ServingStatus::NotServing);
    }
}
