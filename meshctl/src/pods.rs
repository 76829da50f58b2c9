//! `meshctl pods`: the pods connected to the control plane, the snapshot version each runs,
//! and its workload identity with when the certificate expires — how an operator sees that
//! mTLS has what it needs everywhere (and where renewal is failing).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::{self, Pod, PodList};
use crate::client::Client;
use crate::errors::CliError;
use crate::output::{Format, Output};
use crate::table::Table;

/// `namespace`: `None` for every namespace.
pub async fn run(
    client: &Client,
    namespace: Option<&str>,
    format: Format,
) -> Result<Output, CliError> {
    let path = match namespace {
        Some(ns) => format!("/v1/pods{}", api::query(&[("namespace", ns)])),
        None => "/v1/pods".to_string(),
    };
    if format.documents() {
        return client.document(&path, format).await;
    }
    let reply = client.get::<PodList>(&path).await?;
    let mut out = Output::default();
    out.stale(reply.stale);
    if reply.body.pods.is_empty() {
        out.note(match namespace {
            Some(ns) => format!("no pods connected in namespace {ns}"),
            None => "no pods connected".to_string(),
        });
    } else {
        out.text(&table(&reply.body.pods, now_ms()).render());
    }
    Ok(out)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// NAMESPACE, SERVICE, POD, VERSION, IDENTITY, EXPIRES (`in 17h02m`, `EXPIRED 3m ago`,
/// `no certificate yet`, or `-` without an identity).
pub fn table(pods: &[Pod], now_ms: i64) -> Table {
    let mut table = Table::new(&[
        "NAMESPACE",
        "SERVICE",
        "POD",
        "VERSION",
        "IDENTITY",
        "EXPIRES",
    ]);
    for pod in pods {
        let (identity, expires) = match &pod.identity {
            None => ("-".to_string(), "-".to_string()),
            Some(id) if id.expires_unix_ms == 0 => {
                (id.spiffe_id.clone(), "no certificate yet".to_string())
            }
            Some(id) => {
                let left = id.expires_unix_ms - now_ms;
                let when = if left > 0 {
                    format!("in {}", span(left))
                } else {
                    format!("EXPIRED {} ago", span(-left))
                };
                (id.spiffe_id.clone(), format!("{} ({when})", id.expires))
            }
        };
        table.row(vec![
            pod.namespace.clone(),
            if pod.service.is_empty() {
                "-".to_string()
            } else {
                pod.service.clone()
            },
            pod.pod.clone(),
            pod.applied.to_string(),
            identity,
            expires,
        ]);
    }
    table
}

/// `2d03h`, `17h02m`, `4m05s`, `12s`.
fn span(ms: i64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (d, h, _) if d > 0 => format!("{d}d{h:02}h"),
        (_, h, m) if h > 0 => format!("{h}h{m:02}m"),
        (_, _, m) if m > 0 => format!("{m}m{:02}s", s % 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PodIdentity;

    fn pod(name: &str, service: &str, identity: Option<(&str, i64)>) -> Pod {
        Pod {
            namespace: "shop".into(),
            service: service.into(),
            pod: name.into(),
            applied: 42,
            identity: identity.map(|(id, ms)| PodIdentity {
                spiffe_id: id.into(),
                expires: if ms == 0 {
                    String::new()
                } else {
                    format!("T{ms}")
                },
                expires_unix_ms: ms,
            }),
        }
    }

    #[test]
    fn pods_show_their_identity_and_how_long_it_lasts() {
        let now = 1_000_000_000;
        let id = "spiffe://cluster.local/ns/shop/sa/orders";
        let pods = [
            pod(
                "orders-1",
                "orders",
                Some((id, now + 17 * 3_600_000 + 2 * 60_000)),
            ),
            pod("orders-2", "orders", Some((id, now - 185_000))),
            pod("orders-3", "orders", Some((id, 0))),
            pod("batch-1", "", None),
        ];
        assert_eq!(
            table(&pods, now).render(),
            "NAMESPACE   SERVICE   POD        VERSION   IDENTITY                                   EXPIRES\n\
             shop        orders    orders-1   42        spiffe://cluster.local/ns/shop/sa/orders   T1061320000 (in 17h02m)\n\
             shop        orders    orders-2   42        spiffe://cluster.local/ns/shop/sa/orders   T999815000 (EXPIRED 3m05s ago)\n\
             shop        orders    orders-3   42        spiffe://cluster.local/ns/shop/sa/orders   no certificate yet\n\
             shop        -         batch-1    42        -                                          -\n"
        );
        assert_eq!(span(2 * 86_400_000 + 3 * 3_600_000), "2d03h");
        assert_eq!(span(12_000), "12s");
    }
}
