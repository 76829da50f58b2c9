//! Per-pod overrides: the `bulwark.dev/*` annotations of a pod (template) read, checked and
//! laid over the caller's [`InjectOptions`], giving the [`Settings`] one sidecar is built from.
//! Every value is checked here, so that a bad one is refused by name instead of producing a
//! pod the API server or the sidecar would reject later.

use serde_json::{Map, Value};

use crate::errors::InjectError;
use crate::options::{InjectOptions, Ports, Resources};
use crate::quantity;
use crate::values::{
    check_control_plane, check_image, check_log_level, check_quantity, parse_cidr_list, parse_port,
    parse_port_list, parse_workers,
};

/// Opt in (`enabled`) or out (`disabled`) of injection; on the pod, or as a namespace label.
pub const INJECT: &str = "bulwark.dev/inject";
/// Set by injection on the pod (template): the version that injected it.
pub const INJECTED: &str = "bulwark.dev/injected";
/// The service the pod belongs to (selects its ServicePolicy); else the label
/// `app.kubernetes.io/name`, else the workload's name.
pub const SERVICE: &str = "bulwark.dev/service";
/// Control-plane gRPC address(es), comma-separated.
pub const CONTROL_PLANE: &str = "bulwark.dev/control-plane";
/// The sidecar's admin port (on loopback: policies, breakers, identity, metrics).
pub const ADMIN_PORT: &str = "bulwark.dev/admin-port";
/// The sidecar's health port (on the pod's IP: probes and metrics).
pub const HEALTH_PORT: &str = "bulwark.dev/health-port";
/// The sidecar's inbound port.
pub const INBOUND_PORT: &str = "bulwark.dev/inbound-port";
/// The sidecar's outbound port (where the app sends its calls).
pub const OUTBOUND_PORT: &str = "bulwark.dev/outbound-port";
/// The sidecar's CPU request.
pub const CPU_REQUEST: &str = "bulwark.dev/cpu-request";
/// The sidecar's memory request.
pub const MEMORY_REQUEST: &str = "bulwark.dev/memory-request";
/// The sidecar's memory limit.
pub const MEMORY_LIMIT: &str = "bulwark.dev/memory-limit";
/// The sidecar's log level.
pub const LOG_LEVEL: &str = "bulwark.dev/log-level";
/// The sidecar's image.
pub const IMAGE: &str = "bulwark.dev/image";
/// The sidecar's worker threads (`BULWARK_WORKERS`; unset: one).
pub const WORKERS: &str = "bulwark.dev/workers";
/// `enabled` (the default unless the caller says otherwise): a `bulwark-init` container
/// captures the pod's TCP traffic with iptables; `disabled`: apps call the sidecar on
/// localhost, and the pod needs no `NET_ADMIN`.
pub const CAPTURE: &str = "bulwark.dev/capture";
/// The `bulwark-init` image.
pub const INIT_IMAGE: &str = "bulwark.dev/init-image";
/// Ports the pod's callers reach directly, not through the sidecar (comma-separated); the
/// sidecar's health port always is.
pub const SKIP_INBOUND_PORTS: &str = "bulwark.dev/skip-inbound-ports";
/// Destination ports the app reaches directly, not through the sidecar (comma-separated).
pub const SKIP_OUTBOUND_PORTS: &str = "bulwark.dev/skip-outbound-ports";
/// Destination networks the app reaches directly, not through the sidecar (comma-separated
/// CIDRs).
pub const SKIP_OUTBOUND_CIDRS: &str = "bulwark.dev/skip-outbound-cidrs";

/// `enabled` (the default unless the caller says otherwise): the sidecar gets a workload
/// identity — the pod's projected ServiceAccount token (audience `bulwark`) as its proof, the
/// mesh's trust anchors — and speaks mutual TLS; `disabled`: plaintext only.
pub const IDENTITY: &str = "bulwark.dev/identity";
/// `strict`, `permissive` or `disable`: whether the pod's callers must use mutual TLS where its
/// ServicePolicy does not say (`BULWARK_INBOUND_MTLS`; unset: permissive).
pub const INBOUND_MTLS: &str = "bulwark.dev/inbound-mtls";
/// The share (0 to 1) of the traces the pod's sidecar starts that are sampled
/// (`BULWARK_TRACE_SAMPLING`); spans go to the injector's collector, if it has one.
pub const TRACE_SAMPLING: &str = "bulwark.dev/trace-sampling";

