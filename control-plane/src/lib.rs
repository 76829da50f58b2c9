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
pub mod auth;
pub mod convergence;
pub mod degradation;
pub mod diff;
pub mod identity;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod serve;
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
use crate::serve::certs::CertReloader;
use crate::store::keys::{BadPrefix, Keys};
use crate::store::{EtcdStore, StoreError, StoreOptions};
use crate::webhook::WebhookConfig;

/// How long shutdown waits for connections and streams to end.
const DRAIN: Duration = Duration::from_secs(10);
/// How often the replica checks that etcd still answers linearizable reads.
const QUORUM_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Operator connections served at once by the REST API.
const API_MAX_CONNECTIONS: usize = 1024;
/// Connections the metrics listener holds at once: a few scrapers and probes.
const METRICS_MAX_CONNECTIONS: usize = 64;
/// Connections served at once by gRPC: one per sidecar, and operators'.
const GRPC_MAX_CONNECTIONS: usize = 65_536;
/// A client must finish its TLS handshake, and send its request headers, within this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Listen address of `GET /metrics` and the health probes alone, without authentication
    /// (plain HTTP); off when `None` (the REST API serves `/metrics` to callers allowed it).
    pub metrics: Option<SocketAddr>,
    /// This replica's name in ack records and logs.
    pub replica_id: String,
    /// Where to write `{"http": "ip:port", "grpc": "ip:port"}` (and `"webhook"`, `"metrics"`
    /// when they are on) once listening.
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
    /// How the REST and gRPC listeners are secured.
    pub listeners: Listeners,
    /// How operator API callers are authenticated (and who is an administrator).
    pub auth: Arc<auth::Authenticator>,
    /// Limits against abuse.
    pub limits: Limits,
}

/// Limits against abuse of the APIs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest REST request body, in bytes.
    pub max_request_body: usize,
    /// Writes per user.
    pub write_rate: api::limits::WriteRate,
    /// Discovery streams one workload identity may hold at once on a replica.
    pub max_streams_per_identity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: api::rest::DEFAULT_MAX_BODY,
            write_rate: api::limits::WriteRate::default(),
            max_streams_per_identity: 1000,
        }
    }
}

/// How the REST and gRPC listeners are secured.
#[derive(Debug, Clone)]
pub enum Listeners {
    /// Plain TCP (`--insecure-dev`): sidecar streams without a certificate are taken at their
    /// word. Loud in the log and in `bulwark_insecure_dev`.
    InsecureDev,
    Tls(TlsSettings),
}

