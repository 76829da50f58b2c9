//! `meshctl status`: first each service's degradation level and why, then how far each
//! resource has converged (pods that applied its version out of the pods it concerns), and
//! every pod that refused a snapshot, with its reason.

use hyper::StatusCode;

use crate::api::{self, Levels, Override, ResourceStatus, ServiceLevel, Status};
use crate::client::Client;
use crate::errors::CliError;
use crate::output::{Format, Output};
use crate::table::Table;

/// Said when the control plane predates the degradation API: convergence still matters most
/// during the upgrade that brings it, so status goes on without levels.
const NO_LEVELS_API: &str = "(no degradation levels: the control plane does not serve /v1/levels)";

pub async fn run(client: &Client, format: Format) -> Result<Output, CliError> {
    if format.documents() {
        return documents(client, format).await;
    }
    let levels = match client.get::<Levels>("/v1/levels").await {
        Ok(reply) => Some(reply),
        Err(CliError::Refused {
            status: StatusCode::NOT_FOUND,
            ..
        }) => None,
        Err(e) => return Err(e),
    };
    let status = client.get::<Status>("/v1/status").await?;
    let mut out = Output::default();
    out.stale(status.stale || levels.as_ref().is_some_and(|l| l.stale));
    let mut sections = Vec::new();
    match &levels {
        None => out.note(NO_LEVELS_API),
        Some(reply) => {
            if reply.body.computed_at == 0 {
                out.note("(levels not computed yet)");
            }
            if reply.body.services.is_empty() {
                out.note("no services with a ServicePolicy");
            } else {
                sections.push(levels_section(&reply.body.services));
            }
        }
    }
    if status.body.resources.is_empty() {
        out.note("no resources");
    } else {
        sections.push(table(&status.body.resources).render());
    }
    out.text(&sections.join("\n"));
    Ok(out)
}

/// `status -w`: each service's level and each resource's convergence, then their changes, from
/// `GET /v1/watch/status` (a row of the levels table or of the convergence table per change).
pub async fn watch(client: &Client, format: Format) -> Result<Output, CliError> {
    crate::watch::run(client, "/v1/watch/status", format, |item| {
        let bad = |e: serde_json::Error| {
            CliError::bad_answer(client.server(), format!("a watched status: {e}"))
        };
        match item.get("kind").and_then(|k| k.as_str()) {
            Some("ServiceLevel") => {
                let level: ServiceLevel = serde_json::from_value(item.clone()).map_err(bad)?;
                Ok(("levels", levels_table(&[level])))
            }
            _ => {
                let resource: ResourceStatus = serde_json::from_value(item.clone()).map_err(bad)?;
                Ok(("resources", table(&[resource])))
            }
        }
    })
    .await
}

/// `-o json|yaml`: `{"levels": GET /v1/levels (null when not served), "status": GET
/// /v1/status}`, each as the control plane answered.
async fn documents(client: &Client, format: Format) -> Result<Output, CliError> {
    let levels = match client.get::<serde_json::Value>("/v1/levels").await {
        Ok(reply) => Some(reply),
        Err(CliError::Refused {
            status: StatusCode::NOT_FOUND,
            ..
        }) => None,
        Err(e) => return Err(e),
    };
    let status = client.get::<serde_json::Value>("/v1/status").await?;
    let mut out = Output::default();
    out.stale(status.stale || levels.as_ref().is_some_and(|l| l.stale));
    let both = serde_json::json!({
        "levels": levels.map(|l| l.body),
        "status": status.body,
    });
    out.document(format, &both).map_err(CliError::Usage)?;
    Ok(out)
}

/// The levels table, then one line for a mesh-wide override if any service is under one.
pub fn levels_section(services: &[ServiceLevel]) -> String {
    let mut text = levels_table(services).render();
    let mesh = services
        .iter()
        .filter_map(|s| s.forced.as_ref())
        .find(|o| o.mesh);
    if let Some(forced) = mesh {
        text.push_str(&format!("mesh {}\n", forced_text(forced)));
    }
    text
}

