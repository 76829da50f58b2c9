//! Faults of a sidecar: restarted while the control plane is down (with a good snapshot, then a
//! corrupt one), and drained for shutdown with slow requests in flight.

use std::time::Duration;

use bulwark_tests::load::LoadReport;
use bulwark_tests::{Fault, client, eventually};
use http::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use crate::mesh::{Mesh, URI, assert_no_failures, ms, record};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_restarted_with_the_control_plane_down_serves_from_its_snapshot() {
    let mut mesh = Mesh::start().await;
    // Two generations of the snapshot on disk: the one in force and the previous one.
    let revision = mesh.apply_marker("second").await;
    mesh.converged(revision).await;
    let load1 = mesh.load(1);

    // The whole control plane goes away.
    for replica in &mut mesh.replicas {
        *replica = None;
    }
    let mut report = LoadReport::default();
    let mut boots = Vec::new();
    for corrupt in [false, true] {
        mesh.sidecars[0].take();
        if corrupt {
            let bytes = std::fs::read(&mesh.snapshots[0]).expect("the snapshot");
            std::fs::write(&mesh.snapshots[0], &bytes[..bytes.len() / 2]).expect("truncate it");
        }
        let restarted = Instant::now();
        mesh.start_sidecar(0).await;
        let sidecar = mesh.sidecar(0);
        let ready = sidecar.admin_get("/health/ready").await;
        assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
        boots.push(ms(restarted.elapsed()));
        if corrupt {
            assert!(sidecar.logs_contain(
                "the snapshot file is not usable: booting from the previous generation"
            ));
        }
        let load0 = mesh.load(0);
        mesh.carry(&load0, 50).await;
        report.merge(load0.stop().await);
    }
    // The other sidecar never stopped serving either.
    mesh.carry(&load1, 50).await;
    report.merge(load1.stop().await);

    assert_no_failures("a sidecar restarted with the control plane down", &report);
    record(
        "sidecar-restart-control-plane-down",
        &report,
        json!({
            "bootFromSnapshotMs": boots[0],
            "bootFromPreviousGenerationMs": boots[1],
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_sidecar_finishes_every_request_in_flight() {
    let mut mesh = Mesh::start().await;
    let [load0, load1] = mesh.load_both();
    mesh.carry(&load0, 50).await;

    // Twenty slow requests (1.5 s each) in flight through sidecar 0...
    let slow = Fault::new().delay_ms(1500).key("slow");
    let http = client::http1_client(mesh.sidecar(0).outbound());
    let mut in_flight = Vec::new();
    for _ in 0..20 {
        let (http, request) = (http.clone(), slow.get(URI));
        in_flight.push(tokio::spawn(async move {
            client::try_send(&http, request).await
        }));
    }
    eventually(Duration::from_secs(10), || async {
        (mesh.backend.attempts_for("slow") == 20).then_some(())
    })
    .await;
    // ...when it is told to shut down (and its pod leaves the endpoints: no new load).
    let stopping = load0.stop();
    let drain_started = Instant::now();
    mesh.sidecar(0).signal_term();
    let mut report = stopping.await;
    for request in in_flight {
        let answer = request.await.expect("join");
        match answer {
            Ok(answer) if answer.status == StatusCode::OK => report.ok += 1,
            other => panic!("a slow request in flight during the drain failed: {other:?}"),
        }
        report.sent += 1;
    }
    let status = mesh
        .sidecar(0)
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the sidecar exits once nothing is in flight");
    let drained = drain_started.elapsed();
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(mesh.backend.cancelled_for("slow"), 0);
    mesh.sidecars[0] = None;
    mesh.carry(&load1, 50).await;
    report.merge(load1.stop().await);

    assert_no_failures("draining a sidecar", &report);
    record(
        "sidecar-drain",
        &report,
        json!({ "slowInFlight": 20, "drainMs": ms(drained) }),
    );
}
