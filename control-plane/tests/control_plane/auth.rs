//! The operator API as an attacker and as its users meet it, on a replica with TLS and
//! authentication (development certificates and tokens): no credential or a bad one is a 401
//! on every route and RPC; roles bound through the API decide, per namespace, from the next
//! request on; the history, events and audit log name the authenticated user whatever `by` a
//! request claims; operators' client certificates, OIDC tokens and Kubernetes tokens
//! authenticate, and forged, foreign, expired or misaddressed ones are refused.

use std::path::Path;

use bulwark_proto::v1::operator_client::OperatorClient;
use bulwark_tests::kube::{KnownToken, TokenReviewApi};
use bulwark_tests::rest::Access;
use bulwark_tests::streams::TestCa;
use bulwark_tests::workload;
use bulwark_tests::{ControlPlane, Etcd, TempDir};
use http::Method;
use serde_json::{Value, json};

const PREFIX: &str = "/bulwark/v1";

/// etcd, a secure replica with a tokens file, and the tokens of its users.
struct Secured {
    dir: TempDir,
    etcd: Etcd,
    cp: ControlPlane,
}

const TOKENS: &str = "\
tokens:
  - { token: vera-token, user: vera, groups: [auditors] }
  - { token: pat-token, user: pat, groups: [pay-team] }
  - { token: olga-token, user: olga }
";

impl Secured {
    async fn start(extra: &[&str]) -> Secured {
        let dir = TempDir::new();
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(&tokens, TOKENS).expect("write the tokens");
        let etcd = Etcd::start().await;
        let mut args = vec!["--tokens-file", path(&tokens)];
        args.extend_from_slice(extra);
        let cp =
            ControlPlane::start_secure(&etcd.endpoint(), "auth-1", &dir.path().join("ca"), &args)
                .await;
        cp.wait_fresh().await;
        Secured { dir, etcd, cp }
    }

    fn as_user(&self, token: &str) -> Access {
        self.cp.access().with_token(Some(token))
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let reply = self
            .cp
            .call_as(
                &self.cp.access().with_token(token),
                method,
                path,
                body.as_ref(),
            )
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        (reply.status, reply.json)
    }

    /// As the development administrator.
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let reply = self.cp.call(method, path, body.as_ref()).await;
        assert!(
            reply.status < 300,
            "{path}: {} {}",
            reply.status,
            reply.json
        );
        reply.json
    }

    async fn bind(&self, name: &str, binding: Value) {
        self.admin(
            Method::PUT,
            &format!("/v1/rolebindings/{name}"),
            Some(binding),
        )
        .await;
    }

    fn stored(&self) -> Vec<String> {
        self.etcd
            .keys(PREFIX)
            .into_iter()
            .filter(|k| k.contains("/policies/"))
            .collect()
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn upstream(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "bulwark/v1",
        "kind": "UpstreamPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"endpoints": {"static": ["127.0.0.1:1"]}},
    })
}

fn service(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "bulwark/v1",
        "kind": "ServicePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {},
    })
}

