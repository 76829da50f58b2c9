//! Tests of policy validation: good policies pass, and every problem of a bad one is reported
//! with its exact `path: message`.

use crate::policy::{Backoff, FieldError, Resource, Retry, ValidationErrors, parse_yaml};

/// Every problem of the single resource in `yaml`, as `path: message` lines.
fn problems(yaml: &str) -> Vec<String> {
    let resources = parse_yaml(yaml).expect("test policy parses");
    assert_eq!(resources.len(), 1, "one resource per test policy");
    match resources[0].validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

/// Problems of an UpstreamPolicy `payments/midtrans` with the given (indented) spec.
fn upstream(spec: &str) -> Vec<String> {
    problems(&format!(
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: midtrans, namespace: payments }}\nspec:\n{spec}"
    ))
}

/// Problems of a ServicePolicy `mrg/order-orchestrator` with the given (indented) spec.
fn service(spec: &str) -> Vec<String> {
    problems(&format!(
        "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: order-orchestrator, namespace: mrg }}\nspec:\n{spec}"
    ))
}

const ENDPOINTS: &str = "  endpoints: { dns: midtrans.payments.svc.cluster.local:8080 }\n";

/// Problems of an upstream with valid endpoints plus `rest`.
fn upstream_with(rest: &str) -> Vec<String> {
    upstream(&format!("{ENDPOINTS}{rest}"))
}

fn none() -> Vec<String> {
    Vec::new()
}

