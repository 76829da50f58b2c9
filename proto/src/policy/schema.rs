//! The JSON Schema (draft-07) of a policy document of either kind, generated from the model:
//! what `meshctl schema` prints and `schema/policy.schema.json` holds, so that an editor checks
//! and completes policies as they are written. Field descriptions are the model's doc
//! comments; what a schema cannot say (ranges across fields, references between policies) is
//! left to `meshctl validate`.
//!
//! The kinds are told apart by `kind` with `if`/`then` rather than the `oneOf` the model's
//! tagged enum generates: a document that fits neither branch of a `oneOf` gets one error
//! about the whole document, while `if kind is X then X's schema` points at the field. For
//! the same reason an optional field is described as the field's own schema, without the
//! `null` alternative serde would also accept (an empty `retry:` means no retry block, which
//! `meshctl validate` takes; an editor flags it as empty).

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::Resource;

/// Where the published schema lives, its `$id`.
pub const SCHEMA_ID: &str =
    "https://raw.githubusercontent.com/bulwark-mesh/bulwark/main/schema/policy.schema.json";

/// The `apiVersion` every document carries.
const API_VERSION: &str = "bulwark/v1";

/// The schema of one policy document (`kind: UpstreamPolicy` or `kind: ServicePolicy`).
pub fn document() -> Value {
    let generator = SchemaSettings::draft07().into_generator();
    let mut generated = generator.into_root_schema_for::<Resource>().to_value();
    drop_null(&mut generated);
    let mut definitions = generated
        .get("definitions")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut kinds = Vec::new();
    let mut branches = Vec::new();
    let variants = generated.get("oneOf").and_then(Value::as_array);
    for variant in variants.into_iter().flatten() {
        let Some(kind) = variant
            .pointer("/properties/kind/const")
            .and_then(Value::as_str)
        else {
            continue;
        };
        let mut variant = variant.clone();
        if let Some(api) = variant.pointer_mut("/properties/apiVersion") {
            *api = json!({"const": API_VERSION, "description": "Always bulwark/v1."});
        }
        definitions.insert(kind.to_string(), variant);
        branches.push(json!({
            "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
            "then": {"$ref": format!("#/definitions/{kind}")},
        }));
        kinds.push(Value::from(kind));
    }
    let mut root = Map::new();
    root.insert(
        "$schema".into(),
        "http://json-schema.org/draft-07/schema#".into(),
    );
    root.insert("$id".into(), SCHEMA_ID.into());
    root.insert(
        "title".into(),
        "Bulwark policy: an UpstreamPolicy or a ServicePolicy".into(),
    );
    root.insert("type".into(), "object".into());
    root.insert("required".into(), json!(["apiVersion", "kind"]));
    root.insert(
        "properties".into(),
        json!({"kind": {"enum": kinds, "description": "Which policy this document is."}}),
    );
    root.insert("allOf".into(), Value::Array(branches));
    root.insert("definitions".into(), Value::Object(definitions));
    Value::Object(root)
}

/// Takes the `null` alternative out of every optional field's schema: `anyOf: [X, null]`
/// becomes `allOf: [X]` (keeping the field's description beside it), `type: [T, "null"]`
/// becomes `type: T`.
fn drop_null(value: &mut Value) {
    let is_null = |v: &Value| v.get("type").and_then(Value::as_str) == Some("null");
    match value {
        Value::Object(object) => {
            let alternatives = object.get("anyOf").and_then(Value::as_array);
            if let Some(alternatives) = alternatives
                && alternatives.len() == 2
                && alternatives.iter().any(is_null)
            {
                let kept: Vec<Value> = alternatives
                    .iter()
                    .filter(|v| !is_null(v))
                    .cloned()
                    .collect();
                object.remove("anyOf");
                object.insert("allOf".into(), Value::Array(kept));
            }
            if let Some(Value::Array(types)) = object.get_mut("type") {
                types.retain(|t| t.as_str() != Some("null"));
                if types.len() == 1 {
                    let only = types.remove(0);
                    object.insert("type".into(), only);
                }
            }
            object.values_mut().for_each(drop_null);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null),
        _ => {}
    }
}
