//! Upstream endpoints: a DNS name resolved by the sidecar, balancing over several endpoints,
//! and connection reuse (HTTP/1.1 keep-alive, one multiplexed HTTP/2 connection).

use std::net::SocketAddr;
use std::time::Duration;

use bulwark_tests::client;
use bulwark_tests::{HttpUpstream, Sidecar, eventually, metrics, policy};
use http::StatusCode;

async fn connects(sidecar: &Sidecar, upstream: &str, protocol: &str) -> f64 {
    let text = sidecar.admin_get("/metrics").await.text();
    metrics::value(
        &text,
        "bulwark_upstream_connections_total",
        &[("upstream", upstream), ("protocol", protocol)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_dns_name_is_resolved_and_served() {
    let v4 = HttpUpstream::start().await;
    let port = v4.addr().port();
    // Where `localhost` also resolves to ::1, serve there too, so either answer works.
    let v6 = HttpUpstream::builder()
        .bind(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port)))
        .start()
        .await
        .ok();
    let sidecar = Sidecar::builder()
        .policies_yaml(format!(
            "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: named }}\nspec:\n  endpoints: {{ dns: \"localhost:{port}\", dnsRefresh: 1s }}\n"
        ))
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    for _ in 0..5 {
        let res = client::get(&http, "http://named/status/200").await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    }
    let served = v4.requests() + v6.as_ref().map_or(0, |u| u.requests());
    assert_eq!(served, 5);
}

#[tokio::test]
async fn an_unresolvable_name_answers_503_naming_it() {
    let sidecar = Sidecar::builder()
        .policies_yaml(
            "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: ghost }\nspec:\n  endpoints: { dns: \"ghost.invalid:80\" }\n",
        )
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    // Until the first lookup ends the answer says so; afterwards it names the failure.
    let res = eventually(Duration::from_secs(30), || async {
        let res = client::get(&http, "http://ghost/").await;
        res.text().contains("failed").then_some(res)
    })
    .await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("x-bulwark-error"), Some("no-endpoints"));
    assert!(
        res.text()
            .starts_with("upstream ghost has no endpoints: DNS lookup of ghost.invalid:80 failed"),
        "{}",
        res.text()
    );
}

#[tokio::test]
async fn requests_spread_over_every_endpoint() {
    let a = HttpUpstream::start().await;
    let b = HttpUpstream::start().await;
    let c = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(format!(
            "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: pool }}\nspec:\n  endpoints: {{ static: [\"{}\", \"{}\", \"{}\"] }}\n",
            a.addr(),
            b.addr(),
            c.addr()
        ))
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    for _ in 0..150 {
        assert_eq!(
            client::get(&http, "http://pool/status/200").await.status,
            StatusCode::OK
        );
    }
    let counts = [a.requests(), b.requests(), c.requests()];
    assert_eq!(counts.iter().sum::<u64>(), 150);
    // Idle endpoints are chosen at random: each gets about a third; 15 is far in the tail.
    assert!(counts.iter().all(|&n| n >= 15), "{counts:?}");
}

#[tokio::test]
async fn connections_are_reused() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
        .start()
        .await;

    let http1 = client::http1_client(sidecar.outbound());
    for _ in 0..20 {
        assert_eq!(
            client::get(&http1, "http://echo/status/200").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        connects(&sidecar, "echo", "http1").await,
        1.0,
        "one keep-alive connection"
    );

    let h2 = client::h2c_client(sidecar.outbound());
    let calls = (0..20).map(|_| {
        let h2 = h2.clone();
        async move { client::get(&h2, "http://echo/slow/50").await.status }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        connects(&sidecar, "echo", "http2").await,
        1.0,
        "one multiplexed connection"
    );
}
