//! Real etcd processes for end-to-end tests (Debian's `etcd-server`): one member or a cluster
//! of several, on free loopback ports with private data directories, healthy before use, killed
//! when the handle drops. A member can be stopped and started again on the same data to test
//! outages, and compacted to test watch recovery.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::poll::{eventually, try_eventually};
use crate::process::{TempDir, free_addr, kill, lock, unique_temp_dir};

/// How long etcd may take to become healthy.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Tries at starting a fresh etcd, each on new ports.
const START_ATTEMPTS: usize = 3;

/// A running (or stopped) single-member etcd.
#[derive(Debug)]
pub struct Etcd {
    child: Mutex<Option<Child>>,
    dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    tls: Option<EtcdTlsFiles>,
}

/// The certificates of an etcd that serves clients over TLS and requires a client certificate
/// (`--client-cert-auth`), all from one test CA.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate etcd accepts.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTlsFiles {
    /// Issues them from `ca` into `dir`.
    pub fn issue(ca: &crate::streams::TestCa, dir: &std::path::Path) -> EtcdTlsFiles {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a certificate file");
            path
        };
        let (server_cert, server_key) = ca.leaf_pem(&["127.0.0.1", "localhost"]);
        let (client_cert, client_key) = ca.leaf_pem(&["bulwark-control-plane"]);
        EtcdTlsFiles {
            ca: write("etcd-ca.pem", &ca.cert_pem()),
            server_cert: write("etcd-server.pem", &server_cert),
            server_key: write("etcd-server.key", &server_key),
            client_cert: write("etcd-client.pem", &client_cert),
            client_key: write("etcd-client.key", &client_key),
        }
    }
}

impl Etcd {
    /// Starts a fresh etcd and waits until it answers.
    pub async fn start() -> Etcd {
        Etcd::start_with(None).await
    }

    /// Starts a fresh etcd that serves clients over TLS only and requires a client
    /// certificate, and waits until it answers.
    pub async fn start_tls(tls: EtcdTlsFiles) -> Etcd {
        Etcd::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<EtcdTlsFiles>) -> Etcd {
        // A port found free may be taken by a neighbour test before etcd binds it: then etcd
        // exits at once, and is started again on other ports.
        for _ in 0..START_ATTEMPTS - 1 {
            let etcd = Etcd::on_free_ports(tls.clone());
            if etcd.try_resume().await.is_ok() {
                return etcd;
            }
        }
        let etcd = Etcd::on_free_ports(tls);
        etcd.resume().await;
        etcd
    }

