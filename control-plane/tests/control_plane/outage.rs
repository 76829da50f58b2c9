//! The control plane while etcd is away, and after: writes answer 503 naming etcd, reads go on
//! from the index marked stale, sidecar streams stay open; recovery needs no one — including
//! when etcd compacted past the revision a replica's watch stopped at.

use crate::replica;
use bulwark_tests::discovery::names;
use bulwark_tests::policy::upstream_json as upstream;
use bulwark_tests::{DiscoveryStream, Etcd, EtcdCluster, TcpProxy, wait_for};
use serde_json::json;

#[tokio::test]
async fn etcd_down_then_back() {
    let etcd = Etcd::start().await;
    let cp = replica(&[etcd.endpoint()]).await;
    cp.wait_fresh().await;
    let v1 = cp
        .apply_json(vec![upstream("payments", "127.0.0.1:1")])
        .await["revision"]
        .as_i64()
        .unwrap();
    let mut sidecar = DiscoveryStream::connect(&cp, "shop", "orders", "orders-1", 0).await;
    assert_eq!(sidecar.next_snapshot().await.version, v1);
    sidecar.ack(v1).await;
    wait_for("the ACK", || async {
        (cp.pods_of("UpstreamPolicy/default/payments").await? == (1, 1, json!([]))).then_some(())
    })
    .await;

    etcd.kill();

    // Writes: 503, naming etcd and where it was looked for.
    let reply = cp
        .post(
            "/v1/apply",
            json!({"resources": [upstream("payments", "127.0.0.1:2")]}),
        )
        .await;
    assert_eq!(reply.status, 503, "{}", reply.json);
    assert_eq!(reply.json["error"], "unavailable");
    let message = reply.json["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("etcd is unreachable at {}: ", etcd.endpoint())),
        "{message}"
    );
    assert_eq!(
        cp.delete("/v1/UpstreamPolicy/default/payments")
            .await
            .status,
        503
    );

    // Reads: from the index, marked stale once the replica noticed.
    let reply = wait_for("a stale read", || async {
        let reply = cp.get("/v1/UpstreamPolicy/default/payments").await;
        reply.stale().then_some(reply)
    })
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json["metadata"]["resourceVersion"],
        json!(v1.to_string())
    );
    let status = cp.get("/v1/status").await;
    assert!(status.stale());
    assert_eq!(status.json["resources"][0]["pods"]["applied"], 1);

    // gRPC reads are marked the same way.
    let mut operator = bulwark_proto::v1::operator_client::OperatorClient::connect(cp.grpc_url())
        .await
        .unwrap();
    let got = operator
        .get(bulwark_proto::v1::GetRequest {
            kind: "UpstreamPolicy".into(),
            namespace: "default".into(),
            name: "payments".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        got.metadata()
            .get("x-bulwark-stale")
            .unwrap()
            .to_str()
            .unwrap(),
        "true"
    );
    let status = operator
        .apply(bulwark_proto::v1::ApplyRequest {
            resources: vec![upstream("x", "127.0.0.1:1").to_string()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().starts_with("etcd is unreachable at "),
        "{}",
        status.message()
    );

    // The sidecar stream is still there: a new sidecar can connect too, and gets the
    // snapshot from the index.
    let mut late = DiscoveryStream::connect(&cp, "shop", "cart", "cart-1", 0).await;
    assert_eq!(late.next_snapshot().await.version, v1);

    etcd.restart().await;

    // Writes work again, without anyone's help.
    let v2 = wait_for("a write after etcd came back", || async {
        let reply = cp
            .post(
                "/v1/apply",
                json!({"resources": [upstream("payments", "127.0.0.1:2")]}),
            )
            .await;
        (reply.status == 200).then(|| reply.json["revision"].as_i64().unwrap())
    })
    .await;
    // The stream that stayed open gets the change.
    let snapshot = sidecar.next_snapshot().await;
    assert_eq!(snapshot.version, v2);
    assert_eq!(names(&snapshot), ["UpstreamPolicy/default/payments"]);
    assert_eq!(late.next_snapshot().await.version, v2);
    sidecar.ack(v2).await;
    late.ack(v2).await;
    cp.wait_fresh().await;
    wait_for("both pods applied the change", || async {
        (cp.pods_of("UpstreamPolicy/default/payments").await? == (2, 2, json!([]))).then_some(())
    })
    .await;
    assert!(!cp.get("/v1/UpstreamPolicy/default/payments").await.stale());
}

#[tokio::test]
async fn a_replica_recovers_from_a_compaction_past_its_watch() {
    let etcd = Etcd::start().await;
    let proxy = TcpProxy::start(etcd.addr()).await;
    // A reaches etcd through the proxy, B directly.
    let a = replica(&[proxy.endpoint()]).await;
    let b = replica(&[etcd.endpoint()]).await;
    a.wait_fresh().await;
    b.wait_fresh().await;

    let v1 = b
        .apply_json(vec![upstream("payments", "127.0.0.1:1")])
        .await["revision"]
        .as_i64()
        .unwrap();
    let mut sidecar = DiscoveryStream::connect(&a, "shop", "orders", "orders-1", 0).await;
    assert_eq!(sidecar.next_snapshot().await.version, v1);

    // Cut A off; meanwhile, changes through B, then a compaction past all of them.
    proxy.block();
    wait_for("A noticing", || async {
        a.get("/v1/status").await.stale().then_some(())
    })
    .await;
    b.apply_json(vec![upstream("smtp", "127.0.0.1:25")]).await;
    let v3 = b
        .apply_json(vec![upstream("payments", "127.0.0.1:2")])
        .await["revision"]
        .as_i64()
        .unwrap();
    etcd.etcdctl(&["compact", &v3.to_string()])
        .expect("etcdctl compact");

    proxy.unblock();

    // A's watch cannot resume where it stopped: it lists again, and the stream gets the
    // state of the world.
    let snapshot = sidecar.next_snapshot().await;
    assert_eq!(snapshot.version, v3);
    assert_eq!(
        names(&snapshot),
        [
            "UpstreamPolicy/default/payments",
            "UpstreamPolicy/default/smtp"
        ]
    );
    a.wait_fresh().await;
    assert!(
        a.log()
            .contains("etcd compacted past the watch's revision; listing again"),
        "the recovery went through the compaction path"
    );

    // Later changes still arrive.
    let v4 = b
        .apply_json(vec![upstream("payments", "127.0.0.1:3")])
        .await["revision"]
        .as_i64()
        .unwrap();
    assert_eq!(sidecar.next_snapshot().await.version, v4);
    let reply = a.get("/v1/UpstreamPolicy/default/payments").await;
    assert_eq!(
        reply.json["metadata"]["resourceVersion"],
        json!(v4.to_string())
    );
}

#[tokio::test]
async fn a_replica_starts_while_etcd_is_down() {
    let etcd = Etcd::start().await;
    etcd.kill();
    let cp = replica(&[etcd.endpoint()]).await;
    // Nothing to serve yet: reads say why.
    let reply = cp.get("/v1/UpstreamPolicy").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json["error"], "unavailable");
    assert!(
        reply.json["message"].as_str().unwrap().contains("etcd"),
        "{}",
        reply.json
    );
    assert_eq!(cp.get("/health/ready").await.status, 503);
    // A sidecar connecting now gets nothing (rather than an empty snapshot)...
    let mut sidecar = DiscoveryStream::connect(&cp, "shop", "orders", "orders-1", 0).await;

    etcd.restart().await;
    cp.wait_fresh().await;
    // ...until there is something.
    let v1 = cp
        .apply_json(vec![upstream("payments", "127.0.0.1:1")])
        .await["revision"]
        .as_i64()
        .unwrap();
    assert_eq!(sidecar.next_snapshot().await.version, v1);
}

#[tokio::test]
async fn a_dead_member_of_three_is_routed_around() {
    let cluster = EtcdCluster::start(3).await;
    let cp = replica(&cluster.endpoints()).await;
    cp.wait_fresh().await;
    let v1 = cp
        .apply_json(vec![upstream("payments", "127.0.0.1:1")])
        .await["revision"]
        .as_i64()
        .unwrap();
    let mut sidecar = DiscoveryStream::connect(&cp, "shop", "orders", "orders-1", 0).await;
    assert_eq!(sidecar.next_snapshot().await.version, v1);

    // The first endpoint, which the replica talks to first, dies (perhaps the leader).
    cluster.kill(0);
    let v2 = wait_for("a write with one member of three dead", || async {
        let reply = cp
            .post(
                "/v1/apply",
                serde_json::json!({"resources": [upstream("payments", "127.0.0.1:2")]}),
            )
            .await;
        (reply.status == 200).then(|| reply.json["revision"].as_i64().unwrap())
    })
    .await;
    // The watch moved to a living member: the change reaches the stream.
    assert_eq!(sidecar.next_snapshot().await.version, v2);
    // And every write afterwards succeeds at the first try.
    for port in 3..8 {
        cp.apply_json(vec![upstream("payments", &format!("127.0.0.1:{port}"))])
            .await;
    }
}

#[tokio::test]
async fn reads_during_a_quorum_loss_say_they_may_be_stale() {
    let cluster = EtcdCluster::start(3).await;
    let cp = replica(&cluster.endpoints()).await;
    cp.wait_fresh().await;
    cp.apply_json(vec![upstream("payments", "127.0.0.1:1")])
        .await;
    let read = cp.get("/v1/UpstreamPolicy/default/payments").await;
    assert_eq!((read.status, read.stale()), (200, false));
    // Two members of three die: the last one keeps the replica's watch open but has no
    // quorum, answers no read and sees no change.
    cluster.kill(1);
    cluster.kill(2);
    for path in [
        "/v1/UpstreamPolicy/default/payments",
        "/v1/UpstreamPolicy",
        "/v1/status",
    ] {
        let reply = wait_for("a read marked stale", || async {
            let reply = cp.get(path).await;
            reply.stale().then_some(reply)
        })
        .await;
        assert_eq!(
            reply.status, 200,
            "{path}: served from the index all the same"
        );
    }
    let ready = cp.get("/health/ready").await;
    assert_eq!(ready.json["stale"], true, "{}", ready.json);
}