#[test]
fn the_design_documents_policies_are_valid() {
    let upstream = r#"
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata:
  name: payment-processor
  namespace: payments
  labels: { team: payments, app.kubernetes.io/part-of: checkout }
  annotations: { bulwark.dev/owner: "payments team <payments@example.com>" }
spec:
  endpoints:
    dns: payment-processor.payments.svc.cluster.local:8080
  protocol: auto
  hostRewrite: false
  timeouts: { request: 10s, perTry: 3s, connect: 1s }
  retry:
    maxAttempts: 3
    backoff: { initial: 200ms, max: 5s, multiplier: 2.0, jitter: 30% }
    maxElapsed: 30s
    retryOn: [connect-failure, reset, gateway-error, "429", "408", grpc-unavailable]
    nonIdempotent: never
    budget: { ratio: 20%, minPerSecond: 10, window: 10s }
    honorRetryAfter: true
    replayBufferBytes: 65536
  circuitBreaker:
    window: 10s
    buckets: 10
    minRequests: 10
    failureRate: 50%
    slowCall: { duration: 2s, rate: 80% }
    openFor: 30s
    maxOpenFor: 5m
    halfOpenProbes: 3
    failureOn: [5xx, connect-failure, reset, timeout, grpc-unavailable, grpc-internal]
  outlierDetection: { consecutiveFailures: 5, baseEjection: 30s, maxEjectedPercent: 50 }
  limits: { maxConcurrent: 1000, maxPending: 100 }
  fallback:
    failover: [xendit, nicepay.payments]
    response:
      status: 503
      body: "payments temporarily unavailable"
      grpcStatus: unavailable
      headers: { retry-after: "30" }
  routes:
    - name: get-status
      match: { grpcMethod: /payments.v1.Payments/GetStatus }
      retry: { maxAttempts: 5 }
    - match: { grpcMethod: /payments.v1.Refunds/ }
      idempotent: true
    - match: { pathPrefix: /charge, method: POST }
      retry: { nonIdempotent: with-idempotency-key }
    - match: { path: /health }
      timeouts: { request: 1s }
"#;
    assert_eq!(problems(upstream), none());

    let service = r#"
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: { name: order-orchestrator, namespace: mrg }
spec:
  app: { port: 8080, healthCheck: { http: /health, interval: 5s, timeout: 1s } }
  dependencies:
    midtrans: { critical: true }
    database: { critical: true }
    smtp: {}
    whatsapp.notifications: {}
  unhealthyWhen: { breakerOpenPods: 50%, successRateBelow: 90%, minRequests: 20 }
  levels:
    EMERGENCY: { unhealthyDependencies: 3 }
    SEVERE:    { unhealthyDependencies: 2, criticalUnhealthy: 1 }
    DEGRADED:  { unhealthyDependencies: 1 }
  capabilities:
    acceptOrders: all(midtrans, database)
    sendNotifications: any(smtp, whatsapp.notifications)
    maintenanceBanner: not(all(midtrans, any(smtp, database)))
  actions:
    SEVERE:    { shedPriorities: [low], maxRetryAttempts: 2 }
    EMERGENCY: { shedPriorities: [low, normal], maxRetryAttempts: 1, ready: false }
  inbound: { priorityHeader: x-priority, shedRetryAfter: 30s, maxConcurrent: 500 }
  alerts: { webhook: http://alertmanager.monitoring:9093/hook }
"#;
    assert_eq!(problems(service), none());
}

#[test]
fn minimal_policies_are_valid() {
    assert_eq!(upstream(ENDPOINTS), none());
    assert_eq!(
        upstream("  endpoints: { static: [\"10.0.0.5:8080\", \"[fd00::5]:8080\"] }\n"),
        none()
    );
    assert_eq!(
        upstream("  endpoints: { dns: \"[fd00::5]:8080\", dnsRefresh: 30s }\n"),
        none()
    );
    assert_eq!(service("  {}\n"), none());
}

#[test]
fn metadata_names_are_dns_labels() {
    let yaml = r#"
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata:
  name: Payments_1
  namespace: ""
  labels: { team: -oops, "bad key!": x, example.com/tier: gold }
  annotations: { "/nope": x }
spec:
  endpoints: { dns: payments:8080 }
"#;
    assert_eq!(
        problems(yaml),
        [
            "metadata.name: must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit), got \"Payments_1\"",
            "metadata.namespace: must not be empty",
            "metadata.labels[\"bad key!\"]: key must be a name of at most 63 letters, digits, \"-\", \"_\" or \".\" starting and ending with a letter or digit, optionally prefixed by a DNS subdomain and \"/\", got \"bad key!\"",
            "metadata.labels.team: must be at most 63 letters, digits, \"-\", \"_\" or \".\" starting and ending with a letter or digit, got \"-oops\"",
            "metadata.annotations[\"/nope\"]: key must be a name of at most 63 letters, digits, \"-\", \"_\" or \".\" starting and ending with a letter or digit, optionally prefixed by a DNS subdomain and \"/\", got \"/nope\"",
        ]
    );
    let long = "a".repeat(64);
    assert_eq!(
        problems(&format!(
            "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: {long} }}\nspec:\n{ENDPOINTS}"
        )),
        [format!(
            "metadata.name: must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit), got \"{long}\""
        )]
    );
}

#[test]
fn endpoints_are_exactly_one_of_dns_or_static() {
    assert_eq!(
        upstream("  endpoints: {}\n"),
        ["spec.endpoints: must set exactly one of dns or static, got neither"]
    );
    assert_eq!(
        upstream("  endpoints: { dns: a:80, static: [\"10.0.0.1:80\"] }\n"),
        ["spec.endpoints: must set exactly one of dns or static, got both"]
    );
    assert_eq!(
        upstream("  endpoints: { dns: midtrans.payments }\n"),
        [
            "spec.endpoints.dns: must be host:port such as \"payments.svc.cluster.local:8080\", got \"midtrans.payments\""
        ]
    );
    assert_eq!(
        upstream("  endpoints: { dns: midtrans:http }\n"),
        [
            "spec.endpoints.dns: must be host:port such as \"payments.svc.cluster.local:8080\", got \"midtrans:http\""
        ]
    );
    assert_eq!(
        upstream("  endpoints: { dns: midtrans:70000 }\n"),
        ["spec.endpoints.dns: port must be between 1 and 65535, got 70000"]
    );
    assert_eq!(
        upstream("  endpoints: { dns: \"mid_trans:80\", dnsRefresh: 0s }\n"),
        [
            "spec.endpoints.dns: host must be a DNS name or an IP address, got \"mid_trans\"",
            "spec.endpoints.dnsRefresh: must be greater than 0, got 0s",
        ]
    );
    assert_eq!(
        upstream("  endpoints: { static: [] }\n"),
        ["spec.endpoints.static: must list at least one ip:port"]
    );
    assert_eq!(
        upstream(
            "  endpoints:\n    static: [\"10.0.0.5:8080\", \"10.0.0.5\", \"fd00::5:8080\", \"10.0.0.6:0\", \"10.0.0.5:8080\", \"host:80\"]\n    dnsRefresh: 10s\n"
        ),
        [
            "spec.endpoints.static[1]: must be ip:port such as \"10.0.0.5:8080\" or \"[fd00::5]:8080\", got \"10.0.0.5\"",
            "spec.endpoints.static[2]: must be ip:port such as \"10.0.0.5:8080\" or \"[fd00::5]:8080\", got \"fd00::5:8080\"",
            "spec.endpoints.static[3]: port must be between 1 and 65535, got 0",
            "spec.endpoints.static[4]: duplicates static[0]",
            "spec.endpoints.static[5]: must be ip:port such as \"10.0.0.5:8080\" or \"[fd00::5]:8080\", got \"host:80\"",
            "spec.endpoints.dnsRefresh: only applies to dns endpoints",
        ]
    );
}

#[test]
fn timeouts_parse_are_positive_and_nest() {
    assert_eq!(
        upstream_with("  timeouts: { request: 10s, perTry: 15s, connect: 20s }\n"),
        [
            "spec.timeouts.perTry: must be <= request (10s), got 15s",
            "spec.timeouts.connect: must be <= request (10s), got 20s",
        ]
    );
    assert_eq!(
        upstream_with("  timeouts: { request: 10, perTry: 0ms, connect: 1s }\n"),
        [
            "spec.timeouts.request: must be a duration such as \"250ms\", \"10s\" or \"1m30s\" (units us, ms, s, m, h), got \"10\"",
            "spec.timeouts.perTry: must be greater than 0, got 0ms",
        ]
    );
    // Only pairs written in the same block are compared.
    assert_eq!(upstream_with("  timeouts: { perTry: 1h }\n"), none());
    // Below a millisecond, to the microsecond.
    assert_eq!(
        upstream_with("  timeouts: { request: 1ms, perTry: 500us, connect: 750µs }\n"),
        none()
    );
    assert_eq!(
        upstream_with("  timeouts: { request: 400us, perTry: 500us }\n"),
        ["spec.timeouts.perTry: must be <= request (400us), got 500us"]
    );
}

#[test]
fn retry_checks_every_field() {
    let spec = r#"  retry:
    maxAttempts: 0
    backoff: { initial: 2s, max: 1s, multiplier: 0.5, jitter: 150% }
    maxElapsed: 0s
    retryOn: [connect-failure, reset, 4xx, "429", "429", grpc-nope, "600"]
    budget: { ratio: 20, minPerSecond: 0, window: 0s }
    replayBufferBytes: 67108865
"#;
    assert_eq!(
        upstream_with(spec),
        [
            "spec.retry.maxAttempts: must be >= 1, got 0",
            "spec.retry.backoff.initial: must be <= max (1s), got 2s",
            "spec.retry.backoff.multiplier: must be >= 1.0, got 0.5",
            "spec.retry.backoff.jitter: must be between 0% and 100%, got \"150%\"",
            "spec.retry.maxElapsed: must be greater than 0, got 0s",
            "spec.retry.retryOn[2]: unknown condition \"4xx\"; expected connect-failure, reset, 5xx, gateway-error, timeout, a status code such as \"429\", or grpc-<code> such as grpc-unavailable",
            "spec.retry.retryOn[4]: duplicates retryOn[3]",
            "spec.retry.retryOn[5]: unknown gRPC code \"nope\" in \"grpc-nope\"; expected e.g. grpc-unavailable, grpc-resource-exhausted",
            "spec.retry.retryOn[6]: status code must be between 100 and 599, got 600",
            "spec.retry.budget.ratio: must be a percentage such as \"50%\", got \"20\"",
            "spec.retry.budget.window: must be greater than 0, got 0s",
            "spec.retry.replayBufferBytes: must be <= 67108864 (64 MiB), got 67108865",
        ]
    );
    assert_eq!(
        upstream_with("  retry: { maxAttempts: 101, backoff: { multiplier: 1 } }\n"),
        ["spec.retry.maxAttempts: must be <= 100, got 101"]
    );
    assert_eq!(
        upstream_with("  retry: { maxAttempts: 100, backoff: { initial: 0ms, max: 0ms } }\n"),
        none()
    );
    // YAML's `.inf` is rejected by the parser, but code may build a policy directly.
    let mut built = parse_yaml(&format!(
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: a }}\nspec:\n{ENDPOINTS}"
    ))
    .expect("parses");
    let Resource::UpstreamPolicy(p) = &mut built[0] else {
        panic!("an UpstreamPolicy")
    };
    p.spec.retry = Some(Retry {
        backoff: Some(Backoff {
            multiplier: Some(f64::INFINITY),
            ..Backoff::default()
        }),
        ..Retry::default()
    });
    assert_eq!(
        built[0].validate().map_err(|e| e.to_string()),
        Err("UpstreamPolicy/default/a is invalid: spec.retry.backoff.multiplier: must be a finite number, got inf".into())
    );
    assert_eq!(
        upstream_with("  retry: { backoff: { multiplier: -2 } }\n"),
        ["spec.retry.backoff.multiplier: must be >= 1.0, got -2"]
    );
}