/// `--metrics`: Prometheus scrapes without credentials on a port of its own, which serves
/// nothing of the API — an attacker who reaches it reads metrics and writes nothing.
#[tokio::test]
async fn the_metrics_listener_serves_metrics_without_credentials_and_nothing_of_the_api() {
    let s = Secured::start(&["--metrics", "127.0.0.1:0"]).await;
    let addr =
        s.cp.metrics_addr()
            .expect("the ready file names the metrics listener");
    let http = bulwark_tests::client::http1_client(addr);
    let scrape = bulwark_tests::client::get(&http, &format!("http://{addr}/metrics")).await;
    assert_eq!(scrape.status, 200);
    assert_eq!(
        scrape.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    bulwark_tests::metrics::assert_build_and_process(&scrape.text());
    let ready = bulwark_tests::client::get(&http, &format!("http://{addr}/health/ready")).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    // The API is not there, with or without a token.
    for (method, route) in [
        (Method::GET, "/v1/UpstreamPolicy"),
        (Method::POST, "/v1/apply"),
        (Method::GET, "/v1/auth/whoami"),
    ] {
        let req = bulwark_tests::client::request(method.clone(), &format!("http://{addr}{route}"))
            .header("authorization", "Bearer vera-token")
            .header("content-type", "application/json")
            .body(bulwark_tests::client::full(
                json!({"resources": [upstream("shop", "a")]}).to_string(),
            ))
            .expect("request");
        let reply = bulwark_tests::client::send(&http, req).await;
        assert_eq!(reply.status, 404, "{method} {route}");
        assert_eq!(
            reply.json()["message"],
            format!(
                "no route for {method} {route}: the metrics listener serves GET /metrics and /health/* only (the API is on --http)"
            )
        );
    }
    assert!(
        s.etcd.keys("/bulwark/v1/policies").is_empty(),
        "nothing stored"
    );
    // On the API port /metrics still needs a caller allowed it.
    let (status, _) = s.call(None, Method::GET, "/metrics", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn no_credential_or_a_bad_one_is_a_401_on_every_route_and_rpc_and_nothing_is_stored() {
    let s = Secured::start(&[]).await;
    let routes: &[(Method, &str, Option<Value>)] = &[
        (
            Method::POST,
            "/v1/apply",
            Some(json!({"resources": [upstream("shop", "a")]})),
        ),
        (Method::GET, "/v1/status", None),
        (Method::GET, "/v1/levels", None),
        (Method::GET, "/v1/levels/shop/orders", None),
        (Method::GET, "/v1/events", None),
        (Method::GET, "/v1/pods", None),
        (
            Method::PUT,
            "/v1/degrade/mesh",
            Some(json!({"level": "EMERGENCY", "ttl": "1m", "reason": "x"})),
        ),
        (Method::DELETE, "/v1/degrade/mesh", None),
        (
            Method::PUT,
            "/v1/degrade/shop/orders",
            Some(json!({"level": "EMERGENCY", "ttl": "1m", "reason": "x"})),
        ),
        (Method::DELETE, "/v1/degrade/shop/orders", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/v1/UpstreamPolicy", None),
        (Method::GET, "/v1/UpstreamPolicy/shop/a", None),
        (Method::DELETE, "/v1/UpstreamPolicy/shop/a", None),
        (Method::GET, "/v1/UpstreamPolicy/shop/a/history", None),
        (
            Method::POST,
            "/v1/UpstreamPolicy/shop/a/rollback",
            Some(json!({"toRevision": 2})),
        ),
        (Method::GET, "/v1/rolebindings", None),
        (Method::GET, "/v1/rolebindings/x", None),
        (
            Method::PUT,
            "/v1/rolebindings/x",
            Some(json!({"role": "admin", "subjects": [{"kind": "User", "name": "eve"}]})),
        ),
        (Method::DELETE, "/v1/rolebindings/x", None),
        (Method::GET, "/v1/audit", None),
        (Method::GET, "/v1/auth/whoami", None),
        (Method::GET, "/v1/auth/can-i?verb=get&resource=pods", None),
        (Method::GET, "/v1/version", None),
        (Method::GET, "/v1/diagnostics", None),
        (Method::GET, "/v1/watch/status", None),
        (Method::GET, "/v1/watch/events", None),
        (Method::GET, "/v1/watch/UpstreamPolicy", None),
    ];
    for (method, route, body) in routes {
        let reply =
            s.cp.call_as(
                &s.cp.access().with_token(None),
                method.clone(),
                route,
                body.as_ref(),
            )
            .await
            .expect("an answer");
        assert_eq!(reply.status, 401, "{method} {route}: {}", reply.json);
        assert_eq!(reply.json["error"], "unauthenticated", "{route}");
        assert_eq!(
            reply.json["message"],
            "no credentials: send a bearer token (Authorization: Bearer …) or a client certificate"
        );
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"bulwark\"")
        );
        let (status, json) = s
            .call(Some("forged-token"), method.clone(), route, body.clone())
            .await;
        assert_eq!(status, 401, "{route}: {json}");
        assert_eq!(
            json["message"],
            "the bearer token is not known to this control plane"
        );
    }
    // Probes stay open.
    for open in ["/health/live", "/health/ready", "/openapi.json"] {
        let (status, _) = s.call(None, Method::GET, open, None).await;
        assert_eq!(status, 200, "{open}");
    }
    assert!(
        s.stored().is_empty(),
        "nothing was stored: {:?}",
        s.stored()
    );
    assert!(s.etcd.keys(&format!("{PREFIX}/rbac/")).is_empty());
    assert!(s.etcd.keys(&format!("{PREFIX}/overrides/")).is_empty());

    // gRPC: the same, without and with a bad token.
    let channel = workload::channel(&s.cp.grpc_url(), &s.cp.access().with_token(None))
        .await
        .expect("TLS to gRPC");
    let mut client = OperatorClient::new(channel);
    {
        use bulwark_proto::v1 as pb;
        let codes = [
            client.apply(pb::ApplyRequest::default()).await.map(|_| ()),
            client.get(pb::GetRequest::default()).await.map(|_| ()),
            client.list(pb::ListRequest::default()).await.map(|_| ()),
            client
                .delete(pb::DeleteRequest::default())
                .await
                .map(|_| ()),
            client
                .history(pb::HistoryRequest::default())
                .await
                .map(|_| ()),
            client
                .rollback(pb::RollbackRequest::default())
                .await
                .map(|_| ()),
            client
                .status(pb::StatusRequest::default())
                .await
                .map(|_| ()),
            client
                .levels(pb::LevelsRequest::default())
                .await
                .map(|_| ()),
            client
                .events(pb::EventsRequest::default())
                .await
                .map(|_| ()),
            client
                .degrade(pb::DegradeRequest::default())
                .await
                .map(|_| ()),
            client
                .clear_degrade(pb::ClearDegradeRequest::default())
                .await
                .map(|_| ()),
        ];
        for (i, result) in codes.into_iter().enumerate() {
            let status = result.expect_err("every RPC needs credentials");
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "RPC {i}: {status:?}"
            );
        }
    }
    let mut request = tonic::Request::new(bulwark_proto::v1::ApplyRequest {
        resources: vec![upstream("shop", "a").to_string()],
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        "Bearer forged-token".parse().expect("metadata"),
    );
    let status = client.apply(request).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "the bearer token is not known to this control plane"
    );
    let mut request = tonic::Request::new(bulwark_proto::v1::LevelsRequest {
        namespace: "shop".into(),
    });
    request.metadata_mut().insert(
        "authorization",
        "Bearer olga-token".parse().expect("metadata"),
    );
    let status = client
        .levels(request)
        .await
        .expect_err("olga holds no role yet");
    assert_eq!(
        status.message(),
        "olga may not list levels in namespace shop (holds: no role)"
    );
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(s.stored().is_empty());
    assert!(
        s.cp.metric(
            "bulwark_api_authentication_failures_total",
            &[("reason", "missing")]
        )
        .await
        .unwrap_or(0.0)
            >= routes.len() as f64
    );
}

#[tokio::test]
async fn roles_decide_per_namespace_from_the_next_request_and_records_name_the_real_user() {
    let s = Secured::start(&[]).await;
    s.bind(
        "auditors",
        json!({"role": "viewer", "subjects": [{"kind": "Group", "name": "auditors"}]}),
    )
    .await;
    s.bind("pay-editors", json!({"role": "editor", "namespace": "payments", "subjects": [{"kind": "Group", "name": "pay-team"}]})).await;
    s.bind(
        "oncall",
        json!({"role": "operator", "subjects": [{"kind": "User", "name": "olga"}]}),
    )
    .await;
    s.admin(
        Method::POST,
        "/v1/apply",
        Some(json!({"resources": [service("shop", "orders")]})),
    )
    .await;

    // A viewer reads but cannot apply: 403 naming the permission, and nothing stored.
    let (status, json) = s
        .call(
            Some("vera-token"),
            Method::GET,
            "/v1/ServicePolicy/shop/orders",
            None,
        )
        .await;
    assert_eq!(status, 200, "{json}");
    let (status, json) = s
        .call(
            Some("vera-token"),
            Method::POST,
            "/v1/apply",
            Some(json!({"resources": [upstream("payments", "gw")]})),
        )
        .await;
    assert_eq!(status, 403, "{json}");
    assert_eq!(json["error"], "forbidden");
    assert_eq!(
        json["message"],
        "vera may not apply upstreampolicies in namespace payments (holds: viewer cluster-wide)"
    );
    // An editor of payments writes there — recorded as pat, whatever `by` says — and not in shop.
    let (status, json) = s
        .call(
            Some("pat-token"),
            Method::POST,
            "/v1/apply",
            Some(json!({"resources": [upstream("payments", "gw")], "by": "mallory"})),
        )
        .await;
    assert_eq!(status, 200, "{json}");
    let history = s
        .admin(Method::GET, "/v1/UpstreamPolicy/payments/gw/history", None)
        .await;
    assert_eq!(history["items"][0]["by"], "pat");
    let (status, json) = s
        .call(
            Some("pat-token"),
            Method::POST,
            "/v1/apply",
            Some(json!({"resources": [upstream("shop", "gw")]})),
        )
        .await;
    assert_eq!(status, 403, "{json}");
    assert_eq!(
        json["message"],
        "pat may not apply upstreampolicies in namespace shop (holds: editor in payments)"
    );
    let (status, _) = s
        .call(
            Some("pat-token"),
            Method::PUT,
            "/v1/degrade/payments/gw",
            Some(json!({"level": "EMERGENCY", "ttl": "1m", "reason": "x"})),
        )
        .await;
    assert_eq!(status, 403, "an editor cannot force levels");
    // The control plane's own diagnostics are for whoever may read the whole mesh's status;
    // `force` does not get a delete past the role either.
    let (status, json) = s
        .call(Some("pat-token"), Method::GET, "/v1/diagnostics", None)
        .await;
    assert_eq!(status, 403, "{json}");
    assert_eq!(json["error"], "forbidden");
    let (status, json) = s
        .call(Some("vera-token"), Method::GET, "/v1/diagnostics", None)
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["etcd"]["reachable"], true, "{json}");
    // A watch is a read like any other: pat may not watch shop (refused before anything is
    // streamed), and a watch of every namespace streams pat only what pat may list.
    let (status, json) = s
        .call(
            Some("pat-token"),
            Method::GET,
            "/v1/watch/UpstreamPolicy?namespace=shop&timeoutSeconds=1",
            None,
        )
        .await;
    assert_eq!(status, 403, "{json}");
    assert_eq!(
        json["message"],
        "pat may not list upstreampolicies in namespace shop (holds: editor in payments)"
    );
    let reply =
        s.cp.call_as(
            &s.cp.access().with_token(Some("pat-token")),
            Method::GET,
            "/v1/watch/UpstreamPolicy?timeoutSeconds=1",
            None,
        )
        .await
        .expect("an answer");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    let seen: Vec<_> = reply
        .lines
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["object"]["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert!(!seen.is_empty(), "the watch streams what exists");
    assert!(
        seen.iter().all(|(t, ns)| t == "ADDED" && ns == "payments"),
        "{seen:?}"
    );
    let (status, json) = s
        .call(
            Some("pat-token"),
            Method::DELETE,
            "/v1/ServicePolicy/shop/orders?force=true",
            None,
        )
        .await;
    assert_eq!(status, 403, "{json}");
    assert_eq!(
        s.stored(),
        [
            format!("{PREFIX}/policies/ServicePolicy/shop/orders"),
            format!("{PREFIX}/policies/UpstreamPolicy/payments/gw")
        ]
    );

    // An operator forces a level; the event names olga, not the `by` of the request.
    let (status, json) = s
        .call(Some("olga-token"), Method::PUT, "/v1/degrade/shop/orders", Some(json!({"level": "EMERGENCY", "ttl": "1m", "reason": "load test", "by": "someone-else"})))
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["override"]["by"], "olga");
    // The override's event (the level it forces may add its own, later, events).
    let event = bulwark_tests::wait_for("the override's event", || async {
        let events = s
            .admin(Method::GET, "/v1/events?service=shop/orders", None)
            .await;
        events["events"]
            .as_array()?
            .iter()
            .find(|e| e["kind"] == "override")
            .cloned()
    })
    .await;
    assert_eq!(event["by"], "olga", "{event}");
    assert!(
        event["text"].as_str().unwrap_or("").contains("by olga"),
        "{event}"
    );
    let (status, _) = s
        .call(
            Some("olga-token"),
            Method::POST,
            "/v1/apply",
            Some(json!({"resources": [upstream("shop", "x")]})),
        )
        .await;
    assert_eq!(status, 403, "an operator cannot apply policies");

    // A binding applied through the API counts from the next request.
    let (status, _) = s
        .call(
            Some("vera-token"),
            Method::DELETE,
            "/v1/UpstreamPolicy/payments/gw",
            None,
        )
        .await;
    assert_eq!(status, 403);
    s.bind("vera-pay", json!({"role": "editor", "namespace": "payments", "subjects": [{"kind": "User", "name": "vera"}]})).await;
    let (status, json) = s
        .call(
            Some("vera-token"),
            Method::DELETE,
            "/v1/UpstreamPolicy/payments/gw",
            None,
        )
        .await;
    assert_eq!(status, 200, "{json}");
    // Only administrators manage bindings.
    let (status, json) = s
        .call(
            Some("pat-token"),
            Method::PUT,
            "/v1/rolebindings/mine",
            Some(json!({"role": "admin", "subjects": [{"kind": "User", "name": "pat"}]})),
        )
        .await;
    assert_eq!(status, 403, "{json}");
    assert_eq!(
        json["message"],
        "pat may not apply rolebindings cluster-wide (holds: editor in payments)"
    );

    // can-i and whoami tell a user what they may do.
    let (_, can) = s
        .call(
            Some("pat-token"),
            Method::GET,
            "/v1/auth/can-i?verb=apply&resource=upstreampolicies&namespace=payments",
            None,
        )
        .await;
    assert_eq!(can["allowed"], true);
    let (_, cannot) = s
        .call(
            Some("pat-token"),
            Method::GET,
            "/v1/auth/can-i?verb=apply&resource=upstreampolicies&namespace=shop",
            None,
        )
        .await;
    assert_eq!(cannot["allowed"], false);
    let (_, me) = s
        .call(Some("pat-token"), Method::GET, "/v1/auth/whoami", None)
        .await;
    assert_eq!(
        me,
        json!({"user": "pat", "groups": ["pay-team"], "method": "token", "roles": ["editor in payments"]})
    );

    // The audit log: every write with its user, where it came from and how it ended.
    let audit = s.admin(Method::GET, "/v1/audit?limit=100", None).await;
    let lines: Vec<String> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}/{} {}",
                r["user"].as_str().unwrap_or(""),
                r["verb"].as_str().unwrap_or(""),
                r["resource"].as_str().unwrap_or(""),
                r["namespace"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or(""),
                r["result"].as_str().unwrap_or("")
            )
        })
        .collect();
    for expected in [
        "vera apply upstreampolicies payments/gw forbidden",
        "pat apply upstreampolicies payments/gw ok",
        "pat apply upstreampolicies shop/gw forbidden",
        "pat apply overrides payments/gw forbidden",
        "olga apply overrides shop/orders ok",
        "vera delete upstreampolicies payments/gw ok",
        "dev-admin apply rolebindings /oncall ok",
        "pat apply rolebindings /mine forbidden",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "no audit record {expected:?} in {lines:#?}"
        );
    }
    assert!(
        audit["items"][0]["from"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:")
    );
    // A viewer cannot read the audit log.
    let (status, _) = s
        .call(Some("vera-token"), Method::GET, "/v1/audit", None)
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn operator_client_certificates_authenticate_and_foreign_or_expired_ones_are_refused() {
    let operators = TestCa::new();
    let dir = TempDir::new();
    let ca_file = dir.path().join("operators.pem");
    std::fs::write(&ca_file, operators.cert_pem()).expect("write the operators' CA");
    let s = Secured::start(&["--client-ca", path(&ca_file)]).await;
    let (chain, key) = operators.leaf_pem_with(|p| {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "carol");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "platform");
    });
    let carol =
        s.cp.access()
            .with_certificate(chain.as_bytes(), key.as_bytes());
    let me =
        s.cp.call_as(&carol, Method::GET, "/v1/auth/whoami", None)
            .await
            .expect("an answer");
    assert_eq!(me.status, 200, "{}", me.json);
    assert_eq!(me.json["user"], "carol");
    assert_eq!(me.json["groups"], json!(["platform"]));
    assert_eq!(me.json["method"], "certificate");

    let foreign = TestCa::new();
    let (chain, key) = foreign.leaf_pem_with(|p| {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "carol");
    });
    let err =
        s.cp.call_as(
            &s.cp
                .access()
                .with_certificate(chain.as_bytes(), key.as_bytes()),
            Method::GET,
            "/v1/auth/whoami",
            None,
        )
        .await
        .expect_err("a certificate from another CA is refused in the handshake");
    assert!(
        err.contains("UnknownCA") || err.contains("certificate"),
        "{err}"
    );
    let (chain, key) = operators.leaf_pem_with(|p| {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "carol");
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(2);
        p.not_after = now - time::Duration::days(1);
    });
    let err =
        s.cp.call_as(
            &s.cp
                .access()
                .with_certificate(chain.as_bytes(), key.as_bytes()),
            Method::GET,
            "/v1/auth/whoami",
            None,
        )
        .await
        .expect_err("an expired certificate is refused in the handshake");
    assert!(
        err.contains("Expired") || err.contains("certificate"),
        "{err}"
    );
    // A client that does not trust the control plane's CA does not get to send anything.
    let wrong_ca = Access {
        ca: Some(foreign.cert_pem().into_bytes()),
        ..s.as_user("pat-token")
    };
    let err =
        s.cp.call_as(&wrong_ca, Method::GET, "/v1/auth/whoami", None)
            .await
            .expect_err("refused");
    assert!(err.contains("UnknownIssuer"), "{err}");
    let _ = &s.dir;
}

