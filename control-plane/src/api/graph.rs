//! `GET /v1/graph/{namespace}/{service}`: a service's neighbourhood as its pods and its
//! callers' pods last reported it — its upstreams (what its pods call, and the dependencies its
//! ServicePolicy names even without traffic) and its callers (services whose pods call it: an
//! upstream is taken to be the service of the same name and namespace). A sidecar reports every
//! upstream it knows, so an edge the ServicePolicy does not declare is shown only while the last
//! reports carry requests on it or a breaker open. Each edge comes with its
//! requests, success rate, p99 latency, the pods with an open breaker out of the pods that
//! call, and a health verdict with its reason. Callers in namespaces the caller of the API may
//! not read levels in are left out.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ops::{OpError, Ops, Served};
use crate::auth::Actor;
use crate::auth::rbac::{Resource, Scope, Verb};
use crate::store::keys::ServiceKey;
use crate::store::values::{BreakerState, DependencyStatus, HealthRecord, UpstreamHealth};

/// Below this success rate (percent) an edge is a warning.
const WARN_SUCCESS_RATE: f64 = 99.0;

/// `GET /v1/graph/{namespace}/{service}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    /// `namespace/service`.
    pub service: String,
    /// Its level, when one was computed (it has a ServicePolicy).
    pub level: Option<String>,
    pub reporting_pods: usize,
    pub upstreams: Vec<Edge>,
    pub callers: Vec<Edge>,
}

/// How an edge is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeHealth {
    /// Requests flow and succeed.
    Healthy,
    /// Some requests fail or are refused for overload.
    Warning,
    /// A breaker is open, or the ServicePolicy's rules judge the dependency unhealthy.
    Unhealthy,
    /// No requests in the last reports.
    Idle,
}

/// One edge: the other service, as the calling side's pods saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// The other end, `namespace/service`.
    pub service: String,
    /// Named among the dependencies of the service's ServicePolicy (upstreams only).
    pub declared: bool,
    pub critical: bool,
    pub health: EdgeHealth,
    /// Why it is not healthy; empty when it is.
    pub reason: String,
    /// Pods of the calling side that reported this edge…
    pub pods: usize,
    /// …out of the calling side's reporting pods.
    pub of_pods: usize,
    pub breaker_open_pods: usize,
    pub overloaded_pods: usize,
    pub requests: u64,
    pub failures: u64,
    /// Percent of requests that succeeded; none without requests.
    pub success_rate: Option<f64>,
    /// The highest p99 latency a pod reported, in milliseconds; none without requests.
    pub p99_ms: Option<f64>,
}

impl Ops {
    /// The graph around `service`.
    pub fn graph(&self, actor: &Actor, service: &ServiceKey) -> Result<Served<Graph>, OpError> {
        self.authorize(
            actor,
            Verb::Get,
            Resource::Levels,
            Scope::Namespace(&service.namespace),
        )?;
        let perms = self.permissions(actor);
        let index = self.index.lock();
        let state = self.readable(&index.state())?;
        let status = index.statuses().get(service);
        let own: Vec<&HealthRecord> = index
            .health()
            .iter()
            .filter(|(pod, _)| pod.namespace == service.namespace && pod.service == service.service)
            .map(|(_, r)| r.as_ref())
            .collect();
        let declared = status.map_or(&[][..], |s| s.dependencies.as_slice());
        let upstreams = upstream_edges(&service.namespace, &own, declared);
        let mut by_caller: BTreeMap<ServiceKey, Vec<&HealthRecord>> = BTreeMap::new();
        for (pod, record) in index.health() {
            let same = pod.namespace == service.namespace && pod.service == service.service;
            if same || pod.service.is_empty() {
                continue;
            }
            by_caller
                .entry(ServiceKey {
                    namespace: pod.namespace.clone(),
                    service: pod.service.clone(),
                })
                .or_default()
                .push(record.as_ref());
        }
        let callers = by_caller
            .into_iter()
            .filter(|(caller, _)| {
                perms.may(
                    Verb::Get,
                    Resource::Levels,
                    Scope::Namespace(&caller.namespace),
                )
            })
            .filter_map(|(caller, pods)| {
                let seen: Vec<&UpstreamHealth> = pods
                    .iter()
                    .filter_map(|r| {
                        r.upstreams
                            .iter()
                            .find(|u| u.namespace == service.namespace && u.name == service.service)
                    })
                    .collect();
                in_use(&seen).then(|| edge(caller.to_string(), &seen, pods.len(), None))
            })
            .collect();
        Ok(Served {
            value: Graph {
                service: service.to_string(),
                level: status.map(|s| s.level.as_str().to_string()),
                reporting_pods: own.len(),
                upstreams,
                callers,
            },
            stale: state.stale,
        })
    }
}

