//! Injection into one pod (template): checks what would clash with the sidecar, then adds — or
//! replaces in place — the sidecar init container, its volume and (with capture) the
//! `bulwark-init` container, and marks the pod. Every
//! workload kind and the admission webhook end here.

use serde_json::{Map, Value, json};

use crate::annotations::{self, APP_NAME_LABEL, INJECTED, SERVICE, SIDECAR_LABEL, Settings};
use crate::errors::InjectError;
use crate::options::InjectOptions;
use crate::sidecar::{
    self, ANCHORS_VOLUME, INIT_NAME, PodFacts, SIDECAR_NAME, SIDECAR_UID, ServiceName, TOKEN_VOLUME,
};
use crate::values::check_dns_label;

/// Adds the sidecar to `template`: a Pod, or a workload's pod template (both have `metadata`
/// and `spec`). `path` is where the template sits in its object (`spec.template`, or empty for
/// a Pod), for error messages; `workload` the name used when no label or annotation names the
/// service.
pub(crate) fn inject_template(
    template: &mut Value,
    path: &str,
    workload: Option<&str>,
    opts: &InjectOptions,
) -> Result<(), InjectError> {
    let at = |field: &str| {
        if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    let Value::Object(template) = template else {
        return Err(InjectError::malformed(
            if path.is_empty() { "." } else { path },
            "must be a mapping with the pod's metadata and spec",
        ));
    };
    let meta = match template.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(meta)) => meta.clone(),
        Some(_) => return Err(InjectError::malformed(at("metadata"), "must be a mapping")),
    };
    let settings = Settings::new(&meta, opts)?;
    let service = service_name(&meta, workload)?;

    let Some(Value::Object(spec)) = template.get_mut("spec") else {
        return Err(InjectError::malformed(
            at("spec"),
            "must be a mapping with the pod's containers",
        ));
    };
    check_spec(spec, &settings, &at)?;

    let facts = pod_facts(spec);
    let sidecar = sidecar::container(&settings, &service, &facts);
    let init = list(spec, "initContainers", &at)?;
    match init.iter().position(|c| name_of(c) == Some(SIDECAR_NAME)) {
        Some(i) => init[i] = sidecar,
        // First, so that it also serves the init containers that follow.
        None => init.insert(0, sidecar),
    }
    let capture_at = init.iter().position(|c| name_of(c) == Some(INIT_NAME));
    match (&settings.capture, capture_at) {
        (Some(capture), Some(i)) => init[i] = sidecar::init_container(&settings, capture),
        // Before the sidecar: the rules are in place before anything in the pod connects.
        (Some(capture), None) => init.insert(0, sidecar::init_container(&settings, capture)),
        (None, Some(i)) => {
            init.remove(i);
        }
        (None, None) => {}
    }
    let volumes = list(spec, "volumes", &at)?;
    let mut ours = vec![(sidecar::snapshot_volume(), "emptyDir")];
    if let Some(anchors) = &settings.identity {
        let [token, roots] = sidecar::identity_volumes(anchors);
        ours.push((token, "projected"));
        ours.push((roots, "configMap"));
    }
    for (volume, kind) in ours {
        let name = name_of(&volume).map(str::to_string);
        let existing = volumes.iter().position(|v| name_of(v) == name.as_deref());
        match existing {
            // Ours from an earlier injection: replaced.
            Some(i) if volumes[i].get(kind).is_some() => volumes[i] = volume,
            Some(_) => {
                return Err(InjectError::VolumeNameTaken {
                    list: at("spec.volumes"),
                    name: name.unwrap_or_default(),
                });
            }
            None => volumes.push(volume),
        }
    }
    // Identity turned off since an earlier injection: its volumes go.
    if settings.identity.is_none() {
        volumes.retain(|v| {
            !matches!(name_of(v), Some(TOKEN_VOLUME | ANCHORS_VOLUME))
                || !(v.get("projected").is_some() || v.get("configMap").is_some())
        });
    }

    let meta = template
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| InjectError::malformed(at("metadata"), "must be a mapping"))?;
    let annotations = entry(meta, "annotations", &at)?;
    annotations.insert(INJECTED.into(), json!(opts.version));
    // A Prometheus that discovers pods by annotation scrapes the sidecar's health port, which
    // serves /metrics (never the admin port). A pod that names its own scrape target keeps it:
    // these annotations hold one target per pod.
    if !annotations.contains_key(PROMETHEUS_SCRAPE) {
        annotations.insert(PROMETHEUS_SCRAPE.into(), json!("true"));
        annotations.insert(
            PROMETHEUS_PORT.into(),
            json!(settings.ports.health.to_string()),
        );
        annotations.insert(PROMETHEUS_PATH.into(), json!("/metrics"));
    }
    entry(meta, "labels", &at)?.insert(SIDECAR_LABEL.into(), json!("true"));
    Ok(())
}

