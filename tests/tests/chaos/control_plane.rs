//! Faults of the control plane: its elected replica killed, a replica cut off from etcd.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::mesh::{Mesh, assert_no_failures, ms, record};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_replica_fails_no_request_and_loses_no_apply() {
    let mut mesh = Mesh::start().await;
    let [load0, load1] = mesh.load_both();
    mesh.carry(&load0, 50).await;
    let leader = mesh.leader().await;
    let survivor = 1 - leader;

    let orphans = mesh.streams_on(leader);
    let killed = Instant::now();
    // Dropping a replica SIGKILLs it.
    mesh.replicas[leader] = None;
    // A change made at once, through the survivor, is taken at the first try...
    let revision = mesh
        .try_apply(survivor, "during")
        .await
        .expect("an apply through the surviving replica");
    // ...and reaches both sidecars, the one that was on the dead replica too.
    mesh.converged(revision).await;
    let converged = killed.elapsed();
    let mut reconnect = Duration::ZERO;
    for (pod, before) in orphans {
        mesh.reconnected(pod, before).await;
        reconnect = reconnect.max(killed.elapsed());
    }
    mesh.await_leader(survivor).await;
    let took_over = killed.elapsed();
    mesh.carry(&load0, 50).await;
    let mut report = load0.stop().await;
    report.merge(load1.stop().await);

    assert_no_failures("killing the leader replica", &report);
    mesh.assert_no_apply_lost(survivor).await;
    record(
        "kill-leader-replica",
        &report,
        json!({
            "reconnectMs": ms(reconnect),
            "convergenceMs": ms(converged),
            "newLeaderMs": ms(took_over),
            "appliesLost": 0,
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_from_etcd_serves_stale_refuses_writes_and_catches_up() {
    let mesh = Mesh::start().await;
    let [load0, load1] = mesh.load_both();
    mesh.carry(&load0, 50).await;
    // Replica 0 (sidecar 0's) loses every etcd member; replica 1 keeps them.
    for proxy in &mesh.proxies[0] {
        proxy.block();
    }
    let cut = Instant::now();
    // The cut-off replica answers reads from its index, marked stale...
    let stale = bulwark_tests::wait_for("a stale read from the cut-off replica", || async {
        let reply = mesh
            .replica(0)
            .get("/v1/UpstreamPolicy/default/backend")
            .await;
        reply.stale().then_some(reply)
    })
    .await;
    assert_eq!(stale.status, 200);
    // ...and refuses writes, naming etcd; nothing is stored.
    let before = mesh.stored_policies();
    let refused = mesh
        .try_apply(0, "refused")
        .await
        .expect_err("a write through the cut-off replica");
    assert!(refused.starts_with("503"), "{refused}");
    assert!(refused.contains("etcd is unreachable"), "{refused}");
    assert_eq!(
        mesh.stored_policies(),
        before,
        "a refused write stores nothing"
    );
    // The other replica takes writes; it leads once the cut-off one stepped down (if it led),
    // and the two never lead at once.
    let revision = mesh
        .try_apply(1, "during")
        .await
        .expect("an apply through the connected replica");
    mesh.await_leader(1).await;
    let leader_after = cut.elapsed();

    // The partition heals: the change made during it reaches the sidecar of the cut-off
    // replica too.
    for proxy in &mesh.proxies[0] {
        proxy.unblock();
    }
    let healed = Instant::now();
    mesh.converged(revision).await;
    let converged = healed.elapsed();
    mesh.replica(0).wait_fresh().await;
    mesh.carry(&load0, 50).await;
    let mut report = load0.stop().await;
    report.merge(load1.stop().await);

    assert_no_failures("a replica cut off from etcd", &report);
    mesh.assert_no_apply_lost(0).await;
    record(
        "replica-partitioned-from-etcd",
        &report,
        json!({
            "convergenceAfterHealMs": ms(converged),
            "singleLeaderMs": ms(leader_after),
            "appliesLost": 0,
        }),
    );
}
