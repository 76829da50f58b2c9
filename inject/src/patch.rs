//! RFC 6902 JSON Patch between a pod as submitted and as injected — what the admission webhook
//! answers — and the application of such a patch, which tests (and the webhook's tests) use to
//! check that the patch turns the submitted pod into exactly the injected one.
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

/// Applies `patch` (`add`, `remove`, `replace` operations) to a copy of `doc`.
pub fn apply_patch(doc: &Value, patch: &[Value]) -> Result<Value, PatchError> {
    let mut doc = doc.clone();
    for (index, op) in patch.iter().enumerate() {
        let fail = |problem: String| PatchError { index, problem };
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("has no path".into()))?;
        let value = op.get("value").cloned();
        if path.is_empty() {
            // The whole document.
            match (kind, value) {
                ("replace" | "add", Some(value)) => doc = value,
                _ => return Err(fail(format!("cannot {kind} the whole document"))),
            }
            continue;
        }
        let Some((parent, last)) = path.rsplit_once('/') else {
            return Err(fail(format!("path {path:?} does not start with /")));
        };
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = doc
            .pointer_mut(parent)
            .ok_or_else(|| fail(format!("{parent:?} does not exist")))?;
        match (kind, target) {
            ("add" | "replace", Value::Object(map)) => {
                let value = value.ok_or_else(|| fail("has no value".into()))?;
                if kind == "replace" && !map.contains_key(&last) {
                    return Err(fail(format!("{path:?} does not exist")));
                }
                map.insert(last, value);
            }
            ("remove", Value::Object(map)) => {
                map.remove(&last)
                    .ok_or_else(|| fail(format!("{path:?} does not exist")))?;
            }
            (_, Value::Array(items)) => apply_to_list(kind, items, &last, value)
                .map_err(|problem| fail(format!("{path:?}: {problem}")))?,
            (_, _) => return Err(fail(format!("{kind:?} on {path:?} is not supported"))),
        }
    }
    Ok(doc)
}

fn apply_to_list(
    kind: &str,
    items: &mut Vec<Value>,
    index: &str,
    value: Option<Value>,
) -> Result<(), String> {
    let position = if index == "-" {
        items.len()
    } else {
        index.parse::<usize>().map_err(|_| "not a list index")?
    };
    match (kind, value) {
        ("add", Some(value)) if position <= items.len() => items.insert(position, value),
        ("replace", Some(value)) if position < items.len() => items[position] = value,
        ("remove", _) if position < items.len() => {
            items.remove(position);
        }
        _ => return Err(format!("cannot {kind} item {index}")),
    }
    Ok(())
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
                problem: "\"/x\" does not exist".into()
            })
        );
    }
}
