//! The control plane end to end, as users run it: a real etcd, real control-plane replicas and
//! real sidecars following them. A policy applied through the API is enforced by a running
//! sidecar (observed through its traffic), updates, deletes and rollbacks likewise; sidecars
//! keep enforcing when the control plane dies, boot from their snapshot when it is away, move
//! between replicas without losing an update, and a snapshot a sidecar cannot apply shows as a
//! NACK in `meshctl status`.

use std::process::Command;
use std::time::Duration;

use bulwark_tests::client::{self, HttpClient};
use bulwark_tests::{ControlPlane, Etcd, HttpUpstream, Sidecar, eventually, metrics, policy};
use http::{Method, StatusCode};

const WAIT: Duration = Duration::from_secs(15);

/// Which test upstream answered `http://echo/...` through the sidecar (by request counts).
async fn served_by(http: &HttpClient, a: &HttpUpstream, b: &HttpUpstream) -> Option<&'static str> {
    let (before_a, before_b) = (a.requests(), b.requests());
    let res = client::get(http, "http://echo/status/200").await;
    if res.status != StatusCode::OK {
        return None;
    }
    match (a.requests() > before_a, b.requests() > before_b) {
        (true, false) => Some("a"),
        (false, true) => Some("b"),
        _ => None,
    }
}