/// The upstreams of a service of `namespace` whose pods reported `own`, with the dependencies
/// its ServicePolicy declares (judged by its rules) first in their order, then the others by
/// name.
fn upstream_edges(
    namespace: &str,
    own: &[&HealthRecord],
    declared: &[DependencyStatus],
) -> Vec<Edge> {
    let mut seen: BTreeMap<(String, String), Vec<&UpstreamHealth>> = BTreeMap::new();
    for record in own {
        for u in &record.upstreams {
            seen.entry((u.namespace.clone(), u.name.clone()))
                .or_default()
                .push(u);
        }
    }
    let mut edges = Vec::new();
    for dep in declared {
        // `name` or `name.namespace`, as the ServicePolicy names it.
        let (name, ns) = match dep.name.split_once('.') {
            Some((n, ns)) => (n, Some(ns)),
            None => (dep.name.as_str(), None),
        };
        let key = seen
            .keys()
            .find(|(u_ns, u_name)| u_name == name && ns.is_none_or(|ns| u_ns == ns))
            .cloned();
        let reports = key
            .as_ref()
            .and_then(|k| seen.remove(k))
            .unwrap_or_default();
        let service = match &key {
            Some((u_ns, u_name)) => format!("{u_ns}/{u_name}"),
            None => format!("{}/{name}", ns.unwrap_or(namespace)),
        };
        edges.push(edge(service, &reports, own.len(), Some(dep)));
    }
    edges.extend(
        seen.into_iter()
            .filter(|(_, reports)| in_use(reports))
            .map(|((ns, name), reports)| edge(format!("{ns}/{name}"), &reports, own.len(), None)),
    );
    edges
}

/// Whether the calling pods' last reports show an undeclared edge in use: requests on it, or a
/// breaker not closed (a pod's table holds every upstream it may call, most of them unused).
fn in_use(reports: &[&UpstreamHealth]) -> bool {
    reports
        .iter()
        .any(|u| u.requests > 0 || u.breaker != BreakerState::Closed)
}

