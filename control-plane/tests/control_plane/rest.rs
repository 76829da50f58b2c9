//! The operator API over REST (and gRPC), against a real etcd and the real binary: apply, get,
//! list, delete, history, rollback, dry-run, validation, optimistic concurrency, all-or-nothing.

use crate::replica;
use bulwark_tests::policy::{service_json as service, upstream_json as upstream};
use bulwark_tests::{ControlPlane, Etcd, Reply};
use serde_json::{Value, json};

const PREFIX: &str = "/bulwark/v1/";

async fn setup() -> (Etcd, ControlPlane) {
    let etcd = Etcd::start().await;
    let cp = replica(&[etcd.endpoint()]).await;
    cp.wait_fresh().await;
    (etcd, cp)
}

/// The diff of a new `echo` upstream pointing at `addr`.
fn created_diff(addr: &str) -> String {
    format!(
        "--- /dev/null\n+++ UpstreamPolicy/default/echo\n@@ -0,0 +1,10 @@\n+kind: UpstreamPolicy\n+apiVersion: bulwark/v1\n+metadata:\n+  name: echo\n+  namespace: default\n+spec:\n+  endpoints:\n+    static:\n+    - {addr}\n+  protocol: auto\n"
    )
}

fn stored_echo(addr: &str, version: i64) -> Value {
    json!({"kind": "UpstreamPolicy", "apiVersion": "bulwark/v1",
        "metadata": {"name": "echo", "namespace": "default", "resourceVersion": version.to_string()},
        "spec": {"endpoints": {"static": [addr]}, "protocol": "auto"}})
}

