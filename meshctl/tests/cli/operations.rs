//! `meshctl status`, `history`, `rollback` and `delete` against a fake control plane: the
//! requests they send and the exact lines they print.

use crate::support::{FakeControlPlane, Reply, meshctl};
use serde_json::json;

#[test]
fn status_shows_levels_then_convergence_and_every_nack_with_its_reason() {
    let cp = FakeControlPlane::start(&[
        (
            "GET /v1/levels",
            Reply::ok(json!({
                "computedAt": 1795341600000_i64,
                "services": [
                    {"namespace": "mrg", "service": "order-orchestrator", "level": "SEVERE",
                     "computed": "SEVERE", "since": 1795341600000_i64,
                     "capabilities": {"acceptOrders": false, "sendNotifications": true},
                     "reasons": ["midtrans unhealthy (breaker open on 3/4 pods)"],
                     "summary": "SEVERE: midtrans unhealthy (breaker open on 3/4 pods)",
                     "unhealthy": ["midtrans"], "reportingPods": 4, "unreadyPods": ["pod-a"],
                     "override": null, "dependencies": []}
                ]
            })),
        ),
        (
            "GET /v1/status",
            Reply::ok(json!({
                "revision": 40,
                "resources": [
                    {"id": "UpstreamPolicy/payments/midtrans", "resourceVersion": "40",
                     "pods": {"applied": 37, "total": 40, "nacks": [
                         {"pod": "checkout-7f9c-x2", "version": 40, "error": "spec.retry.retryOn[2]: unknown condition \"4xx\""},
                         {"pod": "checkout-7f9c-k8", "version": "40", "error": "snapshot too large"}
                     ]}},
                    {"id": "ServicePolicy/mrg/order-orchestrator", "resourceVersion": 12,
                     "pods": {"applied": 3, "total": 3, "nacks": []}}
                ]
            })),
        ),
    ]);
    let run = meshctl(&["--server", &cp.url, "status"], &[]);
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "SERVICE                  LEVEL    UNHEALTHY   PODS           REASONS\n\
         mrg/order-orchestrator   SEVERE   midtrans    4, 1 unready   midtrans unhealthy (breaker open on 3/4 pods)\n\
         \n\
         RESOURCE                               VERSION   APPLIED\n\
         UpstreamPolicy/payments/midtrans       40        37/40\n  \
         pod checkout-7f9c-x2 at version 40: spec.retry.retryOn[2]: unknown condition \"4xx\"\n  \
         pod checkout-7f9c-k8 at version 40: snapshot too large\n\
         ServicePolicy/mrg/order-orchestrator   12        3/3\n"
    );
    assert_eq!(run.code, Some(0));
    let requests: Vec<String> = cp.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(requests, ["/v1/levels", "/v1/status"]);
}

#[test]
fn status_goes_on_without_levels_from_a_control_plane_that_has_none() {
    let cp = FakeControlPlane::start(&[(
        "GET /v1/status",
        Reply::ok(json!({"resources": [
            {"id": "UpstreamPolicy/payments/midtrans", "resourceVersion": "40",
             "pods": {"applied": 2, "total": 2, "nacks": []}}
        ]})),
    )]);
    let run = meshctl(&["--server", &cp.url, "status"], &[]);
    assert_eq!(
        run.stderr,
        "(no degradation levels: the control plane does not serve /v1/levels)\n"
    );
    assert_eq!(
        run.stdout,
        "RESOURCE                           VERSION   APPLIED\n\
         UpstreamPolicy/payments/midtrans   40        2/2\n"
    );
    assert_eq!(run.code, Some(0));
}

