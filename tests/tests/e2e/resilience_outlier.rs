//! Outlier ejection through the sidecar: an endpoint that fails `consecutiveFailures` times in
//! a row leaves the rotation (the healthy one takes every request), `/breakers` and the metric
//! show it; `maxEjectedPercent` keeps endpoints in rotation; and when every endpoint is
//! ejected they are all used anyway (panic mode).

use std::net::SocketAddr;
use std::time::Duration;

use bulwark_tests::client::{self, HttpClient};
use bulwark_tests::{HttpUpstream, Sidecar, eventually, policy};
use http::StatusCode;

const WAIT: Duration = Duration::from_secs(5);
/// Requests sent at most while waiting for the balancer to pick an endpoint often enough.
const MAX_REQUESTS: usize = 200;

async fn failing() -> HttpUpstream {
    HttpUpstream::builder()
        .always_fail(503)
        .start()
        .await
        .expect("start")
}

async fn sidecar(a: SocketAddr, b: SocketAddr, outlier: &str) -> Sidecar {
    Sidecar::builder()
        .policies_yaml(
            policy::upstream("echo", a)
                .endpoint(b)
                .spec(&format!("outlierDetection: {outlier}"))
                .to_yaml(),
        )
        .start()
        .await
}

/// The addresses `/breakers` shows ejected for `echo`.
async fn ejected(sidecar: &Sidecar) -> Vec<String> {
    let entry = sidecar.breaker_entry("echo").await.expect("echo listed");
    entry["outlier"]["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("outlier.endpoints in {entry}"))
        .iter()
        .filter(|e| e["ejected"] == true)
        .map(|e| e["address"].as_str().expect("address").to_string())
        .collect()
}

/// Sends requests one at a time until `done` holds (at most [`MAX_REQUESTS`]).
async fn send_until<F: AsyncFn() -> bool>(http: &HttpClient, done: F) {
    for _ in 0..MAX_REQUESTS {
        if done().await {
            return;
        }
        client::get(http, "http://echo/status/200").await;
    }
    assert!(done().await, "not reached within {MAX_REQUESTS} requests");
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_gets_no_more_requests() {
    let bad = failing().await;
    let good = HttpUpstream::start().await;
    let sidecar = sidecar(
        bad.addr(),
        good.addr(),
        "{ consecutiveFailures: 3, baseEjection: 30s, maxEjectedPercent: 50 }",
    )
    .await;
    let http = client::http1_client(sidecar.outbound());

    // Successes on the other endpoint do not break the bad one's run.
    send_until(&http, async || bad.requests() >= 3).await;
    assert_eq!(bad.requests(), 3);
    let bad_addr = bad.addr().to_string();
    eventually(WAIT, || async {
        (ejected(&sidecar).await == [bad_addr.clone()]).then_some(())
    })
    .await;
    let entry = sidecar.breaker_entry("echo").await.expect("echo listed");
    assert_eq!(entry["outlier"]["ejected"], 1, "{entry}");

    let before = good.requests();
    for _ in 0..20 {
        let res = client::get(&http, "http://echo/status/200").await;
        assert_eq!(
            res.status,
            StatusCode::OK,
            "only the healthy endpoint answers"
        );
        assert_eq!(res.header("x-bulwark-upstream"), Some("echo"));
    }
    assert_eq!(bad.requests(), 3);
    assert_eq!(good.requests(), before + 20);
    sidecar
        .await_metric(
            "bulwark_outlier_ejections_total",
            &[("upstream", "echo")],
            1.0,
            WAIT,
        )
        .await;
}

#[tokio::test]
async fn max_ejected_percent_keeps_an_endpoint_in_rotation() {
    let a = failing().await;
    let b = failing().await;
    let sidecar = sidecar(
        a.addr(),
        b.addr(),
        "{ consecutiveFailures: 2, baseEjection: 30s, maxEjectedPercent: 50 }",
    )
    .await;
    let http = client::http1_client(sidecar.outbound());

    // Both fail; 50% of 2 endpoints allows 1 ejection.
    send_until(&http, async || a.requests() >= 2 && b.requests() >= 2).await;
    let one = eventually(WAIT, || async {
        let now = ejected(&sidecar).await;
        (now.len() == 1).then_some(now)
    })
    .await;
    let (out, kept) = if one[0] == a.addr().to_string() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let (out_before, kept_before) = (out.requests(), kept.requests());
    for _ in 0..10 {
        let res = client::get(&http, "http://echo/status/200").await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.text(), "injected failure\n");
    }
    assert_eq!(out.requests(), out_before, "the ejected endpoint rests");
    assert_eq!(kept.requests(), kept_before + 10);
    assert_eq!(ejected(&sidecar).await.len(), 1, "never both");
    let entry = sidecar.breaker_entry("echo").await.expect("echo listed");
    assert_eq!(entry["outlier"]["maxEjected"], 1, "{entry}");
    assert!(
        entry["outlier"]["ejectionsSkipped"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "the other endpoint's ejection was skipped: {entry}"
    );
    sidecar
        .await_metric(
            "bulwark_outlier_ejections_total",
            &[("upstream", "echo")],
            1.0,
            WAIT,
        )
        .await;
}

#[tokio::test]
async fn every_endpoint_ejected_means_all_are_used_anyway() {
    let a = failing().await;
    let b = failing().await;
    let sidecar = sidecar(
        a.addr(),
        b.addr(),
        "{ consecutiveFailures: 2, baseEjection: 30s, maxEjectedPercent: 100 }",
    )
    .await;
    let http = client::http1_client(sidecar.outbound());
    send_until(&http, async || ejected(&sidecar).await.len() == 2).await;

    let before = a.requests() + b.requests();
    for _ in 0..10 {
        let res = client::get(&http, "http://echo/status/200").await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.text(),
            "injected failure\n",
            "the endpoints still answer"
        );
        assert_eq!(res.header("x-bulwark-error"), None);
    }
    assert_eq!(a.requests() + b.requests(), before + 10);
    sidecar
        .await_metric(
            "bulwark_outlier_ejections_total",
            &[("upstream", "echo")],
            2.0,
            WAIT,
        )
        .await;
}