#[tokio::test]
async fn apply_get_list_delete_history_rollback() {
    let (etcd, cp) = setup().await;

    // Create.
    let reply = cp
        .post(
            "/v1/apply",
            json!({"resources": [upstream("echo", "127.0.0.1:8080")], "by": "alice"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let v1 = reply.json["revision"].as_i64().unwrap();
    assert_eq!(
        reply.json,
        json!({"results": [{"id": "UpstreamPolicy/default/echo", "action": "created",
            "resourceVersion": v1, "diff": created_diff("127.0.0.1:8080")}], "revision": v1})
    );

    // Read back, from this replica's index, at once.
    let reply = cp.get("/v1/UpstreamPolicy/default/echo").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-bulwark-stale"), None);
    assert_eq!(reply.json, stored_echo("127.0.0.1:8080", v1));

    // The same again: unchanged, nothing written.
    let reply = cp
        .post(
            "/v1/apply",
            json!({"resources": [upstream("echo", "127.0.0.1:8080")]}),
        )
        .await;
    assert_eq!(
        reply.json["results"],
        json!([{"id": "UpstreamPolicy/default/echo", "action": "unchanged",
            "resourceVersion": v1, "diff": ""}])
    );
    // The store's revision then: past v1 only by the first apply's event and audit record.
    assert_eq!(reply.json["revision"], json!(v1 + 2));

    // Update, naming the version it replaces.
    let mut changed = upstream("echo", "127.0.0.1:9090");
    changed["metadata"]["resourceVersion"] = json!(v1.to_string());
    let reply = cp
        .post("/v1/apply", json!({"resources": [changed], "by": "bob"}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let v2 = reply.json["revision"].as_i64().unwrap();
    assert!(v2 > v1);
    assert_eq!(
        reply.json,
        json!({"results": [{"id": "UpstreamPolicy/default/echo", "action": "updated",
            "resourceVersion": v2,
            "diff": format!("--- UpstreamPolicy/default/echo@{v1}\n+++ UpstreamPolicy/default/echo\n@@ -6,5 +6,5 @@\n spec:\n   endpoints:\n     static:\n-    - 127.0.0.1:8080\n+    - 127.0.0.1:9090\n   protocol: auto\n")}],
            "revision": v2})
    );

    // List, with namespace and selector filters.
    cp.apply_json(vec![service("shop", "orders", 8080)]).await;
    let mut labelled = service("shop", "billing", 8081);
    labelled["metadata"]["labels"] = json!({"team": "pay"});
    cp.apply_json(vec![labelled]).await;
    let reply = cp.get("/v1/UpstreamPolicy").await;
    assert_eq!(
        reply.json["items"],
        json!([stored_echo("127.0.0.1:9090", v2)])
    );
    assert!(reply.json["revision"].as_i64().unwrap() > v2);
    let names = |reply: &Reply| -> Vec<String> {
        reply.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&cp.get("/v1/ServicePolicy").await),
        ["billing", "orders"]
    );
    assert_eq!(
        names(
            &cp.get("/v1/ServicePolicy?namespace=shop&selector=team=pay")
                .await
        ),
        ["billing"]
    );
    assert!(names(&cp.get("/v1/ServicePolicy?namespace=other").await).is_empty());
    let reply = cp.get("/v1/ServicePolicy?selector=team").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["error"], "invalid");

    // History, newest first.
    let reply = cp.get("/v1/UpstreamPolicy/default/echo/history").await;
    assert_eq!(reply.status, 200);
    let items = reply.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        (
            items[0]["revision"].as_i64(),
            &items[0]["op"],
            &items[0]["by"]
        ),
        (Some(v2), &json!("updated"), &json!("bob"))
    );
    assert_eq!(
        (
            items[1]["revision"].as_i64(),
            &items[1]["op"],
            &items[1]["by"]
        ),
        (Some(v1), &json!("created"), &json!("alice"))
    );
    assert_eq!(
        items[1]["resource"]["spec"]["endpoints"]["static"],
        json!(["127.0.0.1:8080"])
    );
    assert_eq!(
        items[1]["resource"]["metadata"]["resourceVersion"],
        json!(v1.to_string())
    );
    assert!(items[0]["at"].as_str().unwrap().ends_with('Z'));

    // Roll back to the first version.
    let reply = cp
        .post(
            "/v1/UpstreamPolicy/default/echo/rollback",
            json!({"toRevision": v1, "by": "carol"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let v3 = reply.json["revision"].as_i64().unwrap();
    assert_eq!(reply.json["results"][0]["action"], "updated");
    assert_eq!(reply.json["results"][0]["resourceVersion"], v3);
    let reply = cp.get("/v1/UpstreamPolicy/default/echo").await;
    assert_eq!(reply.json, stored_echo("127.0.0.1:8080", v3));
    let reply = cp.get("/v1/UpstreamPolicy/default/echo/history").await;
    assert_eq!(reply.json["items"][0]["op"], "rolled-back");
    assert_eq!(reply.json["items"][0]["by"], "carol");

    // Rolling back to a revision the history does not hold.
    let reply = cp
        .post(
            "/v1/UpstreamPolicy/default/echo/rollback",
            json!({"toRevision": 1}),
        )
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json,
        json!({"error": "not-found", "message": "UpstreamPolicy/default/echo has no history entry at revision 1", "details": []})
    );

    // Delete with a stale version: conflict; with none: gone.
    let reply = cp
        .delete(&format!(
            "/v1/UpstreamPolicy/default/echo?resourceVersion={v1}"
        ))
        .await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.json["message"],
        format!(
            "UpstreamPolicy/default/echo: resourceVersion {v1} does not match the current resourceVersion {v3}"
        )
    );
    // An empty or unreadable precondition is refused, never taken as "no check".
    for bad in ["", "abc", "%20"] {
        let reply = cp
            .delete(&format!(
                "/v1/UpstreamPolicy/default/echo?resourceVersion={bad}"
            ))
            .await;
        assert_eq!(reply.status, 400, "{bad:?}: {}", reply.json);
        assert_eq!(reply.json["error"], "invalid");
        assert!(
            reply.json["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("resourceVersion must be a resource version (an integer), got "),
            "{}",
            reply.json
        );
    }
    assert_eq!(
        cp.get("/v1/UpstreamPolicy/default/echo").await.status,
        200,
        "still there"
    );
    let reply = cp.delete("/v1/UpstreamPolicy/default/echo?by=dave").await;
    assert_eq!(reply.status, 200);
    let v4 = reply.json["revision"].as_i64().unwrap();
    assert_eq!(
        reply.json,
        json!({"id": "UpstreamPolicy/default/echo", "revision": v4})
    );
    let reply = cp.get("/v1/UpstreamPolicy/default/echo").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json,
        json!({"error": "not-found", "message": "UpstreamPolicy/default/echo not found", "details": []})
    );
    assert_eq!(
        cp.delete("/v1/UpstreamPolicy/default/echo").await.status,
        404
    );

    // The deletion is in the history; rolling back to it is refused, to before it works.
    let reply = cp.get("/v1/UpstreamPolicy/default/echo/history").await;
    assert_eq!(reply.json["items"][0]["op"], "deleted");
    assert_eq!(reply.json["items"][0]["resource"], Value::Null);
    assert_eq!(reply.json["items"][0]["by"], "dave");
    let reply = cp
        .post(
            "/v1/UpstreamPolicy/default/echo/rollback",
            json!({"toRevision": v4}),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json["details"],
        json!([format!(
            "UpstreamPolicy/default/echo: toRevision: revision {v4} is a deletion"
        )])
    );
    let reply = cp
        .post(
            "/v1/UpstreamPolicy/default/echo/rollback",
            json!({"toRevision": v2}),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["results"][0]["action"], "created");

    // What etcd holds: the resources and their history.
    let keys = etcd.keys(PREFIX);
    assert!(keys.contains(&"/bulwark/v1/policies/UpstreamPolicy/default/echo".to_string()));
    // History keys carry the revision the writer expected; other writes (audit records, acks)
    // may land in between, so only their presence is certain.
    assert!(
        keys.iter()
            .any(|k| k.starts_with("/bulwark/v1/history/UpstreamPolicy/default/echo/")),
        "{keys:?}"
    );

    // Every change is an event (the unchanged apply is none), newest first, naming its
    // resource.
    let reply = cp.get("/v1/events?service=default/echo").await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let events: Vec<(Value, Value, Value, Value)> = reply.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["resource"], "UpstreamPolicy/default/echo");
            (
                e["kind"].clone(),
                e["from"].clone(),
                e["to"].clone(),
                e["by"].clone(),
            )
        })
        .collect();
    let v5 = cp.get("/v1/UpstreamPolicy/default/echo").await.json["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let s = |v: i64| json!(v.to_string());
    assert_eq!(
        events[..4],
        [
            (json!("rollback"), json!(""), json!(v5), events[0].3.clone()),
            (json!("delete"), s(v3), json!("deleted"), json!("dave")),
            (json!("rollback"), s(v2), s(v3), json!("carol")),
            (json!("apply"), s(v1), s(v2), json!("bob")),
        ]
    );
    assert_eq!(events.len(), 5, "and the creation: {events:?}");
    assert_eq!(
        reply.json["events"][1]["text"],
        format!("UpstreamPolicy/default/echo deleted by dave (was version {v3})")
    );
    assert_eq!(
        reply.json["events"][0]["text"],
        format!(
            "UpstreamPolicy/default/echo restored from its history by {} (version {v5})",
            events[0].3.as_str().unwrap()
        )
    );
}

#[tokio::test]
async fn invalid_resources_are_refused_with_every_field_path_and_nothing_is_stored() {
    let (etcd, cp) = setup().await;
    let mut bad = upstream("bad", "nowhere");
    bad["spec"]["retry"] = json!({"maxAttempts": 0});
    let mut typo = upstream("typo", "127.0.0.1:1");
    typo["spec"]["timeout"] = json!({"request": "1s"});
    let reply = cp
        .post(
            "/v1/apply",
            json!({"resources": [upstream("fine", "127.0.0.1:1"), bad, typo]}),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json,
        json!({"error": "invalid", "message": "3 problems found; nothing was stored", "details": [
            "UpstreamPolicy/default/bad: spec.endpoints.static[0]: must be ip:port such as \"10.0.0.5:8080\" or \"[fd00::5]:8080\", got \"nowhere\"",
            "UpstreamPolicy/default/bad: spec.retry.maxAttempts: must be >= 1, got 0",
            "UpstreamPolicy/default/typo: spec.timeout: unknown field `timeout`, expected one of `endpoints`, `protocol`, `hostRewrite`, `allowConnect`, `timeouts`, `retry`, `circuitBreaker`, `outlierDetection`, `limits`, `adaptiveConcurrency`, `criticality`, `rateLimit`, `throttling`, `fallback`, `routes`, `tls`, `exportTo`"
        ]})
    );
    // Not even the valid one.
    assert_eq!(cp.get("/v1/UpstreamPolicy/default/fine").await.status, 404);
    assert!(etcd.stored_keys(PREFIX).is_empty());

    // A body that is not an apply request.
    let reply = cp.post("/v1/apply", json!({"resource": []})).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["error"], "invalid");
    assert!(
        reply.json["message"]
            .as_str()
            .unwrap()
            .starts_with("the request body is not valid: unknown field `resource`"),
        "{}",
        reply.json
    );
    let reply = cp.post("/v1/apply", json!({"resources": []})).await;
    assert_eq!(
        reply.json,
        json!({"error": "invalid", "message": "nothing to apply: resources is empty", "details": []})
    );
    let reply = cp.get("/v1/Gateway").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json["message"],
        "no such kind: unknown kind \"Gateway\", expected UpstreamPolicy or ServicePolicy"
    );
    assert!(etcd.stored_keys(PREFIX).is_empty());
}

