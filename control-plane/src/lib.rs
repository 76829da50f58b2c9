//! Bulwark's control plane: the operator API (REST and gRPC) over etcd, and the distribution
//! of policy snapshots to sidecars. Replicas are stateless: etcd is the only source of truth;
//! each replica keeps an index fed by one watch (`sync`), serves reads from it, writes through
//! guarded etcd transactions (`api::ops`) and streams snapshots (`api::discovery`); how far each
//! resource has spread is `convergence`. Optionally it also answers the API server's
//! sidecar-injection reviews over HTTPS (`webhook`). The sidecars' health reports go to etcd and
//! the replica elected through etcd (`leader`) turns them into levels, events and alerts
//! (`degradation`). See `docs/control-plane.md`.

pub mod acks;
pub mod api;
pub mod convergence;
pub mod degradation;
pub mod diff;
pub mod identity;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod store;
pub mod sync;
pub mod timestamp;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::fs::Durability;
use bulwark_proto::v1::discovery_server::DiscoveryServer;
use bulwark_proto::v1::identity_server::IdentityServer;
use bulwark_proto::v1::operator_server::OperatorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::acks::AckRecorder;
use crate::api::discovery::DiscoveryService;
use crate::api::operator::OperatorService;
use crate::api::ops::Ops;
use crate::degradation::reports::HealthRecorder;
use crate::degradation::runner::{Levels, LevelsConfig};
use crate::identity::{IdentityConfig, IdentityService};
use crate::index::SharedIndex;
use crate::metrics::Metrics;
use crate::store::keys::{BadPrefix, Keys};
use crate::store::{EtcdStore, StoreError, StoreOptions};
use crate::webhook::WebhookConfig;
use crate::webhook::certs::CertReloader;

/// How long shutdown waits for connections and streams to end.
const DRAIN: Duration = Duration::from_secs(10);

/// Everything a replica needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// TLS to etcd (`https://` endpoints).
    pub etcd_tls: Option<crate::store::EtcdTls>,
    /// Key prefix of everything Bulwark stores.
    pub etcd_prefix: String,
    /// REST listen address.
    pub http: SocketAddr,
    /// gRPC listen address (operator API and sidecar streams).
    pub grpc: SocketAddr,
    /// This replica's name in ack records and logs.
    pub replica_id: String,
    /// Where to write `{"http": "ip:port", "grpc": "ip:port"}` (and `"webhook"` when it is on)
    /// once listening.
    pub ready_file: Option<PathBuf>,
    /// The most one etcd operation may take, retries included.
    pub etcd_timeout: Duration,
    /// TTL of the lease the pods' ack records are bound to.
    pub ack_lease_ttl: Duration,
    /// TTL of the election lease.
    pub leader_ttl: Duration,
    /// How often the elected replica computes levels.
    pub levels: LevelsConfig,
    /// The sidecar-injection webhook; off when `None`.
    pub webhook: Option<WebhookConfig>,
    /// The Identity service (workload certificates); off when `None`.
    pub identity: Option<Arc<IdentityConfig>>,
}

