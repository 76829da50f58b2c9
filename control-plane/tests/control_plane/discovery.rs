//! The sidecar stream against a real etcd and the real binary: snapshots on connect and on
//! every relevant change, ACKs and NACKs in `/v1/status`, no resend of what a pod has, and two
//! replicas over one etcd agreeing.

use crate::replica;
use bulwark_tests::discovery::names;
use bulwark_tests::policy::{service_json as service, upstream_json as upstream};
use bulwark_tests::{ControlPlane, DiscoveryStream, Etcd, wait_for};
use serde_json::json;

async fn setup() -> (Etcd, ControlPlane) {
    let etcd = Etcd::start().await;
    let cp = replica(&[etcd.endpoint()]).await;
    cp.wait_fresh().await;
    (etcd, cp)
}

#[tokio::test]
async fn a_sidecar_gets_its_snapshot_then_every_relevant_change() {
    let (_etcd, cp) = setup().await;
    let v1 = cp
        .apply_json(vec![
            upstream("payments", "127.0.0.1:1"),
            service("shop", "orders", 8080),
            service("shop", "billing", 8081),
        ])
        .await["revision"]
        .as_i64()
        .unwrap();

    let mut sidecar = DiscoveryStream::connect(&cp, "shop", "orders", "orders-1", 0).await;
    let snapshot = sidecar.next_snapshot().await;
    assert_eq!(snapshot.version, v1);
    assert_eq!(
        names(&snapshot),
        [
            "UpstreamPolicy/default/payments",
            "ServicePolicy/shop/orders"
        ]
    );
    let payments = &snapshot.resources[0];
    assert_eq!(payments.resource_version, v1);
    let parsed = bulwark_proto::policy::parse_json(&payments.json).unwrap();
    assert_eq!(parsed[0].id(), "UpstreamPolicy/default/payments");
    assert_eq!(
        parsed[0].metadata().resource_version.as_deref(),
        Some(v1.to_string().as_str())
    );
    sidecar.ack(v1).await;
    wait_for("the ACK in /v1/status", || async {
        (cp.pods_of("UpstreamPolicy/default/payments").await? == (1, 1, json!([]))).then_some(())
    })
    .await;
    assert_eq!(
        cp.pods_of("ServicePolicy/shop/orders").await,
        Some((1, 1, json!([])))
    );
    // Another service's policy concerns no pod of ours.
    assert_eq!(
        cp.pods_of("ServicePolicy/shop/billing").await,
        Some((0, 0, json!([])))
    );

    // A change to another service's policy is not sent; the next upstream change is.
    cp.apply_json(vec![service("shop", "billing", 9999)]).await;
    let v2 = cp.apply_json(vec![upstream("smtp", "127.0.0.1:25")]).await["revision"]
        .as_i64()
        .unwrap();
    let snapshot = sidecar.next_snapshot().await;
    assert_eq!(snapshot.version, v2);
    assert_eq!(
        names(&snapshot),
        [
            "UpstreamPolicy/default/payments",
            "UpstreamPolicy/default/smtp",
            "ServicePolicy/shop/orders"
        ]
    );
    // Not yet applied: the new resource counts the pod, not as applied.
    assert_eq!(
        cp.pods_of("UpstreamPolicy/default/smtp").await,
        Some((0, 1, json!([])))
    );

    // A NACK shows with its reason, and the pod stays counted on its previous version.
    sidecar.nack(v2, "spec.endpoints: cannot resolve").await;
    let nacks = json!([{"pod": "shop/orders/orders-1", "version": v2, "error": "spec.endpoints: cannot resolve"}]);
    wait_for("the NACK in /v1/status", || async {
        (cp.pods_of("UpstreamPolicy/default/smtp").await? == (0, 1, nacks.clone())).then_some(())
    })
    .await;
    assert_eq!(
        cp.pods_of("UpstreamPolicy/default/payments").await,
        Some((1, 1, json!([])))
    );

    // A deletion is a change too.
    let reply = cp.delete("/v1/UpstreamPolicy/default/smtp").await;
    let v3 = reply.json["revision"].as_i64().unwrap();
    let snapshot = sidecar.next_snapshot().await;
    assert_eq!(snapshot.version, v3);
    assert_eq!(
        names(&snapshot),
        [
            "UpstreamPolicy/default/payments",
            "ServicePolicy/shop/orders"
        ]
    );
    sidecar.ack(v3).await;
    wait_for("the ACK of the deletion", || async {
        (cp.pods_of("UpstreamPolicy/default/payments").await? == (1, 1, json!([]))).then_some(())
    })
    .await;

    // The pod goes away: it is no longer counted.
    drop(sidecar);
    wait_for("the pod leaving /v1/status", || async {
        (cp.pods_of("UpstreamPolicy/default/payments").await? == (0, 0, json!([]))).then_some(())
    })
    .await;
}

#[tokio::test]
async fn nothing_is_sent_for_the_version_a_pod_already_applied() {
    let (_etcd, cp) = setup().await;
    // A pod with nothing, while there is nothing: no snapshot until there is one.
    let mut first = DiscoveryStream::connect(&cp, "shop", "orders", "orders-0", 0).await;
    let v1 = cp
        .apply_json(vec![upstream("payments", "127.0.0.1:1")])
        .await["revision"]
        .as_i64()
        .unwrap();
    assert_eq!(first.next_snapshot().await.version, v1);
    // Unrelated writes move etcd's revision, not the snapshot's version.
    cp.apply_json(vec![service("shop", "billing", 8081)]).await;

    let mut sidecar = DiscoveryStream::connect(&cp, "shop", "orders", "orders-1", v1).await;
    // The first message must be the next change, not the version the pod has.
    let v2 = cp
        .apply_json(vec![upstream("payments", "127.0.0.1:2")])
        .await["revision"]
        .as_i64()
        .unwrap();
    assert_eq!(sidecar.next_snapshot().await.version, v2);
    assert_eq!(first.next_snapshot().await.version, v2);
}

