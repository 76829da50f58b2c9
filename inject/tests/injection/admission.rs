//! The admission webhook's answers to real AdmissionReview v1 requests: the JSON Patch decoded
//! and applied must give exactly what `inject_object` gives for the same pod.

use base64::Engine as _;
use bulwark_inject::{
    InjectOptions, Injected, admission_review_response, apply_patch, inject_object,
    json_patch_for_pod, should_inject,
};
use serde_json::{Value, json};

/// A pod as the API server sends it for a Deployment's ReplicaSet: no name yet, a
/// `generateName`, an owner.
fn replica_pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7d9f8c6b5-",
            "namespace": "shop",
            "labels": {"app": "checkout", "pod-template-hash": "7d9f8c6b5"},
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "checkout-7d9f8c6b5",
                "uid": "4b1e6a43-32f4-4b43-9a6c-2f3c4a1d0e11",
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "shop/checkout:1",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            }],
        },
    })
}

fn review(kind: &str, operation: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

fn respond(review: &Value, namespace_enabled: bool) -> Value {
    admission_review_response(review, &InjectOptions::default(), namespace_enabled)
}

/// The decoded JSON Patch of a response.
fn patch_of(answer: &Value) -> Vec<Value> {
    let encoded = answer["response"]["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("a JSON array")
}

#[test]
fn an_opted_in_pod_gets_a_patch_that_injects_it() {
    let pod = replica_pod(json!({}));
    let answer = respond(&review("Pod", "CREATE", pod.clone()), true);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patched = apply_patch(&pod, &patch_of(&answer)).expect("the patch applies");
    let Ok(Injected::Injected(expected)) = inject_object(&pod, &InjectOptions::default()) else {
        panic!("inject_object injects the same pod");
    };
    assert_eq!(patched, expected);
    // The Deployment's name, recovered from the ReplicaSet's, names the service.
    let sidecar = patched["spec"]["initContainers"]
        .as_array()
        .and_then(|init| init.iter().find(|c| c["name"] == "bulwark-sidecar"))
        .expect("the sidecar");
    assert_eq!(
        sidecar["env"][2],
        json!({"name": "BULWARK_SERVICE", "value": "checkout"})
    );
    // Sent again (a retried request), the injected pod needs no patch.
    let again = respond(&review("Pod", "CREATE", patched), true);
    assert_eq!(
        again["response"],
        json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
    );
}

#[test]
fn the_pod_annotation_wins_over_the_namespace() {
    let opted_out = replica_pod(json!({"bulwark.dev/inject": "disabled"}));
    let answer = respond(&review("Pod", "CREATE", opted_out), true);
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());

    let opted_in = replica_pod(json!({"bulwark.dev/inject": "enabled"}));
    let answer = respond(&review("Pod", "CREATE", opted_in), false);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");

    let plain = replica_pod(json!({}));
    let answer = respond(&review("Pod", "CREATE", plain.clone()), false);
    assert_eq!(
        answer["response"],
        json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
    );

    // A pod label opts in too (the webhook's objectSelector can only see labels).
    let mut labelled = plain;
    labelled["metadata"]["labels"]["bulwark.dev/inject"] = json!("enabled");
    assert_eq!(should_inject(&labelled, false), Ok(true));
    labelled["metadata"]["annotations"]["bulwark.dev/inject"] = json!("disabled");
    assert_eq!(should_inject(&labelled, true), Ok(false));
}

#[test]
fn a_refused_pod_is_denied_with_the_reason() {
    let mut pod = replica_pod(json!({}));
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 15001}]);
    let answer = respond(&review("Pod", "CREATE", pod), true);
    assert_eq!(
        answer["response"],
        json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "allowed": false,
            "status": {
                "status": "Failure",
                "code": 400,
                "reason": "BadRequest",
                "message": "cannot inject the Bulwark sidecar: container \"web\" already uses \
                            port 15001, which the Bulwark sidecar needs; set \
                            bulwark.dev/outbound-port to another port",
            },
        })
    );
    let bad_switch = replica_pod(json!({"bulwark.dev/inject": "true"}));
    let answer = respond(&review("Pod", "CREATE", bad_switch), true);
    assert_eq!(
        answer["response"]["status"]["message"],
        "cannot inject the Bulwark sidecar: annotation bulwark.dev/inject: must be enabled or \
         disabled, got \"true\""
    );
}

#[test]
fn anything_but_a_pod_creation_passes_untouched() {
    let pod = replica_pod(json!({}));
    let untouched = json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true});
    let update = respond(&review("Pod", "UPDATE", pod.clone()), true);
    assert_eq!(update["response"], untouched);
    let service = respond(
        &review("Service", "CREATE", json!({"kind": "Service"})),
        true,
    );
    assert_eq!(service["response"], untouched);
    let empty = respond(&json!({}), true);
    assert_eq!(empty["response"], json!({"uid": "", "allowed": true}));
}

#[test]
fn the_patch_is_minimal_and_escapes_annotation_keys() {
    let pod = replica_pod(json!({"team": "shop"}));
    let patch = json_patch_for_pod(&pod, &InjectOptions::default()).expect("a patch");
    let paths: Vec<&str> = patch
        .iter()
        .map(|op| op["path"].as_str().expect("path"))
        .collect();
    assert_eq!(
        paths,
        [
            "/metadata/annotations/bulwark.dev~1injected",
            "/metadata/annotations/prometheus.io~1path",
            "/metadata/annotations/prometheus.io~1port",
            "/metadata/annotations/prometheus.io~1scrape",
            "/metadata/labels/bulwark.dev~1sidecar",
            "/spec/initContainers",
            "/spec/volumes",
        ]
    );
    assert!(patch.iter().all(|op| op["op"] == "add"));
}
