//! `meshctl convert -f istio.yaml`: Istio's DestinationRules and VirtualServices turned into
//! UpstreamPolicies, offline — one per host, the settings docs/migration.md maps carried over
//! (timeouts, retries, connection pool limits, outlier detection, TLS), every setting that has
//! no counterpart named on stderr. The result is checked as `meshctl validate` checks it
//! before anything is printed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::errors::CliError;
use crate::output::Output;

/// One upstream being assembled: its name, namespace, port and spec.
#[derive(Debug, Default)]
struct Upstream {
    host: String,
    port: Option<u64>,
    spec: Map<String, Value>,
}

/// Converts every DestinationRule and VirtualService of `files`; other documents are named on
/// stderr and left out. `namespace` is that of resources that name none.
pub fn run(files: &[PathBuf], namespace: &str) -> (Output, Option<CliError>) {
    let mut out = Output::default();
    let mut problems = Vec::new();
    let mut upstreams: BTreeMap<(String, String), Upstream> = BTreeMap::new();
    for file in files {
        let name = file.display().to_string();
        let text = match crate::inject::read(file) {
            Ok(text) => text,
            Err(e) => {
                problems.push(format!("{name}: cannot read: {e}"));
                continue;
            }
        };
        let docs = match serde_saphyr::from_multiple::<Value>(&text) {
            Ok(docs) => docs,
            Err(e) => {
                problems.push(format!("{name}: invalid YAML: {e}"));
                continue;
            }
        };
        for doc in docs.iter().filter(|d| !d.is_null()) {
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
            let istio = doc
                .get("apiVersion")
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with("networking.istio.io/"));
            let meta_ns = doc
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace);
            let id = format!(
                "{kind}/{meta_ns}/{}",
                doc.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            match (istio, kind) {
                (true, "DestinationRule") => {
                    let Some(host) = doc.pointer("/spec/host").and_then(Value::as_str) else {
                        problems.push(format!("{name}: {id}: spec.host is missing"));
                        continue;
                    };
                    let up = upstream(&mut upstreams, host, meta_ns);
                    destination_rule(doc, up, &id, &mut out);
                }
                (true, "VirtualService") => {
                    let hosts: Vec<&str> = doc
                        .pointer("/spec/hosts")
                        .and_then(Value::as_array)
                        .map(|h| h.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if hosts.is_empty() {
                        problems.push(format!("{name}: {id}: spec.hosts is empty"));
                    }
                    for host in hosts {
                        let up = upstream(&mut upstreams, host, meta_ns);
                        virtual_service(doc, up, &id, &mut out);
                    }
                }
                _ => out.note(format_args!(
                    "{id}: not an Istio DestinationRule or VirtualService, left out"
                )),
            }
        }
    }
    if !problems.is_empty() {
        return (Output::default(), Some(CliError::Invalid(problems)));
    }
    let mut documents = Vec::new();
    for ((ns, name), mut up) in upstreams {
        let port = up.port.unwrap_or_else(|| {
            out.note(format_args!(
                "UpstreamPolicy/{ns}/{name}: no port in the Istio resources; endpoints use 80"
            ));
            80
        });
        up.spec.insert(
            "endpoints".into(),
            json!({"dns": format!("{}:{port}", up.host)}),
        );
        documents.push(json!({
            "apiVersion": "bulwark/v1",
            "kind": "UpstreamPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": Value::Object(up.spec),
        }));
    }
    // What is printed must be what `meshctl validate` accepts.
    let text = match serde_saphyr::to_string_multiple(&documents) {
        Ok(text) => text,
        Err(e) => {
            return (
                out,
                Some(CliError::Usage(format!("cannot write YAML: {e}"))),
            );
        }
    };
    let resources = match bulwark_proto::policy::parse_yaml(&text) {
        Ok(resources) => resources,
        Err(e) => {
            return (
                out,
                Some(CliError::Invalid(vec![format!("converted: {e}")])),
            );
        }
    };
    let invalid: Vec<String> = resources
        .iter()
        .filter_map(|r| r.validate().err())
        .flat_map(|e| {
            let id = e.resource.clone();
            e.errors
                .into_iter()
                .map(move |field| format!("converted {id}: {field}"))
        })
        .collect();
    if !invalid.is_empty() {
        return (out, Some(CliError::Invalid(invalid)));
    }
    out.text(&text);
    (out, None)
}

