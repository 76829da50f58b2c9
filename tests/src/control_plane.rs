//! The real `control-plane` binary as a child process over a test etcd: REST, gRPC (and the
//! webhook, when asked for) on free ports read back from its ready file, output captured,
//! killed when the handle drops; and the REST calls tests make to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use http::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::Collected;
use crate::poll::{PATIENCE, try_eventually, wait_for};
use crate::process::{Logs, capture, kill, lock, unique_temp_dir};
use crate::rest::{self, Reply};

/// `$BULWARK_CONTROL_PLANE_BIN`, else `target/<profile>/control-plane` beside the sidecar.
pub fn control_plane_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BULWARK_CONTROL_PLANE_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the test executable's directory");
    dir.join("..").join("control-plane")
}

#[derive(Debug, Clone, Deserialize)]
struct Ready {
    http: SocketAddr,
    grpc: SocketAddr,
    #[serde(default)]
    webhook: Option<SocketAddr>,
    #[serde(default)]
    metrics: Option<SocketAddr>,
}

/// A running control-plane replica.
#[derive(Debug)]
pub struct ControlPlane {
    child: Mutex<Option<Child>>,
    dir: PathBuf,
    ready: Ready,
    logs: Logs,
    /// How the kit's own calls reach it: plain HTTP (`--insecure-dev`), or TLS with the
    /// development root and the development administrator's token.
    access: rest::Access,
}

impl ControlPlane {
    /// Starts a replica over `etcd_endpoints` and waits for its ready file.
    pub async fn start(etcd_endpoints: &str, replica: &str) -> ControlPlane {
        ControlPlane::start_with(etcd_endpoints, replica, &[]).await
    }

    /// Starts a replica with extra command-line arguments, with `--insecure-dev`: plaintext
    /// listeners, and calls without credentials act as an administrator.
    pub async fn start_with(etcd_endpoints: &str, replica: &str, extra: &[&str]) -> ControlPlane {
        let mut args = vec!["--insecure-dev"];
        args.extend_from_slice(extra);
        ControlPlane::spawn(etcd_endpoints, replica, &args, rest::Access::default()).await
    }

    /// Starts a replica as production runs it: TLS on every listener (its certificate issued by
    /// the development authority in `dev_identity`, made there on first start), authentication
    /// required. The kit's own calls use the development root and the development
    /// administrator's token (`dev_identity/admin.token`).
    pub async fn start_secure(
        etcd_endpoints: &str,
        replica: &str,
        dev_identity: &std::path::Path,
        extra: &[&str],
    ) -> ControlPlane {
        let dir = dev_identity.to_str().expect("a UTF-8 path");
        let mut args = vec!["--dev-identity", dir];
        args.extend_from_slice(extra);
        let mut cp =
            ControlPlane::spawn(etcd_endpoints, replica, &args, rest::Access::default()).await;
        let ca = std::fs::read(dev_identity.join("root.pem")).expect("the development root");
        let token = std::fs::read_to_string(dev_identity.join("admin.token")).ok();
        cp.access = rest::Access {
            ca: Some(ca),
            token: token.map(|t| t.trim().to_string()),
            certificate: None,
        };
        cp
    }

    /// How the kit reaches this replica (CA, token): a starting point for other clients.
    pub fn access(&self) -> &rest::Access {
        &self.access
    }

