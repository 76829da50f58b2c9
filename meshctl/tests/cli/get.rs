//! `meshctl get` against a fake control plane: the request it sends for each flag and the
//! exact table, JSON and YAML it prints.

use crate::support::{FakeControlPlane, Reply, meshctl};
use serde_json::{Value, json};

fn midtrans() -> Value {
    json!({
        "apiVersion": "bulwark/v1",
        "kind": "UpstreamPolicy",
        "metadata": {"name": "midtrans", "namespace": "payments", "labels": {"team": "pay"}, "resourceVersion": "41"},
        "spec": {
            "endpoints": {"dns": "midtrans-proxy.payments.svc.cluster.local:8080"},
            "protocol": "http1",
            "timeouts": {"request": "25s", "perTry": "10s"},
            "retry": {"retryOn": ["connect-failure", "429"], "budget": {"ratio": "20%"}}
        }
    })
}

fn xendit() -> Value {
    json!({
        "apiVersion": "bulwark/v1",
        "kind": "UpstreamPolicy",
        "metadata": {"name": "xendit", "namespace": "payments", "resourceVersion": "38"},
        "spec": {"endpoints": {"static": ["10.0.0.7:8080", "10.0.0.8:8080"]}}
    })
}

fn orchestrator() -> Value {
    json!({
        "apiVersion": "bulwark/v1",
        "kind": "ServicePolicy",
        "metadata": {"name": "order-orchestrator", "namespace": "mrg", "resourceVersion": "12"},
        "spec": {"app": {"port": 8080}}
    })
}