/// An ES256 key, its JWKS entry under `kid`, and tokens signed with it.
struct Issuer {
    key: jsonwebtoken::EncodingKey,
    jwk: Value,
}

impl Issuer {
    fn new(kid: &str) -> Issuer {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let raw = key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": kid, "alg": "ES256", "use": "sig"});
        Issuer {
            key: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
                .expect("an EC key"),
            jwk,
        }
    }

    fn token(&self, kid: &str, claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("a token")
    }
}

#[tokio::test]
async fn oidc_tokens_are_checked_for_signature_issuer_audience_expiry_and_key_id() {
    let dir = TempDir::new();
    let issuer = Issuer::new("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [issuer.jwk]}).to_string()).expect("write the JWKS");
    let s = Secured::start(&[
        "--oidc-issuer",
        "https://login.example.test",
        "--oidc-audience",
        "bulwark",
        "--oidc-jwks-file",
        path(&jwks),
        "--oidc-username-claim",
        "email",
    ])
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let claims = |aud: &str, exp: u64| json!({"iss": "https://login.example.test", "aud": aud, "exp": exp, "email": "dana@example.test", "groups": ["sre"]});
    let good = issuer.token("k1", claims("bulwark", now + 600));
    let (status, me) = s
        .call(Some(&good), Method::GET, "/v1/auth/whoami", None)
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"], "dana@example.test");
    assert_eq!(me["groups"], json!(["sre"]));
    assert_eq!(me["method"], "oidc");

    let refused = |token: String| {
        let s = &s;
        async move {
            let (status, json) = s
                .call(Some(&token), Method::GET, "/v1/auth/whoami", None)
                .await;
            assert_eq!(status, 401, "{json}");
            json["message"].as_str().unwrap_or_default().to_string()
        }
    };
    assert_eq!(
        refused(issuer.token("k1", claims("another-api", now + 600))).await,
        "the OIDC token was refused: the token is not for the audience \"bulwark\""
    );
    assert_eq!(
        refused(issuer.token("k1", claims("bulwark", now - 3600))).await,
        "the OIDC token was refused: the token expired"
    );
    assert_eq!(
        refused(issuer.token("k9", claims("bulwark", now + 600))).await,
        "the OIDC token was refused: the key id \"k9\" is not among the issuer's keys"
    );
    let other = Issuer::new("k1");
    assert_eq!(
        refused(other.token("k1", claims("bulwark", now + 600))).await,
        "the OIDC token was refused: the signature does not verify"
    );
    let mut wrong_issuer = claims("bulwark", now + 600);
    wrong_issuer["iss"] = json!("https://evil.example.test");
    assert_eq!(
        refused(issuer.token("k1", wrong_issuer)).await,
        "the OIDC token was refused: the token is not from the issuer \"https://login.example.test\""
    );
}

#[tokio::test]
async fn kubernetes_tokens_are_checked_with_token_review_and_bound_as_service_accounts() {
    // A stand-in for the Kubernetes API's TokenReview (no API server runs here).
    let api = TokenReviewApi::start(
        "control-plane-token",
        vec![KnownToken {
            token: "deployer-token".into(),
            namespace: "ci".into(),
            service_account: "deployer".into(),
            audiences: vec!["bulwark-api".into()],
        }],
    )
    .await;
    let dir = TempDir::new();
    let kube_ca = dir.path().join("kube-ca.pem");
    std::fs::write(&kube_ca, api.ca_pem()).expect("write the CA");
    let own = dir.path().join("token");
    std::fs::write(&own, "control-plane-token").expect("write the token");
    let s = Secured::start(&[
        "--kube-api",
        &api.url(),
        "--kube-ca",
        path(&kube_ca),
        "--kube-token",
        path(&own),
        "--token-review-audience",
        "bulwark-api",
    ])
    .await;
    let (status, me) = s
        .call(Some("deployer-token"), Method::GET, "/v1/auth/whoami", None)
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"], "system:serviceaccount:ci:deployer");
    assert_eq!(me["method"], "token-review");
    let (status, _) = s
        .call(
            Some("deployer-token"),
            Method::POST,
            "/v1/apply",
            Some(json!({"resources": [upstream("shop", "a")]})),
        )
        .await;
    assert_eq!(status, 403);
    s.bind("ci-deployer", json!({"role": "editor", "namespace": "shop", "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"}]})).await;
    let (status, json) = s
        .call(
            Some("deployer-token"),
            Method::POST,
            "/v1/apply",
            Some(json!({"resources": [upstream("shop", "a")]})),
        )
        .await;
    assert_eq!(status, 200, "{json}");
    let (status, json) = s
        .call(Some("unknown-token"), Method::GET, "/v1/auth/whoami", None)
        .await;
    assert_eq!(status, 401, "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("the Kubernetes API refused the token"),
        "{json}"
    );
}

