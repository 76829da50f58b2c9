//! etcd over TLS with client-certificate authentication (`--client-cert-auth`), as production
//! runs it: a replica with the CA and its client certificate stores and reads; one without a
//! client certificate, or with a certificate from another CA, is refused by etcd and says so,
//! and nothing is stored; mismatched flags and endpoints are refused at start with the reason.

use std::path::Path;
use std::process::Command;

use bulwark_tests::control_plane::control_plane_bin;
use bulwark_tests::policy::upstream_json as upstream;
use bulwark_tests::streams::TestCa;
use bulwark_tests::{Etcd, EtcdTlsFiles, TempDir};
use serde_json::json;

use crate::replica_with;

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[tokio::test]
async fn etcd_with_client_certificate_auth_admits_only_a_replica_with_its_certificate() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let files = EtcdTlsFiles::issue(&ca, dir.path());
    let etcd = Etcd::start_tls(files.clone()).await;
    assert!(etcd.endpoint().starts_with("https://"));

    // With the CA and a client certificate: the API works, and the data is in etcd.
    let cp = replica_with(
        &[etcd.endpoint()],
        &[
            "--etcd-ca",
            path(&files.ca),
            "--etcd-cert",
            path(&files.client_cert),
            "--etcd-key",
            path(&files.client_key),
        ],
    )
    .await;
    cp.wait_fresh().await;
    cp.apply_json(vec![upstream("echo", "127.0.0.1:1")]).await;
    assert_eq!(cp.get("/v1/UpstreamPolicy/default/echo").await.status, 200);
    assert!(
        etcd.keys("/bulwark/v1/policies/")
            .contains(&"/bulwark/v1/policies/UpstreamPolicy/default/echo".to_string())
    );
    drop(cp);

    // Without a client certificate, and with one from another CA: etcd refuses the
    // connection; writes answer 503 naming etcd, and nothing is stored.
    let foreign = TestCa::new();
    let foreign_dir = TempDir::new();
    let foreign_files = EtcdTlsFiles::issue(&foreign, foreign_dir.path());
    for extra in [
        vec!["--etcd-ca", path(&files.ca)],
        vec![
            "--etcd-ca",
            path(&files.ca),
            "--etcd-cert",
            path(&foreign_files.client_cert),
            "--etcd-key",
            path(&foreign_files.client_key),
        ],
    ] {
        let cp = replica_with(&[etcd.endpoint()], &extra).await;
        let reply = cp
            .post(
                "/v1/apply",
                json!({"resources": [upstream("intruder", "127.0.0.1:2")]}),
            )
            .await;
        assert_eq!(reply.status, 503, "{extra:?}: {}", reply.json);
        assert_eq!(reply.json["error"], "unavailable");
        let message = reply.json["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&etcd.endpoint()),
            "{extra:?}: the message names etcd: {message}"
        );
    }
    assert!(
        !etcd
            .keys("/bulwark/v1/policies/")
            .iter()
            .any(|k| k.ends_with("/intruder")),
        "nothing was stored"
    );
}

#[test]
fn tls_flags_and_endpoints_that_do_not_match_are_refused_at_start() {
    let run = |args: &[&str]| {
        let out = Command::new(control_plane_bin())
            .args([
                "--insecure-dev",
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
            ])
            .args(args)
            .output()
            .expect("run the control plane");
        assert!(!out.status.success(), "{args:?} must be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let dir = TempDir::new();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, TestCa::new().cert_pem()).expect("write the CA");
    let err = run(&[
        "--etcd-endpoints",
        "http://127.0.0.1:2379",
        "--etcd-ca",
        path(&ca),
    ]);
    assert!(
        err.contains(
            "endpoint \"http://127.0.0.1:2379\": with --etcd-ca, etcd is reached over TLS: write https://"
        ),
        "{err}"
    );
    let err = run(&["--etcd-endpoints", "https://127.0.0.1:2379"]);
    assert!(
        err.contains("endpoint \"https://127.0.0.1:2379\": an https:// endpoint needs --etcd-ca (the CA that signed etcd's certificate)"),
        "{err}"
    );
    let err = run(&["--etcd-cert", path(&ca)]);
    assert!(
        err.contains("the following required arguments were not provided"),
        "{err}"
    );
}