/// Why the control plane could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Prefix(#[from] BadPrefix),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid sidecar-injection options")]
    Inject(#[from] bulwark_inject::InjectError),
    #[error("cannot set up the webhook's TLS")]
    Tls(#[from] rustls::Error),
    #[error("the {what} server failed: {message}")]
    Serve { what: &'static str, message: String },
}

/// Runs a replica until `shutdown` completes, then drains: streams close, servers stop, the
/// ack lease is revoked.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let keys = Keys::new(&config.etcd_prefix)?;
    if let Some(webhook) = &config.webhook {
        webhook.inject.validate()?;
    }
    let store = Arc::new(
        EtcdStore::connect(
            &config.etcd_endpoints,
            StoreOptions {
                op_timeout: config.etcd_timeout,
                tls: config.etcd_tls.clone(),
                ..StoreOptions::default()
            },
        )
        .await?,
    );
    let index = SharedIndex::new();
    if let Some(identity) = &config.identity {
        index.lock().set_trust_domain(&identity.trust_domain);
        tokio::spawn(crate::identity::watch_issuer(
            identity.clone(),
            identity.issuer_reload_interval,
        ));
    }
    let (stop_tx, stop) = watch::channel(false);

    let http = bind(config.http, "the REST API").await?;
    let grpc = bind(config.grpc, "gRPC").await?;
    let http_addr = local_addr(&http, config.http, "the REST API")?;
    let grpc_addr = local_addr(&grpc, config.grpc, "gRPC")?;
    let webhook_server = match &config.webhook {
        Some(webhook) => Some(webhook_server(webhook).await?),
        None => None,
    };
    let webhook_addr = webhook_server.as_ref().map(|(_, addr, _, _)| *addr);

    let sync = tokio::spawn(sync::run(
        store.clone(),
        keys.clone(),
        index.clone(),
        stop.clone(),
    ));
    let acks = AckRecorder::new(&config.replica_id);
    let ack_writer = tokio::spawn(acks.clone().run(
        store.clone(),
        keys.clone(),
        config.ack_lease_ttl,
        stop.clone(),
    ));
    let health = HealthRecorder::new(&config.replica_id);
    let health_writer = tokio::spawn(
        health
            .clone()
            .run(store.clone(), keys.clone(), stop.clone()),
    );
    let metrics = Arc::new(Metrics::new());
    let (leading_tx, leading) = watch::channel(None);
    let election = tokio::spawn(leader::run(
        store.clone(),
        keys.clone(),
        config.replica_id.clone(),
        config.leader_ttl,
        leading_tx,
        stop.clone(),
    ));
    let (alerts, alert_worker) = degradation::alerts::channel(metrics.clone());
    let alert_worker = tokio::spawn(alert_worker.run(stop.clone()));
    let levels = tokio::spawn(
        Levels {
            store: store.clone(),
            keys: keys.clone(),
            index: index.clone(),
            alerts,
            metrics: metrics.clone(),
            config: config.levels,
        }
        .run(leading, stop.clone()),
    );
    let ops = Arc::new(Ops::new(
        store.clone(),
        keys.clone(),
        index.clone(),
        metrics.clone(),
    ));

    let rest = axum::serve(http, api::rest::router(ops.clone()))
        .with_graceful_shutdown(stopped(stop.clone()));
    let rest = tokio::spawn(async move { rest.await });
    let grpc_server =
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            // Finds sidecars that vanished without closing their stream.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(DiscoveryServer::new(DiscoveryService::new(
                index.clone(),
                acks,
                health,
                stop.clone(),
            )))
            .add_service(OperatorServer::new(OperatorService::new(ops)))
            .add_optional_service(config.identity.clone().map(|identity| {
                IdentityServer::new(IdentityService::new(identity, metrics.clone()))
            }))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                stopped(stop.clone()),
            );
    let grpc_server = tokio::spawn(grpc_server);
    let webhook = webhook_server.map(|(listener, _, tls, app)| {
        tokio::spawn(webhook::serve(listener, tls, app, stop.clone()))
    });

    tracing::info!(
        http = %http_addr,
        grpc = %grpc_addr,
        webhook = webhook_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        etcd = %store.endpoints(),
        prefix = %keys.prefix(),
        replica = %config.replica_id,
        "control plane listening"
    );
    if let Some(path) = &config.ready_file {
        write_ready_file(path, http_addr, grpc_addr, webhook_addr).map_err(|source| {
            RunError::ReadyFile {
                path: path.clone(),
                source,
            }
        })?;
    }

    // Run until asked to stop, or until a server fails.
    let mut rest = rest;
    let mut grpc_server = grpc_server;
    let mut webhook = webhook;
    let failure = tokio::select! {
        _ = shutdown => None,
        r = &mut rest => Some(RunError::Serve { what: "REST", message: joined(r.map(|r| r.map_err(|e| e.to_string()))) }),
        r = &mut grpc_server => Some(RunError::Serve { what: "gRPC", message: joined(r.map(|r| r.map_err(|e| e.to_string()))) }),
    };
    tracing::info!("shutting down: closing streams and servers");
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(DRAIN, async {
        let _ = (&mut rest).await;
        tracing::debug!("REST server stopped");
        let _ = (&mut grpc_server).await;
        tracing::debug!("gRPC server stopped");
        if let Some(webhook) = &mut webhook {
            let _ = webhook.await;
            tracing::debug!("webhook stopped");
        }
        let _ = ack_writer.await;
        let _ = health_writer.await;
        let _ = levels.await;
        let _ = election.await;
        let _ = alert_worker.await;
        let _ = sync.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(after = ?DRAIN, "connections did not drain in time; stopping anyway");
        rest.abort();
        grpc_server.abort();
        if let Some(webhook) = &webhook {
            webhook.abort();
        }
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// The webhook's listener, its address, TLS set-up and routes.
async fn webhook_server(
    config: &WebhookConfig,
) -> Result<
    (
        TcpListener,
        SocketAddr,
        Arc<rustls::ServerConfig>,
        axum::Router,
    ),
    RunError,
> {
    let listener = bind(config.listen, "the webhook").await?;
    let addr = local_addr(&listener, config.listen, "the webhook")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = Arc::new(CertReloader::new(
        config.cert.clone(),
        config.key.clone(),
        provider.clone(),
    ));
    // Says at start-up whether the certificate is there; handshakes look again later.
    certs.refresh_now();
    let tls = webhook::tls_config(provider, certs)?;
    let app = webhook::router(Arc::new(config.inject.clone()));
    Ok((listener, addr, tls, app))
}

fn joined(r: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "stopped unexpectedly".into(),
        Ok(Err(e)) => e,
        Err(e) => e.to_string(),
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Listen { what, addr, source })
}

fn local_addr(
    listener: &TcpListener,
    addr: SocketAddr,
    what: &'static str,
) -> Result<SocketAddr, RunError> {
    listener
        .local_addr()
        .map_err(|source| RunError::Listen { what, addr, source })
}

/// Writes the ready file atomically, so a reader never sees half of it.
fn write_ready_file(
    path: &std::path::Path,
    http: SocketAddr,
    grpc: SocketAddr,
    webhook: Option<SocketAddr>,
) -> std::io::Result<()> {
    let mut body = serde_json::json!({"http": http.to_string(), "grpc": grpc.to_string()});
    if let Some(webhook) = webhook {
        body["webhook"] = webhook.to_string().into();
    }
    bulwark_proto::fs::write_atomically(path, body.to_string().as_bytes(), Durability::Renamed)
}
