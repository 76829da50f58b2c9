//! The policies in `examples/`, loaded by a real sidecar with their `dns:` endpoints pointed at
//! the kit's upstreams, doing what their comments promise: payments fail over from Midtrans to
//! Xendit (and answer the static response when every gateway is down), notifications fail over
//! from SendGrid to SES, dispatch retries an order creation on UNAVAILABLE only with an
//! idempotency key, and the order orchestrator's ServicePolicy runs beside all of them.

use std::net::SocketAddr;
use std::time::Duration;

use bulwark_tests::client::{self, full, request};
use bulwark_tests::fault::{gaps, refused_addr};
use bulwark_tests::pb::EchoRequest;
use bulwark_tests::{Fault, GrpcUpstream, HttpUpstream, Sidecar, grpc_wire, policy};
use http::{Method, StatusCode};
use tokio::time::Instant;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_millis(700);

/// The example files this test file exercises; a new example must be added here (and tested).
const COVERED: [&str; 4] = [
    "dispatch.yaml",
    "notifications.yaml",
    "order-orchestrator.yaml",
    "payments.yaml",
];

#[test]
fn every_example_is_exercised() {
    assert_eq!(policy::example_files(), COVERED);
}

/// `examples/{file}` with its endpoints rewritten; checked to be valid before any sidecar sees
/// it, so a rewriting mistake is not blamed on the sidecar.
fn example(file: &str, targets: &[(&str, SocketAddr)]) -> String {
    let text = policy::static_endpoints(&policy::example(file), targets);
    for r in bulwark_proto::policy::parse_yaml(&text).expect("the rewritten example parses") {
        r.validate().expect("the rewritten example is valid");
    }
    text
}

async fn sidecar(policies: String) -> Sidecar {
    Sidecar::builder().policies_yaml(policies).start().await
}

/// Midtrans answering 503 with `Retry-After: 0`, so its three attempts (the policy honors
/// Retry-After) come at once instead of 2 s apart.
async fn failing_midtrans() -> HttpUpstream {
    HttpUpstream::builder()
        .fault(Fault::new().status(503).retry_after("0"))
        .start()
        .await
        .expect("start")
}

#[tokio::test]
async fn payments_fail_over_from_midtrans_to_xendit_and_its_breaker_opens() {
    let midtrans = failing_midtrans().await;
    let xendit = HttpUpstream::start().await;
    let nicepay = HttpUpstream::start().await;
    let sidecar = sidecar(example(
        "payments.yaml",
        &[
            ("midtrans-proxy", midtrans.addr()),
            ("xendit-proxy", xendit.addr()),
            ("nicepay-proxy", nicepay.addr()),
        ],
    ))
    .await;
    let http = client::http1_client(sidecar.outbound());

    let started = Instant::now();
    let res = client::get(&http, "http://midtrans.payments/status/200").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.header("x-bulwark-upstream"), Some("xendit"));
    assert_eq!(
        (midtrans.requests(), xendit.requests(), nicepay.requests()),
        (3, 1, 0)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "Retry-After: 0 replaced the 2s backoff: {:?}",
        started.elapsed()
    );

    // minRequests 5 at 50%: the 5th failed attempt (the second request's second) opens the
    // breaker, and from then on Midtrans is not called at all.
    for _ in 0..3 {
        let res = client::get(&http, "http://midtrans.payments/status/200").await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.header("x-bulwark-upstream"), Some("xendit"));
    }
    assert_eq!(midtrans.requests(), 5);
    assert_eq!(xendit.requests(), 4);
    sidecar.await_breaker_state("midtrans", "open", WAIT).await;
}

#[tokio::test]
async fn payments_answer_the_static_response_when_every_gateway_is_down() {
    let midtrans = failing_midtrans().await;
    let sidecar = sidecar(example(
        "payments.yaml",
        &[
            ("midtrans-proxy", midtrans.addr()),
            ("xendit-proxy", refused_addr()),
            ("nicepay-proxy", refused_addr()),
        ],
    ))
    .await;
    let http = client::http1_client(sidecar.outbound());
    let res = client::get(&http, "http://midtrans.payments/status/200").await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.text(),
        "payment service temporarily unavailable, order queued for retry"
    );
    assert_eq!(res.header("x-bulwark-fallback"), Some("response"));
    assert_eq!(midtrans.requests(), 3);
}

