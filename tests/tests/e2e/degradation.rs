//! Health reports drive degradation levels, end to end: a real etcd, two control-plane
//! replicas, the order-orchestrator example's ServicePolicy on four pods (real sidecars, each
//! with its own app), its five dependencies as real upstreams, a caller's sidecar, and a real
//! webhook receiver. Dependencies fail one by one → the pods' breakers open → DEGRADED, SEVERE,
//! EMERGENCY with their capabilities, reasons, shedding, readiness (at most 30% of the pods)
//! and the caller's fail-fast; recovery comes back to NORMAL through damping; every level
//! change reaches the webhook exactly once. A second test covers what happens around that:
//! the elected replica dying, a pod dying, and an operator's override with a TTL.

use std::net::SocketAddr;
use std::time::Duration;

use bulwark_tests::client::{self, Collected, HttpClient};
use bulwark_tests::{
    ControlPlane, Etcd, Fault, HttpUpstream, Sidecar, WebhookReceiver, eventually, policy,
};
use http::{Method, StatusCode};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const DEPS: [&str; 5] = ["midtrans", "bbd", "user-service", "sendgrid", "whatsapp"];
const CP_ARGS: [&str; 6] = [
    "--leader-ttl",
    "2s",
    "--levels-interval",
    "200ms",
    "--levels-min-gap",
    "50ms",
];

async fn apply(cp: &ControlPlane, yaml: &str) {
    let res = cp.apply(yaml).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
}

/// The dependencies, as UpstreamPolicies whose breakers trip after 5 failures of 10 and
/// probe again after 1s.
fn dependency(name: &str, addr: SocketAddr) -> String {
    policy::upstream(name, addr)
        .namespace("mrg")
        .spec(
            "circuitBreaker: { minRequests: 5, failureRate: 50%, openFor: 1s, halfOpenProbes: 1 }",
        )
        .to_yaml()
}

/// The order-orchestrator example's ServicePolicy, with test-sized intervals and our webhook.
fn orchestrator(webhook: &str) -> String {
    let text = policy::example("order-orchestrator.yaml");
    let mut doc: Value = serde_json::to_value(
        bulwark_proto::policy::parse_yaml(&text)
            .expect("the example parses")
            .remove(0),
    )
    .expect("serializes");
    let spec = &mut doc["spec"];
    spec["app"]["healthCheck"] =
        serde_json::json!({ "http": "/status/200", "interval": "200ms", "timeout": "150ms" });
    spec["lowerAfter"] = "1s".into();
    spec["alerts"] = serde_json::json!({ "webhook": webhook, "maxPerMinute": 100 });
    serde_json::to_string(&doc).expect("JSON is YAML")
}

struct Pod {
    app: HttpUpstream,
    sidecar: Sidecar,
    http: HttpClient,
}

async fn pod(cp: &[&ControlPlane], name: &str) -> Pod {
    let app = HttpUpstream::start().await;
    let addrs: Vec<String> = cp.iter().map(|c| c.grpc_url()).collect();
    let sidecar = Sidecar::builder()
        .control_plane(addrs.join(","))
        .args(["--namespace", "mrg", "--service", "order-orchestrator"])
        .args(["--pod", name, "--report-interval", "200ms"])
        .args(["--app-port", &app.addr().port().to_string()])
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    Pod { app, sidecar, http }
}

/// Calls every dependency from every pod; `failing` ones are asked to answer 503.
async fn drive(pods: &[Pod], failing: &[&str]) {
    for pod in pods {
        for dep in DEPS {
            let fault = if failing.contains(&dep) {
                Fault::new().status(503)
            } else {
                Fault::new()
            };
            let req = fault
                .request(Method::GET, &format!("http://{dep}/status/200"))
                .body(client::empty())
                .expect("request");
            let _ = client::try_send(&pod.http, req).await;
        }
    }
}

async fn status(cp: &ControlPlane) -> Option<Value> {
    let res = cp
        .rest(Method::GET, "/v1/levels/mrg/order-orchestrator", None)
        .await;
    (res.status == StatusCode::OK).then(|| res.json())
}

