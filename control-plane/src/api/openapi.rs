//! The REST API's OpenAPI document, served at `/openapi.json`: the paths and bodies written in
//! `openapi.json`, with the schemas of the policy resources generated from the policy model
//! (schemars) — every field of every policy, typed, and never out of step with what the API
//! accepts. The generated schemas are named `Policy…` (`PolicyResource`, `PolicyUpstreamSpec`,
//! …); the document's `Resource` refers to them.

use std::sync::LazyLock;

use bulwark_proto::policy::Resource;
use schemars::generate::SchemaSettings;
use serde_json::Value;

/// The hand-written part.
const WRITTEN: &str = include_str!("openapi.json");

/// Where a generated schema goes, and the prefix its name gets there.
const SCHEMAS: &str = "#/components/schemas/";
const PREFIX: &str = "Policy";

static DOCUMENT: LazyLock<String> = LazyLock::new(|| match build() {
    Ok(document) => document,
    // Both halves are fixed at build time, and a test builds the document: this cannot
    // happen in a released binary. Served as is rather than panicking.
    Err(e) => {
        tracing::error!(error = %e, "the OpenAPI document could not be completed");
        WRITTEN.to_string()
    }
});

/// The whole document, as served.
pub fn document() -> &'static str {
    &DOCUMENT
}

fn build() -> Result<String, String> {
    let mut doc: Value =
        serde_json::from_str(WRITTEN).map_err(|e| format!("openapi.json is not JSON: {e}"))?;
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut root = generator.subschema_for::<Resource>().to_value();
    let mut generated = generator.take_definitions(true);
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .ok_or("openapi.json has no components.schemas")?;
    for (name, mut schema) in std::mem::take(&mut generated) {
        prefix_refs(&mut schema);
        let name = format!("{PREFIX}{name}");
        if schemas.contains_key(&name) {
            return Err(format!("a generated schema would replace {name}"));
        }
        schemas.insert(name, schema);
    }
    prefix_refs(&mut root);
    schemas.insert("Resource".to_string(), root);
    serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())
}

/// Points the references of a generated schema at the prefixed names.
fn prefix_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), v) {
                    ("$ref", Value::String(target)) => {
                        if let Some(name) = target.strip_prefix(SCHEMAS) {
                            *target = format!("{SCHEMAS}{PREFIX}{name}");
                        }
                    }
                    (_, v) => prefix_refs(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(prefix_refs),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_schemas_are_generated_into_the_document() {
        let doc: Value =
            serde_json::from_str(&build().expect("the document builds")).expect("JSON");
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["Resource"]["$ref"],
            "#/components/schemas/PolicyResource"
        );
        // One kind or the other, told apart by `kind`, each with its typed spec.
        let kinds = schemas["PolicyResource"]["oneOf"]
            .as_array()
            .expect("oneOf");
        assert_eq!(kinds.len(), 2);
        assert_eq!(kinds[0]["properties"]["kind"]["enum"][0], "UpstreamPolicy");
        assert_eq!(
            kinds[0]["properties"]["spec"]["$ref"],
            "#/components/schemas/PolicyUpstreamSpec"
        );
        // Every field is typed: e.g. the retry's attempts, durations as strings.
        let retry = &schemas["PolicyRetry"]["properties"];
        assert_eq!(retry["maxAttempts"]["type"], "integer", "{retry}");
        assert_eq!(schemas["PolicyDuration"]["type"], "string");
        // Nothing hand-written is replaced.
        assert!(schemas["Status"]["properties"].is_object());
    }
}
