//! Parsing policy documents: multi-document YAML or JSON (one resource, or an array of them)
//! into [`Resource`]s, with structural errors (unknown fields, wrong types) named by their
//! document and field path. Semantic checks are [`Resource::validate`]'s job.

use serde_json::Value;

use super::{API_VERSION, Kind, Resource};

/// A document that is not a well-formed policy resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("document {doc}: {path}: {message}")]
    Field {
        /// 1-based position of the document in its file.
        doc: usize,
        path: String,
        message: String,
    },
}

/// Parses YAML or JSON, deciding by the first non-blank character (`{` or `[` means JSON).
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, LoadError> {
    match text.trim_start().chars().next() {
        Some('{') | Some('[') => parse_json(text),
        _ => parse_yaml(text),
    }
}

/// Parses a multi-document YAML stream; empty documents are skipped.
pub fn parse_yaml(text: &str) -> Result<Vec<Resource>, LoadError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| LoadError::Yaml(e.to_string()))?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .enumerate()
        .map(|(i, d)| resource_from_value(i + 1, d))
        .collect()
}

/// Parses one JSON resource or a JSON array of resources.
pub fn parse_json(text: &str) -> Result<Vec<Resource>, LoadError> {
    let value: Value = serde_json::from_str(text).map_err(|e| LoadError::Json(e.to_string()))?;
    match value {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, d)| resource_from_value(i + 1, d))
            .collect(),
        other => Ok(vec![resource_from_value(1, other)?]),
    }
}

/// Turns one parsed document into a resource, naming the field that does not fit.
pub(crate) fn resource_from_value(doc: usize, value: Value) -> Result<Resource, LoadError> {
    let field = |path: &str, message: String| LoadError::Field {
        doc,
        path: path.to_string(),
        message,
    };
    let Value::Object(map) = &value else {
        return Err(field(
            ".",
            "must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    };
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => {
            return Err(field(
                "apiVersion",
                format!("must be {API_VERSION:?}, got {v:?}"),
            ));
        }
        Some(_) => {
            return Err(field(
                "apiVersion",
                format!("must be the string {API_VERSION:?}"),
            ));
        }
        None => return Err(field("apiVersion", "is required".into())),
    }
    let kind = match map.get("kind") {
        Some(Value::String(k)) => k.parse::<Kind>().map_err(|e| field("kind", e))?,
        Some(_) => return Err(field("kind", "must be a string".into())),
        None => return Err(field("kind", "is required".into())),
    };
    let mut body = value;
    if let Value::Object(m) = &mut body {
        m.remove("kind");
    }
    let typed = match kind {
        Kind::UpstreamPolicy => {
            serde_path_to_error::deserialize(body).map(Resource::UpstreamPolicy)
        }
        Kind::ServicePolicy => serde_path_to_error::deserialize(body).map(Resource::ServicePolicy),
    };
    typed.map_err(|e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        field(&path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: &str = r#"
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: echo }
spec:
  endpoints: { static: ["127.0.0.1:8080"] }
"#;

    #[test]
    fn yaml_multi_document_and_json_agree() {
        let two = format!("{UPSTREAM}---\n{UPSTREAM}---\n");
        let from_yaml = parse_documents(&two).expect("yaml parses");
        assert_eq!(from_yaml.len(), 2);
        assert_eq!(from_yaml[0].id(), "UpstreamPolicy/default/echo");
        let json = serde_json::to_string(&from_yaml).expect("serializes");
        assert_eq!(parse_documents(&json).expect("json parses"), from_yaml);
    }

    #[test]
    fn structural_errors_name_document_and_path() {
        let typo = UPSTREAM.replace("endpoints:", "endpoint:");
        let err = parse_yaml(&format!("{UPSTREAM}---\n{typo}")).expect_err("typo rejected");
        let LoadError::Field { doc, path, message } = err else {
            panic!("expected a field error, got {err:?}")
        };
        assert_eq!(doc, 2);
        assert_eq!(path, "spec.endpoint");
        assert!(message.starts_with("unknown field `endpoint`"), "{message}");

        let wrong_type = UPSTREAM.replace("{ name: echo }", "{ name: echo, labels: 3 }");
        assert_eq!(
            parse_yaml(&wrong_type).expect_err("bad labels").to_string(),
            "document 1: metadata.labels: invalid type: integer `3`, expected a map"
        );
        assert_eq!(
            parse_yaml("apiVersion: bulwark/v2\nkind: UpstreamPolicy\n")
                .expect_err("bad version")
                .to_string(),
            "document 1: apiVersion: must be \"bulwark/v1\", got \"bulwark/v2\""
        );
        assert_eq!(
            parse_yaml("apiVersion: bulwark/v1\nkind: Gateway\n")
                .expect_err("bad kind")
                .to_string(),
            "document 1: kind: unknown kind \"Gateway\", expected UpstreamPolicy or ServicePolicy"
        );
        assert!(matches!(parse_yaml("a: [b"), Err(LoadError::Yaml(_))));
        assert!(matches!(parse_json("{"), Err(LoadError::Json(_))));
    }
}
