//! The Bulwark sidecar: an outbound proxy for the app's calls to upstreams, an inbound proxy
//! for calls to the app, and an admin listener; policies come from a [`source`] and are applied
//! as whole immutable snapshots.
//!
//! The modules follow a request's path, each using only those after it:
//! [`listen`] (accept, detect, serve, proxy one request) → [`route`] (which upstream) →
//! [`policy_stack`] (the upstream's resilience layers) → [`balance`] (which endpoint) →
//! [`upstream`] (connections) → [`body`]. Beside the path: [`state`] (what requests and the
//! admin listener share), [`source`] (policies and health reports), [`health`] (levels, the app
//! probe, readiness), [`admin`], and the leaves [`errors`], [`headers`], [`metrics`],
//! [`priority`], [`trace`], [`idle`], [`overload`] (the adaptive limit's arithmetic) and
//! [`config`].
//!
//! [`run`] is the whole program; `main.rs` only reads flags, sets up logging and waits for a
//! signal.

pub mod admin;
pub mod balance;
pub mod body;
pub mod channel;
pub mod config;
pub mod errors;
pub mod headers;
pub mod health;
pub mod identity;
pub mod idle;
pub mod listen;
pub mod metrics;
pub mod overload;
pub mod policy_stack;
pub mod priority;
pub mod route;
pub mod source;
pub mod state;
#[cfg(test)]
mod testing;
pub mod trace;
pub mod upstream;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use bulwark_proto::fs::{Durability, write_atomically};
use tokio::sync::watch;

use crate::config::Config;
use crate::identity::{Identity, IdentitySettings, ProofSource};
use crate::listen::{ConnLimits, Connections, Listener, Target};
use crate::route::LocalService;
use crate::state::Shared;