#[test]
fn get_lists_a_namespace_as_a_table() {
    let cp = FakeControlPlane::start(&[(
        "GET /v1/UpstreamPolicy?namespace=payments",
        Reply::ok(json!({"items": [midtrans(), xendit()], "revision": 41})),
    )]);
    let run = meshctl(
        &[
            "--server",
            &cp.url,
            "get",
            "upstreampolicies",
            "-n",
            "payments",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "NAME       NAMESPACE   VERSION   ENDPOINTS                                        PROTOCOL\n\
         midtrans   payments    41        midtrans-proxy.payments.svc.cluster.local:8080   http1\n\
         xendit     payments    38        10.0.0.7:8080,10.0.0.8:8080                      auto\n"
    );
    assert_eq!(run.code, Some(0));
}

#[test]
fn get_all_namespaces_with_a_selector() {
    let cp = FakeControlPlane::start(&[(
        "GET /v1/ServicePolicy?selector=team=pay,tier=1",
        Reply::ok(json!({"items": [orchestrator()], "revision": 41})),
    )]);
    let run = meshctl(
        &[
            "--server", &cp.url, "get", "SVC", "-A", "-l", "team=pay", "-l", "tier=1",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "NAME                 NAMESPACE   VERSION\n\
         order-orchestrator   mrg         12\n"
    );
    assert_eq!(run.code, Some(0));
}

#[test]
fn get_one_as_json_prints_the_resource_as_served() {
    let cp = FakeControlPlane::start(&[(
        "GET /v1/UpstreamPolicy/payments/midtrans",
        Reply::ok(midtrans()),
    )]);
    let run = meshctl(
        &[
            "--server", &cp.url, "get", "up", "midtrans", "-n", "payments", "-o", "json",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).expect("JSON"),
        midtrans()
    );
    assert_eq!(
        run.stdout,
        format!(
            "{}\n",
            serde_json::to_string_pretty(&midtrans()).expect("json")
        )
    );
    assert_eq!(run.code, Some(0));
}

#[test]
fn get_a_list_as_json_prints_an_array_that_apply_accepts() {
    let cp = FakeControlPlane::start(&[(
        "GET /v1/UpstreamPolicy?namespace=payments",
        Reply::ok(json!({"items": [midtrans(), xendit()], "revision": 41})),
    )]);
    let run = meshctl(
        &[
            "--server", &cp.url, "get", "up", "-n", "payments", "-o", "json",
        ],
        &[],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).expect("JSON"),
        json!([midtrans(), xendit()])
    );
    assert_eq!(run.code, Some(0));
    let parsed = bulwark_proto::policy::parse_documents(&run.stdout).expect("JSON reads back");
    assert_eq!(parsed.len(), 2);
}

#[test]
fn get_as_yaml_prints_one_document_per_resource() {
    let cp = FakeControlPlane::start(&[(
        "GET /v1/UpstreamPolicy?namespace=payments",
        Reply::ok(json!({"items": [midtrans(), xendit()], "revision": 41})),
    )]);
    let run = meshctl(
        &[
            "--server", &cp.url, "get", "up", "-n", "payments", "-o", "yaml",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "apiVersion: bulwark/v1\n\
         kind: UpstreamPolicy\n\
         metadata:\n  labels:\n    team: pay\n  name: midtrans\n  namespace: payments\n  resourceVersion: \"41\"\n\
         spec:\n  endpoints:\n    dns: midtrans-proxy.payments.svc.cluster.local:8080\n  protocol: http1\n\
         \x20 retry:\n    budget:\n      ratio: 20%\n    retryOn:\n    - connect-failure\n    - \"429\"\n\
         \x20 timeouts:\n    perTry: 10s\n    request: 25s\n\
         ---\n\
         apiVersion: bulwark/v1\n\
         kind: UpstreamPolicy\n\
         metadata:\n  name: xendit\n  namespace: payments\n  resourceVersion: \"38\"\n\
         spec:\n  endpoints:\n    static:\n    - 10.0.0.7:8080\n    - 10.0.0.8:8080\n"
    );
    assert_eq!(run.code, Some(0));
    // What `get -o yaml` prints, `apply -f` reads back.
    let parsed = bulwark_proto::policy::parse_documents(&run.stdout).expect("YAML reads back");
    let ids: Vec<String> = parsed.iter().map(|r| r.id()).collect();
    assert_eq!(
        ids,
        [
            "UpstreamPolicy/payments/midtrans",
            "UpstreamPolicy/payments/xendit"
        ]
    );
    assert_eq!(parsed[0].metadata().resource_version.as_deref(), Some("41"));
}

#[test]
fn stale_reads_are_flagged_on_stderr() {
    let cp = FakeControlPlane::start(&[(
        "GET /v1/ServicePolicy?namespace=mrg",
        Reply::ok(json!({"items": [orchestrator()], "revision": 41})).stale(),
    )]);
    let run = meshctl(
        &["--server", &cp.url, "get", "servicepolicy", "-n", "mrg"],
        &[],
    );
    assert_eq!(run.stderr, "(stale: the control plane cannot reach etcd)\n");
    assert_eq!(
        run.stdout,
        "NAME                 NAMESPACE   VERSION\n\
         order-orchestrator   mrg         12\n"
    );
    assert_eq!(run.code, Some(0));
}

#[test]
fn missing_resources_and_unknown_kinds_exit_1() {
    let cp = FakeControlPlane::start(&[(
        "GET /v1/UpstreamPolicy/payments/doku",
        Reply::json(
            404,
            json!({"error": "not-found", "message": "UpstreamPolicy/payments/doku does not exist"}),
        ),
    )]);
    let run = meshctl(
        &["--server", &cp.url, "get", "up", "doku", "-n", "payments"],
        &[],
    );
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "meshctl: not found: UpstreamPolicy/payments/doku does not exist\n"
    );
    assert_eq!(run.code, Some(1));

    let run = meshctl(&["--server", &cp.url, "get", "gateways"], &[]);
    assert_eq!(
        run.stderr,
        "meshctl: unknown kind \"gateways\"; expected upstreampolicy (up) or servicepolicy (svc)\n"
    );
    assert_eq!(run.code, Some(1));

    let run = meshctl(&["--server", &cp.url, "get", "up", "-l", "team"], &[]);
    assert_eq!(run.stderr, "meshctl: -l \"team\": expected key=value\n");
    assert_eq!(run.code, Some(1));
    assert_eq!(
        cp.requests().len(),
        1,
        "only the first get reached the server"
    );
}
