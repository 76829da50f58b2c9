//! `meshctl validate` as users run it: the real binary on the examples and on bad files,
//! with its exact output and exit status.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        // Output must not depend on the caller's environment (this machine sets it to 1).
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("meshctl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A file in this test binary's scratch directory, written fresh.
fn scratch(name: &str, contents: &str) -> String {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    fs::write(&path, contents).expect("scratch file written");
    path.display().to_string()
}

#[test]
fn examples_are_valid() {
    let dir = examples();
    let out = meshctl(&["validate", "-f", dir.to_str().expect("UTF-8 path")]);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(
        text(&out.stdout),
        "ok: UpstreamPolicy/mrg/bbd\n\
         ok: UpstreamPolicy/notifications/sendgrid\n\
         ok: UpstreamPolicy/notifications/ses\n\
         ok: UpstreamPolicy/notifications/whatsapp\n\
         ok: ServicePolicy/mrg/order-orchestrator\n\
         ok: UpstreamPolicy/payments/midtrans\n\
         ok: UpstreamPolicy/payments/xendit\n\
         ok: UpstreamPolicy/payments/nicepay\n"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn every_problem_is_reported_with_its_file_and_exit_status_1() {
    let invalid = scratch(
        "meshctl-validate-invalid.yaml",
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
  retry: { backoff: { multiplier: 0.5 }, retryOn: [connect-failure, reset, 4xx] }
---
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: { name: checkout, namespace: payments }
spec:
  dependencies: { midtrans: {} }
  capabilities: { pay: "all(midtrans, xendit)" }
"#,
    );
    let unparsable = scratch(
        "meshctl-validate-unparsable.json",
        r#"[{"apiVersion": "bulwark/v1", "kind": "UpstreamPolicy", "metadata": {"name": "b"}, "spec": {"endpoints": {"dns": "b:80"}, "retries": {}}},
 {"apiVersion": "bulwark/v1", "kind": "UpstreamPolicy", "metadata": {"name": "a"}, "spec": {"endpoints": {"dns": "a:80"}}},
 {"apiVersion": "bulwark/v2", "kind": "UpstreamPolicy", "metadata": {"name": "c"}, "spec": {}}]"#,
    );
    let out = meshctl(&["validate", "-f", &invalid, "-f", &unparsable]);
    // A document that does not fit the model hides neither the valid one after it nor the
    // next broken one.
    assert_eq!(
        text(&out.stdout),
        "ok: UpstreamPolicy/payments/xendit\nok: UpstreamPolicy/default/a\n"
    );
    assert_eq!(
        text(&out.stderr),
        format!(
            "{invalid}:12:28: UpstreamPolicy/payments/midtrans: spec.timeouts.perTry: must be <= request (5s), got 10s\n\
             {invalid}:13:23: UpstreamPolicy/payments/midtrans: spec.retry.backoff.multiplier: must be >= 1.0, got 0.5\n\
             {invalid}:13:76: UpstreamPolicy/payments/midtrans: spec.retry.retryOn[2]: unknown condition \"4xx\"; expected connect-failure, reset, 5xx, gateway-error, timeout, a status code such as \"429\", or grpc-<code> such as grpc-unavailable\n\
             {invalid}:20:19: ServicePolicy/payments/checkout: spec.capabilities.pay: \"xendit\" is not a dependency declared in spec.dependencies\n\
             {unparsable}: document 1: spec.retries: unknown field `retries`, expected one of `endpoints`, `protocol`, `hostRewrite`, `allowConnect`, `timeouts`, `retry`, `circuitBreaker`, `outlierDetection`, `limits`, `adaptiveConcurrency`, `criticality`, `rateLimit`, `throttling`, `fallback`, `routes`, `tls`, `exportTo`\n\
             {unparsable}: document 3: apiVersion: must be \"bulwark/v1\", got \"bulwark/v2\"\n"
        )
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn duplicates_missing_files_and_empty_inputs_are_problems() {
    let payments = examples().join("payments.yaml");
    let payments = payments.to_str().expect("UTF-8 path");
    let copy = scratch(
        "meshctl-validate-copy.yaml",
        &fs::read_to_string(payments).expect("example readable"),
    );
    let empty = scratch("meshctl-validate-empty.yaml", "# nothing yet\n");
    let missing = scratch("meshctl-validate-missing.yaml", "");
    fs::remove_file(&missing).expect("removed");

    // The same file named twice is read once; a copy under another name is a duplicate.
    let out = meshctl(&[
        "validate", "-f", payments, "-f", payments, "-f", &copy, "-f", &empty, "-f", &missing,
    ]);
    assert_eq!(
        text(&out.stdout),
        "ok: UpstreamPolicy/payments/midtrans\n\
         ok: UpstreamPolicy/payments/xendit\n\
         ok: UpstreamPolicy/payments/nicepay\n"
    );
    assert_eq!(
        text(&out.stderr),
        format!(
            "{copy}:6:13: UpstreamPolicy/payments/midtrans: metadata.name: also defined in {payments}\n\
             {copy}:35:13: UpstreamPolicy/payments/xendit: metadata.name: also defined in {payments}\n\
             {copy}:44:13: UpstreamPolicy/payments/nicepay: metadata.name: also defined in {payments}\n\
             {empty}: contains no policy resources\n\
             {missing}: cannot read: No such file or directory (os error 2)\n"
        )
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn validate_needs_a_file() {
    let out = meshctl(&["validate"]);
    // Bad usage is rejected input (1); 2 means the server could not be reached.
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--filename <FILE_OR_DIR>"),
        "{}",
        text(&out.stderr)
    );
}

/// A failover target must be there: offline, among the files validated together (apply then
/// checks against the control plane). The resource that names a missing one is not `ok`.
#[test]
fn a_failover_target_none_of_the_files_defines_is_refused_where_it_is_named() {
    let checkout = scratch(
        "meshctl-validate-checkout.yaml",
        "apiVersion: bulwark/v1\n\
         kind: UpstreamPolicy\n\
         metadata: { name: checkout }\n\
         spec:\n\
         \x20 endpoints: { dns: \"checkout:80\" }\n\
         \x20 fallback: { failover: [ghost] }\n",
    );
    let out = meshctl(&["validate", "-n", "shop", "-f", &checkout]);
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        format!(
            "{checkout}:6:26: UpstreamPolicy/shop/checkout: spec.fallback.failover[0]: names \
             UpstreamPolicy/shop/ghost, which none of these files defines; validate it with the \
             file that does (apply checks it against the control plane)\n"
        )
    );
    assert_eq!(out.status.code(), Some(1));

    let ghost = scratch(
        "meshctl-validate-ghost.yaml",
        "apiVersion: bulwark/v1\n\
         kind: UpstreamPolicy\n\
         metadata: { name: ghost }\n\
         spec: { endpoints: { dns: \"ghost:80\" } }\n",
    );
    let out = meshctl(&["validate", "-n", "shop", "-f", &checkout, "-f", &ghost]);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(
        text(&out.stdout),
        "ok: UpstreamPolicy/shop/checkout\nok: UpstreamPolicy/shop/ghost\n"
    );
    assert_eq!(out.status.code(), Some(0));
}