/// The annotations plain Prometheus discovers scrape targets by.
const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
const PROMETHEUS_PORT: &str = "prometheus.io/port";
const PROMETHEUS_PATH: &str = "prometheus.io/path";

/// The pod's service account, and the HTTP paths its app containers are probed on.
fn pod_facts(spec: &Map<String, Value>) -> PodFacts {
    let service_account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let mut probe_paths: Vec<String> = Vec::new();
    let containers = spec.get("containers").and_then(Value::as_array);
    for container in containers.into_iter().flatten() {
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let path = container
                .get(probe)
                .and_then(|p| p.get("httpGet"))
                .and_then(|h| h.get("path"))
                .and_then(Value::as_str);
            if let Some(path) = path.filter(|p| p.starts_with('/') && !p.contains(','))
                && !probe_paths.iter().any(|p| p == path)
            {
                probe_paths.push(path.to_string());
            }
        }
    }
    PodFacts {
        service_account,
        probe_paths,
    }
}

/// What the pod does that the sidecar cannot live with.
fn check_spec(
    spec: &Map<String, Value>,
    settings: &Settings,
    at: &dyn Fn(&str) -> String,
) -> Result<(), InjectError> {
    if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
        return Err(InjectError::HostNetwork);
    }
    let containers = match spec.get("containers") {
        Some(Value::Array(containers)) if !containers.is_empty() => containers,
        _ => {
            return Err(InjectError::malformed(
                at("spec.containers"),
                "must be a non-empty list of containers",
            ));
        }
    };
    for name in [SIDECAR_NAME, INIT_NAME] {
        if containers.iter().any(|c| name_of(c) == Some(name)) {
            return Err(InjectError::ContainerNameTaken {
                list: at("spec.containers"),
                name,
            });
        }
    }
    let init = match spec.get("initContainers") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(init)) => init.as_slice(),
        Some(_) => {
            return Err(InjectError::malformed(
                at("spec.initContainers"),
                "must be a list of containers",
            ));
        }
    };
    // The app's init containers run (or, as sidecars, keep running) beside the sidecar in the
    // same network namespace: their ports clash just as the app's do.
    let others = || {
        init.iter()
            .filter(|c| !matches!(name_of(c), Some(SIDECAR_NAME | INIT_NAME)))
            .chain(containers)
    };
    if settings.capture.is_some() {
        let pod_uid = run_as_user(spec);
        for container in others() {
            let container_uid = container
                .get("securityContext")
                .and_then(|c| c.get("runAsUser").and_then(Value::as_u64));
            if container_uid.or(pod_uid) == Some(u64::from(SIDECAR_UID)) {
                return Err(InjectError::RunsAsSidecarUid {
                    container: name_of(container).unwrap_or("").to_string(),
                    uid: SIDECAR_UID,
                });
            }
        }
    }
    for container in others() {
        let name = name_of(container).unwrap_or("");
        let ports = container.get("ports").and_then(Value::as_array);
        for port in ports.into_iter().flatten() {
            let Some(number) = port.get("containerPort").and_then(Value::as_u64) else {
                continue;
            };
            for (annotation, taken) in settings.ports.named() {
                if number == u64::from(taken) {
                    return Err(InjectError::PortInUse {
                        container: name.to_string(),
                        port: taken,
                        annotation,
                    });
                }
            }
        }
    }
    Ok(())
}

