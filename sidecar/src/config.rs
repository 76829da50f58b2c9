//! The sidecar's command line and environment (the names Kubernetes' downward API gives).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bulwark_proto::policy::units::parse_duration;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Bulwark sidecar: applies resilience policies to an app's outbound and inbound calls.
#[derive(Debug, Clone, Parser)]
#[command(name = "sidecar", version = bulwark_telemetry::LONG_VERSION)]
pub struct Config {
    /// Policy file or directory (standalone mode): YAML or JSON, reloaded when it changes.
    #[arg(
        long,
        env = "BULWARK_POLICIES",
        required_unless_present = "control_plane",
        conflicts_with = "control_plane"
    )]
    pub policies: Option<PathBuf>,

    /// Control-plane addresses (e.g. https://bulwark-control-plane.bulwark-system.svc:8081),
    /// tried in turn; `https://` verifies the control plane against the trust anchors.
    /// Needs `--service`: the control plane sends a pod the policies of its service.
    #[arg(
        long = "control-plane",
        env = "BULWARK_CONTROL_PLANE",
        value_delimiter = ',',
        requires = "service"
    )]
    pub control_plane: Vec<String>,

    /// Where the last applied control-plane snapshot is kept, to boot from when the control
    /// plane does not answer.
    #[arg(long, env = "BULWARK_SNAPSHOT_FILE")]
    pub snapshot_file: Option<PathBuf>,

    /// How long start-up waits for the control plane's first snapshot before booting from the
    /// snapshot file.
    #[arg(long, env = "BULWARK_CONTROL_PLANE_TIMEOUT", default_value = "3s", value_parser = parse_duration_arg)]
    pub control_plane_timeout: Duration,

    /// This pod's namespace: bare upstream names resolve here first.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// The service this sidecar sits beside (selects its ServicePolicy).
    #[arg(long, env = "BULWARK_SERVICE")]
    pub service: Option<String>,

    /// This pod's name (for reports and logs).
    #[arg(long, env = "POD_NAME")]
    pub pod: Option<String>,

    /// Outbound listener: the app calls upstreams through it.
    #[arg(long, env = "BULWARK_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,

    /// Inbound listener: callers reach the app through it.
    #[arg(long, env = "BULWARK_INBOUND", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,

    /// Serve connections captured by iptables (`bulwark-init`): the outbound and inbound
    /// listeners read each connection's original destination and detect its protocol (HTTP/1.1,
    /// HTTP/2, TLS, anything else as TCP). The outbound listener also listens on `[::1]` for
    /// connections captured by ip6tables.
    #[arg(long, env = "BULWARK_CAPTURE")]
    pub capture: bool,

    /// How long a captured connection may stay silent before it is forwarded as opaque TCP
    /// (a server-speaks-first protocol such as MySQL or SMTP waits this long once).
    #[arg(long, env = "BULWARK_DETECT_TIMEOUT", default_value = "1s", value_parser = parse_duration_arg)]
    pub detect_timeout: Duration,

    /// Admin listener: probes, metrics, applied config, breakers, identity. Keep it on
    /// loopback: it shows the policies this sidecar received.
    #[arg(long, env = "BULWARK_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// Health listener: only /health/live, /health/ready and /metrics, for the kubelet's
    /// probes and Prometheus (e.g. 0.0.0.0:15021) [default: none].
    #[arg(long, env = "BULWARK_HEALTH")]
    pub health: Option<SocketAddr>,

    /// The app's port on 127.0.0.1 for inbound traffic (overrides the ServicePolicy's app.port).
    #[arg(long, env = "BULWARK_APP_PORT")]
    pub app_port: Option<u16>,

    /// A local listener bound to one upstream, as ADDR=NAME (e.g. 127.0.0.1:9001=payments).
    #[arg(long = "upstream-port", env = "BULWARK_UPSTREAM_PORTS", value_delimiter = ',', value_parser = parse_port_binding)]
    pub upstream_ports: Vec<(SocketAddr, String)>,

    /// Largest request head accepted (HTTP/1.1 answers 431 past it).
    #[arg(long, env = "BULWARK_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// How long a client may take to send a request head.
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub header_read_timeout: Duration,

    /// A downstream connection with no request in progress for this long is closed
    /// gracefully (HTTP/2: GOAWAY). An idle HTTP/1.1 keep-alive connection is closed sooner,
    /// by --header-read-timeout.
    #[arg(long, env = "BULWARK_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration_arg)]
    pub idle_timeout: Duration,

    /// An upstream connection unused for this long is closed (idle HTTP/1.1 keep-alive
    /// connections and the HTTP/2 connection of an endpoint with nothing in flight). Keep it
    /// below the upstream servers' own keep-alive timeout, so the sidecar closes first.
    #[arg(long, env = "BULWARK_UPSTREAM_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration_arg)]
    pub upstream_idle_timeout: Duration,

    /// Connections each listener serves at once; more wait in the backlog until one closes
    /// (counted in bulwark_connection_limit_reached_total).
    #[arg(long, env = "BULWARK_MAX_CONNECTIONS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "BULWARK_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration_arg)]
    pub drain_timeout: Duration,

    /// How often the policy files are checked for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration_arg)]
    pub reload_interval: Duration,

    /// Header in which HTTP callers give their deadline in milliseconds (gRPC callers use
    /// `grpc-timeout`); the remaining budget is sent upstream in it. Empty disables it.
    #[arg(
        long,
        env = "BULWARK_DEADLINE_HEADER",
        default_value = "x-bulwark-timeout-ms"
    )]
    pub deadline_header: String,

    /// How often a health report is sent to the control plane.
    #[arg(long, env = "BULWARK_REPORT_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    pub report_interval: Duration,

    /// Log format.
    #[arg(long, env = "BULWARK_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax); RUST_LOG wins when set.
    #[arg(long, env = "BULWARK_LOG", default_value = "info")]
    pub log: String,

    /// Runtime worker threads. One (the default) runs everything on a single-threaded runtime,
    /// which batches the writes of many requests into one system call; raise it for a pod whose
    /// traffic needs more than one core of proxying.
    #[arg(long, env = "BULWARK_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,

    /// Trust anchors (PEM: the mesh's root certificates) — turns on workload identity and
    /// mTLS between sidecars. Reloaded when the file changes (root rotation).
    #[arg(long, env = "BULWARK_TRUST_ANCHORS", value_name = "PATH")]
    pub trust_anchors: Option<PathBuf>,

    /// The trust domain of workload identities.
    #[arg(long, env = "BULWARK_TRUST_DOMAIN", default_value = bulwark_identity::spiffe::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// This pod's service account: its identity is
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    #[arg(long, env = "BULWARK_SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,

    /// The pod's projected ServiceAccount token (audience bulwark), proof of identity in
    /// Kubernetes; read again at every certificate request.
    #[arg(
        long,
        env = "BULWARK_IDENTITY_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "join_token_file"
    )]
    pub identity_token_file: Option<PathBuf>,

    /// A join token (proof of identity outside Kubernetes), in a file.
    #[arg(long, env = "BULWARK_JOIN_TOKEN_FILE", value_name = "PATH")]
    pub join_token_file: Option<PathBuf>,

    /// The CA of the control plane's certificate (PEM), for `https://` addresses, when it is
    /// not one of the trust anchors.
    #[arg(long, env = "BULWARK_CONTROL_PLANE_CA", value_name = "PATH")]
    pub control_plane_ca: Option<PathBuf>,

    /// Control-plane addresses that issue workload certificates [default: --control-plane].
    #[arg(
        long,
        env = "BULWARK_IDENTITY_SERVER",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub identity_server: Vec<String>,

    /// Whether inbound callers must use mutual TLS where the ServicePolicy does not say
    /// (spec.inbound.mtls): strict (mTLS only), permissive (mTLS and plaintext) or disable.
    #[arg(long, env = "BULWARK_INBOUND_MTLS", default_value = "permissive", value_parser = parse_mtls_mode)]
    pub inbound_mtls: bulwark_proto::policy::MtlsMode,

    /// The app's HTTP probe paths: kubelet probes (GET, User-Agent kube-probe/) of these
    /// paths are admitted without mTLS or authorization (the injector sets them from the pod's
    /// probes).
    #[arg(
        long,
        env = "BULWARK_PROBE_PATHS",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub probe_paths: Vec<String>,

    /// Written (JSON with the bound addresses) once every listener is bound.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,

    /// An OpenTelemetry collector's OTLP/gRPC endpoint (`http://HOST:4317`): a span per
    /// sampled request and per attempt is exported there. Unset, no span is made (the
    /// `traceparent` is still passed on).
    #[arg(long, env = "BULWARK_OTLP_ENDPOINT", value_name = "URL", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// The share of the traces the sidecar starts that are sampled (0 to 1), as its
    /// `traceparent` tells the next hops; a request that came with a `traceparent` keeps its
    /// caller's decision. The default, 1%, is Istio's: a span costs about as much as proxying
    /// the request (docs/benchmarks.md).
    #[arg(long, env = "BULWARK_TRACE_SAMPLING", default_value_t = 0.01, value_parser = parse_ratio)]
    pub trace_sampling: f64,

    /// How often batched spans are sent to the collector.
    #[arg(long, env = "BULWARK_OTLP_EXPORT_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    pub otlp_export_interval: Duration,
}

