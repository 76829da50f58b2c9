//! `meshctl apply` as users run it, against a fake control plane: the lines printed for each
//! result, local validation that sends nothing, and the server's rejections.

use crate::support::{FakeControlPlane, Reply, example, meshctl, meshctl_with_stdin, scratch};
use serde_json::json;

fn payments_results() -> Reply {
    Reply::ok(json!({
        "results": [
            {"id": "UpstreamPolicy/payments/midtrans", "action": "created", "resourceVersion": "41", "diff": null},
            {"id": "UpstreamPolicy/payments/xendit", "action": "updated", "resourceVersion": 41},
            {"id": "UpstreamPolicy/payments/nicepay", "action": "unchanged", "resourceVersion": "17"}
        ],
        "revision": 41
    }))
}

#[test]
fn apply_prints_one_line_per_result_and_sends_everything_in_one_request() {
    let cp = FakeControlPlane::start(&[("POST /v1/apply", payments_results())]);
    let payments = example("payments.yaml");
    let run = meshctl(
        &[
            "--server", &cp.url, "apply", "-f", &payments, "--by", "alice",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "UpstreamPolicy/payments/midtrans created (version 41)\n\
         UpstreamPolicy/payments/xendit updated (version 41)\n\
         UpstreamPolicy/payments/nicepay unchanged (version 17)\n"
    );
    assert_eq!(run.code, Some(0));

    let requests = cp.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].uri, "/v1/apply");
    let body = requests[0].json();
    assert_eq!(body["dryRun"], json!(false));
    assert_eq!(body["by"], json!("alice"));
    let ids: Vec<String> = body["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            let kind = r["kind"].as_str().expect("kind");
            let name = r["metadata"]["name"].as_str().expect("name");
            format!("{kind}/{name}")
        })
        .collect();
    assert_eq!(
        ids,
        [
            "UpstreamPolicy/midtrans",
            "UpstreamPolicy/xendit",
            "UpstreamPolicy/nicepay"
        ]
    );
    // Resources travel as the policy model's JSON, values as written.
    assert_eq!(body["resources"][0]["apiVersion"], json!("bulwark/v1"));
    assert_eq!(
        body["resources"][0]["metadata"]["namespace"],
        json!("payments")
    );
    assert_eq!(
        body["resources"][0]["spec"]["timeouts"]["perTry"],
        json!("10s")
    );
    assert_eq!(
        body["resources"][0]["spec"]["retry"]["retryOn"][3],
        json!("429")
    );
}

#[test]
fn a_directory_is_applied_in_name_order_in_one_request() {
    let cp = FakeControlPlane::start(&[(
        "POST /v1/apply",
        Reply::ok(json!({"results": [], "revision": 50})),
    )]);
    let dir = crate::support::examples().display().to_string();
    let run = meshctl(&["--server", &cp.url, "apply", "-f", &dir], &[]);
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    assert_eq!(run.code, Some(0));
    let requests = cp.requests();
    assert_eq!(requests.len(), 1);
    let names: Vec<String> = requests[0].json()["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r["metadata"]["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "bbd",
            "sendgrid",
            "ses",
            "whatsapp",
            "order-orchestrator",
            "midtrans",
            "xendit",
            "nicepay"
        ]
    );
}

#[test]
fn dry_run_prints_the_servers_diff_per_resource() {
    let cp = FakeControlPlane::start(&[(
        "POST /v1/apply",
        Reply::ok(json!({
            "results": [
                {"id": "UpstreamPolicy/payments/midtrans", "action": "updated", "resourceVersion": "41",
                 "diff": "--- UpstreamPolicy/payments/midtrans (version 41)\n+++ UpstreamPolicy/payments/midtrans (applied)\n-  timeouts: { request: 20s }\n+  timeouts: { request: 25s }\n"},
                {"id": "UpstreamPolicy/payments/xendit", "action": "unchanged", "resourceVersion": "41", "diff": ""},
                {"id": "UpstreamPolicy/payments/nicepay", "action": "created", "diff": "+ (new)\n"}
            ],
            "revision": 41
        })),
    )]);
    let payments = example("payments.yaml");
    let run = meshctl(
        &["--server", &cp.url, "apply", "--dry-run", "-f", &payments],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "UpstreamPolicy/payments/midtrans updated (dry run)\n\
         --- UpstreamPolicy/payments/midtrans (version 41)\n\
         +++ UpstreamPolicy/payments/midtrans (applied)\n\
         -  timeouts: { request: 20s }\n\
         +  timeouts: { request: 25s }\n\
         UpstreamPolicy/payments/xendit unchanged (dry run)\n\
         UpstreamPolicy/payments/nicepay created (dry run)\n\
         + (new)\n"
    );
    assert_eq!(run.code, Some(0));
    let body = cp.requests()[0].json();
    assert_eq!(body["dryRun"], json!(true));
    // Without --by, the change is recorded under $USER.
    assert_eq!(body["by"], json!("tester"));
}

