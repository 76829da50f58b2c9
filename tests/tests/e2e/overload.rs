//! Overload protection through the real sidecar: the adaptive concurrency limit in front of an
//! app and of an upstream, its queue served and shed by criticality, the exact answers
//! (503 / RESOURCE_EXHAUSTED, `x-bulwark-error: overloaded`), metrics and access log; a
//! request's criticality settled from its headers or its route and sent on to the next hop.

use std::time::Duration;

use bulwark_tests::client;
use bulwark_tests::load::OpenLoad;
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::{ControlPlane, Etcd, HttpUpstream, Sidecar, eventually, policy};
use http::{Method, StatusCode};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

/// A ServicePolicy `shop/orders` for an app on `port` with `inbound` settings.
fn service(port: u16, inbound: &str) -> String {
    format!(
        "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  app: {{ port: {port} }}\n  inbound: {inbound}\n"
    )
}

/// `GET http://orders{path}` with `headers`.
async fn send(
    http: &client::HttpClient,
    path: &str,
    headers: &[(&str, &str)],
) -> client::Collected {
    let mut req = client::request(Method::GET, &format!("http://orders{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    client::send(http, req.body(client::empty()).expect("request")).await
}

/// An app and the sidecar of `shop/orders` in front of it, with `inbound` settings.
async fn app_behind_sidecar(inbound: &str) -> (HttpUpstream, Sidecar) {
    let app = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(service(app.addr().port(), inbound))
        .args(["--service", "orders", "--namespace", "shop"])
        .start()
        .await;
    (app, sidecar)
}

/// A real etcd and one control-plane replica computing levels every 200ms.
async fn control_plane() -> (Etcd, ControlPlane) {
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start_with(
        &etcd.endpoint(),
        "cp-1",
        &["--levels-interval", "200ms", "--levels-min-gap", "50ms"],
    )
    .await;
    (etcd, cp)
}

/// With a limit of one and a queue of one, every decision of the queue is visible: a more
/// critical request displaces a waiting sheddable one, an equally critical newcomer is refused
/// at once (a gRPC one with RESOURCE_EXHAUSTED), and the critical one is served when the slot
/// frees. None of the refused requests reaches the app.
#[tokio::test]
async fn the_queue_in_front_of_the_app_serves_and_sheds_by_criticality() {
    let (app, sidecar) = app_behind_sidecar(
        "{ adaptiveConcurrency: { minLimit: 1, maxLimit: 1, initialLimit: 1, probeConcurrency: 1, maxQueue: 1, maxQueueWait: 30s }, routes: [{ match: { path: /gate }, criticality: critical-plus }, { match: { path: /headers }, criticality: critical }] }",
    )
    .await;
    let http = client::http1_client(sidecar.inbound());

    // The only slot: held by a request the app answers when the test opens its gate.
    let held = tokio::spawn({
        let http = http.clone();
        async move { send(&http, "/gate", &[]).await }
    });
    eventually(WAIT, || async {
        (app.requests_to("/gate") == 1).then_some(())
    })
    .await;
    // A sheddable request waits in the queue…
    let waiting = tokio::spawn({
        let http = http.clone();
        async move {
            send(
                &http,
                "/status/200",
                &[("x-bulwark-criticality", "sheddable")],
            )
            .await
        }
    });
    sidecar
        .await_metric(
            "bulwark_concurrency_queued",
            &[("upstream", "orders"), ("criticality", "sheddable")],
            1.0,
            WAIT,
        )
        .await;
    // …until a critical one (by its route) takes its place.
    let critical = tokio::spawn({
        let http = http.clone();
        async move { send(&http, "/headers", &[]).await }
    });
    let displaced = waiting.await.expect("task");
    assert_eq!(displaced.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(displaced.header("x-bulwark-error"), Some("overloaded"));
    let text = displaced.text();
    assert!(
        text.starts_with(
            "shop/orders is overloaded: this sheddable request gave its place in the queue to a more critical one after "
        ),
        "{text}"
    );

    // The queue holds the critical request: a sheddable-plus newcomer is refused at once, and
    // a gRPC caller gets RESOURCE_EXHAUSTED.
    let refused = send(&http, "/status/200", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.text(),
        "shop/orders is overloaded: its concurrency limit (1) is reached and its queue is full of requests at least as critical as this sheddable-plus one\n"
    );
    let mut grpc = client::grpc_client(sidecar.inbound()).await;
    let status = grpc
        .unary(EchoRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "shop/orders is overloaded: its concurrency limit (1) is reached and its queue is full of requests at least as critical as this sheddable-plus one"
    );

    // The slot frees: the critical request is served, told the criticality its route gave.
    app.open_gate();
    assert_eq!(held.await.expect("task").status, StatusCode::OK);
    let served = critical.await.expect("task");
    assert_eq!(served.status, StatusCode::OK, "{}", served.text());
    let seen: serde_json::Value = serde_json::from_slice(&served.body).expect("json");
    assert_eq!(seen["headers"]["x-bulwark-criticality"][0], "critical");
    assert_eq!(
        app.requests_to("/status/200"),
        0,
        "no refused request reached the app"
    );
    for (criticality, reason, n) in [
        ("sheddable", "displaced", 1.0),
        ("sheddable-plus", "queue-full", 2.0),
    ] {
        sidecar
            .await_metric(
                "bulwark_overload_refused_total",
                &[
                    ("direction", "inbound"),
                    ("upstream", "orders"),
                    ("criticality", criticality),
                    ("reason", reason),
                ],
                n,
                WAIT,
            )
            .await;
    }
    let logged = eventually(WAIT, || async {
        sidecar
            .access_lines()
            .into_iter()
            .find(|l| l["reason"] == "displaced")
    })
    .await;
    assert_eq!(logged["error"], "overloaded");
    assert_eq!(logged["criticality"], "sheddable");
    assert_eq!(logged["status"], 503);
}

/// An upstream of known capacity (4 workers × 50 ms: 80 requests a second) behind a caller's
/// sidecar with `adaptiveConcurrency`, offered three times that — 20% critical, 50%
/// sheddable-plus, 30% sheddable: the critical requests keep succeeding, the sheddable ones are
/// refused, fast and in our words, and the upstream keeps working at its capacity.
#[tokio::test]
async fn at_three_times_an_upstreams_capacity_critical_calls_succeed_and_sheddable_ones_are_shed() {
    let upstream = HttpUpstream::builder()
        .workers(4)
        .start()
        .await
        .expect("upstream");
    let sidecar = Sidecar::builder()
        .policies_yaml(
            policy::upstream("orders", upstream.addr())
                .spec("adaptiveConcurrency: { maxQueueWait: 250ms }")
                .to_yaml(),
        )
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    let tiers = [("critical", 48), ("sheddable-plus", 120), ("sheddable", 72)];
    let loads: Vec<OpenLoad> = tiers
        .iter()
        .map(|&(tier, rate)| {
            OpenLoad::start_with(
                http.clone(),
                "http://orders/work/50",
                &[("x-bulwark-criticality", tier)],
                rate,
            )
        })
        .collect();
    // Four seconds of load, counted by the upstream (its own clock, not a sleep here).
    eventually(Duration::from_secs(30), || async {
        (upstream.requests_to("/work/50") >= 300).then_some(())
    })
    .await;
    let mut reports = Vec::new();
    for load in loads {
        reports.push(load.stop().await);
    }
    let [critical, sheddable_plus, sheddable] = [&reports[0], &reports[1], &reports[2]];
    assert!(
        critical.success_ratio() >= 0.99,
        "critical: {} of {} failed:\n{}",
        critical.failures.len(),
        critical.sent,
        critical.describe_failures()
    );
    assert!(
        sheddable.success_ratio() <= 0.25,
        "sheddable: {} of {} served",
        sheddable.ok,
        sheddable.sent
    );
    assert!(
        sheddable_plus.success_ratio() < 0.9,
        "sheddable-plus: {} of {} served",
        sheddable_plus.ok,
        sheddable_plus.sent
    );
    for report in [sheddable, sheddable_plus] {
        for f in &report.failures {
            assert!(
                f.reason
                    .starts_with("503 Service Unavailable: upstream \"orders\" is overloaded: "),
                "{}",
                f.reason
            );
        }
        assert!(
            report.slowest_failure < Duration::from_secs(1),
            "refused within the queue's 250ms wait: {:?}",
            report.slowest_failure
        );
    }
    assert!(upstream.most_busy() <= 4);
    let limit = sidecar
        .metric("bulwark_concurrency_limit", &[("upstream", "orders")])
        .await
        .expect("the limit is exported");
    assert!(
        (1.0..=40.0).contains(&limit),
        "the limit stays near the upstream's 4 workers: {limit}"
    );
}

/// `spec.inbound.rateLimit` by header: each caller has its own bucket; past it a caller gets
/// 429 with `Retry-After` (gRPC: RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`) and the app
/// never sees the request, while another caller goes on.
#[tokio::test]
async fn each_caller_of_the_app_has_its_own_rate_limit() {
    let (app, sidecar) = app_behind_sidecar(
        "{ rateLimit: { requests: 3, per: 1h, by: header, header: x-api-key } }",
    )
    .await;
    let http = client::http1_client(sidecar.inbound());
    let call = |key: &'static str| {
        let http = http.clone();
        async move {
            let headers = [("x-api-key", key), ("x-bulwark-criticality", "critical")];
            send(&http, "/status/200", &headers).await
        }
    };
    for _ in 0..3 {
        assert_eq!(call("alice").await.status, StatusCode::OK);
    }
    let refused = call("alice").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("x-bulwark-error"), Some("rate-limited"));
    // A token comes back every 20 minutes.
    assert_eq!(refused.header("retry-after"), Some("1200"));
    assert_eq!(
        refused.text(),
        "shop/orders limits each caller to 3 requests per 1h (burst 3); alice is over it\n"
    );
    assert_eq!(
        call("bob").await.status,
        StatusCode::OK,
        "another caller goes on"
    );
    assert_eq!(
        app.requests_to("/status/200"),
        4,
        "the refused call never reached the app"
    );

    let mut grpc = client::grpc_client(sidecar.inbound()).await;
    let mut req = tonic::Request::new(EchoRequest::default());
    req.metadata_mut()
        .insert("x-api-key", "alice".parse().expect("metadata"));
    let status = grpc.unary(req).await.expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "shop/orders limits each caller to 3 requests per 1h (burst 3); alice is over it"
    );
    // A sheddable-plus call leaves a quarter of the burst: its token is 1.75 × 20 minutes
    // away (less the moments the test took).
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("grpc-retry-pushback-ms");
    assert!((2_000_000..=2_100_000).contains(&pushback), "{pushback}");
    sidecar
        .await_metric(
            "bulwark_rate_limited_total",
            &[("direction", "inbound"), ("criticality", "sheddable-plus")],
            1.0,
            WAIT,
        )
        .await;
    sidecar
        .await_metric(
            "bulwark_rate_limited_total",
            &[("direction", "inbound"), ("criticality", "critical")],
            1.0,
            WAIT,
        )
        .await;
}