/// An edge from what `reports` (one per calling pod that saw it) say, out of `of_pods`
/// calling pods; `declared` when the ServicePolicy names it.
fn edge(
    service: String,
    reports: &[&UpstreamHealth],
    of_pods: usize,
    declared: Option<&DependencyStatus>,
) -> Edge {
    let requests: u64 = reports.iter().map(|u| u.requests).sum();
    let failures: u64 = reports.iter().map(|u| u.failures.min(u.requests)).sum();
    let open = reports
        .iter()
        .filter(|u| u.breaker != BreakerState::Closed)
        .count();
    let overloaded = reports.iter().filter(|u| u.overloaded > 0).count();
    let success_rate = (requests > 0).then(|| {
        let rate = (requests - failures) as f64 * 100.0 / requests as f64;
        (rate * 10.0).floor() / 10.0
    });
    let p99 = reports.iter().map(|u| u.p99_micros).max().unwrap_or(0);
    let p99_ms = (requests > 0 && p99 > 0).then(|| f64::from(p99) / 1000.0);
    let mut why = Vec::new();
    if let Some(dep) = declared.filter(|d| !d.healthy) {
        why.push(dep.reason.clone());
    } else if open > 0 {
        why.push(format!("breaker open on {open}/{} pods", reports.len()));
    }
    let mut health = if why.is_empty() {
        EdgeHealth::Healthy
    } else {
        EdgeHealth::Unhealthy
    };
    if health == EdgeHealth::Healthy {
        if let Some(rate) = success_rate.filter(|r| *r < WARN_SUCCESS_RATE) {
            why.push(format!("success rate {rate}%"));
        }
        if overloaded > 0 {
            why.push(format!("overloaded on {overloaded}/{} pods", reports.len()));
        }
        if !why.is_empty() {
            health = EdgeHealth::Warning;
        } else if requests == 0 {
            health = EdgeHealth::Idle;
        }
    }
    Edge {
        service,
        declared: declared.is_some(),
        critical: declared.is_some_and(|d| d.critical),
        health,
        reason: why.join(", "),
        pods: reports.len(),
        of_pods,
        breaker_open_pods: open,
        overloaded_pods: overloaded,
        requests,
        failures,
        success_rate,
        p99_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::values::AppHealth;

    fn upstream(ns: &str, name: &str, requests: u64, failures: u64, open: bool) -> UpstreamHealth {
        UpstreamHealth {
            namespace: ns.into(),
            name: name.into(),
            requests,
            failures,
            slow: 0,
            breaker: if open {
                BreakerState::Open
            } else {
                BreakerState::Closed
            },
            endpoints: 1,
            ejected: 0,
            overloaded: 0,
            p99_micros: 12_500,
        }
    }

    fn record(upstreams: Vec<UpstreamHealth>) -> HealthRecord {
        HealthRecord {
            at: 0,
            interval_ms: 1000,
            applied_version: 1,
            replica: "r".into(),
            app: AppHealth {
                probed: false,
                healthy: true,
                detail: String::new(),
            },
            upstreams,
            identity: None,
        }
    }

    fn dependency(name: &str, healthy: bool, reason: &str) -> DependencyStatus {
        DependencyStatus {
            name: name.into(),
            critical: true,
            healthy,
            reason: reason.into(),
            pods: 0,
            breaker_open_pods: 0,
            overloaded_pods: 0,
            requests: 0,
            failures: 0,
            p99_micros: 0,
        }
    }

    #[test]
    fn an_open_breaker_on_some_pods_makes_the_edge_unhealthy_with_the_count() {
        let a = record(vec![upstream("shop", "payments", 10, 10, true)]);
        let b = record(vec![upstream("shop", "payments", 10, 0, false)]);
        let c = record(vec![]);
        let edges = upstream_edges("shop", &[&a, &b, &c], &[]);
        assert_eq!(edges.len(), 1);
        let e = &edges[0];
        assert_eq!(e.service, "shop/payments");
        assert_eq!(e.health, EdgeHealth::Unhealthy);
        assert_eq!(e.reason, "breaker open on 1/2 pods");
        assert_eq!((e.pods, e.of_pods, e.breaker_open_pods), (2, 3, 1));
        assert_eq!(e.success_rate, Some(50.0));
        assert_eq!(e.p99_ms, Some(12.5));
        assert!(!e.declared);
    }

    #[test]
    fn declared_dependencies_come_first_with_the_policys_verdict_even_without_traffic() {
        let a = record(vec![
            upstream("shop", "search", 100, 2, false),
            upstream("shop", "payments", 100, 0, false),
        ]);
        let declared = [
            dependency("payments", false, "success rate 90% < 95%"),
            dependency("ledger.finance", true, ""),
        ];
        let edges = upstream_edges("shop", &[&a], &declared);
        let names: Vec<&str> = edges.iter().map(|e| e.service.as_str()).collect();
        assert_eq!(names, ["shop/payments", "finance/ledger", "shop/search"]);
        assert_eq!(edges[0].health, EdgeHealth::Unhealthy);
        assert_eq!(edges[0].reason, "success rate 90% < 95%");
        assert!(edges[0].declared && edges[0].critical);
        assert_eq!(edges[1].health, EdgeHealth::Idle);
        assert_eq!((edges[1].pods, edges[1].success_rate), (0, None));
        assert_eq!(edges[2].health, EdgeHealth::Warning);
        assert_eq!(edges[2].reason, "success rate 98%");
    }

    #[test]
    fn a_flowing_edge_is_healthy_and_an_unused_undeclared_one_is_left_out() {
        let a = record(vec![
            upstream("shop", "payments", 100, 0, false),
            upstream("shop", "search", 0, 0, false),
            upstream("shop", "ledger", 0, 0, true),
        ]);
        let edges = upstream_edges("shop", &[&a], &[]);
        let names: Vec<&str> = edges.iter().map(|e| e.service.as_str()).collect();
        assert_eq!(
            names,
            ["shop/ledger", "shop/payments"],
            "search is known, not used"
        );
        assert_eq!(edges[1].health, EdgeHealth::Healthy);
        assert_eq!(edges[1].reason, "");
        assert_eq!(
            edges[0].health,
            EdgeHealth::Unhealthy,
            "an open breaker shows"
        );
        assert_eq!(edges[0].p99_ms, None, "no requests, no latency");
    }
}