/// References between policies hold: a failover target must exist (stored, or applied in
/// the same request), and an UpstreamPolicy that others still name — as a failover target or
/// a dependency — is deleted only with `force`, the refusal naming every referrer and field.
#[tokio::test]
async fn failover_targets_must_exist_and_named_upstreams_are_not_deleted_without_force() {
    let (etcd, cp) = setup().await;
    let mut checkout = upstream("checkout", "127.0.0.1:1");
    checkout["spec"]["fallback"] = json!({"failover": ["payments", "ghost.elsewhere"]});
    let reply = cp
        .post("/v1/apply", json!({"resources": [checkout.clone()]}))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.json);
    assert_eq!(
        reply.json,
        json!({"error": "invalid", "message": "2 problems found; nothing was stored", "details": [
            "UpstreamPolicy/default/checkout: spec.fallback.failover[0]: names UpstreamPolicy/default/payments, which does not exist; apply it first, or in the same request",
            "UpstreamPolicy/default/checkout: spec.fallback.failover[1]: names UpstreamPolicy/elsewhere/ghost, which does not exist; apply it first, or in the same request",
        ]})
    );
    assert!(etcd.stored_keys(PREFIX).is_empty());

    // Applied together with its targets, it is stored.
    let mut ghost = upstream("ghost", "127.0.0.1:2");
    ghost["metadata"]["namespace"] = json!("elsewhere");
    let mut orders = service("default", "orders", 8080);
    orders["spec"]["dependencies"] = json!({"payments": {"critical": true}});
    let reply = cp
        .post(
            "/v1/apply",
            json!({"resources": [checkout, upstream("payments", "127.0.0.1:3"), ghost, orders]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);

    // Named by checkout's failover and by orders' dependencies: not deleted, and said why.
    let before = etcd.stored_keys(PREFIX);
    let reply = cp.delete("/v1/UpstreamPolicy/default/payments").await;
    assert_eq!(reply.status, 409, "{}", reply.json);
    assert_eq!(
        reply.json["message"],
        "UpstreamPolicy/default/payments is still named by UpstreamPolicy/default/checkout (spec.fallback.failover[0]), ServicePolicy/default/orders (spec.dependencies.payments); change or delete them first, or delete it with force"
    );
    assert_eq!(etcd.stored_keys(PREFIX), before, "nothing changed");
    // A policy nobody names goes as before; a missing one is still not found.
    assert_eq!(
        cp.delete("/v1/UpstreamPolicy/default/nothing").await.status,
        404
    );
    // With force it goes.
    let reply = cp
        .delete("/v1/UpstreamPolicy/default/payments?force=true")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(
        cp.get("/v1/UpstreamPolicy/default/payments").await.status,
        404
    );
}

/// `meshctl diff -f`, as `kubectl diff`: nothing to say and exit 0 when the file is what is
/// stored; the control plane's diff of what would change and exit 1 otherwise; nothing stored
/// either way.
#[tokio::test]
async fn meshctl_diff_shows_what_apply_would_change_and_stores_nothing() {
    let (etcd, cp) = setup().await;
    let dir = bulwark_tests::TempDir::new();
    let file = dir.path().join("echo.yaml");
    let write = |request: &str| {
        std::fs::write(
            &file,
            format!("apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: echo }}\nspec:\n  endpoints: {{ static: [\"127.0.0.1:9000\"] }}\n  timeouts: {{ request: {request} }}\n"),
        )
        .expect("write the file");
    };
    let path = file.to_str().expect("utf-8 path");
    write("10s");
    cp.meshctl(&["apply", "-f", path]);
    let stored = etcd.stored_keys(PREFIX);

    let (code, stdout, stderr) = cp.meshctl_run(&["diff", "-f", path]);
    assert_eq!((code, stdout.as_str()), (Some(0), ""), "{stderr}");
    assert_eq!(stderr, "no differences: 1 resource(s) as stored\n");

    write("25s");
    let (code, stdout, stderr) = cp.meshctl_run(&["diff", "-f", path]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr, "");
    assert!(
        stdout.starts_with("UpstreamPolicy/default/echo would be updated\n"),
        "{stdout}"
    );
    assert!(stdout.contains("request: 10s"), "{stdout}");
    assert!(stdout.contains("request: 25s"), "{stdout}");
    assert_eq!(etcd.stored_keys(PREFIX), stored, "nothing stored");
    let reply = cp.get("/v1/UpstreamPolicy/default/echo").await;
    assert_eq!(reply.json["spec"]["timeouts"]["request"], "10s");
}

/// `meshctl check` on a healthy control plane: every line ✓, exit 0; with etcd gone: the etcd
/// and leader lines are × with their hints, and the exit status is 1.
#[tokio::test]
async fn meshctl_check_passes_when_healthy_and_names_etcd_when_it_is_down() {
    let (etcd, cp) = setup().await;
    let leader = bulwark_tests::poll::eventually(std::time::Duration::from_secs(15), || async {
        let d = cp.get("/v1/diagnostics").await.json;
        d["leader"]["replica"].as_str().map(str::to_string)
    })
    .await;
    let (code, stdout, stderr) = cp.meshctl_run(&["check"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "✓ the control plane answers at {}: {} ({})",
                cp.http_url(),
                bulwark_telemetry::VERSION,
                bulwark_telemetry::REVISION
            )
            .as_str(),
            "✓ meshctl and the control plane are the same version",
            lines[2],
            format!("✓ a leader is elected: {leader}").as_str(),
            "✓ every connected pod runs the newest policies (0 resources, 0 pods)",
            "✓ no pod refused a snapshot",
        ],
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("✓ the control plane reaches etcd (revision "),
        "{stdout}"
    );

    etcd.kill();
    let (code, stdout, stderr) = cp.meshctl_run(&["check"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("× the control plane cannot reach etcd: ")
            && stdout.contains("    hint: reads are stale and writes fail until it can"),
        "{stdout}"
    );
    assert!(
        stdout.contains("× no leader known: cannot read the election key: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("✓ the control plane answers at "),
        "{stdout}"
    );
    assert!(stderr.ends_with("check(s) failed\n"), "{stderr}");
}

#[tokio::test]
async fn resource_version_conflicts_name_the_current_version() {
    let (_etcd, cp) = setup().await;
    let v1 = cp.apply_json(vec![upstream("echo", "127.0.0.1:1")]).await["revision"]
        .as_i64()
        .unwrap();
    let v2 = cp.apply_json(vec![upstream("echo", "127.0.0.1:2")]).await["revision"]
        .as_i64()
        .unwrap();

    let mut stale = upstream("echo", "127.0.0.1:3");
    stale["metadata"]["resourceVersion"] = json!(v1.to_string());
    let reply = cp.post("/v1/apply", json!({"resources": [stale]})).await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.json,
        json!({"error": "conflict", "details": [], "message": format!(
            "UpstreamPolicy/default/echo: resourceVersion {v1} does not match the current resourceVersion {v2}")})
    );
    // "0" means create-only.
    let mut create = upstream("echo", "127.0.0.1:3");
    create["metadata"]["resourceVersion"] = json!("0");
    let reply = cp
        .post("/v1/apply", json!({"resources": [create.clone()]}))
        .await;
    assert_eq!(reply.status, 409);
    create["metadata"]["name"] = json!("other");
    assert_eq!(
        cp.post("/v1/apply", json!({"resources": [create]}))
            .await
            .status,
        200
    );

    // Nothing changed.
    let reply = cp.get("/v1/UpstreamPolicy/default/echo").await;
    assert_eq!(
        reply.json["spec"]["endpoints"]["static"],
        json!(["127.0.0.1:2"])
    );
}

#[tokio::test]
async fn a_multi_resource_apply_is_all_or_nothing() {
    let (etcd, cp) = setup().await;
    let v1 = cp.apply_json(vec![upstream("a", "127.0.0.1:1")]).await["revision"]
        .as_i64()
        .unwrap();
    let va2 = cp.apply_json(vec![upstream("a", "127.0.0.1:2")]).await["revision"]
        .as_i64()
        .unwrap();

    // One stale version among three: nothing is written.
    let mut stale = upstream("a", "127.0.0.1:3");
    stale["metadata"]["resourceVersion"] = json!(v1.to_string());
    let before = etcd.stored_keys(PREFIX);
    let reply = cp
        .post(
            "/v1/apply",
            json!({"resources": [upstream("b", "127.0.0.1:1"), stale, service("shop", "orders", 80)]}),
        )
        .await;
    assert_eq!(reply.status, 409, "{}", reply.json);
    assert_eq!(
        etcd.stored_keys(PREFIX),
        before,
        "nothing but the audit record was written"
    );
    assert_eq!(cp.get("/v1/UpstreamPolicy/default/b").await.status, 404);
    assert_eq!(cp.get("/v1/ServicePolicy/shop/orders").await.status, 404);

    // All valid: one transaction, one revision for all.
    let reply = cp
        .post(
            "/v1/apply",
            json!({"resources": [upstream("b", "127.0.0.1:1"), upstream("a", "127.0.0.1:2"), service("shop", "orders", 80)]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let revision = reply.json["revision"].as_i64().unwrap();
    let results: Vec<(Value, Value)> = reply.json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["action"].clone(), r["resourceVersion"].clone()))
        .collect();
    assert_eq!(
        results,
        [
            (json!("created"), json!(revision)),
            (json!("unchanged"), json!(va2)),
            (json!("created"), json!(revision)),
        ]
    );
    // One transaction; only the elected replica's status of the new ServicePolicy and the
    // events of the changes may follow.
    let after: Vec<String> = etcd
        .stored_keys(PREFIX)
        .into_iter()
        .filter(|k| !k.contains("/status/"))
        .collect();
    assert!(
        after
            .iter()
            .all(|k| k.contains("/policies/") || k.contains("/history/") || k.contains("/events/")),
        "{after:?}"
    );
}

#[tokio::test]
async fn dry_run_diffs_without_storing() {
    let (etcd, cp) = setup().await;
    let reply = cp
        .post(
            "/v1/apply",
            json!({"resources": [upstream("echo", "127.0.0.1:8080")], "dryRun": true}),
        )
        .await;
    assert_eq!(reply.status, 200);
    let revision = reply.json["revision"].as_i64().unwrap();
    assert_eq!(
        reply.json,
        json!({"results": [{"id": "UpstreamPolicy/default/echo", "action": "created",
            "resourceVersion": 0, "diff": created_diff("127.0.0.1:8080")}], "revision": revision})
    );
    assert!(etcd.stored_keys(PREFIX).is_empty());
    assert_eq!(cp.get("/v1/UpstreamPolicy/default/echo").await.status, 404);

    // Invalid resources fail a dry run just the same.
    let reply = cp
        .post(
            "/v1/apply",
            json!({"resources": [upstream("echo", "nowhere")], "dryRun": true}),
        )
        .await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn the_openapi_document_and_health_are_served() {
    let (_etcd, cp) = setup().await;
    let reply = cp.get("/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json["openapi"], "3.0.3");
    assert!(reply.json["paths"]["/v1/apply"]["post"].is_object());
    assert_eq!(cp.get("/health/live").await.json, json!({"live": true}));
    let ready = cp.get("/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json["ready"], true);
    let reply = cp.get("/nowhere").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json["error"], "not-found");
}

/// The control plane names its build and reports its process beside its own metrics:
/// `bulwark_build_info{version, revision}` and the `process_*` every Prometheus client exports.
#[tokio::test]
async fn the_metrics_name_the_build_and_the_process() {
    let (_etcd, cp) = setup().await;
    // Requests the API counts by the route they matched, never by the raw path.
    assert_eq!(
        cp.get("/v1/UpstreamPolicy/default/missing").await.status,
        404
    );
    assert_eq!(cp.get("/v1/UpstreamPolicy/default/other").await.status, 404);
    assert_eq!(cp.get("/no/such/thing").await.status, 404);
    let http = bulwark_tests::client::http1_client(cp.http());
    let text = bulwark_tests::client::get(&http, &cp.url("/metrics"))
        .await
        .text();
    bulwark_tests::metrics::assert_build_and_process(&text);
    let value = |name, labels: &[(&str, &str)]| bulwark_tests::metrics::value(&text, name, labels);
    let api = |route, code| {
        value(
            "bulwark_api_requests_total",
            &[("route", route), ("method", "GET"), ("code", code)],
        )
    };
    assert_eq!(
        api("/v1/{kind}/{namespace}/{name}", "404"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(api("unmatched", "404"), Some(1.0), "{text}");
    assert_eq!(
        value(
            "bulwark_api_request_duration_seconds_count",
            &[
                ("route", "/v1/{kind}/{namespace}/{name}"),
                ("method", "GET")
            ]
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        !text.contains("/v1/UpstreamPolicy/default/missing"),
        "no raw path in a label: {text}"
    );
    // The index was loaded from etcd: the calls are counted and timed.
    for operation in ["listing", "watch"] {
        assert!(
            value(
                "bulwark_etcd_requests_total",
                &[("operation", operation), ("result", "ok")]
            )
            .is_some_and(|n| n >= 1.0),
            "{operation}: {text}"
        );
        assert!(
            value(
                "bulwark_etcd_request_duration_seconds_count",
                &[("operation", operation)]
            )
            .is_some_and(|n| n >= 1.0),
            "{operation}: {text}"
        );
    }
    // The same version and commit for `meshctl version`.
    let reply = cp.get("/v1/version").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json,
        json!({"version": bulwark_telemetry::VERSION, "revision": bulwark_telemetry::REVISION})
    );
}

#[tokio::test]
async fn the_grpc_operator_api_does_the_same() {
    use bulwark_proto::v1::operator_client::OperatorClient;
    use bulwark_proto::v1::{
        ApplyRequest, DeleteRequest, GetRequest, HistoryRequest, ListRequest, StatusRequest,
    };

    let (_etcd, cp) = setup().await;
    let mut client = OperatorClient::connect(cp.grpc_url()).await.unwrap();

    let applied = client
        .apply(ApplyRequest {
            resources: vec![upstream("echo", "127.0.0.1:8080").to_string()],
            dry_run: false,
            by: "grpc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let v1 = applied.revision;
    assert_eq!(applied.results.len(), 1);
    assert_eq!(applied.results[0].id, "UpstreamPolicy/default/echo");
    assert_eq!(applied.results[0].action, "created");
    assert_eq!(applied.results[0].resource_version, v1);
    assert_eq!(applied.results[0].diff, created_diff("127.0.0.1:8080"));

    let got = client
        .get(GetRequest {
            kind: "UpstreamPolicy".into(),
            namespace: "default".into(),
            name: "echo".into(),
        })
        .await
        .unwrap();
    assert!(got.metadata().get("x-bulwark-stale").is_none());
    let got = got.into_inner();
    assert_eq!(got.resource_version, v1);
    assert_eq!(
        serde_json::from_str::<Value>(&got.resource).unwrap(),
        stored_echo("127.0.0.1:8080", v1)
    );

    let listed = client
        .list(ListRequest {
            kind: "UpstreamPolicy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.items.len(), 1);

    // Errors: the same kinds, as gRPC codes.
    let mut stale = upstream("echo", "127.0.0.1:1");
    stale["metadata"]["resourceVersion"] = json!("1");
    let status = client
        .apply(ApplyRequest {
            resources: vec![stale.to_string()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted);
    assert_eq!(
        status.message(),
        format!(
            "UpstreamPolicy/default/echo: resourceVersion 1 does not match the current resourceVersion {v1}"
        )
    );
    assert_eq!(
        status
            .metadata()
            .get("x-bulwark-error")
            .unwrap()
            .to_str()
            .unwrap(),
        "conflict"
    );
    let status = client
        .apply(ApplyRequest {
            resources: vec![upstream("bad", "nowhere").to_string(), "{".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("resources[1]: invalid JSON"),
        "{}",
        status.message()
    );
    let status = client
        .apply(ApplyRequest {
            resources: vec![upstream("bad", "nowhere").to_string()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("1 problem found; nothing was stored: UpstreamPolicy/default/bad: spec.endpoints.static[0]: "),
        "{}",
        status.message()
    );
    let status = client
        .get(GetRequest {
            kind: "UpstreamPolicy".into(),
            namespace: "default".into(),
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let history = client
        .history(HistoryRequest {
            kind: "UpstreamPolicy".into(),
            namespace: "default".into(),
            name: "echo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.items.len(), 1);
    assert_eq!(
        (history.items[0].revision, history.items[0].op.as_str()),
        (v1, "created")
    );
    assert_eq!(history.items[0].by, "grpc");

    let deleted = client
        .delete(DeleteRequest {
            kind: "UpstreamPolicy".into(),
            namespace: "default".into(),
            name: "echo".into(),
            resource_version: v1,
            by: "grpc".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.id, "UpstreamPolicy/default/echo");
    assert!(deleted.revision > v1);

    // The index follows etcd through its watch: past the deletion only by its event and audit
    // record, once it has seen them.
    let status = bulwark_tests::wait_for("the audit record in the index", || {
        let mut client = client.clone();
        async move {
            let status = client.status(StatusRequest {}).await.ok()?.into_inner();
            (status.revision > deleted.revision + 1).then_some(status)
        }
    })
    .await;
    assert!(status.resources.is_empty());
    assert_eq!(status.revision, deleted.revision + 2);
}

#[tokio::test]
async fn history_keeps_the_last_twenty_changes() {
    let (etcd, cp) = setup().await;
    let mut revisions = Vec::new();
    for port in 1..=23 {
        let reply = cp
            .apply_json(vec![upstream("echo", &format!("127.0.0.1:{port}"))])
            .await;
        revisions.push(reply["revision"].as_i64().unwrap());
    }
    let reply = cp.get("/v1/UpstreamPolicy/default/echo/history").await;
    let listed: Vec<i64> = reply.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["revision"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = revisions.iter().rev().take(20).copied().collect();
    assert_eq!(listed, expected);
    assert_eq!(etcd.keys("/bulwark/v1/history/").len(), 20);
    // The oldest kept one can be rolled back to; a trimmed one cannot.
    let reply = cp
        .post(
            "/v1/UpstreamPolicy/default/echo/rollback",
            json!({"toRevision": expected[19]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let reply = cp
        .post(
            "/v1/UpstreamPolicy/default/echo/rollback",
            json!({"toRevision": revisions[0]}),
        )
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(etcd.keys("/bulwark/v1/history/").len(), 20);
}

/// Free text that reaches logs, history and events cannot forge a record: a `by` or a
/// `reason` with a line break, a control character, an escape sequence or a bidirectional
/// control is refused, naming the field and showing it escaped, and nothing changes.
#[tokio::test]
async fn text_that_would_forge_log_lines_or_history_is_refused_and_nothing_changes() {
    let (etcd, cp) = setup().await;
    let forged = "eve\n2026-12-06T00:00:00Z INFO admin approved \u{1b}[31m";
    let refusal = format!(
        "by must be one line of printable text (no line breaks, control characters or escape sequences), got {forged:?}"
    );

    // Apply: nothing stored.
    let reply = cp
        .post(
            "/v1/apply",
            json!({"resources": [upstream("echo", "127.0.0.1:1")], "by": forged}),
        )
        .await;
    assert_eq!(
        (reply.status, reply.json["message"].as_str()),
        (400, Some(refusal.as_str()))
    );
    assert!(etcd.stored_keys(PREFIX).is_empty());

    // Delete with a forged `by` in the query: the resource stays, its history unchanged.
    let stored = cp
        .apply_json(vec![
            upstream("echo", "127.0.0.1:1"),
            service("shop", "orders", 8080),
        ])
        .await;
    assert_eq!(stored["results"].as_array().map(Vec::len), Some(2));
    // What these requests may write; the elected replica writes the new service's status
    // (`status/…`) when it computes it, whatever they do.
    let written = || -> Vec<String> {
        etcd.stored_keys(PREFIX)
            .into_iter()
            .filter(|k| !k.contains("/status/"))
            .collect()
    };
    let keys_before = written();
    let reply = cp
        .delete("/v1/UpstreamPolicy/default/echo?by=eve%0A2026-12-06T00:00:00Z%20INFO%20forged%1B%5B31m")
        .await;
    assert_eq!(reply.status, 400, "{}", reply.json);
    assert_eq!(
        reply.json["message"],
        "by must be one line of printable text (no line breaks, control characters or escape sequences), got \"eve\\n2026-12-06T00:00:00Z INFO forged\\u{1b}[31m\""
    );
    assert_eq!(cp.get("/v1/UpstreamPolicy/default/echo").await.status, 200);

    // An override with a forged reason, or a right-to-left override in `by`: not stored.
    for body in [
        json!({"level": "EMERGENCY", "ttl": "5m", "reason": "outage\nINFO all clear", "by": "ops"}),
        json!({"level": "EMERGENCY", "ttl": "5m", "reason": "outage", "by": "ops\u{202e}nimda"}),
        json!({"level": "EMERGENCY", "ttl": "5m", "reason": "x".repeat(501), "by": "ops"}),
    ] {
        let reply = cp
            .rest(http::Method::PUT, "/v1/degrade/shop/orders", Some(body))
            .await;
        assert_eq!(reply.status, 400, "{}", reply.text());
    }
    let reply = cp
        .rest(
            http::Method::PUT,
            "/v1/degrade/shop/orders",
            Some(json!({"level": "EMERGENCY", "ttl": "5m", "reason": "a\u{1b}[2Jb", "by": "ops"})),
        )
        .await;
    assert_eq!(
        reply.json()["message"],
        "reason must be one line of printable text (no line breaks, control characters or escape sequences), got \"a\\u{1b}[2Jb\""
    );
    assert_eq!(written(), keys_before, "nothing was written");
    // What the log says of the refusals is escaped: no line of it starts with the forged
    // text, and no escape sequence reached it raw.
    let logs = cp.logs();
    assert!(
        logs.iter().all(|l| !l.starts_with("2026-12-06T00:00:00Z")
            && !l.starts_with("INFO all clear")
            && !l.contains("\u{1b}[31m")
            && !l.contains("\u{1b}[2J")),
        "{logs:#?}"
    );
}

/// A write whose body does not say it is JSON — a form or plain text, as a browser sends
/// cross-site without asking — is refused with 415 before anything reads it.
#[tokio::test]
async fn writes_without_a_json_content_type_are_refused_with_415() {
    use bulwark_tests::client;
    let (etcd, cp) = setup().await;
    let http = client::http1_client(cp.http());
    let body = json!({"resources": [upstream("echo", "127.0.0.1:1")]}).to_string();
    let send = |content_type: Option<&'static str>| {
        let mut req = client::request(http::Method::POST, "http://control-plane/v1/apply");
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        client::send(
            &http,
            req.body(client::full(body.clone())).expect("a request"),
        )
    };
    for (content_type, got) in [
        (Some("text/plain"), "\"text/plain\""),
        (
            Some("application/x-www-form-urlencoded"),
            "\"application/x-www-form-urlencoded\"",
        ),
        (None, "none"),
    ] {
        let res = send(content_type).await;
        assert_eq!(res.status, 415, "{content_type:?}");
        assert_eq!(
            res.json(),
            json!({"error": "unsupported-media-type", "message": format!("the request body must be JSON: send Content-Type: application/json (got {got})"), "details": []})
        );
    }
    assert!(etcd.stored_keys(PREFIX).is_empty(), "nothing was stored");
    let res = send(Some("application/json; charset=utf-8")).await;
    assert_eq!(res.status, 200, "{}", res.text());
}
