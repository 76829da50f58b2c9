//! Semantic validation of policy resources: one pass that collects every problem with its
//! field path (`spec.retry.backoff.multiplier: must be >= 1.0, got 0.5`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration as StdDuration;

use super::capability::CapabilityExpr;
use super::defaults;
use super::model::{
    AdaptiveConcurrency, App, Authorization, CircuitBreaker, Dependency, Endpoints, Fallback,
    Inbound, InboundRateLimit, LevelActions, LevelRule, Metadata, OutlierDetection, RateLimitKey,
    Resource, Retry, Route, RouteMatch, ServicePolicy, Throttling, Timeouts, TlsMode,
    UpstreamPolicy, UpstreamTls,
};
use super::units::{Condition, Duration, GrpcCode, Percent};
use crate::spiffe::SpiffeId;

/// One problem in a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    /// `Kind/namespace/name` of the resource.
    pub resource: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is invalid: ", self.resource)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Resource {
    /// Checks every field; `Err` lists all problems found.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::default();
        match self {
            Resource::UpstreamPolicy(p) => validate_upstream(p, &mut v),
            Resource::ServicePolicy(p) => validate_service(p, &mut v),
        }
        if v.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors {
                resource: self.id(),
                errors: v.errors,
            })
        }
    }
}

/// Collects problems as the checks below walk a resource.
#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A duration that parses; zero allowed.
    fn duration(&mut self, path: &str, d: &Duration) -> Option<StdDuration> {
        d.parse().map_err(|e| self.error(path, e)).ok()
    }

    /// A duration that parses and is not zero.
    fn positive_duration(&mut self, path: &str, d: &Duration) -> Option<StdDuration> {
        let value = self.duration(path, d)?;
        if value.is_zero() {
            self.error(path, format!("must be greater than 0, got {d}"));
            return None;
        }
        Some(value)
    }

    /// An optional duration field that, when set, parses; with its text for messages that
    /// compare two fields.
    fn duration_field<'a>(
        &mut self,
        path: &str,
        d: &'a Option<Duration>,
    ) -> Option<(&'a Duration, StdDuration)> {
        let d = d.as_ref()?;
        self.duration(path, d).map(|value| (d, value))
    }

    /// Like [`Self::duration_field`], and not zero.
    fn positive_field<'a>(
        &mut self,
        path: &str,
        d: &'a Option<Duration>,
    ) -> Option<(&'a Duration, StdDuration)> {
        let d = d.as_ref()?;
        self.positive_duration(path, d).map(|value| (d, value))
    }

    /// A percentage in 0%..=100%.
    fn percent(&mut self, path: &str, p: &Percent) -> Option<f64> {
        p.parse().map_err(|e| self.error(path, e)).ok()
    }

    /// A percentage in (0%, 100%]: for thresholds where 0% would always (or never) hold.
    fn positive_percent(&mut self, path: &str, p: &Percent) -> Option<f64> {
        let value = self.percent(path, p)?;
        if value <= 0.0 {
            self.error(path, format!("must be greater than 0%, got {p}"));
            return None;
        }
        Some(value)
    }

    fn at_least(&mut self, path: &str, value: u32, min: u32) {
        if value < min {
            self.error(path, format!("must be >= {min}, got {value}"));
        }
    }

    fn at_most(&mut self, path: &str, value: u64, max: u64) {
        if value > max {
            self.error(path, format!("must be <= {max}, got {value}"));
        }
    }
}

// ───────────────────────────── paths ─────────────────────────────

/// `base.field`
fn at(base: &str, field: &str) -> String {
    format!("{base}.{field}")
}

/// `base[i]`
fn index(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// `base.key` for keys that read as one path segment, else `base["some key"]`.
fn key(base: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        format!("{base}.{key}")
    } else {
        format!("{base}[{key:?}]")
    }
}

// ───────────────────────────── names ─────────────────────────────

const DNS_LABEL: &str = "must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit)";

/// RFC 1123 label as Kubernetes uses it for names: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, <= 63.
fn is_dns_label(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.len() <= 63
        && s.starts_with(ok_char)
        && s.ends_with(ok_char)
        && s.chars().all(|c| ok_char(c) || c == '-')
}

/// A DNS host name: dot-separated labels of letters, digits and `-`; one trailing dot allowed.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let ok_char = |c: char| c.is_ascii_alphanumeric();
            l.len() <= 63
                && l.starts_with(ok_char)
                && l.ends_with(ok_char)
                && l.chars().all(|c| ok_char(c) || c == '-')
        })
}

fn dns_label(v: &mut Validator, path: &str, s: &str) {
    if s.is_empty() {
        v.error(path, "must not be empty");
    } else if !is_dns_label(s) {
        v.error(path, format!("{DNS_LABEL}, got {s:?}"));
    }
}

/// Another policy named from this one: `name` (same namespace) or `name.namespace`.
fn is_policy_ref(s: &str) -> bool {
    match s.split_once('.') {
        None => is_dns_label(s),
        Some((name, ns)) => is_dns_label(name) && is_dns_label(ns),
    }
}

