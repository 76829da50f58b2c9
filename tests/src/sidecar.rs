//! The real `sidecar` binary as a child process: policies in a private temp directory, every
//! listener on a free port (read back from the ready file), output captured line by line, and
//! the process killed when the handle drops.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::client::{self, Collected};
use crate::metrics;
use crate::netns::Netns;
use crate::poll::try_eventually;
use crate::process::{capture, lock, unique_temp_dir};

/// How long the sidecar may take to bind its listeners and load its policies.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the sidecar binary is: `$BULWARK_SIDECAR_BIN`, else `target/<profile>/sidecar` next
/// to the `deps/` directory the test executable runs from.
pub fn sidecar_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BULWARK_SIDECAR_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the test executable's directory");
    dir.join("..").join("sidecar")
}

/// Where `bulwark-init` is: `$BULWARK_INIT_BIN`, else beside the sidecar.
pub fn init_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BULWARK_INIT_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the test executable's directory");
    dir.join("..").join("bulwark-init")
}

/// What the ready file says: where each listener is bound.
#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    pub admin: SocketAddr,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    #[serde(default)]
    pub ports: BTreeMap<String, SocketAddr>,
    /// The health listener, when started with `--health`.
    #[serde(default)]
    pub health: Option<SocketAddr>,
}

/// Captured output lines, stdout and stderr interleaved as they arrived.
pub use crate::process::Logs;

/// How a [`Sidecar`] is started.
#[derive(Debug, Clone)]
pub struct SidecarBuilder {
    policies: String,
    /// Control-plane mode: these addresses instead of a policy file.
    control_plane: Option<String>,
    /// Control-plane mode: the snapshot file (default: in the sidecar's temp directory).
    snapshot_file: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    reload_interval: String,
    /// Run inside this network namespace.
    netns: Option<Arc<Netns>>,
    /// Run as this user (the uid `bulwark-init` leaves uncaptured).
    uid: Option<u32>,
    /// `--capture`, on the fixed ports `bulwark-init` redirects to (15001 out, 15006 in,
    /// admin 15000).
    capture: bool,
}

/// A running sidecar process.
#[derive(Debug)]
pub struct Sidecar {
    child: Mutex<Child>,
    pid: u32,
    /// The namespace it runs in (its listeners are reached from inside it).
    netns: Option<Arc<Netns>>,
    dir: PathBuf,
    policy_path: PathBuf,
    ready: Ready,
    logs: Logs,
}

impl Sidecar {
    pub fn builder() -> SidecarBuilder {
        SidecarBuilder {
            policies: String::new(),
            control_plane: None,
            snapshot_file: None,
            args: Vec::new(),
            envs: Vec::new(),
            reload_interval: "100ms".to_string(),
            netns: None,
            uid: None,
            capture: false,
        }
    }

    pub fn outbound(&self) -> SocketAddr {
        self.ready.outbound
    }

    pub fn inbound(&self) -> SocketAddr {
        self.ready.inbound
    }

    pub fn admin(&self) -> SocketAddr {
        self.ready.admin
    }

    /// The local port bound with `--upstream-port ...=NAME`.
    pub fn port(&self, name: &str) -> SocketAddr {
        *self
            .ready
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no port for {name:?} in the ready file: {:?}", self.ready))
    }

    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The policy file the sidecar watches.
    pub fn policy_path(&self) -> &Path {
        &self.policy_path
    }

    /// Replaces the policy file in one step (write aside, then rename), so the sidecar never
    /// reads half a file.
    pub fn write_policies(&self, yaml: &str) {
        let aside = self.dir.join("policies.yaml.next");
        std::fs::write(&aside, yaml).expect("write the next policy file");
        std::fs::rename(&aside, &self.policy_path).expect("swap the policy file in");
    }

    /// Every output line so far.
    pub fn logs(&self) -> Vec<String> {
        lock(&self.logs).clone()
    }

