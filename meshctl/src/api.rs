//! The control plane's operator REST API as `meshctl` sees it (docs/control-plane.md): the
//! JSON bodies, the error body, and the request paths.
//!
//! Answers are read leniently — unknown fields are ignored and versions may be numbers or
//! strings — so that a newer control plane does not break an older `meshctl`.

use std::fmt;

use bulwark_proto::policy::{Kind, Resource};
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::errors::CliError;

// ───────────────────────────── requests ─────────────────────────────

/// `POST /v1/apply`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest<'a> {
    pub resources: &'a [Resource],
    pub dry_run: bool,
    pub by: &'a str,
}

/// `POST /v1/{kind}/{namespace}/{name}/rollback`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRequest<'a> {
    pub to_revision: u64,
    pub by: &'a str,
}

// ───────────────────────────── answers ─────────────────────────────

/// An etcd revision or a `resourceVersion`: the contract does not fix whether it travels as a
/// JSON number or a string, so both are accepted and shown as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawVersion")]
pub struct Version(pub String);

#[derive(Deserialize)]
#[serde(untagged)]
enum RawVersion {
    Number(u64),
    Text(String),
}

impl From<RawVersion> for Version {
    fn from(raw: RawVersion) -> Self {
        match raw {
            RawVersion::Number(n) => Version(n.to_string()),
            RawVersion::Text(s) => Version(s),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer to apply and to rollback.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    pub results: Vec<ApplyResult>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// `Kind/namespace/name`.
    pub id: String,
    /// `created`, `updated` or `unchanged`.
    pub action: String,
    #[serde(default)]
    pub resource_version: Option<Version>,
    /// For a dry run, what would change: a text diff (or any JSON the server chose).
    #[serde(default)]
    pub diff: Option<Value>,
}

/// `GET /v1/{kind}`. Items stay JSON so `-o json|yaml` show exactly what the server holds.
#[derive(Debug, Deserialize)]
pub struct List {
    pub items: Vec<Value>,
}

/// `DELETE /v1/{kind}/{namespace}/{name}`.
#[derive(Debug, Deserialize)]
pub struct Deleted {
    pub id: String,
    #[serde(default)]
    pub revision: Option<Version>,
}

/// `GET /v1/{kind}/{namespace}/{name}/history`, newest first.
#[derive(Debug, Deserialize)]
pub struct History {
    pub items: Vec<HistoryEntry>,
}

#[derive(Debug, Deserialize)]
pub struct HistoryEntry {
    pub revision: Version,
    pub op: String,
    #[serde(default)]
    pub by: Option<String>,
    /// A timestamp, shown as the server wrote it (the contract does not fix its format).
    #[serde(default)]
    pub at: Option<Value>,
}

/// `GET /v1/status`.
#[derive(Debug, Deserialize)]
pub struct Status {
    pub resources: Vec<ResourceStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    pub id: String,
    #[serde(default)]
    pub resource_version: Option<Version>,
    #[serde(default)]
    pub pods: Pods,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pods {
    pub applied: u64,
    pub total: u64,
    pub nacks: Vec<Nack>,
}

/// A pod that refused a snapshot and kept its previous policies.
#[derive(Debug, Deserialize)]
pub struct Nack {
    pub pod: String,
    #[serde(default)]
    pub version: Option<Version>,
    #[serde(default)]
    pub error: String,
}

/// The error body: `{"error": "<kind>", "message": "...", "details": [...]}`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ApiError {
    pub error: String,
    pub message: String,
    pub details: Vec<String>,
}

impl ApiError {
    /// Reads an error body; a body that is not the contract's JSON (a proxy's HTML page, a
    /// plain-text panic) becomes the message, first line only.
    pub fn parse(status: StatusCode, body: &[u8]) -> Self {
        if let Ok(parsed) = serde_json::from_slice::<ApiError>(body) {
            return parsed;
        }
        let text = String::from_utf8_lossy(body);
        let first = text.lines().map(str::trim).find(|l| !l.is_empty());
        ApiError {
            error: status.canonical_reason().unwrap_or_default().to_lowercase(),
            message: first.unwrap_or_default().to_string(),
            details: Vec::new(),
        }
    }
}

// ───────────────────────────── kinds and paths ─────────────────────────────

/// Parses the KIND argument: `upstreampolicy`, `upstreampolicies`, `up`, `servicepolicy`,
/// `servicepolicies` or `svc`, in any case.
pub fn parse_kind(text: &str) -> Result<Kind, CliError> {
    match text.to_ascii_lowercase().as_str() {
        "upstreampolicy" | "upstreampolicies" | "up" => Ok(Kind::UpstreamPolicy),
        "servicepolicy" | "servicepolicies" | "svc" => Ok(Kind::ServicePolicy),
        _ => Err(CliError::Usage(format!(
            "unknown kind {text:?}; expected upstreampolicy (up) or servicepolicy (svc)"
        ))),
    }
}

/// `/v1/{kind}`; the kind travels as it is spelled in resources and etcd keys.
pub fn kind_path(kind: Kind) -> String {
    format!("/v1/{}", kind.as_str())
}

/// `/v1/{kind}/{namespace}/{name}`.
pub fn resource_path(kind: Kind, namespace: &str, name: &str) -> String {
    format!(
        "{}/{}/{}",
        kind_path(kind),
        encode(namespace, ""),
        encode(name, "")
    )
}

/// `?k=v&k2=v2` from the pairs given (empty when there are none).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let joined: Vec<String> = pairs
        .iter()
        // `=` and `,` stay readable in values: selectors are `k=v,k2=v2` in the contract.
        .map(|(k, v)| format!("{}={}", encode(k, ""), encode(v, "=,")))
        .collect();
    if joined.is_empty() {
        String::new()
    } else {
        format!("?{}", joined.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `keep`.
fn encode(text: &str, keep: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let c = char::from(byte);
        if byte.is_ascii_alphanumeric() || "-._~".contains(c) || keep.contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_accept_aliases_in_any_case() {
        for text in ["UpstreamPolicy", "upstreampolicies", "UP"] {
            assert_eq!(parse_kind(text).ok(), Some(Kind::UpstreamPolicy));
        }
        for text in ["servicepolicy", "ServicePolicies", "svc"] {
            assert_eq!(parse_kind(text).ok(), Some(Kind::ServicePolicy));
        }
        assert!(matches!(parse_kind("gateway"), Err(CliError::Usage(_))));
    }

    #[test]
    fn paths_and_queries_are_encoded() {
        assert_eq!(
            resource_path(Kind::ServicePolicy, "pay ments", "a/b"),
            "/v1/ServicePolicy/pay%20ments/a%2Fb"
        );
        assert_eq!(
            query(&[("namespace", "payments"), ("selector", "team=pay,tier=1&x")]),
            "?namespace=payments&selector=team=pay,tier=1%26x"
        );
        assert_eq!(query(&[]), "");
    }

    #[test]
    fn versions_may_be_numbers_or_strings() {
        let r: ApplyResult =
            serde_json::from_str(r#"{"id":"a","action":"created","resourceVersion":41}"#)
                .expect("number");
        assert_eq!(r.resource_version, Some(Version("41".into())));
        let r: ApplyResult =
            serde_json::from_str(r#"{"id":"a","action":"created","resourceVersion":"41"}"#)
                .expect("string");
        assert_eq!(r.resource_version, Some(Version("41".into())));
    }

    #[test]
    fn error_bodies_that_are_not_json_become_the_message() {
        let e = ApiError::parse(StatusCode::BAD_GATEWAY, b"\n<html>bad gateway</html>\nmore");
        assert_eq!(e.message, "<html>bad gateway</html>");
        let e = ApiError::parse(
            StatusCode::CONFLICT,
            br#"{"error":"conflict","message":"current version is 42"}"#,
        );
        assert_eq!(e.error, "conflict");
        assert_eq!(e.message, "current version is 42");
        assert!(e.details.is_empty());
    }
}
