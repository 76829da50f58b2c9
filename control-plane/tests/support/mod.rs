//! Test kit for the control plane's integration tests: a real etcd process (free loopback
//! ports, temporary data dir, killed on drop), the real `control-plane` binary, a JSON HTTP
//! client, a sidecar stream client, a TCP proxy that can cut a replica off from etcd, and a
//! bounded `eventually`.
// Each test file uses part of the kit; a failed set-up step is a failed test.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_proto::v1::discovery_client::DiscoveryClient;
use bulwark_proto::v1::{
    Ack, ControlPlaneMessage, Hello, SidecarMessage, Snapshot, control_plane_message,
    sidecar_message,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long any awaited event may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "bulwark-cp-{what}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound, then released for the process that will use it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` until it answers `Some`, at most [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ───────────────────────────── etcd ─────────────────────────────

/// One etcd member on loopback.
pub struct Etcd {
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    starts: u32,
}

impl Etcd {
    pub async fn start() -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: TempDir::new("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
            starts: 0,
        };
        etcd.launch().await;
        etcd
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    async fn launch(&mut self) {
        self.starts += 1;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join(format!("etcd-{}.log", self.starts)))
            .unwrap();
        let child = Command::new("/usr/bin/etcd")
            .args(["--name", "t"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts (Debian's etcd-server at /usr/bin/etcd)");
        self.child = Some(child);
        let url = format!("{}/health", self.endpoint());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(reply) = try_request(hyper::Method::GET, &url, None).await
                && reply.status == 200
                && reply.json["health"] == "true"
            {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd did not become healthy:\n{}",
                    tail(
                        &self.dir.path().join(format!("etcd-{}.log", self.starts)),
                        30
                    )
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Runs `etcdctl` (API v3) against this member.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("/usr/bin/etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(args)
            .output()
            .expect("etcdctl runs");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The keys an operator's writes leave under `prefix`: everything but the election key
    /// the replicas hold.
    pub fn stored_keys(&self, prefix: &str) -> Vec<String> {
        self.keys(prefix)
            .into_iter()
            .filter(|k| !k.ends_with("/leader"))
            .collect()
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["get", "/bulwark-test-no-such-key", "-w", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Several etcd members forming one cluster on loopback, with fast elections.
pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    dir: TempDir,
    client_ports: Vec<u16>,
}

impl EtcdCluster {
    pub async fn start(size: usize) -> EtcdCluster {
        let dir = TempDir::new("etcd-cluster");
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let initial = (0..size)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", peer_ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for i in 0..size {
            let client = format!("http://127.0.0.1:{}", client_ports[i]);
            let peer = format!("http://127.0.0.1:{}", peer_ports[i]);
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
            let child = Command::new("/usr/bin/etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd starts");
            members.push(Some(child));
        }
        let cluster = EtcdCluster {
            members,
            dir,
            client_ports,
        };
        for endpoint in cluster.endpoints() {
            eventually("a healthy cluster member", || {
                let url = format!("{endpoint}/health");
                async move {
                    let reply = try_request(hyper::Method::GET, &url, None).await?;
                    (reply.status == 200 && reply.json["health"] == "true").then_some(())
                }
            })
            .await;
        }
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// SIGKILL one member.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].take() {
            kill(&mut child);
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in 0..self.members.len() {
            self.kill(member);
        }
        let _ = &self.dir;
    }
}

// ───────────────────────────── HTTP ─────────────────────────────

/// An HTTP answer with its body parsed as JSON (`Null` when it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn stale(&self) -> bool {
        self.header("x-bulwark-stale") == Some("true")
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `None` when the request could not be made (nothing listening).
pub async fn try_request(method: hyper::Method, url: &str, body: Option<&Value>) -> Option<Reply> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, client().request(request))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Some(Reply {
        status,
        headers,
        json,
    })
}

pub async fn request(method: hyper::Method, url: &str, body: Option<&Value>) -> Reply {
    try_request(method.clone(), url, body)
        .await
        .unwrap_or_else(|| panic!("{method} {url} got no answer"))
}

// ───────────────────────────── control plane ─────────────────────────────

/// One `control-plane` process.
pub struct ControlPlane {
    child: Option<Child>,
    dir: TempDir,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The webhook's HTTPS address, when started with `--webhook`.
    pub webhook: Option<SocketAddr>,
}

impl ControlPlane {
    pub async fn start(etcd_endpoints: &[String]) -> ControlPlane {
        Self::start_with(etcd_endpoints, &[]).await
    }

    pub async fn start_with(etcd_endpoints: &[String], extra: &[&str]) -> ControlPlane {
        let dir = TempDir::new("cp");
        let ready = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("control-plane.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_control-plane"))
            .arg("--etcd-endpoints")
            .arg(etcd_endpoints.join(","))
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready)
            .args(["--etcd-timeout", "2s"])
            .args(extra)
            .env("RUST_LOG", "info,bulwark_control_plane=debug")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the control-plane binary starts");
        let mut cp = ControlPlane {
            child: Some(child),
            dir,
            http: SocketAddr::from(([0, 0, 0, 0], 0)),
            grpc: SocketAddr::from(([0, 0, 0, 0], 0)),
            webhook: None,
        };
        let addrs: Value = eventually("the ready file", || {
            let ready = ready.clone();
            async move {
                let text = std::fs::read_to_string(&ready).ok()?;
                serde_json::from_str(&text).ok()
            }
        })
        .await;
        cp.http = addrs["http"].as_str().unwrap().parse().unwrap();
        cp.grpc = addrs["grpc"].as_str().unwrap().parse().unwrap();
        cp.webhook = addrs
            .get("webhook")
            .map(|w| w.as_str().unwrap().parse().unwrap());
        cp
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn get(&self, path: &str) -> Reply {
        request(hyper::Method::GET, &self.url(path), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        request(hyper::Method::POST, &self.url(path), Some(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        request(hyper::Method::DELETE, &self.url(path), None).await
    }

    /// Applies `resources`, expecting success.
    pub async fn apply(&self, resources: Vec<Value>) -> Value {
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
        eventually("a fresh index", || async {
            let reply = self.get("/health/ready").await;
            (reply.status == 200 && !reply.stale()).then_some(())
        })
        .await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control-plane.log")).unwrap_or_default()
    }

    /// SIGTERM, and waits (without blocking the runtime, whose clients must go on answering)
    /// for the process to end.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the control plane did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "── control-plane log (last lines) ──\n{}",
                tail(&self.dir.path().join("control-plane.log"), 60)
            );
        }
    }
}

// ───────────────────────────── resources ─────────────────────────────

pub fn upstream(name: &str, addr: &str) -> Value {
    serde_json::json!({
        "apiVersion": "bulwark/v1",
        "kind": "UpstreamPolicy",
        "metadata": {"name": name},
        "spec": {"endpoints": {"static": [addr]}}
    })
}

pub fn service(namespace: &str, name: &str, port: u16) -> Value {
    serde_json::json!({
        "apiVersion": "bulwark/v1",
        "kind": "ServicePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"app": {"port": port}}
    })
}

// ───────────────────────────── sidecar stream ─────────────────────────────

/// A sidecar's end of `Discovery.Stream`.
pub struct Sidecar {
    tx: mpsc::Sender<SidecarMessage>,
    inbound: tonic::Streaming<ControlPlaneMessage>,
}

impl Sidecar {
    pub async fn connect(
        cp: &ControlPlane,
        namespace: &str,
        service: &str,
        pod: &str,
        last_applied_version: i64,
    ) -> Sidecar {
        let mut client = DiscoveryClient::connect(cp.grpc_url())
            .await
            .expect("gRPC connects");
        let (tx, rx) = mpsc::channel(16);
        tx.send(SidecarMessage {
            message: Some(sidecar_message::Message::Hello(Hello {
                namespace: namespace.into(),
                service: service.into(),
                pod: pod.into(),
                last_applied_version,
            })),
        })
        .await
        .unwrap();
        let inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("the stream opens")
            .into_inner();
        Sidecar { tx, inbound }
    }

    /// The next snapshot (levels sent in between are skipped).
    pub async fn next_snapshot(&mut self) -> Snapshot {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.inbound.message())
                .await
                .expect("a snapshot in time")
                .expect("the stream is healthy")
                .expect("the stream is open");
            match message.message {
                Some(control_plane_message::Message::Snapshot(s)) => return s,
                Some(control_plane_message::Message::Levels(_)) => continue,
                None => panic!("an empty message"),
            }
        }
    }

    /// The stream's end: its error, if any (levels sent before it are skipped).
    pub async fn closed(&mut self) -> Option<tonic::Status> {
        loop {
            match tokio::time::timeout(PATIENCE, self.inbound.message())
                .await
                .expect("the stream ends in time")
            {
                Ok(None) => return None,
                Ok(Some(ControlPlaneMessage {
                    message: Some(control_plane_message::Message::Levels(_)),
                })) => continue,
                Ok(Some(m)) => panic!("expected the end of the stream, got {m:?}"),
                Err(status) => return Some(status),
            }
        }
    }

    pub async fn ack(&self, version: i64) {
        self.answer(version, "").await;
    }

    pub async fn nack(&self, version: i64, error: &str) {
        self.answer(version, error).await;
    }

    async fn answer(&self, version: i64, error: &str) {
        self.tx
            .send(SidecarMessage {
                message: Some(sidecar_message::Message::Ack(Ack {
                    version,
                    error: error.into(),
                })),
            })
            .await
            .unwrap();
    }
}

/// Names of a snapshot's resources, `Kind/namespace/name`.
pub fn names(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .resources
        .iter()
        .map(|r| format!("{}/{}/{}", r.kind, r.namespace, r.name))
        .collect()
}

/// The pod's counts for resource `id` in `/v1/status`: (applied, total, nacks).
pub async fn pods_of(cp: &ControlPlane, id: &str) -> Option<(i64, i64, Value)> {
    let reply = cp.get("/v1/status").await;
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

// ───────────────────────────── TCP proxy ─────────────────────────────

/// A TCP proxy in front of etcd that can cut every connection through it, and refuse new
/// ones, until told otherwise.
pub struct Proxy {
    pub addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = {
            let blocked = blocked.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if blocked.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(task.abort_handle());
                }
            })
        };
        Proxy {
            addr,
            blocked,
            connections,
            accept,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn block(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn unblock(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.block();
    }
}