#[test]
fn circuit_breaker_checks_every_field() {
    let spec = r#"  circuitBreaker:
    window: 10ms
    buckets: 20
    minRequests: 0
    failureRate: 0%
    slowCall: { duration: 0s, rate: 101% }
    openFor: 10m
    maxOpenFor: 5m
    halfOpenProbes: 0
    failureOn: [5xx, slow]
"#;
    assert_eq!(
        upstream_with(spec),
        [
            "spec.circuitBreaker.buckets: must be <= the window in milliseconds (10ms = 10 ms), got 20",
            "spec.circuitBreaker.minRequests: must be >= 1, got 0",
            "spec.circuitBreaker.failureRate: must be greater than 0%, got 0%",
            "spec.circuitBreaker.slowCall.duration: must be greater than 0, got 0s",
            "spec.circuitBreaker.slowCall.rate: must be between 0% and 100%, got \"101%\"",
            "spec.circuitBreaker.openFor: must be <= maxOpenFor (5m), got 10m",
            "spec.circuitBreaker.halfOpenProbes: must be >= 1, got 0",
            "spec.circuitBreaker.failureOn[1]: unknown condition \"slow\"; expected connect-failure, reset, 5xx, gateway-error, timeout, a status code such as \"429\", or grpc-<code> such as grpc-unavailable",
        ]
    );
    assert_eq!(
        upstream_with("  circuitBreaker: { buckets: 0, window: 0s }\n"),
        [
            "spec.circuitBreaker.window: must be greater than 0, got 0s",
            "spec.circuitBreaker.buckets: must be >= 1, got 0",
        ]
    );
    assert_eq!(
        upstream_with("  circuitBreaker: { buckets: 20000 }\n"),
        [
            "spec.circuitBreaker.buckets: must be <= the window in milliseconds (default 10s = 10000 ms), got 20000"
        ]
    );
    assert_eq!(
        upstream_with("  circuitBreaker: { window: 60s, buckets: 60, failureRate: 100% }\n"),
        none()
    );
}

