//! Faults of etcd: one member of three lost, then quorum lost and given back.

use serde_json::json;
use tokio::time::Instant;

use crate::mesh::{Mesh, assert_no_failures, ms, record};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_an_etcd_member_fails_no_request_and_loses_no_apply() {
    let mesh = Mesh::start().await;
    let [load0, load1] = mesh.load_both();
    mesh.carry(&load0, 50).await;

    // The first member (each replica's first endpoint) dies.
    mesh.etcd.kill(0);
    let killed = Instant::now();
    // Writes go on through either replica once the client has moved to a living member.
    let revision = bulwark_tests::wait_for("an apply with one member of three dead", || async {
        mesh.try_apply(0, "one-member-down").await.ok()
    })
    .await;
    let writable = killed.elapsed();
    mesh.converged(revision).await;
    let converged = killed.elapsed();
    let second = mesh
        .try_apply(1, "again")
        .await
        .expect("the next apply succeeds at the first try");
    mesh.converged(second).await;

    // The member comes back and catches up: what it stores is what the others store.
    mesh.etcd.resume(0);
    mesh.etcd.await_all_healthy().await;
    mesh.carry(&load0, 50).await;
    let mut report = load0.stop().await;
    report.merge(load1.stop().await);

    assert_no_failures("losing an etcd member", &report);
    mesh.assert_no_apply_lost(1).await;
    record(
        "etcd-member-lost",
        &report,
        json!({
            "writableAgainMs": ms(writable),
            "convergenceMs": ms(converged),
            "appliesLost": 0,
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_etcd_quorum_keeps_traffic_flowing_and_recovers_by_itself() {
    let mesh = Mesh::start().await;
    let [load0, load1] = mesh.load_both();
    mesh.carry(&load0, 50).await;
    let before = mesh.stored_policies();

    // Two members of three die: no quorum.
    mesh.etcd.kill(1);
    mesh.etcd.kill(2);
    // Reads go on from the index, marked stale; writes are refused, naming etcd.
    for replica in 0..2 {
        let stale = bulwark_tests::wait_for("a stale read", || async {
            let reply = mesh
                .replica(replica)
                .get("/v1/UpstreamPolicy/default/backend")
                .await;
            reply.stale().then_some(reply)
        })
        .await;
        assert_eq!(stale.status, 200);
        let refused = mesh
            .try_apply(replica, "refused")
            .await
            .expect_err("a write without quorum");
        assert!(refused.starts_with("503"), "{refused}");
    }
    // Traffic is not touched: the sidecars keep their policies.
    mesh.carry(&load0, 100).await;

    // Quorum comes back; nobody intervenes.
    mesh.etcd.resume(1);
    mesh.etcd.resume(2);
    let restored = Instant::now();
    mesh.etcd.await_all_healthy().await;
    let quorum = restored.elapsed();
    assert_eq!(
        mesh.stored_policies(),
        before,
        "nothing was written while quorum was lost"
    );
    let revision = bulwark_tests::wait_for("an apply after quorum is back", || async {
        mesh.try_apply(1, "after").await.ok()
    })
    .await;
    let writable = restored.elapsed();
    mesh.converged(revision).await;
    let converged = restored.elapsed();
    for replica in 0..2 {
        mesh.replica(replica).wait_fresh().await;
    }
    let fresh = restored.elapsed();
    mesh.carry(&load0, 50).await;
    let mut report = load0.stop().await;
    report.merge(load1.stop().await);

    assert_no_failures("losing etcd quorum", &report);
    mesh.assert_no_apply_lost(0).await;
    record(
        "etcd-quorum-lost",
        &report,
        json!({
            "etcdHealthyMs": ms(quorum),
            "writableAfterQuorumMs": ms(writable),
            "convergenceMs": ms(converged),
            "freshReadsAfterQuorumMs": ms(fresh),
            "appliesLost": 0,
        }),
    );
}
