//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
//! playwright-core from `tests/browser`, installed by `npm ci` in the test command) against the
//! real control plane with TLS and etcd. A wrong token is refused and leaves no session; the
//! right one opens the overview with the session in an HttpOnly, Secure, SameSite=Strict
//! cookie; a level forced through the API shows in the page without a reload, and its event at
//! the top of the live events; a write made with
//! the cookie but without the CSRF token is refused and changes nothing. Screenshots go to
//! the test's scratch directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bulwark_tests::client;
use bulwark_tests::process::{Logs, capture, kill, lock};
use bulwark_tests::{ControlPlane, Etcd, Fault, HttpUpstream, Sidecar, TempDir, eventually};
use http::{Method, StatusCode};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(60);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// The browser scenario as a child process, and the steps it printed.
struct Scenario {
    child: Child,
    lines: Logs,
    errors: Logs,
}

impl Scenario {
    /// `node tests/browser/SCRIPT ARGS…`.
    fn start(script: &str, args: &[&str]) -> Scenario {
        let dir = browser_dir();
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "playwright-core is missing: npm ci --prefix tests/browser (scripts/test.sh does)"
        );
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node runs (apt-get install nodejs; scripts/test.sh installs it)");
        let lines = Logs::default();
        let errors = Logs::default();
        if let Some(out) = child.stdout.take() {
            capture(out, lines.clone());
        }
        if let Some(err) = child.stderr.take() {
            capture(err, errors.clone());
        }
        Scenario {
            child,
            lines,
            errors,
        }
    }

    /// The step named `name`, once the browser reached it.
    async fn step(&mut self, name: &str) -> Value {
        let found = bulwark_tests::try_eventually(STEP, || async {
            lock(&self.lines)
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["step"] == name)
        })
        .await;
        found.unwrap_or_else(|| {
            let status = self.child.try_wait().ok().flatten();
            panic!(
                "the browser never reached {name:?} (exited: {status:?}); stdout:\n{}\nstderr:\n{}",
                lock(&self.lines).join("\n"),
                lock(&self.errors).join("\n")
            )
        })
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

#[tokio::test]
async fn the_overview_logs_in_with_a_token_and_follows_levels_live() {
    let etcd = Etcd::start().await;
    let dir = TempDir::new();
    let cp =
        ControlPlane::start_secure(&etcd.endpoint(), "ui-1", &dir.path().join("ca"), &[]).await;
    cp.wait_fresh().await;
    let applied = cp
        .apply_json(vec![
            json!({"apiVersion": "bulwark/v1", "kind": "ServicePolicy",
                   "metadata": {"name": "orders", "namespace": "shop"}, "spec": {}}),
            json!({"apiVersion": "bulwark/v1", "kind": "ServicePolicy",
                   "metadata": {"name": "ledger", "namespace": "bank"}, "spec": {}}),
        ])
        .await;
    assert!(applied["results"].is_array(), "{applied}");
    // The levels exist before the browser looks.
    eventually(STEP, || async {
        let reply = cp.get("/v1/levels/shop/orders").await;
        (reply.status == 200).then_some(())
    })
    .await;

    let token = cp.access().token.clone().expect("the development token");
    let shots = dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).expect("a screenshot directory");
    let mut browser = Scenario::start(
        "dashboard.mjs",
        &[&cp.url(""), &token, shots.to_str().expect("a UTF-8 path")],
    );

    let refused = browser.step("refused").await;
    assert_eq!(refused["cookies"], 0, "a refused login sets no cookie");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("not authenticated") || e.contains("token")),
        "{refused}"
    );

    let overview = browser.step("overview").await;
    assert_eq!(overview["level"], "NORMAL", "{overview}");
    assert_eq!(overview["rows"], json!(["bank/ledger", "shop/orders"]));
    let cookies = browser.step("cookies").await;
    let session = cookies["cookies"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "bulwark_session"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        session,
        json!({"name": "bulwark_session", "httpOnly": true, "secure": true, "sameSite": "Strict"})
    );
    assert_eq!(cookies["script"], false, "no script reads the session");

    browser.step("waiting").await;
    let forced = cp
        .call(
            Method::PUT,
            "/v1/degrade/shop/orders",
            Some(&json!({"level": "EMERGENCY", "ttl": "10m", "reason": "dashboard test"})),
        )
        .await;
    assert_eq!(forced.status, 200, "{}", forced.json);
    let emergency = browser.step("emergency").await;
    assert_eq!(
        emergency["first"], "shop/orders",
        "the worst level sorts first"
    );
    assert!(
        emergency["text"]
            .as_str()
            .is_some_and(|t| t.contains("EMERGENCY (forced)")),
        "{emergency}"
    );

    let event = browser.step("event").await;
    // Newest first: the override, then the level change it caused, both at the top.
    assert_eq!(event["top"], "shop/orders", "{event}");
    assert!(
        event["text"]
            .as_str()
            .is_some_and(|t| t.contains("EMERGENCY") && t.contains("dashboard test")),
        "{event}"
    );
    assert_eq!(event["hiddenByFilter"], true);

    let csrf = browser.step("csrf").await;
    assert_eq!(csrf["refused"]["status"], 403, "{csrf}");
    assert_eq!(
        csrf["refused"]["body"]["message"],
        "a write made with the dashboard's session cookie must repeat its CSRF token in the x-bulwark-csrf header"
    );
    assert_eq!(
        csrf["stillForced"], true,
        "the refused write changed nothing"
    );
    assert_eq!(csrf["allowed"], 200);
    for shot in ["login.png", "overview.png", "overview-emergency.png"] {
        assert!(shots.join(shot).is_file(), "{shot} saved");
    }
    if let Ok(keep) = std::env::var("BULWARK_SCREENSHOTS") {
        for shot in ["login.png", "overview.png", "overview-emergency.png"] {
            let _ = std::fs::copy(shots.join(shot), Path::new(&keep).join(shot));
        }
    }
}

