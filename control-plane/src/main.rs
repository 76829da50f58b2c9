//! `control-plane`: flags and environment → [`Config`]; logging; one replica until SIGTERM or
//! SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bulwark_control_plane::Config;
use bulwark_control_plane::auth::{AuthConfig, Authenticator};
use bulwark_control_plane::degradation::runner::LevelsConfig;
use bulwark_control_plane::identity::token_review::TokenReview;
use bulwark_control_plane::identity::{IdentityConfig, IssuerFiles};
use bulwark_control_plane::webhook::WebhookConfig;
use clap::{Parser, ValueEnum};

/// Bulwark control plane: the policy API over etcd and policy snapshots for sidecars.
#[derive(Debug, Parser)]
#[command(name = "control-plane", version = bulwark_telemetry::LONG_VERSION)]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "BULWARK_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd_endpoints: Vec<String>,

    /// The CA that signed etcd's certificate (PEM): etcd is reached over TLS (https://
    /// endpoints).
    #[arg(long, env = "BULWARK_ETCD_CA", value_name = "PATH")]
    etcd_ca: Option<PathBuf>,

    /// This replica's client certificate for etcd (PEM, with its chain), for etcd's
    /// --client-cert-auth.
    #[arg(long, env = "BULWARK_ETCD_CERT", value_name = "PATH", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "BULWARK_ETCD_KEY",
        value_name = "PATH",
        requires = "etcd_cert"
    )]
    etcd_key: Option<PathBuf>,

    /// Key prefix of everything Bulwark stores in etcd.
    #[arg(long, env = "BULWARK_ETCD_PREFIX", default_value = "/bulwark/v1")]
    etcd_prefix: String,

    /// Listen address of the REST/JSON operator API.
    #[arg(long = "http", env = "BULWARK_HTTP", default_value = "0.0.0.0:8080")]
    http: SocketAddr,

    /// Listen address of gRPC: the operator API and the sidecars' Discovery stream.
    #[arg(long = "grpc", env = "BULWARK_GRPC", default_value = "0.0.0.0:8081")]
    grpc: SocketAddr,

    /// Listen address of GET /metrics and the health probes alone, plain HTTP without
    /// authentication, for Prometheus (off unless given; the REST API serves /metrics to
    /// callers allowed it). Let only the monitoring namespace reach it.
    #[arg(long, env = "BULWARK_METRICS", value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// This replica's name in ack records and logs [default: hostname/pid].
    #[arg(long, env = "BULWARK_REPLICA_ID")]
    replica_id: Option<String>,

    /// Write {"http": "ip:port", "grpc": "ip:port"} here once listening (with "webhook" and
    /// "metrics": "ip:port" when they are on).
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

    /// Whether injected pods get a workload identity (their ServiceAccount token for the
    /// audience bulwark and the trust anchors); pods override it with bulwark.dev/identity.
    #[arg(long, env = "BULWARK_INJECT_IDENTITY", value_enum, default_value_t = Switch::Enabled)]
    inject_identity: Switch,

    /// The mesh-wide inbound mTLS mode of injected pods (strict, permissive or disable) for
    /// pods that set no bulwark.dev/inbound-mtls [default: the sidecar's, permissive].
    #[arg(long, env = "BULWARK_INJECT_INBOUND_MTLS", value_name = "MODE")]
    inject_inbound_mtls: Option<String>,

    /// The OpenTelemetry collector (http://HOST:4317, OTLP over gRPC) injected sidecars export
    /// request spans to [default: none, no spans].
    #[arg(long, env = "BULWARK_INJECT_OTLP_ENDPOINT", value_name = "URL")]
    inject_otlp_endpoint: Option<String>,

    /// The share (0 to 1) of the traces injected sidecars start that are sampled, for pods
    /// that set no bulwark.dev/trace-sampling [default: the sidecar's, 0.01].
    #[arg(long, env = "BULWARK_INJECT_TRACE_SAMPLING", value_name = "RATIO")]
    inject_trace_sampling: Option<String>,

    /// The ConfigMap (in each pod's namespace) holding the mesh's trust anchors as roots.pem.
    #[arg(long, env = "BULWARK_TRUST_ANCHORS_CONFIGMAP", default_value = bulwark_inject::DEFAULT_TRUST_ANCHORS)]
    trust_anchors_configmap: String,

    /// Image of the bulwark-init container (pods override it with bulwark.dev/init-image).
    #[arg(long, env = "BULWARK_INIT_IMAGE", default_value = bulwark_inject::DEFAULT_INIT_IMAGE)]
    init_image: String,

    #[command(flatten)]
    identity: IdentityArgs,

    #[command(flatten)]
    listeners: ListenerArgs,

    #[command(flatten)]
    auth: AuthArgs,

    /// The largest REST request body, in bytes (413 past it).
    #[arg(long, env = "BULWARK_MAX_REQUEST_BODY", default_value_t = bulwark_control_plane::api::rest::DEFAULT_MAX_BODY,
          value_parser = clap::value_parser!(usize))]
    max_request_body: usize,

    /// Writes (apply, delete, rollback, overrides, role bindings) each user may make per
    /// second, after a burst of --write-burst (429 past it).
    #[arg(long, env = "BULWARK_WRITES_PER_SECOND", default_value_t = 20.0)]
    writes_per_second: f64,

    /// Writes a user may make at once.
    #[arg(long, env = "BULWARK_WRITE_BURST", default_value_t = 50.0)]
    write_burst: f64,

    /// Discovery streams one workload identity (a service account) may hold at once on a
    /// replica (RESOURCE_EXHAUSTED past it).
    #[arg(long, env = "BULWARK_MAX_STREAMS_PER_IDENTITY", default_value_t = 1000)]
    max_streams_per_identity: usize,
}