    fn scheme(&self) -> &'static str {
        if self.access.ca.is_some() {
            "https"
        } else {
            "http"
        }
    }

    async fn spawn(
        etcd_endpoints: &str,
        replica: &str,
        extra: &[&str],
        access: rest::Access,
    ) -> ControlPlane {
        // Tests write in quick bursts; a test of the write limit sets its own.
        let mut extra = extra.to_vec();
        if !extra.contains(&"--writes-per-second") {
            extra.extend_from_slice(&["--writes-per-second", "1000"]);
        }
        if !extra.contains(&"--write-burst") {
            extra.extend_from_slice(&["--write-burst", "1000"]);
        }
        let extra = extra.as_slice();
        let bin = control_plane_bin();
        assert!(
            bin.is_file(),
            "control-plane binary not found at {}: run `cargo build --workspace --bins` first",
            bin.display()
        );
        let dir = unique_temp_dir();
        std::fs::create_dir_all(&dir).expect("create the control plane's directory");
        let ready_path = dir.join("ready.json");
        let mut child = Command::new(&bin)
            .env_remove("BULWARK_ETCD_ENDPOINTS")
            .env_remove("BULWARK_ETCD_PREFIX")
            .env_remove("RUST_BACKTRACE")
            .env("RUST_LOG", "info,bulwark_control_plane=debug")
            .args(["--etcd-endpoints", etcd_endpoints])
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(["--replica-id", replica])
            .arg("--ready-file")
            .arg(&ready_path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let logs: Logs = Arc::default();
        if let Some(out) = child.stdout.take() {
            capture(out, logs.clone());
        }
        if let Some(err) = child.stderr.take() {
            capture(err, logs.clone());
        }
        let child = Mutex::new(Some(child));
        let ready = try_eventually(PATIENCE, || async {
            if let Some(c) = lock(&child).as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Some(Err(status));
            }
            let text = std::fs::read_to_string(&ready_path).ok()?;
            serde_json::from_str::<Ready>(&text).ok().map(Ok)
        })
        .await;
        match ready {
            Some(Ok(ready)) => ControlPlane {
                child,
                dir,
                ready,
                logs,
                access,
            },
            Some(Err(status)) => panic!(
                "the control plane exited ({status}) before it was ready:\n{}",
                lock(&logs).join("\n")
            ),
            None => panic!(
                "the control plane wrote no ready file within {PATIENCE:?}:\n{}",
                lock(&logs).join("\n")
            ),
        }
    }

    /// The REST API's address.
    pub fn http(&self) -> SocketAddr {
        self.ready.http
    }

    /// The gRPC URL sidecars and gRPC clients use (`http://127.0.0.1:PORT`, `https://` with
    /// TLS).
    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.ready.grpc)
    }

    /// The gRPC listener's address.
    pub fn grpc(&self) -> SocketAddr {
        self.ready.grpc
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS) of the REST API, for meshctl's `--server`.
    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.ready.http)
    }

    /// Runs the real `meshctl` against this replica and returns its standard output; it must
    /// succeed.
    pub fn meshctl(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.meshctl_run(args);
        assert_eq!(code, Some(0), "meshctl {args:?}: {stderr}");
        stdout
    }

    /// Runs the real `meshctl` against this replica: its exit status, stdout and stderr.
    pub fn meshctl_run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let bin = control_plane_bin().with_file_name("meshctl");
        let out = Command::new(&bin)
            .env_remove("RUST_BACKTRACE")
            .args(["--server", &self.http_url()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the real `meshctl` against this replica without waiting for it: for `--watch`,
    /// whose output is read line by line as it comes.
    pub fn meshctl_spawn(&self, args: &[&str]) -> Meshctl {
        let bin = control_plane_bin().with_file_name("meshctl");
        let mut child = Command::new(&bin)
            .env_remove("RUST_BACKTRACE")
            .args(["--server", &self.http_url()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
        let stdout = Logs::default();
        let stderr = Logs::default();
        if let Some(pipe) = child.stdout.take() {
            capture(pipe, stdout.clone());
        }
        if let Some(pipe) = child.stderr.take() {
            capture(pipe, stderr.clone());
        }
        Meshctl {
            child: Mutex::new(Some(child)),
            stdout,
            stderr,
        }
    }

    /// The metrics listener's plain-HTTP address, when started with `--metrics`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.ready.metrics
    }

    /// The webhook's HTTPS address, when started with `--webhook`.
    pub fn webhook(&self) -> Option<SocketAddr> {
        self.ready.webhook
    }

    /// The URL of a REST path.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.ready.http)
    }

    /// A REST call with the kit's access; it must get an answer.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        self.call_as(&self.access, method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A REST call with other credentials; the error says why there is no answer.
    pub async fn call_as(
        &self,
        access: &rest::Access,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        rest::request_with(access, method, &self.url(path), body).await
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> String {
        let (status, _, body) = rest::send_with(
            &self.access,
            Method::GET,
            &self.url("/metrics"),
            &[],
            Default::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("/metrics: {e}"));
        assert_eq!(status, 200, "/metrics: {}", String::from_utf8_lossy(&body));
        String::from_utf8_lossy(&body).into_owned()
    }

    /// One sample of `/metrics`, `None` when the series is absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        crate::metrics::value(&self.metrics_text().await, name, labels)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None).await
    }

    /// Applies `resources` (JSON), by `test`, expecting success; the answer's JSON.
    pub async fn apply_json(&self, resources: Vec<Value>) -> Value {
        let reply = self
            .post(
                "/v1/apply",
                serde_json::json!({"resources": resources, "by": "test"}),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        reply.json
    }

    /// Waits until the replica answers reads fresh (its etcd watch is up).
    pub async fn wait_fresh(&self) {
        wait_for("a fresh index", || async {
            let reply = self.get("/health/ready").await;
            (reply.status == 200 && !reply.stale()).then_some(())
        })
        .await;
    }

    /// A resource's pods in `/v1/status`: (applied, total, nacks).
    pub async fn pods_of(&self, id: &str) -> Option<(i64, i64, Value)> {
        let reply = self.get("/v1/status").await;
        let resource = reply.json["resources"]
            .as_array()?
            .iter()
            .find(|r| r["id"] == id)?
            .clone();
        Some((
            resource["pods"]["applied"].as_i64()?,
            resource["pods"]["total"].as_i64()?,
            resource["pods"]["nacks"].clone(),
        ))
    }

    /// One REST call; `body`, when given, is sent as JSON.
    pub async fn rest(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Collected {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, headers, body) = rest::send_with(
            &self.access,
            method,
            &self.url(path),
            &[("content-type", "application/json")],
            body.into(),
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        Collected {
            status,
            version: http::Version::HTTP_11,
            headers,
            body,
            trailers: None,
        }
    }

    /// POSTs `yaml`'s resources to `/v1/apply`, by `e2e`.
    pub async fn apply(&self, yaml: &str) -> Collected {
        let resources = bulwark_proto::policy::parse_yaml(yaml).expect("test policies parse");
        let body = serde_json::json!({ "resources": resources, "by": "e2e" });
        self.rest(Method::POST, "/v1/apply", Some(body)).await
    }

    pub fn logs(&self) -> Vec<String> {
        lock(&self.logs).clone()
    }

    /// Everything the replica wrote, one string.
    pub fn log(&self) -> String {
        self.logs().join("\n")
    }

    /// Waits until the replica has written `needle` at least `times` times — its output is
    /// read asynchronously, so a line logged just before a response may arrive after it —
    /// and returns everything it wrote.
    pub async fn wait_log(&self, needle: &str, times: usize) -> String {
        let met = try_eventually(PATIENCE, || async {
            let log = self.log();
            (log.matches(needle).count() >= times).then_some(log)
        })
        .await;
        met.unwrap_or_else(|| {
            panic!(
                "the replica did not log {needle:?} {times} time(s) within {PATIENCE:?}:\n{}",
                self.log()
            )
        })
    }

    /// Kills the replica at once (SIGKILL).
    pub fn kill(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            kill(&mut child);
        }
    }

    /// SIGTERM, and waits (without blocking the runtime, whose clients must go on answering)
    /// for the process to end.
    pub async fn terminate(&self) -> ExitStatus {
        let pid = lock(&self.child).as_ref().map(Child::id).expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let status = try_eventually(PATIENCE, || async {
            lock(&self.child).as_mut()?.try_wait().ok().flatten()
        })
        .await
        .expect("the control plane stops after SIGTERM");
        lock(&self.child).take();
        status
    }
}

/// A `meshctl` process still running (a watch), and what it printed so far.
pub struct Meshctl {
    child: Mutex<Option<Child>>,
    stdout: Logs,
    stderr: Logs,
}

impl Meshctl {
    /// Its stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.stdout).clone()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).join("\n")
    }

    /// Waits for a stdout line (after the first `skip`) that `matches`, and returns it.
    pub async fn await_line(&self, skip: usize, matches: impl Fn(&str) -> bool) -> String {
        let found = try_eventually(PATIENCE, || async {
            self.lines().into_iter().skip(skip).find(|l| matches(l))
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "meshctl printed no such line; stdout:\n{}\nstderr:\n{}",
                self.lines().join("\n"),
                self.stderr()
            )
        })
    }

    /// Waits for it to exit; its status.
    pub async fn exit(&self) -> ExitStatus {
        let status = try_eventually(PATIENCE, || async {
            lock(&self.child).as_mut()?.try_wait().ok().flatten()
        })
        .await;
        status.unwrap_or_else(|| panic!("meshctl did not exit; stderr: {}", self.stderr()))
    }
}

impl Drop for Meshctl {
    fn drop(&mut self) {
        if let Some(mut child) = lock(&self.child).take() {
            kill(&mut child);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = self.logs();
            eprintln!(
                "── control-plane log (last lines) ──\n{}",
                logs[logs.len().saturating_sub(60)..].join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
