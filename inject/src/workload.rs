//! Injecting one object: a workload with a pod template (Deployment, StatefulSet, DaemonSet,
//! Job, CronJob) or a pod, as meshctl does offline, or a pod as JSON Patch, as the admission
//! webhook answers it.

use serde_json::Value;

use crate::annotations;
use crate::errors::InjectError;
use crate::options::InjectOptions;
use crate::patch::diff;
use crate::pod;

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