    /// The output lines that are JSON objects.
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(serde_json::Value::is_object)
            .collect()
    }

    /// The access log lines of requests and tunnels (target `bulwark::access`), their fields.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.json_logs()
            .into_iter()
            .filter(|l| l["target"] == "bulwark::access")
            .map(|l| l["fields"].clone())
            .collect()
    }

    /// Whether any output line contains `text`, either as written or inside a JSON string
    /// value of the line (where quotes and backslashes are escaped).
    pub fn logs_contain(&self, text: &str) -> bool {
        self.logs().iter().any(|line| {
            line.contains(text)
                || serde_json::from_str::<serde_json::Value>(line)
                    .is_ok_and(|v| json_strings_contain(&v, text))
        })
    }

    /// The access-log line of the request with this `x-request-id` (its `fields` object).
    pub fn access_log(&self, request_id: &str) -> Option<serde_json::Value> {
        self.json_logs()
            .into_iter()
            .map(|line| line.get("fields").cloned().unwrap_or(line))
            .find(|fields| {
                fields.get("request_id").and_then(|v| v.as_str()) == Some(request_id)
                    && fields.get("status").is_some()
            })
    }

    /// The process's peak resident memory (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status of the sidecar");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .expect("VmHWM in /proc/PID/status")
    }

    /// `GET http://ADMIN{path}`.
    pub async fn admin_get(&self, path: &str) -> Collected {
        let admin = self.admin();
        let http = match &self.netns {
            Some(ns) => client::http1_client_in(ns, admin),
            None => client::http1_client(admin),
        };
        client::get(&http, &format!("http://{admin}{path}")).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let res = self.admin_get("/metrics").await;
        assert_eq!(res.status, 200, "GET /metrics: {}", res.text());
        res.text()
    }

    /// One sample of `/metrics` (see [`metrics::value`]); `None` when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metrics::value(&self.metrics_text().await, name, labels)
    }

    /// Waits (at most `timeout`) until the sample `name{labels}` equals `want` — counters may
    /// be updated just after the response that caused them — and returns it. A sample that
    /// never appears counts as 0.
    #[track_caller]
    pub fn await_metric<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
        want: f64,
        timeout: Duration,
    ) -> impl Future<Output = ()> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let last = std::cell::Cell::new(None);
            let met = try_eventually(timeout, || async {
                let text = self.metrics_text().await;
                let have = metrics::value(&text, name, labels).unwrap_or(0.0);
                last.set(Some(have));
                (have == want).then_some(())
            })
            .await;
            assert!(
                met.is_some(),
                "{caller}: {name}{labels:?} is {:?}, want {want} (waited {timeout:?})\n{}",
                last.get(),
                self.metrics_text().await
            );
        }
    }

    /// `GET /breakers` as JSON: `{"upstreams": [{"name", "namespace", "breaker", "outlier"}]}`.
    pub async fn breakers(&self) -> serde_json::Value {
        let res = self.admin_get("/breakers").await;
        assert_eq!(res.status, 200, "GET /breakers: {}", res.text());
        res.json()
    }

    /// The `/breakers` entry of the upstream `name` (any namespace), if listed.
    pub async fn breaker_entry(&self, name: &str) -> Option<serde_json::Value> {
        let all = self.breakers().await;
        all["upstreams"]
            .as_array()?
            .iter()
            .find(|u| u["name"] == name)
            .cloned()
    }

    /// The breaker state `/breakers` shows for `name`: `closed`, `open` or `half-open`.
    pub async fn breaker_state(&self, name: &str) -> Option<String> {
        self.breaker_entry(name)
            .await
            .and_then(|u| u["breaker"]["state"].as_str().map(str::to_string))
    }

    /// Waits (at most `timeout`) until `/breakers` shows `name`'s breaker in `state`.
    #[track_caller]
    pub fn await_breaker_state<'a>(
        &'a self,
        name: &'a str,
        state: &'a str,
        timeout: Duration,
    ) -> impl Future<Output = ()> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let met = try_eventually(timeout, || async {
                (self.breaker_state(name).await.as_deref() == Some(state)).then_some(())
            })
            .await;
            assert!(
                met.is_some(),
                "{caller}: the breaker of {name:?} is not {state:?} within {timeout:?}: {}",
                self.breakers().await
            );
        }
    }

    /// Waits (at most `timeout`) until `name`'s open breaker is due to let probes through: the
    /// breaker moves to half-open lazily, on the first request after `openFor`, so `/breakers`
    /// may still say `open` then; it is due when it says `half-open`, or `open` with
    /// `openUntilSecondsFromNow` at 0 (or, if that field is absent, `openedSecondsAgo` at least
    /// `open_for`). Returns the `/breakers` entry that showed it.
    #[track_caller]
    pub fn await_breaker_due<'a>(
        &'a self,
        name: &'a str,
        open_for: Duration,
        timeout: Duration,
    ) -> impl Future<Output = serde_json::Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let due = try_eventually(timeout, || async {
                let entry = self.breaker_entry(name).await?;
                let b = &entry["breaker"];
                let due = match b["state"].as_str()? {
                    "half-open" => true,
                    "open" => match b["openUntilSecondsFromNow"].as_f64() {
                        Some(left) => left <= 0.0,
                        None => b["openedSecondsAgo"]
                            .as_f64()
                            .is_some_and(|ago| ago >= open_for.as_secs_f64()),
                    },
                    _ => false,
                };
                due.then_some(entry)
            })
            .await;
            match due {
                Some(entry) => entry,
                None => panic!(
                    "{caller}: the breaker of {name:?} is not due for probes within {timeout:?}: {}",
                    self.breakers().await
                ),
            }
        }
    }

    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.pid);
    }

    /// The exit status, once the process has exited; `None` if it still runs after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        try_eventually(timeout, || async {
            lock(&self.child)
                .try_wait()
                .expect("poll the sidecar process")
        })
        .await
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        matches!(lock(&self.child).try_wait(), Ok(Some(_)))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let mut child = lock(&self.child);
        let _ = child.kill();
        let _ = child.wait();
        drop(child);
        if std::thread::panicking() {
            dump_logs(&self.logs);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn json_strings_contain(value: &serde_json::Value, text: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains(text),
        serde_json::Value::Array(items) => items.iter().any(|v| json_strings_contain(v, text)),
        serde_json::Value::Object(map) => map.values().any(|v| json_strings_contain(v, text)),
        _ => false,
    }
}