#[test]
fn outlier_detection_and_limits() {
    assert_eq!(
        upstream_with(
            "  outlierDetection: { consecutiveFailures: 0, baseEjection: 0s, maxEjectedPercent: 101 }\n  limits: { maxConcurrent: 0, maxPending: 0 }\n"
        ),
        [
            "spec.outlierDetection.consecutiveFailures: must be >= 1, got 0",
            "spec.outlierDetection.baseEjection: must be greater than 0, got 0s",
            "spec.outlierDetection.maxEjectedPercent: must be <= 100, got 101",
            "spec.limits.maxConcurrent: must be >= 1, got 0",
        ]
    );
}

#[test]
fn fallback_targets_and_response() {
    let spec = r#"  fallback:
    failover: [xendit, "", midtrans, xendit, midtrans.payments, Nicepay, nicepay.other]
    response:
      status: 600
      grpcStatus: down
      headers: { "bad header": x, x-reason: "a\nb" }
"#;
    assert_eq!(
        upstream_with(spec),
        [
            "spec.fallback.failover[1]: must not be empty",
            "spec.fallback.failover[2]: must not name this policy itself",
            "spec.fallback.failover[3]: duplicates failover[0]",
            "spec.fallback.failover[4]: must not name this policy itself",
            "spec.fallback.failover[5]: must be a policy name, or name.namespace, each a DNS-1123 label, got \"Nicepay\"",
            "spec.fallback.response.status: must be between 100 and 599, got 600",
            "spec.fallback.response.grpcStatus: unknown gRPC status \"down\"; expected a name such as unavailable or resource-exhausted",
            "spec.fallback.response.headers[\"bad header\"]: must be a valid header name, got \"bad header\"",
            "spec.fallback.response.headers.x-reason: value must not contain control characters",
        ]
    );
    assert_eq!(
        upstream_with(
            "  fallback: { response: { grpcStatus: RESOURCE_EXHAUSTED, status: 429 } }\n"
        ),
        none()
    );
}