fn policy_ref(v: &mut Validator, path: &str, s: &str) -> bool {
    if s.is_empty() {
        v.error(path, "must not be empty");
        false
    } else if !is_policy_ref(s) {
        v.error(
            path,
            format!("must be a policy name, or name.namespace, each a DNS-1123 label, got {s:?}"),
        );
        false
    } else {
        true
    }
}

/// The name part of a Kubernetes-style label key or label value: at most 63 letters, digits,
/// `-`, `_` or `.`, starting and ending with a letter or digit.
fn is_label_segment(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric();
    s.len() <= 63
        && s.starts_with(ok_char)
        && s.ends_with(ok_char)
        && s.chars()
            .all(|c| ok_char(c) || matches!(c, '-' | '_' | '.'))
}

/// `[prefix/]name` where the prefix is a lowercase DNS subdomain.
fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        None => is_label_segment(s),
        Some((prefix, name)) => {
            prefix.len() <= 253 && prefix.split('.').all(is_dns_label) && is_label_segment(name)
        }
    }
}

const LABEL_KEY: &str = "key must be a name of at most 63 letters, digits, \"-\", \"_\" or \".\" starting and ending with a letter or digit, optionally prefixed by a DNS subdomain and \"/\"";

/// HTTP header field name: a token (RFC 9110), here restricted to lowercase because HTTP/2
/// sends header names in lowercase only.
fn is_lowercase_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "!#$%&'*+-.^_`|~".contains(c))
}

fn is_header_name(s: &str) -> bool {
    is_lowercase_header_name(&s.to_ascii_lowercase())
}

fn metadata(v: &mut Validator, m: &Metadata) {
    dns_label(v, "metadata.name", &m.name);
    dns_label(v, "metadata.namespace", &m.namespace);
    for (k, value) in &m.labels {
        let path = key("metadata.labels", k);
        if !is_label_key(k) {
            v.error(&path, format!("{LABEL_KEY}, got {k:?}"));
        }
        if !(value.is_empty() || is_label_segment(value)) {
            v.error(
                &path,
                format!("must be at most 63 letters, digits, \"-\", \"_\" or \".\" starting and ending with a letter or digit, got {value:?}"),
            );
        }
    }
    for k in m.annotations.keys() {
        if !is_label_key(k) {
            v.error(
                key("metadata.annotations", k),
                format!("{LABEL_KEY}, got {k:?}"),
            );
        }
    }
}

// ───────────────────────────── UpstreamPolicy ─────────────────────────────

/// Upper bound of `retry.maxAttempts`: enough for long polling (dispatch.yaml uses 100), low
/// enough that a typo cannot turn one request into thousands.
const MAX_ATTEMPTS: u32 = 100;

/// Upper bound of `retry.replayBufferBytes`: the body kept per in-flight request for replay.
const MAX_REPLAY_BUFFER_BYTES: u64 = 64 * 1024 * 1024;

fn validate_upstream(p: &UpstreamPolicy, v: &mut Validator) {
    metadata(v, &p.metadata);
    let s = &p.spec;
    endpoints(v, &s.endpoints);
    if let Some(t) = &s.timeouts {
        timeouts(v, "spec.timeouts", t);
    }
    if let Some(r) = &s.retry {
        retry(v, "spec.retry", r);
    }
    if let Some(b) = &s.circuit_breaker {
        circuit_breaker(v, "spec.circuitBreaker", b);
    }
    if let Some(o) = &s.outlier_detection {
        outlier_detection(v, "spec.outlierDetection", o);
    }
    if let Some(n) = s.limits.as_ref().and_then(|l| l.max_concurrent) {
        v.at_least("spec.limits.maxConcurrent", n, 1);
    }
    if let Some(a) = &s.adaptive_concurrency {
        adaptive_concurrency(v, "spec.adaptiveConcurrency", a);
    }
    if let Some(c) = &s.criticality {
        criticality(v, "spec.criticality", c);
    }
    if let Some(r) = &s.rate_limit {
        rate(v, "spec.rateLimit", r.requests, r.per.as_ref(), r.burst);
    }
    if let Some(t) = &s.throttling {
        throttling(v, "spec.throttling", t);
    }
    if let Some(f) = &s.fallback {
        fallback(v, "spec.fallback", f, &p.metadata);
    }
    routes(v, "spec.routes", &s.routes);
    if let Some(t) = &s.tls {
        tls(v, "spec.tls", t, &s.endpoints);
    }
    for (i, n) in s.export_to.iter().enumerate() {
        if n != "*" && n != "." {
            let path = index("spec.exportTo", i);
            if !is_dns_label(n) {
                v.error(
                    &path,
                    format!("must be a namespace name, \".\" or \"*\", got {n:?}"),
                );
            }
        }
    }
}

