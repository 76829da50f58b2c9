//! The mesh every scenario starts from, the load it carries, and the figures it records.

use std::path::PathBuf;
use std::time::Duration;

use bulwark_tests::load::{LoadReport, OpenLoad};
use bulwark_tests::policy::upstream_json;
use bulwark_tests::process::TempDir;
use bulwark_tests::{
    ControlPlane, EtcdCluster, HttpUpstream, PATIENCE, Reply, Sidecar, TcpProxy, client,
    eventually, wait_for,
};
use http::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Requests per second through each sidecar.
pub const RATE: u32 = 50;
/// Where the calls go: the upstream policy every sidecar has.
pub const URI: &str = "http://backend/status/200";
/// How long a change may take to reach every sidecar, or a replica to take over, before a
/// scenario fails (a bound, not the figure: the figure is measured).
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

/// Replica settings for the suite: a short election lease, so that a dead leader is replaced
/// within seconds (the default is 10s), and a short etcd timeout.
const REPLICA_ARGS: [&str; 4] = ["--leader-ttl", "3s", "--etcd-timeout", "2s"];

/// Only one scenario runs at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Mesh {
    pub etcd: EtcdCluster,
    /// One proxy per etcd member for each replica: blocking a replica's proxies partitions it
    /// from etcd while the other replica keeps its connections.
    pub proxies: Vec<Vec<TcpProxy>>,
    pub replicas: Vec<Option<ControlPlane>>,
    pub backend: HttpUpstream,
    pub sidecars: Vec<Option<Sidecar>>,
    /// Each sidecar's snapshot file, kept across its restarts.
    pub snapshots: Vec<PathBuf>,
    /// The revision of every apply that succeeded.
    pub applied: std::sync::Mutex<Vec<i64>>,
    /// Holds the snapshot files.
    _dir: TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Mesh {
    /// Starts the mesh and waits until both sidecars run the first policies.
    pub async fn start() -> Mesh {
        let turn = ONE_AT_A_TIME.lock().await;
        let etcd = EtcdCluster::start(3).await;
        let mut proxies = Vec::new();
        let mut replicas = Vec::new();
        for replica in 0..2 {
            let mut mine = Vec::new();
            for addr in etcd.addrs() {
                mine.push(TcpProxy::start(*addr).await);
            }
            let endpoints: Vec<String> = mine.iter().map(TcpProxy::endpoint).collect();
            let cp = ControlPlane::start_with(
                &endpoints.join(","),
                &format!("cp-{replica}"),
                &REPLICA_ARGS,
            )
            .await;
            cp.wait_fresh().await;
            proxies.push(mine);
            replicas.push(Some(cp));
        }
        let backend = HttpUpstream::start().await;
        let dir = TempDir::new();
        let mut mesh = Mesh {
            etcd,
            proxies,
            replicas,
            backend,
            sidecars: vec![None, None],
            snapshots: vec![
                dir.path().join("front-0.json"),
                dir.path().join("front-1.json"),
            ],
            applied: Default::default(),
            _dir: dir,
            _turn: turn,
        };
        let first = mesh.apply_marker("start").await;
        for pod in 0..2 {
            mesh.start_sidecar(pod).await;
        }
        mesh.converged(first).await;
        mesh
    }

    /// The replica `i` (panics if it was killed).
    pub fn replica(&self, i: usize) -> &ControlPlane {
        self.replicas[i].as_ref().expect("a running replica")
    }

    pub fn sidecar(&self, pod: usize) -> &Sidecar {
        self.sidecars[pod].as_ref().expect("a running sidecar")
    }

    /// Starts sidecar `pod` (again), on its snapshot file; sidecar 0 prefers replica 0 and
    /// sidecar 1 replica 1, so that each replica serves one.
    pub async fn start_sidecar(&mut self, pod: usize) {
        let order = if pod == 0 { [0, 1] } else { [1, 0] };
        let urls: Vec<String> = order
            .iter()
            .filter_map(|&i| self.replicas[i].as_ref().map(ControlPlane::grpc_url))
            .chain(self.dead_replica_urls(order))
            .collect();
        let sidecar = Sidecar::builder()
            .control_plane(urls.join(","))
            .snapshot_file(&self.snapshots[pod])
            .args(["--namespace", "default", "--service", "frontend"])
            .args(["--pod", &format!("front-{pod}")])
            .start()
            .await;
        self.sidecars[pod] = Some(sidecar);
    }

    /// Replicas that are gone still belong in a sidecar's list (an address that answers no
    /// more): a port nothing listens on.
    fn dead_replica_urls(&self, order: [usize; 2]) -> Vec<String> {
        order
            .iter()
            .filter(|&&i| self.replicas[i].is_none())
            .map(|_| format!("http://{}", bulwark_tests::fault::refused_addr()))
            .collect()
    }

    /// Open-loop load through sidecar `pod`.
    pub fn load(&self, pod: usize) -> OpenLoad {
        OpenLoad::start(
            client::http1_client(self.sidecar(pod).outbound()),
            URI,
            RATE,
        )
    }

    /// Load through both sidecars.
    pub fn load_both(&self) -> [OpenLoad; 2] {
        [self.load(0), self.load(1)]
    }

    /// Waits until `load` has sent `n` more requests (the fault's aftermath is under load too).
    pub async fn carry(&self, load: &OpenLoad, n: u64) {
        let target = load.so_far().sent + n;
        eventually(PATIENCE, || async {
            (load.so_far().sent >= target).then_some(())
        })
        .await;
    }

    /// Applies the backend's policy with a marker (a label that changes) through replica 0;
    /// the new revision. Panics unless it succeeds.
    pub async fn apply_marker(&self, marker: &str) -> i64 {
        self.try_apply(0, marker)
            .await
            .unwrap_or_else(|reply| panic!("apply {marker}: {reply}"))
    }

    /// Applies the backend's policy with `marker` through replica `via`: the revision, or why
    /// not. A revision returned is recorded: it must never be lost.
    pub async fn try_apply(&self, via: usize, marker: &str) -> Result<i64, String> {
        let mut resource = upstream_json("backend", &self.backend.addr().to_string());
        resource["metadata"]["labels"] = json!({ "chaos-marker": marker });
        let body = json!({ "resources": [resource], "by": "chaos" });
        let reply = self
            .replica(via)
            .call_as(
                self.replica(via).access(),
                Method::POST,
                "/v1/apply",
                Some(&body),
            )
            .await?;
        if reply.status != 200 {
            return Err(format!("{}: {}", reply.status, reply.json));
        }
        let revision = reply.json["revision"]
            .as_i64()
            .ok_or_else(|| format!("no revision in {}", reply.json))?;
        bulwark_tests::process::lock(&self.applied).push(revision);
        Ok(revision)
    }

    /// Waits until every running sidecar runs `revision` or later; how long that took.
    pub async fn converged(&self, revision: i64) -> Duration {
        let started = Instant::now();
        for sidecar in self.sidecars.iter().flatten() {
            bulwark_tests::try_eventually(CONVERGE_WITHIN, || async {
                let config = sidecar.admin_get("/config").await.json();
                let version: i64 = config["version"].as_str()?.parse().ok()?;
                (version >= revision).then_some(())
            })
            .await
            .unwrap_or_else(|| {
                panic!("revision {revision} did not reach every sidecar within {CONVERGE_WITHIN:?}")
            });
        }
        started.elapsed()
    }

    /// The lines where sidecar `pod` says it connected to a replica, oldest first.
    pub fn connections(&self, pod: usize) -> Vec<String> {
        self.sidecar(pod)
            .logs()
            .into_iter()
            .filter(|l| l.contains("connected to the control plane"))
            .collect()
    }

    /// The sidecars whose stream is on replica `i` now, each with how often it connected so
    /// far.
    pub fn streams_on(&self, i: usize) -> Vec<(usize, usize)> {
        let url = self.replica(i).grpc_url();
        (0..self.sidecars.len())
            .filter(|&pod| self.sidecars[pod].is_some())
            .filter_map(|pod| {
                let lines = self.connections(pod);
                let last = lines.last()?;
                last.contains(&url).then_some((pod, lines.len()))
            })
            .collect()
    }

    /// Waits until sidecar `pod` has connected more than `before` times.
    pub async fn reconnected(&self, pod: usize, before: usize) {
        bulwark_tests::try_eventually(CONVERGE_WITHIN, || async {
            (self.connections(pod).len() > before).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("sidecar {pod} did not reconnect within {CONVERGE_WITHIN:?}"));
    }

    /// The replicas that say they lead now (`bulwark_leader`).
    pub async fn leaders(&self) -> Vec<usize> {
        let mut leading = Vec::new();
        for (i, cp) in self.replicas.iter().enumerate() {
            if let Some(cp) = cp
                && cp.metric("bulwark_leader", &[]).await == Some(1.0)
            {
                leading.push(i);
            }
        }
        leading
    }

    /// The replica that leads now, once exactly one does.
    pub async fn leader(&self) -> usize {
        wait_for("exactly one leader", || async {
            let leading = self.leaders().await;
            (leading.len() == 1).then(|| leading[0])
        })
        .await
    }

    /// Waits until replica `i` is the only one that leads; never are two leading at once.
    pub async fn await_leader(&self, i: usize) {
        wait_for("a new leader", || async {
            let leading = self.leaders().await;
            assert!(leading.len() <= 1, "two replicas lead at once: {leading:?}");
            (leading == [i]).then_some(())
        })
        .await
    }

    /// Every policy stored in etcd, for comparing before and after a fault.
    pub fn stored_policies(&self) -> Vec<(String, String)> {
        self.etcd.dump("/bulwark/v1/policies/")
    }

    /// Asserts that every apply that succeeded is in etcd: the latest revision of the backend's
    /// policy is the last one applied, and reading it through `via` shows it.
    pub async fn assert_no_apply_lost(&self, via: usize) {
        let last = *bulwark_tests::process::lock(&self.applied)
            .iter()
            .max()
            .expect("something was applied");
        let reply: Reply = self
            .replica(via)
            .get("/v1/UpstreamPolicy/default/backend")
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        assert_eq!(
            reply.json["metadata"]["resourceVersion"].as_str(),
            Some(last.to_string().as_str()),
            "the last acknowledged apply is what is stored: {}",
            reply.json
        );
    }
}

/// Asserts that no request of `report` failed.
pub fn assert_no_failures(what: &str, report: &LoadReport) {
    assert!(report.sent > 0, "{what}: no load was sent");
    assert_eq!(
        report.failures.len(),
        0,
        "{what}: {} of {} requests failed:\n{}",
        report.failures.len(),
        report.sent,
        report.describe_failures()
    );
}

/// One scenario's figures, written to `target/tmp/chaos/{scenario}.json` and printed.
pub fn record(scenario: &str, load: &LoadReport, figures: Value) {
    let mut all = json!({
        "scenario": scenario,
        "requests": load.sent,
        "failed": load.failures.len(),
        "slowestMs": load.slowest.as_millis() as u64,
    });
    if let (Some(all), Some(more)) = (all.as_object_mut(), figures.as_object()) {
        all.extend(more.clone());
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos");
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            dir.join(format!("{scenario}.json")),
            serde_json::to_vec_pretty(&all).unwrap_or_default(),
        )
    });
    if let Err(e) = written {
        eprintln!(
            "chaos figures of {scenario} not written to {}: {e}",
            dir.display()
        );
    }
    println!("chaos figures: {all}");
}

/// Milliseconds, for figures.
pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}