#[test]
fn routes_match_and_share_the_top_level_checks() {
    let spec = r#"  routes:
    - match: {}
    - match: { grpcMethod: payments.v1.Payments/Get, pathPrefix: /v1 }
    - match: { grpcMethod: "/payments.v1.Payments/Get/x" }
    - match: { path: status, pathPrefix: /status, method: get }
    - name: Status
      match: { pathPrefix: /v2/status }
      timeouts: { request: 1s, perTry: 2s }
      retry: { maxAttempts: 0, backoff: { multiplier: 0.5 }, retryOn: [connect-failure, nope] }
    - name: status
      match: { pathPrefix: /v2/status }
    - name: status
      match: { grpcMethod: /Greeter/ }
"#;
    assert_eq!(
        upstream_with(spec),
        [
            "spec.routes[0].match: must set at least one of grpcMethod, path, pathPrefix or method",
            "spec.routes[1].match.grpcMethod: must look like \"/package.Service/Method\" or \"/package.Service/\", got \"payments.v1.Payments/Get\"",
            "spec.routes[1].match.pathPrefix: cannot be combined with grpcMethod",
            "spec.routes[2].match.grpcMethod: must look like \"/package.Service/Method\" or \"/package.Service/\", got \"/payments.v1.Payments/Get/x\"",
            "spec.routes[3].match.path: must start with \"/\", got \"status\"",
            "spec.routes[3].match.pathPrefix: cannot be combined with path",
            "spec.routes[3].match.method: must be an uppercase HTTP method such as GET or POST, got \"get\"",
            "spec.routes[4].name: must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit), got \"Status\"",
            "spec.routes[4].timeouts.perTry: must be <= request (1s), got 2s",
            "spec.routes[4].retry.maxAttempts: must be >= 1, got 0",
            "spec.routes[4].retry.backoff.multiplier: must be >= 1.0, got 0.5",
            "spec.routes[4].retry.retryOn[1]: unknown condition \"nope\"; expected connect-failure, reset, 5xx, gateway-error, timeout, a status code such as \"429\", or grpc-<code> such as grpc-unavailable",
            "spec.routes[5].match: same as routes[4].match",
            "spec.routes[6].name: duplicates routes[5].name",
        ]
    );
}

#[test]
fn service_policy_checks_every_block() {
    let spec = r#"  app: { port: 0, healthCheck: { http: health, grpc: "", interval: 1s, timeout: 2s } }
  dependencies:
    midtrans: { critical: true }
    Bad_Name: {}
    smtp: {}
  unhealthyWhen: { breakerOpenPods: 0%, successRateBelow: 90, minRequests: 0 }
  levels:
    CRITICAL: { unhealthyDependencies: 1 }
    DEGRADED: {}
    EMERGENCY: { unhealthyDependencies: 4, criticalUnhealthy: 2 }
    SEVERE: { unhealthyDependencies: 0 }
  capabilities:
    acceptOrders: all(midtrans, bbd, not(bbd), database)
    sendNotifications: any(smtp whatsapp)
    "send mail": smtp
  actions:
    NORMAL: { ready: true }
    SEVERE: { shedPriorities: [low, urgent, low], maxRetryAttempts: 0 }
  inbound: { priorityHeader: X-Priority, shedRetryAfter: 0s, maxConcurrent: 0 }
  alerts: { webhook: alertmanager:9093/hook, maxPerMinute: 0 }
  lowerAfter: 0s
  maxUnreadyPercent: 130%
"#;
    assert_eq!(
        service(spec),
        [
            "spec.app.port: must be between 1 and 65535, got 0",
            "spec.app.healthCheck: must set exactly one of http or grpc, got both",
            "spec.app.healthCheck.http: must start with \"/\", got \"health\"",
            "spec.app.healthCheck.timeout: must be <= interval (1s), got 2s",
            "spec.dependencies.Bad_Name: must be a policy name, or name.namespace, each a DNS-1123 label, got \"Bad_Name\"",
            "spec.unhealthyWhen.breakerOpenPods: must be greater than 0%, got 0%",
            "spec.unhealthyWhen.successRateBelow: must be a percentage such as \"50%\", got \"90\"",
            "spec.levels.CRITICAL: unknown level \"CRITICAL\"; expected DEGRADED, SEVERE or EMERGENCY",
            "spec.levels.DEGRADED: must set at least one of unhealthyDependencies or criticalUnhealthy",
            "spec.levels.EMERGENCY.unhealthyDependencies: must be <= the number of dependencies (3), got 4",
            "spec.levels.EMERGENCY.criticalUnhealthy: must be <= the number of critical dependencies (1), got 2",
            "spec.levels.SEVERE.unhealthyDependencies: must be >= 1, got 0",
            "spec.capabilities.acceptOrders: \"bbd\" is not a dependency declared in spec.dependencies",
            "spec.capabilities.acceptOrders: \"database\" is not a dependency declared in spec.dependencies",
            "spec.capabilities[\"send mail\"]: name must be letters, digits, \"-\" or \"_\", starting with a letter, got \"send mail\"",
            "spec.capabilities.sendNotifications: unexpected \"w\" at position 10 in \"any(smtp whatsapp)\"; expected \",\" or \")\"",
            "spec.actions.NORMAL: unknown level \"NORMAL\"; expected DEGRADED, SEVERE or EMERGENCY",
            "spec.actions.SEVERE.shedPriorities[1]: unknown priority \"urgent\"; expected low, normal, high or critical",
            "spec.actions.SEVERE.shedPriorities[2]: duplicates shedPriorities[0]",
            "spec.actions.SEVERE.maxRetryAttempts: must be >= 1, got 0",
            "spec.inbound.priorityHeader: must be a lowercase header name such as x-priority, got \"X-Priority\"",
            "spec.inbound.shedRetryAfter: must be greater than 0, got 0s",
            "spec.inbound.maxConcurrent: must be >= 1, got 0",
            "spec.lowerAfter: must be greater than 0, got 0s",
            "spec.maxUnreadyPercent: must be between 0% and 100%, got \"130%\"",
            "spec.alerts.maxPerMinute: must be >= 1, got 0",
            "spec.alerts.webhook: must be an http:// or https:// URL, got \"alertmanager:9093/hook\"",
        ]
    );
    assert_eq!(
        service("  app: { port: 8080, healthCheck: { interval: 0s } }\n"),
        [
            "spec.app.healthCheck: must set exactly one of http or grpc, got neither",
            "spec.app.healthCheck.interval: must be greater than 0, got 0s",
        ]
    );
    assert_eq!(
        service(
            "  app: { port: 9090, protocol: grpc, healthCheck: { grpc: \"\" } }\n  alerts: { webhook: \"https://hooks.example.com/x\" }\n"
        ),
        none()
    );
}