#[derive(Debug, Clone, clap::Args)]
struct AuthArgs {
    /// Static bearer tokens for operators: a YAML or JSON file `{tokens: [{token, user,
    /// groups}]}`, read again when it changes.
    #[arg(long, env = "BULWARK_TOKENS_FILE", value_name = "PATH")]
    tokens_file: Option<PathBuf>,

    /// Members of these groups are administrators everywhere (comma-separated).
    #[arg(
        long = "admin-group",
        env = "BULWARK_ADMIN_GROUPS",
        value_delimiter = ',',
        default_value = "bulwark:admins"
    )]
    admin_groups: Vec<String>,

    /// Check operators' bearer tokens that are neither static nor OIDC with the Kubernetes API
    /// (TokenReview), for these audiences (comma-separated; empty: the API server's own).
    #[arg(
        long = "token-review-audience",
        env = "BULWARK_TOKEN_REVIEW_AUDIENCES",
        value_delimiter = ','
    )]
    token_review_audiences: Vec<String>,

    /// The OIDC issuer whose ID tokens authenticate operators (the `iss` they must carry).
    #[arg(long, env = "BULWARK_OIDC_ISSUER", requires = "oidc_audience")]
    oidc_issuer: Option<String>,

    /// The audience OIDC tokens must be for (`aud`).
    #[arg(long, env = "BULWARK_OIDC_AUDIENCE", requires = "oidc_issuer")]
    oidc_audience: Option<String>,

    /// The issuer's keys (JWKS) in a file, read again when it changes.
    #[arg(
        long,
        env = "BULWARK_OIDC_JWKS_FILE",
        value_name = "PATH",
        conflicts_with = "oidc_jwks_url"
    )]
    oidc_jwks_file: Option<PathBuf>,

    /// The issuer's keys (JWKS) at an HTTPS URL, fetched every 5 minutes and for unknown keys.
    #[arg(long, env = "BULWARK_OIDC_JWKS_URL", value_name = "URL")]
    oidc_jwks_url: Option<String>,

    /// The CA (PEM) of --oidc-jwks-url's server [default: Mozilla's roots].
    #[arg(
        long,
        env = "BULWARK_OIDC_CA",
        value_name = "PATH",
        requires = "oidc_jwks_url"
    )]
    oidc_ca: Option<PathBuf>,

    /// The claim that names the user.
    #[arg(long, env = "BULWARK_OIDC_USERNAME_CLAIM", default_value = "sub")]
    oidc_username_claim: String,

    /// The claim that lists the user's groups.
    #[arg(long, env = "BULWARK_OIDC_GROUPS_CLAIM", default_value = "groups")]
    oidc_groups_claim: String,
}

