//! Sidecar injection for Kubernetes: the one implementation behind `meshctl inject` (workload
//! manifests, offline) and the control plane's mutating admission webhook (pods, as JSON Patch).
//!
//! Objects are plain `serde_json::Value`s — no Kubernetes type crate: injection touches a handful
//! of fields and must leave every other field, known to us or not, exactly as it was.
//!
//! ```text
//!  meshctl inject ─► inject_object ─────────────┐  (kind → pod template; opted out → Skipped)
//!                                               ▼
//!                                    pod::inject_template ─► annotations::Settings (overrides)
//!                                               ▲            sidecar::container, volume
//!  webhook ─► admission_review_response         │
//!             └ should_inject ─► json_patch_for_pod ─► patch::diff (submitted → injected)
//! ```
//!
//! The sidecar is added as a native sidecar (an init container with `restartPolicy: Always`,
//! Kubernetes 1.29+): it starts before the app containers, stops after them, and does not keep
//! a Job's pod from completing.

mod admission;
pub mod annotations;
mod errors;
mod patch;
mod pod;
mod quantity;
mod sidecar;

use serde_json::Value;

pub use admission::{admission_review_response, should_inject};
pub use errors::InjectError;
pub use patch::{PatchError, apply_patch, diff};
pub use sidecar::{SIDECAR_NAME, SIDECAR_UID, SNAPSHOT_DIR, SNAPSHOT_VOLUME};

/// The sidecar image injected unless `bulwark.dev/image` or the caller says otherwise.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/bulwark-mesh/sidecar:", env!("CARGO_PKG_VERSION"));
/// The control plane's gRPC address in the standard install (`deploy/kubernetes`).
pub const DEFAULT_CONTROL_PLANE: &str = "http://bulwark-control-plane.bulwark.svc:8081";

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
}

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
        }
    }
}

impl InjectOptions {
    /// Checks every value the way the matching annotation is checked.
    pub fn validate(&self) -> Result<(), InjectError> {
        use annotations::{
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
        for (option, port) in [
            ("admin port", self.ports.admin),
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
    /// Admin: probes, metrics (`bulwark.dev/admin-port`, default 15000).
    pub admin: u16,
    /// Inbound: callers of the app (`bulwark.dev/inbound-port`, default 15006).
    pub inbound: u16,
    /// Outbound: the app's calls (`bulwark.dev/outbound-port`, default 15001).
    pub outbound: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            admin: 15000,
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

/// What [`inject_object`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Injected {
    /// The object with the sidecar in its pod template (added, or replaced in place).
    Injected(Value),
    /// The object is to be left exactly as it was.
    Skipped(Skip),
}

/// Why an object was left untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not a workload kind with a pod template (a Service, a ConfigMap, a custom resource…);
    /// holds `apiVersion/kind`.
    NotAWorkload(String),
    /// The pod (template) says `bulwark.dev/inject: disabled`.
    OptedOut,
}

/// Adds the sidecar to a Deployment, StatefulSet, DaemonSet (`spec.template`), Job
/// (`spec.template`), CronJob (`spec.jobTemplate.spec.template`) or Pod; any other object is
/// [`Injected::Skipped`]. Injecting an injected object again gives the same object (with the
/// current options and annotations).
pub fn inject_object(obj: &Value, opts: &InjectOptions) -> Result<Injected, InjectError> {
    opts.validate()?;
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let template_path: &[&str] = match (group, kind) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => {
            &["spec", "template"]
        }
        ("batch", "CronJob") => &["spec", "jobTemplate", "spec", "template"],
        ("", "Pod") if api_version == "v1" => &[],
        _ => {
            return Ok(Injected::Skipped(Skip::NotAWorkload(format!(
                "{api_version}/{kind}"
            ))));
        }
    };
    let path = template_path.join(".");
    let pointer: String = template_path.iter().map(|p| format!("/{p}")).collect();
    let template = obj.pointer(&pointer).ok_or_else(|| {
        InjectError::malformed(&path, "must be a mapping with the pod's metadata and spec")
    })?;
    if let Some(meta) = template.get("metadata").and_then(Value::as_object)
        && annotations::switch(meta)? == Some(false)
    {
        return Ok(Injected::Skipped(Skip::OptedOut));
    }
    let workload = if kind == "Pod" {
        pod::pod_workload_name(obj)
    } else {
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut injected = obj.clone();
    let template = injected
        .pointer_mut(&pointer)
        .ok_or_else(|| InjectError::malformed(&path, "must be a mapping"))?;
    pod::inject_template(template, &path, workload.as_deref(), opts)?;
    Ok(Injected::Injected(injected))
}

/// The JSON Patch (RFC 6902) adding the sidecar to `pod`, as the admission webhook answers it;
/// empty when the pod is already injected exactly so. It does not look at the opt-in: see
/// [`should_inject`].
pub fn json_patch_for_pod(pod: &Value, opts: &InjectOptions) -> Result<Vec<Value>, InjectError> {
    opts.validate()?;
    let mut injected = pod.clone();
    let workload = pod::pod_workload_name(pod);
    pod::inject_template(&mut injected, "", workload.as_deref(), opts)?;
    Ok(diff(pod, &injected))
}
