//! The Bulwark sidecar: an outbound proxy for the app's calls to upstreams, an inbound proxy
//! for calls to the app, and an admin listener; policies come from a [`source`] and are applied
//! as whole immutable snapshots.
//!
//! [`run`] is the whole program; `main.rs` only reads flags, sets up logging and waits for a
//! signal.

pub mod admin;
pub mod body;
pub mod config;
pub mod errors;
pub mod headers;
pub mod health;
pub mod identity;
pub mod metrics;
pub mod observe;
pub mod policy_stack;
pub mod proxy;
pub mod route;
pub mod server;
pub mod source;
pub mod upstream;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Config;
use crate::health::levels::LevelIndex;
use crate::health::probe::ProbeTarget;
use crate::metrics::Metrics;
use crate::proxy::Target;
use crate::route::{Identity, Snapshot};
use crate::server::{ConnLimits, Connections, Listener};
use crate::source::PolicySet;

/// State every request and the admin listener read.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    /// Breaker state changes, for whoever reports health.
    pub events: tokio::sync::broadcast::Sender<upstream::BreakerEvent>,
    pub identity: Identity,
    /// Set on shutdown: readiness fails so the pod is taken out of rotation.
    pub draining: AtomicBool,
    /// The header HTTP callers give their deadline in.
    pub deadline_header: Option<http::HeaderName>,
    /// Requests whose response has not ended, both directions (shutdown waits for them).
    pub in_flight: Arc<server::InFlight>,
    /// Degradation levels, the app probe's result, what the probe checks.
    pub health: health::Health,
}

impl Shared {
    /// The state of a sidecar that has applied no policy yet: NORMAL, no levels known.
    pub fn new(
        identity: Identity,
        pod: String,
        deadline_header: Option<http::HeaderName>,
    ) -> Shared {
        let shared = Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::empty(&identity)),
            metrics: Arc::new(Metrics::new()),
            events: tokio::sync::broadcast::channel(256).0,
            identity,
            draining: AtomicBool::new(false),
            in_flight: Arc::default(),
            health: health::Health::new(pod),
            deadline_header,
        };
        if let Some(service) = &shared.identity.service {
            // NORMAL until the control plane says otherwise (a file-source sidecar stays so).
            shared.metrics.degradation(
                &shared.identity.namespace,
                service,
                health::levels::Level::Normal,
                &BTreeMap::new(),
                None,
            );
        }
        shared
    }

    /// Builds and swaps in the snapshot for `set`; on failure the current one stays.
    pub fn apply(&self, set: &PolicySet) -> Result<(), String> {
        let current = self.snapshot.load_full();
        let env = upstream::BuildEnv {
            metrics: self.metrics.clone(),
            events: self.events.clone(),
            degradation: self.health.degradation.clone(),
            deadline_header: self.deadline_header.clone(),
        };
        match Snapshot::build(set, &current, &self.identity, &env) {
            Ok(next) => {
                tracing::info!(
                    version = %next.version,
                    source = %next.source,
                    upstreams = next.upstream_count(),
                    inbound_app = next.inbound.is_some(),
                    "policy snapshot applied"
                );
                let probe = ProbeTarget::from_policy(next.service.as_ref(), self.identity.app_port);
                self.snapshot.store(Arc::new(next));
                self.metrics.reload(true);
                self.refresh_retry_cap();
                self.health.probe.send_if_modified(|current| {
                    let changed = *current != probe;
                    *current = probe;
                    changed
                });
                Ok(())
            }
            Err(e) => {
                tracing::error!(version = %set.version, error = %e, "policy snapshot rejected; keeping the one in force");
                self.metrics.reload(false);
                Err(e)
            }
        }
    }

    /// Puts a `Levels` message from the control plane in force: each replaces the previous
    /// one whole. The own level's retry cap follows at once; requests read the rest per call.
    pub fn apply_levels(&self, levels: &bulwark_proto::v1::Levels) {
        let previous = self.health.degradation.swap(self.index_levels(levels));
        self.levels_changed(&previous);
    }

    /// Puts levels persisted by a previous run in force (booting without a control plane),
    /// unless the control plane sent newer ones meanwhile.
    pub fn restore_levels(&self, levels: &bulwark_proto::v1::Levels) -> bool {
        match self.health.degradation.restore(self.index_levels(levels)) {
            Some(previous) => {
                self.levels_changed(&previous);
                true
            }
            None => false,
        }
    }

    fn index_levels(&self, levels: &bulwark_proto::v1::Levels) -> LevelIndex {
        LevelIndex::from_wire(
            levels,
            &self.identity.namespace,
            self.identity.service.as_deref(),
        )
    }

    /// Logs, counts and follows a change of the levels in force.
    fn levels_changed(&self, previous: &LevelIndex) {
        let current = self.health.degradation.levels();
        let level = current.own_level();
        if previous.own_level() != level {
            let reasons = current
                .own()
                .map(|o| o.reasons.join(", "))
                .unwrap_or_default();
            let since = current.own().map(|o| o.since_unix_ms);
            tracing::info!(from = %previous.own_level(), to = %level, %reasons, ?since, "degradation level changed");
        }
        self.refresh_retry_cap();
        if let Some(service) = &self.identity.service {
            let empty = BTreeMap::new();
            self.metrics.degradation(
                &self.identity.namespace,
                service,
                level,
                current.own().map_or(&empty, |o| &o.capabilities),
                previous.own().map(|o| &o.capabilities),
            );
        }
    }

    /// The own level's `maxRetryAttempts` under the ServicePolicy in force.
    fn refresh_retry_cap(&self) {
        let level = self.health.degradation.levels().own_level();
        let cap = self.snapshot.load().actions.retry_cap(level);
        if self.health.degradation.retry_cap() != cap {
            tracing::info!(%level, cap = ?cap, "retry attempts cap changed");
        }
        self.health.degradation.set_retry_cap(cap);
    }
}

