//! What an injection is told: the sidecar's image, the control plane, ports and resources, as
//! the caller (meshctl's flags, the webhook's configuration) gives them before the pod's own
//! annotations override them.

use crate::errors::InjectError;

/// The sidecar image injected unless `bulwark.dev/image` or the caller says otherwise.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/bulwark-mesh/sidecar:", env!("CARGO_PKG_VERSION"));
/// The image of the `bulwark-init` container that installs the capture rules.
pub const DEFAULT_INIT_IMAGE: &str =
    concat!("ghcr.io/bulwark-mesh/init:", env!("CARGO_PKG_VERSION"));
/// The control plane's gRPC address in the standard install (`deploy/kubernetes`).
pub const DEFAULT_CONTROL_PLANE: &str = "https://bulwark-control-plane.bulwark.svc:8081";

/// The caller's defaults for every injected sidecar; pods override them by annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectOptions {
    /// Sidecar image (`bulwark.dev/image`).
    pub image: String,
    /// Control-plane gRPC address(es), comma-separated (`bulwark.dev/control-plane`).
    pub control_plane: String,
    /// Written to the `bulwark.dev/injected` annotation.
    pub version: String,
    /// The sidecar's ports.
    pub ports: Ports,
    /// The sidecar's resource requests and limit.
    pub resources: Resources,
    /// `trace`, `debug`, `info`, `warn`, `error` or `off` (`bulwark.dev/log-level`).
    pub log_level: String,
    /// `json` (for log collectors) or `text`.
    pub log_format: String,
    /// Capture the pod's traffic with iptables (`bulwark.dev/capture`): adds the `bulwark-init`
    /// container, which needs `NET_ADMIN`. Without it, apps call the sidecar on localhost.
    pub capture: bool,
    /// The `bulwark-init` image (`bulwark.dev/init-image`).
    pub init_image: String,
    /// Give sidecars a workload identity and mutual TLS (`bulwark.dev/identity`).
    pub identity: bool,
    /// The ConfigMap in the pod's namespace holding the mesh's trust anchors (`roots.pem`).
    pub trust_anchors: String,
    /// The mesh-wide inbound mTLS mode (`strict`, `permissive`, `disable`) for pods that set no
    /// `bulwark.dev/inbound-mtls`; `None`: the sidecar's own default, `permissive`.
    pub inbound_mtls: Option<String>,
    /// The OpenTelemetry collector sidecars export request spans to (`http://HOST:4317`);
    /// `None`: no spans.
    pub otlp_endpoint: Option<String>,
    /// The share (0 to 1) of the traces a sidecar starts that are sampled, for pods that set no
    /// `bulwark.dev/trace-sampling`; `None`: the sidecar's default, 0.01.
    pub trace_sampling: Option<String>,
}

/// The trust anchors' ConfigMap unless the caller says otherwise.
pub const DEFAULT_TRUST_ANCHORS: &str = "bulwark-trust-anchors";

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            image: DEFAULT_IMAGE.to_string(),
            control_plane: DEFAULT_CONTROL_PLANE.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ports: Ports::default(),
            resources: Resources::default(),
            log_level: "info".to_string(),
            log_format: "json".to_string(),
            capture: true,
            init_image: DEFAULT_INIT_IMAGE.to_string(),
            identity: true,
            trust_anchors: DEFAULT_TRUST_ANCHORS.to_string(),
            inbound_mtls: None,
            otlp_endpoint: None,
            trace_sampling: None,
        }
    }
}

impl InjectOptions {
    /// Checks every value the way the matching annotation is checked.
    pub fn validate(&self) -> Result<(), InjectError> {
        use crate::values::{
            PORT_PROBLEM, check_control_plane, check_image, check_log_format, check_log_level,
            check_quantity,
        };
        let check =
            |option: &'static str, value: &str, check: fn(&str) -> Result<(), &'static str>| {
                check(value).map_err(|problem| InjectError::BadOption {
                    option,
                    value: value.to_string(),
                    problem,
                })
            };
        check("sidecar image", &self.image, check_image)?;
        check("init image", &self.init_image, check_image)?;
        check(
            "control-plane address",
            &self.control_plane,
            check_control_plane,
        )?;
        check("CPU request", &self.resources.cpu_request, check_quantity)?;
        check(
            "memory request",
            &self.resources.memory_request,
            check_quantity,
        )?;
        check("memory limit", &self.resources.memory_limit, check_quantity)?;
        check("log level", &self.log_level, check_log_level)?;
        check("log format", &self.log_format, check_log_format)?;
        check(
            "trust anchors ConfigMap",
            &self.trust_anchors,
            crate::values::check_dns_subdomain,
        )?;
        if let Some(mode) = &self.inbound_mtls {
            check("inbound mTLS mode", mode, crate::values::check_mtls_mode)?;
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            check(
                "OTLP endpoint",
                endpoint,
                crate::values::check_otlp_endpoint,
            )?;
        }
        if let Some(ratio) = &self.trace_sampling {
            check("trace sampling", ratio, crate::values::check_ratio)?;
        }
        for (option, port) in [
            ("admin port", self.ports.admin),
            ("health port", self.ports.health),
            ("inbound port", self.ports.inbound),
            ("outbound port", self.ports.outbound),
        ] {
            if port == 0 {
                return Err(InjectError::BadOption {
                    option,
                    value: port.to_string(),
                    problem: PORT_PROBLEM,
                });
            }
        }
        self.ports.check_distinct()
    }
}

/// The sidecar's listeners (defaults as in `docs/sidecar.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Admin, on loopback: the applied policies, breakers, identity, metrics
    /// (`bulwark.dev/admin-port`, default 15000).
    pub admin: u16,
    /// Health, on the pod's IP: the kubelet's probes and Prometheus' scrapes
    /// (`bulwark.dev/health-port`, default 15021).
    pub health: u16,
    /// Inbound: callers of the app (`bulwark.dev/inbound-port`, default 15006).
    pub inbound: u16,
    /// Outbound: the app's calls (`bulwark.dev/outbound-port`, default 15001).
    pub outbound: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            admin: 15000,
            health: 15021,
            inbound: 15006,
            outbound: 15001,
        }
    }
}

/// The sidecar's resources, as Kubernetes quantities. No CPU limit on purpose: throttling the
/// proxy adds latency to every call the app makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// `bulwark.dev/cpu-request`, default `100m`.
    pub cpu_request: String,
    /// `bulwark.dev/memory-request`, default `64Mi`.
    pub memory_request: String,
    /// `bulwark.dev/memory-limit`, default `256Mi`.
    pub memory_limit: String,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_request: "100m".to_string(),
            memory_request: "64Mi".to_string(),
            memory_limit: "256Mi".to_string(),
        }
    }
}
