//! `meshctl get KIND [NAME]`: one resource or a list, as a table, YAML documents or JSON.
//! YAML and JSON print the resources exactly as the control plane returned them, so they can
//! be edited and applied again (their `resourceVersion` then guards against lost updates).

use bulwark_proto::policy::Kind;
use serde_json::Value;

use crate::api::{self, List};
use crate::client::Client;
use crate::errors::CliError;
use crate::output::{Format, Output};
use crate::table::Table;

/// Which namespaces a list covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    Namespace(&'a str),
    All,
}

#[derive(Debug)]
pub struct Query<'a> {
    pub kind: Kind,
    pub name: Option<&'a str>,
    pub scope: Scope<'a>,
    /// `-l` values, each `key=value` or several joined by commas.
    pub selector: &'a [String],
    pub format: Format,
}

pub async fn run(client: &Client, query: &Query<'_>) -> Result<Output, CliError> {
    let mut out = Output::default();
    let (items, single) = match query.name {
        Some(name) => {
            let Scope::Namespace(namespace) = query.scope else {
                return Err(CliError::Usage(
                    "a NAME needs one namespace: use -n instead of -A".into(),
                ));
            };
            if !query.selector.is_empty() {
                return Err(CliError::Usage(
                    "-l selects from a list: give either a NAME or -l".into(),
                ));
            }
            let path = api::resource_path(query.kind, namespace, name);
            let reply = client.get::<Value>(&path).await?;
            out.stale(reply.stale);
            (vec![reply.body], true)
        }
        None => {
            let path = format!("{}{}", api::kind_path(query.kind), list_query(query)?);
            let reply = client.get::<List>(&path).await?;
            out.stale(reply.stale);
            (reply.body.items, false)
        }
    };
    match query.format {
        Format::Table | Format::Wide if items.is_empty() => out.note(match query.scope {
            Scope::Namespace(ns) => format!("no {} resources in namespace {ns}", query.kind),
            Scope::All => format!("no {} resources in any namespace", query.kind),
        }),
        Format::Table => out.text(&table(query.kind, &items, false).render()),
        Format::Wide => out.text(&table(query.kind, &items, true).render()),
        Format::Json => {
            let json = if single {
                serde_json::to_string_pretty(items.first().unwrap_or(&Value::Null))
            } else {
                serde_json::to_string_pretty(&items)
            };
            out.text(&json.map_err(|e| CliError::Usage(format!("cannot print JSON: {e}")))?);
        }
        Format::Yaml => {
            let yaml = serde_saphyr::to_string_multiple(&items)
                .map_err(|e| CliError::Usage(format!("cannot print YAML: {e}")))?;
            out.text(&yaml);
        }
    }
    Ok(out)
}

/// `get KIND -w`: the list, then each change, from `GET /v1/watch/{kind}`.
pub async fn watch(client: &Client, query: &Query<'_>) -> Result<Output, CliError> {
    let path = format!("/v1/watch/{}{}", query.kind.as_str(), list_query(query)?);
    let wide = query.format == Format::Wide;
    crate::watch::run(client, &path, query.format, |item| {
        Ok((
            "resources",
            table(query.kind, std::slice::from_ref(item), wide),
        ))
    })
    .await
}

/// The query string of a list or its watch: `?namespace=…&selector=…`, each when asked for.
fn list_query(query: &Query<'_>) -> Result<String, CliError> {
    let selector = selector(query.selector)?;
    let mut pairs = Vec::new();
    if let Scope::Namespace(namespace) = query.scope {
        pairs.push(("namespace", namespace));
    }
    if !selector.is_empty() {
        pairs.push(("selector", selector.as_str()));
    }
    Ok(api::query(&pairs))
}

