//! `meshctl schema`: the JSON Schema editors check policies against. It is the one published
//! as `schema/policy.schema.json` (regenerate with `BULWARK_BLESS=1`), it accepts every example
//! policy of the repository, and it refuses what `meshctl validate` refuses for its shape: a
//! wrong type, an unknown field, a malformed duration or percentage, an unknown kind.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::meshctl;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn printed_schema() -> Value {
    let run = meshctl(&["schema"], &[]);
    assert_eq!((run.code, run.stderr.as_str()), (Some(0), ""));
    serde_json::from_str(&run.stdout).expect("meshctl schema prints JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft7::new(&printed_schema()).expect("a valid draft-07 schema")
}

/// Every problem the schema finds in `doc`, as `PATH: message`.
fn problems(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// The documents of every YAML policy file under `examples/`.
fn example_documents() -> Vec<(String, Value)> {
    let mut files = Vec::new();
    let mut dirs = vec![repo().join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("examples/") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
        for (i, doc) in parsed.into_iter().enumerate() {
            if doc.get("kind").is_some() {
                docs.push((format!("{}#{}", file.display(), i + 1), doc));
            }
        }
    }
    docs
}

#[test]
fn the_published_schema_is_the_one_meshctl_prints() {
    let printed = printed_schema();
    let path = repo().join("schema/policy.schema.json");
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(&printed).expect("JSON")
    );
    if std::env::var_os("BULWARK_BLESS").is_some() {
        std::fs::write(&path, &text).expect("write schema/policy.schema.json");
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == text,
        "schema/policy.schema.json differs from `meshctl schema`: regenerate it with \
         BULWARK_BLESS=1 cargo test -p meshctl --test cli schema"
    );
    assert_eq!(
        printed["$schema"],
        "http://json-schema.org/draft-07/schema#"
    );
    assert_eq!(
        printed["$id"],
        "https://raw.githubusercontent.com/bulwark-mesh/bulwark/main/schema/policy.schema.json"
    );
}

#[test]
fn every_example_policy_fits_the_schema() {
    let validator = validator();
    let docs = example_documents();
    assert!(docs.len() >= 10, "examples found: {}", docs.len());
    for (name, doc) in &docs {
        assert_eq!(problems(&validator, doc), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn broken_policies_are_refused_where_they_are_wrong() {
    let validator = validator();
    let upstream = |spec: Value| {
        json!({
            "apiVersion": "bulwark/v1",
            "kind": "UpstreamPolicy",
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": spec,
        })
    };
    let base = json!({"endpoints": {"static": ["10.0.0.1:8080"]}});
    assert_eq!(
        problems(&validator, &upstream(base.clone())),
        Vec::<String>::new()
    );

    let mut wrong_type = base.clone();
    wrong_type["retry"] = json!({"maxAttempts": "three"});
    let found = problems(&validator, &upstream(wrong_type));
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("/spec/retry/maxAttempts: ")),
        "{found:?}"
    );

    let mut unknown = base.clone();
    unknown["retries"] = json!({"maxAttempts": 3});
    let found = problems(&validator, &upstream(unknown));
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("/spec: ") && p.contains("retries")),
        "{found:?}"
    );

    let mut duration = base.clone();
    duration["timeouts"] = json!({"request": "10 seconds"});
    let found = problems(&validator, &upstream(duration));
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("/spec/timeouts/request: ")),
        "{found:?}"
    );

    let mut percent = base.clone();
    percent["circuitBreaker"] = json!({"failureRate": "half"});
    let found = problems(&validator, &upstream(percent));
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("/spec/circuitBreaker/failureRate: ")),
        "{found:?}"
    );

    let mut kind = upstream(base);
    kind["kind"] = json!("RetryPolicy");
    assert!(!problems(&validator, &kind).is_empty());
}
