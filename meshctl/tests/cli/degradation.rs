//! `meshctl events` and `meshctl degrade` against a fake control plane: the requests they
//! send, the exact lines they print and their exit status.

use crate::support::{FakeControlPlane, Reply, meshctl};
use serde_json::json;

fn override_reply(mesh: bool) -> Reply {
    Reply::ok(json!({"override": {
        "level": "EMERGENCY", "reason": "payment provider outage", "by": "alice",
        "expires": 1795342500000_i64, "mesh": mesh
    }}))
}

#[test]
fn events_filter_by_service_and_limit() {
    let cp = FakeControlPlane::start(&[
        (
            "GET /v1/events?service=mrg%2Forder-orchestrator&limit=2",
            Reply::ok(json!({"events": [
                {"time": 1795341900000_i64, "at": "2026-11-22T10:05:00.000Z",
                 "service": "mrg/order-orchestrator", "kind": "override", "from": "SEVERE",
                 "to": "EMERGENCY", "reasons": ["payment provider outage"], "by": "alice",
                 "text": "mrg/order-orchestrator SEVERE -> EMERGENCY: payment provider outage"},
                {"time": 1795341600000_i64, "at": "2026-11-22T10:00:00.000Z",
                 "service": "mrg/order-orchestrator", "kind": "level", "from": "NORMAL",
                 "to": "SEVERE", "reasons": ["midtrans unhealthy (breaker open on 3/4 pods)"],
                 "by": "", "text": "mrg/order-orchestrator NORMAL -> SEVERE: midtrans unhealthy (breaker open on 3/4 pods)"}
            ]})),
        ),
        ("GET /v1/events?limit=100", Reply::ok(json!({"events": []}))),
    ]);
    let run = meshctl(
        &[
            "--server",
            &cp.url,
            "events",
            "--service",
            "order-orchestrator",
            "-n",
            "mrg",
            "--limit",
            "2",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "TIME                       SERVICE                  KIND       CHANGE                BY      REASONS\n\
         2026-11-22T10:05:00.000Z   mrg/order-orchestrator   override   SEVERE -> EMERGENCY   alice   payment provider outage\n\
         2026-11-22T10:00:00.000Z   mrg/order-orchestrator   level      NORMAL -> SEVERE      -       midtrans unhealthy (breaker open on 3/4 pods)\n"
    );
    assert_eq!(run.code, Some(0));

    let run = meshctl(&["--server", &cp.url, "events"], &[]);
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr, "no events\n");
    assert_eq!(run.code, Some(0));

    let run = meshctl(&["--server", &cp.url, "events", "--limit", "0"], &[]);
    assert_eq!(run.code, Some(1));
    assert_eq!(cp.requests().len(), 2);
}

#[test]
fn degrade_puts_the_override_and_prints_until_when() {
    let cp = FakeControlPlane::start(&[
        (
            "PUT /v1/degrade/mrg/order-orchestrator",
            override_reply(false),
        ),
        ("PUT /v1/degrade/mesh", override_reply(true)),
    ]);
    let run = meshctl(
        &[
            "--server",
            &cp.url,
            "--by",
            "alice",
            "degrade",
            "order-orchestrator",
            "-n",
            "mrg",
            "--level",
            "emergency",
            "--ttl",
            "15m",
            "--reason",
            "payment provider outage",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "mrg/order-orchestrator forced to EMERGENCY until 2026-11-22T10:15:00Z (payment provider outage)\n"
    );
    assert_eq!(run.code, Some(0));

    let run = meshctl(
        &[
            "--server",
            &cp.url,
            "degrade",
            "--mesh",
            "--level",
            "Emergency",
            "--ttl",
            "15m",
            "--reason",
            "payment provider outage",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "mesh forced to EMERGENCY until 2026-11-22T10:15:00Z (payment provider outage)\n"
    );
    assert_eq!(run.code, Some(0));

    let requests = cp.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].json(),
        json!({"level": "EMERGENCY", "ttl": "15m", "reason": "payment provider outage", "by": "alice"})
    );
    // --by defaults to $USER, which the runner sets to `tester`.
    assert_eq!(
        requests[1].json(),
        json!({"level": "EMERGENCY", "ttl": "15m", "reason": "payment provider outage", "by": "tester"})
    );
}

#[test]
fn degrade_refuses_bad_input_before_sending_anything() {
    let cp = FakeControlPlane::start(&[]);
    let base = ["--server", cp.url.as_str(), "degrade", "checkout"];
    let cases: [(&[&str], Option<&str>); 5] = [
        (
            &["--level", "SEVERE", "--ttl", "48h", "--reason", "drill"],
            Some("meshctl: --ttl must be at most 24h, got \"48h\"\n"),
        ),
        (
            &["--level", "RED", "--ttl", "1h", "--reason", "drill"],
            Some(
                "meshctl: unknown level \"RED\"; expected NORMAL, DEGRADED, SEVERE or EMERGENCY\n",
            ),
        ),
        // clap's own messages: a missing --reason, --clear with --level, a SERVICE and --mesh.
        (&["--level", "SEVERE", "--ttl", "1h"], None),
        (&["--clear", "--level", "SEVERE"], None),
        (&["--mesh", "--clear"], None),
    ];
    for (args, stderr) in cases {
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        let run = meshctl(&all, &[]);
        assert_eq!(run.stdout, "", "{args:?}");
        if let Some(stderr) = stderr {
            assert_eq!(run.stderr, stderr, "{args:?}");
        }
        assert_eq!(run.code, Some(1), "{args:?}");
    }
    let run = meshctl(
        &[
            "--server", &cp.url, "degrade", "--level", "SEVERE", "--ttl", "1h", "--reason", "x",
        ],
        &[],
    );
    assert!(run.stderr.contains("<SERVICE|--mesh>"), "{}", run.stderr);
    assert_eq!(run.code, Some(1));
    assert!(cp.requests().is_empty());
}

#[test]
fn degrade_clear_deletes_and_says_when_there_was_nothing_to_clear() {
    let cp = FakeControlPlane::start(&[
        (
            "DELETE /v1/degrade/mrg/order-orchestrator?by=alice",
            Reply::ok(json!({"cleared": true})),
        ),
        (
            "DELETE /v1/degrade/mesh?by=tester",
            Reply::json(
                404,
                json!({"error": "not-found", "message": "no mesh-wide override"}),
            ),
        ),
    ]);
    let run = meshctl(
        &[
            "--server",
            &cp.url,
            "--by",
            "alice",
            "degrade",
            "mrg/order-orchestrator",
            "--clear",
        ],
        &[],
    );
    assert_eq!(run.stderr, "");
    assert_eq!(run.stdout, "mrg/order-orchestrator override cleared\n");
    assert_eq!(run.code, Some(0));

    let run = meshctl(&["--server", &cp.url, "degrade", "--mesh", "--clear"], &[]);
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr, "meshctl: no override for mesh\n");
    assert_eq!(run.code, Some(1));
}