/// Joins `-l` values into the contract's `k=v,k2=v2`, refusing anything else.
fn selector(values: &[String]) -> Result<String, CliError> {
    let mut pairs = Vec::new();
    for value in values {
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((key, _)) if !key.trim().is_empty() => pairs.push(pair),
                _ => {
                    return Err(CliError::Usage(format!("-l {value:?}: expected key=value")));
                }
            }
        }
    }
    Ok(pairs.join(","))
}

/// NAME, NAMESPACE, VERSION, and for upstreams ENDPOINTS and PROTOCOL.
pub fn table(kind: Kind, items: &[Value], wide: bool) -> Table {
    let upstream = kind == Kind::UpstreamPolicy;
    let mut columns = vec!["NAME", "NAMESPACE", "VERSION"];
    if upstream {
        columns.extend(["ENDPOINTS", "PROTOCOL"]);
    }
    if wide {
        columns.extend(if upstream {
            ["FAILOVER", "LABELS"]
        } else {
            ["DEPENDENCIES", "LABELS"]
        });
    }
    let mut table = Table::new(&columns);
    for item in items {
        let text = |pointer: &str| match item.pointer(pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let mut cells = vec![
            text("/metadata/name"),
            text("/metadata/namespace"),
            text("/metadata/resourceVersion"),
        ];
        if upstream {
            cells.push(endpoints(item));
            let protocol = text("/spec/protocol");
            cells.push(if protocol.is_empty() {
                "auto".into()
            } else {
                protocol
            });
        }
        if wide {
            cells.push(if upstream {
                joined(item.pointer("/spec/fallback/failover"))
            } else {
                joined(item.pointer("/spec/dependencies"))
            });
            cells.push(joined(item.pointer("/metadata/labels")));
        }
        table.row(cells);
    }
    table
}

/// A list's items, a map's `key=value` pairs (a map of objects: its keys), joined by commas;
/// `-` for none.
fn joined(value: Option<&Value>) -> String {
    let parts: Vec<String> = match value {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                _ => k.clone(),
            })
            .collect(),
        _ => Vec::new(),
    };
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(",")
    }
}

/// The `dns` name, or the `static` addresses joined by commas.
fn endpoints(item: &Value) -> String {
    if let Some(Value::String(dns)) = item.pointer("/spec/endpoints/dns") {
        return dns.clone();
    }
    match item.pointer("/spec/endpoints/static") {
        Some(Value::Array(addrs)) => addrs
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upstream_tables_show_endpoints_and_protocol() {
        let items = [
            json!({"kind": "UpstreamPolicy", "metadata": {"name": "midtrans", "namespace": "payments", "resourceVersion": "41"},
                   "spec": {"endpoints": {"dns": "midtrans.payments:8080"}, "protocol": "http1"}}),
            json!({"kind": "UpstreamPolicy", "metadata": {"name": "echo", "namespace": "default", "resourceVersion": 7},
                   "spec": {"endpoints": {"static": ["10.0.0.1:80", "10.0.0.2:80"]}}}),
        ];
        assert_eq!(
            table(Kind::UpstreamPolicy, &items, false).render(),
            "NAME       NAMESPACE   VERSION   ENDPOINTS                 PROTOCOL\n\
             midtrans   payments    41        midtrans.payments:8080    http1\n\
             echo       default     7         10.0.0.1:80,10.0.0.2:80   auto\n"
        );
    }

    #[test]
    fn service_tables_have_three_columns() {
        let items = [json!({"metadata": {"name": "checkout", "namespace": "payments"}})];
        assert_eq!(
            table(Kind::ServicePolicy, &items, false).render(),
            "NAME       NAMESPACE   VERSION\ncheckout   payments\n"
        );
    }

    #[test]
    fn selectors_join_and_reject_malformed_pairs() {
        let joined = selector(&["team=pay,tier=1".into(), "env=prod".into()]).ok();
        assert_eq!(joined.as_deref(), Some("team=pay,tier=1,env=prod"));
        assert!(matches!(
            selector(&["team".into()]),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(selector(&["=x".into()]), Err(CliError::Usage(_))));
    }
}
