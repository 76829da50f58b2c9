//! `docs/policies.md` stays true to the model: every field has a row, every row names a field,
//! and every default in the tables is the one in `policy::defaults`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bulwark_proto::policy::{Percent, defaults, parse_yaml, units::parse_duration};
use serde_json::Value;

/// Rows of the reference's tables: field path (first column) → default (third column), both
/// without backticks.
fn rows() -> BTreeMap<String, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/policies.md");
    let text = std::fs::read_to_string(path).expect("docs/policies.md is readable");
    let mut rows = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line
            .split(" | ")
            .map(|c| c.trim_matches(['|', ' ']))
            .collect();
        let plain = |cell: &str| cell.replace('`', "");
        // The conditions table has two columns; field tables have five.
        if cells.len() >= 5 {
            rows.insert(plain(cells[0]), plain(cells[2]));
        }
    }
    rows
}

/// Every field set, so that serializing yields every path of the model.
const EVERY_FIELD: &str = r#"
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata:
  name: a
  namespace: b
  labels: { k: v }
  annotations: { k: v }
  resourceVersion: "1"
spec:
  endpoints: { dns: a:80, static: ["10.0.0.1:80"], dnsRefresh: 5s }
  protocol: grpc
  hostRewrite: true
  allowConnect: true
  timeouts: { request: 1s, perTry: 1s, connect: 1s }
  retry:
    maxAttempts: 2
    backoff: { initial: 1s, max: 1s, multiplier: 2.0, jitter: 1% }
    maxElapsed: 1s
    retryOn: [reset]
    nonIdempotent: always
    budget: { ratio: 1%, minPerSecond: 1, window: 1s }
    honorRetryAfter: true
    replayBufferBytes: 1
  circuitBreaker:
    window: 1s
    buckets: 1
    minRequests: 1
    failureRate: 1%
    slowCall: { duration: 1s, rate: 1% }
    openFor: 1s
    maxOpenFor: 1s
    halfOpenProbes: 1
    failureOn: [reset]
  outlierDetection: { consecutiveFailures: 1, baseEjection: 1s, maxEjectedPercent: 1 }
  limits: { maxConcurrent: 1, maxPending: 1 }
  adaptiveConcurrency:
    minLimit: 1
    maxLimit: 1
    initialLimit: 1
    tolerance: 1%
    updateInterval: 1s
    probeInterval: 2s
    probeConcurrency: 1
    probeSamples: 1
    maxQueue: 1
    maxQueueWait: 1s
    standingQueueWait: 1ms
  criticality: critical
  rateLimit: { requests: 1, per: 1s, burst: 1, meshWide: true }
  throttling: { multiplier: 2.0, window: 1s }
  fallback:
    failover: [c]
    response: { status: 503, body: x, grpcStatus: unavailable, grpcMessage: x, headers: { k: v } }
  routes:
    - name: r
      match: { grpcMethod: /a.B/, pathPrefix: /, path: /, method: GET }
      timeouts: { request: 1s }
      retry: { maxAttempts: 1 }
      idempotent: true
      criticality: critical
  tls: { mode: simple, serverIdentity: "spiffe://a/ns/b/sa/c", sni: a.b, caFile: /a }
  exportTo: [shop]
---
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: { name: a }
spec:
  app: { port: 1, protocol: http1, healthCheck: { http: /, grpc: "", interval: 1s, timeout: 1s } }
  dependencies: { d: { critical: true } }
  unhealthyWhen: { breakerOpenPods: 1%, successRateBelow: 1%, overloadedPods: 1%, minRequests: 1 }
  levels: { SEVERE: { unhealthyDependencies: 1, criticalUnhealthy: 1 } }
  capabilities: { c: d }
  actions: { SEVERE: { shedPriorities: [low], maxRetryAttempts: 1, ready: false } }
  inbound:
    priorityHeader: x-p
    criticalityHeader: x-c
    criticality: critical
    routes:
      - name: r
        match: { grpcMethod: /a.B/, pathPrefix: /, path: /, method: GET }
        criticality: critical
    adaptiveConcurrency: { minLimit: 1, maxLimit: 1, initialLimit: 1, tolerance: 1%, updateInterval: 1s, probeInterval: 2s, probeConcurrency: 1, probeSamples: 1, maxQueue: 1, maxQueueWait: 1s, standingQueueWait: 1ms }
    rateLimit: { requests: 1, per: 1s, burst: 1, by: header, header: x-k, meshWide: true }
    shedRetryAfter: 1s
    maxConcurrent: 1
    mtls: strict
    authorization:
      dryRun: true
      rules:
        - from: { identities: ["spiffe://a/ns/b/sa/c"], serviceAccounts: [a/b], namespaces: [a] }
          to: [{ grpcMethod: /a.B/, pathPrefix: /, path: /, method: GET }]
  alerts: { webhook: "http://a/", maxPerMinute: 1 }
  lowerAfter: 1s
  maxUnreadyPercent: 1%
  serviceAccount: a