fn parse_otlp_endpoint(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(s.to_string()),
        (Some("https"), _) => Err(format!(
            "{s:?}: the exporter speaks OTLP/gRPC without TLS (http://HOST:PORT); \
             run the collector's agent beside the pod or on its node"
        )),
        _ => Err(format!("{s:?} is not an http://HOST:PORT URL")),
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio from 0 to 1")),
    }
}

fn parse_mtls_mode(s: &str) -> Result<bulwark_proto::policy::MtlsMode, String> {
    use bulwark_proto::policy::MtlsMode;
    match s {
        "strict" => Ok(MtlsMode::Strict),
        "permissive" => Ok(MtlsMode::Permissive),
        "disable" => Ok(MtlsMode::Disable),
        other => Err(format!(
            "{other:?} is not a mode: strict, permissive or disable"
        )),
    }
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be longer than zero")),
        d => Ok(d),
    }
}

fn parse_port_binding(s: &str) -> Result<(SocketAddr, String), String> {
    let (addr, name) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ADDR=NAME (e.g. 127.0.0.1:9001=payments), got {s:?}"))?;
    let addr = addr
        .trim()
        .parse::<SocketAddr>()
        .map_err(|e| format!("{addr:?} is not an ip:port address: {e}"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("missing upstream name in {s:?}"));
    }
    Ok((addr, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_bindings() {
        assert_eq!(
            parse_port_binding("127.0.0.1:9001=payments"),
            Ok(("127.0.0.1:9001".parse().unwrap(), "payments".to_string()))
        );
        assert_eq!(
            parse_port_binding("9001"),
            Err("expected ADDR=NAME (e.g. 127.0.0.1:9001=payments), got \"9001\"".to_string())
        );
        assert!(parse_port_binding("localhost:1=x").is_err());
        assert!(parse_port_binding("127.0.0.1:1=").is_err());
    }

    #[test]
    fn the_control_plane_needs_a_service() {
        let err = Config::try_parse_from(["sidecar", "--control-plane", "http://127.0.0.1:1"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "the following required arguments were not provided:\n  --service <SERVICE>"
            ),
            "{err}"
        );
        let ok = Config::try_parse_from([
            "sidecar",
            "--control-plane",
            "http://127.0.0.1:1",
            "--service",
            "orders",
        ]);
        assert!(ok.is_ok());
    }

    #[test]
    fn tracing_flags_are_checked() {
        let c = Config::try_parse_from(["sidecar", "--policies", "p.yaml"]).unwrap();
        assert_eq!((c.otlp_endpoint, c.trace_sampling), (None, 0.01));
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!(
            parse_ratio("1.5"),
            Err("\"1.5\" is not a ratio from 0 to 1".into())
        );
        assert_eq!(
            parse_otlp_endpoint("http://collector:4317"),
            Ok("http://collector:4317".into())
        );
        assert_eq!(
            parse_otlp_endpoint("collector:4317"),
            Err("\"collector:4317\" is not an http://HOST:PORT URL".into())
        );
        assert!(
            parse_otlp_endpoint("https://collector:4317")
                .unwrap_err()
                .contains("without TLS")
        );
    }

    #[test]
    fn report_interval_defaults_to_five_seconds_and_must_be_positive() {
        let c = Config::try_parse_from(["sidecar", "--policies", "p.yaml"]).unwrap();
        assert_eq!(c.report_interval, Duration::from_secs(5));
        let c = Config::try_parse_from([
            "sidecar",
            "--policies",
            "p.yaml",
            "--report-interval",
            "250ms",
        ])
        .unwrap();
        assert_eq!(c.report_interval, Duration::from_millis(250));
        assert_eq!(
            parse_positive_duration("0s"),
            Err("\"0s\" must be longer than zero".into())
        );
    }
}