#[test]
fn collects_every_problem_in_one_pass() {
    let yaml = r#"
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: midtrans, namespace: Payments }
spec:
  endpoints: { dns: midtrans:0 }
  timeouts: { request: 5s, perTry: 10s }
  retry: { backoff: { multiplier: 0.5 }, retryOn: [connect-failure, reset, 4xx] }
  fallback: { failover: [midtrans], response: { grpcStatus: nope } }
  routes:
    - match: { grpcMethod: /payments.v1.Payments/Charge, path: /charge }
"#;
    let resources = parse_yaml(yaml).expect("parses");
    let err = resources[0].validate().expect_err("invalid");
    let field = |path: &str, message: &str| FieldError {
        path: path.into(),
        message: message.into(),
    };
    assert_eq!(
        err,
        ValidationErrors {
            resource: "UpstreamPolicy/Payments/midtrans".into(),
            errors: vec![
                field(
                    "metadata.namespace",
                    "must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit), got \"Payments\""
                ),
                field(
                    "spec.endpoints.dns",
                    "port must be between 1 and 65535, got 0"
                ),
                field("spec.timeouts.perTry", "must be <= request (5s), got 10s"),
                field("spec.retry.backoff.multiplier", "must be >= 1.0, got 0.5"),
                field(
                    "spec.retry.retryOn[2]",
                    "unknown condition \"4xx\"; expected connect-failure, reset, 5xx, gateway-error, timeout, a status code such as \"429\", or grpc-<code> such as grpc-unavailable"
                ),
                field(
                    "spec.fallback.failover[0]",
                    "must not name this policy itself"
                ),
                field(
                    "spec.fallback.response.grpcStatus",
                    "unknown gRPC status \"nope\"; expected a name such as unavailable or resource-exhausted"
                ),
                field(
                    "spec.routes[0].match.path",
                    "cannot be combined with grpcMethod"
                ),
            ],
        }
    );
    assert_eq!(
        err.to_string(),
        "UpstreamPolicy/Payments/midtrans is invalid: metadata.namespace: must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit), got \"Payments\"; spec.endpoints.dns: port must be between 1 and 65535, got 0; spec.timeouts.perTry: must be <= request (5s), got 10s; spec.retry.backoff.multiplier: must be >= 1.0, got 0.5; spec.retry.retryOn[2]: unknown condition \"4xx\"; expected connect-failure, reset, 5xx, gateway-error, timeout, a status code such as \"429\", or grpc-<code> such as grpc-unavailable; spec.fallback.failover[0]: must not name this policy itself; spec.fallback.response.grpcStatus: unknown gRPC status \"nope\"; expected a name such as unavailable or resource-exhausted; spec.routes[0].match.path: cannot be combined with grpcMethod"
    );
}