/// The operator API's authentication. With `--dev-identity DIR`, the development
/// administrator's token is `DIR/admin.token` (made on first start).
fn authenticator(
    args: AuthArgs,
    insecure_dev: bool,
    dev_identity: Option<&std::path::Path>,
    token_review: Option<Arc<TokenReview>>,
) -> anyhow::Result<Arc<Authenticator>> {
    use bulwark_control_plane::auth::oidc::{JwksSource, Oidc, OidcConfig};
    use bulwark_control_plane::auth::tokens::{Entry, StaticTokens};
    let mut extra = Vec::new();
    if let Some(dir) = dev_identity {
        let path = dir.join("admin.token");
        let token = match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let token = dev_token().context("making the development administrator's token")?;
                bulwark_identity::dev::write_private(&path, &token)
                    .with_context(|| format!("writing {}", path.display()))?;
                tracing::info!(path = %path.display(), "development administrator's token made");
                token
            }
        };
        extra.push(Entry {
            token,
            user: "dev-admin".into(),
            groups: vec!["bulwark:admins".into()],
        });
    }
    let tokens = (args.tokens_file.is_some() || !extra.is_empty())
        .then(|| StaticTokens::new(args.tokens_file, extra));
    let oidc = match (args.oidc_issuer, args.oidc_audience) {
        (Some(issuer), Some(audience)) => {
            let jwks = match (args.oidc_jwks_file, args.oidc_jwks_url) {
                (Some(file), _) => JwksSource::File(file),
                (None, Some(url)) => JwksSource::Url(url),
                (None, None) => anyhow::bail!(
                    "--oidc-issuer needs the issuer's keys: --oidc-jwks-file or --oidc-jwks-url"
                ),
            };
            Some(
                Oidc::new(OidcConfig {
                    issuer,
                    audience,
                    jwks,
                    username_claim: args.oidc_username_claim,
                    groups_claim: args.oidc_groups_claim,
                    ca_pem: args
                        .oidc_ca
                        .map(|p| {
                            std::fs::read(&p)
                                .with_context(|| format!("reading --oidc-ca {}", p.display()))
                        })
                        .transpose()?,
                })
                .map_err(anyhow::Error::msg)
                .context("OIDC")?,
            )
        }
        _ => None,
    };
    Ok(Arc::new(Authenticator::new(AuthConfig {
        insecure_dev,
        tokens,
        oidc,
        token_review,
        token_review_audiences: args.token_review_audiences,
        admin_groups: args.admin_groups,
    })))
}

/// 32 random bytes, hex.
fn dev_token() -> anyhow::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug, Clone, clap::Args)]
struct ListenerArgs {
    /// Serve the REST API and gRPC in plaintext, take sidecar streams without a certificate at
    /// their word, and let requests without credentials act as an administrator. For local
    /// development only: the log and bulwark_insecure_dev say so.
    #[arg(long, env = "BULWARK_INSECURE_DEV")]
    insecure_dev: bool,

    /// The REST API's and gRPC's certificate (PEM, with its chain), read again when it
    /// changes [default: one the identity issuer signs for --server-name].
    #[arg(
        long,
        env = "BULWARK_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key",
        conflicts_with = "insecure_dev"
    )]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "BULWARK_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// DNS names and IP addresses the self-issued serving certificate is for (the names
    /// sidecars and meshctl dial), comma-separated.
    #[arg(
        long = "server-name",
        env = "BULWARK_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,::1,bulwark-control-plane,bulwark-control-plane.bulwark,bulwark-control-plane.bulwark.svc,bulwark-control-plane.bulwark.svc.cluster.local"
    )]
    server_names: Vec<String>,

    /// The mesh's trust anchors (PEM): sidecars' workload certificates must lead to one
    /// [default: root.pem of --dev-identity].
    #[arg(long, env = "BULWARK_TRUST_ANCHORS", value_name = "PATH")]
    trust_anchors: Option<PathBuf>,

    /// The CA of operators' client certificates (PEM): a certificate it signed authenticates
    /// its subject's common name as the user and its organizations as groups.
    #[arg(long, env = "BULWARK_CLIENT_CA", value_name = "PATH")]
    client_ca: Option<PathBuf>,
}

