//! Degradation, as pure functions of a service's policy, its pods' latest health reports, the
//! operators' overrides, the previous status and the time: which dependencies are unhealthy
//! (`unhealthyWhen`), the level (`levels`, most severe rule first), the capabilities, the pods
//! that degradation may take out of rotation (`maxUnreadyPercent`), damping (`lowerAfter`) and
//! the events a change makes. The elected replica runs it ([`runner`](super::runner)); nothing here touches
//! etcd or a clock.

use std::collections::BTreeSet;

use bulwark_proto::policy::{CapabilityExpr, ServicePolicy, defaults};

use crate::store::values::{BreakerState, HealthRecord, OverrideRecord};
pub use crate::store::values::{DependencyStatus, OverrideStatus, Pending, ServiceStatus};

pub use bulwark_proto::level::Level;

/// A change worth an event (and an alert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// `level` or `breaker`.
    pub kind: &'static str,
    pub from: String,
    pub to: String,
    pub reasons: Vec<String>,
    /// One line: `mrg/order-orchestrator NORMAL -> DEGRADED: midtrans unhealthy (...)`.
    pub text: String,
}

/// Everything [`evaluate`] needs besides the policy.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The service's pods and their live reports.
    pub reports: &'a [(&'a str, &'a HealthRecord)],
    /// The service's own override, else the mesh's.
    pub forced: Option<(&'a OverrideRecord, Level)>,
    pub previous: Option<&'a ServiceStatus>,
    /// Unix milliseconds.
    pub now: i64,
}

/// The new status of a service and the transitions from the previous one.
pub fn evaluate(policy: &ServicePolicy, inputs: Inputs<'_>) -> (ServiceStatus, Vec<Transition>) {
    let spec = &policy.spec;
    let namespace = policy.metadata.namespace.clone();
    let service = policy.metadata.name.clone();
    let dependencies: Vec<DependencyStatus> = spec
        .dependencies
        .iter()
        .map(|(name, d)| judge(policy, name, d.critical, inputs.reports))
        .collect();
    let unhealthy: Vec<String> = dependencies
        .iter()
        .filter(|d| !d.healthy)
        .map(|d| d.name.clone())
        .collect();
    let critical_unhealthy = dependencies
        .iter()
        .filter(|d| d.critical && !d.healthy)
        .count();
    let computed = level_of(policy, unhealthy.len(), critical_unhealthy);

    // Damping: up at once, down only after the lower level held for `lowerAfter`; an
    // override replaces both, and its end returns to the computed level at once.
    let hold = spec
        .lower_after
        .as_ref()
        .and_then(|d| d.parse().ok())
        .unwrap_or(defaults::LOWER_AFTER);
    let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
    let previous = inputs.previous;
    let was_forced = previous.is_some_and(|p| p.r#override.is_some());
    let current = previous.map(|p| p.level);
    let (level, pending) = match (inputs.forced, current) {
        (Some((_, forced)), _) => (forced, None),
        (None, None) => (computed, None),
        (None, Some(_)) if was_forced => (computed, None),
        (None, Some(current)) if computed >= current => (computed, None),
        (None, Some(current)) => {
            let pending = match previous.and_then(|p| p.pending) {
                Some(p) => Pending {
                    level: p.level.max(computed),
                    since: p.since,
                },
                None => Pending {
                    level: computed,
                    since: inputs.now,
                },
            };
            if inputs.now.saturating_sub(pending.since) >= hold_ms {
                (pending.level, None)
            } else {
                (current, Some(pending))
            }
        }
    };
    // A step down that left the computed level still lower waits again from now.
    let pending = match pending {
        None if inputs.forced.is_none() && computed < level => Some(Pending {
            level: computed,
            since: inputs.now,
        }),
        other => other,
    };
    let since = match previous {
        Some(p) if p.level == level => p.since,
        _ => inputs.now,
    };

    let healthy = |name: &str| dependencies.iter().any(|d| d.name == name && d.healthy);
    let capabilities = spec
        .capabilities
        .iter()
        .map(|(name, text)| {
            // Validated at apply time; an expression that no longer parses holds nothing.
            let holds = CapabilityExpr::parse(text).is_ok_and(|e| e.eval(&healthy));
            (name.clone(), holds)
        })
        .collect();

    let mut reasons: Vec<String> = dependencies
        .iter()
        .filter(|d| !d.healthy)
        .map(|d| format!("{} unhealthy ({})", d.name, d.reason))
        .collect();
    let r#override = inputs.forced.map(|(o, level)| OverrideStatus {
        level,
        reason: o.reason.clone(),
        by: o.by.clone(),
        expires: o.expires,
        mesh: o.mesh,
    });
    if let Some(o) = &r#override {
        let scope = if o.mesh { "mesh-wide " } else { "" };
        reasons.insert(0, format!("{scope}override by {}: {}", o.by, o.reason));
    }
    if let Some(p) = &pending {
        reasons.push(format!(
            "lowering to {} once it has held for {}",
            p.level,
            humanize(hold)
        ));
    }
    let summary = if reasons.is_empty() {
        level.to_string()
    } else {
        format!("{level}: {}", reasons.join(", "))
    };

    let pods: Vec<(&str, &HealthRecord)> = inputs.reports.to_vec();
    let unready_pods = unready(
        policy,
        level,
        critical_unhealthy > 0,
        &pods,
        previous.map(|p| p.unready_pods.as_slice()).unwrap_or(&[]),
    );

    let status = ServiceStatus {
        namespace,
        service,
        level,
        computed,
        since,
        capabilities,
        reasons,
        summary,
        unhealthy,
        reporting_pods: pods.len(),
        unready_pods,
        r#override,
        dependencies,
        pending,
        computed_at: inputs.now,
    };
    let transitions = transitions(previous, &status);
    (status, transitions)
}