/// Drives traffic until the service's stored level is `level`; returns its status.
async fn drive_until(cp: &ControlPlane, pods: &[Pod], failing: &[&str], level: &str) -> Value {
    eventually(WAIT, || async {
        drive(pods, failing).await;
        status(cp).await.filter(|s| s["level"] == level)
    })
    .await
}

/// Waits until every pod's sidecar acts on `level` (GET /capabilities).
async fn pods_at(pods: &[Pod], level: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for pod in pods {
        out.push(
            eventually(WAIT, || async {
                let caps = pod.sidecar.admin_get("/capabilities").await;
                let caps: Value = serde_json::from_slice(&caps.body).ok()?;
                (caps["level"] == level).then_some(caps)
            })
            .await,
        );
    }
    out
}

/// An inbound request to a pod's app with a priority.
/// A call to the pod's app through its sidecar, to `/headers` (the app's health check takes
/// `/status/200`, so counts of `/headers` are the test's calls alone).
async fn inbound(pod: &Pod, priority: Option<&str>) -> Collected {
    let http = client::http1_client(pod.sidecar.inbound());
    let mut req = client::request(Method::GET, "http://order-orchestrator/headers");
    if let Some(p) = priority {
        req = req.header("x-priority", p);
    }
    client::send(&http, req.body(client::empty()).expect("request")).await
}

async fn unready_pods(pods: &[Pod]) -> usize {
    let mut n = 0;
    for pod in pods {
        if pod.sidecar.admin_get("/health/ready").await.status == StatusCode::SERVICE_UNAVAILABLE {
            n += 1;
        }
    }
    n
}