fn tls(v: &mut Validator, path: &str, t: &UpstreamTls, e: &Endpoints) {
    let only = |v: &mut Validator, field: &str, set: bool, modes: &str| {
        if set {
            v.error(at(path, field), format!("applies only to mode {modes}"));
        }
    };
    only(
        v,
        "serverIdentity",
        t.server_identity.is_some() && t.mode != TlsMode::Mesh,
        "mesh",
    );
    only(
        v,
        "sni",
        t.sni.is_some() && t.mode != TlsMode::Simple,
        "simple",
    );
    only(
        v,
        "caFile",
        t.ca_file.is_some() && t.mode != TlsMode::Simple,
        "simple",
    );
    if let Some(id) = &t.server_identity
        && let Err(e) = id.parse::<SpiffeId>()
    {
        v.error(at(path, "serverIdentity"), e.to_string());
    }
    if let Some(sni) = &t.sni
        && !is_dns_name(sni)
    {
        v.error(
            at(path, "sni"),
            format!("must be a DNS name such as api.example.com, got {sni:?}"),
        );
    }
    if let Some(f) = &t.ca_file
        && !f.starts_with('/')
    {
        v.error(
            at(path, "caFile"),
            format!("must be an absolute path, got {f:?}"),
        );
    }
    if t.mode == TlsMode::Simple && t.sni.is_none() && e.dns.is_none() {
        v.error(
            at(path, "sni"),
            "is required with static endpoints (the name the server's certificate is checked against)",
        );
    }
}

fn endpoints(v: &mut Validator, e: &Endpoints) {
    const PATH: &str = "spec.endpoints";
    match (&e.dns, &e.static_addrs) {
        (Some(_), Some(_)) => v.error(PATH, "must set exactly one of dns or static, got both"),
        (None, None) => v.error(PATH, "must set exactly one of dns or static, got neither"),
        _ => {}
    }
    if let Some(dns) = &e.dns {
        dns_endpoint(v, &at(PATH, "dns"), dns);
    }
    if let Some(addrs) = &e.static_addrs {
        let path = at(PATH, "static");
        if addrs.is_empty() {
            v.error(&path, "must list at least one ip:port");
        }
        let parsed: Vec<Option<SocketAddr>> = addrs.iter().map(|a| a.trim().parse().ok()).collect();
        for (i, addr) in addrs.iter().enumerate() {
            let path = index(&path, i);
            match parsed[i] {
                Some(a) if a.port() == 0 => {
                    v.error(&path, "port must be between 1 and 65535, got 0");
                }
                Some(a) => {
                    if let Some(first) = parsed[..i].iter().position(|p| *p == Some(a)) {
                        v.error(&path, format!("duplicates static[{first}]"));
                    }
                }
                None => v.error(
                    &path,
                    format!("must be ip:port such as \"10.0.0.5:8080\" or \"[fd00::5]:8080\", got {addr:?}"),
                ),
            }
        }
    }
    if let Some(refresh) = &e.dns_refresh {
        let path = at(PATH, "dnsRefresh");
        v.positive_duration(&path, refresh);
        if e.dns.is_none() && e.static_addrs.is_some() {
            v.error(&path, "only applies to dns endpoints");
        }
    }
}

/// `host:port`, where host is a DNS name or an IP address (IPv6 in brackets).
fn dns_endpoint(v: &mut Validator, path: &str, text: &str) {
    let bad =
        || format!("must be host:port such as \"payments.svc.cluster.local:8080\", got {text:?}");
    let Some((host, port)) = text.rsplit_once(':') else {
        return v.error(path, bad());
    };
    let Ok(port) = port.parse::<u64>() else {
        return v.error(path, bad());
    };
    if !(1..=65535).contains(&port) {
        return v.error(
            path,
            format!("port must be between 1 and 65535, got {port}"),
        );
    }
    let is_ipv6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| h.parse::<Ipv6Addr>().is_ok());
    if !(is_ipv6 || is_dns_name(host)) {
        v.error(
            path,
            format!("host must be a DNS name or an IP address, got {host:?}"),
        );
    }
}

/// Shared by `spec.timeouts` and `spec.routes[i].timeouts`. Pairs are compared when both are
/// written in the same block.
fn timeouts(v: &mut Validator, path: &str, t: &Timeouts) {
    let request = v.positive_field(&at(path, "request"), &t.request);
    let per_try = v.positive_field(&at(path, "perTry"), &t.per_try);
    let connect = v.positive_field(&at(path, "connect"), &t.connect);
    if let Some((request_text, request)) = request {
        for (field, other) in [("perTry", per_try), ("connect", connect)] {
            if let Some((text, value)) = other
                && value > request
            {
                v.error(
                    at(path, field),
                    format!("must be <= request ({request_text}), got {text}"),
                );
            }
        }
    }
}