#[test]
fn tls_fields_belong_to_their_mode_and_name_what_they_must() {
    assert_eq!(upstream_with("  tls: { mode: mesh }\n"), none());
    assert_eq!(
        upstream_with(
            "  tls: { mode: mesh, serverIdentity: \"spiffe://cluster.local/ns/payments/sa/midtrans\" }\n"
        ),
        none()
    );
    assert_eq!(
        upstream_with("  tls: { mode: simple, sni: api.midtrans.com, caFile: /etc/ca.pem }\n"),
        none()
    );
    assert_eq!(
        upstream_with("  tls: { mode: mesh, serverIdentity: payments, sni: a.b }\n"),
        [
            "spec.tls.sni: applies only to mode simple",
            "spec.tls.serverIdentity: \"payments\" is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
        ]
    );
    assert_eq!(
        upstream(
            "  endpoints: { static: [\"10.0.0.1:443\"] }\n  tls: { mode: simple, caFile: ca.pem }\n"
        ),
        [
            "spec.tls.caFile: must be an absolute path, got \"ca.pem\"",
            "spec.tls.sni: is required with static endpoints (the name the server's certificate is checked against)",
        ]
    );
    assert_eq!(
        upstream_with("  tls: { mode: disable, serverIdentity: \"spiffe://x/ns/a/sa/b\" }\n"),
        ["spec.tls.serverIdentity: applies only to mode mesh"]
    );
}

#[test]
fn authorization_rules_name_real_callers_and_requests() {
    let ok = "  inbound:\n    mtls: strict\n    authorization:\n      rules:\n        - from: { serviceAccounts: [shop/orders], namespaces: [ops] }\n          to: [{ grpcMethod: /payments.v1.Payments/ }, { pathPrefix: /charge, method: POST }]\n        - to: [{ path: /health }]\n";
    assert_eq!(service(ok), none());
    assert_eq!(
        service("  inbound: { authorization: { rules: [] } }\n"),
        [
            "spec.inbound.authorization.rules: must allow something: without rules every request is denied (set dryRun to try that first)"
        ]
    );
    assert_eq!(
        service(
            "  inbound:\n    authorization:\n      rules:\n        - {}\n        - from: {}\n        - from: { identities: [orders], serviceAccounts: [orders], namespaces: [Shop] }\n          to: [{ grpcMethod: Pay }]\n"
        ),
        [
            "spec.inbound.authorization.rules[0]: must set from or to (a rule without either allows everything)",
            "spec.inbound.authorization.rules[1].from: must set at least one of identities, serviceAccounts or namespaces",
            "spec.inbound.authorization.rules[2].from.identities[0]: \"orders\" is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
            "spec.inbound.authorization.rules[2].from.serviceAccounts[0]: must be namespace/service-account, got \"orders\"",
            "spec.inbound.authorization.rules[2].from.namespaces[0]: must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit), got \"Shop\"",
            "spec.inbound.authorization.rules[2].to[0].grpcMethod: must look like \"/package.Service/Method\" or \"/package.Service/\", got \"Pay\"",
        ]
    );
    let unknown = parse_yaml(
        "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: { name: a }\nspec:\n  inbound: { mtls: required }\n",
    )
    .expect_err("an unknown mode is refused when parsed");
    assert!(
        unknown
            .to_string()
            .contains("spec.inbound.mtls: unknown variant `required`"),
        "{unknown}"
    );
}