/// Runs the sidecar until `shutdown` resolves, then drains in-flight requests.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Bind first: a port taken is a start-up error, and the inbound port must be known to
    // refuse a policy that would send inbound traffic back to the sidecar itself.
    let admin = tokio::net::TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.admin))?;
    let mut listeners = vec![
        Listener::bind("outbound", config.outbound, Target::ByAuthority).await?,
        Listener::bind("inbound", config.inbound, Target::App).await?,
    ];
    let mut ports = BTreeMap::new();
    for (addr, name) in &config.upstream_ports {
        let l = Listener::bind(
            "upstream-port",
            *addr,
            Target::Fixed(Arc::from(name.as_str())),
        )
        .await?;
        ports.insert(name.clone(), l.local_addr().to_string());
        listeners.push(l);
    }
    let identity = Identity {
        namespace: config.namespace.clone(),
        service: config.service.clone(),
        app_port: config.app_port,
        inbound_port: Some(listeners[1].local_addr().port()),
    };
    let pod = config
        .pod
        .clone()
        .unwrap_or_else(|| format!("pid-{}", std::process::id()));
    let deadline_header = match config.deadline_header.trim() {
        "" => None,
        name => Some(
            http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .with_context(|| format!("--deadline-header {name:?} is not a header name"))?,
        ),
    };
    let shared = Arc::new(Shared::new(identity, pod, deadline_header));
    tokio::spawn(health::probe::run(
        shared.clone(),
        shared.health.probe.subscribe(),
    ));

    // Policies: from files (standalone), or from the control plane with the persisted
    // snapshot as the fallback. Listeners start either way; readiness waits for policies.
    let file_source = match &config.policies {
        Some(path) => {
            let (initial, fingerprint) = source::file::load(path).map_err(|errors| {
                anyhow::anyhow!(
                    "policies in {} are invalid:\n  {}",
                    path.display(),
                    errors.join("\n  ")
                )
            })?;
            shared
                .apply(&initial)
                .map_err(|e| anyhow::anyhow!("cannot apply policies: {e}"))?;
            Some((path.clone(), initial, fingerprint))
        }
        None => {
            start_control_plane_source(&config, &shared).await;
            None
        }
    };

    let admin_addr = admin.local_addr()?;
    let bound = serde_json::json!({
        "admin": admin_addr.to_string(),
        "outbound": listeners[0].local_addr().to_string(),
        "inbound": listeners[1].local_addr().to_string(),
        "ports": ports,
    });
    tracing::info!(listeners = %bound, "sidecar listening");
    if let Some(path) = &config.ready_file {
        write_atomically(path, &bound.to_string())
            .with_context(|| format!("cannot write ready file {}", path.display()))?;
    }

    // Policy reloads: the file watcher offers sets; each is applied whole.
    if let Some((path, initial, fingerprint)) = file_source {
        let (tx, mut rx) = watch::channel(initial);
        let watcher_metrics = shared.metrics.clone();
        tokio::spawn(source::file::watch(
            path,
            config.reload_interval,
            fingerprint,
            tx,
            move || watcher_metrics.reload(false),
        ));
        let applier = shared.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let set = rx.borrow_and_update().clone();
                let _ = applier.apply(&set);
            }
        });
    }

    // Two stop signals: inbound stops first (callers go elsewhere), outbound keeps serving the
    // app while it drains, and stops once no request is in flight.
    let (stop_inbound_tx, stop_inbound_rx) = watch::channel(false);
    let (stop_outbound_tx, stop_outbound_rx) = watch::channel(false);
    let builder = Arc::new(server::connection_builder(ConnLimits {
        max_header_bytes: config.max_header_bytes,
        header_read_timeout: config.header_read_timeout,
    }));
    let connections = Connections::default();
    let mut inbound_loops = Vec::new();
    let mut outbound_loops = Vec::new();
    for l in listeners {
        let inbound = matches!(l.target, Target::App);
        let stop = if inbound {
            stop_inbound_rx.clone()
        } else {
            stop_outbound_rx.clone()
        };
        let task = tokio::spawn(server::serve(
            l,
            shared.clone(),
            builder.clone(),
            connections.clone(),
            stop,
        ));
        if inbound {
            inbound_loops.push(task);
        } else {
            outbound_loops.push(task);
        }
    }
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(admin, shared.clone(), admin_stop_rx));

    shutdown.await;
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    tracing::info!(
        open_connections = connections.count(),
        in_flight = shared.in_flight.count(),
        drain_timeout = ?config.drain_timeout,
        "shutting down: inbound closed; outbound serves the app until no request is in flight"
    );
    shared.draining.store(true, Ordering::Relaxed);
    let _ = stop_inbound_tx.send(true);
    for l in inbound_loops {
        let _ = l.await;
    }
    if tokio::time::timeout_at(deadline, shared.in_flight.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = shared.in_flight.count(),
            "drain timeout passed with requests in flight"
        );
    }
    let _ = stop_outbound_tx.send(true);
    for l in outbound_loops {
        let _ = l.await;
    }
    let left = connections
        .drained(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain timeout passed; closing the remaining connections"
        );
    } else {
        tracing::info!("drained; exiting");
    }
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    Ok(())
}