/// Runs the real meshctl with `args` and `env`; (exit code, stdout, stderr).
fn meshctl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let bin = bulwark_tests::control_plane::control_plane_bin().with_file_name("meshctl");
    let out = std::process::Command::new(&bin)
        .env_remove("BULWARK_SERVER")
        .env_remove("BULWARK_TOKEN")
        .env_remove("BULWARK_CONTEXT")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn meshctl_uses_contexts_like_kubectl_and_says_what_failed() {
    let s = Secured::start(&[]).await;
    let ca_dir = s.dir.path().join("ca");
    let config = s.dir.path().join("meshctl-config");
    let config = path(&config).to_string();
    let env = [("BULWARK_CONFIG", config.as_str())];
    let (code, out, err) = meshctl(
        &[
            "config",
            "set-context",
            "dev",
            "--server",
            &s.cp.http_url(),
            "--ca",
            path(&ca_dir.join("root.pem")),
            "--token-file",
            path(&ca_dir.join("admin.token")),
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("context dev set in {config}\n"));
    let (code, out, _) = meshctl(&["config", "current-context"], &env);
    assert_eq!((code, out.as_str()), (0, "dev\n"));
    let (code, out, err) = meshctl(&["auth", "whoami"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("user:   dev-admin\ngroups: bulwark:admins\nvia:    token\n"),
        "{out}"
    );
    let (code, out, err) = meshctl(
        &[
            "rolebinding",
            "set",
            "pay-editors",
            "--role",
            "editor",
            "-n",
            "payments",
            "--group",
            "pay-team",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "rolebinding pay-editors: editor in payments\n");

    // Another user's token over the same context.
    let (code, out, _) = meshctl(
        &[
            "--token",
            "pat-token",
            "auth",
            "can-i",
            "apply",
            "upstreampolicies",
            "-n",
            "payments",
        ],
        &env,
    );
    assert_eq!((code, out.as_str()), (0, "yes\n"));
    let (code, out, err) = meshctl(
        &[
            "--token",
            "pat-token",
            "auth",
            "can-i",
            "apply",
            "upstreampolicies",
            "-n",
            "shop",
        ],
        &env,
    );
    assert_eq!((code, out.as_str()), (1, "no\n"));
    assert_eq!(
        err,
        "pat may not apply upstreampolicies in namespace shop (holds: editor in payments)\n"
    );
    let policy = s.dir.path().join("shop.yaml");
    std::fs::write(
        &policy,
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: gw, namespace: shop }\nspec:\n  endpoints: { static: [\"127.0.0.1:1\"] }\n",
    )
    .expect("write the policy");
    let (code, _, err) = meshctl(
        &["--token", "pat-token", "apply", "-f", path(&policy)],
        &env,
    );
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "meshctl: forbidden: pat may not apply upstreampolicies in namespace shop (holds: editor in payments)\n"
    );
    let (code, _, err) = meshctl(&["--token", "stolen", "get", "up"], &env);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "meshctl: not authenticated: the bearer token is not known to this control plane\nmeshctl: give a token (--token-file, $BULWARK_TOKEN or the context's tokenFile) or a client certificate (--client-cert and --client-key)\n"
    );
    // A CA that did not sign the control plane's certificate.
    let foreign = s.dir.path().join("foreign.pem");
    std::fs::write(&foreign, TestCa::new().cert_pem()).expect("write a foreign CA");
    let (code, _, err) = meshctl(&["--ca", path(&foreign), "get", "up"], &env);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "meshctl: TLS with the control plane at {} failed: the control plane's certificate is not signed by a CA meshctl trusts (UnknownIssuer): give its CA with --ca or the context's ca\n",
            s.cp.http_url()
        )
    );
    // The audit log, as the administrator.
    let (code, out, err) = meshctl(&["audit", "-A"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("TIME"), "{out}");
    assert!(
        out.lines().any(|l| l.contains("dev-admin")
            && l.contains("rolebindings")
            && l.contains("pay-editors")
            && l.ends_with("ok")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(" pat ") && l.contains("shop/gw") && l.contains("forbidden")),
        "{out}"
    );
}

#[tokio::test]
async fn oversized_bodies_and_write_floods_are_refused_with_clear_errors() {
    let s = Secured::start(&[
        "--max-request-body",
        "4096",
        "--writes-per-second",
        "1",
        "--write-burst",
        "2",
    ])
    .await;
    s.bind("pay-editors", json!({"role": "editor", "namespace": "payments", "subjects": [{"kind": "Group", "name": "pay-team"}]})).await;
    // Past the body limit: a JSON 413 naming both sizes, and nothing stored.
    let mut big = upstream("payments", "big");
    big["metadata"]["labels"] = json!({"padding": "x".repeat(5000)});
    let (status, json) = s
        .call(
            Some("pat-token"),
            Method::POST,
            "/v1/apply",
            Some(json!({"resources": [big]})),
        )
        .await;
    assert_eq!(status, 413, "{json}");
    assert_eq!(json["error"], "too-large");
    assert!(
        json["message"]
            .as_str()
            .unwrap_or("")
            .ends_with("bytes; this control plane accepts at most 4096 bytes (--max-request-body)"),
        "{json}"
    );
    // Two writes at once, then one a second: the third in a row is a 429 with Retry-After.
    for name in ["a", "b"] {
        let (status, json) = s
            .call(
                Some("pat-token"),
                Method::POST,
                "/v1/apply",
                Some(json!({"resources": [upstream("payments", name)]})),
            )
            .await;
        assert_eq!(status, 200, "{json}");
    }
    let reply =
        s.cp.call_as(
            &s.as_user("pat-token"),
            Method::POST,
            "/v1/apply",
            Some(&json!({"resources": [upstream("payments", "c")]})),
        )
        .await
        .expect("an answer");
    assert_eq!(reply.status, 429, "{}", reply.json);
    assert_eq!(reply.json["error"], "rate-limited");
    assert!(
        reply.json["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("pat made too many writes: try again in "),
        "{}",
        reply.json
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        s.stored()
            .iter()
            .filter(|k| k.contains("/policies/"))
            .count(),
        2,
        "neither the oversized nor the rate-limited apply was stored"
    );
    // Another user has a bucket of their own.
    let reply =
        s.cp.call(
            Method::POST,
            "/v1/apply",
            Some(&json!({"resources": [upstream("shop", "x")]})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
}

/// An HTTPS server of a JWKS document the test can replace, counting fetches: the OIDC
/// issuer's keys endpoint.
struct JwksServer {
    addr: std::net::SocketAddr,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ca: TestCa,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("its address");
        let ca = TestCa::new();
        let tls = tokio_rustls::TlsAcceptor::from(ca.server_config(&["127.0.0.1"]));
        let body = std::sync::Arc::new(std::sync::Mutex::new(body));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (body.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, served, counted) = (tls.clone(), served.clone(), counted.clone());
                connections.spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |_req: hyper::Request<hyper::body::Incoming>| {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let text = served.lock().expect("the JWKS").clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from(text)),
                                ))
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            body,
            fetches,
            ca,
            task,
        }
    }
}

