//! `meshctl inject` as users run it: the real binary on the injector's golden files and on
//! multi-document manifests, with its exact output and exit status.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn meshctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        // Output must not depend on the caller's environment (this machine sets it to 1).
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshctl starts");
    let mut input = child.stdin.take().expect("stdin");
    // meshctl may exit (a bad flag) before reading its input.
    match input.write_all(stdin.unwrap_or("").as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("stdin: {e}"),
        _ => drop(input),
    }
    child.wait_with_output().expect("meshctl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../inject/tests/injection/golden")
        .join(name)
}

/// A file in this test binary's scratch directory, written fresh.
fn scratch(name: &str, contents: &str) -> String {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    fs::write(&path, contents).expect("scratch file written");
    path.display().to_string()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).expect("meshctl writes YAML")
}

#[test]
fn every_workload_kind_gives_its_golden_output() {
    let cases = [
        ("cronjob", "CronJob/billing/nightly-report"),
        ("daemonset", "DaemonSet/monitoring/node-reporter"),
        ("deployment", "Deployment/shop/checkout"),
        ("job", "Job/billing/settle-invoices"),
        ("pod", "Pod/shop/debug-shell"),
        ("statefulset", "StatefulSet/payments/ledger"),
    ];
    for (kind, id) in cases {
        let input = golden(&format!("{kind}.in.yaml"));
        let expected =
            fs::read_to_string(golden(&format!("{kind}.out.yaml"))).expect("golden output");
        let out = meshctl(&["inject", "-f", input.to_str().expect("UTF-8 path")], None);
        assert_eq!(text(&out.stderr), format!("{id}: injected\n"), "{kind}");
        assert_eq!(text(&out.stdout), expected, "{kind}");
        assert_eq!(out.status.code(), Some(0), "{kind}");

        // Injecting the output again gives the same bytes.
        let again = meshctl(&["inject", "-f", "-"], Some(&expected));
        assert_eq!(text(&again.stdout), expected, "{kind} again");
        assert_eq!(again.status.code(), Some(0));
    }
}

const MANIFESTS: &str = r#"apiVersion: v1
kind: Service
metadata: { name: checkout, namespace: shop }
spec:
  selector: { app: checkout }
  ports: [{ port: 80, targetPort: 8080 }]
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: checkout, namespace: shop }
spec:
  selector: { matchLabels: { app: checkout } }
  template:
    metadata: { labels: { app: checkout } }
    spec:
      containers: [{ name: web, image: "shop/checkout:1", ports: [{ containerPort: 8080 }] }]
---
apiVersion: v1
kind: ConfigMap
metadata: { name: checkout-config, namespace: shop }
data: { WORKERS: "4", DEBUG: "false" }
---
apiVersion: batch/v1
kind: Job
metadata: { name: backfill, namespace: shop }
spec:
  template:
    metadata:
      annotations: { bulwark.dev/inject: disabled }
    spec:
      restartPolicy: Never
      containers: [{ name: backfill, image: "shop/backfill:1" }]
---
"#;