/// Shared by `spec.retry` and `spec.routes[i].retry`.
fn retry(v: &mut Validator, path: &str, r: &Retry) {
    if let Some(n) = r.max_attempts {
        let path = at(path, "maxAttempts");
        v.at_least(&path, n, 1);
        v.at_most(&path, n.into(), MAX_ATTEMPTS.into());
    }
    if let Some(b) = &r.backoff {
        let path = at(path, "backoff");
        // Zero is allowed: retry at once.
        let initial = v.duration_field(&at(&path, "initial"), &b.initial);
        let max = v.duration_field(&at(&path, "max"), &b.max);
        if let (Some((initial_text, initial)), Some((max_text, max))) = (initial, max)
            && initial > max
        {
            v.error(
                at(&path, "initial"),
                format!("must be <= max ({max_text}), got {initial_text}"),
            );
        }
        if let Some(m) = b.multiplier {
            let path = at(&path, "multiplier");
            if m.is_nan() || m < 1.0 {
                v.error(&path, format!("must be >= 1.0, got {m}"));
            } else if !m.is_finite() {
                v.error(&path, format!("must be a finite number, got {m}"));
            }
        }
        if let Some(j) = &b.jitter {
            v.percent(&at(&path, "jitter"), j);
        }
    }
    if let Some(d) = &r.max_elapsed {
        v.positive_duration(&at(path, "maxElapsed"), d);
    }
    if let Some(list) = &r.retry_on {
        conditions(v, path, "retryOn", list);
    }
    if let Some(b) = &r.budget {
        let path = at(path, "budget");
        if let Some(ratio) = &b.ratio {
            v.percent(&at(&path, "ratio"), ratio);
        }
        if let Some(window) = &b.window {
            v.positive_duration(&at(&path, "window"), window);
        }
    }
    if let Some(bytes) = r.replay_buffer_bytes
        && bytes > MAX_REPLAY_BUFFER_BYTES
    {
        v.error(
            at(path, "replayBufferBytes"),
            format!("must be <= {MAX_REPLAY_BUFFER_BYTES} (64 MiB), got {bytes}"),
        );
    }
}

/// `retryOn` / `failureOn`: each entry a [`Condition`], none twice.
fn conditions(v: &mut Validator, base: &str, field: &str, list: &[String]) {
    let mut seen: Vec<(Condition, usize)> = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let path = index(&at(base, field), i);
        match Condition::parse(text) {
            Ok(c) => match seen.iter().find(|(s, _)| *s == c) {
                Some((_, first)) => v.error(path, format!("duplicates {field}[{first}]")),
                None => seen.push((c, i)),
            },
            Err(e) => v.error(path, e),
        }
    }
}

fn circuit_breaker(v: &mut Validator, path: &str, b: &CircuitBreaker) {
    // The window in force: as written (None when invalid, already reported) or the default.
    let window = match &b.window {
        Some(_) => v
            .positive_field(&at(path, "window"), &b.window)
            .map(|(text, value)| (text.to_string(), value)),
        None => {
            let default = defaults::BREAKER_WINDOW;
            Some((format!("default {}", Duration::from_std(default)), default))
        }
    };
    if let Some(buckets) = b.buckets {
        let buckets_path = at(path, "buckets");
        v.at_least(&buckets_path, buckets, 1);
        // Each bucket must span at least a millisecond, the resolution of the sidecar's clock.
        if let Some((text, window)) = window
            && u128::from(buckets) > window.as_millis()
        {
            v.error(
                &buckets_path,
                format!(
                    "must be <= the window in milliseconds ({text} = {} ms), got {buckets}",
                    window.as_millis()
                ),
            );
        }
    }
    if let Some(n) = b.min_requests {
        v.at_least(&at(path, "minRequests"), n, 1);
    }
    if let Some(rate) = &b.failure_rate {
        v.positive_percent(&at(path, "failureRate"), rate);
    }
    if let Some(slow) = &b.slow_call {
        let path = at(path, "slowCall");
        v.positive_duration(&at(&path, "duration"), &slow.duration);
        v.positive_percent(&at(&path, "rate"), &slow.rate);
    }
    let open_for = v.positive_field(&at(path, "openFor"), &b.open_for);
    let max_open_for = v.positive_field(&at(path, "maxOpenFor"), &b.max_open_for);
    if let (Some((open_text, open)), Some((max_text, max))) = (open_for, max_open_for)
        && open > max
    {
        v.error(
            at(path, "openFor"),
            format!("must be <= maxOpenFor ({max_text}), got {open_text}"),
        );
    }
    if let Some(n) = b.half_open_probes {
        v.at_least(&at(path, "halfOpenProbes"), n, 1);
    }
    if let Some(list) = &b.failure_on {
        conditions(v, path, "failureOn", list);
    }
}

fn outlier_detection(v: &mut Validator, path: &str, o: &OutlierDetection) {
    if let Some(n) = o.consecutive_failures {
        v.at_least(&at(path, "consecutiveFailures"), n, 1);
    }
    if let Some(d) = &o.base_ejection {
        v.positive_duration(&at(path, "baseEjection"), d);
    }
    if let Some(n) = o.max_ejected_percent {
        v.at_most(&at(path, "maxEjectedPercent"), n.into(), 100);
    }
}