#[tokio::test]
async fn oidc_keys_from_a_url_are_fetched_again_for_a_key_not_seen_yet() {
    let first = Issuer::new("k1");
    let server = JwksServer::start(json!({"keys": [first.jwk]}).to_string()).await;
    let dir = TempDir::new();
    let ca = dir.path().join("oidc-ca.pem");
    std::fs::write(&ca, server.ca.cert_pem()).expect("write the CA");
    let url = format!("https://{}/jwks", server.addr);
    let s = Secured::start(&[
        "--oidc-issuer",
        "https://login.example.test",
        "--oidc-audience",
        "bulwark",
        "--oidc-jwks-url",
        &url,
        "--oidc-ca",
        path(&ca),
    ])
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        + 600;
    let claims =
        json!({"iss": "https://login.example.test", "aud": "bulwark", "exp": exp, "sub": "erin"});
    let (status, me) = s
        .call(
            Some(&first.token("k1", claims.clone())),
            Method::GET,
            "/v1/auth/whoami",
            None,
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"], "erin");
    let fetched = server.fetches.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fetched, 1);
    // The issuer rotates to a new key: tokens naming it are accepted once the keys are fetched
    // again (at most every 10 s for keys not seen yet); the old key is gone.
    let second = Issuer::new("k2");
    *server.body.lock().expect("the JWKS") = json!({"keys": [second.jwk]}).to_string();
    let rotated = second.token("k2", claims.clone());
    bulwark_tests::eventually(bulwark_tests::PATIENCE, || async {
        let (status, _) = s
            .call(Some(&rotated), Method::GET, "/v1/auth/whoami", None)
            .await;
        (status == 200).then_some(())
    })
    .await;
    assert!(server.fetches.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let (status, json) = s
        .call(
            Some(&first.token("k1", claims)),
            Method::GET,
            "/v1/auth/whoami",
            None,
        )
        .await;
    assert_eq!(status, 401, "{json}");
    assert_eq!(
        json["message"],
        "the OIDC token was refused: the key id \"k1\" is not among the issuer's keys"
    );
}