/// The upstream of `host` (`payments`, `payments.shop`, `payments.shop.svc.cluster.local`):
/// named by its first label, in the namespace the host names or else the resource's.
fn upstream<'a>(
    upstreams: &'a mut BTreeMap<(String, String), Upstream>,
    host: &str,
    resource_ns: &str,
) -> &'a mut Upstream {
    let labels: Vec<&str> = host.split('.').collect();
    let name = labels.first().copied().unwrap_or(host).to_string();
    let namespace = match labels.as_slice() {
        [_, ns] | [_, ns, "svc", ..] => (*ns).to_string(),
        _ => resource_ns.to_string(),
    };
    let fqdn = match labels.len() {
        1 => format!("{name}.{namespace}.svc.cluster.local"),
        2 => format!("{host}.svc.cluster.local"),
        _ => host.to_string(),
    };
    upstreams
        .entry((namespace, name))
        .or_insert_with(|| Upstream {
            host: fqdn,
            ..Upstream::default()
        })
}

/// Sets `spec.<path>` (dotted), creating the blocks on the way.
fn set(spec: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or(path);
    let mut map = spec;
    for part in parts {
        let entry = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        map = next;
    }
    map.insert(last.to_string(), value);
}

fn destination_rule(doc: &Value, up: &mut Upstream, id: &str, out: &mut Output) {
    let Some(policy) = doc.pointer("/spec/trafficPolicy") else {
        return;
    };
    let get = |p: &str| policy.pointer(p);
    if let Some(t) = get("/connectionPool/tcp/connectTimeout").and_then(Value::as_str) {
        set(&mut up.spec, "timeouts.connect", t.into());
    }
    let concurrent = get("/connectionPool/http/http2MaxRequests")
        .or_else(|| get("/connectionPool/tcp/maxConnections"))
        .and_then(Value::as_u64);
    if let Some(n) = concurrent {
        set(&mut up.spec, "limits.maxConcurrent", n.into());
    }
    if let Some(n) = get("/connectionPool/http/http1MaxPendingRequests").and_then(Value::as_u64) {
        set(&mut up.spec, "limits.maxPending", n.into());
    }
    let failures = get("/outlierDetection/consecutive5xxErrors")
        .or_else(|| get("/outlierDetection/consecutiveGatewayErrors"))
        .and_then(Value::as_u64);
    if let Some(n) = failures {
        set(
            &mut up.spec,
            "outlierDetection.consecutiveFailures",
            n.into(),
        );
    }
    if let Some(t) = get("/outlierDetection/baseEjectionTime").and_then(Value::as_str) {
        set(&mut up.spec, "outlierDetection.baseEjection", t.into());
    }
    if let Some(n) = get("/outlierDetection/maxEjectionPercent").and_then(Value::as_u64) {
        set(&mut up.spec, "outlierDetection.maxEjectedPercent", n.into());
    }
    match get("/tls/mode").and_then(Value::as_str) {
        Some("ISTIO_MUTUAL") => set(&mut up.spec, "tls.mode", "mesh".into()),
        Some("SIMPLE") => {
            set(&mut up.spec, "tls.mode", "simple".into());
            if let Some(sni) = get("/tls/sni").and_then(Value::as_str) {
                set(&mut up.spec, "tls.sni", sni.into());
            }
            if let Some(ca) = get("/tls/caCertificates").and_then(Value::as_str) {
                set(&mut up.spec, "tls.caFile", ca.into());
            }
        }
        Some(other) => out.note(format_args!(
            "{id}: trafficPolicy.tls.mode {other}: not converted"
        )),
        None => {}
    }
    for (key, why) in [
        (
            "/loadBalancer",
            "the sidecar balances by requests in flight (p2c)",
        ),
        (
            "/outlierDetection/interval",
            "an endpoint is ejected at its n-th failure in a row",
        ),
        (
            "/connectionPool/http/idleTimeout",
            "the sidecar's --upstream-idle-timeout",
        ),
        (
            "/portLevelSettings",
            "one policy per upstream, not per port",
        ),
    ] {
        if get(key).is_some() {
            out.note(format_args!(
                "{id}: trafficPolicy{}: not converted ({why})",
                key.replace('/', ".")
            ));
        }
    }
    if doc.pointer("/spec/subsets").is_some() {
        out.note(format_args!(
            "{id}: subsets: not converted (traffic splitting is not Bulwark's)"
        ));
    }
}

