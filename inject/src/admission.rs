//! The mutating admission webhook's decision, transport aside: an AdmissionReview v1 request in,
//! its response out — the pod allowed unchanged, allowed with a JSON Patch adding the sidecar,
//! or denied with the reason injection refused it. The HTTP/TLS server around it lives in the
//! control plane.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::annotations;
use crate::errors::InjectError;
use crate::options::InjectOptions;
use crate::workload::json_patch_for_pod;

/// Whether `pod` gets the sidecar: its `bulwark.dev/inject` annotation (`enabled` or
/// `disabled`) wins, then its label of that name, then its namespace's choice — which the
/// caller knows (the webhook's namespaceSelector, or the namespace's label).
pub fn should_inject(pod: &Value, namespace_enabled: bool) -> Result<bool, InjectError> {
    match pod.get("metadata").and_then(Value::as_object) {
        Some(meta) => Ok(annotations::switch(meta)?.unwrap_or(namespace_enabled)),
        None => Ok(namespace_enabled),
    }
}

/// The AdmissionReview (v1) answering `review`: the request's `uid` echoed and
///
/// - `allowed: true` without a patch for anything that is not a Pod being created, a pod that
///   opted out (or whose namespace did not opt in), and a pod already injected as it would be;
/// - `allowed: true` with `patchType: JSONPatch` and the base64 patch adding the sidecar;
/// - `allowed: false` with the reason when injection refuses the pod (a bad annotation, a port
///   the sidecar needs): the pod asked for the sidecar, and starting it without one would hide
///   the mistake. `bulwark.dev/inject: disabled` lets such a pod in unchanged.
pub fn admission_review_response(
    review: &Value,
    opts: &InjectOptions,
    namespace_enabled: bool,
) -> Value {
    let request = review.get("request").unwrap_or(&Value::Null);
    let uid = request.get("uid").cloned().unwrap_or_else(|| json!(""));
    let response = decide(request, opts, namespace_enabled);
    let mut response = match response {
        Ok(None) => json!({"allowed": true}),
        Ok(Some(patch)) => {
            let patch = Value::Array(patch).to_string();
            json!({
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            })
        }
        Err(error) => json!({
            "allowed": false,
            "status": {
                "status": "Failure",
                "code": 400,
                "reason": "BadRequest",
                "message": format!("cannot inject the Bulwark sidecar: {error}"),
            },
        }),
    };
    response["uid"] = uid;
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// The patch to send, if any.
fn decide(
    request: &Value,
    opts: &InjectOptions,
    namespace_enabled: bool,
) -> Result<Option<Vec<Value>>, InjectError> {
    let is_pod = request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod")
        && request
            .pointer("/kind/group")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
    // The webhook is registered for CREATE only; anything else passes untouched.
    let creates = request
        .get("operation")
        .and_then(Value::as_str)
        .is_none_or(|op| op == "CREATE");
    let no_subresource = request
        .get("subResource")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let pod = match request.get("object") {
        Some(pod @ Value::Object(_)) if is_pod && creates && no_subresource => pod,
        _ => return Ok(None),
    };
    if !should_inject(pod, namespace_enabled)? {
        return Ok(None);
    }
    let patch = json_patch_for_pod(pod, opts)?;
    Ok((!patch.is_empty()).then_some(patch))
}