/// Starts following the control plane; waits up to `--control-plane-timeout` for its first
/// snapshot, and boots from the snapshot file when none came.
async fn start_control_plane_source(config: &Config, shared: &Arc<Shared>) {
    let who = source::control_plane::Registration {
        namespace: config.namespace.clone(),
        service: config.service.clone().unwrap_or_default(), // required by clap in this mode
        pod: shared.health.pod.clone(),
    };
    let (applied_tx, mut applied_rx) = watch::channel(0i64);
    tokio::spawn(source::control_plane::follow(
        shared.clone(),
        config.control_plane.clone(),
        who,
        config.snapshot_file.clone(),
        config.report_interval,
        applied_tx.clone(),
    ));
    let first = tokio::time::timeout(
        config.control_plane_timeout,
        applied_rx.wait_for(|v| *v > 0),
    )
    .await;
    if matches!(first, Ok(Ok(_))) {
        return;
    }
    let Some(path) = &config.snapshot_file else {
        tracing::warn!(
            "no snapshot from the control plane yet and no --snapshot-file: serving nothing until one arrives"
        );
        return;
    };
    match source::control_plane::load_persisted(path) {
        Ok((version, set)) => {
            // Only a newer snapshot from the control plane replaces this one.
            if *applied_tx.borrow() == 0 && shared.apply(&set).is_ok() {
                applied_tx.send_replace(version);
                tracing::info!(path = %path.display(), version, "control plane not answering: booted from the persisted snapshot");
                restore_levels(shared, path);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "control plane not answering and no usable snapshot file")
        }
    }
}

/// Acts on the levels persisted beside the snapshot, as the last ones known.
fn restore_levels(shared: &Shared, snapshot_file: &std::path::Path) {
    let path = source::control_plane::levels_path(snapshot_file);
    if !path.exists() {
        return;
    }
    match source::control_plane::load_persisted_levels(&path) {
        Ok(levels) => {
            if shared.restore_levels(&levels) {
                let level = shared.health.degradation.levels().own_level();
                tracing::info!(path = %path.display(), %level, "acting on the persisted degradation levels");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the persisted degradation levels"),
    }
}

/// Writes `path` through a temporary file and a rename, so readers never see half of it.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