    fn on_free_ports(tls: Option<EtcdTlsFiles>) -> Etcd {
        let dir = unique_temp_dir();
        std::fs::create_dir_all(&dir).expect("create etcd's directory");
        Etcd {
            child: Mutex::new(None),
            dir,
            client: free_addr(),
            peer: free_addr(),
            tls,
        }
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), for `--etcd-endpoints`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.client
    }

    /// Kills etcd at once (SIGKILL), keeping its data.
    pub fn kill(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            kill(&mut child);
        }
    }

    /// Kills etcd and starts it again on the same ports and data.
    pub async fn restart(&self) {
        self.kill();
        self.resume().await;
    }

    /// Starts etcd again on the same ports and data, and waits until it answers.
    pub async fn resume(&self) {
        if let Err(why) = self.try_resume().await {
            panic!("etcd on {}: {why}", self.client);
        }
    }

    /// Starts etcd on its ports and data and waits until it answers; why not, if it exits or
    /// stays unhealthy for [`ETCD_READY_TIMEOUT`].
    async fn try_resume(&self) -> Result<(), String> {
        let child = spawn_member(
            "test",
            &self.dir.join("data"),
            self.client,
            self.peer,
            &format!("test=http://{}", self.peer),
            self.tls.as_ref(),
            &[],
        );
        *lock(&self.child) = Some(child);
        let outcome = try_eventually(ETCD_READY_TIMEOUT, || async {
            if let Some(child) = lock(&self.child).as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Some(Err(format!("etcd exited at start ({status})")));
            }
            self.etcdctl(&["endpoint", "health"]).ok().map(|_| Ok(()))
        })
        .await;
        let outcome =
            outcome.unwrap_or_else(|| Err(format!("not healthy within {ETCD_READY_TIMEOUT:?}")));
        if outcome.is_err() {
            self.kill();
        }
        outcome
    }

    /// Runs `etcdctl` (API v3) against this etcd; `Err` carries its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        etcdctl(&self.endpoint(), self.tls.as_ref(), args)
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl(&["get", "--prefix", "--keys-only", prefix])
            .expect("etcdctl get")
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The keys an operator's writes leave under `prefix`: everything but the election key the
    /// replicas hold, the audit log (which records refused writes too) and what the elected
    /// replica writes on its own schedule — each service's computed `status/` and the `events/`
    /// feed, which appear whenever its level computation next runs, not when a write is made.
    pub fn stored_keys(&self, prefix: &str) -> Vec<String> {
        self.keys(prefix)
            .into_iter()
            .filter(|k| {
                !k.ends_with("/leader")
                    && !k.contains("/audit/")
                    && !k.contains("/status/")
                    && !k.contains("/events/")
            })
            .collect()
    }

    /// The current revision of the store.
    pub fn revision(&self) -> i64 {
        let status = self
            .etcdctl(&["endpoint", "status", "-w", "json"])
            .expect("etcdctl endpoint status");
        let v: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .expect("a revision in the status")
    }

    /// Compacts the history up to the current revision: watches from older revisions fail.
    pub fn compact(&self) -> i64 {
        let rev = self.revision();
        self.etcdctl(&["compact", &rev.to_string()])
            .expect("etcdctl compact");
        rev
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts one etcd member (`$BULWARK_ETCD_BIN`, else `etcd` on the PATH) named `name`, with
/// its data in `data`, in the cluster `initial` (`name=peer-url,…`).
fn spawn_member(
    name: &str,
    data: &std::path::Path,
    client: SocketAddr,
    peer: SocketAddr,
    initial: &str,
    tls: Option<&EtcdTlsFiles>,
    more: &[&str],
) -> Child {
    let bin = std::env::var_os("BULWARK_ETCD_BIN").unwrap_or_else(|| "etcd".into());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (client, peer) = (format!("{scheme}://{client}"), format!("http://{peer}"));
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    if let Some(tls) = tls {
        extra.extend([
            "--cert-file".into(),
            tls.server_cert.clone().into_os_string(),
        ]);
        extra.extend(["--key-file".into(), tls.server_key.clone().into_os_string()]);
        extra.extend(["--trusted-ca-file".into(), tls.ca.clone().into_os_string()]);
        extra.push("--client-cert-auth".into());
    }
    extra.extend(more.iter().map(Into::into));
    Command::new(&bin)
        .args(["--name", name])
        .arg("--data-dir")
        .arg(data)
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", initial])
        .args(["--initial-cluster-state", "new"])
        .args(&extra)
        .args([
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--log-level",
            "error",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("start etcd ({bin:?}): {e}; install Debian's etcd-server (scripts/test.sh does)")
        })
}

/// Several etcd members forming one cluster on loopback, with fast elections (50 ms
/// heartbeats, 500 ms election timeout). A member can be killed and started again on its data.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Mutex<Option<Child>>>,
    dir: TempDir,
    clients: Vec<SocketAddr>,
    peers: Vec<SocketAddr>,
    initial: String,
}

/// Fast elections, so that losing a member costs a test about a second.
const FAST_ELECTIONS: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

impl EtcdCluster {
    /// Starts `size` members and waits until each answers. A port found free may be taken by
    /// a neighbour test before a member binds it (then that member exits, and the cluster
    /// never forms): the whole cluster is started again on other ports.
    pub async fn start(size: usize) -> EtcdCluster {
        let mut why = String::new();
        for _ in 0..START_ATTEMPTS {
            let cluster = EtcdCluster::on_free_ports(size);
            for member in 0..size {
                cluster.spawn(member);
            }
            match cluster.try_await_all().await {
                Ok(()) => return cluster,
                // Dropping it kills every member.
                Err(e) => why = e,
            }
        }
        panic!("a {size}-member etcd cluster did not form in {START_ATTEMPTS} attempts: {why}");
    }

    fn on_free_ports(size: usize) -> EtcdCluster {
        let dir = TempDir::new();
        let clients: Vec<SocketAddr> = (0..size).map(|_| free_addr()).collect();
        let peers: Vec<SocketAddr> = (0..size).map(|_| free_addr()).collect();
        let initial = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://{p}"))
            .collect::<Vec<_>>()
            .join(",");
        EtcdCluster {
            members: (0..size).map(|_| Mutex::new(None)).collect(),
            dir,
            clients,
            peers,
            initial,
        }
    }

