//! `control-plane`: flags and environment → [`Config`]; logging; one replica until SIGTERM or
//! SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use bulwark_control_plane::Config;
use bulwark_control_plane::degradation::runner::LevelsConfig;
use bulwark_control_plane::webhook::WebhookConfig;
use clap::{Parser, ValueEnum};

/// Bulwark control plane: the policy API over etcd and policy snapshots for sidecars.
#[derive(Debug, Parser)]
#[command(name = "control-plane", version)]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "BULWARK_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd_endpoints: Vec<String>,

    /// Key prefix of everything Bulwark stores in etcd.
    #[arg(long, env = "BULWARK_ETCD_PREFIX", default_value = "/bulwark/v1")]
    etcd_prefix: String,

    /// Listen address of the REST/JSON operator API.
    #[arg(long = "http", env = "BULWARK_HTTP", default_value = "0.0.0.0:8080")]
    http: SocketAddr,

    /// Listen address of gRPC: the operator API and the sidecars' Discovery stream.
    #[arg(long = "grpc", env = "BULWARK_GRPC", default_value = "0.0.0.0:8081")]
    grpc: SocketAddr,

    /// This replica's name in ack records and logs [default: hostname/pid].
    #[arg(long, env = "BULWARK_REPLICA_ID")]
    replica_id: Option<String>,

    /// Write {"http": "ip:port", "grpc": "ip:port"} here once listening (with "webhook":
    /// "ip:port" when the webhook is on).
    #[arg(long, env = "BULWARK_READY_FILE")]
    ready_file: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "BULWARK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// The most one etcd operation may take, retries across endpoints included (e.g. 5s,
    /// 500ms).
    #[arg(long, env = "BULWARK_ETCD_TIMEOUT", default_value = "5s", value_parser = duration)]
    etcd_timeout: Duration,

    /// TTL of the lease that binds the pods' ack records to this replica.
    #[arg(long, env = "BULWARK_ACK_LEASE_TTL", default_value = "15s", value_parser = duration)]
    ack_lease_ttl: Duration,

    /// TTL of the election lease: when the elected replica dies or loses etcd, another takes
    /// over within about this long.
    #[arg(long, env = "BULWARK_LEADER_TTL", default_value = "10s", value_parser = duration)]
    leader_ttl: Duration,

    /// The elected replica recomputes levels at least this often (damping and override
    /// expiry need time to pass), and at once when reports or policies change.
    #[arg(long, env = "BULWARK_LEVELS_INTERVAL", default_value = "1s", value_parser = duration)]
    levels_interval: Duration,

    /// The shortest time between two level computations (a burst of reports makes one).
    #[arg(long, env = "BULWARK_LEVELS_MIN_GAP", default_value = "100ms", value_parser = duration)]
    levels_min_gap: Duration,

    /// Listen address of the sidecar-injection webhook (HTTPS, POST /inject); off when unset.
    #[arg(
        long = "webhook",
        env = "BULWARK_WEBHOOK",
        value_name = "ADDR",
        requires_all = ["webhook_cert", "webhook_key"]
    )]
    webhook: Option<SocketAddr>,

    /// The webhook's PEM certificate chain; read again when it changes.
    #[arg(long, env = "BULWARK_WEBHOOK_CERT", value_name = "PATH")]
    webhook_cert: Option<PathBuf>,

    /// The webhook's PEM private key; read again when it changes.
    #[arg(long, env = "BULWARK_WEBHOOK_KEY", value_name = "PATH")]
    webhook_key: Option<PathBuf>,

    /// Image of the sidecars the webhook injects (pods override it with bulwark.dev/image).
    #[arg(long, env = "BULWARK_SIDECAR_IMAGE", default_value = bulwark_inject::DEFAULT_IMAGE)]
    sidecar_image: String,

    /// Control-plane gRPC address(es) injected sidecars connect to, comma-separated (pods
    /// override it with bulwark.dev/control-plane).
    #[arg(
        long,
        env = "BULWARK_SIDECAR_CONTROL_PLANE",
        default_value = bulwark_inject::DEFAULT_CONTROL_PLANE
    )]
    sidecar_control_plane: String,

    /// Whether injected pods get the bulwark-init container that captures their traffic with
    /// iptables (it needs NET_ADMIN); pods override it with bulwark.dev/capture.
    #[arg(long, env = "BULWARK_INJECT_CAPTURE", value_enum, default_value_t = Switch::Enabled)]
    inject_capture: Switch,

    /// Image of the bulwark-init container (pods override it with bulwark.dev/init-image).
    #[arg(long, env = "BULWARK_INIT_IMAGE", default_value = bulwark_inject::DEFAULT_INIT_IMAGE)]
    init_image: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = bulwark_proto::policy::units::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(d)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "control-plane".into())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One clear line on failure, never a stack trace (RUST_BACKTRACE may be set).
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("control-plane: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    // The one crypto provider of the process (two would make rustls panic): the webhook's
    // server and etcd's TLS clients use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let webhook = match (args.webhook, args.webhook_cert, args.webhook_key) {
        (Some(listen), Some(cert), Some(key)) => Some(WebhookConfig {
            listen,
            cert,
            key,
            inject: bulwark_inject::InjectOptions {
                image: args.sidecar_image,
                control_plane: args.sidecar_control_plane,
                capture: args.inject_capture == Switch::Enabled,
                init_image: args.init_image,
                ..Default::default()
            },
        }),
        // clap requires the certificate and key with --webhook.
        _ => None,
    };
    let config = Config {
        replica_id: args
            .replica_id
            .unwrap_or_else(|| format!("{}/{}", hostname(), std::process::id())),
        etcd_endpoints: args
            .etcd_endpoints
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect(),
        etcd_prefix: args.etcd_prefix,
        http: args.http,
        grpc: args.grpc,
        ready_file: args.ready_file,
        etcd_timeout: args.etcd_timeout,
        ack_lease_ttl: args.ack_lease_ttl,
        leader_ttl: args.leader_ttl,
        levels: LevelsConfig {
            interval: args.levels_interval,
            min_gap: args.levels_min_gap,
        },
        webhook,
    };
    bulwark_control_plane::run(config, shutdown_signal())
        .await
        .context("control plane")
}