#[test]
fn history_is_a_table_newest_first() {
    let cp = FakeControlPlane::start(&[(
        "GET /v1/UpstreamPolicy/payments/midtrans/history",
        Reply::ok(json!({"items": [
            {"revision": 44, "op": "rollback", "by": "bob", "at": "2025-06-02T10:15:00Z", "resource": {}},
            {"revision": 41, "op": "update", "by": "alice", "at": "2025-06-01T09:00:00Z", "resource": {}},
            {"revision": 38, "op": "create", "by": "ci", "at": "2025-05-30T17:42:10Z", "resource": {}}
        ]})),
    )]);
    let run = meshctl(
        &[
            "--server", &cp.url, "-n", "payments", "history", "up", "midtrans",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "REVISION   OP         BY      AT\n\
         44         rollback   bob     2025-06-02T10:15:00Z\n\
         41         update     alice   2025-06-01T09:00:00Z\n\
         38         create     ci      2025-05-30T17:42:10Z\n"
    );
    assert_eq!(run.code, Some(0));
}

#[test]
fn rollback_posts_the_revision_and_prints_the_result() {
    let cp = FakeControlPlane::start(&[(
        "POST /v1/UpstreamPolicy/payments/midtrans/rollback",
        Reply::ok(json!({
            "results": [{"id": "UpstreamPolicy/payments/midtrans", "action": "updated", "resourceVersion": "45"}],
            "revision": 45
        })),
    )]);
    let run = meshctl(
        &[
            "--server", &cp.url, "rollback", "up", "midtrans", "-n", "payments", "--to", "38",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "UpstreamPolicy/payments/midtrans updated (version 45)\n"
    );
    assert_eq!(run.code, Some(0));
    let requests = cp.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].json(),
        json!({"toRevision": 38, "by": "tester"})
    );
}

#[test]
fn rollback_to_a_revision_that_is_gone_exits_1() {
    let cp = FakeControlPlane::start(&[(
        "POST /v1/UpstreamPolicy/payments/midtrans/rollback",
        Reply::json(
            404,
            json!({"error": "not-found", "message": "UpstreamPolicy/payments/midtrans has no revision 3 in its history"}),
        ),
    )]);
    let run = meshctl(
        &[
            "--server", &cp.url, "rollback", "up", "midtrans", "-n", "payments", "--to", "3",
        ],
        &[],
    );
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "meshctl: not found: UpstreamPolicy/payments/midtrans has no revision 3 in its history\n"
    );
    assert_eq!(run.code, Some(1));
}

#[test]
fn delete_names_who_and_optionally_the_expected_version() {
    let cp = FakeControlPlane::start(&[
        (
            "DELETE /v1/ServicePolicy/mrg/order-orchestrator?by=carol",
            Reply::ok(json!({"id": "ServicePolicy/mrg/order-orchestrator", "revision": 46})),
        ),
        (
            "DELETE /v1/UpstreamPolicy/default/echo?by=tester&resourceVersion=7",
            Reply::json(
                409,
                json!({"error": "conflict", "message": "UpstreamPolicy/default/echo is at version 9, not 7"}),
            ),
        ),
    ]);
    let run = meshctl(
        &[
            "--server",
            &cp.url,
            "--by",
            "carol",
            "delete",
            "svc",
            "order-orchestrator",
            "-n",
            "mrg",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "ServicePolicy/mrg/order-orchestrator deleted (revision 46)\n"
    );
    assert_eq!(run.code, Some(0));

    let run = meshctl(
        &[
            "--server",
            &cp.url,
            "delete",
            "up",
            "echo",
            "--resource-version",
            "7",
        ],
        &[],
    );
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "meshctl: conflict: UpstreamPolicy/default/echo is at version 9, not 7\n"
    );
    assert_eq!(run.code, Some(1));
}

#[test]
fn delete_of_a_named_upstream_is_refused_with_its_referrers_unless_forced() {
    let refused = "UpstreamPolicy/shop/payments is still named by UpstreamPolicy/shop/checkout (spec.fallback.failover[0]); change or delete it first, or delete it with force";
    let cp = FakeControlPlane::start(&[
        (
            "DELETE /v1/UpstreamPolicy/shop/payments?by=tester",
            Reply::json(409, json!({"error": "conflict", "message": refused})),
        ),
        (
            "DELETE /v1/UpstreamPolicy/shop/payments?by=tester&force=true",
            Reply::ok(json!({"id": "UpstreamPolicy/shop/payments", "revision": 12})),
        ),
    ]);
    let delete = |extra: &[&str]| {
        let mut args = vec![
            "--server", &cp.url, "delete", "up", "payments", "-n", "shop",
        ];
        args.extend_from_slice(extra);
        meshctl(&args, &[])
    };
    let run = delete(&[]);
    assert_eq!(run.stderr, format!("meshctl: conflict: {refused}\n"));
    assert_eq!(run.code, Some(1));
    let run = delete(&["--force"]);
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "UpstreamPolicy/shop/payments deleted (revision 12)\n"
    );
}