/// `rateLimit` on an UpstreamPolicy bounds what this sidecar sends, and keeps a reserve of its
/// burst for the more critical calls: sheddable calls stop at half of it, critical ones go on.
#[tokio::test]
async fn an_upstreams_rate_limit_keeps_a_reserve_for_critical_calls() {
    let upstream = HttpUpstream::start().await;
    let sidecar = Sidecar::builder()
        .policies_yaml(
            policy::upstream("orders", upstream.addr())
                .spec("rateLimit: { requests: 4, per: 1h }")
                .to_yaml(),
        )
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    let call = |tier: &'static str| {
        let http = http.clone();
        async move { send(&http, "/status/200", &[("x-bulwark-criticality", tier)]).await }
    };
    assert_eq!(call("sheddable").await.status, StatusCode::OK);
    assert_eq!(call("sheddable").await.status, StatusCode::OK);
    let refused = call("sheddable").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.text(),
        "upstream \"orders\" is rate limited to 4 requests per 1h (burst 4) from this sidecar\n"
    );
    assert_eq!(call("critical").await.status, StatusCode::OK);
    assert_eq!(call("critical").await.status, StatusCode::OK);
    assert_eq!(
        call("critical").await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the burst is spent"
    );
    assert_eq!(upstream.requests_to("/status/200"), 4);
}