"#;

/// Maps whose keys are user data; the docs name them by a placeholder.
const KEYED: [(&str, &str); 4] = [
    ("spec.dependencies", "<name>"),
    ("spec.levels", "<LEVEL>"),
    ("spec.capabilities", "<name>"),
    ("spec.actions", "<LEVEL>"),
];

/// Fields documented as a whole, without rows for what is inside.
const WHOLE: [&str; 6] = [
    "spec.inbound.adaptiveConcurrency",
    "metadata.labels",
    "metadata.annotations",
    "spec.fallback.response.headers",
    "spec.routes[i].timeouts",
    "spec.routes[i].retry",
];

/// Collects every path of `value` into `all`, and the paths that need their own row into
/// `leaves`.
fn walk(value: &Value, path: &str, all: &mut BTreeSet<String>, leaves: &mut BTreeSet<String>) {
    all.insert(path.to_string());
    if WHOLE.contains(&path) {
        leaves.insert(path.to_string());
        return;
    }
    match value {
        Value::Object(map) => {
            let placeholder = KEYED.iter().find(|(p, _)| *p == path).map(|(_, k)| *k);
            for (key, child) in map {
                let key = placeholder.unwrap_or(key);
                let child_path = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                walk(child, &child_path, all, leaves);
            }
        }
        // A list of objects (routes, authorization rules and their requests): one row per
        // field of its items, `[i]` for the index.
        Value::Array(items) if items.first().is_some_and(Value::is_object) => {
            let item_path = format!("{path}[i]");
            for item in items {
                walk(item, &item_path, all, leaves);
            }
        }
        _ => {
            leaves.insert(path.to_string());
        }
    }
}

#[test]
fn every_field_has_a_row_and_every_row_a_field() {
    let resources = parse_yaml(EVERY_FIELD).expect("parses");
    let mut all = BTreeSet::new();
    let mut leaves = BTreeSet::new();
    for resource in &resources {
        let value = serde_json::to_value(resource).expect("serializes");
        walk(&value, "", &mut all, &mut leaves);
    }
    let rows = rows();
    let undocumented: Vec<&String> = leaves.iter().filter(|p| !rows.contains_key(*p)).collect();
    assert_eq!(undocumented, Vec::<&String>::new(), "fields without a row");
    let unknown: Vec<&String> = rows.keys().filter(|p| !all.contains(*p)).collect();
    assert_eq!(unknown, Vec::<&String>::new(), "rows naming no field");
}