#[tokio::test]
async fn payments_retry_a_charge_only_with_an_idempotency_key() {
    let midtrans = HttpUpstream::builder()
        .fault(Fault::new().status(503).retry_after("0").first(1))
        .start()
        .await
        .expect("start");
    let xendit = HttpUpstream::start().await;
    let sidecar = sidecar(example(
        "payments.yaml",
        &[
            ("midtrans-proxy", midtrans.addr()),
            ("xendit-proxy", xendit.addr()),
            ("nicepay-proxy", refused_addr()),
        ],
    ))
    .await;
    let http = client::http1_client(sidecar.outbound());
    let req = Fault::new()
        .key("charge-1")
        .request(Method::POST, "http://midtrans.payments/echo")
        .header("Idempotency-Key", "charge-1")
        .body(full("amount=100"))
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("x-bulwark-upstream"), Some("midtrans"));
    assert_eq!(res.text(), "amount=100", "the body was replayed");
    assert_eq!(midtrans.attempts_for("charge-1"), 2);

    let req = Fault::new()
        .key("charge-2")
        .request(Method::POST, "http://midtrans.payments/echo")
        .body(full("amount=200"))
        .expect("request");
    client::send(&http, req).await;
    assert_eq!(midtrans.attempts_for("charge-2"), 1, "no key, no retry");
}

