//! A real etcd process for end-to-end tests (Debian's `etcd-server`): free loopback ports, a
//! private data directory, healthy before use, killed when the handle drops. It can be stopped
//! and started again on the same data to test outages, and compacted to test watch recovery.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::counters::lock;
use crate::poll::try_eventually;
use crate::sidecar::unique_temp_dir;

/// How long etcd may take to become healthy.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) single-member etcd.
#[derive(Debug)]
pub struct Etcd {
    child: Mutex<Option<Child>>,
    dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
}

fn free_port() -> SocketAddr {
    // Bound and released at once: etcd binds it a moment later (a collision is possible but
    // rare, and shows as a start failure, not a wrong result).
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

impl Etcd {
    /// Starts a fresh etcd and waits until it answers.
    pub async fn start() -> Etcd {
        let dir = unique_temp_dir();
        std::fs::create_dir_all(&dir).expect("create etcd's directory");
        let etcd = Etcd {
            child: Mutex::new(None),
            dir,
            client: free_port(),
            peer: free_port(),
        };
        etcd.resume().await;
        etcd
    }

    /// `http://127.0.0.1:PORT`, for `--etcd-endpoints`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Kills etcd at once (SIGKILL), keeping its data.
    pub fn kill(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data, and waits until it answers.
    pub async fn resume(&self) {
        let bin = std::env::var_os("BULWARK_ETCD_BIN").unwrap_or_else(|| "etcd".into());
        let child = Command::new(&bin)
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", self.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", self.peer))
            .arg("--initial-cluster")
            .arg(format!("test=http://{}", self.peer))
            .args(["--initial-cluster-state", "new"])
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
                panic!(
                    "start etcd ({bin:?}): {e}; install Debian's etcd-server (scripts/test.sh does)"
                )
            });
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
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(["--dial-timeout", "1s", "--command-timeout", "3s"])
            .args(args)
            .output()
            .map_err(|e| format!("run etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
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
