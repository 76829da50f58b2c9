//! Stage tests: each layer of the stack on its own, over a scripted inner service, in tokio's
//! paused time — retry counts and waits, budget exhaustion, failover order, deadlines, breaker
//! transitions, bulkhead refusals and the degradation gate. Fast and deterministic: no socket,
//! no process, no real clock.

use std::sync::{Arc, Mutex};

use bulwark_proto::policy::Resource;
use bulwark_proto::v1 as pb;
use http::uri::Authority;
use http::{HeaderName, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::breaker::machine::{Breaker, BreakerConfig, BreakerState, default_failure_on};
use super::breaker::{BreakerEvent, BreakerParts, CircuitBreaker};
use super::bulkhead::{Bulkhead, Limited, Slots};
use super::deadline::Deadline;
use super::failover::{Failover, StaticResponse, Target};
use super::gate::{Direction, Gate};
use super::layer::{Call, CallState, Cx, Req, Rsp};
use super::per_try::PerTry;
use super::retry::Retry;
use super::retry::budget::RetryBudget;
use super::testing::{Script, Step, cx, get, info, ms, outcome, request, routes, spec};
use crate::errors::ProxyError;
use crate::health::actions::ServiceActions;
use crate::health::levels::{Degradation, LevelIndex};
use crate::health::stats::UpstreamStats;

// ───────────────────────────── retry ─────────────────────────────

/// A retry layer over `script` with the budget of `yaml`'s policy.
fn retry(
    yaml: &str,
    script: &Arc<Script>,
) -> (
    Retry<Arc<Script>>,
    super::routes::UpstreamRoutes,
    Arc<crate::metrics::Metrics>,
) {
    let routes = routes(yaml);
    let (info, metrics) = info("up");
    let budget = Arc::new(RetryBudget::new(routes.budget(), Instant::now()));
    (
        Retry::new(info, budget, None, script.clone()),
        routes,
        metrics,
    )
}

#[tokio::test(start_paused = true)]
async fn retries_wait_the_backoff_and_stop_at_max_attempts() {
    let script = Script::new("up", [Step::Status(503)]);
    let (layer, routes, metrics) = retry(
        "retry: { maxAttempts: 4, retryOn: [\"503\"], backoff: { initial: 100ms, multiplier: 2.0, jitter: 0% } }",
        &script,
    );
    let state = CallState::default();
    let result = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await;
    assert_eq!(outcome(&result), "503", "the last answer is the caller's");
    // 100 ms, then 200 ms, then 400 ms between attempts.
    assert_eq!(script.times(), [ms(0), ms(100), ms(300), ms(700)]);
    let attempts: Vec<_> = script
        .calls()
        .iter()
        .map(|c| c.headers["x-bulwark-attempt"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    let text = metrics.encode();
    assert!(
        text.contains("bulwark_attempts_total{direction=\"outbound\",upstream=\"up\",namespace=\"default\"} 4\n"),
        "{text}"
    );
    assert!(
        text.contains("bulwark_retries_total{direction=\"outbound\",upstream=\"up\",namespace=\"default\"} 3\n"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_or_an_outcome_not_in_retry_on_ends_the_retries() {
    let script = Script::new("up", [Step::Status(503), Step::Status(200)]);
    let (layer, routes, _) = retry(
        "retry: { maxAttempts: 5, retryOn: [\"503\"], backoff: { initial: 10ms } }",
        &script,
    );
    let state = CallState::default();
    let result = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await;
    assert_eq!(outcome(&result), "200");
    assert_eq!(script.count(), 2);

    // 500 is not in the default retryOn (connect-failure, reset, gateway-error).
    let script = Script::new("up", [Step::Status(500), Step::Status(200)]);
    let (layer, routes, _) = retry("retry: { maxAttempts: 5 }", &script);
    let result = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await;
    assert_eq!(outcome(&result), "500");
    assert_eq!(script.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_call_is_retried_under_its_routes_settings() {
    let yaml = "retry: { maxAttempts: 2, retryOn: [grpc-unavailable], backoff: { initial: 1ms } }\nroutes:\n  - name: get-status\n    match: { grpcMethod: /pay.Payments/GetStatus }\n    idempotent: true\n    retry: { maxAttempts: 4 }";
    let script = Script::new("up", [Step::Grpc(14), Step::Grpc(14), Step::Grpc(0)]);
    let (layer, routes, _) = retry(yaml, &script);
    let state = CallState::default();
    let route = routes.select(&http::Method::POST, "/pay.Payments/GetStatus", true);
    let grpc = Cx {
        grpc: true,
        ..cx(route, &state)
    };
    let req = request("POST", "", &[("content-type", "application/grpc")]);
    let rsp = layer.call(req, grpc).await.unwrap();
    assert_eq!(rsp.headers()["grpc-status"], "0");
    assert_eq!(
        script.count(),
        3,
        "the route's maxAttempts, not the upstream's"
    );
    assert!(
        script
            .calls()
            .iter()
            .all(|c| c.route.as_deref() == Some("get-status"))
    );

    // Another method of the same service is not idempotent: no retry.
    let script = Script::new("up", [Step::Grpc(14), Step::Grpc(0)]);
    let (layer, routes, _) = retry(yaml, &script);
    let route = routes.select(&http::Method::POST, "/pay.Payments/Charge", true);
    let grpc = Cx {
        grpc: true,
        ..cx(route, &state)
    };
    let req = request("POST", "", &[("content-type", "application/grpc")]);
    let rsp = layer.call(req, grpc).await.unwrap();
    assert_eq!(rsp.headers()["grpc-status"], "14");
    assert_eq!(script.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_the_whole_request_body_again() {
    let script = Script::new("up", [Step::Reset, Step::Reset, Step::Status(201)]);
    let (layer, routes, _) = retry(
        "retry: { maxAttempts: 3, backoff: { initial: 1ms } }",
        &script,
    );
    let state = CallState::default();
    let req = request("PUT", "order #42", &[]);
    let result = layer.call(req, cx(routes.default_route(), &state)).await;
    assert_eq!(outcome(&result), "201");
    let bodies: Vec<_> = script.calls().iter().map(|c| c.body.clone()).collect();
    assert_eq!(bodies, ["order #42", "order #42", "order #42"]);
}

#[tokio::test(start_paused = true)]
async fn a_post_is_retried_only_when_it_never_reached_the_upstream() {
    let yaml =
        "retry: { maxAttempts: 3, retryOn: [\"503\", connect-failure], backoff: { initial: 1ms } }";
    // What a POST comes to when its first attempt ends in `first`, and the attempts it made.
    let post = |first: Step| async move {
        let script = Script::new("up", [first, Step::Status(200)]);
        let (layer, routes, _) = retry(yaml, &script);
        let state = CallState::default();
        let req = request("POST", "pay", &[]);
        let result = layer.call(req, cx(routes.default_route(), &state)).await;
        (outcome(&result), script.count())
    };
    assert_eq!(
        post(Step::Status(503)).await,
        ("503".to_string(), 1),
        "a POST that reached the upstream is not repeated"
    );
    assert_eq!(
        post(Step::Refused).await,
        ("200".to_string(), 2),
        "a refused connection never reached it"
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retries_when_spent() {
    // One retry in the window at most: no ratio, one per second over a one-second window.
    let yaml = "retry: { maxAttempts: 3, retryOn: [\"503\"], backoff: { initial: 1ms }, budget: { ratio: 0%, minPerSecond: 1, window: 1s } }";
    let script = Script::new("up", [Step::Status(503)]);
    let (layer, routes, metrics) = retry(yaml, &script);
    let state = CallState::default();
    let first = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await;
    assert_eq!(outcome(&first), "503");
    assert_eq!(script.count(), 2, "the first request spends the one retry");
    let second = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await;
    assert_eq!(outcome(&second), "503");
    assert_eq!(script.count(), 3, "the second gets none");
    // Each request wanted one more retry than the budget allowed.
    let text = metrics.encode();
    assert!(
        text.contains(
            "bulwark_retry_budget_exhausted_total{direction=\"outbound\",upstream=\"up\",namespace=\"default\"} 2\n"
        ),
        "{text}"
    );
    // The window slides on: retries come back.
    tokio::time::advance(ms(1_100)).await;
    layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .ok();
    assert_eq!(script.count(), 5);
}

#[tokio::test(start_paused = true)]
async fn pushback_replaces_the_backoff_when_honoured() {
    let yaml = "retry: { maxAttempts: 2, retryOn: [\"503\"], backoff: { initial: 10ms, jitter: 0% }, honorRetryAfter: true }";
    let script = Script::new(
        "up",
        [
            Step::Headers(503, vec![("retry-after", "3")]),
            Step::Status(200),
        ],
    );
    let (layer, routes, _) = retry(yaml, &script);
    let state = CallState::default();
    let result = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await;
    assert_eq!(outcome(&result), "200");
    assert_eq!(script.times(), [ms(0), ms(3_000)]);

    // A gRPC server asking for no retry is obeyed.
    let script = Script::new(
        "up",
        [
            Step::Headers(503, vec![("grpc-retry-pushback-ms", "-1")]),
            Step::Status(200),
        ],
    );
    let (layer, routes, _) = retry(yaml, &script);
    let result = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await;
    assert_eq!(outcome(&result), "503");
    assert_eq!(script.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_the_deadline_would_cut() {
    let script = Script::new("up", [Step::Status(503)]);
    let (layer, routes, _) = retry(
        "retry: { maxAttempts: 5, retryOn: [\"503\"], backoff: { initial: 400ms, jitter: 0% } }",
        &script,
    );
    let state = CallState::default();
    let cx = Cx {
        deadline: Some(Instant::now() + ms(1_000)),
        ..cx(routes.default_route(), &state)
    };
    let result = layer.call(get("/"), cx).await;
    assert_eq!(outcome(&result), "503");
    // 0, then 400 ms; the next wait (800 ms) would end past the deadline.
    assert_eq!(script.times(), [ms(0), ms(400)]);
}

#[tokio::test(start_paused = true)]
async fn the_own_level_caps_the_attempts() {
    let script = Script::new("up", [Step::Status(503)]);
    let routes = routes("retry: { maxAttempts: 5, retryOn: [\"503\"], backoff: { initial: 1ms } }");
    let (info, _) = info("up");
    let levels = Arc::new(Degradation::default());
    levels.set_retry_cap(Some(2));
    let budget = Arc::new(RetryBudget::new(routes.budget(), Instant::now()));
    let layer = Retry::new(info, budget, Some(levels.clone()), script.clone());
    let state = CallState::default();
    layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .ok();
    assert_eq!(script.count(), 2);
    levels.set_retry_cap(None);
    layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .ok();
    assert_eq!(script.count(), 2 + 5);
}

// ───────────────────────────── per-try timeout and deadline ─────────────────────────────

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_the_per_try_limit_within_the_overall_deadline() {
    let script = Script::ok("up");
    let routes = routes("timeouts: { perTry: 300ms }");
    let layer = PerTry::new(
        Some(HeaderName::from_static("x-deadline-ms")),
        script.clone(),
    );
    let state = CallState::default();
    let start = Instant::now();

    layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
    let seen = &script.calls()[0];
    assert_eq!(seen.attempt.unwrap().at - start, ms(300));
    assert_eq!(seen.headers["x-deadline-ms"], "300");

    // The overall deadline is nearer: the attempt ends with it.
    let near = Cx {
        deadline: Some(start + ms(120)),
        grpc: true,
        ..cx(routes.default_route(), &state)
    };
    layer.call(get("/"), near).await.unwrap();
    let seen = &script.calls()[1];
    assert_eq!(seen.attempt.unwrap().at - start, ms(120));
    assert_eq!(
        seen.attempt.unwrap().limit,
        ms(300),
        "the error still names the per-try limit"
    );
    assert_eq!(seen.headers["grpc-timeout"], "120m");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cancels_what_runs_and_says_so() {
    let script = Script::new("up", [Step::Hang]);
    let routes = routes("timeouts: { request: 2s }");
    let (info, _) = info("up");
    let layer = Deadline::new(info, None, script.clone());
    let state = CallState::default();
    let start = Instant::now();
    let result = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await;
    assert_eq!(start.elapsed(), ms(2_000));
    match result {
        Err(e @ ProxyError::DeadlineExceeded { .. }) => {
            assert_eq!(e.to_string(), "deadline of 2s exceeded before up answered")
        }
        other => panic!("expected the deadline, got {}", outcome(&other)),
    }
    assert_eq!(script.in_flight(), 0, "the hanging call was cancelled");
    assert_eq!(script.calls()[0].deadline, Some(ms(2_000)));
}

#[tokio::test(start_paused = true)]
async fn the_callers_deadline_shortens_the_policys() {
    let script = Script::new("up", [Step::Hang]);
    let routes = routes("timeouts: { request: 10s }");
    let (info, _) = info("up");
    let layer = Deadline::new(
        info,
        Some(HeaderName::from_static("x-deadline-ms")),
        script.clone(),
    );
    let state = CallState::default();

    let start = Instant::now();
    let grpc = Cx {
        grpc: true,
        ..cx(routes.default_route(), &state)
    };
    let req = request(
        "POST",
        "",
        &[
            ("content-type", "application/grpc"),
            ("grpc-timeout", "250m"),
        ],
    );
    let result = layer.call(req, grpc).await;
    assert_eq!(outcome(&result), "deadline-exceeded");
    assert_eq!(start.elapsed(), ms(250));

    let start = Instant::now();
    let req = request("GET", "", &[("x-deadline-ms", "400")]);
    layer
        .call(req, cx(routes.default_route(), &state))
        .await
        .ok();
    assert_eq!(start.elapsed(), ms(400));

    // A longer caller deadline does not lengthen the policy's.
    let start = Instant::now();
    let req = request("GET", "", &[("x-deadline-ms", "60000")]);
    layer
        .call(req, cx(routes.default_route(), &state))
        .await
        .ok();
    assert_eq!(start.elapsed(), ms(10_000));
}

// ───────────────────────────── failover ─────────────────────────────

/// A scripted failover target.
struct Named {
    script: Arc<Script>,
    name: &'static str,
    authority: Authority,
}

fn target(name: &'static str, steps: impl IntoIterator<Item = Step>) -> Named {
    Named {
        script: Script::new(name, steps),
        name,
        authority: Authority::from_static(name),
    }
}

impl Target for Named {
    fn name(&self) -> &str {
        self.name
    }

    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let cx = Cx {
            authority: &self.authority,
            ..cx
        };
        Call::call(&self.script, req, cx).await
    }

    fn failed(&self, result: &Result<Rsp, ProxyError>) -> bool {
        super::failover::failed(&default_failure_on(), result)
    }
}

fn failover(
    primary: &Arc<Script>,
    targets: Vec<Named>,
    response: Option<&str>,
) -> (Failover<Arc<Script>, Named>, Arc<crate::metrics::Metrics>) {
    let (info, metrics) = info("up");
    let response = response.map(|yaml| {
        let spec = spec(&format!("fallback: {{ response: {yaml} }}"));
        StaticResponse::compile(spec.fallback.unwrap().response.as_ref().unwrap())
    });
    let layer = Failover::new(
        info,
        default_failure_on(),
        targets,
        response,
        1024,
        primary.clone(),
    );
    (layer, metrics)
}

#[tokio::test(start_paused = true)]
async fn failover_tries_each_target_in_order_with_its_own_authority() {
    let primary = Script::new("up", [Step::Status(503)]);
    let a = target("a", [Step::Refused]);
    let b = target("b", [Step::Status(200)]);
    let c = target("c", [Step::Status(200)]);
    let (scripts, routes) = (
        [a.script.clone(), b.script.clone(), c.script.clone()],
        routes(""),
    );
    let (layer, metrics) = failover(&primary, vec![a, b, c], None);
    let state = CallState::default();
    let result = layer
        .call(
            request("POST", "charge", &[]),
            cx(routes.default_route(), &state),
        )
        .await;
    assert_eq!(outcome(&result), "200");
    assert_eq!(primary.count(), 1);
    assert_eq!(
        scripts.iter().map(|s| s.count()).collect::<Vec<_>>(),
        [1, 1, 0]
    );
    let b_call = &scripts[1].calls()[0];
    assert_eq!(b_call.authority, "b");
    assert_eq!(b_call.body, "charge", "the body is replayed to the target");
    assert!(metrics.encode().contains(
        "bulwark_fallbacks_total{direction=\"outbound\",upstream=\"up\",namespace=\"default\",kind=\"failover\"} 1\n"
    ));
}

#[tokio::test(start_paused = true)]
async fn a_primary_that_answers_is_never_failed_over() {
    let primary = Script::new("up", [Step::Status(404)]);
    let a = target("a", [Step::Status(200)]);
    let a_script = a.script.clone();
    let (layer, _) = failover(&primary, vec![a], None);
    let routes = routes("");
    let state = CallState::default();
    let result = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await;
    assert_eq!(outcome(&result), "404", "4xx is the caller's business");
    assert_eq!(a_script.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_static_response_answers_when_every_target_failed() {
    let primary = Script::new("up", [Step::Reset]);
    let a = target("a", [Step::Status(502)]);
    let (layer, metrics) = failover(
        &primary,
        vec![a],
        Some(
            "{ status: 503, body: \"payments unavailable\", grpcStatus: unavailable, headers: { x-reason: outage } }",
        ),
    );
    let routes = routes("");
    let state = CallState::default();
    let rsp = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.headers()["x-bulwark-fallback"], "response");
    assert_eq!(rsp.headers()["x-reason"], "outage");
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "payments unavailable");

    let grpc = Cx {
        grpc: true,
        ..cx(routes.default_route(), &state)
    };
    let rsp = layer.call(get("/"), grpc).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["grpc-status"], "14");
    assert_eq!(rsp.headers()["grpc-message"], "payments unavailable");
    assert_eq!(rsp.headers()["x-reason"], "outage");
    assert!(metrics.encode().contains("kind=\"response\"} 2\n"));
}

#[tokio::test(start_paused = true)]
async fn no_failover_starts_after_the_deadline() {
    let primary = Script::new("up", [Step::After(ms(500), Box::new(Step::Status(503)))]);
    let a = target("a", [Step::Status(200)]);
    let a_script = a.script.clone();
    let (layer, _) = failover(&primary, vec![a], None);
    let routes = routes("");
    let state = CallState::default();
    let cx = Cx {
        deadline: Some(Instant::now() + ms(500)),
        ..cx(routes.default_route(), &state)
    };
    let result = layer.call(get("/"), cx).await;
    assert_eq!(outcome(&result), "503");
    assert_eq!(a_script.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_too_large_to_replay_goes_to_the_primary_only() {
    let primary = Script::new("up", [Step::Status(503)]);
    let a = target("a", [Step::Status(200)]);
    let a_script = a.script.clone();
    let (info, _) = info("up");
    let response = StaticResponse::compile(
        spec("fallback: { response: { status: 503, body: sorry } }")
            .fallback
            .unwrap()
            .response
            .as_ref()
            .unwrap(),
    );
    let layer = Failover::new(
        info,
        default_failure_on(),
        vec![a],
        Some(response),
        4,
        primary.clone(),
    );
    let routes = routes("");
    let state = CallState::default();
    let rsp = layer
        .call(
            request("POST", "more than four bytes", &[]),
            cx(routes.default_route(), &state),
        )
        .await
        .unwrap();
    assert_eq!(primary.calls()[0].body, "more than four bytes");
    assert_eq!(a_script.count(), 0);
    assert_eq!(rsp.headers()["x-bulwark-fallback"], "response");
}

// ───────────────────────────── circuit breaker ─────────────────────────────

/// A circuit-breaker layer over a script, and what it reports to.
struct BreakerFixture {
    layer: CircuitBreaker<Arc<Script>>,
    machine: Arc<Mutex<Breaker>>,
    events: tokio::sync::broadcast::Receiver<BreakerEvent>,
    stats: Arc<UpstreamStats>,
    metrics: Arc<crate::metrics::Metrics>,
}

fn breaker(yaml: &str, script: &Arc<Script>) -> BreakerFixture {
    let spec = spec(yaml);
    let cfg = BreakerConfig::from_policy(spec.circuit_breaker.as_ref()).unwrap();
    let machine = Arc::new(Mutex::new(Breaker::new(cfg.clone(), Instant::now())));
    let (events, rx) = tokio::sync::broadcast::channel(16);
    let stats = Arc::new(UpstreamStats::default());
    let (info, metrics) = info("up");
    let parts = BreakerParts {
        breaker: Some(machine.clone()),
        events,
        stats: stats.clone(),
        failure_on: cfg.failure_on.clone(),
        slow_call: cfg.slow_call.as_ref().map(|s| s.duration),
    };
    BreakerFixture {
        layer: CircuitBreaker::new(info, parts, script.clone()),
        machine,
        events: rx,
        stats,
        metrics,
    }
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_fails_fast_probes_and_closes() {
    let script = Script::new(
        "up",
        [
            Step::Status(500),
            Step::Status(500),
            Step::Status(500),
            Step::Status(500),
            Step::Status(200),
        ],
    );
    let BreakerFixture {
        layer,
        machine,
        mut events,
        metrics,
        ..
    } = breaker(
        "circuitBreaker: { minRequests: 4, failureRate: 50%, openFor: 10s, halfOpenProbes: 1 }",
        &script,
    );
    let routes = routes("");
    let state = CallState::default();
    for _ in 0..4 {
        layer
            .call(get("/"), cx(routes.default_route(), &state))
            .await
            .unwrap();
    }
    assert_eq!(machine.lock().unwrap().state(), BreakerState::Open);
    let opened = events.try_recv().unwrap();
    assert_eq!(
        (opened.from, opened.to),
        (BreakerState::Closed, BreakerState::Open)
    );

    // Open: refused without touching the upstream.
    let err = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "circuit breaker of upstream \"up\" is open: failure rate 100% >= 50% over 4 requests in 10s"
    );
    assert_eq!(script.count(), 4);
    assert!(
        metrics.encode().contains(
            "bulwark_breaker_rejections_total{direction=\"outbound\",upstream=\"up\",namespace=\"default\"} 1\n"
        )
    );

    // After openFor one probe goes through; its success closes the breaker.
    tokio::time::advance(ms(10_000)).await;
    let probe = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
    assert_eq!(probe.status(), StatusCode::OK);
    assert_eq!(machine.lock().unwrap().state(), BreakerState::Closed);
    let states: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| e.to)
        .collect();
    assert_eq!(states, [BreakerState::HalfOpen, BreakerState::Closed]);
    let text = metrics.encode();
    assert!(
        text.contains("bulwark_breaker_state{direction=\"outbound\",upstream=\"up\",namespace=\"default\"} 0\n"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_breaker_and_every_attempt_is_counted_for_the_report() {
    let script = Script::new("up", [Step::After(ms(2_500), Box::new(Step::Status(200)))]);
    let BreakerFixture {
        layer,
        machine,
        stats,
        ..
    } = breaker(
        "circuitBreaker: { minRequests: 2, slowCall: { duration: 2s, rate: 100% } }",
        &script,
    );
    let routes = routes("");
    let state = CallState::default();
    for _ in 0..2 {
        layer
            .call(get("/"), cx(routes.default_route(), &state))
            .await
            .unwrap();
    }
    assert_eq!(machine.lock().unwrap().state(), BreakerState::Open);
    let counts = stats.take();
    assert_eq!((counts.requests, counts.failures, counts.slow), (2, 0, 2));
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_gives_its_slot_back() {
    let script = Script::new("up", [Step::Status(500), Step::Hang, Step::Status(200)]);
    let BreakerFixture { layer, machine, .. } = breaker(
        "circuitBreaker: { minRequests: 1, failureRate: 50%, openFor: 1s, halfOpenProbes: 1 }",
        &script,
    );
    let routes = routes("");
    let state = CallState::default();
    layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
    tokio::time::advance(ms(1_000)).await;
    // The probe hangs and its caller gives up.
    let probe = tokio::time::timeout(
        ms(50),
        layer.call(get("/"), cx(routes.default_route(), &state)),
    )
    .await;
    assert!(probe.is_err());
    assert_eq!(machine.lock().unwrap().state(), BreakerState::HalfOpen);
    // The slot is free again: the next probe is admitted and closes the breaker.
    let next = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(machine.lock().unwrap().state(), BreakerState::Closed);
}

// ───────────────────────────── bulkhead ─────────────────────────────

#[tokio::test(start_paused = true)]
async fn the_bulkhead_refuses_past_its_limits_and_holds_slots_until_the_body_ends() {
    let script = Script::ok("up");
    let (info, metrics) = info("up");
    let slots = Arc::new(Slots::new(1, 0));
    let layer = Bulkhead::new(info, Some(slots.clone()), Limited::Upstream, script.clone());
    let routes = routes("");
    let state = CallState::default();

    let held = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
    assert_eq!(slots.in_flight(), 1, "the response body holds the slot");
    let err = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream \"up\" is at its concurrency limit (maxConcurrent 1, maxPending 0)"
    );
    assert!(
        metrics.encode().contains(
            "bulwark_bulkhead_rejections_total{direction=\"outbound\",upstream=\"up\",namespace=\"default\"} 1\n"
        )
    );
    drop(held);
    assert_eq!(slots.in_flight(), 0);
    layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_pending_request_waits_for_a_slot_within_its_attempt_deadline() {
    let script = Script::ok("up");
    let (info, _) = info("up");
    let slots = Arc::new(Slots::new(1, 1));
    let layer = Arc::new(Bulkhead::new(
        info,
        Some(slots),
        Limited::Upstream,
        script.clone(),
    ));
    let routes = Arc::new(routes(""));
    let state = Arc::new(CallState::default());

    let held = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
    // Waits, and gets the slot when the first response ends 100 ms later.
    let waiter = {
        let (layer, routes, state) = (layer.clone(), routes.clone(), state.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let r = layer
                .call(get("/"), cx(routes.default_route(), &state))
                .await;
            (outcome(&r), start.elapsed())
        })
    };
    tokio::time::sleep(ms(100)).await;
    drop(held);
    assert_eq!(waiter.await.unwrap(), ("200".to_string(), ms(100)));

    // With an attempt deadline, the wait ends with it.
    let held = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
    let start = Instant::now();
    let timed = Cx {
        attempt: Some(super::layer::AttemptDeadline {
            at: start + ms(300),
            limit: ms(300),
        }),
        ..cx(routes.default_route(), &state)
    };
    let result = layer.call(get("/"), timed).await;
    assert_eq!(outcome(&result), "attempt-timeout");
    assert_eq!(start.elapsed(), ms(300));
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn the_inbound_limit_names_the_service() {
    let (info, _) = info("orders");
    let layer = Bulkhead::new(
        info,
        Some(Arc::new(Slots::new(1, 0))),
        Limited::Inbound(Arc::from("shop/orders")),
        Script::ok("orders"),
    );
    let routes = routes("");
    let state = CallState::default();
    let _held = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
    let err = layer
        .call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "shop/orders is at its inbound concurrency limit (spec.inbound.maxConcurrent 1)"
    );
    let rsp = crate::errors::rescue(&err, true);
    assert_eq!(rsp.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED");

    // The kubelet's probes are not held to it: a busy app is not a dead one.
    let probe = request("GET", "/healthz", &[("user-agent", "kube-probe/1.34")]);
    layer
        .call(probe, cx(routes.default_route(), &state))
        .await
        .expect("a probe passes a full inbound limit");
}

// ───────────────────────────── degradation gate ─────────────────────────────

/// `cx` with the request's criticality, as [`super::Stack::call`] settles it.
fn with_criticality<'a>(req: &Req, actions: &ServiceActions, cx: Cx<'a>) -> Cx<'a> {
    Cx {
        criticality: crate::priority::Criticality::of(
            req.headers(),
            &actions.criticality_header,
            &actions.priority_header,
            cx.route.criticality,
        ),
        ..cx
    }
}

fn actions(yaml_spec: &str) -> Arc<ServiceActions> {
    let yaml = format!(
        "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec: {yaml_spec}\n"
    );
    let Resource::ServicePolicy(p) = bulwark_proto::policy::parse_yaml(&yaml).unwrap().remove(0)
    else {
        panic!("not a ServicePolicy")
    };
    Arc::new(ServiceActions::from_policy(Some(&p)))
}

fn levels(entries: &[(&str, &str, pb::Level)], capabilities: &[(&str, bool)]) -> LevelIndex {
    let services = entries
        .iter()
        .map(|(ns, name, level)| pb::ServiceLevel {
            namespace: ns.to_string(),
            service: name.to_string(),
            level: *level as i32,
            capabilities: capabilities
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            ..Default::default()
        })
        .collect();
    LevelIndex::from_wire(&pb::Levels { services }, "shop", Some("orders"))
}

#[tokio::test(start_paused = true)]
async fn inbound_requests_are_shed_by_priority_or_told_the_level_and_capabilities() {
    let app = Script::ok("orders");
    let (info, metrics) = info("orders");
    let degradation = Arc::new(Degradation::default());
    let acts = actions(
        "{ actions: { SEVERE: { shedPriorities: [low] } }, inbound: { priorityHeader: x-prio, shedRetryAfter: 20s } }",
    );
    let gate = Gate::new(
        info,
        Direction::Inbound,
        degradation.clone(),
        acts.clone(),
        app.clone(),
    );
    let routes = routes("");
    let state = CallState::default();
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let req = request("GET", "", headers);
        let cx = with_criticality(&req, &acts, cx(routes.default_route(), &state));
        gate.call(req, cx)
    };

    // NORMAL: through, told its level whatever the caller claimed.
    send(&[
        ("x-prio", "low"),
        ("x-bulwark-degradation", "EMERGENCY"),
        ("x-bulwark-capabilities", "forged=true"),
    ])
    .await
    .unwrap();
    let seen = &app.calls()[0].headers;
    assert_eq!(seen["x-bulwark-degradation"], "NORMAL");
    assert!(!seen.contains_key("x-bulwark-capabilities"));

    degradation.swap(levels(
        &[("shop", "orders", pb::Level::Severe)],
        &[("acceptOrders", false), ("sendNotifications", true)],
    ));
    let err = send(&[("x-prio", "low")]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "shed by shop/orders at SEVERE: priority low is shed at this level"
    );
    assert_eq!(app.count(), 1, "the shed request never reached the app");
    // The kubelet's probe, however low its priority, reaches the app (and is told the level).
    send(&[("x-prio", "low"), ("user-agent", "kube-probe/1.34")])
        .await
        .expect("probes are never shed");
    assert_eq!(app.calls()[1].headers["x-bulwark-degradation"], "SEVERE");
    // Only the kubelet's user agent counts.
    let impostor = send(&[("x-prio", "low"), ("user-agent", "curl/8 kube-probe/1.34")]).await;
    assert!(impostor.is_err());
    let rsp = crate::errors::rescue(&err, false);
    assert_eq!(rsp.headers()["retry-after"], "20");

    send(&[("x-prio", "HIGH")]).await.unwrap();
    let seen = &app.calls()[2].headers;
    assert_eq!(seen["x-bulwark-degradation"], "SEVERE");
    assert_eq!(
        seen["x-bulwark-capabilities"],
        "acceptOrders=false,sendNotifications=true"
    );
    assert!(
        metrics
            .encode()
            .contains("bulwark_shed_total{priority=\"low\",level=\"SEVERE\"} 2\n")
    );
}

#[tokio::test(start_paused = true)]
async fn low_priority_calls_to_an_emergency_upstream_fail_before_any_attempt() {
    let upstream = Script::ok("payments");
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let info = Arc::new(super::layer::UpstreamInfo {
        name: Arc::from("payments"),
        namespace: Arc::from("pay"),
        metrics: Arc::new(metrics.upstream("outbound", "shop", "payments")),
        stats: Default::default(),
    });
    let degradation = Arc::new(Degradation::default());
    let acts = actions("{}");
    let gate = Gate::new(
        info,
        Direction::Outbound,
        degradation.clone(),
        acts.clone(),
        upstream.clone(),
    );
    let routes = routes("");
    let state = CallState::default();
    degradation.swap(levels(&[("pay", "payments", pb::Level::Emergency)], &[]));

    let low = request("GET", "", &[("x-priority", "low")]);
    let low_cx = with_criticality(&low, &acts, cx(routes.default_route(), &state));
    let err = gate.call(low, low_cx).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream payments is at EMERGENCY: low-priority calls fail fast"
    );
    assert_eq!(upstream.count(), 0);
    gate.call(get("/"), cx(routes.default_route(), &state))
        .await
        .unwrap();
    assert_eq!(upstream.count(), 1, "other priorities go on");
    assert!(
        !upstream.calls()[0]
            .headers
            .contains_key("x-bulwark-degradation"),
        "outbound requests are not marked"
    );

    // A service of the same name in another namespace is not this upstream.
    degradation.swap(levels(&[("shop", "payments", pb::Level::Emergency)], &[]));
    gate.call(
        request("GET", "", &[("x-priority", "low")]),
        cx(routes.default_route(), &state),
    )
    .await
    .unwrap();
    assert_eq!(upstream.count(), 2);
    assert!(metrics.encode().contains(
        "bulwark_emergency_fail_fast_total{direction=\"outbound\",upstream=\"payments\",namespace=\"shop\"} 1\n"
    ));
}