fn fallback(v: &mut Validator, path: &str, f: &Fallback, own: &Metadata) {
    let own_full = format!("{}.{}", own.name, own.namespace);
    for (i, target) in f.failover.iter().enumerate() {
        let path = index(&at(path, "failover"), i);
        if !policy_ref(v, &path, target) {
            continue;
        }
        if *target == own.name || *target == own_full {
            v.error(&path, "must not name this policy itself");
        } else if let Some(first) = f.failover[..i].iter().position(|t| t == target) {
            v.error(&path, format!("duplicates failover[{first}]"));
        }
    }
    if let Some(r) = &f.response {
        let path = at(path, "response");
        if let Some(status) = r.status
            && !(100..=599).contains(&status)
        {
            v.error(
                at(&path, "status"),
                format!("must be between 100 and 599, got {status}"),
            );
        }
        if let Some(code) = &r.grpc_status
            && GrpcCode::from_name(code).is_none()
        {
            v.error(
                at(&path, "grpcStatus"),
                format!("unknown gRPC status {code:?}; expected a name such as unavailable or resource-exhausted"),
            );
        }
        for (name, value) in &r.headers {
            let path = key(&at(&path, "headers"), name);
            if !is_header_name(name) {
                v.error(&path, format!("must be a valid header name, got {name:?}"));
            }
            if value.chars().any(|c| c.is_control() && c != '\t') {
                v.error(&path, "value must not contain control characters");
            }
        }
    }
}

fn routes(v: &mut Validator, base: &str, routes: &[Route]) {
    for (i, r) in routes.iter().enumerate() {
        let path = index(base, i);
        if let Some(name) = &r.name {
            let name_path = at(&path, "name");
            dns_label(v, &name_path, name);
            if let Some(first) = routes[..i]
                .iter()
                .position(|o| o.name.as_ref() == Some(name))
            {
                v.error(&name_path, format!("duplicates routes[{first}].name"));
            }
        }
        route_match(v, &at(&path, "match"), &r.matches);
        if let Some(first) = routes[..i].iter().position(|o| o.matches == r.matches) {
            v.error(at(&path, "match"), format!("same as routes[{first}].match"));
        }
        if let Some(t) = &r.timeouts {
            timeouts(v, &at(&path, "timeouts"), t);
        }
        if let Some(retry_policy) = &r.retry {
            retry(v, &at(&path, "retry"), retry_policy);
        }
        if let Some(c) = &r.criticality {
            criticality(v, &at(&path, "criticality"), c);
        }
    }
}

/// A criticality tier's name.
fn criticality(v: &mut Validator, path: &str, c: &str) {
    if !defaults::CRITICALITIES.contains(&c) {
        v.error(
            path,
            format!(
                "unknown criticality {c:?}; expected sheddable, sheddable-plus, critical or critical-plus"
            ),
        );
    }
}

fn adaptive_concurrency(v: &mut Validator, path: &str, a: &AdaptiveConcurrency) {
    let min = a.min_limit.unwrap_or(defaults::ADAPTIVE_MIN_LIMIT);
    let max = a.max_limit.unwrap_or(defaults::ADAPTIVE_MAX_LIMIT);
    if let Some(n) = a.min_limit {
        v.at_least(&at(path, "minLimit"), n, 1);
    }
    if let Some(n) = a.max_limit {
        let p = at(path, "maxLimit");
        v.at_least(&p, n, 1);
        v.at_most(&p, n.into(), MAX_ADAPTIVE_LIMIT.into());
    }
    if min > max {
        v.error(
            at(path, "minLimit"),
            format!("must be <= maxLimit ({max}), got {min}"),
        );
    }
    if let Some(n) = a.initial_limit
        && (n < min || n > max)
    {
        v.error(
            at(path, "initialLimit"),
            format!("must be between minLimit ({min}) and maxLimit ({max}), got {n}"),
        );
    }
    if let Some(p) = &a.tolerance {
        v.percent(&at(path, "tolerance"), p);
    }
    let update = v
        .positive_field(&at(path, "updateInterval"), &a.update_interval)
        .map(|(_, d)| d);
    if let Some((text, probe)) = v.positive_field(&at(path, "probeInterval"), &a.probe_interval) {
        let update = update.unwrap_or(defaults::ADAPTIVE_UPDATE_INTERVAL);
        if probe <= update {
            v.error(
                at(path, "probeInterval"),
                format!("must be longer than updateInterval ({update:?}), got {text}"),
            );
        }
    }
    if let Some(n) = a.probe_concurrency {
        let p = at(path, "probeConcurrency");
        v.at_least(&p, n, 1);
        v.at_most(&p, n.into(), max.into());
    }
    if let Some(n) = a.probe_samples {
        let p = at(path, "probeSamples");
        v.at_least(&p, n, 1);
        v.at_most(&p, n.into(), MAX_PROBE_SAMPLES.into());
    }
    if let Some(n) = a.max_queue {
        v.at_most(&at(path, "maxQueue"), n.into(), MAX_ADAPTIVE_QUEUE.into());
    }
    let max_wait = v
        .duration_field(&at(path, "maxQueueWait"), &a.max_queue_wait)
        .map(|(_, d)| d);
    if let Some((text, standing)) =
        v.duration_field(&at(path, "standingQueueWait"), &a.standing_queue_wait)
    {
        let max_wait = max_wait.unwrap_or(defaults::ADAPTIVE_MAX_QUEUE_WAIT);
        if standing > max_wait {
            v.error(
                at(path, "standingQueueWait"),
                format!("must not be longer than maxQueueWait ({max_wait:?}), got {text}"),
            );
        }
    }
}

