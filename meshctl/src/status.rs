//! `meshctl status`: how far each resource has converged (pods that applied its version out
//! of the pods it concerns), and every pod that refused a snapshot, with its reason.

use crate::api::{ResourceStatus, Status};
use crate::client::Client;
use crate::errors::CliError;
use crate::output::Output;
use crate::table::Table;

pub async fn run(client: &Client) -> Result<Output, CliError> {
    let reply = client.get::<Status>("/v1/status").await?;
    let mut out = Output::default();
    out.stale(reply.stale);
    if reply.body.resources.is_empty() {
        out.note("no resources");
    } else {
        out.text(&table(&reply.body.resources).render());
    }
    Ok(out)
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
}