#[test]
fn adaptive_concurrency_and_criticality_are_checked_field_by_field() {
    assert_eq!(
        upstream_with("  adaptiveConcurrency: {}\n  criticality: critical-plus\n"),
        none()
    );
    assert_eq!(
        upstream_with(
            "  adaptiveConcurrency: { minLimit: 0, maxLimit: 200000, initialLimit: 0, tolerance: 150%, updateInterval: 0s, probeInterval: 50ms, probeConcurrency: 0, probeSamples: 0, maxQueue: 100001, maxQueueWait: soon }\n  criticality: urgent\n  routes:\n    - match: { path: /a }\n      criticality: HIGH\n"
        ),
        [
            "spec.adaptiveConcurrency.minLimit: must be >= 1, got 0",
            "spec.adaptiveConcurrency.maxLimit: must be <= 100000, got 200000",
            "spec.adaptiveConcurrency.tolerance: must be between 0% and 100%, got \"150%\"",
            "spec.adaptiveConcurrency.updateInterval: must be greater than 0, got 0s",
            "spec.adaptiveConcurrency.probeInterval: must be longer than updateInterval (100ms), got 50ms",
            "spec.adaptiveConcurrency.probeConcurrency: must be >= 1, got 0",
            "spec.adaptiveConcurrency.probeSamples: must be >= 1, got 0",
            "spec.adaptiveConcurrency.maxQueue: must be <= 100000, got 100001",
            "spec.adaptiveConcurrency.maxQueueWait: must be a duration such as \"250ms\", \"10s\" or \"1m30s\" (units us, ms, s, m, h), got \"soon\"",
            "spec.criticality: unknown criticality \"urgent\"; expected sheddable, sheddable-plus, critical or critical-plus",
            "spec.routes[0].criticality: unknown criticality \"HIGH\"; expected sheddable, sheddable-plus, critical or critical-plus",
        ]
    );
    assert_eq!(
        upstream_with("  adaptiveConcurrency: { standingQueueWait: 1s }\n"),
        [
            "spec.adaptiveConcurrency.standingQueueWait: must not be longer than maxQueueWait (500ms), got 1s"
        ]
    );
    assert_eq!(
        upstream_with(
            "  adaptiveConcurrency: { maxQueueWait: 2s, standingQueueWait: 1s }\n  criticality: critical\n"
        ),
        none()
    );
    assert_eq!(
        upstream_with("  adaptiveConcurrency: { minLimit: 50, maxLimit: 10, initialLimit: 5 }\n"),
        [
            "spec.adaptiveConcurrency.minLimit: must be <= maxLimit (10), got 50",
            "spec.adaptiveConcurrency.initialLimit: must be between minLimit (50) and maxLimit (10), got 5",
        ]
    );
    assert_eq!(
        service(
            "  inbound:\n    criticalityHeader: x-priority\n    priorityHeader: x-priority\n    criticality: sheddable\n    routes:\n      - name: pay\n        match: { grpcMethod: /pay.Pay/Charge }\n        criticality: critical\n      - name: pay\n        match: { grpcMethod: /pay.Pay/Charge }\n        criticality: high\n    adaptiveConcurrency: { maxQueue: 0, maxQueueWait: 0s }\n"
        ),
        [
            "spec.inbound.criticalityHeader: must differ from priorityHeader: one header carries priorities, the other criticalities",
            "spec.inbound.routes[1].name: duplicates routes[0].name",
            "spec.inbound.routes[1].match: same as routes[0].match",
            "spec.inbound.routes[1].criticality: unknown criticality \"high\"; expected sheddable, sheddable-plus, critical or critical-plus",
        ]
    );
    assert_eq!(
        service("  inbound:\n    criticalityHeader: X-Crit\n"),
        [
            "spec.inbound.criticalityHeader: must be a lowercase header name such as x-bulwark-criticality, got \"X-Crit\""
        ]
    );
}

#[test]
fn rate_limits_and_throttling_are_checked_field_by_field() {
    assert_eq!(
        upstream_with("  rateLimit: { requests: 100 }\n  throttling: {}\n"),
        none()
    );
    assert_eq!(
        upstream_with(
            "  rateLimit: { requests: 0, per: 2h, burst: 0 }\n  throttling: { multiplier: 0.5, window: 0s }\n"
        ),
        [
            "spec.rateLimit.requests: must be >= 1, got 0",
            "spec.rateLimit.per: must be at most 1h, got 2h",
            "spec.rateLimit.burst: must be >= 1, got 0",
            "spec.throttling.multiplier: must be between 1 and 100, got 0.5",
            "spec.throttling.window: must be greater than 0, got 0s",
        ]
    );
    assert_eq!(
        service("  inbound:\n    rateLimit: { requests: 10, by: header }\n"),
        ["spec.inbound.rateLimit.header: is required with by: header"]
    );
    assert_eq!(
        service("  inbound:\n    rateLimit: { requests: 10, header: x-api-key }\n"),
        ["spec.inbound.rateLimit.header: is only allowed with by: header"]
    );
    assert_eq!(
        service("  inbound:\n    rateLimit: { requests: 10, by: header, header: X-Key }\n"),
        [
            "spec.inbound.rateLimit.header: must be a lowercase header name such as x-api-key, got \"X-Key\""
        ]
    );
    assert_eq!(
        service("  inbound:\n    rateLimit: { requests: 10, by: client-ip }\n"),
        none()
    );
}