#[tokio::test]
async fn a_stream_must_start_with_a_valid_hello() {
    use bulwark_proto::v1::discovery_client::DiscoveryClient;
    use bulwark_proto::v1::{Ack, Hello, SidecarMessage, sidecar_message};

    let (_etcd, cp) = setup().await;
    let open = |first: SidecarMessage| {
        let url = cp.grpc_url();
        async move {
            let mut client = DiscoveryClient::connect(url).await.unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(first).await.unwrap();
            let mut inbound = client
                .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let status = inbound.message().await.unwrap_err();
            drop(tx);
            status
        }
    };
    let status = open(SidecarMessage {
        message: Some(sidecar_message::Message::Ack(Ack {
            version: 1,
            error: String::new(),
        })),
    })
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "the first message must be Hello");
    let status = open(SidecarMessage {
        message: Some(sidecar_message::Message::Hello(Hello {
            namespace: "shop".into(),
            service: "a/b".into(),
            pod: "p".into(),
            last_applied_version: 0,
        })),
    })
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "Hello.service \"a/b\": must not contain '/', whitespace or control characters"
    );
}

#[tokio::test]
async fn two_replicas_over_one_etcd_converge() {
    let etcd = Etcd::start().await;
    let a = replica(&[etcd.endpoint()]).await;
    let b = replica(&[etcd.endpoint()]).await;
    a.wait_fresh().await;
    b.wait_fresh().await;

    let mut on_a = DiscoveryStream::connect(&a, "shop", "orders", "orders-a", 0).await;
    let mut on_b = DiscoveryStream::connect(&b, "shop", "orders", "orders-b", 0).await;

    // Written through A, streamed by both.
    let v1 = a
        .apply_json(vec![
            upstream("payments", "127.0.0.1:1"),
            service("shop", "orders", 8080),
        ])
        .await["revision"]
        .as_i64()
        .unwrap();
    let from_a = on_a.next_snapshot().await;
    let from_b = on_b.next_snapshot().await;
    assert_eq!(from_a.version, v1);
    assert_eq!(from_a, from_b);
    on_a.ack(v1).await;
    on_b.ack(v1).await;

    // Written through B, read through A.
    let v2 = b
        .apply_json(vec![upstream("payments", "127.0.0.1:2")])
        .await["revision"]
        .as_i64()
        .unwrap();
    assert_eq!(on_a.next_snapshot().await.version, v2);
    assert_eq!(on_b.next_snapshot().await.version, v2);
    on_a.ack(v2).await;
    on_b.ack(v2).await;
    let got = wait_for("B's write on A", || async {
        let reply = a.get("/v1/UpstreamPolicy/default/payments").await;
        (reply.json["metadata"]["resourceVersion"] == json!(v2.to_string())).then_some(reply)
    })
    .await;
    assert_eq!(
        got.json["spec"]["endpoints"]["static"],
        json!(["127.0.0.1:2"])
    );

    // Both replicas see both pods' acks.
    for cp in [&a, &b] {
        wait_for("both pods applied, on every replica", || async {
            (cp.pods_of("UpstreamPolicy/default/payments").await? == (2, 2, json!([])))
                .then_some(())
        })
        .await;
    }

    // A pod moving from B to A with the version it applied gets nothing until a change.
    drop(on_b);
    let mut moved = DiscoveryStream::connect(&a, "shop", "orders", "orders-b", v2).await;
    let v3 = b.apply_json(vec![service("shop", "orders", 9090)]).await["revision"]
        .as_i64()
        .unwrap();
    assert_eq!(moved.next_snapshot().await.version, v3);
    assert_eq!(on_a.next_snapshot().await.version, v3);
    moved.ack(v3).await;
    on_a.ack(v3).await;
    for cp in [&a, &b] {
        wait_for("the moved pod counted once", || async {
            (cp.pods_of("ServicePolicy/shop/orders").await? == (2, 2, json!([]))).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_replica_that_stops_closes_streams_and_takes_its_acks_along() {
    let (etcd, cp) = setup().await;
    let other = replica(&[etcd.endpoint()]).await;
    other.wait_fresh().await;
    let v1 = cp
        .apply_json(vec![upstream("payments", "127.0.0.1:1")])
        .await["revision"]
        .as_i64()
        .unwrap();
    let mut sidecar = DiscoveryStream::connect(&cp, "shop", "orders", "orders-1", 0).await;
    assert_eq!(sidecar.next_snapshot().await.version, v1);
    sidecar.ack(v1).await;
    wait_for("the ACK seen by the other replica", || async {
        (other.pods_of("UpstreamPolicy/default/payments").await? == (1, 1, json!([]))).then_some(())
    })
    .await;

    let started = tokio::time::Instant::now();
    assert!(cp.terminate().await.success());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "a replica stops at once when its sidecars follow"
    );
    assert!(sidecar.closed().await.is_none(), "the stream ends cleanly");
    wait_for("the ack gone with the replica", || async {
        (other.pods_of("UpstreamPolicy/default/payments").await? == (0, 0, json!([]))).then_some(())
    })
    .await;
}