/// Bounds that keep the limiter's state small whatever a policy says.
const MAX_ADAPTIVE_LIMIT: u32 = 100_000;
const MAX_ADAPTIVE_QUEUE: u32 = 100_000;
const MAX_PROBE_SAMPLES: u32 = 10_000;

fn route_match(v: &mut Validator, path: &str, m: &RouteMatch) {
    if m.grpc_method.is_none() && m.path.is_none() && m.path_prefix.is_none() && m.method.is_none()
    {
        v.error(
            path,
            "must set at least one of grpcMethod, path, pathPrefix or method",
        );
    }
    if let Some(g) = &m.grpc_method
        && !is_grpc_method(g)
    {
        v.error(
            at(path, "grpcMethod"),
            format!(
                "must look like \"/package.Service/Method\" or \"/package.Service/\", got {g:?}"
            ),
        );
    }
    for (field, value) in [("path", &m.path), ("pathPrefix", &m.path_prefix)] {
        let Some(value) = value else { continue };
        let field_path = at(path, field);
        if m.grpc_method.is_some() {
            v.error(&field_path, "cannot be combined with grpcMethod");
        }
        if !value.starts_with('/') {
            v.error(&field_path, format!("must start with \"/\", got {value:?}"));
        }
    }
    if m.path.is_some() && m.path_prefix.is_some() {
        v.error(at(path, "pathPrefix"), "cannot be combined with path");
    }
    if let Some(method) = &m.method
        && !is_http_method(method)
    {
        v.error(
            at(path, "method"),
            format!("must be an uppercase HTTP method such as GET or POST, got {method:?}"),
        );
    }
}

/// An uppercase HTTP method token (`GET`, `POST`, or an extension method like `PURGE`).
fn is_http_method(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c == '-' || c == '_')
}