/// Label injection puts on the pod (template) so that NetworkPolicies can select the pods
/// that carry a sidecar (the control plane admits their gRPC streams).
pub const SIDECAR_LABEL: &str = "bulwark.dev/sidecar";
/// The well-known label naming the application, used as the service name.
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";

pub(crate) const SWITCH_PROBLEM: &str = "must be enabled or disabled";
const NOT_STRING_PROBLEM: &str = "must be a string (quote it in YAML)";

/// What one sidecar is built from: the options with the pod's overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub image: String,
    pub control_plane: String,
    pub ports: Ports,
    pub resources: Resources,
    pub log_level: String,
    pub log_format: String,
    /// Worker threads, when the pod asks for more than the sidecar's default of one.
    pub workers: Option<u8>,
    /// What `bulwark-init` captures; `None` without capture.
    pub capture: Option<Capture>,
    /// The trust anchors' ConfigMap; `None` without a workload identity.
    pub identity: Option<String>,
    /// `bulwark.dev/inbound-mtls`, when the pod sets it.
    pub inbound_mtls: Option<String>,
    /// The collector request spans go to.
    pub otlp_endpoint: Option<String>,
    /// `bulwark.dev/trace-sampling`, else the caller's.
    pub trace_sampling: Option<String>,
}

/// The `bulwark-init` container's settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Capture {
    pub image: String,
    /// The annotation's ports; the sidecar's health port is added when the container is built.
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    /// Normalised `address/prefix`.
    pub skip_outbound_cidrs: Vec<String>,
}

impl Settings {
    /// The options overridden by the annotations in `meta` (a pod's or template's metadata).
    pub(crate) fn new(
        meta: &Map<String, Value>,
        opts: &InjectOptions,
    ) -> Result<Self, InjectError> {
        let text = |key| annotation(meta, key);
        let checked =
            |key: &'static str, check: fn(&str) -> Result<(), &'static str>, default: &str| {
                match text(key)? {
                    Some(value) => {
                        check(value).map_err(|problem| bad(key, value, problem))?;
                        Ok::<_, InjectError>(value.to_string())
                    }
                    None => Ok(default.to_string()),
                }
            };
        let port = |key: &'static str, default: u16| match text(key)? {
            Some(value) => parse_port(value).map_err(|problem| bad(key, value, problem)),
            None => Ok(default),
        };
        let settings = Settings {
            image: checked(IMAGE, check_image, &opts.image)?,
            control_plane: checked(CONTROL_PLANE, check_control_plane, &opts.control_plane)?,
            ports: Ports {
                admin: port(ADMIN_PORT, opts.ports.admin)?,
                health: port(HEALTH_PORT, opts.ports.health)?,
                inbound: port(INBOUND_PORT, opts.ports.inbound)?,
                outbound: port(OUTBOUND_PORT, opts.ports.outbound)?,
            },
            resources: Resources {
                cpu_request: checked(CPU_REQUEST, check_quantity, &opts.resources.cpu_request)?,
                memory_request: checked(
                    MEMORY_REQUEST,
                    check_quantity,
                    &opts.resources.memory_request,
                )?,
                memory_limit: checked(MEMORY_LIMIT, check_quantity, &opts.resources.memory_limit)?,
            },
            log_level: checked(LOG_LEVEL, check_log_level, &opts.log_level)?,
            log_format: opts.log_format.clone(),
            workers: match text(WORKERS)? {
                Some(value) => Some(parse_workers(value).map_err(|p| bad(WORKERS, value, p))?),
                None => None,
            },
            capture: None,
            identity: match text(IDENTITY)? {
                None if opts.identity => Some(opts.trust_anchors.clone()),
                None | Some("disabled") => None,
                Some("enabled") => Some(opts.trust_anchors.clone()),
                Some(other) => return Err(bad(IDENTITY, other, SWITCH_PROBLEM)),
            },
            inbound_mtls: match text(INBOUND_MTLS)? {
                None => opts.inbound_mtls.clone(),
                Some(mode) => {
                    crate::values::check_mtls_mode(mode)
                        .map_err(|problem| bad(INBOUND_MTLS, mode, problem))?;
                    Some(mode.to_string())
                }
            },
            otlp_endpoint: opts.otlp_endpoint.clone(),
            trace_sampling: match text(TRACE_SAMPLING)? {
                None => opts.trace_sampling.clone(),
                Some(ratio) => {
                    crate::values::check_ratio(ratio)
                        .map_err(|problem| bad(TRACE_SAMPLING, ratio, problem))?;
                    Some(ratio.to_string())
                }
            },
        };
        let capture = match text(CAPTURE)? {
            None => opts.capture,
            Some("enabled") => true,
            Some("disabled") => false,
            Some(other) => return Err(bad(CAPTURE, other, SWITCH_PROBLEM)),
        };
        let list = |key: &'static str, parse: fn(&str) -> Result<_, &'static str>| match text(key)?
        {
            Some(value) => parse(value).map_err(|problem| bad(key, value, problem)),
            None => Ok(Vec::new()),
        };
        let settings = Settings {
            capture: if capture {
                Some(Capture {
                    image: checked(INIT_IMAGE, check_image, &opts.init_image)?,
                    skip_inbound_ports: list(SKIP_INBOUND_PORTS, parse_port_list)?,
                    skip_outbound_ports: list(SKIP_OUTBOUND_PORTS, parse_port_list)?,
                    skip_outbound_cidrs: match text(SKIP_OUTBOUND_CIDRS)? {
                        Some(value) => parse_cidr_list(value)
                            .map_err(|problem| bad(SKIP_OUTBOUND_CIDRS, value, problem))?,
                        None => Vec::new(),
                    },
                })
            } else {
                None
            },
            ..settings
        };
        settings.ports.check_distinct()?;
        settings.resources.check_request_within_limit()?;
        Ok(settings)
    }
}