/// Client-side throttling: a callee that refuses every call for overload (503) stops getting
/// most of them from a caller whose policy throttles, while a caller without throttling sends
/// every one; the throttled calls are answered by the caller's sidecar, in its words.
#[tokio::test]
async fn throttling_on_the_callers_side_cuts_what_an_overloaded_callee_receives() {
    const CALLS: usize = 200;
    let mut received = Vec::new();
    for throttling in [false, true] {
        let upstream = HttpUpstream::builder()
            .always_fail(503)
            .start()
            .await
            .expect("upstream");
        let mut spec = policy::upstream("orders", upstream.addr());
        if throttling {
            spec = spec.spec("throttling: { multiplier: 2, window: 1m }");
        }
        let sidecar = Sidecar::builder()
            .policies_yaml(spec.to_yaml())
            .start()
            .await;
        let http = client::http1_client(sidecar.outbound());
        let mut throttled = 0;
        for _ in 0..CALLS {
            let res = client::get(&http, "http://orders/status/200").await;
            assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
            if res.header("x-bulwark-error") == Some("throttled") {
                throttled += 1;
                let text = res.text();
                assert!(
                    text.starts_with("upstream \"orders\" refuses many requests for overload: this one was not sent (client-side throttling refuses "),
                    "{text}"
                );
            }
        }
        let seen = upstream.requests() as usize;
        assert_eq!(seen + throttled, CALLS);
        if throttling {
            sidecar
                .await_metric(
                    "bulwark_throttled_total",
                    &[("upstream", "orders")],
                    throttled as f64,
                    WAIT,
                )
                .await;
        }
        received.push(seen);
    }
    assert_eq!(received[0], CALLS, "without throttling every call is sent");
    assert!(
        received[1] <= CALLS / 5,
        "with throttling the callee got {} of {CALLS}",
        received[1]
    );
}

