//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
//! playwright-core from `tests/browser`, installed by `npm ci` in the test command) against the
//! real control plane with TLS and etcd. A wrong token is refused and leaves no session; the
//! right one opens the overview with the session in an HttpOnly, Secure, SameSite=Strict
//! cookie; a level forced through the API shows in the page without a reload, and its event at
//! the top of the live events; a write made with
//! the cookie but without the CSRF token is refused and changes nothing. Screenshots go to
//! the test's scratch directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bulwark_tests::process::{Logs, capture, kill, lock};
use bulwark_tests::{ControlPlane, Etcd, TempDir, eventually};
use http::Method;
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
    fn start(url: &str, token: &str, shots: &Path) -> Scenario {
        let dir = browser_dir();
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "playwright-core is missing: npm ci --prefix tests/browser (scripts/test.sh does)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("dashboard.mjs"))
            .args([url, token, shots.to_str().expect("a UTF-8 path")])
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
    let mut browser = Scenario::start(&cp.url(""), &token, &shots);

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