#[test]
fn documented_defaults_are_the_models() {
    let rows = rows();
    let default = |path: &str| -> &str {
        rows.get(path)
            .unwrap_or_else(|| panic!("docs/policies.md has no row for {path}"))
    };
    let durations = [
        ("spec.endpoints.dnsRefresh", defaults::DNS_REFRESH),
        ("spec.timeouts.connect", defaults::CONNECT_TIMEOUT),
        ("spec.timeouts.request", defaults::REQUEST_TIMEOUT),
        ("spec.retry.backoff.initial", defaults::BACKOFF_INITIAL),
        ("spec.retry.backoff.max", defaults::BACKOFF_MAX),
        ("spec.retry.budget.window", defaults::BUDGET_WINDOW),
        ("spec.circuitBreaker.window", defaults::BREAKER_WINDOW),
        ("spec.circuitBreaker.openFor", defaults::BREAKER_OPEN_FOR),
        (
            "spec.circuitBreaker.maxOpenFor",
            defaults::BREAKER_MAX_OPEN_FOR,
        ),
        (
            "spec.outlierDetection.baseEjection",
            defaults::OUTLIER_BASE_EJECTION,
        ),
        (
            "spec.app.healthCheck.interval",
            defaults::HEALTH_CHECK_INTERVAL,
        ),
        (
            "spec.app.healthCheck.timeout",
            defaults::HEALTH_CHECK_TIMEOUT,
        ),
        ("spec.inbound.shedRetryAfter", defaults::SHED_RETRY_AFTER),
        (
            "spec.adaptiveConcurrency.updateInterval",
            defaults::ADAPTIVE_UPDATE_INTERVAL,
        ),
        (
            "spec.adaptiveConcurrency.probeInterval",
            defaults::ADAPTIVE_PROBE_INTERVAL,
        ),
        (
            "spec.adaptiveConcurrency.maxQueueWait",
            defaults::ADAPTIVE_MAX_QUEUE_WAIT,
        ),
        (
            "spec.adaptiveConcurrency.standingQueueWait",
            defaults::ADAPTIVE_STANDING_QUEUE_WAIT,
        ),
        ("spec.rateLimit.per", defaults::RATE_LIMIT_PER),
        ("spec.inbound.rateLimit.per", defaults::RATE_LIMIT_PER),
        ("spec.throttling.window", defaults::THROTTLING_WINDOW),
        ("spec.lowerAfter", defaults::LOWER_AFTER),
    ];
    for (path, expected) in durations {
        assert_eq!(parse_duration(default(path)), Ok(expected), "{path}");
    }
    let integers = [
        ("spec.retry.maxAttempts", defaults::RETRY_MAX_ATTEMPTS),
        (
            "spec.retry.budget.minPerSecond",
            defaults::BUDGET_MIN_PER_SECOND,
        ),
        ("spec.circuitBreaker.buckets", defaults::BREAKER_BUCKETS),
        (
            "spec.circuitBreaker.minRequests",
            defaults::BREAKER_MIN_REQUESTS,
        ),
        (
            "spec.circuitBreaker.halfOpenProbes",
            defaults::BREAKER_HALF_OPEN_PROBES,
        ),
        (
            "spec.outlierDetection.consecutiveFailures",
            defaults::OUTLIER_CONSECUTIVE_FAILURES,
        ),
        (
            "spec.outlierDetection.maxEjectedPercent",
            defaults::OUTLIER_MAX_EJECTED_PERCENT,
        ),
        ("spec.alerts.maxPerMinute", defaults::ALERTS_MAX_PER_MINUTE),
        (
            "spec.adaptiveConcurrency.minLimit",
            defaults::ADAPTIVE_MIN_LIMIT,
        ),
        (
            "spec.adaptiveConcurrency.maxLimit",
            defaults::ADAPTIVE_MAX_LIMIT,
        ),
        (
            "spec.adaptiveConcurrency.initialLimit",
            defaults::ADAPTIVE_INITIAL_LIMIT,
        ),
        (
            "spec.adaptiveConcurrency.probeConcurrency",
            defaults::ADAPTIVE_PROBE_CONCURRENCY,
        ),
        (
            "spec.adaptiveConcurrency.probeSamples",
            defaults::ADAPTIVE_PROBE_SAMPLES,
        ),
        (
            "spec.adaptiveConcurrency.maxQueue",
            defaults::ADAPTIVE_MAX_QUEUE,
        ),
    ];
    for (path, expected) in integers {
        assert_eq!(default(path).parse::<u32>(), Ok(expected), "{path}");
    }
    assert_eq!(
        default("spec.retry.replayBufferBytes").parse::<u64>(),
        Ok(defaults::RETRY_REPLAY_BUFFER_BYTES)
    );
    assert_eq!(
        default("spec.retry.backoff.multiplier").parse::<f64>(),
        Ok(defaults::BACKOFF_MULTIPLIER)
    );
    assert_eq!(
        default("spec.throttling.multiplier").parse::<f64>(),
        Ok(defaults::THROTTLING_MULTIPLIER)
    );
    let percents = [
        (
            "spec.retry.backoff.jitter",
            defaults::BACKOFF_JITTER_PERCENT,
        ),
        ("spec.retry.budget.ratio", defaults::BUDGET_RATIO_PERCENT),
        (
            "spec.circuitBreaker.failureRate",
            defaults::BREAKER_FAILURE_RATE_PERCENT,
        ),
        ("spec.maxUnreadyPercent", defaults::MAX_UNREADY_PERCENT),
        (
            "spec.adaptiveConcurrency.tolerance",
            defaults::ADAPTIVE_TOLERANCE_PERCENT,
        ),
    ];
    for (path, expected) in percents {
        assert_eq!(Percent::new(default(path)).parse(), Ok(expected), "{path}");
    }
    assert_eq!(default("metadata.namespace"), defaults::NAMESPACE);
    assert_eq!(
        default("spec.inbound.priorityHeader"),
        defaults::PRIORITY_HEADER
    );
    assert_eq!(
        default("spec.inbound.criticalityHeader"),
        defaults::CRITICALITY_HEADER
    );
    for path in ["spec.criticality", "spec.inbound.criticality"] {
        assert_eq!(default(path), defaults::CRITICALITY, "{path}");
    }
}