/// TLS on the REST and gRPC listeners.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The serving certificate's PEM files (`--tls-cert`, `--tls-key`), read again when they
    /// change. Without them the identity issuer signs one for `server_names`.
    pub files: Option<(PathBuf, PathBuf)>,
    /// The DNS names and addresses clients dial, for a self-issued certificate.
    pub server_names: Vec<String>,
    /// The mesh's trust anchors (PEM): the roots workloads' client certificates lead to.
    pub trust_anchors: Vec<u8>,
    /// The CA of operators' client certificates (PEM).
    pub client_ca: Option<Vec<u8>>,
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
    #[error("{0}")]
    Listeners(String),
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
    let metrics = Arc::new(Metrics::new());
    let observed = metrics.clone();
    let store = Arc::new(
        EtcdStore::connect(
            &config.etcd_endpoints,
            StoreOptions {
                op_timeout: config.etcd_timeout,
                tls: config.etcd_tls.clone(),
                ..StoreOptions::default()
            },
        )
        .await?
        .with_observer(Arc::new(move |operation, result, took| {
            observed.etcd_call(operation, result, took);
        })),
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
    let metrics_listener = match config.metrics {
        Some(addr) => {
            let listener = bind(addr, "metrics").await?;
            let bound = local_addr(&listener, addr, "metrics")?;
            Some((listener, bound))
        }
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);

    let sync = tokio::spawn(sync::run(
        store.clone(),
        keys.clone(),
        index.clone(),
        stop.clone(),
    ));
    let quorum_probe = tokio::spawn(sync::probe_quorum(
        store.clone(),
        keys.clone(),
        index.clone(),
        QUORUM_PROBE_INTERVAL,
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
    let alert_events = Arc::new(degradation::events::Recorder::new(
        store.clone(),
        keys.clone(),
    ));
    let alert_worker = tokio::spawn(alert_worker.with_events(alert_events).run(stop.clone()));
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
    let ops = Arc::new(
        Ops::new(store.clone(), keys.clone(), index.clone(), metrics.clone())
            .with_auth(config.auth.clone(), &config.replica_id)
            .with_stop(stop.clone())
            .with_write_rate(config.limits.write_rate)
            .with_diagnostics(api::ops::DiagnosticSources {
                webhook_cert: config.webhook.as_ref().map(|w| w.cert.clone()),
                identity: config.identity.clone(),
            }),
    );
    let metrics_server = metrics_listener.map(|(listener, _)| {
        tokio::spawn(serve::serve(
            listener,
            serve::Options {
                what: "metrics",
                tls: None,
                max_connections: METRICS_MAX_CONNECTIONS,
                client_timeout: CLIENT_TIMEOUT,
                keepalive: None,
            },
            api::rest::metrics_router(ops.clone()),
            stop.clone(),
        ))
    });

    metrics.set_insecure_dev(matches!(config.listeners, Listeners::InsecureDev));
    let (rest_tls, grpc_tls, enforcement) = listener_tls(&config)?;
    let trust_domain = config
        .identity
        .as_ref()
        .map(|i| i.trust_domain.clone())
        .unwrap_or_else(|| bulwark_identity::spiffe::DEFAULT_TRUST_DOMAIN.to_string());
    let rest = tokio::spawn(serve::serve(
        http,
        serve::Options {
            what: "REST API",
            tls: rest_tls,
            max_connections: API_MAX_CONNECTIONS,
            client_timeout: CLIENT_TIMEOUT,
            keepalive: None,
        },
        api::rest::router_with(ops.clone(), config.limits.max_request_body),
        stop.clone(),
    ));
    let mut grpc_routes = tonic::service::Routes::new(DiscoveryServer::new(DiscoveryService::new(
        index.clone(),
        acks,
        health,
        stop.clone(),
        api::discovery::Guard {
            enforcement,
            trust_domain,
            metrics: metrics.clone(),
            max_streams_per_identity: config.limits.max_streams_per_identity,
            held: Arc::default(),
        },
    )))
    .add_service(OperatorServer::new(OperatorService::new(ops)));
    // grpc.health.v1.Health: serving while the index follows etcd (what reads and snapshots
    // are served from), for gRPC load balancers and probes.
    let (reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(api::grpc_health::report(
        reporter,
        index.lock().watch_state(),
        stop.clone(),
    ));
    grpc_routes = grpc_routes.add_service(health_service);
    if let Some(identity) = config.identity.clone() {
        grpc_routes = grpc_routes.add_service(IdentityServer::new(IdentityService::new(
            identity,
            metrics.clone(),
        )));
    }
    let grpc_server = tokio::spawn(serve::serve(
        grpc,
        serve::Options {
            what: "gRPC",
            tls: grpc_tls,
            max_connections: GRPC_MAX_CONNECTIONS,
            client_timeout: CLIENT_TIMEOUT,
            // Finds sidecars that vanished without closing their stream.
            keepalive: Some((Duration::from_secs(30), Duration::from_secs(10))),
        },
        grpc_routes.prepare().into_axum_router(),
        stop.clone(),
    ));
    let webhook = webhook_server.map(|(listener, _, tls, app)| {
        tokio::spawn(serve::serve(
            listener,
            serve::Options {
                what: "webhook",
                tls: Some(serve::Tls {
                    config: tls,
                    verifier: None,
                }),
                max_connections: webhook::MAX_CONNECTIONS,
                client_timeout: webhook::CLIENT_TIMEOUT,
                keepalive: None,
            },
            app,
            stop.clone(),
        ))
    });

    tracing::info!(
        http = %http_addr,
        grpc = %grpc_addr,
        webhook = webhook_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        metrics = metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        etcd = %store.endpoints(),
        prefix = %keys.prefix(),
        replica = %config.replica_id,
        "control plane listening"
    );
    if let Some(path) = &config.ready_file {
        write_ready_file(path, http_addr, grpc_addr, webhook_addr, metrics_addr).map_err(
            |source| RunError::ReadyFile {
                path: path.clone(),
                source,
            },
        )?;
    }

    // Run until asked to stop, or until a server fails.
    let mut rest = rest;
    let mut grpc_server = grpc_server;
    let mut webhook = webhook;
    let mut metrics_server = metrics_server;
    let failure = tokio::select! {
        _ = shutdown => None,
        r = &mut rest => Some(RunError::Serve { what: "REST", message: joined(r.map(Ok)) }),
        r = &mut grpc_server => Some(RunError::Serve { what: "gRPC", message: joined(r.map(Ok)) }),
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
        if let Some(metrics_server) = &mut metrics_server {
            let _ = metrics_server.await;
        }
        let _ = ack_writer.await;
        let _ = health_writer.await;
        let _ = levels.await;
        let _ = election.await;
        let _ = alert_worker.await;
        let _ = sync.await;
        let _ = quorum_probe.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(after = ?DRAIN, "connections did not drain in time; stopping anyway");
        rest.abort();
        grpc_server.abort();
        if let Some(webhook) = &webhook {
            webhook.abort();
        }
        if let Some(metrics_server) = &metrics_server {
            metrics_server.abort();
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

/// TLS of the REST and gRPC listeners (`None` for both under `--insecure-dev`), and how
/// sidecar streams are held to their certificates.
#[allow(clippy::type_complexity)]
fn listener_tls(
    config: &Config,
) -> Result<
    (
        Option<serve::Tls>,
        Option<serve::Tls>,
        identity::binding::Enforcement,
    ),
    RunError,
> {
    use bulwark_identity::tls::{ALPN_H2, ALPN_HTTP1, control_plane_server};
    use bulwark_identity::verify::ControlPlaneClientVerifier;
    let settings = match &config.listeners {
        Listeners::InsecureDev => {
            tracing::warn!(
                "--insecure-dev: the REST API and gRPC listen in PLAINTEXT, sidecar streams without a certificate are taken at their word, and requests without credentials act as an administrator; never run this in production"
            );
            return Ok((None, None, identity::binding::Enforcement::InsecureDev));
        }
        Listeners::Tls(settings) => settings,
    };
    let certs: Arc<dyn rustls::server::ResolvesServerCert> = match (
        &settings.files,
        &config.identity,
    ) {
        (Some((cert, key)), _) => {
            let reloader = Arc::new(CertReloader::new(
                "API",
                cert.clone(),
                key.clone(),
                bulwark_identity::provider(),
            ));
            reloader.refresh_now();
            reloader
        }
        (None, Some(identity)) => {
            let own = bulwark_identity::SpiffeId::new(
                &identity.trust_domain,
                CONTROL_PLANE_NAMESPACE,
                CONTROL_PLANE_SERVICE_ACCOUNT,
            )
            .map_err(|e| RunError::Listeners(e.to_string()))?;
            let issued =
                identity::serving::SelfIssued::new(identity, settings.server_names.clone(), own)
                    .map_err(|e| RunError::Listeners(e.to_string()))?;
            tokio::spawn(issued.clone().renew(identity.clone()));
            issued
        }
        (None, None) => {
            return Err(RunError::Listeners(
                "TLS needs a serving certificate: give --tls-cert and --tls-key, or an identity issuer (--issuer-cert and --issuer-key, or --dev-identity) to issue one; or run with --insecure-dev for local development".into(),
            ));
        }
    };
    let anchors = Arc::new(
        bulwark_identity::TrustAnchors::from_pem(&settings.trust_anchors)
            .map_err(|e| RunError::Listeners(format!("--trust-anchors: {e}")))?,
    );
    let verifier = Arc::new(
        ControlPlaneClientVerifier::new(anchors, settings.client_ca.as_deref())
            .map_err(|e| RunError::Listeners(format!("--client-ca: {e}")))?,
    );
    let tls = |alpn: &[&[u8]]| -> Result<serve::Tls, RunError> {
        let config = control_plane_server(certs.clone(), verifier.clone(), alpn)
            .map_err(RunError::Listeners)?;
        Ok(serve::Tls {
            config: Arc::new(config),
            verifier: Some(verifier.clone()),
        })
    };
    Ok((
        Some(tls(&[ALPN_H2, ALPN_HTTP1])?),
        Some(tls(&[ALPN_H2])?),
        identity::binding::Enforcement::Required,
    ))
}

/// The namespace and service account of the control plane's own identity (its serving
/// certificate's SPIFFE ID).
pub const CONTROL_PLANE_NAMESPACE: &str = "bulwark";
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "bulwark-control-plane";

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
        "webhook",
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
    metrics: Option<SocketAddr>,
) -> std::io::Result<()> {
    let mut body = serde_json::json!({"http": http.to_string(), "grpc": grpc.to_string()});
    if let Some(webhook) = webhook {
        body["webhook"] = webhook.to_string().into();
    }
    if let Some(metrics) = metrics {
        body["metrics"] = metrics.to_string().into();
    }
    bulwark_proto::fs::write_atomically(path, body.to_string().as_bytes(), Durability::Renamed)
}