fn virtual_service(doc: &Value, up: &mut Upstream, id: &str, out: &mut Output) {
    let routes = doc
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut extra = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        if up.port.is_none() {
            up.port = route
                .pointer("/route/0/destination/port/number")
                .and_then(Value::as_u64);
        }
        let mut settings = Map::new();
        if let Some(t) = route.get("timeout").and_then(Value::as_str) {
            set(&mut settings, "timeouts.request", t.into());
        }
        if let Some(t) = route
            .pointer("/retries/perTryTimeout")
            .and_then(Value::as_str)
        {
            set(&mut settings, "timeouts.perTry", t.into());
        }
        if let Some(n) = route.pointer("/retries/attempts").and_then(Value::as_u64) {
            set(&mut settings, "retry.maxAttempts", (n + 1).into());
        }
        if let Some(on) = route.pointer("/retries/retryOn").and_then(Value::as_str) {
            let (conditions, skipped) = retry_on(on);
            if !conditions.is_empty() {
                set(&mut settings, "retry.retryOn", conditions.into());
            }
            for s in skipped {
                out.note(format_args!(
                    "{id}: http[{i}].retries.retryOn {s}: not converted"
                ));
            }
        }
        for key in [
            "fault",
            "mirror",
            "rewrite",
            "redirect",
            "headers",
            "corsPolicy",
        ] {
            if route.get(key).is_some() {
                out.note(format_args!(
                    "{id}: http[{i}].{key}: not converted (not Bulwark's)"
                ));
            }
        }
        if route
            .get("route")
            .and_then(Value::as_array)
            .is_some_and(|r| r.len() > 1)
        {
            out.note(format_args!(
                "{id}: http[{i}].route: weighted destinations not converted; the first one's host is used"
            ));
        }
        match route_match(route) {
            // The catch-all route: the upstream's own settings.
            None => {
                for (k, v) in settings {
                    merge(&mut up.spec, k, v);
                }
            }
            Some(matched) => {
                // A route of its own: only timeouts, idempotence and retries per route.
                let mut r = Map::new();
                r.insert("match".into(), matched);
                if let Some(t) = settings.remove("timeouts") {
                    r.insert("timeouts".into(), t);
                }
                if let Some(retry) = settings.remove("retry") {
                    r.insert("retry".into(), retry);
                }
                extra.push(Value::Object(r));
            }
        }
    }
    if !extra.is_empty() {
        let routes = up
            .spec
            .entry("routes")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = routes {
            list.extend(extra);
        }
    }
}

/// Merges a block into the spec (a DestinationRule's and a VirtualService's settings of the
/// same block side by side).
fn merge(spec: &mut Map<String, Value>, key: String, value: Value) {
    match (spec.get_mut(&key), value) {
        (Some(Value::Object(existing)), Value::Object(new)) => existing.extend(new),
        (_, value) => {
            spec.insert(key, value);
        }
    }
}

/// A route's `match`, from the first of Istio's: path (exact or prefix) and method.
fn route_match(route: &Value) -> Option<Value> {
    let first = route.pointer("/match/0")?;
    let mut m = Map::new();
    if let Some(p) = first.pointer("/uri/exact").and_then(Value::as_str) {
        m.insert("path".into(), p.into());
    }
    if let Some(p) = first.pointer("/uri/prefix").and_then(Value::as_str) {
        m.insert("pathPrefix".into(), p.into());
    }
    if let Some(method) = first.pointer("/method/exact").and_then(Value::as_str) {
        m.insert("method".into(), method.into());
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// Istio's `retryOn` list as Bulwark conditions, and what has no counterpart.
fn retry_on(text: &str) -> (Vec<Value>, Vec<String>) {
    let mut conditions = Vec::new();
    let mut skipped = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let condition = match item {
            "5xx" | "gateway-error" | "reset" | "connect-failure" => Some(item.to_string()),
            "refused-stream" => Some("reset".to_string()),
            "cancelled" | "deadline-exceeded" | "internal" | "resource-exhausted"
            | "unavailable" => Some(format!("grpc-{item}")),
            code if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => {
                Some(code.to_string())
            }
            _ => None,
        };
        match condition {
            Some(c) if !conditions.contains(&Value::from(c.as_str())) => {
                conditions.push(Value::from(c))
            }
            Some(_) => {}
            None => skipped.push(item.to_string()),
        }
    }
    (conditions, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_retry_conditions_map_onto_bulwarks() {
        let (on, skipped) = retry_on("5xx,refused-stream,unavailable,retriable-4xx,503");
        assert_eq!(
            on,
            vec![
                json!("5xx"),
                json!("reset"),
                json!("grpc-unavailable"),
                json!("503")
            ]
        );
        assert_eq!(skipped, vec!["retriable-4xx".to_string()]);
    }

    #[test]
    fn hosts_name_the_upstream_and_its_namespace() {
        let mut ups = BTreeMap::new();
        upstream(&mut ups, "payments.shop.svc.cluster.local", "x");
        upstream(&mut ups, "ledger", "bank");
        upstream(&mut ups, "cart.shop", "x");
        let keys: Vec<_> = ups
            .iter()
            .map(|((ns, n), u)| format!("{ns}/{n} {}", u.host))
            .collect();
        assert_eq!(
            keys,
            [
                "bank/ledger ledger.bank.svc.cluster.local",
                "shop/cart cart.shop.svc.cluster.local",
                "shop/payments payments.shop.svc.cluster.local",
            ]
        );
    }
}
