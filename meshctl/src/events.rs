//! `meshctl events`: the control plane's record of level changes, breaker transitions and
//! overrides, newest first, for every service or one.

use crate::api::{self, Event, Events, Target};
use crate::client::Client;
use crate::errors::CliError;
use crate::output::{Format, Output};
use crate::table::Table;

pub async fn run(
    client: &Client,
    service: Option<&Target>,
    limit: u32,
    format: Format,
) -> Result<Output, CliError> {
    if format.documents() {
        return client.document(&path(service, limit), format).await;
    }
    let reply = client.get::<Events>(&path(service, limit)).await?;
    let mut out = Output::default();
    out.stale(reply.stale);
    if reply.body.events.is_empty() {
        out.note(match service {
            Some(target) => format!("no events for {}", target.id()),
            None => "no events".to_string(),
        });
    } else {
        out.text(&table(&reply.body.events, format == Format::Wide).render());
    }
    Ok(out)
}

/// `events -w`: the last events, oldest first, then each new one, from `GET /v1/watch/events`.
pub async fn watch(
    client: &Client,
    service: Option<&Target>,
    limit: u32,
    format: Format,
) -> Result<Output, CliError> {
    let path = path(service, limit).replacen("/v1/events", "/v1/watch/events", 1);
    let wide = format == Format::Wide;
    crate::watch::run(client, &path, format, |item| {
        let event: Event = serde_json::from_value(item.clone())
            .map_err(|e| CliError::bad_answer(client.server(), format!("an event: {e}")))?;
        Ok(("events", table(&[event], wide)))
    })
    .await
}

/// `/v1/events?service=ns%2Fname&limit=N` (the service filter only when given).
pub fn path(service: Option<&Target>, limit: u32) -> String {
    let id = service.map(Target::id);
    let limit = limit.to_string();
    let mut pairs = Vec::new();
    if let Some(id) = &id {
        pairs.push(("service", id.as_str()));
    }
    pairs.push(("limit", limit.as_str()));
    format!("/v1/events{}", api::query(&pairs))
}

/// TIME, SERVICE, KIND, CHANGE (`from -> to`), BY, REASONS, in the server's order; `wide`
/// adds TEXT, the event's one-line account (what an alert says).
pub fn table(events: &[Event], wide: bool) -> Table {
    let mut columns = vec!["TIME", "SERVICE", "KIND", "CHANGE", "BY", "REASONS"];
    if wide {
        columns.push("TEXT");
    }
    let mut table = Table::new(&columns);
    for event in events {
        let change = match (event.from.as_str(), event.to.as_str()) {
            ("", "") => "-".to_string(),
            (from, to) => format!("{} -> {}", or_dash(from), or_dash(to)),
        };
        // The alert text repeats the service and the change; it stands in only when the
        // event carries no reasons.
        let reasons = if event.reasons.is_empty() {
            event.text.clone()
        } else {
            event.reasons.join(", ")
        };
        let mut row = vec![
            event.at.clone(),
            event.service.clone(),
            event.kind.clone(),
            change,
            or_dash(&event.by).to_string(),
            or_dash(&reasons).to_string(),
        ];
        if wide {
            row.push(or_dash(&event.text).to_string());
        }
        table.row(row);
    }
    table
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_show_the_change_who_and_why_newest_first() {
        let events: Events = serde_json::from_str(
            r#"{"events": [
                {"time": 1795341900000, "at": "2026-11-22T10:05:00.000Z", "service": "*",
                 "kind": "override", "from": "NORMAL", "to": "EMERGENCY",
                 "reasons": ["payment provider outage"], "by": "alice",
                 "text": "mesh NORMAL -> EMERGENCY: payment provider outage"},
                {"time": 1795341660000, "at": "2026-11-22T10:01:00.000Z",
                 "service": "mrg/order-orchestrator", "kind": "breaker", "from": "closed",
                 "to": "open", "reasons": [], "by": "",
                 "text": "mrg/order-orchestrator midtrans breaker open on 3/4 pods"},
                {"time": 1795341600000, "at": "2026-11-22T10:00:00.000Z",
                 "service": "mrg/order-orchestrator", "kind": "level", "from": "NORMAL",
                 "to": "DEGRADED", "reasons": ["midtrans unhealthy (breaker open on 3/4 pods)"],
                 "by": "", "text": "mrg/order-orchestrator NORMAL -> DEGRADED: midtrans unhealthy (breaker open on 3/4 pods)"}
            ]}"#,
        )
        .expect("events parse");
        assert_eq!(
            table(&events.events, false).render(),
            "TIME                       SERVICE                  KIND       CHANGE                BY      REASONS\n\
             2026-11-22T10:05:00.000Z   *                        override   NORMAL -> EMERGENCY   alice   payment provider outage\n\
             2026-11-22T10:01:00.000Z   mrg/order-orchestrator   breaker    closed -> open        -       mrg/order-orchestrator midtrans breaker open on 3/4 pods\n\
             2026-11-22T10:00:00.000Z   mrg/order-orchestrator   level      NORMAL -> DEGRADED    -       midtrans unhealthy (breaker open on 3/4 pods)\n"
        );
    }

    #[test]
    fn missing_fields_show_as_dashes() {
        let events: Events = serde_json::from_str(
            r#"{"events": [{"at": "2026-11-22T10:00:00.000Z", "service": "mrg/a", "kind": "level", "to": "SEVERE"},
                           {"at": "2026-11-22T09:00:00.000Z", "service": "mrg/a", "kind": "level"}]}"#,
        )
        .expect("events parse");
        assert_eq!(
            table(&events.events, false).render(),
            "TIME                       SERVICE   KIND    CHANGE        BY   REASONS\n\
             2026-11-22T10:00:00.000Z   mrg/a     level   - -> SEVERE   -    -\n\
             2026-11-22T09:00:00.000Z   mrg/a     level   -             -    -\n"
        );
    }

    #[test]
    fn the_path_filters_by_service_only_when_asked() {
        assert_eq!(path(None, 100), "/v1/events?limit=100");
        let one = api::parse_target("order-orchestrator", "mrg").expect("target");
        assert_eq!(
            path(Some(&one), 20),
            "/v1/events?service=mrg%2Forder-orchestrator&limit=20"
        );
        assert_eq!(
            path(Some(&Target::Mesh), 5),
            "/v1/events?service=%2A&limit=5"
        );
    }
}