fn level_changes(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["kind"] == "level")
        .map(|e| {
            (
                e["from"].as_str().unwrap_or_default().to_string(),
                e["to"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn failing_dependencies_raise_the_level_shed_traffic_and_recovery_lowers_it() {
    let etcd = Etcd::start().await;
    let cp1 = ControlPlane::start_with(&etcd.endpoint(), "cp-1", &CP_ARGS).await;
    let cp2 = ControlPlane::start_with(&etcd.endpoint(), "cp-2", &CP_ARGS).await;
    // The first post fails: the alert is retried and still arrives once.
    let hook = WebhookReceiver::start(1).await;
    let mut upstreams = Vec::new();
    let mut docs = vec![orchestrator(&hook.url())];
    for dep in DEPS {
        let up = HttpUpstream::start().await;
        docs.push(dependency(dep, up.addr()));
        upstreams.push(up);
    }
    apply(&cp1, &policy::documents(&docs)).await;
    let mut pods = Vec::new();
    for i in 0..4 {
        pods.push(pod(&[&cp1, &cp2], &format!("orch-{i}")).await);
    }
    // A caller of the orchestrator, through its own sidecar.
    let endpoints: Vec<String> = pods
        .iter()
        .map(|p| format!("\"{}\"", p.sidecar.inbound()))
        .collect();
    apply(
        &cp1,
        &format!(
            "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: order-orchestrator, namespace: mrg }}\nspec:\n  endpoints: {{ static: [{}] }}\n",
            endpoints.join(", ")
        ),
    )
    .await;
    let caller = Sidecar::builder()
        .control_plane(cp2.grpc_url())
        .args([
            "--namespace",
            "mrg",
            "--service",
            "storefront",
            "--pod",
            "store-0",
        ])
        .args(["--report-interval", "200ms"])
        .start()
        .await;
    let caller_http = client::http1_client(caller.outbound());

    // Every pod reports; nothing is wrong.
    let s = eventually(WAIT, || async {
        drive(&pods, &[]).await;
        status(&cp1).await.filter(|s| s["reportingPods"] == 4)
    })
    .await;
    assert_eq!(s["level"], "NORMAL");
    assert_eq!(
        s["capabilities"],
        serde_json::json!({"acceptOrders": true, "sendNotifications": true})
    );
    let caps = pods_at(&pods, "NORMAL").await;
    assert_eq!(caps[0]["capabilities"]["acceptOrders"], true);

    // One dependency down: DEGRADED; nothing is shed yet.
    let s = drive_until(&cp1, &pods, &["sendgrid"], "DEGRADED").await;
    assert_eq!(s["unhealthy"], serde_json::json!(["sendgrid"]));
    // Half of the pods with the breaker open, or a success rate under 90%, is enough.
    let reason = s["reasons"][0].as_str().unwrap_or_default().to_string();
    assert!(reason.starts_with("sendgrid unhealthy ("), "{reason}");
    pods_at(&pods, "DEGRADED").await;
    assert_eq!(inbound(&pods[0], Some("low")).await.status, StatusCode::OK);

    // Two down: SEVERE, notifications gone, low priority shed with Retry-After.
    let s = drive_until(&cp1, &pods, &["sendgrid", "whatsapp"], "SEVERE").await;
    assert_eq!(s["capabilities"]["sendNotifications"], false);
    assert_eq!(s["capabilities"]["acceptOrders"], true);
    let caps = pods_at(&pods, "SEVERE").await;
    assert_eq!(caps[1]["capabilities"]["sendNotifications"], false);
    let app_before = pods[0].app.requests_to("/headers");
    let shed = inbound(&pods[0], Some("low")).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers["retry-after"], "60");
    assert_eq!(
        pods[0].app.requests_to("/headers"),
        app_before,
        "a shed request never reaches the app"
    );
    let served = inbound(&pods[0], None).await;
    assert_eq!(served.status, StatusCode::OK);
    // What the app saw of this very request (its `/headers` echo): the app's last request may
    // be the sidecar's own health probe of it.
    let seen = served.json()["headers"].clone();
    assert_eq!(seen["x-bulwark-degradation"][0], "SEVERE", "{seen}");
    assert_eq!(
        seen["x-bulwark-capabilities"][0], "acceptOrders=true,sendNotifications=false",
        "the app is told what it can do with every request"
    );
    assert_eq!(unready_pods(&pods).await, 0, "SEVERE keeps every pod ready");

    // Three down, one of them critical: EMERGENCY; normal traffic shed, high still served,
    // readiness off on at most 30% of the pods, and the caller fails fast its low calls.
    let failing = ["sendgrid", "whatsapp", "midtrans"];
    let s = drive_until(&cp1, &pods, &failing, "EMERGENCY").await;
    assert_eq!(s["capabilities"]["acceptOrders"], false);
    assert_eq!(s["unreadyPods"].as_array().map(Vec::len), Some(1));
    pods_at(&pods, "EMERGENCY").await;
    for pod in &pods {
        assert_eq!(
            inbound(pod, Some("normal")).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(inbound(pod, Some("high")).await.status, StatusCode::OK);
    }
    let unready = eventually(WAIT, || async {
        let n = unready_pods(&pods).await;
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(unready, 1, "with 4 pods, at most 1 goes unready");
    for pod in &pods {
        let ready = pod.sidecar.admin_get("/health/ready").await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                ready.text().contains("midtrans unhealthy"),
                "{}",
                ready.text()
            );
        }
    }
    // Calls go to /headers: the apps' health checks take /status/200.
    let call = |priority: &'static str| {
        let req = client::request(Method::GET, "http://order-orchestrator/headers")
            .header("x-priority", priority)
            .body(client::empty())
            .expect("request");
        client::send(&caller_http, req)
    };
    // Calls made before the caller's sidecar learns the level still go through.
    eventually(WAIT, || async {
        (call("low").await.status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let apps_before: u64 = pods.iter().map(|p| p.app.requests_to("/headers")).sum();
    let fail_fast = call("low").await;
    assert_eq!(fail_fast.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        fail_fast.text(),
        "upstream order-orchestrator is at EMERGENCY: low-priority calls fail fast\n"
    );
    assert_eq!(call("high").await.status, StatusCode::OK);
    let apps_after: u64 = pods.iter().map(|p| p.app.requests_to("/headers")).sum();
    assert_eq!(
        apps_after,
        apps_before + 1,
        "only the high-priority call reached an app"
    );

    // Recovery: the breakers close, and after lowerAfter the level comes back to NORMAL.
    drive_until(&cp1, &pods, &[], "NORMAL").await;
    pods_at(&pods, "NORMAL").await;
    assert_eq!(unready_pods(&pods).await, 0);
    assert_eq!(inbound(&pods[0], Some("low")).await.status, StatusCode::OK);

    // Every level change is an event, and reached the webhook exactly once, in order.
    let events = cp2
        .rest(
            Method::GET,
            "/v1/events?service=mrg/order-orchestrator",
            None,
        )
        .await;
    let mut events: Vec<Value> = events.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    events.reverse();
    let changes = level_changes(&events);
    assert_eq!(
        changes[..3],
        [
            ("NORMAL".to_string(), "DEGRADED".to_string()),
            ("DEGRADED".into(), "SEVERE".into()),
            ("SEVERE".into(), "EMERGENCY".into()),
        ]
    );
    assert_eq!(changes.last().map(|c| c.1.as_str()), Some("NORMAL"));
    let alerts = eventually(WAIT, || async {
        let alerts = hook.alerts();
        (level_changes(&alerts).len() == changes.len()).then_some(alerts)
    })
    .await;
    assert_eq!(level_changes(&alerts), changes);
    assert_eq!(alerts[0]["service"], "mrg/order-orchestrator");
    assert!(
        alerts
            .iter()
            .any(|a| a["text"].as_str().is_some_and(|t| t
                .starts_with("mrg/order-orchestrator NORMAL -> DEGRADED: sendgrid unhealthy ("))),
        "{alerts:?}"
    );
    let breaker_events = events.iter().filter(|e| e["kind"] == "breaker").count();
    assert_eq!(
        alerts.iter().filter(|a| a["kind"] == "breaker").count(),
        breaker_events,
        "one breaker alert per transition, however many pods saw it"
    );
    // Each delivered alert is an event too, naming the webhook's host only (a webhook's path
    // often holds its secret).
    let sent = eventually(WAIT, || async {
        let events = cp2
            .rest(
                Method::GET,
                "/v1/events?service=mrg/order-orchestrator&limit=1000",
                None,
            )
            .await;
        let sent: Vec<Value> = events.json()["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == "alert" && e["to"] == "sent")
            .cloned()
            .collect();
        (sent.len() == alerts.len()).then_some(sent)
    })
    .await;
    let prefix = format!("alert sent to {}: mrg/order-orchestrator", hook.addr());
    for e in &sent {
        let text = e["text"].as_str().unwrap_or_default();
        assert!(
            text.starts_with(&prefix) && !text.contains("/bulwark"),
            "{text}"
        );
    }
    drop(upstreams);
}

#[tokio::test]
async fn failover_pod_death_and_overrides() {
    let etcd = Etcd::start().await;
    let cp1 = ControlPlane::start_with(&etcd.endpoint(), "cp-1", &CP_ARGS).await;
    let cp2 = ControlPlane::start_with(&etcd.endpoint(), "cp-2", &CP_ARGS).await;
    let hook = WebhookReceiver::start(0).await;
    let mut upstreams = Vec::new();
    let mut docs = vec![orchestrator(&hook.url())];
    for dep in DEPS {
        let up = HttpUpstream::start().await;
        docs.push(dependency(dep, up.addr()));
        upstreams.push(up);
    }
    apply(&cp1, &policy::documents(&docs)).await;
    let mut pods = vec![
        pod(&[&cp1, &cp2], "orch-0").await,
        pod(&[&cp2, &cp1], "orch-1").await,
    ];
    eventually(WAIT, || async {
        drive(&pods, &[]).await;
        status(&cp1).await.filter(|s| s["reportingPods"] == 2)
    })
    .await;

    // An operator forces EMERGENCY for 3s: it shows everywhere, then ends by itself.
    let res = cp2.rest(Method::PUT,
        "/v1/degrade/mrg/order-orchestrator",
        Some(serde_json::json!({"level": "emergency", "ttl": "3s", "reason": "provider drill", "by": "alice"})),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["override"]["level"], "EMERGENCY");
    let s = eventually(WAIT, || async {
        status(&cp1).await.filter(|s| s["level"] == "EMERGENCY")
    })
    .await;
    assert_eq!(s["override"]["by"], "alice");
    assert_eq!(s["computed"], "NORMAL");
    assert_eq!(s["reasons"][0], "override by alice: provider drill");
    pods_at(&pods, "EMERGENCY").await;
    assert_eq!(
        inbound(&pods[0], Some("normal")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    eventually(WAIT, || async {
        status(&cp1)
            .await
            .filter(|s| s["level"] == "NORMAL" && s["override"].is_null())
    })
    .await;
    pods_at(&pods, "NORMAL").await;
    let events = cp1
        .rest(
            Method::GET,
            "/v1/events?service=mrg/order-orchestrator",
            None,
        )
        .await;
    let texts: Vec<String> = events.json()["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["text"].as_str().map(String::from))
        .collect();
    assert!(
        texts.contains(
            &"mrg/order-orchestrator forced to EMERGENCY by alice for 3s: provider drill"
                .to_string()
        ),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"mrg/order-orchestrator override EMERGENCY by alice expired".to_string()),
        "{texts:?}"
    );
    // A bad override names what is wrong.
    let bad = cp1
        .rest(
            Method::PUT,
            "/v1/degrade/mrg/order-orchestrator",
            Some(serde_json::json!({"level": "PANIC", "ttl": "3s", "reason": "x"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.json()["message"],
        "level must be NORMAL, DEGRADED, SEVERE or EMERGENCY, got \"PANIC\""
    );

    // Kill the elected replica: the other takes over and levels keep moving.
    let leader_is = |cp: &ControlPlane| {
        let http = client::http1_client(cp.http());
        async move {
            let text = client::get(&http, "http://control-plane/metrics")
                .await
                .text();
            text.lines().any(|l| l == "bulwark_leader 1")
        }
    };
    let (leader, survivor) = eventually(WAIT, || async {
        if leader_is(&cp1).await {
            Some((&cp1, &cp2))
        } else if leader_is(&cp2).await {
            Some((&cp2, &cp1))
        } else {
            None
        }
    })
    .await;
    leader.kill();
    eventually(WAIT, || async { leader_is(survivor).await.then_some(()) }).await;
    drive_until(survivor, &pods, &["sendgrid"], "DEGRADED").await;
    drive_until(survivor, &pods, &[], "NORMAL").await;
    let events = survivor
        .rest(
            Method::GET,
            "/v1/events?service=mrg/order-orchestrator",
            None,
        )
        .await;
    let mut events: Vec<Value> = events.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    events.reverse();
    let changes = level_changes(&events);
    let alerts = eventually(WAIT, || async {
        let alerts = hook.alerts();
        (level_changes(&alerts).len() >= changes.len()).then_some(alerts)
    })
    .await;
    assert_eq!(level_changes(&alerts), changes, "no alert twice, none lost");

    // A pod that dies stops counting once its report's lease runs out.
    let dead = pods.pop().expect("two pods");
    drop(dead);
    let s = eventually(WAIT, || async {
        status(survivor).await.filter(|s| s["reportingPods"] == 1)
    })
    .await;
    assert_eq!(s["level"], "NORMAL");

    // The same through meshctl, as an operator runs it.
    let forced = survivor.meshctl(&[
        "--by",
        "bob",
        "degrade",
        "order-orchestrator",
        "-n",
        "mrg",
        "--level",
        "severe",
        "--ttl",
        "1m",
        "--reason",
        "manual drill",
    ]);
    assert!(
        forced.starts_with("mrg/order-orchestrator forced to SEVERE until "),
        "{forced}"
    );
    assert!(forced.trim_end().ends_with("(manual drill)"), "{forced}");
    let table = eventually(WAIT, || async {
        let out = survivor.meshctl(&["status"]);
        out.contains("SEVERE (forced)").then_some(out)
    })
    .await;
    assert!(table.contains("mrg/order-orchestrator"), "{table}");
    let events = survivor.meshctl(&["events", "--service", "mrg/order-orchestrator"]);
    assert!(events.contains("manual drill"), "{events}");
    assert_eq!(
        survivor
            .meshctl(&["degrade", "order-orchestrator", "-n", "mrg", "--clear"])
            .trim_end(),
        "mrg/order-orchestrator override cleared"
    );
    eventually(WAIT, || async {
        status(survivor).await.filter(|s| s["level"] == "NORMAL")
    })
    .await;
    drop(upstreams);
}
