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
        let dir = unique_temp_dir();
        std::fs::create_dir_all(&dir).expect("create etcd's directory");
        let etcd = Etcd {
            child: Mutex::new(None),
            dir,
            client: free_addr(),
            peer: free_addr(),
            tls,
        };
        etcd.resume().await;
        etcd
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
        let healthy = try_eventually(ETCD_READY_TIMEOUT, || async {
            self.etcdctl(&["endpoint", "health"]).ok().map(|_| ())
        })
        .await;
        assert!(
            healthy.is_some(),
            "etcd on {} not healthy within {ETCD_READY_TIMEOUT:?}",
            self.client
        );
    }

    /// Runs `etcdctl` (API v3) against this etcd; `Err` carries its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(["--dial-timeout", "1s", "--command-timeout", "3s"]);
        if let Some(tls) = &self.tls {
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
    /// replicas hold and the audit log (which records refused writes too).
    pub fn stored_keys(&self, prefix: &str) -> Vec<String> {
        self.keys(prefix)
            .into_iter()
            .filter(|k| !k.ends_with("/leader") && !k.contains("/audit/"))
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
/// heartbeats, 500 ms election timeout).
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Mutex<Option<Child>>>,
    dir: TempDir,
    clients: Vec<SocketAddr>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until each answers.
    pub async fn start(size: usize) -> EtcdCluster {
        let dir = TempDir::new();
        let clients: Vec<SocketAddr> = (0..size).map(|_| free_addr()).collect();
        let peers: Vec<SocketAddr> = (0..size).map(|_| free_addr()).collect();
        let initial = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for i in 0..size {
            let child = spawn_member(
                &format!("m{i}"),
                &dir.path().join(format!("m{i}")),
                clients[i],
                peers[i],
                &initial,
                None,
                // Fast elections, so that losing a member costs a test about a second.
                &["--heartbeat-interval", "50", "--election-timeout", "500"],
            );
            members.push(Mutex::new(Some(child)));
        }
        let cluster = EtcdCluster {
            members,
            dir,
            clients,
        };
        for endpoint in cluster.endpoints() {
            eventually(ETCD_READY_TIMEOUT, || async {
                let out = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", &endpoint, "endpoint", "health"])
                    .output()
                    .ok()?;
                out.status.success().then_some(())
            })
            .await;
        }
        cluster
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.clients.iter().map(|c| format!("http://{c}")).collect()
    }

    /// SIGKILL one member.
    pub fn kill(&self, member: usize) {
        if let Some(mut child) = lock(&self.members[member]).take() {
            kill(&mut child);
        }
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