    /// Waits until every member answers; why not, when one exits or the cluster stays
    /// unhealthy for [`ETCD_READY_TIMEOUT`].
    async fn try_await_all(&self) -> Result<(), String> {
        let outcome = try_eventually(ETCD_READY_TIMEOUT, || async {
            for (member, child) in self.members.iter().enumerate() {
                if let Some(child) = lock(child).as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Some(Err(format!("member m{member} exited at start ({status})")));
                }
            }
            let endpoints: Vec<String> =
                self.clients.iter().map(|c| format!("http://{c}")).collect();
            // etcdctl blocks: not on the runtime, whose servers must go on answering.
            let healthy = tokio::task::spawn_blocking(move || {
                endpoints
                    .iter()
                    .all(|e| etcdctl(e, None, &["endpoint", "health"]).is_ok())
            })
            .await
            .unwrap_or(false);
            healthy.then_some(Ok(()))
        })
        .await;
        outcome.unwrap_or_else(|| Err(format!("not healthy within {ETCD_READY_TIMEOUT:?}")))
    }

    fn spawn(&self, member: usize) {
        let child = spawn_member(
            &format!("m{member}"),
            &self.dir.path().join(format!("m{member}")),
            self.clients[member],
            self.peers[member],
            &self.initial,
            None,
            &FAST_ELECTIONS,
        );
        *lock(&self.members[member]) = Some(child);
    }

    async fn await_healthy(&self, member: usize) {
        let endpoint = format!("http://{}", self.clients[member]);
        eventually(ETCD_READY_TIMEOUT, || {
            let endpoint = endpoint.clone();
            async move {
                // etcdctl blocks: not on the runtime, whose servers must go on answering.
                tokio::task::spawn_blocking(move || {
                    etcdctl(&endpoint, None, &["endpoint", "health"]).ok()
                })
                .await
                .ok()
                .flatten()
                .map(|_| ())
            }
        })
        .await;
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.clients.iter().map(|c| format!("http://{c}")).collect()
    }

    /// Every member's client address (to put a [`crate::TcpProxy`] in front of each).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.clients
    }

    /// SIGKILL one member, keeping its data.
    pub fn kill(&self, member: usize) {
        if let Some(mut child) = lock(&self.members[member]).take() {
            kill(&mut child);
        }
    }

    /// Starts a killed member again on its ports and data, without waiting: a member alone
    /// in a cluster without quorum does not report healthy until enough others are back.
    pub fn resume(&self, member: usize) {
        if lock(&self.members[member]).is_none() {
            self.spawn(member);
        }
    }

    /// Waits until every member answers `endpoint health` (which needs quorum).
    pub async fn await_all_healthy(&self) {
        for member in 0..self.members.len() {
            self.await_healthy(member).await;
        }
    }

    /// `etcdctl` against the whole cluster; its stdout, or stderr as the error.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        etcdctl(&self.endpoints().join(","), None, args)
    }

    /// Every stored key and value under `prefix`, in key order, for comparing what was stored
    /// before and after a fault.
    pub fn dump(&self, prefix: &str) -> Vec<(String, String)> {
        use base64::Engine as _;
        let out = self
            .etcdctl(&["get", "--prefix", prefix, "-w", "json"])
            .unwrap_or_else(|e| panic!("etcdctl get --prefix {prefix}: {e}"));
        let reply: serde_json::Value = serde_json::from_str(&out).expect("etcdctl's JSON");
        let decode = |v: &serde_json::Value| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .expect("etcdctl's base64");
            String::from_utf8_lossy(&bytes).into_owned()
        };
        reply["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (decode(&kv["key"]), decode(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Runs `etcdctl` against `endpoints` (comma-separated); its stdout, or stderr as the error.
fn etcdctl(endpoints: &str, tls: Option<&EtcdTlsFiles>, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .args(["--dial-timeout", "1s", "--command-timeout", "3s"]);
    if let Some(tls) = tls {
        cmd.arg("--cacert")
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.client_cert)
            .arg("--key")
            .arg(&tls.client_key);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("run etcdctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in 0..self.members.len() {
            self.kill(member);
        }
        let _ = self.dir.path();
    }
}
