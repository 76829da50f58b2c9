//! The Grafana dashboards in `deploy/grafana/` load (JSON a Grafana takes: a title, a uid,
//! panels with a type, a title, a place and Prometheus queries), and every metric they query
//! is in the metrics reference — which tests keep equal to the code — so a dashboard cannot
//! chart a metric that no longer exists.

use std::path::Path;

use bulwark_telemetry::reference::{is_documented, queried};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Every `expr` under `value`.
fn exprs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_loads_and_queries_only_documented_metrics() {
    let page = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    let dir = root().join("deploy/grafana");
    let mut dashboards = 0;
    let mut uids = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        dashboards += 1;
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).expect("readable");
        let dashboard: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for field in ["title", "uid"] {
            assert!(
                dashboard[field].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: {field}"
            );
        }
        uids.push(dashboard["uid"].as_str().unwrap_or_default().to_string());
        let panels = dashboard["panels"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: panels"));
        assert!(!panels.is_empty(), "{file}: no panels");
        let mut ids = Vec::new();
        for panel in panels {
            let title = panel["title"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a panel without a title"));
            assert!(panel["type"].is_string(), "{file}: {title}: type");
            for key in ["h", "w", "x", "y"] {
                assert!(
                    panel["gridPos"][key].is_u64(),
                    "{file}: {title}: gridPos.{key}"
                );
            }
            ids.push(
                panel["id"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{file}: {title}: id")),
            );
            let mut found = Vec::new();
            exprs(&panel["targets"], &mut found);
            assert!(!found.is_empty(), "{file}: {title}: no query");
            for expr in found {
                let names = queried(expr);
                assert!(
                    !names.is_empty(),
                    "{file}: {title}: {expr} queries no Bulwark metric"
                );
                for name in names {
                    assert!(
                        is_documented(&page, &name),
                        "{file}: {title}: {name} is not in docs/metrics.md"
                    );
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), panels.len(), "{file}: panel ids repeat");
    }
    assert_eq!(dashboards, 2, "the mesh overview and the control plane");
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 2, "dashboard uids repeat");
}