/// The session from the attacker's side, without a browser: a wrong or foreign token gets no
/// cookie; a forged cookie is not a session; a cookie-authenticated write without the CSRF
/// token is refused and stores nothing.
#[tokio::test]
async fn sessions_are_refused_without_a_good_token_and_writes_without_the_csrf_token() {
    let etcd = Etcd::start().await;
    let dir = TempDir::new();
    let cp =
        ControlPlane::start_secure(&etcd.endpoint(), "ui-2", &dir.path().join("ca"), &[]).await;
    cp.wait_fresh().await;
    let anonymous = cp.access().with_token(None);

    let reply = cp
        .call_as(
            &anonymous,
            Method::POST,
            "/ui/login",
            Some(&json!({"token": "forged"})),
        )
        .await
        .expect("an answer");
    assert_eq!(reply.status, 401, "{}", reply.json);
    assert_eq!(reply.json["error"], "unauthenticated");
    assert!(
        reply.headers.get("set-cookie").is_none(),
        "no cookie for a bad token"
    );

    let token = cp.access().token.clone().expect("the development token");
    let reply = cp
        .call_as(
            &anonymous,
            Method::POST,
            "/ui/login",
            Some(&json!({"token": token})),
        )
        .await
        .expect("an answer");
    assert_eq!(reply.status, 200, "{}", reply.json);
    let cookies: Vec<&str> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        cookies.iter().any(|c| c.starts_with("bulwark_session=")
            && c.contains("HttpOnly")
            && c.contains("Secure")
            && c.contains("SameSite=Strict")),
        "{cookies:?}"
    );

    // A forged session cookie is not a session.
    let (status, _, body) = bulwark_tests::rest::send_with(
        &anonymous,
        Method::GET,
        &cp.url("/v1/auth/whoami"),
        &[("cookie", "bulwark_session=forged")],
        bytes::Bytes::new(),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));

    // The real cookie without the CSRF token: no write, nothing stored.
    let session = format!("bulwark_session={token}; bulwark_csrf=abc");
    let apply = json!({"resources": [{"apiVersion": "bulwark/v1", "kind": "ServicePolicy",
                       "metadata": {"name": "orders", "namespace": "shop"}, "spec": {}}]})
    .to_string();
    for headers in [
        vec![
            ("cookie", session.as_str()),
            ("content-type", "application/json"),
        ],
        vec![
            ("cookie", session.as_str()),
            ("content-type", "application/json"),
            ("x-bulwark-csrf", "abd"),
        ],
    ] {
        let (status, _, body) = bulwark_tests::rest::send_with(
            &anonymous,
            Method::POST,
            &cp.url("/v1/apply"),
            &headers,
            bytes::Bytes::from(apply.clone()),
        )
        .await
        .expect("an answer");
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(cp.get("/v1/ServicePolicy/shop/orders").await.status, 404);
    // With it, the same write goes through as the token's user.
    let (status, _, body) = bulwark_tests::rest::send_with(
        &anonymous,
        Method::POST,
        &cp.url("/v1/apply"),
        &[
            ("cookie", session.as_str()),
            ("content-type", "application/json"),
            ("x-bulwark-csrf", "abc"),
        ],
        bytes::Bytes::from(apply),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(cp.get("/v1/ServicePolicy/shop/orders").await.status, 200);
}

/// Users of the incident room, by token (`--tokens-file`), and the join tokens of the pods.
const USERS: &str = "\
tokens:
  - { token: olga-token, user: olga }
  - { token: vera-token, user: vera }
";
const JOIN: &str = "\
tokens:
  - { token: orders-0-token, namespace: shop, serviceAccount: orders, pod: orders-0 }
  - { token: orders-1-token, namespace: shop, serviceAccount: orders, pod: orders-1 }
  - { token: storefront-0-token, namespace: shop, serviceAccount: storefront, pod: storefront-0 }
";

/// A pod with a workload identity from a join token: its app and its sidecar.
async fn pod(cp: &ControlPlane, dir: &Path, service: &str, pod: &str) -> (HttpUpstream, Sidecar) {
    let app = HttpUpstream::start().await;
    let token = dir.join(format!("{pod}.token"));
    std::fs::write(&token, format!("{pod}-token")).expect("write the join token");
    let root = dir.join("ca").join("root.pem");
    let sidecar = Sidecar::builder()
        .control_plane(cp.grpc_url())
        .args(["--namespace", "shop", "--service", service, "--pod", pod])
        .args(["--service-account", service, "--report-interval", "200ms"])
        .args(["--app-port", &app.addr().port().to_string()])
        .args(["--trust-anchors", path(&root)])
        .args(["--join-token-file", path(&token)])
        .start()
        .await;
    (app, sidecar)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Requests through the mesh until stopped: the storefront calls orders, each orders pod calls
/// payments — with a 503 fault while `failing` holds. Paced at 10 rounds a second, at most
/// 10 minutes.
fn traffic(
    storefront: SocketAddr,
    orders: Vec<SocketAddr>,
    failing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let front = client::http1_client(storefront);
        let pods: Vec<_> = orders.into_iter().map(client::http1_client).collect();
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..6000 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            pace.tick().await;
            let req = client::request(Method::GET, "http://orders/status/200")
                .body(client::empty())
                .expect("request");
            let _ = client::try_send(&front, req).await;
            for pod in &pods {
                let fault = if failing.load(Ordering::Relaxed) {
                    Fault::new().status(503)
                } else {
                    Fault::new()
                };
                let req = fault
                    .request(Method::GET, "http://payments/status/200")
                    .body(client::empty())
                    .expect("request");
                let _ = client::try_send(pod, req).await;
            }
        }
    })
}