#[test]
fn multi_document_input_keeps_other_kinds_untouched() {
    let file = scratch("meshctl-inject-multi.yaml", MANIFESTS);
    let out = meshctl(&["inject", "-f", &file], None);
    assert_eq!(
        text(&out.stderr),
        "Service/shop/checkout: not a workload, unchanged\n\
         Deployment/shop/checkout: injected\n\
         ConfigMap/shop/checkout-config: not a workload, unchanged\n\
         Job/shop/backfill: bulwark.dev/inject: disabled, unchanged\n"
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.matches("\n---\n").count(),
        3,
        "documents separated by ---"
    );
    let input = documents(MANIFESTS);
    let output = documents(&stdout);
    assert_eq!(output.len(), 4);
    assert_eq!(output[0], input[0]);
    assert_eq!(output[2], input[2]);
    assert_eq!(output[3], input[3]);
    let init = &output[1]["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(init[0]["name"], "bulwark-init");
    assert_eq!(init[1]["name"], "bulwark-sidecar");
    assert_eq!(init[1]["restartPolicy"], "Always");
    // The ConfigMap's strings stay strings.
    assert_eq!(output[2]["data"]["WORKERS"], "4");
}

#[test]
fn flags_set_the_control_plane_and_the_image() {
    let out = meshctl(
        &[
            "inject",
            "-f",
            "-",
            "--control-plane",
            "https://cp.example.com:8081",
            "--image",
            "mirror.example.com/bulwark/sidecar:7",
            "--init-image",
            "mirror.example.com/bulwark/init:7",
        ],
        Some(MANIFESTS),
    );
    assert_eq!(out.status.code(), Some(0));
    let output = documents(&text(&out.stdout));
    let init = &output[1]["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(init[0]["name"], "bulwark-init");
    assert_eq!(init[0]["image"], "mirror.example.com/bulwark/init:7");
    let sidecar = &init[1];
    assert_eq!(sidecar["image"], "mirror.example.com/bulwark/sidecar:7");
    let env = sidecar["env"].as_array().expect("env");
    assert!(env.contains(&serde_json::json!({
        "name": "BULWARK_CONTROL_PLANE",
        "value": "https://cp.example.com:8081",
    })));
}

#[test]
fn no_capture_leaves_out_the_capture_container() {
    let out = meshctl(&["inject", "-f", "-", "--no-capture"], Some(MANIFESTS));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let output = documents(&text(&out.stdout));
    let init = output[1]["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .expect("initContainers");
    let names: Vec<&str> = init.iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(!names.contains(&"bulwark-init"), "{names:?}");
    assert!(names.contains(&"bulwark-sidecar"), "{names:?}");
    let env = init[0]["env"].as_array().expect("env");
    assert!(env.iter().all(|v| v["name"] != "BULWARK_CAPTURE"));
}

#[test]
fn refusals_name_file_document_and_object_and_write_nothing() {
    let file = scratch(
        "meshctl-inject-refused.yaml",
        r#"apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: shop }
spec:
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec:
      containers: [{ name: web, image: "shop/web:1", ports: [{ containerPort: 15001 }] }]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: { name: db, namespace: shop }
spec:
  selector: { matchLabels: { app: db } }
  serviceName: db
  template:
    metadata:
      labels: { app: db }
      annotations: { bulwark.dev/admin-port: "admin" }
    spec:
      containers: [{ name: db, image: "shop/db:1" }]
"#,
    );
    let out = meshctl(&["inject", "-f", &file], None);
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        format!(
            "{file}: document 2: Deployment/shop/web: container \"web\" already uses port 15001, \
             which the Bulwark sidecar needs; set bulwark.dev/outbound-port to another port\n\
             {file}: document 3: StatefulSet/shop/db: annotation bulwark.dev/admin-port: must be \
             a port number from 1 to 65535, got \"admin\"\n"
        )
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_flags_files_and_yaml_exit_1() {
    let out = meshctl(
        &["inject", "-f", "-", "--control-plane", "cp:8081"],
        Some(MANIFESTS),
    );
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "meshctl: invalid control-plane address: must be http:// or https:// addresses, \
         comma-separated, got \"cp:8081\"\n"
    );
    assert_eq!(out.status.code(), Some(1));

    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("meshctl-inject-missing.yaml");
    let missing = missing.display().to_string();
    let out = meshctl(&["inject", "-f", &missing], None);
    assert_eq!(
        text(&out.stderr),
        format!("{missing}: cannot read: No such file or directory (os error 2)\n")
    );
    assert_eq!(out.status.code(), Some(1));

    let broken = scratch("meshctl-inject-broken.yaml", "kind: [Deployment\n");
    let out = meshctl(&["inject", "-f", &broken], None);
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{broken}: invalid YAML: ")),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "");
    assert_eq!(out.status.code(), Some(1));
}