/// `30s`, `2m`, `1500ms`.
fn humanize(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Judges one dependency over the reports that mention it.
fn judge(
    policy: &ServicePolicy,
    name: &str,
    critical: bool,
    reports: &[(&str, &HealthRecord)],
) -> DependencyStatus {
    let when = policy.spec.unhealthy_when.clone().unwrap_or_default();
    // `name` or `name.namespace`.
    let (dep_name, dep_ns) = match name.split_once('.') {
        Some((n, ns)) => (n, Some(ns)),
        None => (name, None),
    };
    let mut pods = 0;
    let mut open = 0;
    let mut overloaded = 0;
    let mut requests = 0u64;
    let mut failures = 0u64;
    let mut p99_micros = 0u32;
    for (_, report) in reports {
        let seen = report
            .upstreams
            .iter()
            .find(|u| u.name == dep_name && dep_ns.is_none_or(|ns| u.namespace == ns));
        if let Some(u) = seen {
            pods += 1;
            if u.breaker != BreakerState::Closed {
                open += 1;
            }
            if u.overloaded > 0 {
                overloaded += 1;
            }
            requests = requests.saturating_add(u.requests);
            failures = failures.saturating_add(u.failures);
            p99_micros = p99_micros.max(u.p99_micros);
        }
    }
    let mut why = Vec::new();
    // Without `unhealthyWhen`, half of the pods with an open breaker make it unhealthy.
    let breaker_share = match (&when.breaker_open_pods, &when.success_rate_below) {
        (Some(p), _) => Some(p.fraction()),
        (None, None) => Some(0.5),
        (None, Some(_)) => None,
    };
    if let Some(share) = breaker_share
        && open > 0
        && open as f64 >= share * pods as f64
    {
        why.push(format!("breaker open on {open}/{pods} pods"));
    }
    if let Some(share) = &when.overloaded_pods
        && overloaded > 0
        && overloaded as f64 >= share.fraction() * pods as f64
    {
        why.push(format!("overloaded on {overloaded}/{pods} pods"));
    }
    if let Some(threshold) = &when.success_rate_below {
        let min = u64::from(when.min_requests.unwrap_or(1).max(1));
        if requests >= min {
            let rate = (requests - failures) as f64 / requests as f64;
            if rate < threshold.fraction() {
                why.push(format!(
                    "success rate {}% < {threshold}",
                    (rate * 100.0).floor() as u64
                ));
            }
        }
    }
    DependencyStatus {
        name: name.to_string(),
        critical,
        healthy: why.is_empty(),
        reason: why.join(", "),
        pods,
        breaker_open_pods: open,
        overloaded_pods: overloaded,
        requests,
        failures,
        p99_micros,
    }
}

/// The most severe level whose rule holds, else NORMAL.
fn level_of(policy: &ServicePolicy, unhealthy: usize, critical: usize) -> Level {
    for level in [Level::Emergency, Level::Severe, Level::Degraded] {
        let Some(rule) = policy.spec.levels.get(level.as_str()) else {
            continue;
        };
        let by_count = rule
            .unhealthy_dependencies
            .is_some_and(|n| unhealthy >= n as usize);
        let by_critical = rule
            .critical_unhealthy
            .is_some_and(|n| critical >= n as usize);
        if by_count || by_critical {
            return level;
        }
    }
    Level::Normal
}

/// The pods that answer readiness with 503: none unless the level says `ready: false` or a
/// critical dependency is unhealthy; then at most `maxUnreadyPercent` of the reporting pods
/// (rounded down), counting pods whose app already fails its probe, keeping the pods chosen
/// before and filling up in name order.
fn unready(
    policy: &ServicePolicy,
    level: Level,
    critical_down: bool,
    pods: &[(&str, &HealthRecord)],
    before: &[String],
) -> Vec<String> {
    let not_ready = policy
        .spec
        .actions
        .get(level.as_str())
        .and_then(|a| a.ready)
        == Some(false);
    if !(not_ready || critical_down) {
        return Vec::new();
    }
    let share = policy
        .spec
        .max_unready_percent
        .as_ref()
        .map(|p| p.fraction())
        .unwrap_or(defaults::MAX_UNREADY_PERCENT / 100.0);
    let allowed = (pods.len() as f64 * share + 1e-9).floor() as usize;
    let app_down = pods.iter().filter(|(_, r)| !r.app.healthy).count();
    let budget = allowed.saturating_sub(app_down);
    let candidates: BTreeSet<&str> = pods
        .iter()
        .filter(|(_, r)| r.app.healthy)
        .map(|(p, _)| *p)
        .collect();
    let mut chosen: Vec<String> = before
        .iter()
        .filter(|p| candidates.contains(p.as_str()))
        .take(budget)
        .cloned()
        .collect();
    for pod in &candidates {
        if chosen.len() >= budget {
            break;
        }
        if !chosen.iter().any(|c| c == pod) {
            chosen.push(pod.to_string());
        }
    }
    chosen.sort();
    chosen
}

/// Level changes and breaker openings/closings (per dependency, over all pods: one event
/// however many pods see it).
fn transitions(previous: Option<&ServiceStatus>, now: &ServiceStatus) -> Vec<Transition> {
    let id = format!("{}/{}", now.namespace, now.service);
    let mut out = Vec::new();
    let before_level = previous.map(|p| p.level).unwrap_or_default();
    if before_level != now.level {
        let detail = if now.reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", now.reasons.join(", "))
        };
        out.push(Transition {
            kind: "level",
            from: before_level.to_string(),
            to: now.level.to_string(),
            reasons: now.reasons.clone(),
            text: format!("{id} {before_level} -> {}{detail}", now.level),
        });
    }
    for dep in &now.dependencies {
        let was_open = previous
            .and_then(|p| p.dependencies.iter().find(|d| d.name == dep.name))
            .is_some_and(|d| d.breaker_open_pods > 0);
        let is_open = dep.breaker_open_pods > 0;
        if was_open == is_open {
            continue;
        }
        let (from, to, line) = if is_open {
            (
                "closed",
                "open",
                format!(
                    "{} breaker open on {}/{} pods",
                    dep.name, dep.breaker_open_pods, dep.pods
                ),
            )
        } else {
            (
                "open",
                "closed",
                format!("{} breaker closed on every pod", dep.name),
            )
        };
        out.push(Transition {
            kind: "breaker",
            from: from.into(),
            to: to.into(),
            text: format!("{id}: {line}"),
            reasons: vec![line],
        });
    }
    out
}

#[cfg(test)]
mod tests;