fn violations(step: &Value, field: &str) -> Vec<Value> {
    step[field].as_array().cloned().unwrap_or_default()
}

/// The incident room in a real browser, against a real control plane (TLS, tokens, role
/// bindings), etcd and sidecars with workload identities: the operator sees a dependency's
/// failure turn the service DEGRADED with the breaker count on its edge, without reloading, and
/// forces EMERGENCY from the page; the viewer gets no override button and the API refuses its
/// forced write; the administrator sees a policy change reach every pod and rolls it back from
/// the history page. Each page passes axe-core's WCAG 2 A/AA rules.
#[tokio::test]
async fn the_incident_room_follows_a_failure_forces_a_level_and_rolls_back_a_policy() {
    let etcd = Etcd::start().await;
    let dir = TempDir::new();
    let users = dir.path().join("users.yaml");
    let join = dir.path().join("join.yaml");
    std::fs::write(&users, USERS).expect("write the users");
    std::fs::write(&join, JOIN).expect("write the join tokens");
    let cp = ControlPlane::start_secure(
        &etcd.endpoint(),
        "ui-3",
        &dir.path().join("ca"),
        &[
            "--tokens-file",
            path(&users),
            "--join-tokens",
            path(&join),
            "--levels-interval",
            "200ms",
            "--levels-min-gap",
            "50ms",
        ],
    )
    .await;
    cp.wait_fresh().await;
    for (name, role, user) in [
        ("shop-operators", "operator", "olga"),
        ("shop-viewers", "viewer", "vera"),
    ] {
        let bound = cp
            .call(
                Method::PUT,
                &format!("/v1/rolebindings/{name}"),
                Some(&json!({"role": role, "namespace": "shop",
                             "subjects": [{"kind": "User", "name": user}]})),
            )
            .await;
        assert_eq!(bound.status, 200, "{}", bound.json);
    }

    let payments = HttpUpstream::start().await;
    let (_orders_app_0, orders_0) = pod(&cp, dir.path(), "orders", "orders-0").await;
    let (_orders_app_1, orders_1) = pod(&cp, dir.path(), "orders", "orders-1").await;
    let (_front_app, storefront) = pod(&cp, dir.path(), "storefront", "storefront-0").await;
    let payments_v1 = format!(
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: payments, namespace: shop }}\nspec:\n  endpoints: {{ static: [\"{}\"] }}\n  circuitBreaker: {{ minRequests: 5, failureRate: 50%, openFor: 60s }}\n",
        payments.addr()
    );
    let applied = cp
        .apply(&format!(
            "\
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: {{ name: orders, namespace: shop }}
spec:
  serviceAccount: orders
  dependencies: {{ payments: {{ critical: true }} }}
  unhealthyWhen: {{ breakerOpenPods: 50% }}
  levels: {{ DEGRADED: {{ criticalUnhealthy: 1 }} }}
  capabilities: {{ takePayments: payments }}
  actions: {{ EMERGENCY: {{ shedPriorities: [low] }} }}
---
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: {{ name: storefront, namespace: shop }}
spec:
  serviceAccount: storefront
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: {{ name: orders, namespace: shop }}
spec:
  endpoints: {{ static: [\"{}\", \"{}\"] }}
---
{payments_v1}",
            orders_0.inbound(),
            orders_1.inbound()
        ))
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.text());
    let failing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let driver = traffic(
        storefront.outbound(),
        vec![orders_0.outbound(), orders_1.outbound()],
        failing.clone(),
        stop.clone(),
    );

    let shots = dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).expect("a screenshot directory");
    let admin = cp.access().token.clone().expect("the development token");
    let mut browser = Scenario::start(
        "incident.mjs",
        &[
            &cp.url(""),
            &admin,
            "olga-token",
            "vera-token",
            path(&shots),
        ],
    );

    let keyboard = browser.step("keyboard").await;
    assert_eq!(
        keyboard["reached"], true,
        "the service's link is reachable by Tab"
    );
    assert_eq!(
        keyboard["hash"], "#/services/shop/orders",
        "and Enter follows it"
    );

    let service = browser.step("service").await;
    let edge = service["payments"].as_str().unwrap_or_default();
    assert!(
        edge.starts_with("upstream shop/payments healthy 0/2 100%"),
        "the upstream edge, from both pods' reports: {edge}"
    );
    let caller = service["storefront"].as_str().unwrap_or_default();
    assert!(
        caller.starts_with("caller shop/storefront healthy 0/1 100%"),
        "{caller}"
    );
    assert_eq!(
        service["pods"].as_array().map(Vec::len),
        Some(2),
        "{service}"
    );
    for pod in service["pods"].as_array().into_iter().flatten() {
        let pod = pod.as_str().unwrap_or_default();
        assert!(
            pod.contains("spiffe://cluster.local/ns/shop/sa/orders") && pod.contains("ready"),
            "each pod with its identity and readiness: {pod}"
        );
    }
    assert_eq!(service["capabilities"], "takePayments: on");
    assert_eq!(service["forceButton"], 1, "an operator may force a level");
    assert_eq!(
        violations(&service, "a11yOverview"),
        Vec::<Value>::new(),
        "overview"
    );
    assert_eq!(
        violations(&service, "a11y"),
        Vec::<Value>::new(),
        "service page"
    );

    browser.step("await-failure").await;
    failing.store(true, Ordering::Relaxed);
    let degraded = browser.step("degraded").await;
    assert_eq!(
        degraded["notReloaded"], true,
        "the page followed without a reload"
    );
    let summary = degraded["summary"].as_str().unwrap_or_default();
    assert!(summary.starts_with("DEGRADED since"), "{summary}");
    assert!(
        summary.contains("payments unhealthy (breaker open on 2/2 pods)"),
        "the level's reason: {summary}"
    );
    assert_eq!(degraded["wire"]["health"], "unhealthy");
    assert_eq!(
        degraded["wire"]["breaker"], "2/2",
        "breaker open on N/M pods, on the edge"
    );
    assert!(
        degraded["wire"]["label"]
            .as_str()
            .is_some_and(|l| l.starts_with("unhealthy: breaker open on 2/2 pods")),
        "{degraded}"
    );
    assert_eq!(degraded["capabilities"], "takePayments: off");

    let forced = browser.step("forced").await;
    let dialog = forced["dialog"].as_str().unwrap_or_default();
    assert!(
        dialog.contains("Force shop/orders to EMERGENCY?")
            && dialog.contains("Level DEGRADED → EMERGENCY")
            && dialog.contains("For 10m")
            && dialog.contains("payments outage, incident 42")
            && dialog.contains("\"shedPriorities\": [ \"low\" ]"),
        "the confirmation says exactly what changes: {dialog}"
    );
    assert!(
        forced["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("EMERGENCY (forced)") && s.contains("Forced by olga")),
        "{forced}"
    );
    assert!(
        forced["event"]
            .as_str()
            .is_some_and(|e| e.contains("override")
                && e.contains("EMERGENCY")
                && e.contains("olga")),
        "{forced}"
    );
    assert_eq!(forced["clearButton"], 1);
    let stored = cp.get("/v1/levels/shop/orders").await;
    assert_eq!(stored.json["override"]["level"], "EMERGENCY");
    assert_eq!(
        stored.json["override"]["by"], "olga",
        "the authenticated user"
    );

    let viewer = browser.step("viewer").await;
    assert_eq!(
        viewer["forceButtons"], 0,
        "a viewer sees no override button"
    );
    assert_eq!(
        viewer["note"],
        "Forcing a level needs the operator role in shop."
    );
    assert_eq!(viewer["refused"]["status"], 403, "{viewer}");
    assert_eq!(viewer["refused"]["body"]["error"], "forbidden", "{viewer}");
    let after = cp.get("/v1/levels/shop/orders").await;
    assert_eq!(
        after.json["override"], stored.json["override"],
        "the refused write changed nothing"
    );
    let viewer_history = browser.step("viewer-history").await;
    assert_eq!(viewer_history["rollbackButtons"], 0);
    assert_eq!(
        viewer_history["note"],
        "Rolling back needs the editor role in shop."
    );

    let before = browser.step("await-apply").await;
    assert_eq!(
        violations(&before, "a11yPolicies"),
        Vec::<Value>::new(),
        "policies"
    );
    assert_eq!(
        violations(&before, "a11y"),
        Vec::<Value>::new(),
        "policy page"
    );
    let v1: i64 = before["version"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("the version shown");
    assert!(
        before["state"]
            .as_str()
            .is_some_and(|s| s == format!("Version {v1} applied on 3/3 pods: converged")),
        "every pod gets an UpstreamPolicy: {before}"
    );
    let v2 = cp
        .apply(&payments_v1.replace(
            "  circuitBreaker:",
            "  timeouts: { request: 2s }\n  circuitBreaker:",
        ))
        .await;
    assert_eq!(v2.status, StatusCode::OK, "{}", v2.text());
    let converged = browser.step("converged").await;
    let v2: i64 = converged["version"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("the new version");
    assert!(v2 > v1);
    assert_eq!(
        converged["state"],
        format!("Version {v2} applied on 3/3 pods: converged")
    );
    assert!(
        converged["diff"]
            .as_str()
            .is_some_and(|d| d.contains("+ timeouts:") && d.contains("+ request: 2s")),
        "the history shows the new version's diff: {converged}"
    );
    assert_eq!(
        converged["history"],
        json!([format!("{v2} updated"), format!("{v1} created")])
    );

    let rolled = browser.step("rolled-back").await;
    assert_eq!(
        rolled["changed"],
        json!(["-   timeouts:", "-     request: 2s"]),
        "the confirmation shows the diff the rollback applies: {rolled}"
    );
    let top = rolled["top"].as_str().unwrap_or_default();
    assert!(top.ends_with(" rolled-back"), "{rolled}");
    assert!(
        rolled["event"]
            .as_str()
            .is_some_and(|e| e.contains("rollback") && e.contains("dev-admin")),
        "{rolled}"
    );
    let now = cp.get("/v1/UpstreamPolicy/shop/payments").await;
    assert_eq!(now.status, 200);
    assert!(
        now.json["spec"].get("timeouts").is_none(),
        "the first version's content is back: {}",
        now.json
    );
    let errors = browser.step("errors").await;
    assert_eq!(errors["errors"], json!([]), "no script error on any page");
    stop.store(true, Ordering::Relaxed);
    let _ = driver.await;
    if let Ok(keep) = std::env::var("BULWARK_SCREENSHOTS") {
        for shot in [
            "service.png",
            "service-degraded.png",
            "confirm-override.png",
            "service-emergency.png",
            "policies.png",
            "policy.png",
            "confirm-rollback.png",
            "policy-rolled-back.png",
        ] {
            let _ = std::fs::copy(shots.join(shot), Path::new(&keep).join(shot));
        }
    }
}

/// The overview with 1,000 services, in the browser: every one listed (the count) while the page
/// holds only the rows in view, a level change shown by building its one row, and the last
/// service reached by scrolling. The times measured are printed and recorded in
/// docs/dashboard.md; the bounds asserted are generous multiples of them.
#[tokio::test]
async fn a_thousand_services_render_within_bounds() {
    const SERVICES: usize = 1000;
    let etcd = Etcd::start().await;
    let dir = TempDir::new();
    let cp = ControlPlane::start_secure(
        &etcd.endpoint(),
        "ui-4",
        &dir.path().join("ca"),
        &["--levels-interval", "200ms", "--levels-min-gap", "50ms"],
    )
    .await;
    cp.wait_fresh().await;
    let policies: Vec<Value> = (0..SERVICES)
        .map(|i| {
            json!({"apiVersion": "bulwark/v1", "kind": "ServicePolicy",
                   "metadata": {"name": format!("svc-{i:04}"), "namespace": "load"}, "spec": {}})
        })
        .collect();
    // etcd takes at most 128 operations per transaction: 25 policies (50 puts) per apply.
    for batch in policies.chunks(25) {
        let applied = cp.apply_json(batch.to_vec()).await;
        assert!(applied["results"].is_array(), "{applied}");
    }
    eventually(Duration::from_secs(120), || async {
        let reply = cp.get("/v1/levels").await;
        let n = reply.json["services"].as_array().map_or(0, Vec::len);
        (n == SERVICES).then_some(())
    })
    .await;

    let token = cp.access().token.clone().expect("the development token");
    let shots = dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).expect("a screenshot directory");
    let mut browser = Scenario::start("thousand.mjs", &[&cp.url(""), &token, path(&shots)]);
    let loaded = browser.step("loaded").await;
    eprintln!("1,000 services: {loaded}");
    let rows = loaded["rows"].as_u64().unwrap_or(u64::MAX);
    assert!(
        rows <= 60,
        "only the rows in view are in the page: {loaded}"
    );
    assert!(
        loaded["ms"].as_u64().is_some_and(|ms| ms < 10_000),
        "listed within 10 s of logging in: {loaded}"
    );
    assert!(
        loaded["stats"]["maxMs"]
            .as_f64()
            .is_some_and(|ms| ms < 1000.0),
        "no batch takes the page a second: {loaded}"
    );

    let refiltered = browser.step("refiltered").await;
    assert_eq!(refiltered["filtered"], 1, "{refiltered}");
    assert_eq!(
        refiltered["rows"], loaded["rows"],
        "cleared a filter, the rows fill the view as tall as it has grown: {refiltered}"
    );
    browser.step("await-force").await;
    let forced = cp
        .call(
            Method::PUT,
            "/v1/degrade/load/svc-0500",
            Some(&json!({"level": "EMERGENCY", "ttl": "10m", "reason": "load test"})),
        )
        .await;
    assert_eq!(forced.status, 200, "{}", forced.json);
    let shown = browser.step("forced").await;
    eprintln!("one change among 1,000: {shown}");
    assert_eq!(
        shown["first"], "load/svc-0500",
        "the worst level sorts first"
    );
    assert!(
        shown["built"]
            .as_u64()
            .is_some_and(|n| (1..=2).contains(&n)),
        "a change builds its own row only: {shown}"
    );
    assert!(
        shown["lastMs"].as_f64().is_some_and(|ms| ms < 100.0),
        "and costs the page little: {shown}"
    );
    let scrolled = browser.step("scrolled").await;
    assert_eq!(scrolled["last"], "load/svc-0999", "{scrolled}");
    assert_eq!(
        scrolled["rowcount"], "1001",
        "the table says how many rows it has"
    );
    assert!(
        scrolled["rows"].as_u64().is_some_and(|n| n <= 60),
        "{scrolled}"
    );
    if let Ok(keep) = std::env::var("BULWARK_SCREENSHOTS") {
        let _ = std::fs::copy(
            shots.join("overview-1000.png"),
            Path::new(&keep).join("overview-1000.png"),
        );
    }
}