#[tokio::test]
async fn notifications_fail_over_from_sendgrid_to_ses_and_whatsapp_answers_its_fallback() {
    let sendgrid = HttpUpstream::builder()
        .always_fail(503)
        .start()
        .await
        .expect("start");
    let ses = HttpUpstream::start().await;
    let whatsapp = HttpUpstream::builder()
        .always_fail(503)
        .start()
        .await
        .expect("start");
    let sidecar = sidecar(example(
        "notifications.yaml",
        &[
            ("sendgrid-egress", sendgrid.addr()),
            ("ses-egress", ses.addr()),
            ("whatsapp-egress", whatsapp.addr()),
        ],
    ))
    .await;
    let http = client::http1_client(sidecar.outbound());

    // SendGrid answers 503; a mail without an idempotency key is not sent to it twice (its
    // retries would wait 1s, 2s, 4s), but goes out through SES at once, body and all.
    let started = Instant::now();
    let req = request(Method::POST, "http://sendgrid.notifications/echo")
        .header("content-type", "application/json")
        .body(full(r#"{"to":"rider@example.com"}"#))
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.header("x-bulwark-upstream"), Some("ses"));
    assert_eq!(res.text(), r#"{"to":"rider@example.com"}"#);
    assert_eq!((sendgrid.requests(), ses.requests_to("/echo")), (1, 1));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // WhatsApp has no second provider: a message without an idempotency key is tried once,
    // then the fallback response tells the app to use SMS.
    let req = request(Method::POST, "http://whatsapp.notifications/echo")
        .body(full("hello"))
        .expect("request");
    let res = client::send(&http, req).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.text(), "whatsapp unavailable; send by SMS instead");
    assert_eq!(res.header("x-bulwark-fallback"), Some("response"));
    assert_eq!(whatsapp.requests(), 1);
}

#[tokio::test]
async fn dispatch_retries_create_order_on_unavailable_only_with_an_idempotency_key() {
    let bbd = GrpcUpstream::start().await;
    let sidecar = sidecar(example("dispatch.yaml", &[("bbd-gateway", bbd.addr())])).await;
    let h2 = client::h2c_client(sidecar.outbound());
    let create_order = |key: &str, fault: Fault, idempotency_key: Option<&str>| {
        let mut headers = vec![];
        if let Some(k) = idempotency_key {
            headers.push(("idempotency-key", k));
        }
        let mut req = grpc_wire::unary(
            "bbd.mrg",
            "/bbd.v1.Dispatch/CreateOrder",
            &EchoRequest {
                message: format!("order {key}"),
                ..Default::default()
            },
            &headers,
        );
        fault.key(key).insert_into(req.headers_mut());
        req
    };

    // UNAVAILABLE once, then created; 200ms ± 30% between the attempts.
    let res = client::send(
        &h2,
        create_order(
            "order-1",
            Fault::new().grpc(Code::Unavailable).first(1),
            Some("order-1"),
        ),
    )
    .await;
    assert_eq!(grpc_wire::status(&res), Some((0, String::new())));
    assert_eq!(res.header("x-bulwark-upstream"), Some("bbd"));
    assert_eq!(bbd.attempts_for("order-1"), 2);
    let wait = gaps(&bbd.arrivals_for("order-1"))[0];
    assert!(
        wait >= Duration::from_millis(139) && wait <= Duration::from_millis(260) + SLACK,
        "{wait:?}"
    );

    // Without a key the order is not retried, and the app is told it was queued.
    let res = client::send(
        &h2,
        create_order("order-2", Fault::new().grpc(Code::Unavailable), None),
    )
    .await;
    assert_eq!(bbd.attempts_for("order-2"), 1);
    assert!(grpc_wire::is_trailers_only(&res), "{res:?}");
    assert_eq!(
        grpc_wire::status(&res),
        Some((
            Code::Unavailable as i32,
            "dispatch unavailable; order queued for manual dispatch".to_string()
        ))
    );
    assert_eq!(res.header("x-bulwark-fallback"), Some("response"));
}

#[tokio::test]
async fn dispatch_polls_job_status_again_after_unavailable() {
    let bbd = GrpcUpstream::start().await;
    let sidecar = sidecar(example("dispatch.yaml", &[("bbd-gateway", bbd.addr())])).await;
    let h2 = client::h2c_client(sidecar.outbound());
    let mut req = grpc_wire::unary(
        "bbd.mrg",
        "/bbd.v1.Dispatch/GetJobStatus",
        &EchoRequest::default(),
        &[],
    );
    Fault::new()
        .grpc(Code::Unavailable)
        .first(1)
        .key("job-7")
        .insert_into(req.headers_mut());
    let res = client::send(&h2, req).await;
    assert_eq!(grpc_wire::status(&res), Some((0, String::new())));
    assert_eq!(bbd.attempts_for("job-7"), 2);
    // The route's backoff: 2s ± 30% before the second poll.
    let wait = gaps(&bbd.arrivals_for("job-7"))[0];
    assert!(
        wait >= Duration::from_millis(1399) && wait <= Duration::from_millis(2600) + SLACK,
        "{wait:?}"
    );
}

#[tokio::test]
async fn the_order_orchestrator_runs_beside_every_example_policy() {
    let app = HttpUpstream::start().await;
    let midtrans = HttpUpstream::start().await;
    let bbd = GrpcUpstream::start().await;
    let orchestrator = policy::example("order-orchestrator.yaml");
    assert!(
        orchestrator.contains("app: { port: 8080,"),
        "{orchestrator}"
    );
    let orchestrator = orchestrator.replace(
        "app: { port: 8080,",
        &format!("app: {{ port: {},", app.addr().port()),
    );
    let unused = refused_addr();
    let policies = policy::documents([
        orchestrator,
        example(
            "payments.yaml",
            &[
                ("midtrans-proxy", midtrans.addr()),
                ("xendit-proxy", unused),
                ("nicepay-proxy", unused),
            ],
        ),
        example(
            "notifications.yaml",
            &[
                ("sendgrid-egress", unused),
                ("ses-egress", unused),
                ("whatsapp-egress", unused),
            ],
        ),
        example("dispatch.yaml", &[("bbd-gateway", bbd.addr())]),
    ]);
    let sidecar = Sidecar::builder()
        .policies_yaml(policies)
        .args(["--service", "order-orchestrator", "--namespace", "mrg"])
        .start()
        .await;
    assert_eq!(
        sidecar.admin_get("/health/ready").await.status,
        StatusCode::OK
    );
    let config = sidecar.admin_get("/config").await.json();
    assert_eq!(config["service"], "order-orchestrator", "{config}");
    assert_eq!(config["namespace"], "mrg", "{config}");
    assert_eq!(
        config["resources"].as_array().map(Vec::len),
        Some(8),
        "{config}"
    );

    // Callers reach the app through the inbound listener (its port from the ServicePolicy).
    let inbound = client::http1_client(sidecar.inbound());
    let res = client::get(&inbound, "http://order-orchestrator/status/201").await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(app.requests_to("/status/201"), 1);

    // The app calls its dependencies by short name: `bbd` in its own namespace, `midtrans` in
    // the one namespace that has it.
    let h2 = client::h2c_client(sidecar.outbound());
    let res = client::send(
        &h2,
        grpc_wire::unary(
            "bbd",
            "/bbd.v1.Dispatch/GetJobStatus",
            &EchoRequest::default(),
            &[],
        ),
    )
    .await;
    assert_eq!(grpc_wire::status(&res), Some((0, String::new())));
    assert_eq!(res.header("x-bulwark-upstream"), Some("bbd"));
    assert_eq!(bbd.requests_to("/bbd.v1.Dispatch/GetJobStatus"), 1);
    let outbound = client::http1_client(sidecar.outbound());
    let res = client::get(&outbound, "http://midtrans/status/200").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("x-bulwark-upstream"), Some("midtrans"));
    let entry = sidecar.breaker_entry("midtrans").await.expect("listed");
    assert_eq!(entry["namespace"], "payments", "{entry}");
    assert_eq!(entry["breaker"]["state"], "closed", "{entry}");
}
