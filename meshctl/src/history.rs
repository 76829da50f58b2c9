//! `meshctl history` and `meshctl rollback`: a resource's recorded changes (newest first, at
//! most 20 kept by the control plane) and re-applying one of them.

use bulwark_proto::policy::Kind;
use serde_json::Value;

use crate::api::{self, ApplyResponse, History, HistoryEntry, RollbackRequest};
use crate::apply::render_results;
use crate::client::Client;
use crate::errors::CliError;
use crate::output::{Format, Output};
use crate::table::Table;

pub async fn history(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    format: Format,
) -> Result<Output, CliError> {
    let path = format!("{}/history", api::resource_path(kind, namespace, name));
    if format.documents() {
        return client.document(&path, format).await;
    }
    let reply = client.get::<History>(&path).await?;
    let mut out = Output::default();
    out.stale(reply.stale);
    if reply.body.items.is_empty() {
        out.note(format_args!("no history for {kind}/{namespace}/{name}"));
    } else {
        out.text(&table(&reply.body.items).render());
    }
    Ok(out)
}

pub async fn rollback(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    to_revision: u64,
    by: &str,
) -> Result<Output, CliError> {
    let path = format!("{}/rollback", api::resource_path(kind, namespace, name));
    let request = RollbackRequest { to_revision, by };
    let reply = client.post::<_, ApplyResponse>(&path, &request).await?;
    let mut out = Output::default();
    render_results(&reply.body.results, &mut out);
    Ok(out)
}

/// REVISION, OP, BY, AT in the server's order (newest first).
pub fn table(items: &[HistoryEntry]) -> Table {
    let mut table = Table::new(&["REVISION", "OP", "BY", "AT"]);
    for entry in items {
        let at = match &entry.at {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        table.row(vec![
            entry.revision.to_string(),
            entry.op.clone(),
            entry.by.clone().unwrap_or_default(),
            at,
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_rows_keep_the_servers_order() {
        let items: Vec<HistoryEntry> = serde_json::from_str(
            r#"[{"revision": 44, "op": "delete", "by": "bob", "at": "2025-01-02T10:00:00Z", "resource": null},
                {"revision": "41", "op": "create", "at": 1735689600}]"#,
        )
        .expect("entries parse");
        assert_eq!(
            table(&items).render(),
            "REVISION   OP       BY    AT\n\
             44         delete   bob   2025-01-02T10:00:00Z\n\
             41         create         1735689600\n"
        );
    }
}
