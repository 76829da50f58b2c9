//! Reading policy documents: which files a policy directory holds ([`policy_files`]), and
//! parsing multi-document YAML or JSON (one resource, or an array of them) into [`Resource`]s,
//! with structural errors (unknown fields, wrong types) named by their document and field path.
//! Semantic checks are [`Resource::validate`]'s job.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::defaults;
use super::model::{API_VERSION, Kind, Resource};

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

/// The extensions of policy files in a directory.
pub const POLICY_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The policy files `path` names: the file itself (whatever its name), or every `*.yaml`,
/// `*.yml` and `*.json` file directly in the directory, sorted by name. Hidden files are
/// skipped: a Kubernetes ConfigMap mount keeps its real files in hidden `..data` directories
/// beside the visible links, and editors and atomic writers keep temporaries there too.
pub fn policy_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !std::fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let p = entry?.path();
        let visible = p
            .file_name()
            .is_some_and(|n| !n.to_string_lossy().starts_with('.'));
        let policy = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| POLICY_EXTENSIONS.contains(&e));
        if visible && policy && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses YAML or JSON, deciding by the first non-blank character (`{` or `[` means JSON). A
/// resource without `metadata.namespace` is in `default`.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, LoadError> {
    parse_documents_in(text, defaults::NAMESPACE)
}

/// Like [`parse_documents`], a resource without `metadata.namespace` being in `namespace` (what
/// `meshctl -n` names).
pub fn parse_documents_in(text: &str, namespace: &str) -> Result<Vec<Resource>, LoadError> {
    match text.trim_start().chars().next() {
        Some('{') | Some('[') => json_in(text, namespace),
        _ => yaml_in(text, namespace),
    }
}

/// Like [`parse_documents_in`], each document on its own: one that does not fit the model is
/// an error of its own, and the documents after it are still read — so a user sees every
/// problem of a file at once. Only text that is not YAML (or JSON) at all fails the whole.
pub fn parse_each_in(
    text: &str,
    namespace: &str,
) -> Result<Vec<Result<Resource, LoadError>>, LoadError> {
    let docs: Vec<Value> = match text.trim_start().chars().next() {
        Some('{') | Some('[') => {
            match serde_json::from_str(text).map_err(|e| LoadError::Json(e.to_string()))? {
                Value::Array(items) => items,
                other => vec![other],
            }
        }
        _ => serde_saphyr::from_multiple::<Value>(text)
            .map_err(|e| LoadError::Yaml(e.to_string()))?
            .into_iter()
            .filter(|d| !d.is_null())
            .collect(),
    };
    Ok(docs
        .into_iter()
        .enumerate()
        .map(|(i, d)| resource_from_value(i + 1, d, namespace))
        .collect())
}

/// Parses a multi-document YAML stream; empty documents are skipped.
pub fn parse_yaml(text: &str) -> Result<Vec<Resource>, LoadError> {
    yaml_in(text, defaults::NAMESPACE)
}

/// Parses one JSON resource or a JSON array of resources.
pub fn parse_json(text: &str) -> Result<Vec<Resource>, LoadError> {
    json_in(text, defaults::NAMESPACE)
}

fn yaml_in(text: &str, namespace: &str) -> Result<Vec<Resource>, LoadError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| LoadError::Yaml(e.to_string()))?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .enumerate()
        .map(|(i, d)| resource_from_value(i + 1, d, namespace))
        .collect()
}

fn json_in(text: &str, namespace: &str) -> Result<Vec<Resource>, LoadError> {
    let value: Value = serde_json::from_str(text).map_err(|e| LoadError::Json(e.to_string()))?;
    match value {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, d)| resource_from_value(i + 1, d, namespace))
            .collect(),
        other => Ok(vec![resource_from_value(1, other, namespace)?]),
    }
}

/// Turns one parsed document into a resource, naming the field that does not fit; one
/// without `metadata.namespace` is put in `namespace`.
pub(crate) fn resource_from_value(
    doc: usize,
    value: Value,
    namespace: &str,
) -> Result<Resource, LoadError> {
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
        if let Some(Value::Object(meta)) = m.get_mut("metadata") {
            meta.entry("namespace")
                .or_insert_with(|| Value::String(namespace.to_string()));
        }
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

    #[test]
    fn a_resource_that_names_no_namespace_is_put_in_the_one_given() {
        let text = "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: a }\nspec: { endpoints: { static: [\"127.0.0.1:1\"] } }\n---\napiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: b, namespace: pay }\nspec: { endpoints: { static: [\"127.0.0.1:1\"] } }\n";
        let ids = |rs: Vec<Resource>| rs.iter().map(Resource::id).collect::<Vec<_>>();
        assert_eq!(
            ids(parse_documents_in(text, "shop").expect("parses")),
            ["UpstreamPolicy/shop/a", "UpstreamPolicy/pay/b"]
        );
        assert_eq!(
            ids(parse_documents(text).expect("parses")),
            ["UpstreamPolicy/default/a", "UpstreamPolicy/pay/b"]
        );
        let json = r#"[{"apiVersion": "bulwark/v1", "kind": "ServicePolicy", "metadata": {"name": "a"}, "spec": {}}]"#;
        assert_eq!(
            ids(parse_documents_in(json, "shop").expect("parses")),
            ["ServicePolicy/shop/a"]
        );
    }

    #[test]
    fn a_directory_holds_its_visible_policy_files_in_name_order() {
        let dir = std::env::temp_dir().join(format!("bulwark-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..data")).unwrap();
        for name in [
            "b.yaml",
            "a.json",
            "c.yml",
            ".hidden.yaml",
            "notes.txt",
            "..data/x.yaml",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let names: Vec<String> = policy_files(&dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.json", "b.yaml", "c.yml"]);
        // A file is read whatever its name.
        let txt = dir.join("notes.txt");
        assert_eq!(policy_files(&txt).unwrap(), vec![txt.clone()]);
        assert!(policy_files(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