/// Overload seen by the callers reaches the control plane: a caller's sidecar whose limit
/// refuses calls to a dependency reports it, and the caller's ServicePolicy, with
/// `unhealthyWhen.overloadedPods`, turns DEGRADED naming why.
#[tokio::test]
async fn callers_that_see_a_dependency_overloaded_make_it_unhealthy() {
    let (_etcd, cp) = control_plane().await;
    let upstream = HttpUpstream::start().await;
    let docs = [
        policy::upstream("orders", upstream.addr())
            .namespace("shop")
            .spec("adaptiveConcurrency: { minLimit: 1, maxLimit: 1, initialLimit: 1, probeConcurrency: 1, maxQueue: 0 }")
            .to_yaml(),
        "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: { name: web, namespace: shop }\nspec:\n  dependencies: { orders: {} }\n  unhealthyWhen: { overloadedPods: 50% }\n  levels: { DEGRADED: { unhealthyDependencies: 1 } }\n".to_string(),
    ];
    for doc in docs {
        let res = cp.apply(&doc).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    }
    let sidecar = Sidecar::builder()
        .control_plane(cp.grpc_url())
        .args(["--namespace", "shop", "--service", "web", "--pod", "web-1"])
        .args(["--report-interval", "200ms"])
        .start()
        .await;
    let http = client::http1_client(sidecar.outbound());
    eventually(WAIT, || async {
        let res = client::get(&http, "http://orders/status/200").await;
        (res.status == StatusCode::OK).then_some(())
    })
    .await;
    // The only slot held; the next call is refused by the limit, and reported.
    let held = tokio::spawn({
        let http = http.clone();
        async move { client::get(&http, "http://orders/gate").await }
    });
    eventually(WAIT, || async {
        (upstream.requests_to("/gate") == 1).then_some(())
    })
    .await;
    let refused = client::get(&http, "http://orders/status/200").await;
    assert_eq!(refused.header("x-bulwark-error"), Some("overloaded"));
    let status = eventually(WAIT, || async {
        let res = cp.rest(Method::GET, "/v1/levels/shop/web", None).await;
        let status = (res.status == StatusCode::OK).then(|| res.json())?;
        (status["level"] == "DEGRADED").then_some(status)
    })
    .await;
    assert_eq!(
        status["reasons"][0],
        "orders unhealthy (overloaded on 1/1 pods)"
    );
    assert_eq!(status["dependencies"][0]["overloadedPods"], 1);
    upstream.open_gate();
    assert_eq!(held.await.expect("task").status, StatusCode::OK);
}

/// A mesh-wide inbound limit is split across the service's reporting pods by the count the
/// control plane sends: with two pods each takes half, and says so when it refuses.
#[tokio::test]
async fn a_mesh_wide_limit_is_split_across_the_reporting_pods() {
    let (_etcd, cp) = control_plane().await;
    let mut pods = Vec::new();
    for name in ["orders-0", "orders-1"] {
        let app = HttpUpstream::start().await;
        let res = cp
            .apply(&service(
                app.addr().port(),
                "{ rateLimit: { requests: 8, per: 1h, by: header, header: x-api-key, meshWide: true } }",
            ))
            .await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        let sidecar = Sidecar::builder()
            .control_plane(cp.grpc_url())
            .args(["--namespace", "shop", "--service", "orders", "--pod", name])
            .args(["--report-interval", "200ms"])
            .args(["--app-port", &app.addr().port().to_string()])
            .start()
            .await;
        pods.push((app, sidecar));
    }
    // Both pods report: the control plane counts two.
    eventually(WAIT, || async {
        let res = cp.rest(Method::GET, "/v1/levels/shop/orders", None).await;
        let status = (res.status == StatusCode::OK).then(|| res.json())?;
        (status["reportingPods"] == 2).then_some(())
    })
    .await;
    let (_, sidecar) = &pods[0];
    let http = client::http1_client(sidecar.inbound());
    let call = |caller: String| {
        let http = http.clone();
        async move {
            let headers = [
                ("x-api-key", caller.as_str()),
                ("x-bulwark-criticality", "critical"),
            ];
            send(&http, "/status/200", &headers).await
        }
    };
    // The sidecar hears of the second pod with the levels; until then a caller has all 8
    // here. Each try is a new caller, with a bucket of its own.
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let (caller, refused) = eventually(WAIT, || async {
        let caller = format!(
            "caller-{}",
            tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        for served in 0..=8 {
            let res = call(caller.clone()).await;
            if res.status != StatusCode::OK {
                return (served == 4 && res.status == StatusCode::TOO_MANY_REQUESTS)
                    .then_some((caller, res));
            }
        }
        None
    })
    .await;
    assert_eq!(
        refused.text(),
        format!(
            "shop/orders limits each caller to 8 requests per 1h (burst 8) across its 2 pods; {caller} is over it\n"
        )
    );
}