/// How the REST and gRPC listeners are secured.
fn listeners(
    args: ListenerArgs,
    dev_identity: Option<&std::path::Path>,
) -> anyhow::Result<bulwark_control_plane::Listeners> {
    use bulwark_control_plane::{Listeners, TlsSettings};
    if args.insecure_dev {
        return Ok(Listeners::InsecureDev);
    }
    let anchors = args
        .trust_anchors
        .or_else(|| dev_identity.map(|d| bulwark_identity::dev::DevAuthority::at(d).root))
        .context("TLS listeners need --trust-anchors (the mesh's root certificates, to verify sidecars' workload certificates), or --dev-identity; or run with --insecure-dev for local development")?;
    let trust_anchors = std::fs::read(&anchors)
        .with_context(|| format!("reading --trust-anchors {}", anchors.display()))?;
    let client_ca = args
        .client_ca
        .map(|p| std::fs::read(&p).with_context(|| format!("reading --client-ca {}", p.display())))
        .transpose()?;
    Ok(Listeners::Tls(TlsSettings {
        files: args.tls_cert.zip(args.tls_key),
        server_names: args
            .server_names
            .into_iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        trust_anchors,
        client_ca,
    }))
}

#[derive(Debug, Clone, clap::Args)]
struct IdentityArgs {
    /// The trust domain of workload identities (spiffe://<trust-domain>/ns/<ns>/sa/<sa>).
    #[arg(long, env = "BULWARK_TRUST_DOMAIN", default_value = bulwark_identity::spiffe::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,

    /// Development identity: make a root and an issuer in DIR on first start (reused after)
    /// and sign workload certificates with them. Its root.pem is the trust anchor to give
    /// sidecars.
    #[arg(long, env = "BULWARK_DEV_IDENTITY", value_name = "DIR", conflicts_with_all = ["issuer_cert", "issuer_key"])]
    dev_identity: Option<PathBuf>,

    /// The issuer's certificate (PEM; then any intermediates up to the root) that signs
    /// workload certificates.
    #[arg(
        long,
        env = "BULWARK_ISSUER_CERT",
        value_name = "PATH",
        requires = "issuer_key"
    )]
    issuer_cert: Option<PathBuf>,

    /// The issuer's private key (PEM).
    #[arg(
        long,
        env = "BULWARK_ISSUER_KEY",
        value_name = "PATH",
        requires = "issuer_cert"
    )]
    issuer_key: Option<PathBuf>,

    /// How often the issuer's files are checked for a renewed issuer.
    #[arg(long, env = "BULWARK_ISSUER_RELOAD_INTERVAL", default_value = "30s", value_parser = duration)]
    issuer_reload_interval: Duration,

    /// How long workload certificates live.
    #[arg(long, env = "BULWARK_CERT_LIFETIME", default_value = "24h", value_parser = duration)]
    cert_lifetime: Duration,

    /// Join tokens for sidecars outside Kubernetes: a YAML or JSON file
    /// `{tokens: [{token, namespace, serviceAccount}]}`, read at every request.
    #[arg(long, env = "BULWARK_JOIN_TOKENS", value_name = "PATH")]
    join_tokens: Option<PathBuf>,

    /// The Kubernetes API that checks ServiceAccount tokens (TokenReview) [default: the
    /// in-cluster address, when running in a pod].
    #[arg(long, env = "BULWARK_KUBE_API", value_name = "URL")]
    kube_api: Option<String>,

    /// The Kubernetes API's CA bundle.
    #[arg(long, env = "BULWARK_KUBE_CA", value_name = "PATH", default_value = bulwark_control_plane::identity::token_review::IN_CLUSTER_CA)]
    kube_ca: PathBuf,

    /// The control plane's own ServiceAccount token, sent with TokenReviews.
    #[arg(long, env = "BULWARK_KUBE_TOKEN", value_name = "PATH", default_value = bulwark_control_plane::identity::token_review::IN_CLUSTER_TOKEN)]
    kube_token: PathBuf,

    /// The audience sidecars' ServiceAccount tokens must be for.
    #[arg(long, env = "BULWARK_TOKEN_AUDIENCE", default_value = "bulwark")]
    token_audience: String,
}

