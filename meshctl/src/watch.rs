//! `--watch` on `get`, `status` and `events`: the listing, then its changes as the control
//! plane streams them (`GET /v1/watch/...`), printed as they come — a table row per change
//! with what happened first (`ADDED`, `MODIFIED`, `DELETED`), columns widening as longer values
//! arrive; or the watch events themselves, one JSON object per line (`-o json`) or one YAML
//! document each (`-o yaml`). Ends when the control plane ends the watch (after its timeout,
//! or when it shuts down), or with the error an `ERROR` event carries.

use std::collections::BTreeMap;
use std::io::Write as _;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::client::Client;
use crate::errors::{ApiError, CliError};
use crate::output::{Format, Output};
use crate::table::{Table, Widths};

/// One line of a watch.
#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    object: Value,
}

/// Follows the watch at `path`, printing each change in `format`; `row` makes the table of
/// one object and names which table it belongs to (a watch may mix two: a header is printed
/// again whenever the table changes).
pub async fn run(
    client: &Client,
    path: &str,
    format: Format,
    row: impl Fn(&Value) -> Result<(&'static str, Table), CliError>,
) -> Result<Output, CliError> {
    let mut widths: BTreeMap<&'static str, Widths> = BTreeMap::new();
    let mut last: Option<&'static str> = None;
    let server = client.server().to_string();
    client
        .watch(path, |line| {
            let event: Event = serde_json::from_slice(line)
                .map_err(|e| CliError::bad_answer(&server, format!("{path}: {e}")))?;
            if event.kind == "ERROR" {
                return Err(ended(path, &event.object));
            }
            let text = match format {
                Format::Json => format!("{}\n", String::from_utf8_lossy(line)),
                Format::Yaml => {
                    let yaml = serde_saphyr::to_string(&serde_json::json!({
                        "type": event.kind,
                        "object": event.object,
                    }))
                    .map_err(|e| CliError::Usage(format!("cannot print YAML: {e}")))?;
                    format!("---\n{yaml}")
                }
                Format::Table | Format::Wide => {
                    let (which, table) = row(&event.object)?;
                    let widths = widths.entry(which).or_default();
                    if last.is_some_and(|l| l != which) {
                        widths.reprint_header();
                    }
                    last = Some(which);
                    table.lead("EVENT", &event.kind).render_growing(widths)
                }
            };
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| CliError::Usage(format!("cannot write to stdout: {e}")))
        })
        .await?;
    Ok(Output::default())
}

/// The error an `ERROR` event ends a watch with.
fn ended(path: &str, object: &Value) -> CliError {
    let body: ApiError = serde_json::from_value(object.clone()).unwrap_or_default();
    let status = match body.error.as_str() {
        "invalid" => StatusCode::BAD_REQUEST,
        "unauthenticated" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "not-found" => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    CliError::Refused {
        request: format!("GET {path}"),
        status,
        body,
    }
}
