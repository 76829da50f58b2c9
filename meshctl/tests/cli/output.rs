//! `-o` on every command that lists something: `json` and `yaml` print the control plane's own
//! documents exactly as it answered (so scripts read the API's contract), `wide` adds columns.

use serde_json::{Value, json};

use crate::support::{FakeControlPlane, Reply, meshctl};

fn event() -> Value {
    json!({"time": 1795341600000_i64, "at": "2026-11-22T10:00:00.000Z",
           "service": "mrg/order-orchestrator", "kind": "level", "from": "NORMAL",
           "to": "DEGRADED", "reasons": ["midtrans unhealthy"], "by": "",
           "text": "mrg/order-orchestrator NORMAL -> DEGRADED: midtrans unhealthy"})
}

#[test]
fn every_listing_verb_prints_the_servers_documents_as_json_and_yaml() {
    let levels = json!({"services": [], "computedAt": 1795341600000_i64});
    let status = json!({"resources": [{"id": "UpstreamPolicy/shop/payments", "version": 7,
        "pods": 2, "applied": 2, "lagging": [], "rejected": []}]});
    let events = json!({"events": [event()]});
    let history = json!({"items": [{"revision": 7, "op": "created", "by": "alice",
        "at": "2026-11-22T10:00:00Z", "resource": null}]});
    let pods = json!({"pods": [{"namespace": "shop", "service": "orders", "pod": "orders-1",
        "version": "7"}]});
    let audit = json!({"items": [{"at": "2026-11-22T10:00:00Z", "user": "alice", "from": "10.0.0.1",
        "verb": "apply", "resource": "upstreampolicies", "namespace": "shop", "name": "payments",
        "result": "allowed"}]});
    let bindings = json!({"items": [{"name": "pay", "role": "editor", "namespace": "shop",
        "subjects": [{"kind": "Group", "name": "pay-team"}]}]});
    let list = json!({"items": [{"apiVersion": "bulwark/v1", "kind": "UpstreamPolicy",
        "metadata": {"name": "payments", "namespace": "shop", "resourceVersion": "7"},
        "spec": {"endpoints": {"dns": "payments:80"}}}], "revision": 9});
    let cp = FakeControlPlane::start(&[
        ("GET /v1/levels", Reply::ok(levels.clone())),
        ("GET /v1/status", Reply::ok(status.clone())),
        ("GET /v1/events?limit=100", Reply::ok(events.clone())),
        (
            "GET /v1/UpstreamPolicy/shop/payments/history",
            Reply::ok(history.clone()),
        ),
        ("GET /v1/pods?namespace=shop", Reply::ok(pods.clone())),
        (
            "GET /v1/audit?limit=100&namespace=shop",
            Reply::ok(audit.clone()),
        ),
        ("GET /v1/rolebindings", Reply::ok(bindings.clone())),
        (
            "GET /v1/UpstreamPolicy?namespace=shop",
            Reply::ok(list.clone()),
        ),
    ]);
    let cases: [(&[&str], Value); 8] = [
        (&["status"], json!({"levels": levels, "status": status})),
        (&["events"], events),
        (&["history", "up", "payments"], history),
        (&["pods"], pods),
        (&["audit"], audit),
        (&["rolebinding", "list"], bindings),
        (&["get", "up"], list["items"].clone()),
        (&["get", "up", "-o", "json"], list["items"].clone()),
    ];
    for (verb, want) in cases {
        let mut args = vec!["--server", cp.url.as_str(), "-n", "shop"];
        args.extend_from_slice(verb);
        if !verb.contains(&"-o") {
            args.extend(["-o", "json"]);
        }
        let run = meshctl(&args, &[]);
        assert_eq!((run.code, run.stderr.as_str()), (Some(0), ""), "{verb:?}");
        let got: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{verb:?}: not JSON ({e}):\n{}", run.stdout));
        assert_eq!(got, want, "{verb:?}");

        args.pop();
        args.push("yaml");
        if verb.contains(&"-o") {
            continue;
        }
        let run = meshctl(&args, &[]);
        assert_eq!((run.code, run.stderr.as_str()), (Some(0), ""), "{verb:?}");
        assert!(
            !run.stdout.trim_start().starts_with('{') && run.stdout.contains(':'),
            "{verb:?}: YAML, not JSON:\n{}",
            run.stdout
        );
    }
}

#[test]
fn wide_adds_the_columns_a_table_leaves_out() {
    let list = json!({"items": [
        {"apiVersion": "bulwark/v1", "kind": "UpstreamPolicy",
         "metadata": {"name": "checkout", "namespace": "shop", "resourceVersion": "7",
                      "labels": {"team": "pay"}},
         "spec": {"endpoints": {"dns": "checkout:80"},
                  "fallback": {"failover": ["payments", "backup.dr"]}}}],
        "revision": 9});
    let cp = FakeControlPlane::start(&[
        ("GET /v1/UpstreamPolicy?namespace=shop", Reply::ok(list)),
        (
            "GET /v1/events?limit=100",
            Reply::ok(json!({"events": [event()]})),
        ),
    ]);
    let run = meshctl(
        &["--server", &cp.url, "-n", "shop", "get", "up", "-o", "wide"],
        &[],
    );
    assert_eq!(
        run.stdout,
        "NAME       NAMESPACE   VERSION   ENDPOINTS     PROTOCOL   FAILOVER             LABELS\n\
         checkout   shop        7         checkout:80   auto       payments,backup.dr   team=pay\n"
    );
    let run = meshctl(&["--server", &cp.url, "events", "-o", "wide"], &[]);
    let header = run.stdout.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["TIME", "SERVICE", "KIND", "CHANGE", "BY", "REASONS", "TEXT"],
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("mrg/order-orchestrator NORMAL -> DEGRADED: midtrans unhealthy"),
        "{}",
        run.stdout
    );
}