/// The TokenReview client (workloads' and operators' tokens), when there is a Kubernetes API.
fn token_review(args: &IdentityArgs) -> anyhow::Result<Option<Arc<TokenReview>>> {
    let kube_api = args.kube_api.clone().or_else(|| {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        Some(format!("https://{host}:{port}"))
    });
    let Some(api) = kube_api else {
        return Ok(None);
    };
    let ca = std::fs::read(&args.kube_ca)
        .with_context(|| format!("reading the Kubernetes CA {}", args.kube_ca.display()))?;
    let review = TokenReview::new(&api, &ca, args.kube_token.clone(), &args.token_audience)
        .map_err(anyhow::Error::msg)
        .context("TokenReview client")?;
    Ok(Some(Arc::new(review)))
}

/// The Identity service's configuration; `None` when no issuer is configured.
fn identity_config(
    args: IdentityArgs,
    token_review: Option<Arc<TokenReview>>,
) -> anyhow::Result<Option<IdentityConfig>> {
    use bulwark_control_plane::identity::proof::Verifier;
    bulwark_identity::spiffe::check_trust_domain(&args.trust_domain).context("--trust-domain")?;
    let (cert, key) = match (&args.dev_identity, &args.issuer_cert, &args.issuer_key) {
        (Some(dir), _, _) => {
            let (files, made) = bulwark_identity::dev::DevAuthority::ensure(dir)
                .with_context(|| format!("--dev-identity {}", dir.display()))?;
            if made {
                tracing::info!(dir = %dir.display(), "development identity authority made");
            }
            (files.issuer, files.issuer_key)
        }
        (None, Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => return Ok(None),
    };
    let files = IssuerFiles {
        cert,
        key,
        lifetime: args.cert_lifetime,
    };
    let (issuer, _) = files.load().map_err(anyhow::Error::msg)?;
    tracing::info!(
        trust_domain = %args.trust_domain,
        issuer = %issuer.info().subject,
        join_tokens = args.join_tokens.is_some(),
        token_review = token_review.is_some(),
        "identity service on"
    );
    Ok(Some(IdentityConfig {
        trust_domain: args.trust_domain,
        issuer: arc_swap::ArcSwap::from_pointee(issuer),
        issuer_files: args.dev_identity.is_none().then_some(files),
        issuer_reload_interval: args.issuer_reload_interval,
        verifier: Verifier {
            join_tokens: args.join_tokens,
            token_review,
        },
    }))
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
                identity: args.inject_identity == Switch::Enabled,
                trust_anchors: args.trust_anchors_configmap,
                inbound_mtls: args.inject_inbound_mtls,
                otlp_endpoint: args.inject_otlp_endpoint,
                trace_sampling: args.inject_trace_sampling,
                ..Default::default()
            },
        }),
        // clap requires the certificate and key with --webhook.
        _ => None,
    };
    let dev_identity = args.identity.dev_identity.clone();
    let token_review = token_review(&args.identity)?;
    let identity = identity_config(args.identity, token_review.clone())?.map(Arc::new);
    let insecure_dev = args.listeners.insecure_dev;
    let listeners = listeners(args.listeners, dev_identity.as_deref())?;
    let auth = authenticator(
        args.auth,
        insecure_dev,
        dev_identity.as_deref(),
        token_review,
    )?;
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()))
    };
    let etcd_tls = match (&args.etcd_ca, &args.etcd_cert, &args.etcd_key) {
        (None, _, _) => None,
        (Some(ca), cert, key) => Some(bulwark_control_plane::store::EtcdTls {
            ca: read(ca, "--etcd-ca")?,
            client: match (cert, key) {
                (Some(cert), Some(key)) => {
                    Some((read(cert, "--etcd-cert")?, read(key, "--etcd-key")?))
                }
                _ => None,
            },
        }),
    };
    let config = Config {
        etcd_tls,
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
        metrics: args.metrics,
        ready_file: args.ready_file,
        etcd_timeout: args.etcd_timeout,
        ack_lease_ttl: args.ack_lease_ttl,
        leader_ttl: args.leader_ttl,
        levels: LevelsConfig {
            interval: args.levels_interval,
            min_gap: args.levels_min_gap,
        },
        webhook,
        identity,
        listeners,
        auth,
        limits: bulwark_control_plane::Limits {
            max_request_body: args.max_request_body,
            write_rate: bulwark_control_plane::api::limits::WriteRate {
                per_second: args.writes_per_second,
                burst: args.write_burst,
            },
            max_streams_per_identity: args.max_streams_per_identity,
        },
    };
    bulwark_control_plane::run(config, shutdown_signal())
        .await
        .context("control plane")
}
