//! The sidecar process's life: the ready file, the inbound listener in front of the app,
//! graceful drain on SIGTERM (in-flight requests finish, new connections are refused, exit 0),
//! and the kit's promise that no sidecar outlives its test.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bulwark_tests::client;
use bulwark_tests::{HttpUpstream, Sidecar, eventually, policy, try_eventually};
use http::StatusCode;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn the_ready_file_names_every_listener() {
    let sidecar = Sidecar::builder().start().await;
    let ready = sidecar.ready();
    let addrs = [sidecar.admin(), sidecar.outbound(), sidecar.inbound()];
    for addr in addrs {
        assert!(addr.ip().is_loopback(), "{ready:?}");
        assert_ne!(addr.port(), 0, "{ready:?}");
        TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{addr} accepts: {e}"));
    }
    assert_ne!(addrs[0], addrs[1]);
    assert_ne!(addrs[1], addrs[2]);
    assert!(ready.ports.is_empty());
}

#[tokio::test]
async fn inbound_forwards_to_the_app_port() {
    let app = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .args(["--app-port", &app.addr().port().to_string()])
        .start()
        .await;
    let http = client::http1_client(sidecar.inbound());
    let res = client::get(&http, "http://orders.shop.svc.cluster.local/headers").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(
        res.json()["headers"]["host"][0],
        "orders.shop.svc.cluster.local"
    );
    let res = client::get(&http, "http://anything/status/201").await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(app.requests(), 2);
}

#[tokio::test]
async fn inbound_finds_the_app_port_in_the_service_policy() {
    let app = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::service("orders", "shop", app.addr().port()))
        .args(["--service", "orders", "--namespace", "shop"])
        .start()
        .await;
    let h2 = client::h2c_client(sidecar.inbound());
    let res = client::get(&h2, "http://orders/status/200").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(app.requests_to("/status/200"), 1);
}

#[tokio::test]
async fn sigterm_closes_inbound_keeps_outbound_until_in_flight_work_ends_then_exits_0() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
        .args(["--drain-timeout", "10s"])
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    let upstream = Arc::new(upstream);
    let in_flight = tokio::spawn(async move { client::get(&http, "http://echo/gate").await });
    eventually(WAIT, || async {
        (upstream.requests_to("/gate") == 1).then_some(())
    })
    .await;

    sidecar.signal_term();
    // Inbound closes at once: callers go to other pods.
    let inbound = sidecar.inbound();
    eventually(WAIT, || async {
        TcpStream::connect(inbound).await.is_err().then_some(())
    })
    .await;
    assert_eq!(
        sidecar.admin_get("/health/ready").await.text(),
        "not ready: draining for shutdown\n"
    );
    // Outbound keeps serving the app while it finishes its work, on new connections too.
    assert!(!in_flight.is_finished(), "the gate is still closed");
    let fresh = client::http1_client(sidecar.outbound());
    let res = client::get(&fresh, "http://echo/status/200").await;
    assert_eq!(res.status, StatusCode::OK);

    upstream.open_gate();
    let res = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the in-flight request finishes")
        .expect("join");
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.text(), "gate opened");
    assert_eq!(upstream.cancelled(), 0);

    // No request in flight any more: the sidecar exits well before its 10 s drain timeout.
    let status = sidecar
        .wait_exit(WAIT)
        .await
        .expect("the sidecar exits once nothing is in flight");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(TcpStream::connect(sidecar.outbound()).await.is_err());
}

#[tokio::test]
async fn sigterm_when_idle_exits_0_promptly() {
    let sidecar = Sidecar::builder().start().await;
    sidecar.signal_term();
    let status = sidecar.wait_exit(WAIT).await.expect("exits within 5 s");
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test]
async fn dropping_the_handle_kills_the_process() {
    let sidecar = Sidecar::builder().start().await;
    let pid = sidecar.pid();
    let dir = sidecar
        .policy_path()
        .parent()
        .expect("the temp dir")
        .to_path_buf();
    let proc_entry = format!("/proc/{pid}");
    assert!(Path::new(&proc_entry).exists());
    drop(sidecar);
    // Killed and reaped by the drop itself: no zombie, no leftover files.
    let gone = try_eventually(WAIT, || async {
        (!Path::new(&proc_entry).exists()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "process {pid} still exists");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// The app probe (`spec.app.healthCheck`) decides readiness: while the app's health check fails
/// `/health/ready` answers 503 with the probe's reason, and the pod is ready again once it
/// passes.
#[tokio::test]
async fn a_failing_app_health_check_makes_the_pod_unready() {
    let app = HttpUpstream::start().await;
    let service = |path: &str| {
        format!(
            "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  app: {{ port: {}, healthCheck: {{ http: {path}, interval: 100ms, timeout: 100ms }} }}\n",
            app.addr().port()
        )
    };
    let sidecar = Sidecar::builder()
        .policies_yaml(service("/status/503"))
        .args(["--service", "orders", "--namespace", "shop"])
        .start()
        .await;
    let ready = eventually(WAIT, || async {
        let res = sidecar.admin_get("/health/ready").await;
        (res.status == StatusCode::SERVICE_UNAVAILABLE).then_some(res)
    })
    .await;
    assert_eq!(
        ready.text(),
        "not ready: app health check failing: GET /status/503 answered 503\n"
    );
    assert!(app.requests_to("/status/503") >= 1, "the app was probed");

    sidecar.write_policies(&service("/status/200"));
    eventually(WAIT, || async {
        let res = sidecar.admin_get("/health/ready").await;
        (res.status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(sidecar.admin_get("/health/ready").await.text(), "ready\n");
}

/// Following a control plane needs to know which service the pod belongs to: without
/// `--service` the sidecar refuses to start and says what is missing.
#[tokio::test]
async fn the_control_plane_mode_needs_a_service() {
    let out = std::process::Command::new(bulwark_tests::sidecar::sidecar_bin())
        .args(["--control-plane", "http://127.0.0.1:9"])
        .env_remove("BULWARK_SERVICE")
        .env_remove("BULWARK_POLICIES")
        .output()
        .expect("the sidecar runs");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("the following required arguments were not provided:\n  --service <SERVICE>"),
        "{stderr}"
    );
}