/// `/package.Service/Method` or `/package.Service/`: a dotted service name of identifiers and
/// an identifier or nothing.
fn is_grpc_method(s: &str) -> bool {
    let ident = |p: &str| {
        p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let Some((service, method)) = s.strip_prefix('/').and_then(|r| r.split_once('/')) else {
        return false;
    };
    service.split('.').all(ident) && (method.is_empty() || ident(method))
}

// ───────────────────────────── ServicePolicy ─────────────────────────────

/// The levels a ServicePolicy may configure; NORMAL is what holds when no rule does.
const LEVELS: [&str; 3] = ["DEGRADED", "SEVERE", "EMERGENCY"];
const PRIORITIES: [&str; 4] = ["low", "normal", "high", "critical"];

fn validate_service(p: &ServicePolicy, v: &mut Validator) {
    metadata(v, &p.metadata);
    let s = &p.spec;
    if let Some(a) = &s.app {
        app(v, "spec.app", a);
    }
    for name in s.dependencies.keys() {
        policy_ref(v, &key("spec.dependencies", name), name);
    }
    if let Some(u) = &s.unhealthy_when {
        const PATH: &str = "spec.unhealthyWhen";
        if let Some(p) = &u.breaker_open_pods {
            v.positive_percent(&at(PATH, "breakerOpenPods"), p);
        }
        if let Some(p) = &u.success_rate_below {
            v.positive_percent(&at(PATH, "successRateBelow"), p);
        }
        if let Some(p) = &u.overloaded_pods {
            v.positive_percent(&at(PATH, "overloadedPods"), p);
        }
    }
    for (level, rule) in &s.levels {
        let path = key("spec.levels", level);
        level_name(v, &path, level);
        level_rule(v, &path, rule, &s.dependencies);
    }
    for (name, text) in &s.capabilities {
        let path = key("spec.capabilities", name);
        capability(v, &path, name, text, &s.dependencies);
    }
    for (level, a) in &s.actions {
        let path = key("spec.actions", level);
        level_name(v, &path, level);
        level_actions(v, &path, a);
    }
    if let Some(i) = &s.inbound {
        inbound(v, "spec.inbound", i);
    }
    if let Some(d) = &s.lower_after {
        v.positive_duration("spec.lowerAfter", d);
    }
    if let Some(p) = &s.max_unready_percent {
        v.percent("spec.maxUnreadyPercent", p);
    }
    if let Some(sa) = &s.service_account {
        dns_label(v, "spec.serviceAccount", sa);
    }
    if let Some(0) = s.alerts.as_ref().and_then(|a| a.max_per_minute) {
        v.error("spec.alerts.maxPerMinute", "must be >= 1, got 0");
    }
    if let Some(url) = s.alerts.as_ref().and_then(|a| a.webhook.as_ref()) {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        let host_missing = |r: &str| r.is_empty() || r.starts_with('/');
        if rest.is_none_or(|r| host_missing(r) || r.contains(char::is_whitespace)) {
            v.error(
                "spec.alerts.webhook",
                format!("must be an http:// or https:// URL, got {url:?}"),
            );
        }
    }
}

fn app(v: &mut Validator, path: &str, a: &App) {
    if a.port == 0 {
        v.error(at(path, "port"), "must be between 1 and 65535, got 0");
    }
    let Some(h) = &a.health_check else { return };
    let path = at(path, "healthCheck");
    match (&h.http, &h.grpc) {
        (Some(_), Some(_)) => v.error(&path, "must set exactly one of http or grpc, got both"),
        (None, None) => v.error(&path, "must set exactly one of http or grpc, got neither"),
        _ => {}
    }
    if let Some(http) = &h.http
        && !http.starts_with('/')
    {
        v.error(
            at(&path, "http"),
            format!("must start with \"/\", got {http:?}"),
        );
    }
    let interval = v.positive_field(&at(&path, "interval"), &h.interval);
    let timeout = v.positive_field(&at(&path, "timeout"), &h.timeout);
    if let (Some((interval_text, interval)), Some((timeout_text, timeout))) = (interval, timeout)
        && timeout > interval
    {
        v.error(
            at(&path, "timeout"),
            format!("must be <= interval ({interval_text}), got {timeout_text}"),
        );
    }
}

fn level_name(v: &mut Validator, path: &str, level: &str) {
    if !LEVELS.contains(&level) {
        v.error(
            path,
            format!("unknown level {level:?}; expected DEGRADED, SEVERE or EMERGENCY"),
        );
    }
}

fn level_rule(
    v: &mut Validator,
    path: &str,
    rule: &LevelRule,
    dependencies: &BTreeMap<String, Dependency>,
) {
    if rule.unhealthy_dependencies.is_none() && rule.critical_unhealthy.is_none() {
        v.error(
            path,
            "must set at least one of unhealthyDependencies or criticalUnhealthy",
        );
    }
    // A threshold above the number of dependencies could never hold.
    let all = dependencies.len();
    let critical = dependencies.values().filter(|d| d.critical).count();
    let checks = [
        (
            "unhealthyDependencies",
            rule.unhealthy_dependencies,
            all,
            "dependencies",
        ),
        (
            "criticalUnhealthy",
            rule.critical_unhealthy,
            critical,
            "critical dependencies",
        ),
    ];
    for (field, value, declared, what) in checks {
        let Some(n) = value else { continue };
        let path = at(path, field);
        if n < 1 {
            v.error(&path, format!("must be >= 1, got {n}"));
        } else if usize::try_from(n).map_or(true, |n| n > declared) {
            v.error(
                &path,
                format!("must be <= the number of {what} ({declared}), got {n}"),
            );
        }
    }
}

fn level_actions(v: &mut Validator, path: &str, a: &LevelActions) {
    for (i, priority) in a.shed_priorities.iter().enumerate() {
        let path = index(&at(path, "shedPriorities"), i);
        if !PRIORITIES.contains(&priority.as_str()) {
            v.error(
                path,
                format!("unknown priority {priority:?}; expected low, normal, high or critical"),
            );
        } else if let Some(first) = a.shed_priorities[..i].iter().position(|p| p == priority) {
            v.error(path, format!("duplicates shedPriorities[{first}]"));
        }
    }
    if let Some(n) = a.max_retry_attempts {
        let path = at(path, "maxRetryAttempts");
        v.at_least(&path, n, 1);
        v.at_most(&path, n.into(), MAX_ATTEMPTS.into());
    }
}

fn inbound(v: &mut Validator, path: &str, i: &Inbound) {
    if let Some(h) = &i.priority_header
        && !is_lowercase_header_name(h)
    {
        v.error(
            at(path, "priorityHeader"),
            format!("must be a lowercase header name such as x-priority, got {h:?}"),
        );
    }
    if let Some(h) = &i.criticality_header
        && !is_lowercase_header_name(h)
    {
        v.error(
            at(path, "criticalityHeader"),
            format!("must be a lowercase header name such as x-bulwark-criticality, got {h:?}"),
        );
    } else if i.criticality_header.is_some() && i.criticality_header == i.priority_header {
        v.error(
            at(path, "criticalityHeader"),
            "must differ from priorityHeader: one header carries priorities, the other criticalities",
        );
    }
    if let Some(d) = &i.shed_retry_after {
        v.positive_duration(&at(path, "shedRetryAfter"), d);
    }
    if let Some(n) = i.max_concurrent {
        v.at_least(&at(path, "maxConcurrent"), n, 1);
    }
    if let Some(a) = &i.authorization {
        authorization(v, &at(path, "authorization"), a);
    }
    if let Some(c) = &i.criticality {
        criticality(v, &at(path, "criticality"), c);
    }
    let routes_path = at(path, "routes");
    for (n, r) in i.routes.iter().enumerate() {
        let path = index(&routes_path, n);
        if let Some(name) = &r.name {
            let name_path = at(&path, "name");
            dns_label(v, &name_path, name);
            if let Some(first) = i.routes[..n]
                .iter()
                .position(|o| o.name.as_ref() == Some(name))
            {
                v.error(&name_path, format!("duplicates routes[{first}].name"));
            }
        }
        route_match(v, &at(&path, "match"), &r.matches);
        if let Some(first) = i.routes[..n].iter().position(|o| o.matches == r.matches) {
            v.error(at(&path, "match"), format!("same as routes[{first}].match"));
        }
        criticality(v, &at(&path, "criticality"), &r.criticality);
    }
    if let Some(a) = &i.adaptive_concurrency {
        adaptive_concurrency(v, &at(path, "adaptiveConcurrency"), a);
    }
    if let Some(r) = &i.rate_limit {
        inbound_rate_limit(v, &at(path, "rateLimit"), r);
    }
}

/// A token bucket's `requests`, `per` and `burst`.
fn rate(v: &mut Validator, path: &str, requests: u32, per: Option<&Duration>, burst: Option<u32>) {
    v.at_least(&at(path, "requests"), requests, 1);
    if let Some(d) = per
        && let Some(value) = v.positive_duration(&at(path, "per"), d)
        && value > MAX_RATE_PER
    {
        v.error(at(path, "per"), format!("must be at most 1h, got {d}"));
    }
    if let Some(b) = burst {
        v.at_least(&at(path, "burst"), b, 1);
    }
}

const MAX_RATE_PER: StdDuration = StdDuration::from_secs(3600);

fn inbound_rate_limit(v: &mut Validator, path: &str, r: &InboundRateLimit) {
    rate(v, path, r.requests, r.per.as_ref(), r.burst);
    match (r.by.unwrap_or_default(), &r.header) {
        (RateLimitKey::Header, None) => v.error(at(path, "header"), "is required with by: header"),
        (RateLimitKey::Header, Some(h)) if !is_lowercase_header_name(h) => v.error(
            at(path, "header"),
            format!("must be a lowercase header name such as x-api-key, got {h:?}"),
        ),
        (RateLimitKey::Identity | RateLimitKey::ClientIp, Some(_)) => {
            v.error(at(path, "header"), "is only allowed with by: header")
        }
        _ => {}
    }
}

fn throttling(v: &mut Validator, path: &str, t: &Throttling) {
    if let Some(m) = t.multiplier
        && !(1.0..=100.0).contains(&m)
    {
        v.error(
            at(path, "multiplier"),
            format!("must be between 1 and 100, got {m}"),
        );
    }
    if let Some((text, window)) = v.positive_field(&at(path, "window"), &t.window)
        && window > MAX_RATE_PER
    {
        v.error(
            at(path, "window"),
            format!("must be at most 1h, got {text}"),
        );
    }
}

fn authorization(v: &mut Validator, path: &str, a: &Authorization) {
    if a.rules.is_empty() && !a.dry_run {
        v.error(
            at(path, "rules"),
            "must allow something: without rules every request is denied (set dryRun to try that first)",
        );
    }
    for (i, rule) in a.rules.iter().enumerate() {
        let path = index(&at(path, "rules"), i);
        if rule.from.is_none() && rule.to.is_empty() {
            v.error(
                &path,
                "must set from or to (a rule without either allows everything)",
            );
        }
        if let Some(from) = &rule.from {
            let from_path = at(&path, "from");
            if from.identities.is_empty()
                && from.service_accounts.is_empty()
                && from.namespaces.is_empty()
            {
                v.error(
                    &from_path,
                    "must set at least one of identities, serviceAccounts or namespaces",
                );
            }
            for (j, id) in from.identities.iter().enumerate() {
                if let Err(e) = id.parse::<SpiffeId>() {
                    v.error(index(&at(&from_path, "identities"), j), e.to_string());
                }
            }
            for (j, sa) in from.service_accounts.iter().enumerate() {
                let ok = sa
                    .split_once('/')
                    .is_some_and(|(ns, name)| is_dns_label(ns) && is_dns_label(name));
                if !ok {
                    v.error(
                        index(&at(&from_path, "serviceAccounts"), j),
                        format!("must be namespace/service-account, got {sa:?}"),
                    );
                }
            }
            for (j, ns) in from.namespaces.iter().enumerate() {
                dns_label(v, &index(&at(&from_path, "namespaces"), j), ns);
            }
        }
        for (j, m) in rule.to.iter().enumerate() {
            route_match(v, &index(&at(&path, "to"), j), m);
        }
    }
}

fn capability(
    v: &mut Validator,
    path: &str,
    name: &str,
    text: &str,
    dependencies: &BTreeMap<String, Dependency>,
) {
    let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        v.error(
            path,
            format!(
                "name must be letters, digits, \"-\" or \"_\", starting with a letter, got {name:?}"
            ),
        );
    }
    match CapabilityExpr::parse(text) {
        Err(e) => v.error(path, e),
        Ok(expr) => {
            let mut reported: Vec<&str> = Vec::new();
            for dep in expr.dependencies() {
                if !dependencies.contains_key(dep) && !reported.contains(&dep) {
                    reported.push(dep);
                    v.error(
                        path,
                        format!("{dep:?} is not a dependency declared in spec.dependencies"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
