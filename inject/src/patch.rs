//! RFC 6902 JSON Patch between a pod as submitted and as injected — what the admission webhook
//! answers — and the application of such a patch (by the `json-patch` crate), which tests (and
//! the webhook's tests) use to check that the patch turns the submitted pod into exactly the
//! injected one.
//!
//! The diff recurses into mappings and replaces lists whole: the pod's lists (containers,
//! volumes) are small, and a whole-list `replace` cannot go wrong when the API server's copy of
//! a list differs from ours by an item another webhook added.

use serde_json::Value;

/// A patch operation that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("patch operation {index}: {problem}")]
pub struct PatchError {
    /// 0-based position of the operation in the patch.
    pub index: usize,
    pub problem: String,
}

/// The operations (`add`, `remove`, `replace`) that turn `from` into `to`.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(String::new(), from, to, &mut ops);
    ops
}

fn diff_at(path: String, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            for key in from.keys().filter(|k| !to.contains_key(*k)) {
                ops.push(serde_json::json!({"op": "remove", "path": child(&path, key)}));
            }
            for (key, value) in to {
                match from.get(key) {
                    Some(old) => diff_at(child(&path, key), old, value, ops),
                    None => ops.push(
                        serde_json::json!({"op": "add", "path": child(&path, key), "value": value}),
                    ),
                }
            }
        }
        _ => ops.push(serde_json::json!({"op": "replace", "path": path, "value": to})),
    }
}

/// `path` extended by one key, escaped as RFC 6901 says (`~` → `~0`, `/` → `~1`).
fn child(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// Applies `patch` to a copy of `doc`, as the API server does (the `json-patch` crate's RFC
/// 6902 implementation: our diff only decides which operations to send).
pub fn apply_patch(doc: &Value, patch: &[Value]) -> Result<Value, PatchError> {
    let mut operations = Vec::with_capacity(patch.len());
    for (index, op) in patch.iter().enumerate() {
        let op: json_patch::PatchOperation =
            serde_json::from_value(op.clone()).map_err(|e| PatchError {
                index,
                problem: e.to_string(),
            })?;
        operations.push(op);
    }
    let mut doc = doc.clone();
    json_patch::patch(&mut doc, &operations).map_err(|e| PatchError {
        index: e.operation,
        problem: format!("{}: {}", e.path, e.kind),
    })?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn diff_then_apply_gives_the_target() {
        let from = json!({
            "metadata": {"name": "p", "annotations": {"a/b": "1", "gone": "x"}},
            "spec": {"containers": [{"name": "app"}]},
        });
        let to = json!({
            "metadata": {"name": "p", "annotations": {"a/b": "2", "new~key": "y"}, "labels": {"l": "v"}},
            "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "s"}]},
        });
        let patch = diff(&from, &to);
        assert_eq!(
            patch,
            vec![
                json!({"op": "remove", "path": "/metadata/annotations/gone"}),
                json!({"op": "replace", "path": "/metadata/annotations/a~1b", "value": "2"}),
                json!({"op": "add", "path": "/metadata/annotations/new~0key", "value": "y"}),
                json!({"op": "add", "path": "/metadata/labels", "value": {"l": "v"}}),
                json!({"op": "add", "path": "/spec/initContainers", "value": [{"name": "s"}]}),
            ]
        );
        assert_eq!(apply_patch(&from, &patch), Ok(to.clone()));
        assert!(diff(&to, &to).is_empty());
    }

    #[test]
    fn list_operations_and_failures() {
        let doc = json!({"l": [1, 2]});
        let patched = apply_patch(
            &doc,
            &[
                json!({"op": "add", "path": "/l/-", "value": 3}),
                json!({"op": "add", "path": "/l/0", "value": 0}),
                json!({"op": "replace", "path": "/l/1", "value": 9}),
                json!({"op": "remove", "path": "/l/2"}),
            ],
        );
        assert_eq!(patched, Ok(json!({"l": [0, 9, 3]})));
        let missing = apply_patch(&doc, &[json!({"op": "replace", "path": "/x", "value": 1})]);
        assert_eq!(
            missing,
            Err(PatchError {
                index: 0,
                problem: "/x: path is invalid".into()
            })
        );
    }
}