/// The service the sidecar serves: the `bulwark.dev/service` annotation, else the
/// `app.kubernetes.io/name` label — both read through the downward API, so the container does
/// not repeat them — else the workload's name.
fn service_name(
    meta: &Map<String, Value>,
    workload: Option<&str>,
) -> Result<ServiceName, InjectError> {
    if let Some(service) = annotations::annotation(meta, SERVICE)? {
        check_dns_label(service).map_err(|problem| annotations::bad(SERVICE, service, problem))?;
        return Ok(ServiceName::Field(format!(
            "metadata.annotations['{SERVICE}']"
        )));
    }
    if annotations::label(meta, APP_NAME_LABEL)?.is_some_and(|name| !name.is_empty()) {
        return Ok(ServiceName::Field(format!(
            "metadata.labels['{APP_NAME_LABEL}']"
        )));
    }
    match workload {
        Some(name) if !name.is_empty() => Ok(ServiceName::Literal(name.to_string())),
        _ => Err(InjectError::NoService),
    }
}

/// The name of the workload a pod belongs to, as the admission webhook sees it: its
/// controller's name — a ReplicaSet's without the `pod-template-hash`, i.e. the Deployment's —
/// else its own name, else its `generateName` prefix.
pub(crate) fn pod_workload_name(pod: &Value) -> Option<String> {
    let meta = pod.get("metadata")?;
    let owners = meta.get("ownerReferences").and_then(Value::as_array);
    let controller = owners
        .into_iter()
        .flatten()
        .find(|o| o.get("controller") == Some(&Value::Bool(true)));
    if let Some(owner) = controller {
        let name = owner.get("name").and_then(Value::as_str).unwrap_or("");
        let hash = meta
            .get("labels")
            .and_then(|l| l.get("pod-template-hash"))
            .and_then(Value::as_str);
        let deployment = match (owner.get("kind").and_then(Value::as_str), hash) {
            (Some("ReplicaSet"), Some(hash)) => name.strip_suffix(&format!("-{hash}")),
            _ => None,
        };
        let name = deployment.unwrap_or(name);
        if !name.is_empty() {
            return Some(name.to_string());
        }
    }
    let own = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let generated = meta
        .get("generateName")
        .and_then(Value::as_str)
        .map(|g| g.trim_end_matches('-'))
        .filter(|g| !g.is_empty());
    own.or(generated).map(str::to_string)
}

/// The pod-level `securityContext.runAsUser`, which containers inherit unless they set their own.
fn run_as_user(spec: &Map<String, Value>) -> Option<u64> {
    spec.get("securityContext")?.get("runAsUser")?.as_u64()
}

fn name_of(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// The list `field` of `spec`, created empty when missing.
fn list<'a>(
    spec: &'a mut Map<String, Value>,
    field: &'static str,
    at: &dyn Fn(&str) -> String,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let value = spec.entry(field).or_insert_with(|| json!([]));
    if value.is_null() {
        *value = json!([]);
    }
    value
        .as_array_mut()
        .ok_or_else(|| InjectError::malformed(at(&format!("spec.{field}")), "must be a list"))
}

/// The mapping `field` of `meta`, created empty when missing.
fn entry<'a>(
    meta: &'a mut Map<String, Value>,
    field: &'static str,
    at: &dyn Fn(&str) -> String,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    let value = meta.entry(field).or_insert_with(|| json!({}));
    if value.is_null() {
        *value = json!({});
    }
    value.as_object_mut().ok_or_else(|| {
        InjectError::malformed(at(&format!("metadata.{field}")), "must be a mapping")
    })
}