#[test]
fn standard_input_is_read_with_dash() {
    let cp = FakeControlPlane::start(&[(
        "POST /v1/apply",
        Reply::ok(json!({"results": [
            {"id": "UpstreamPolicy/default/echo", "action": "created", "resourceVersion": 3}
        ]})),
    )]);
    let run = meshctl_with_stdin(
        &["--server", &cp.url, "apply", "-f", "-"],
        &[],
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: echo }\nspec:\n  endpoints: { static: [\"127.0.0.1:9000\"] }\n",
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "UpstreamPolicy/default/echo created (version 3)\n"
    );
    assert_eq!(run.code, Some(0));
    let body = cp.requests()[0].json();
    assert_eq!(
        body["resources"][0]["spec"]["endpoints"]["static"],
        json!(["127.0.0.1:9000"])
    );
}

#[test]
fn dash_n_is_the_namespace_of_resources_that_name_none() {
    let cp = FakeControlPlane::start(&[(
        "POST /v1/apply",
        Reply::ok(json!({"results": [
            {"id": "UpstreamPolicy/shop/echo", "action": "created", "resourceVersion": 3},
            {"id": "UpstreamPolicy/payments/xendit", "action": "created", "resourceVersion": 3}
        ]})),
    )]);
    let manifest = "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: echo }\nspec:\n  endpoints: { static: [\"127.0.0.1:9000\"] }\n---\napiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: xendit, namespace: payments }\nspec:\n  endpoints: { static: [\"127.0.0.1:9001\"] }\n";
    let run = meshctl_with_stdin(
        &["--server", &cp.url, "-n", "shop", "apply", "-f", "-"],
        &[],
        manifest,
    );
    assert_eq!((run.stderr.as_str(), run.code), ("", Some(0)));
    let body = cp.requests()[0].json();
    assert_eq!(body["resources"][0]["metadata"]["namespace"], json!("shop"));
    assert_eq!(
        body["resources"][1]["metadata"]["namespace"],
        json!("payments"),
        "a namespace the manifest names is kept"
    );
    // validate reads files the same way.
    let run = meshctl_with_stdin(&["-n", "shop", "validate", "-f", "-"], &[], manifest);
    assert_eq!(
        run.stdout,
        "ok: UpstreamPolicy/shop/echo\nok: UpstreamPolicy/payments/xendit\n"
    );
}

#[test]
fn invalid_input_is_rejected_locally_with_field_paths_and_nothing_is_sent() {
    let cp = FakeControlPlane::start(&[("POST /v1/apply", payments_results())]);
    let invalid = scratch(
        "apply-invalid.yaml",
        r#"apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: xendit, namespace: payments }
spec:
  endpoints: { dns: xendit.payments:8080 }
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: midtrans, namespace: payments }
spec:
  endpoints: { dns: midtrans.payments:8080 }
  timeouts: { request: 5s, perTry: 10s }
  retry: { backoff: { multiplier: 0.5 } }
"#,
    );
    let unparsable = scratch(
        "apply-unparsable.yaml",
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: a }\nspec:\n  endpoint: { dns: a:80 }\n",
    );
    let run = meshctl(
        &[
            "--server",
            &cp.url,
            "apply",
            "-f",
            &invalid,
            "-f",
            &unparsable,
        ],
        &[],
    );
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        format!(
            "{invalid}:12:28: UpstreamPolicy/payments/midtrans: spec.timeouts.perTry: must be <= request (5s), got 10s\n\
             {invalid}:13:23: UpstreamPolicy/payments/midtrans: spec.retry.backoff.multiplier: must be >= 1.0, got 0.5\n\
             {unparsable}:5:3: document 1: spec.endpoint: unknown field `endpoint`, expected one of `endpoints`, `protocol`, `hostRewrite`, `allowConnect`, `timeouts`, `retry`, `circuitBreaker`, `outlierDetection`, `limits`, `adaptiveConcurrency`, `criticality`, `rateLimit`, `throttling`, `fallback`, `routes`, `tls`, `exportTo`\n"
        )
    );
    assert_eq!(run.code, Some(1));
    assert!(cp.requests().is_empty(), "{:?}", cp.requests());
}

#[test]
fn the_servers_validation_details_are_printed_and_exit_1() {
    let cp = FakeControlPlane::start(&[(
        "POST /v1/apply",
        Reply::json(
            400,
            json!({
                "error": "invalid",
                "message": "2 problems in 1 resource",
                "details": [
                    "UpstreamPolicy/payments/midtrans: spec.fallback.failover[0]: no UpstreamPolicy payments/xendit",
                    "UpstreamPolicy/payments/midtrans: spec.fallback.failover[1]: no UpstreamPolicy payments/nicepay"
                ]
            }),
        ),
    )]);
    let payments = example("payments.yaml");
    let run = meshctl(&["--server", &cp.url, "apply", "-f", &payments], &[]);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "meshctl: the control plane rejected the request: 2 problems in 1 resource\n\
         UpstreamPolicy/payments/midtrans: spec.fallback.failover[0]: no UpstreamPolicy payments/xendit\n\
         UpstreamPolicy/payments/midtrans: spec.fallback.failover[1]: no UpstreamPolicy payments/nicepay\n"
    );
    assert_eq!(run.code, Some(1));
}

#[test]
fn a_version_conflict_prints_the_message_and_exits_1() {
    let cp = FakeControlPlane::start(&[(
        "POST /v1/apply",
        Reply::json(
            409,
            json!({
                "error": "conflict",
                "message": "UpstreamPolicy/payments/midtrans: resourceVersion 40 does not match the current version 42"
            }),
        ),
    )]);
    let payments = example("payments.yaml");
    let run = meshctl(&["--server", &cp.url, "apply", "-f", &payments], &[]);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "meshctl: conflict: UpstreamPolicy/payments/midtrans: resourceVersion 40 does not match the current version 42\n"
    );
    assert_eq!(run.code, Some(1));
}