/// SERVICE, LEVEL, UNHEALTHY, PODS, REASONS; under a service forced on its own, a line
/// saying to what, by whom, until when and why.
pub fn levels_table(services: &[ServiceLevel]) -> Table {
    let mut table = Table::new(&["SERVICE", "LEVEL", "UNHEALTHY", "PODS", "REASONS"]);
    for service in services {
        let level = match &service.forced {
            Some(forced) if forced.mesh => format!("{} (mesh forced)", service.level),
            Some(_) => format!("{} (forced)", service.level),
            // A lower computed level waits out `lowerAfter`; say where the service is heading.
            None if !service.computed.is_empty() && service.computed != service.level => {
                format!("{} (computed {})", service.level, service.computed)
            }
            None => service.level.clone(),
        };
        let pods = if service.unready_pods.is_empty() {
            service.reporting_pods.to_string()
        } else {
            format!(
                "{}, {} unready",
                service.reporting_pods,
                service.unready_pods.len()
            )
        };
        table.row(vec![
            format!("{}/{}", service.namespace, service.service),
            level,
            dash_if_empty(service.unhealthy.join(",")),
            pods,
            dash_if_empty(reasons(service)),
        ]);
        if let Some(forced) = service.forced.as_ref().filter(|o| !o.mesh) {
            table.note(format!("  {}", forced_text(forced)));
        }
    }
    table
}

/// `forced to EMERGENCY by alice until 2026-11-22T10:15:00Z (payment provider outage)`.
pub fn forced_text(forced: &Override) -> String {
    let mut text = format!("forced to {}", forced.level);
    if !forced.by.is_empty() {
        text.push_str(&format!(" by {}", forced.by));
    }
    text.push_str(&format!(
        " until {}",
        bulwark_proto::time::rfc3339_seconds(forced.expires)
    ));
    if !forced.reason.is_empty() {
        text.push_str(&format!(" ({})", forced.reason));
    }
    text
}

/// The summary without its `LEVEL: ` prefix (the LEVEL column says it), else the reasons.
fn reasons(service: &ServiceLevel) -> String {
    let summary = service.summary.trim();
    let is_level = |word: &str| api::parse_level(word).is_ok();
    let stripped = match summary.split_once(':') {
        Some((head, rest)) if head.split_whitespace().next().is_some_and(is_level) => rest.trim(),
        _ if is_level(summary) => "",
        _ => summary,
    };
    if stripped.is_empty() {
        service.reasons.join(", ")
    } else {
        stripped.to_string()
    }
}

fn dash_if_empty(text: String) -> String {
    if text.is_empty() { "-".into() } else { text }
}