/// Runs the sidecar until `shutdown` resolves, then drains in-flight requests.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Bind first: a port taken is a start-up error, and the inbound port must be known to
    // refuse a policy that would send inbound traffic back to the sidecar itself.
    let admin = tokio::net::TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.admin))?;
    let health = match config.health {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (health)"))?,
        ),
        None => None,
    };
    let mut listeners = vec![
        Listener::bind("outbound", config.outbound, Target::ByAuthority).await?,
        Listener::bind("inbound", config.inbound, Target::App).await?,
    ];
    if config.capture {
        for l in &mut listeners {
            l.capture = Some(config.detect_timeout);
        }
        // ip6tables redirects IPv6 connections to the same ports over IPv6: the app's to
        // [::1], the pod's callers' to the pod's IPv6 address.
        let twins = [
            ("outbound", listeners[0].local_addr(), Target::ByAuthority),
            ("inbound", listeners[1].local_addr(), Target::App),
        ];
        for (name, v4, target) in twins {
            match Listener::bind_v6_twin(name, v4, target) {
                Some(Ok(l)) => listeners.push(l.capturing(config.detect_timeout)),
                Some(Err(e)) => {
                    tracing::info!(listener = name, error = %e, "no IPv6 listener: IPv6 connections are not captured")
                }
                None => {}
            }
        }
    }
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
    let local = LocalService {
        namespace: config.namespace.clone(),
        service: config.service.clone(),
        app_port: config.app_port,
        inbound_port: Some(listeners[1].local_addr().port()),
        mtls_default: config.inbound_mtls,
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
    let identity = identity_settings(&config)?;
    let mut identity = match identity {
        Some((settings, anchors_pem)) => {
            let identity = Arc::new(Identity::new(settings.id.clone(), &anchors_pem).map_err(
                |e| anyhow::anyhow!("--trust-anchors {}: {e}", settings.anchors.display()),
            )?);
            Some((identity, settings, anchors_pem))
        }
        None => None,
    };
    let control_plane_tls = control_plane_tls(&config, identity.as_ref().map(|(i, _, _)| i))?;
    if let Some((_, settings, _)) = identity.as_mut() {
        settings.tls = control_plane_tls.clone();
    }
    let link = source::control_plane::Link {
        tls: control_plane_tls,
        certified: identity.as_ref().map(|(i, _, _)| i.certified.subscribe()),
    };
    let exporter = match &config.otlp_endpoint {
        Some(endpoint) => Some(trace::export::provider(&trace::export::ExportSettings {
            endpoint: endpoint.clone(),
            interval: config.otlp_export_interval,
            service: config
                .service
                .clone()
                .unwrap_or_else(|| "bulwark-sidecar".into()),
            namespace: config.namespace.clone(),
            pod: pod.clone(),
        })?),
        None => None,
    };
    let tracer = match &exporter {
        Some(provider) => trace::Tracer::exporting(provider, config.trace_sampling),
        None => trace::Tracer::disabled(config.trace_sampling),
    };
    let shared = Arc::new(
        Shared::new(local, pod.clone(), deadline_header)
            .with_tracer(tracer)
            .with_identity(identity.as_ref().map(|(i, _, _)| i.clone()))
            .with_probe_paths(config.probe_paths.clone())
            .with_upstream_idle_timeout(config.upstream_idle_timeout),
    );
    if let Some((identity, settings, anchors_pem)) = identity {
        tokio::spawn(identity::renew::watch_anchors(
            identity.clone(),
            settings.anchors.clone(),
            config.reload_interval,
            anchors_pem,
        ));
        tokio::spawn(identity::renew::run(
            identity,
            settings,
            shared.metrics.clone(),
            pod,
        ));
    }
    tokio::spawn(health::probe::run(
        shared.health.app.clone(),
        shared.metrics.clone(),
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
            start_control_plane_source(&config, &shared, link).await;
            None
        }
    };

    let admin_addr = admin.local_addr()?;
    let mut bound = serde_json::json!({
        "admin": admin_addr.to_string(),
        "outbound": listeners[0].local_addr().to_string(),
        "inbound": listeners[1].local_addr().to_string(),
        "ports": ports,
    });
    if let Some(health) = &health {
        bound["health"] = health.local_addr()?.to_string().into();
    }
    tracing::info!(listeners = %bound, "sidecar listening");
    if let Some(path) = &config.ready_file {
        write_atomically(path, bound.to_string().as_bytes(), Durability::Renamed)
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
    let limits = ConnLimits {
        max_header_bytes: config.max_header_bytes,
        header_read_timeout: config.header_read_timeout,
        max_connections: config.max_connections as usize,
        idle_timeout: config.idle_timeout,
    };
    let builder = Arc::new(listen::accept::connection_builder(limits));
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
        let task = tokio::spawn(listen::accept::serve(
            l,
            shared.clone(),
            builder.clone(),
            limits,
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
    let admin_task = tokio::spawn(admin::serve(
        admin,
        shared.clone(),
        admin::Endpoints::All,
        admin_stop_rx.clone(),
    ));
    let health_task = health.map(|health| {
        tokio::spawn(admin::serve(
            health,
            shared.clone(),
            admin::Endpoints::Health,
            admin_stop_rx,
        ))
    });

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
    if let Some(task) = health_task {
        let _ = task.await;
    }
    if let Some(provider) = exporter {
        // The last batch goes out on this runtime's tasks: wait for it on another thread.
        let _ = tokio::task::spawn_blocking(move || trace::export::shutdown(&provider)).await;
    }
    Ok(())
}

/// Starts following the control plane; waits up to `--control-plane-timeout` for its first
/// snapshot, and boots from the snapshot file when none came.
async fn start_control_plane_source(
    config: &Config,
    shared: &Arc<Shared>,
    link: source::control_plane::Link,
) {
    let who = source::control_plane::Registration {
        namespace: config.namespace.clone(),
        service: config.service.clone().unwrap_or_default(), // required by clap in this mode
        pod: shared.health.pod.clone(),
    };
    let (applied_tx, mut applied_rx) = watch::channel(0i64);
    tokio::spawn(source::control_plane::follow(
        shared.clone(),
        config.control_plane.clone(),
        link,
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
            tracing::warn!(error = %e, "control plane not answering and no usable snapshot file: booting with no policies");
            shared
                .boot_problem
                .store(Some(Arc::new(format!("no usable snapshot file ({e})"))));
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

/// TLS to `https://` control-plane addresses: the control plane verified against
/// `--control-plane-ca`, else the trust anchors; the workload certificate presented when there
/// is an identity. `None` when there is nothing to verify with.
fn control_plane_tls(
    config: &Config,
    identity: Option<&Arc<Identity>>,
) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    let anchors = match (&config.control_plane_ca, identity) {
        (Some(path), _) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --control-plane-ca {}", path.display()))?;
            Arc::new(
                bulwark_identity::TrustAnchors::from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("--control-plane-ca {}: {e}", path.display()))?,
            )
        }
        (None, Some(identity)) => identity.anchors.clone(),
        (None, None) => return Ok(None),
    };
    let tls = bulwark_identity::tls::control_plane_client(
        anchors,
        identity.map(|i| i.credentials.clone()),
    )
    .map_err(|e| anyhow::anyhow!("TLS to the control plane: {e}"))?;
    Ok(Some(Arc::new(tls)))
}

/// The identity settings of `config`: `None` without `--trust-anchors`.
fn identity_settings(config: &Config) -> anyhow::Result<Option<(IdentitySettings, Vec<u8>)>> {
    let Some(anchors) = &config.trust_anchors else {
        return Ok(None);
    };
    let anchors_pem = std::fs::read(anchors)
        .with_context(|| format!("cannot read --trust-anchors {}", anchors.display()))?;
    let id = bulwark_identity::SpiffeId::new(
        &config.trust_domain,
        &config.namespace,
        &config.service_account,
    )
    .context("this pod's identity")?;
    let proof = match (&config.identity_token_file, &config.join_token_file) {
        (Some(path), _) => ProofSource::ServiceAccountToken(path.clone()),
        (None, Some(path)) => ProofSource::JoinToken(path.clone()),
        (None, None) => anyhow::bail!(
            "--trust-anchors needs a proof of identity: --identity-token-file (Kubernetes) or --join-token-file"
        ),
    };
    let servers = if config.identity_server.is_empty() {
        config.control_plane.clone()
    } else {
        config.identity_server.clone()
    };
    if servers.is_empty() {
        anyhow::bail!(
            "--trust-anchors needs a control plane to issue certificates: --control-plane or --identity-server"
        );
    }
    Ok(Some((
        IdentitySettings {
            id,
            servers,
            proof,
            anchors: anchors.clone(),
            tls: None,
        },
        anchors_pem,
    )))
}
