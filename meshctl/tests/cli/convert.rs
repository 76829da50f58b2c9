//! `meshctl convert`: Istio's DestinationRule and VirtualService of one host become one
//! UpstreamPolicy that `meshctl validate` accepts, every setting carried over as
//! docs/migration.md maps it, every one without a counterpart named on stderr; broken input
//! is refused with the document that is wrong.

use crate::support::{meshctl, meshctl_with_stdin, scratch_dir};

const ISTIO: &str = include_str!("istio.yaml");

#[test]
fn a_destination_rule_and_a_virtual_service_become_one_upstream_policy() {
    let run = meshctl_with_stdin(&["convert", "-f", "-"], &[], ISTIO);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata:
  name: payments
  namespace: shop
spec:
  endpoints:
    dns: payments.shop.svc.cluster.local:8080
  limits:
    maxConcurrent: 100
    maxPending: 50
  outlierDetection:
    baseEjection: 30s
    consecutiveFailures: 5
    maxEjectedPercent: 50
  retry:
    maxAttempts: 3
    retryOn:
    - 5xx
    - connect-failure
    - reset
  routes:
  - match:
      method: POST
      pathPrefix: /v1/refunds
    timeouts:
      request: 30s
  timeouts:
    connect: 1s
    perTry: 3s
    request: 10s
  tls:
    mode: mesh
"
    );
    assert_eq!(
        run.stderr,
        "DestinationRule/shop/payments: trafficPolicy.outlierDetection.interval: not converted (an endpoint is ejected at its n-th failure in a row)
DestinationRule/shop/payments: trafficPolicy.connectionPool.http.idleTimeout: not converted (the sidecar's --upstream-idle-timeout)
VirtualService/shop/payments: http[1].retries.retryOn retriable-4xx: not converted
VirtualService/shop/payments: http[1].fault: not converted (not Bulwark's)
Service/shop/payments: not an Istio DestinationRule or VirtualService, left out
"
    );

    // What it printed is a policy meshctl validate accepts.
    let file = scratch_dir("convert").join("payments.yaml");
    std::fs::write(&file, &run.stdout).expect("write the converted policy");
    let path = file.display().to_string();
    let validated = meshctl(&["validate", "-f", &path], &[]);
    assert_eq!(validated.code, Some(0), "{}", validated.stderr);
    assert_eq!(validated.stdout, "ok: UpstreamPolicy/shop/payments\n");
}

#[test]
fn a_short_host_takes_the_resources_namespace_and_a_broken_document_is_refused() {
    let short = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: ledger }
spec:
  hosts: [ledger]
  http: [{ timeout: 2s, route: [{ destination: { host: ledger } }] }]
";
    let run = meshctl_with_stdin(&["convert", "-n", "bank", "-f", "-"], &[], short);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("name: ledger\n  namespace: bank\n")
            && run
                .stdout
                .contains("dns: ledger.bank.svc.cluster.local:80\n")
            && run.stdout.contains("request: 2s\n"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stderr,
        "UpstreamPolicy/bank/ledger: no port in the Istio resources; endpoints use 80\n"
    );

    let broken = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: nohost, namespace: shop }
spec: { trafficPolicy: {} }
";
    let run = meshctl_with_stdin(&["convert", "-f", "-"], &[], broken);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .contains("-: DestinationRule/shop/nohost: spec.host is missing"),
        "{}",
        run.stderr
    );
}