async fn await_served_by(http: &HttpClient, a: &HttpUpstream, b: &HttpUpstream, who: &str) {
    eventually(WAIT, || async {
        (served_by(http, a, b).await == Some(who)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn applied_policies_are_enforced_by_a_running_sidecar() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint(), "cp-1").await;
    let (a, b) = (HttpUpstream::start().await, HttpUpstream::start().await);
    let sidecar = Sidecar::builder()
        .control_plane(cp.grpc_url())
        .args(["--service", "web"])
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());

    // Nothing applied yet: no route.
    let res = client::get(&http, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);

    // Create: routed to a.
    let res = cp
        .apply(&policy::upstream("echo", a.addr()).to_yaml())
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(
        res.json()["results"][0]["action"],
        "created",
        "{}",
        res.text()
    );
    let first_version = res.json()["results"][0]["resourceVersion"].clone();
    await_served_by(&http, &a, &b, "a").await;

    // Update: routed to b.
    let res = cp
        .apply(&policy::upstream("echo", b.addr()).to_yaml())
        .await;
    assert_eq!(
        res.json()["results"][0]["action"],
        "updated",
        "{}",
        res.text()
    );
    await_served_by(&http, &a, &b, "b").await;

    // Rollback to the first version: a again.
    let to: i64 = match &first_version {
        serde_json::Value::String(s) => s.parse().expect("numeric version"),
        v => v.as_i64().expect("numeric version"),
    };
    let res = cp
        .rest(
            Method::POST,
            "/v1/UpstreamPolicy/default/echo/rollback",
            Some(serde_json::json!({ "toRevision": to, "by": "e2e" })),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    await_served_by(&http, &a, &b, "a").await;

    // Delete: no route again.
    let res = cp
        .rest(Method::DELETE, "/v1/UpstreamPolicy/default/echo", None)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    eventually(WAIT, || async {
        let res = client::get(&http, "http://echo/status/200").await;
        (res.header("x-bulwark-error") == Some("no-route")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_invalid_policy_is_rejected_and_the_sidecar_keeps_its_policies() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint(), "cp-1").await;
    let a = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .control_plane(cp.grpc_url())
        .args(["--service", "web"])
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    cp.apply(&policy::upstream("echo", a.addr()).to_yaml())
        .await;
    eventually(WAIT, || async {
        (client::get(&http, "http://echo/status/200").await.status == StatusCode::OK).then_some(())
    })
    .await;

    let bad = policy::upstream("echo", a.addr())
        .spec("retry: { maxAttempts: 0, backoff: { multiplier: 0.5 } }")
        .to_yaml();
    // Parsing succeeds; validation is the server's to report.
    let res = cp.apply(&bad).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.text());
    let body = res.json();
    assert_eq!(body["error"], "invalid");
    let details: Vec<String> = body["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains("spec.retry.backoff.multiplier: must be >= 1.0, got 0.5")),
        "{details:?}"
    );
    assert!(
        details.iter().any(|d| d.contains("spec.retry.maxAttempts")),
        "{details:?}"
    );
    // Nothing stored: the sidecar still routes to a with the old policy.
    assert_eq!(
        client::get(&http, "http://echo/status/200").await.status,
        StatusCode::OK
    );
    let stored = cp
        .rest(Method::GET, "/v1/UpstreamPolicy/default/echo", None)
        .await;
    assert!(
        stored.json()["spec"].get("retry").is_none(),
        "{}",
        stored.text()
    );
}

#[tokio::test]
async fn sidecars_keep_enforcing_without_the_control_plane_and_boot_from_their_snapshot() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint(), "cp-1").await;
    let a = HttpUpstream::start().await;
    let snapshot_dir = std::env::temp_dir().join(format!("bulwark-snap-{}", std::process::id()));
    std::fs::create_dir_all(&snapshot_dir).expect("snapshot dir");
    let snapshot = snapshot_dir.join("snapshot.json");
    let sidecar = Sidecar::builder()
        .control_plane(cp.grpc_url())
        .snapshot_file(&snapshot)
        .args(["--service", "web"])
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    cp.apply(&policy::upstream("echo", a.addr()).to_yaml())
        .await;
    eventually(WAIT, || async {
        (client::get(&http, "http://echo/status/200").await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(snapshot.is_file(), "the applied snapshot is persisted");

    // The control plane dies: traffic goes on.
    cp.kill();
    for _ in 0..5 {
        assert_eq!(
            client::get(&http, "http://echo/status/200").await.status,
            StatusCode::OK
        );
    }

    // The sidecar restarts while the control plane is still away: it boots from the file.
    drop(sidecar);
    let restarted = Sidecar::builder()
        .control_plane(cp.grpc_url())
        .snapshot_file(&snapshot)
        .args(["--service", "web"])
        .start()
        .await;
    let http = client::http1_client(restarted.outbound());
    eventually(WAIT, || async {
        (client::get(&http, "http://echo/status/200").await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(
        restarted.admin_get("/health/ready").await.status,
        StatusCode::OK
    );
    let _ = std::fs::remove_dir_all(snapshot_dir);
}

#[tokio::test]
async fn a_corrupt_snapshot_falls_back_to_the_previous_generation_and_none_says_why() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint(), "cp-1").await;
    let (a, b) = (HttpUpstream::start().await, HttpUpstream::start().await);
    let dir = bulwark_tests::TempDir::new();
    let snapshot = dir.path().join("snapshot.json");
    let start = || {
        Sidecar::builder()
            .control_plane(cp.grpc_url())
            .snapshot_file(&snapshot)
            .args(["--service", "web"])
            .start()
    };
    let sidecar = start().await;
    let http = client::http1_client(sidecar.outbound());
    cp.apply(&policy::upstream("echo", a.addr()).to_yaml())
        .await;
    await_served_by(&http, &a, &b, "a").await;
    cp.apply(&policy::upstream("echo", b.addr()).to_yaml())
        .await;
    await_served_by(&http, &a, &b, "b").await;
    cp.kill();
    drop(sidecar);

    // Truncated (a crash in the middle of a copy, a full disk): the previous generation boots.
    let bytes = std::fs::read(&snapshot).expect("the snapshot");
    std::fs::write(&snapshot, &bytes[..bytes.len() / 2]).expect("truncate it");
    let restarted = start().await;
    let http = client::http1_client(restarted.outbound());
    await_served_by(&http, &a, &b, "a").await;
    assert_eq!(
        restarted.admin_get("/health/ready").await.status,
        StatusCode::OK
    );
    assert!(
        restarted
            .logs_contain("the snapshot file is not usable: booting from the previous generation")
    );
    drop(restarted);

    // Both unusable: it boots with nothing, and readiness says why.
    std::fs::write(dir.path().join("snapshot.prev.json"), b"{").expect("corrupt it");
    let empty = start().await;
    let ready = empty.admin_get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let why = ready.text();
    assert!(
        why.starts_with("not ready: no policies applied yet: no usable snapshot file ("),
        "{why}"
    );
    assert!(
        why.contains(
            "snapshot.json: the checksum does not match: the file is corrupt or truncated"
        ),
        "{why}"
    );
    assert!(why.contains("snapshot.prev.json: "), "{why}");
}

#[tokio::test]
async fn a_sidecar_moved_between_replicas_loses_no_update() {
    let etcd = Etcd::start().await;
    let cp1 = ControlPlane::start(&etcd.endpoint(), "cp-1").await;
    let cp2 = ControlPlane::start(&etcd.endpoint(), "cp-2").await;
    let (a, b) = (HttpUpstream::start().await, HttpUpstream::start().await);
    let sidecar = Sidecar::builder()
        .control_plane(format!("{},{}", cp1.grpc_url(), cp2.grpc_url()))
        .args(["--service", "web"])
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    cp1.apply(&policy::upstream("echo", a.addr()).to_yaml())
        .await;
    await_served_by(&http, &a, &b, "a").await;

    // Its replica dies; an update goes through the other replica while it reconnects.
    cp1.kill();
    let res = cp2
        .apply(&policy::upstream("echo", b.addr()).to_yaml())
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    await_served_by(&http, &a, &b, "b").await;
}

#[tokio::test]
async fn a_snapshot_the_sidecar_cannot_apply_shows_as_a_nack_in_meshctl_status() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint(), "cp-1").await;
    let a = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .control_plane(cp.grpc_url())
        .args([
            "--service",
            "orders",
            "--namespace",
            "shop",
            "--pod",
            "orders-7d9f",
        ])
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    cp.apply(&policy::upstream("echo", a.addr()).to_yaml())
        .await;
    eventually(WAIT, || async {
        (client::get(&http, "http://echo/status/200").await.status == StatusCode::OK).then_some(())
    })
    .await;

    // Valid for the mesh, but this pod's app port is its sidecar's own inbound port.
    let inbound = sidecar.inbound().port();
    let res = cp.apply(&policy::service("orders", "shop", inbound)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let reason = format!(
        "ServicePolicy shop/orders: spec.app.port {inbound} is this sidecar's own inbound port; inbound requests would loop"
    );
    let meshctl = std::env::current_exe()
        .expect("test executable")
        .parent()
        .expect("deps dir")
        .join("../meshctl");
    let out = eventually(WAIT, || async {
        let out = Command::new(&meshctl)
            .env_remove("RUST_BACKTRACE")
            .args(["--server", &cp.http_url(), "status"])
            .output()
            .expect("run meshctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains(&reason).then_some(text)
    })
    .await;
    assert!(
        out.contains("pod shop/orders/orders-7d9f at version"),
        "{out}"
    );
    // The sidecar kept the policies it had.
    assert_eq!(
        client::get(&http, "http://echo/status/200").await.status,
        StatusCode::OK
    );

    // `meshctl check` names the refusal, the pod behind, and fails.
    let (code, check, _) = cp.meshctl_run(&["check"]);
    assert_eq!(code, Some(1), "{check}");
    assert!(
        check.contains(&format!(
            "× shop/orders/orders-7d9f refused ServicePolicy/shop/orders: {reason}"
        )),
        "{check}"
    );
    assert!(
        check.contains("× pods are behind on ServicePolicy/shop/orders (0/1)"),
        "{check}"
    );
    assert!(
        check.contains("✓ the control plane reaches etcd"),
        "{check}"
    );

    // What the operator sees on the control plane's /metrics: the sidecar connected, the
    // snapshots sent and both answers, the applies, the level computations.
    let cp_http = client::http1_client(cp.http());
    let scrape = || async {
        client::get(&cp_http, &format!("{}/metrics", cp.http_url()))
            .await
            .text()
    };
    let text = eventually(WAIT, || async {
        let text = scrape().await;
        let computed = metrics::value(&text, "bulwark_level_computations_total", &[]);
        computed.is_some_and(|n| n >= 1.0).then_some(text)
    })
    .await;
    let value = |name, labels: &[(&str, &str)]| metrics::value(&text, name, labels);
    assert_eq!(
        value("bulwark_sidecars_connected", &[("namespace", "shop")]),
        Some(1.0),
        "{text}"
    );
    assert!(
        value("bulwark_snapshots_sent_total", &[]).is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(
        value("bulwark_levels_sent_total", &[]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    for result in ["ack", "nack"] {
        assert!(
            value("bulwark_snapshot_answers_total", &[("result", result)])
                .is_some_and(|n| n >= 1.0),
            "{result}: {text}"
        );
    }
    assert_eq!(
        value(
            "bulwark_api_requests_total",
            &[("route", "/v1/apply"), ("method", "POST"), ("code", "200")]
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        value(
            "bulwark_etcd_requests_total",
            &[("operation", "transaction"), ("result", "ok")]
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    // The sidecar goes away: the gauge follows.
    drop(sidecar);
    eventually(WAIT, || async {
        let text = scrape().await;
        (metrics::value(
            &text,
            "bulwark_sidecars_connected",
            &[("namespace", "shop")],
        ) == Some(0.0))
        .then_some(())
    })
    .await;
}

/// `--watch` as an operator uses it: `get -w` prints the list and then every change as it
/// happens, `status -w` the levels and convergence as they move, `events -w` each event as it
/// is recorded; `-o json` streams the watch events themselves; a watch ends when the control
/// plane shuts down, and meshctl with it.
#[tokio::test]
async fn meshctl_watch_follows_resources_levels_and_events_as_they_change() {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint(), "cp-watch").await;
    let (a, b) = (HttpUpstream::start().await, HttpUpstream::start().await);
    let applied = cp
        .apply(
            &policy::upstream("echo", a.addr())
                .namespace("shop")
                .to_yaml(),
        )
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.text());

    let get = cp.meshctl_spawn(&["get", "up", "-n", "shop", "-w"]);
    let json = cp.meshctl_spawn(&["get", "up", "-n", "shop", "-w", "-o", "json"]);
    let status = cp.meshctl_spawn(&["status", "-w"]);
    let events = cp.meshctl_spawn(&["events", "-w", "-o", "json"]);
    let header = get.await_line(0, |l| l.starts_with("EVENT")).await;
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "EVENT",
            "NAME",
            "NAMESPACE",
            "VERSION",
            "ENDPOINTS",
            "PROTOCOL"
        ]
    );
    let added = get.await_line(1, |l| l.starts_with("ADDED")).await;
    assert!(
        added.contains("echo") && added.contains(&a.addr().to_string()),
        "{added}"
    );
    status
        .await_line(0, |l| {
            l.starts_with("ADDED") && l.contains("UpstreamPolicy/shop/echo")
        })
        .await;

    // Changed, added, deleted: a line each, as it happens.
    let before = get.lines().len();
    cp.apply(
        &policy::upstream("echo", b.addr())
            .namespace("shop")
            .to_yaml(),
    )
    .await;
    let modified = get.await_line(before, |l| l.starts_with("MODIFIED")).await;
    assert!(modified.contains(&b.addr().to_string()), "{modified}");
    cp.apply(
        &policy::upstream("pay", a.addr())
            .namespace("shop")
            .to_yaml(),
    )
    .await;
    get.await_line(before, |l| l.starts_with("ADDED") && l.contains("pay"))
        .await;
    cp.meshctl(&["delete", "up", "echo", "-n", "shop"]);
    get.await_line(before, |l| l.starts_with("DELETED") && l.contains("echo"))
        .await;
    // The same changes as JSON watch events, one per line.
    let deleted = json.await_line(0, |l| l.contains("\"DELETED\"")).await;
    let deleted: serde_json::Value = serde_json::from_str(&deleted).expect("a JSON line");
    assert_eq!(deleted["object"]["metadata"]["name"], "echo");
    let kinds: Vec<String> = json
        .lines()
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("every line is JSON");
            v["type"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(kinds[..2], ["ADDED", "MODIFIED"], "{kinds:?}");

    // A forced level: recorded as an event, and the service's level row changes.
    cp.apply(&policy::service("orders", "shop", 8080)).await;
    status
        .await_line(0, |l| l.starts_with("ADDED") && l.contains("shop/orders"))
        .await;
    cp.meshctl(&[
        "degrade",
        "orders",
        "-n",
        "shop",
        "--level",
        "emergency",
        "--ttl",
        "5m",
        "--reason",
        "watch test",
    ]);
    let event = events.await_line(0, |l| l.contains("watch test")).await;
    let event: serde_json::Value = serde_json::from_str(&event).expect("a JSON line");
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["kind"], "override");
    assert_eq!(event["object"]["to"], "EMERGENCY");
    status
        .await_line(0, |l| {
            l.starts_with("MODIFIED") && l.contains("shop/orders") && l.contains("EMERGENCY")
        })
        .await;

    // The control plane stops: every watch ends, and meshctl exits cleanly.
    let stopped = cp.terminate().await;
    assert!(stopped.success(), "{stopped:?}");
    for watch in [&get, &json, &status, &events] {
        let exit = watch.exit().await;
        assert!(exit.success(), "{exit:?}: {}", watch.stderr());
    }
}

/// `grpc.health.v1.Health` on the gRPC listener, as a gRPC load balancer or probe asks it:
/// SERVING for the server and each service while the replica follows etcd, NOT_SERVING once
/// etcd is gone (what it serves may be behind), an unknown service NOT_FOUND.
#[tokio::test]
async fn grpc_health_says_serving_while_the_replica_follows_etcd() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.endpoint(), "cp-health").await;
    let channel = tonic::transport::Channel::from_shared(cp.grpc_url())
        .expect("a URL")
        .connect()
        .await
        .expect("connect to the gRPC listener");
    let mut health = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest {
        service: service.to_string(),
    };
    let status =
        |reply: tonic::Response<tonic_health::pb::HealthCheckResponse>| reply.into_inner().status;
    for service in ["", "bulwark.v1.Discovery", "bulwark.v1.Operator"] {
        let reply = health.check(check(service)).await.expect("an answer");
        assert_eq!(status(reply), ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(check("bulwark.v1.Nothing"))
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    etcd.kill();
    eventually(WAIT, || {
        let mut health = health.clone();
        async move {
            let reply = health.check(check("")).await.ok()?;
            (status(reply) == ServingStatus::NotServing as i32).then_some(())
        }
    })
    .await;
}
