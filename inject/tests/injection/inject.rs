//! `inject_object` beyond the golden files: what is skipped, how re-injection replaces the
//! sidecar in place, per-pod overrides, and every refusal with its exact message.

use bulwark_inject::{
    INIT_NAME, InjectError, InjectOptions, Injected, SIDECAR_NAME, Skip, inject_object,
};
use serde_json::{Value, json};

fn deployment(template: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "checkout", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": template,
        },
    })
}

fn web(ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|p| json!({"containerPort": p})).collect();
    json!({"name": "web", "image": "shop/checkout:1", "ports": ports})
}

fn with_annotations(annotations: Value) -> Value {
    deployment(json!({
        "metadata": {"labels": {"app": "checkout"}, "annotations": annotations},
        "spec": {"containers": [web(&[8080])]},
    }))
}

fn inject(obj: &Value) -> Result<Injected, InjectError> {
    inject_object(obj, &InjectOptions::default())
}

fn injected(obj: &Value) -> Value {
    match inject(obj) {
        Ok(Injected::Injected(value)) => value,
        other => panic!("expected an injected object, got {other:?}"),
    }
}

/// The refusal's message.
fn refusal(obj: &Value) -> String {
    match inject(obj) {
        Err(e) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn sidecar(obj: &Value) -> &Value {
    let init = obj
        .pointer("/spec/template/spec/initContainers")
        .and_then(Value::as_array)
        .expect("initContainers");
    init.iter()
        .find(|c| c["name"] == SIDECAR_NAME)
        .expect("the sidecar init container")
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("env {name}"))
}

#[test]
fn other_kinds_and_opted_out_pods_are_skipped() {
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
    assert_eq!(
        inject(&service),
        Ok(Injected::Skipped(Skip::NotAWorkload("v1/Service".into())))
    );
    // Same kind name, another API group: not ours to touch.
    let custom = json!({"apiVersion": "example.com/v1", "kind": "Deployment", "spec": {}});
    assert_eq!(
        inject(&custom),
        Ok(Injected::Skipped(Skip::NotAWorkload(
            "example.com/v1/Deployment".into()
        )))
    );
    let disabled = with_annotations(json!({"bulwark.dev/inject": "disabled"}));
    assert_eq!(inject(&disabled), Ok(Injected::Skipped(Skip::OptedOut)));
}

#[test]
fn the_sidecar_is_a_native_sidecar_started_first() {
    let obj = deployment(json!({
        "metadata": {"labels": {"app": "checkout"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "shop/migrate:1"}],
            "containers": [web(&[8080])],
        },
    }));
    let out = injected(&obj);
    let init = out["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .expect("initContainers");
    assert_eq!(init.len(), 3);
    // The capture rules first, then the sidecar, then the app's own init containers.
    assert_eq!(init[0]["name"], INIT_NAME);
    assert_eq!(
        init[0].get("restartPolicy"),
        None,
        "runs once, to completion"
    );
    assert_eq!(init[1]["name"], SIDECAR_NAME);
    assert_eq!(init[1]["restartPolicy"], "Always");
    assert_eq!(init[2]["name"], "migrate");
    // The app's containers and probes are left exactly as they were.
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"],
        obj["spec"]["template"]["spec"]["containers"]
    );
    // No label or annotation names the service: the Deployment's name does.
    assert_eq!(
        env(&init[1], "BULWARK_SERVICE"),
        &json!({"name": "BULWARK_SERVICE", "value": "checkout"})
    );
    assert_eq!(
        out["spec"]["template"]["metadata"]["annotations"]["bulwark.dev/injected"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        out["spec"]["template"]["metadata"]["labels"]["bulwark.dev/sidecar"],
        "true"
    );
}

#[test]
fn reinjection_replaces_the_sidecar_in_place() {
    let first = injected(&deployment(json!({
        "metadata": {"labels": {"app": "checkout"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "shop/migrate:1"}],
            "containers": [web(&[8080])],
        },
    })));
    // Someone moved the sidecar after the other init container and it went stale, and so
    // did the capture container.
    let mut moved = first.clone();
    let init = moved["spec"]["template"]["spec"]["initContainers"]
        .as_array_mut()
        .expect("initContainers");
    init.swap(1, 2);
    init[2]["image"] = json!("ghcr.io/bulwark-mesh/sidecar:0.0.1");
    init[0]["image"] = json!("ghcr.io/bulwark-mesh/init:0.0.1");
    let again = injected(&moved);
    let init = again["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .expect("initContainers");
    assert_eq!(init.len(), 3, "no second sidecar or capture container");
    let before = &first["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(init[2], before[1]);
    assert_eq!(init[0], before[0]);
    let volumes = again["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    assert_eq!(
        volumes.len(),
        3,
        "no second snapshot, token or trust anchors volume"
    );

    // A changed annotation changes the sidecar on the next injection.
    let mut annotated = first.clone();
    annotated["spec"]["template"]["metadata"]["annotations"]["bulwark.dev/log-level"] =
        json!("debug");
    let updated = injected(&annotated);
    assert_eq!(env(sidecar(&updated), "BULWARK_LOG")["value"], "debug");
    assert_eq!(injected(&updated), updated);
}

#[test]
fn annotations_override_every_setting() {
    let obj = with_annotations(json!({
        "bulwark.dev/service": "payments-api",
        "bulwark.dev/control-plane": "https://cp.bulwark:8081",
        "bulwark.dev/admin-port": "16000",
        "bulwark.dev/health-port": "16021",
        "bulwark.dev/inbound-port": "16006",
        "bulwark.dev/outbound-port": "16001",
        "bulwark.dev/cpu-request": "250m",
        "bulwark.dev/memory-request": "128Mi",
        "bulwark.dev/memory-limit": "1Gi",
        "bulwark.dev/log-level": "warn",
        "bulwark.dev/image": "mirror.example.com/bulwark/sidecar:9",
        "bulwark.dev/workers": "4",
    }));
    let out = injected(&obj);
    let sidecar = sidecar(&out);
    assert_eq!(sidecar["image"], "mirror.example.com/bulwark/sidecar:9");
    assert_eq!(
        env(sidecar, "BULWARK_SERVICE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.annotations['bulwark.dev/service']"
    );
    assert_eq!(
        env(sidecar, "BULWARK_CONTROL_PLANE")["value"],
        "https://cp.bulwark:8081"
    );
    assert_eq!(env(sidecar, "BULWARK_ADMIN")["value"], "127.0.0.1:16000");
    assert_eq!(env(sidecar, "BULWARK_HEALTH")["value"], "0.0.0.0:16021");
    assert_eq!(env(sidecar, "BULWARK_INBOUND")["value"], "0.0.0.0:16006");
    assert_eq!(env(sidecar, "BULWARK_OUTBOUND")["value"], "127.0.0.1:16001");
    assert_eq!(env(sidecar, "BULWARK_LOG")["value"], "warn");
    assert_eq!(env(sidecar, "BULWARK_WORKERS")["value"], "4");
    let ports: Vec<&Value> = sidecar["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| &p["containerPort"])
        .collect();
    assert_eq!(ports, [&json!(16021), &json!(16006), &json!(16001)]);
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(sidecar[probe]["httpGet"]["port"], 16021, "{probe}");
    }
    assert_eq!(
        sidecar["resources"],
        json!({"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}})
    );
}

#[test]
fn options_are_the_defaults_annotations_override() {
    let opts = InjectOptions {
        image: "mirror.example.com/sidecar:1".into(),
        control_plane: "http://cp.elsewhere:8081".into(),
        ..InjectOptions::default()
    };
    let Ok(Injected::Injected(out)) = inject_object(&with_annotations(json!({})), &opts) else {
        panic!("injected");
    };
    assert_eq!(sidecar(&out)["image"], "mirror.example.com/sidecar:1");
    assert_eq!(
        env(sidecar(&out), "BULWARK_CONTROL_PLANE")["value"],
        "http://cp.elsewhere:8081"
    );
    let bad = InjectOptions {
        control_plane: "cp.elsewhere:8081".into(),
        ..InjectOptions::default()
    };
    assert_eq!(
        inject_object(&with_annotations(json!({})), &bad)
            .expect_err("refused")
            .to_string(),
        "invalid control-plane address: must be http:// or https:// addresses, comma-separated, \
         got \"cp.elsewhere:8081\""
    );
}

#[test]
fn a_port_the_sidecar_needs_is_refused_with_the_annotation_to_change() {
    let app = deployment(json!({
        "spec": {"containers": [web(&[8080, 15001])]},
    }));
    assert_eq!(
        refusal(&app),
        "container \"web\" already uses port 15001, which the Bulwark sidecar needs; \
         set bulwark.dev/outbound-port to another port"
    );
    let init = deployment(json!({
        "spec": {
            "initContainers": [{"name": "agent", "image": "a:1", "ports": [{"containerPort": 15000}]}],
            "containers": [web(&[8080])],
        },
    }));
    assert_eq!(
        refusal(&init),
        "container \"agent\" already uses port 15000, which the Bulwark sidecar needs; \
         set bulwark.dev/admin-port to another port"
    );
    let inbound = deployment(json!({"spec": {"containers": [web(&[15006])]}}));
    assert_eq!(
        refusal(&inbound),
        "container \"web\" already uses port 15006, which the Bulwark sidecar needs; \
         set bulwark.dev/inbound-port to another port"
    );
    // Moving the sidecar off the port fixes it.
    let mut moved = app.clone();
    moved["spec"]["template"]["metadata"] =
        json!({"annotations": {"bulwark.dev/outbound-port": "15101"}});
    assert!(matches!(inject(&moved), Ok(Injected::Injected(_))));
}

#[test]
fn bad_annotation_values_are_refused_by_name() {
    let cases = [
        (
            json!({"bulwark.dev/admin-port": "abc"}),
            "annotation bulwark.dev/admin-port: must be a port number from 1 to 65535, got \"abc\"",
        ),
        (
            json!({"bulwark.dev/inbound-port": "0"}),
            "annotation bulwark.dev/inbound-port: must be a port number from 1 to 65535, got \"0\"",
        ),
        (
            json!({"bulwark.dev/outbound-port": "70000"}),
            "annotation bulwark.dev/outbound-port: must be a port number from 1 to 65535, got \"70000\"",
        ),
        (
            json!({"bulwark.dev/admin-port": 16000}),
            "annotation bulwark.dev/admin-port: must be a string (quote it in YAML), got 16000",
        ),
        (
            json!({"bulwark.dev/cpu-request": "lots"}),
            "annotation bulwark.dev/cpu-request: must be a Kubernetes quantity such as 100m or 128Mi, got \"lots\"",
        ),
        (
            json!({"bulwark.dev/memory-request": "64MB"}),
            "annotation bulwark.dev/memory-request: must be a Kubernetes quantity such as 100m or 128Mi, got \"64MB\"",
        ),
        (
            json!({"bulwark.dev/memory-limit": "-1Gi"}),
            "annotation bulwark.dev/memory-limit: must be a Kubernetes quantity such as 100m or 128Mi, got \"-1Gi\"",
        ),
        (
            json!({"bulwark.dev/workers": "0"}),
            "annotation bulwark.dev/workers: must be a number of worker threads from 1 to 64, got \"0\"",
        ),
        (
            json!({"bulwark.dev/workers": "65"}),
            "annotation bulwark.dev/workers: must be a number of worker threads from 1 to 64, got \"65\"",
        ),
        (
            json!({"bulwark.dev/log-level": "loud"}),
            "annotation bulwark.dev/log-level: must be one of trace, debug, info, warn, error, off, got \"loud\"",
        ),
        (
            json!({"bulwark.dev/control-plane": "bulwark-control-plane:8081"}),
            "annotation bulwark.dev/control-plane: must be http:// or https:// addresses, comma-separated, got \"bulwark-control-plane:8081\"",
        ),
        (
            json!({"bulwark.dev/image": "sidecar :1"}),
            "annotation bulwark.dev/image: must be a non-empty image reference without spaces, got \"sidecar :1\"",
        ),
        (
            json!({"bulwark.dev/service": "Checkout_API"}),
            "annotation bulwark.dev/service: must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit), got \"Checkout_API\"",
        ),
        (
            json!({"bulwark.dev/inject": "yes"}),
            "annotation bulwark.dev/inject: must be enabled or disabled, got \"yes\"",
        ),
        (
            json!({"bulwark.dev/capture": "yes"}),
            "annotation bulwark.dev/capture: must be enabled or disabled, got \"yes\"",
        ),
        (
            json!({"bulwark.dev/init-image": ""}),
            "annotation bulwark.dev/init-image: must be a non-empty image reference without spaces, got \"\"",
        ),
        (
            json!({"bulwark.dev/skip-outbound-ports": "5432,postgres"}),
            "annotation bulwark.dev/skip-outbound-ports: must be port numbers from 1 to 65535, comma-separated, got \"5432,postgres\"",
        ),
        (
            json!({"bulwark.dev/skip-inbound-ports": "0"}),
            "annotation bulwark.dev/skip-inbound-ports: must be port numbers from 1 to 65535, comma-separated, got \"0\"",
        ),
        (
            json!({"bulwark.dev/skip-outbound-cidrs": "10.0.0.0/33"}),
            "annotation bulwark.dev/skip-outbound-cidrs: must be networks such as 10.0.0.0/8 or 2001:db8::/32, comma-separated, got \"10.0.0.0/33\"",
        ),
        (
            json!({"bulwark.dev/skip-outbound-cidrs": "169.254.169.254/32; 10.0.0.0/8"}),
            "annotation bulwark.dev/skip-outbound-cidrs: must be networks such as 10.0.0.0/8 or 2001:db8::/32, comma-separated, got \"169.254.169.254/32; 10.0.0.0/8\"",
        ),
        (
            json!({"bulwark.dev/admin-port": "15001"}),
            "bulwark.dev/admin-port and bulwark.dev/outbound-port are both 15001; the sidecar needs three different ports",
        ),
        (
            json!({"bulwark.dev/memory-request": "512Mi"}),
            "bulwark.dev/memory-request (512Mi) is larger than bulwark.dev/memory-limit (256Mi)",
        ),
    ];
    for (annotations, message) in cases {
        assert_eq!(refusal(&with_annotations(annotations)), message);
    }
    let labelled = deployment(json!({
        "metadata": {"labels": {"bulwark.dev/inject": "on"}},
        "spec": {"containers": [web(&[8080])]},
    }));
    assert_eq!(
        refusal(&labelled),
        "label bulwark.dev/inject: must be enabled or disabled, got \"on\""
    );
}

#[test]
fn pods_the_sidecar_cannot_join_are_refused() {
    let host = deployment(json!({
        "spec": {"hostNetwork": true, "containers": [web(&[8080])]},
    }));
    assert_eq!(
        refusal(&host),
        "the pod uses the host's network (spec.hostNetwork: true), where the sidecar's ports \
         would collide with other pods on the node; annotate it with bulwark.dev/inject: disabled"
    );
    let named = deployment(json!({
        "spec": {"containers": [web(&[8080]), {"name": "bulwark-sidecar", "image": "x"}]},
    }));
    assert_eq!(
        refusal(&named),
        "spec.template.spec.containers already has a container named \"bulwark-sidecar\", a name \
         Bulwark's injection needs; rename that container"
    );
    let volume = deployment(json!({
        "spec": {
            "containers": [web(&[8080])],
            "volumes": [{"name": "bulwark-snapshot", "configMap": {"name": "x"}}],
        },
    }));
    assert_eq!(
        refusal(&volume),
        "spec.template.spec.volumes already has a volume named \"bulwark-snapshot\" that is not \
         the sidecar's; rename that volume, the Bulwark sidecar needs the name"
    );
    let token = deployment(json!({
        "spec": {
            "containers": [web(&[8080])],
            "volumes": [{"name": "bulwark-identity-token", "emptyDir": {}}],
        },
    }));
    assert_eq!(
        refusal(&token),
        "spec.template.spec.volumes already has a volume named \"bulwark-identity-token\" that \
         is not the sidecar's; rename that volume, the Bulwark sidecar needs the name"
    );
    let nameless = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {},
        "spec": {"containers": [web(&[8080])]},
    });
    assert_eq!(
        refusal(&nameless),
        "cannot tell which service this pod belongs to: set the label app.kubernetes.io/name or \
         the annotation bulwark.dev/service"
    );
}

#[test]
fn malformed_objects_are_refused_with_the_path() {
    let no_template = json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 2 * * *"},
    });
    assert_eq!(
        refusal(&no_template),
        "spec.jobTemplate.spec.template: must be a mapping with the pod's metadata and spec"
    );
    let no_containers = deployment(json!({"spec": {"containers": []}}));
    assert_eq!(
        refusal(&no_containers),
        "spec.template.spec.containers: must be a non-empty list of containers"
    );
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": "x"});
    assert_eq!(
        refusal(&pod),
        "spec: must be a mapping with the pod's containers"
    );
    let bad_volumes = deployment(json!({
        "spec": {"containers": [web(&[8080])], "volumes": {"a": 1}},
    }));
    assert_eq!(
        refusal(&bad_volumes),
        "spec.template.spec.volumes: must be a list"
    );
}

fn init_container(obj: &Value) -> Option<&Value> {
    obj.pointer("/spec/template/spec/initContainers")
        .and_then(Value::as_array)
        .and_then(|init| init.iter().find(|c| c["name"] == INIT_NAME))
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string"))
        .collect()
}

/// The capture container is what the pod's annotations say: the sidecar's ports, its uid, the
/// health port always skipped (the kubelet's probes), and the pod's exclusions.
#[test]
fn capture_follows_the_ports_and_the_exclusions() {
    let out = injected(&with_annotations(json!({
        "bulwark.dev/health-port": "15100",
        "bulwark.dev/outbound-port": "15101",
        "bulwark.dev/skip-inbound-ports": "9090, 15100",
        "bulwark.dev/skip-outbound-ports": "5432,6379",
        "bulwark.dev/skip-outbound-cidrs": "169.254.169.254,10.96.0.0/12,fd00::/8",
        "bulwark.dev/init-image": "registry.example.com/bulwark/init:1",
    })));
    let init = init_container(&out).expect("the capture container");
    assert_eq!(init["image"], "registry.example.com/bulwark/init:1");
    assert_eq!(
        args(init),
        [
            "--outbound-port",
            "15101",
            "--inbound-port",
            "15006",
            "--sidecar-uid",
            "65532",
            "--skip-inbound-ports",
            "15100,9090",
            "--skip-outbound-ports",
            "5432,6379",
            "--skip-outbound-cidrs",
            "169.254.169.254/32,10.96.0.0/12,fd00::/8",
        ]
    );
    assert_eq!(
        init["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert_eq!(env(sidecar(&out), "BULWARK_CAPTURE")["value"], "true");
}

/// Without capture (by annotation, or by the caller's options) no container gets `NET_ADMIN`
/// and the sidecar serves the localhost mode only; turning capture off on a pod injected with
/// it removes the capture container.
#[test]
fn capture_can_be_turned_off_per_pod_or_by_default() {
    let off = injected(&with_annotations(
        json!({"bulwark.dev/capture": "disabled"}),
    ));
    assert_eq!(init_container(&off), None);
    let no_capture_env = sidecar(&off)["env"]
        .as_array()
        .expect("env")
        .iter()
        .all(|v| v["name"] != "BULWARK_CAPTURE");
    assert!(no_capture_env);

    let opts = InjectOptions {
        capture: false,
        ..InjectOptions::default()
    };
    let plain = with_annotations(json!({}));
    let Ok(Injected::Injected(by_default)) = inject_object(&plain, &opts) else {
        panic!("injected");
    };
    assert_eq!(init_container(&by_default), None);
    // A pod may still ask for it.
    let asks = with_annotations(json!({"bulwark.dev/capture": "enabled"}));
    let Ok(Injected::Injected(asked)) = inject_object(&asks, &opts) else {
        panic!("injected");
    };
    assert!(init_container(&asked).is_some());

    // Re-injected with capture off, the capture container goes and nothing else changes.
    let mut turned_off = injected(&plain);
    assert!(init_container(&turned_off).is_some());
    turned_off["spec"]["template"]["metadata"]["annotations"] =
        json!({"bulwark.dev/capture": "disabled"});
    let again = injected(&turned_off);
    assert_eq!(init_container(&again), None);
    assert_eq!(again, off);
}

/// The rules leave the sidecar's uid alone: an app container running as that uid would pass
/// by the sidecar unseen, so such a pod is refused while capture is on.
#[test]
fn an_app_running_as_the_sidecars_uid_is_refused_with_capture() {
    let mut own = web(&[8080]);
    own["securityContext"] = json!({"runAsUser": 65532});
    let container_level = deployment(json!({
        "metadata": {"labels": {"app": "checkout"}},
        "spec": {"containers": [own]},
    }));
    let message = "container \"web\" runs as uid 65532, the Bulwark sidecar's, whose traffic is \
                   never captured; run it as another user or set bulwark.dev/capture: disabled";
    assert_eq!(refusal(&container_level), message);
    // Inherited from the pod's security context.
    let pod_level = deployment(json!({
        "metadata": {"labels": {"app": "checkout"}},
        "spec": {"securityContext": {"runAsUser": 65532}, "containers": [web(&[8080])]},
    }));
    assert_eq!(refusal(&pod_level), message);
    // A container's own user wins over the pod's.
    let mut other = web(&[8080]);
    other["securityContext"] = json!({"runAsUser": 1000});
    let overridden = deployment(json!({
        "metadata": {"labels": {"app": "checkout"}},
        "spec": {"securityContext": {"runAsUser": 65532}, "containers": [other]},
    }));
    assert!(matches!(inject(&overridden), Ok(Injected::Injected(_))));
    // Without capture there is nothing to bypass.
    let mut off = pod_level.clone();
    off["spec"]["template"]["metadata"]["annotations"] = json!({"bulwark.dev/capture": "disabled"});
    assert!(matches!(inject(&off), Ok(Injected::Injected(_))));

    let named = deployment(json!({
        "metadata": {"labels": {"app": "checkout"}},
        "spec": {"containers": [web(&[8080]), {"name": "bulwark-init", "image": "x"}]},
    }));
    assert_eq!(
        refusal(&named),
        "spec.template.spec.containers already has a container named \"bulwark-init\", a name \
         Bulwark's injection needs; rename that container"
    );
}

#[test]
fn the_sidecar_gets_the_pods_identity_its_proof_and_the_trust_anchors() {
    let mut app = web(&[8080]);
    app["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": 8080}});
    app["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 8080}});
    app["startupProbe"] = json!({"tcpSocket": {"port": 8080}});
    let pod = deployment(json!({
        "metadata": {"annotations": {"bulwark.dev/inbound-mtls": "strict"}},
        "spec": {"serviceAccountName": "orders", "containers": [app]},
    }));
    let out = injected(&pod);
    let side = sidecar(&out);
    assert_eq!(env(side, "BULWARK_SERVICE_ACCOUNT")["value"], "orders");
    assert_eq!(
        env(side, "BULWARK_IDENTITY_TOKEN_FILE")["value"],
        "/var/run/secrets/bulwark/identity/token"
    );
    assert_eq!(
        env(side, "BULWARK_TRUST_ANCHORS")["value"],
        "/var/run/bulwark/trust-anchors/roots.pem"
    );
    assert_eq!(env(side, "BULWARK_PROBE_PATHS")["value"], "/healthz,/ready");
    assert_eq!(env(side, "BULWARK_INBOUND_MTLS")["value"], "strict");
    let volumes = &out["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        volumes[1],
        json!({"name": "bulwark-identity-token", "projected": {"sources": [{"serviceAccountToken":
            {"audience": "bulwark", "expirationSeconds": 3600, "path": "token"}}]}})
    );
    assert_eq!(
        volumes[2],
        json!({"name": "bulwark-trust-anchors", "configMap": {"name": "bulwark-trust-anchors"}})
    );
    assert_eq!(
        side["volumeMounts"],
        json!([
            {"name": "bulwark-snapshot", "mountPath": "/var/run/bulwark"},
            {"name": "bulwark-identity-token", "mountPath": "/var/run/secrets/bulwark/identity", "readOnly": true},
            {"name": "bulwark-trust-anchors", "mountPath": "/var/run/bulwark/trust-anchors", "readOnly": true},
        ])
    );

    // Without a service account name, the namespace's default one.
    let plain = injected(&deployment(json!({"spec": {"containers": [web(&[8080])]}})));
    assert_eq!(
        env(sidecar(&plain), "BULWARK_SERVICE_ACCOUNT")["value"],
        "default"
    );

    // Turned off on a pod injected before: the variables and volumes go.
    let mut off = out.clone();
    off["spec"]["template"]["metadata"]["annotations"]["bulwark.dev/identity"] = json!("disabled");
    let off = injected(&off);
    let side = sidecar(&off);
    assert!(
        side["env"]
            .as_array()
            .is_some_and(|e| e.iter().all(|v| v["name"] != "BULWARK_TRUST_ANCHORS")),
        "{side}"
    );
    assert_eq!(
        off["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "bulwark-snapshot", "emptyDir": {}}])
    );

    // The injector's mesh-wide default applies where a pod says nothing; a pod's own wins.
    let opts = bulwark_inject::InjectOptions {
        inbound_mtls: Some("strict".into()),
        ..Default::default()
    };
    let quiet = deployment(json!({"spec": {"containers": [web(&[8080])]}}));
    let Ok(bulwark_inject::Injected::Injected(strict)) =
        bulwark_inject::inject_object(&quiet, &opts)
    else {
        panic!("injected")
    };
    assert_eq!(
        env(sidecar(&strict), "BULWARK_INBOUND_MTLS")["value"],
        "strict"
    );
    let own = deployment(json!({
        "metadata": {"annotations": {"bulwark.dev/inbound-mtls": "permissive"}},
        "spec": {"containers": [web(&[8080])]},
    }));
    let Ok(bulwark_inject::Injected::Injected(own)) = bulwark_inject::inject_object(&own, &opts)
    else {
        panic!("injected")
    };
    assert_eq!(
        env(sidecar(&own), "BULWARK_INBOUND_MTLS")["value"],
        "permissive"
    );

    // A bad mode is refused by name.
    let bad = deployment(json!({
        "metadata": {"annotations": {"bulwark.dev/inbound-mtls": "required"}},
        "spec": {"containers": [web(&[8080])]},
    }));
    assert_eq!(
        refusal(&bad),
        "annotation bulwark.dev/inbound-mtls: must be strict, permissive or disable, got \"required\""
    );
}

/// Plain Prometheus finds the sidecar's /metrics on its health port by annotation (the port
/// moves with `bulwark.dev/health-port`); a pod that names its own scrape target keeps it.
#[test]
fn prometheus_annotations_point_at_the_health_port_unless_the_pod_has_its_own() {
    let annotations = |obj: &Value| obj["spec"]["template"]["metadata"]["annotations"].clone();
    let out = injected(&with_annotations(json!({})));
    assert_eq!(annotations(&out)["prometheus.io/scrape"], "true");
    assert_eq!(annotations(&out)["prometheus.io/port"], "15021");
    assert_eq!(annotations(&out)["prometheus.io/path"], "/metrics");
    let out = injected(&with_annotations(
        json!({"bulwark.dev/health-port": "15099"}),
    ));
    assert_eq!(annotations(&out)["prometheus.io/port"], "15099");
    let own = json!({"prometheus.io/scrape": "true", "prometheus.io/port": "9102"});
    let out = injected(&with_annotations(own));
    assert_eq!(annotations(&out)["prometheus.io/port"], "9102");
    assert_eq!(annotations(&out).get("prometheus.io/path"), None);
}

/// The injector's collector and sampling reach every sidecar; a pod's own sampling wins; bad
/// values are refused by name, and without a collector no tracing variable is set.
#[test]
fn tracing_settings_reach_the_sidecar_and_a_pod_sets_its_own_sampling() {
    let plain = injected(&with_annotations(json!({})));
    let names: Vec<_> = sidecar(&plain)["env"]
        .as_array()
        .map(|e| e.iter().filter_map(|v| v["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !names.contains(&"BULWARK_OTLP_ENDPOINT") && !names.contains(&"BULWARK_TRACE_SAMPLING"),
        "{names:?}"
    );

    let opts = bulwark_inject::InjectOptions {
        otlp_endpoint: Some("http://otel-collector.monitoring:4317".into()),
        trace_sampling: Some("0.01".into()),
        ..Default::default()
    };
    let inject_with = |obj: &Value| match bulwark_inject::inject_object(obj, &opts) {
        Ok(bulwark_inject::Injected::Injected(out)) => out,
        other => panic!("expected an injection, got {other:?}"),
    };
    let quiet = inject_with(&deployment(json!({"spec": {"containers": [web(&[8080])]}})));
    let side = sidecar(&quiet);
    assert_eq!(
        env(side, "BULWARK_OTLP_ENDPOINT")["value"],
        "http://otel-collector.monitoring:4317"
    );
    assert_eq!(env(side, "BULWARK_TRACE_SAMPLING")["value"], "0.01");
    let own = inject_with(&deployment(json!({
        "metadata": {"annotations": {"bulwark.dev/trace-sampling": "0.5"}},
        "spec": {"containers": [web(&[8080])]},
    })));
    assert_eq!(env(sidecar(&own), "BULWARK_TRACE_SAMPLING")["value"], "0.5");

    let bad = deployment(json!({
        "metadata": {"annotations": {"bulwark.dev/trace-sampling": "10%"}},
        "spec": {"containers": [web(&[8080])]},
    }));
    assert_eq!(
        refusal(&bad),
        "annotation bulwark.dev/trace-sampling: must be a number from 0 to 1, got \"10%\""
    );
    let wrong = bulwark_inject::InjectOptions {
        otlp_endpoint: Some("https://otel-collector:4317".into()),
        ..Default::default()
    };
    assert_eq!(
        wrong.validate().map_err(|e| e.to_string()),
        Err(
            "invalid OTLP endpoint: must be http://HOST:PORT (OTLP over gRPC), got \"https://otel-collector:4317\""
                .to_string()
        )
    );
}
