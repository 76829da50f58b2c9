//! The sidecar container, its snapshot volume and the `bulwark-init` container, as Kubernetes
//! JSON: everything injection adds to a pod, built from [`Settings`] and nothing else, so that
//! injecting twice gives the same containers.

use serde_json::{Value, json};

use crate::annotations::{Capture, Settings};

/// The sidecar's container name; an init container by that name is replaced on re-injection.
pub const SIDECAR_NAME: &str = "bulwark-sidecar";
/// The capture container's name; replaced on re-injection, removed when capture is turned off.
pub const INIT_NAME: &str = "bulwark-init";
/// The `emptyDir` volume holding the sidecar's last applied policy snapshot.
pub const SNAPSHOT_VOLUME: &str = "bulwark-snapshot";
/// Where the snapshot volume is mounted in the sidecar.
pub const SNAPSHOT_DIR: &str = "/var/run/bulwark";
/// The projected ServiceAccount token volume: the sidecar's proof of identity.
pub const TOKEN_VOLUME: &str = "bulwark-identity-token";
/// Where the token volume is mounted in the sidecar.
pub const TOKEN_DIR: &str = "/var/run/secrets/bulwark/identity";
/// The trust anchors' volume (the ConfigMap).
pub const ANCHORS_VOLUME: &str = "bulwark-trust-anchors";
/// Where the trust anchors are mounted in the sidecar.
pub const ANCHORS_DIR: &str = "/var/run/bulwark/trust-anchors";
/// The audience of the token: the control plane checks it with a TokenReview for this one.
pub const TOKEN_AUDIENCE: &str = "bulwark";
/// The user of the distroless `nonroot` image; numeric so that the kubelet can check
/// `runAsNonRoot`.
pub const SIDECAR_UID: u32 = 65532;

/// What the sidecar needs to know of the pod it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodFacts {
    /// `spec.serviceAccountName` (`default` when unset): the identity it asks for.
    pub service_account: String,
    /// The HTTP paths of the app containers' probes, which the kubelet may call without mTLS.
    pub probe_paths: Vec<String>,
}

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
pub(crate) fn container(settings: &Settings, service: &ServiceName, pod: &PodFacts) -> Value {
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
    // The kubelet probes the pod's IP: the health listener (probes and metrics only) binds
    // there; the admin listener (the applied policies, breakers, identity) and the outbound
    // listener stay on loopback (only the pod should reach them).
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": ports.health},
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
        json!({"name": "BULWARK_ADMIN", "value": format!("127.0.0.1:{}", ports.admin)}),
        json!({"name": "BULWARK_HEALTH", "value": format!("0.0.0.0:{}", ports.health)}),
        json!({"name": "BULWARK_INBOUND", "value": format!("0.0.0.0:{}", ports.inbound)}),
        json!({"name": "BULWARK_OUTBOUND", "value": format!("127.0.0.1:{}", ports.outbound)}),
        json!({"name": "BULWARK_LOG", "value": settings.log_level}),
        json!({"name": "BULWARK_LOG_FORMAT", "value": settings.log_format}),
    ];
    if let Some(workers) = settings.workers {
        env.push(json!({"name": "BULWARK_WORKERS", "value": workers.to_string()}));
    }
    if settings.capture.is_some() {
        env.push(json!({"name": "BULWARK_CAPTURE", "value": "true"}));
    }
    let mut mounts = vec![json!({"name": SNAPSHOT_VOLUME, "mountPath": SNAPSHOT_DIR})];
    if settings.identity.is_some() {
        env.extend([
            json!({"name": "BULWARK_SERVICE_ACCOUNT", "value": pod.service_account}),
            json!({"name": "BULWARK_IDENTITY_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")}),
            json!({"name": "BULWARK_TRUST_ANCHORS", "value": format!("{ANCHORS_DIR}/roots.pem")}),
        ]);
        if !pod.probe_paths.is_empty() {
            env.push(json!({"name": "BULWARK_PROBE_PATHS", "value": pod.probe_paths.join(",")}));
        }
        mounts.push(json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}));
        mounts.push(json!({"name": ANCHORS_VOLUME, "mountPath": ANCHORS_DIR, "readOnly": true}));
    }
    if let Some(mode) = &settings.inbound_mtls {
        env.push(json!({"name": "BULWARK_INBOUND_MTLS", "value": mode}));
    }
    if let Some(endpoint) = &settings.otlp_endpoint {
        env.push(json!({"name": "BULWARK_OTLP_ENDPOINT", "value": endpoint}));
    }
    if let Some(ratio) = &settings.trace_sampling {
        env.push(json!({"name": "BULWARK_TRACE_SAMPLING", "value": ratio}));
    }
    json!({
        "name": SIDECAR_NAME,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "env": env,
        "ports": [
            {"name": "bulwark-health", "containerPort": ports.health, "protocol": "TCP"},
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
        "volumeMounts": mounts,
    })
}

/// The `bulwark-init` container: runs once, before the sidecar, and installs the rules that
/// send the pod's TCP traffic to the sidecar's listeners — all but the sidecar's own (its uid),
/// the health port (the kubelet's probes) and what the pod's annotations skip. It needs
/// `NET_ADMIN` and `NET_RAW` in the pod's network namespace and root for iptables; nothing
/// else, and it is gone before the app starts.
pub(crate) fn init_container(settings: &Settings, capture: &Capture) -> Value {
    let ports = settings.ports;
    let join = |items: Vec<String>| items.join(",");
    let mut skip_inbound = vec![ports.health];
    skip_inbound.extend(
        capture
            .skip_inbound_ports
            .iter()
            .filter(|p| **p != ports.health),
    );
    let mut args = vec![
        "--outbound-port".to_string(),
        ports.outbound.to_string(),
        "--inbound-port".to_string(),
        ports.inbound.to_string(),
        "--sidecar-uid".to_string(),
        SIDECAR_UID.to_string(),
        "--skip-inbound-ports".to_string(),
        join(skip_inbound.iter().map(u16::to_string).collect()),
    ];
    if !capture.skip_outbound_ports.is_empty() {
        args.push("--skip-outbound-ports".to_string());
        args.push(join(
            capture
                .skip_outbound_ports
                .iter()
                .map(u16::to_string)
                .collect(),
        ));
    }
    if !capture.skip_outbound_cidrs.is_empty() {
        args.push("--skip-outbound-cidrs".to_string());
        args.push(join(capture.skip_outbound_cidrs.clone()));
    }
    json!({
        "name": INIT_NAME,
        "image": capture.image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            // iptables takes its lock under /run.
            "readOnlyRootFilesystem": false,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "runAsGroup": 0,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

/// The identity volumes: the pod's ServiceAccount token for the audience `bulwark` (the kubelet
/// rotates it; the sidecar reads it at every certificate request), and the trust anchors.
pub(crate) fn identity_volumes(trust_anchors: &str) -> [Value; 2] {
    [
        json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE,
                "expirationSeconds": 3600,
                "path": "token",
            }}]},
        }),
        json!({"name": ANCHORS_VOLUME, "configMap": {"name": trust_anchors}}),
    ]
}

/// The snapshot volume: an `emptyDir` survives restarts of the sidecar (which then boots from
/// its last snapshot when the control plane is away) but not the pod.
pub(crate) fn snapshot_volume() -> Value {
    json!({"name": SNAPSHOT_VOLUME, "emptyDir": {}})
}