impl Ports {
    /// The four ports differ (the sidecar binds each).
    pub(crate) fn check_distinct(&self) -> Result<(), InjectError> {
        let named = self.named();
        for (i, (first, a)) in named.iter().enumerate() {
            for (second, b) in &named[i + 1..] {
                if a == b {
                    return Err(InjectError::PortsCollide {
                        first,
                        second,
                        port: *a,
                    });
                }
            }
        }
        Ok(())
    }

    /// Each port with the annotation that overrides it.
    pub(crate) fn named(&self) -> [(&'static str, u16); 4] {
        [
            (ADMIN_PORT, self.admin),
            (HEALTH_PORT, self.health),
            (INBOUND_PORT, self.inbound),
            (OUTBOUND_PORT, self.outbound),
        ]
    }
}

impl Resources {
    fn check_request_within_limit(&self) -> Result<(), InjectError> {
        let request = quantity::parse(&self.memory_request);
        let limit = quantity::parse(&self.memory_limit);
        match (request, limit) {
            (Some(request), Some(limit)) if request > limit => {
                Err(InjectError::RequestAboveLimit {
                    request: self.memory_request.clone(),
                    limit: self.memory_limit.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The annotation `key` of `meta`, if set; a value that is not a string is refused.
pub(crate) fn annotation<'a>(
    meta: &'a Map<String, Value>,
    key: &'static str,
) -> Result<Option<&'a str>, InjectError> {
    string_entry(meta, "annotations", key)
}

/// The label `key` of `meta`, if set; a value that is not a string is refused.
pub(crate) fn label<'a>(
    meta: &'a Map<String, Value>,
    key: &'static str,
) -> Result<Option<&'a str>, InjectError> {
    string_entry(meta, "labels", key)
}

fn string_entry<'a>(
    meta: &'a Map<String, Value>,
    field: &str,
    key: &'static str,
) -> Result<Option<&'a str>, InjectError> {
    match meta.get(field).and_then(|m| m.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad_entry(field, key, other, NOT_STRING_PROBLEM)),
    }
}

fn bad_entry(field: &str, key: &'static str, value: &Value, problem: &'static str) -> InjectError {
    let value = value.to_string();
    if field == "labels" {
        InjectError::BadLabel {
            label: key,
            value,
            problem,
        }
    } else {
        InjectError::BadAnnotation {
            annotation: key,
            value,
            problem,
        }
    }
}

/// The opt-in switch of `meta`: its `bulwark.dev/inject` annotation (`enabled` → true,
/// `disabled` → false), else its label, else `None`.
pub(crate) fn switch(meta: &Map<String, Value>) -> Result<Option<bool>, InjectError> {
    for field in ["annotations", "labels"] {
        if let Some(value) = string_entry(meta, field, INJECT)? {
            return match value {
                "enabled" => Ok(Some(true)),
                "disabled" => Ok(Some(false)),
                other => Err(bad_entry(
                    field,
                    INJECT,
                    &Value::String(other.to_string()),
                    SWITCH_PROBLEM,
                )),
            };
        }
    }
    Ok(None)
}

pub(crate) fn bad(annotation: &'static str, value: &str, problem: &'static str) -> InjectError {
    InjectError::BadAnnotation {
        annotation,
        value: Value::String(value.to_string()).to_string(),
        problem,
    }
}
