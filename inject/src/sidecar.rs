//! The sidecar container and its snapshot volume, as Kubernetes JSON: everything injection adds
//! to a pod, built from [`Settings`] and nothing else, so that injecting twice gives the same
//! container.

use serde_json::{Value, json};

use crate::annotations::Settings;

/// The sidecar's container name; an init container by that name is replaced on re-injection.
pub const SIDECAR_NAME: &str = "bulwark-sidecar";
/// The `emptyDir` volume holding the sidecar's last applied policy snapshot.
pub const SNAPSHOT_VOLUME: &str = "bulwark-snapshot";
/// Where the snapshot volume is mounted in the sidecar.
pub const SNAPSHOT_DIR: &str = "/var/run/bulwark";
/// The user of the distroless `nonroot` image; numeric so that the kubelet can check
/// `runAsNonRoot`.
pub const SIDECAR_UID: u32 = 65532;

/// Where the sidecar's service name comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServiceName {
    /// A downward-API field of the pod (`metadata.labels['app.kubernetes.io/name']`).
    Field(String),
    /// A fixed name (the workload's).
    Literal(String),
}

/// The sidecar as a native sidecar: an init container with `restartPolicy: Always`. The
/// kubelet starts it before the app containers — and, thanks to the startup probe, only
/// once it serves — keeps it running beside them, stops it after them, and does not wait for it
/// when deciding that a Job's pod has completed.
pub(crate) fn container(settings: &Settings, service: &ServiceName) -> Value {
    let ports = settings.ports;
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let env_field = |name: &str, path: &str| {
        let mut var = field(path);
        var["name"] = json!(name);
        var
    };
    let service_env = match service {
        ServiceName::Field(path) => env_field("BULWARK_SERVICE", path),
        ServiceName::Literal(name) => json!({"name": "BULWARK_SERVICE", "value": name}),
    };
    // The kubelet probes the pod's IP, so the admin listener cannot stay on loopback; the
    // outbound listener can, and does (only the app should send through it).
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": ports.admin},
            "periodSeconds": period,
            "timeoutSeconds": 1,
            "failureThreshold": failures,
        })
    };
    let mut env = vec![
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("POD_NAME", "metadata.name"),
        service_env,
        json!({"name": "BULWARK_CONTROL_PLANE", "value": settings.control_plane}),
        json!({"name": "BULWARK_SNAPSHOT_FILE", "value": format!("{SNAPSHOT_DIR}/snapshot.json")}),
        json!({"name": "BULWARK_ADMIN", "value": format!("0.0.0.0:{}", ports.admin)}),
        json!({"name": "BULWARK_INBOUND", "value": format!("0.0.0.0:{}", ports.inbound)}),
        json!({"name": "BULWARK_OUTBOUND", "value": format!("127.0.0.1:{}", ports.outbound)}),
        json!({"name": "BULWARK_LOG", "value": settings.log_level}),
        json!({"name": "BULWARK_LOG_FORMAT", "value": settings.log_format}),
    ];
    if let Some(workers) = settings.workers {
        env.push(json!({"name": "BULWARK_WORKERS", "value": workers.to_string()}));
    }
    json!({
        "name": SIDECAR_NAME,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "env": env,
        "ports": [
            {"name": "bulwark-admin", "containerPort": ports.admin, "protocol": "TCP"},
            {"name": "bulwark-in", "containerPort": ports.inbound, "protocol": "TCP"},
            {"name": "bulwark-out", "containerPort": ports.outbound, "protocol": "TCP"},
        ],
        // Up to 30 s to start; the app containers wait for it.
        "startupProbe": probe("/health/live", 1, 30),
        // Restarts a sidecar that stopped answering at all.
        "livenessProbe": probe("/health/live", 10, 3),
        // Counts towards the pod's readiness: a sidecar without policies, draining, or told
        // `ready: false` by its degradation level takes the pod out of its Services.
        "readinessProbe": probe("/health/ready", 5, 2),
        // No CPU limit: throttling a proxy adds latency to every call of the app.
        "resources": {
            "requests": {
                "cpu": settings.resources.cpu_request,
                "memory": settings.resources.memory_request,
            },
            "limits": {"memory": settings.resources.memory_limit},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": SNAPSHOT_VOLUME, "mountPath": SNAPSHOT_DIR}],
    })
}

/// The snapshot volume: an `emptyDir` survives restarts of the sidecar (which then boots from
/// its last snapshot when the control plane is away) but not the pod.
pub(crate) fn snapshot_volume() -> Value {
    json!({"name": SNAPSHOT_VOLUME, "emptyDir": {}})
}