/// RESOURCE, VERSION, APPLIED (`applied/total`), then `  pod P at version V: reason` under
/// a resource for each NACK.
pub fn table(resources: &[ResourceStatus]) -> Table {
    let mut table = Table::new(&["RESOURCE", "VERSION", "APPLIED"]);
    for resource in resources {
        table.row(vec![
            resource.id.clone(),
            resource
                .resource_version
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            format!("{}/{}", resource.pods.applied, resource.pods.total),
        ]);
        for nack in &resource.pods.nacks {
            let version = nack
                .version
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "?".into());
            table.note(format!(
                "  pod {} at version {version}: {}",
                nack.pod, nack.error
            ));
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nacks_follow_their_resource() {
        let status: Status = serde_json::from_str(
            r#"{"revision": 40, "resources": [
                {"id": "UpstreamPolicy/payments/midtrans", "resourceVersion": 40,
                 "pods": {"applied": 37, "total": 40, "nacks": [
                    {"pod": "checkout-7f9", "version": 40, "error": "unknown field `retries`"}]}},
                {"id": "ServicePolicy/mrg/order-orchestrator", "resourceVersion": "12",
                 "pods": {"applied": 3, "total": 3, "nacks": []}}]}"#,
        )
        .expect("status parses");
        assert_eq!(
            table(&status.resources).render(),
            "RESOURCE                               VERSION   APPLIED\n\
             UpstreamPolicy/payments/midtrans       40        37/40\n  \
             pod checkout-7f9 at version 40: unknown field `retries`\n\
             ServicePolicy/mrg/order-orchestrator   12        3/3\n"
        );
    }

    /// The contract's example service, as `GET /v1/levels` sends it.
    const SEVERE: &str = r#"{"namespace":"mrg","service":"order-orchestrator","level":"SEVERE",
        "computed":"SEVERE","since":1795341600000,
        "capabilities":{"acceptOrders":false,"sendNotifications":true},
        "reasons":["midtrans unhealthy (breaker open on 3/4 pods)","bbd unhealthy (success rate 41% < 90%)"],
        "summary":"SEVERE: midtrans unhealthy (breaker open on 3/4 pods), bbd unhealthy (success rate 41% < 90%)",
        "unhealthy":["midtrans","bbd"],"reportingPods":4,"unreadyPods":["pod-a"],"override":null,
        "dependencies":[{"name":"midtrans","critical":true,"healthy":false,"reason":"breaker open on 3/4 pods",
            "pods":4,"breakerOpenPods":3,"requests":120,"failures":80}]}"#;

    fn levels(services: &[&str]) -> Levels {
        let json = format!(
            r#"{{"computedAt": 1795341600000, "services": [{}]}}"#,
            services.join(",")
        );
        serde_json::from_str(&json).expect("levels parse")
    }

    #[test]
    fn levels_show_unhealthy_dependencies_pods_and_reasons() {
        let healthy = r#"{"namespace":"payments","service":"checkout","level":"NORMAL",
            "computed":"NORMAL","summary":"NORMAL","reasons":[],"unhealthy":[],
            "reportingPods":3,"unreadyPods":[],"override":null}"#;
        let levels = levels(&[SEVERE, healthy]);
        assert_eq!(levels.computed_at, 1_795_341_600_000);
        assert_eq!(
            levels_section(&levels.services),
            "SERVICE                  LEVEL    UNHEALTHY      PODS           REASONS\n\
             mrg/order-orchestrator   SEVERE   midtrans,bbd   4, 1 unready   midtrans unhealthy (breaker open on 3/4 pods), bbd unhealthy (success rate 41% < 90%)\n\
             payments/checkout        NORMAL   -              3              -\n"
        );
    }

    #[test]
    fn a_forced_service_says_by_whom_until_when_and_why() {
        let forced = SEVERE
            .replace(r#""level":"SEVERE""#, r#""level":"EMERGENCY""#)
            .replace(
                r#""override":null"#,
                r#""override":{"level":"EMERGENCY","reason":"payment provider outage","by":"alice","expires":1795342500000,"mesh":false}"#,
            );
        let lowering = r#"{"namespace":"mrg","service":"dispatch","level":"DEGRADED",
            "computed":"NORMAL","summary":"","reasons":["bbd unhealthy (success rate 80% < 90%)"],
            "unhealthy":[],"reportingPods":2,"unreadyPods":[]}"#;
        let levels = levels(&[&forced, lowering]);
        assert_eq!(
            levels_section(&levels.services),
            "SERVICE                  LEVEL                        UNHEALTHY      PODS           REASONS\n\
             mrg/order-orchestrator   EMERGENCY (forced)           midtrans,bbd   4, 1 unready   midtrans unhealthy (breaker open on 3/4 pods), bbd unhealthy (success rate 41% < 90%)\n  \
             forced to EMERGENCY by alice until 2026-11-22T10:15:00Z (payment provider outage)\n\
             mrg/dispatch             DEGRADED (computed NORMAL)   -              2              bbd unhealthy (success rate 80% < 90%)\n"
        );
    }

    #[test]
    fn a_mesh_override_is_said_once_under_the_table() {
        let service = |name: &str| {
            format!(
                r#"{{"namespace":"mrg","service":"{name}","level":"EMERGENCY","computed":"NORMAL",
                "summary":"NORMAL","reportingPods":1,
                "override":{{"level":"EMERGENCY","reason":"drill","by":"bob","expires":1795342500000,"mesh":true}}}}"#
            )
        };
        let levels = levels(&[&service("a"), &service("b")]);
        assert_eq!(
            levels_section(&levels.services),
            "SERVICE   LEVEL                     UNHEALTHY   PODS   REASONS\n\
             mrg/a     EMERGENCY (mesh forced)   -           1      -\n\
             mrg/b     EMERGENCY (mesh forced)   -           1      -\n\
             mesh forced to EMERGENCY by bob until 2026-11-22T10:15:00Z (drill)\n"
        );
    }
}