/// A failing test shows what the sidecar said.
fn dump_logs(logs: &Logs) {
    let logs = lock(logs);
    let from = logs.len().saturating_sub(200);
    eprintln!(
        "---- sidecar output (last {} lines) ----",
        logs.len() - from
    );
    for line in &logs[from..] {
        eprintln!("{line}");
    }
    eprintln!("---- end of sidecar output ----");
}

impl SidecarBuilder {
    /// Follow the control plane at `addrs` (comma-separated gRPC URLs) instead of a policy file.
    pub fn control_plane(mut self, addrs: impl Into<String>) -> Self {
        self.control_plane = Some(addrs.into());
        self
    }

    /// Keep the control-plane snapshot here (to restart a sidecar on the same file).
    pub fn snapshot_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot_file = Some(path.into());
        self
    }

    /// The content of the policy file (default: empty, no policies).
    pub fn policies_yaml(mut self, text: impl Into<String>) -> Self {
        self.policies = text.into();
        self
    }

    /// Another command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// `--reload-interval` (default `100ms`, so reload tests stay quick).
    pub fn reload_interval(mut self, interval: &str) -> Self {
        self.reload_interval = interval.to_string();
        self
    }

    /// Runs the sidecar inside `netns` (its listeners are reached from there too).
    pub fn netns(mut self, netns: &Arc<Netns>) -> Self {
        self.netns = Some(netns.clone());
        self
    }

    /// Runs the sidecar as `uid` (and its group): the uid iptables leaves uncaptured.
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// Serves captured connections (`--capture`) on the ports `bulwark-init` redirects to.
    pub fn capture(mut self) -> Self {
        self.capture = true;
        self
    }

    /// Starts the process and waits (at most [`READY_TIMEOUT`]) for its ready file.
    pub async fn start(self) -> Sidecar {
        let bin = sidecar_bin();
        assert!(
            bin.is_file(),
            "sidecar binary not found at {}: run `cargo build --workspace --bins` first",
            bin.display()
        );
        let dir = unique_temp_dir();
        std::fs::create_dir_all(&dir).expect("create the sidecar's temp directory");
        let policy_path = dir.join("policies.yaml");
        std::fs::write(&policy_path, &self.policies).expect("write the policy file");
        let ready_path = dir.join("ready.json");
        if let Some(uid) = self.uid {
            // The sidecar writes its ready file (and snapshot) here as that user.
            for path in [&dir, &policy_path] {
                std::os::unix::fs::chown(path, Some(uid), Some(uid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        }

        let mut cmd = match (&self.netns, self.uid) {
            (None, None) => Command::new(&bin),
            (None, Some(_)) => panic!("a sidecar runs as another user only in a namespace"),
            (Some(ns), None) => {
                let mut cmd = ns.command(&bin);
                cmd.arg("--");
                cmd
            }
            (Some(ns), Some(uid)) => {
                let mut cmd = ns.command("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(&bin);
                cmd
            }
        };
        // The sidecar reads its flags from the environment too: keep the test's own settings
        // from leaking in from the shell that runs the tests.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if (k.starts_with("BULWARK_") && k != "BULWARK_SIDECAR_BIN") || k.starts_with("POD_") {
                cmd.env_remove(&key);
            }
        }
        match &self.control_plane {
            None => {
                cmd.arg("--policies").arg(&policy_path);
            }
            Some(addrs) => {
                let snapshot = self
                    .snapshot_file
                    .clone()
                    .unwrap_or_else(|| dir.join("snapshot.json"));
                cmd.arg("--control-plane")
                    .arg(addrs)
                    .arg("--snapshot-file")
                    .arg(snapshot)
                    .args(["--control-plane-timeout", "2s"]);
            }
        }
        if self.capture {
            cmd.args(["--capture", "--outbound", "127.0.0.1:15001"])
                .args(["--inbound", "0.0.0.0:15006", "--admin", "127.0.0.1:15000"]);
        } else {
            cmd.args(["--outbound", "127.0.0.1:0"])
                .args(["--inbound", "127.0.0.1:0"])
                .args(["--admin", "127.0.0.1:0"]);
        }
        cmd.arg("--ready-file")
            .arg(&ready_path)
            .args(["--log-format", "json"])
            .arg("--reload-interval")
            .arg(&self.reload_interval)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let logs: Logs = Arc::default();
        let capturing: Vec<_> = [
            child.stdout.take().map(|out| capture(out, logs.clone())),
            child.stderr.take().map(|err| capture(err, logs.clone())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let pid = child.id();
        let child = Mutex::new(child);

        let ready = try_eventually(READY_TIMEOUT, || async {
            if let Ok(Some(status)) = lock(&child).try_wait() {
                return Some(Err(status));
            }
            let text = std::fs::read_to_string(&ready_path).ok()?;
            serde_json::from_str::<Ready>(&text).ok().map(Ok)
        })
        .await;
        match ready {
            Some(Ok(ready)) => Sidecar {
                child,
                pid,
                netns: self.netns,
                dir,
                policy_path,
                ready,
                logs,
            },
            Some(Err(status)) => {
                // The process is gone, so its pipes are closed: the capture threads end once
                // they have stored its last words.
                for thread in capturing {
                    let _ = thread.join();
                }
                dump_logs(&logs);
                let _ = std::fs::remove_dir_all(&dir);
                panic!("the sidecar exited with {status} before it was ready")
            }
            None => {
                let mut child = lock(&child);
                let _ = child.kill();
                let _ = child.wait();
                dump_logs(&logs);
                let _ = std::fs::remove_dir_all(&dir);
                panic!("the sidecar wrote no valid ready file within {READY_TIMEOUT:?}")
            }
        }
    }
}
