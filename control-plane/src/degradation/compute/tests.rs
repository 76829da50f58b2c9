//! The level logic against the order-orchestrator example, with explicit times.

use std::collections::BTreeMap;

use super::*;
use crate::store::values::{AppHealth, UpstreamHealth};
use bulwark_proto::policy::{Resource, parse_yaml};

const ORCHESTRATOR: &str = include_str!("../../../../examples/order-orchestrator.yaml");

fn policy() -> ServicePolicy {
    match parse_yaml(ORCHESTRATOR).expect("example parses").remove(0) {
        Resource::ServicePolicy(p) => p,
        other => panic!("not a ServicePolicy: {other:?}"),
    }
}

const DEPS: [&str; 5] = ["bbd", "midtrans", "sendgrid", "user-service", "whatsapp"];

/// A report where `open` dependencies have their breaker open and `failing` ones fail
/// `failures` of 100 requests.
fn report(open: &[&str], failing: &[(&str, u64)]) -> HealthRecord {
    HealthRecord {
        at: 0,
        interval_ms: 1000,
        applied_version: 1,
        replica: "cp-1".into(),
        app: AppHealth {
            probed: true,
            healthy: true,
            detail: String::new(),
        },
        upstreams: DEPS
            .iter()
            .map(|name| UpstreamHealth {
                namespace: "mrg".into(),
                name: name.to_string(),
                requests: 100,
                failures: failing
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, f)| *f)
                    .unwrap_or(0),
                slow: 0,
                breaker: if open.contains(name) {
                    BreakerState::Open
                } else {
                    BreakerState::Closed
                },
                endpoints: 2,
                ejected: 0,
                overloaded: 0,
                p99_micros: 0,
            })
            .collect(),
        identity: None,
    }
}

struct Run {
    policy: ServicePolicy,
    status: Option<ServiceStatus>,
}

impl Run {
    fn new() -> Self {
        Run {
            policy: policy(),
            status: None,
        }
    }

    fn step(&mut self, now: i64, pods: &[(&str, HealthRecord)]) -> Vec<Transition> {
        self.step_forced(now, pods, None)
    }

    fn step_forced(
        &mut self,
        now: i64,
        pods: &[(&str, HealthRecord)],
        forced: Option<(&OverrideRecord, Level)>,
    ) -> Vec<Transition> {
        let reports: Vec<(&str, &HealthRecord)> = pods.iter().map(|(p, r)| (*p, r)).collect();
        let (status, transitions) = evaluate(
            &self.policy,
            Inputs {
                reports: &reports,
                forced,
                previous: self.status.as_ref(),
                now,
            },
        );
        self.status = Some(status);
        transitions
    }

    fn status(&self) -> &ServiceStatus {
        self.status.as_ref().expect("evaluated")
    }
}

fn four(open_on: usize, deps: &[&'static str]) -> Vec<(&'static str, HealthRecord)> {
    ["pod-a", "pod-b", "pod-c", "pod-d"]
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let open: &[&str] = if i < open_on { deps } else { &[] };
            (*pod, report(open, &[]))
        })
        .collect()
}

#[test]
fn one_two_three_unhealthy_dependencies_climb_the_levels() {
    let mut run = Run::new();
    assert!(run.step(0, &four(0, &[])).is_empty());
    assert_eq!(run.status().level, Level::Normal);
    assert_eq!(run.status().summary, "NORMAL");
    assert_eq!(
        run.status().capabilities,
        BTreeMap::from([
            ("acceptOrders".to_string(), true),
            ("sendNotifications".to_string(), true)
        ])
    );

    let t = run.step(1_000, &four(2, &["sendgrid"]));
    assert_eq!(run.status().level, Level::Degraded);
    assert_eq!(
        run.status().summary,
        "DEGRADED: sendgrid unhealthy (breaker open on 2/4 pods)"
    );
    assert_eq!(
        t.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        [
            "mrg/order-orchestrator NORMAL -> DEGRADED: sendgrid unhealthy (breaker open on 2/4 pods)",
            "mrg/order-orchestrator: sendgrid breaker open on 2/4 pods",
        ]
    );

    // Two unhealthy, or one critical: SEVERE; acceptOrders needs midtrans.
    run.step(2_000, &four(3, &["sendgrid", "midtrans"]));
    assert_eq!(run.status().level, Level::Severe);
    assert_eq!(run.status().unhealthy, ["midtrans", "sendgrid"]);
    assert!(!run.status().capabilities["acceptOrders"]);
    assert!(run.status().capabilities["sendNotifications"]);

    run.step(3_000, &four(4, &["sendgrid", "midtrans", "whatsapp"]));
    assert_eq!(run.status().level, Level::Emergency);
    assert!(!run.status().capabilities["sendNotifications"]);
    assert_eq!(
        run.status().reasons,
        [
            "midtrans unhealthy (breaker open on 4/4 pods)",
            "sendgrid unhealthy (breaker open on 4/4 pods)",
            "whatsapp unhealthy (breaker open on 4/4 pods)",
        ]
    );
}

#[test]
fn one_pod_in_four_with_an_open_breaker_is_not_enough() {
    let mut run = Run::new();
    run.step(0, &four(1, &["midtrans"]));
    let status = run.status();
    assert_eq!(status.level, Level::Normal);
    let midtrans = status
        .dependencies
        .iter()
        .find(|d| d.name == "midtrans")
        .unwrap();
    assert_eq!((midtrans.healthy, midtrans.breaker_open_pods), (true, 1));
}

#[test]
fn a_low_success_rate_makes_a_dependency_unhealthy_once_there_are_enough_requests() {
    let mut run = Run::new();
    let pods = [
        ("pod-a", report(&[], &[("bbd", 60)])),
        ("pod-b", report(&[], &[("bbd", 58)])),
    ];
    run.step(0, &pods);
    assert_eq!(run.status().level, Level::Severe, "bbd is critical");
    assert_eq!(
        run.status().reasons,
        ["bbd unhealthy (success rate 41% < 90%)"]
    );

    // Below minRequests (20) the rate is not judged.
    let mut quiet = report(&[], &[("bbd", 5)]);
    for u in &mut quiet.upstreams {
        u.requests = 10;
    }
    run.step(1_000, &[("pod-a", quiet)]);
    assert!(run.status().unhealthy.is_empty());
}

#[test]
fn lowering_waits_for_the_lower_level_to_hold() {
    let mut run = Run::new();
    run.step(0, &four(4, &["sendgrid", "whatsapp"]));
    assert_eq!(run.status().level, Level::Severe);

    // Healthy again: the breakers closed, but the service stays SEVERE until lowerAfter
    // (30s by default) has passed.
    let t = run.step(1_000, &four(0, &[]));
    assert!(t.iter().all(|t| t.kind == "breaker"), "{t:?}");
    assert_eq!(run.status().level, Level::Severe);
    assert_eq!(run.status().computed, Level::Normal);
    assert_eq!(
        run.status().summary,
        "SEVERE: lowering to NORMAL once it has held for 30s"
    );
    run.step(30_999, &four(0, &[]));
    assert_eq!(run.status().level, Level::Severe);

    // A relapse to DEGRADED during the wait: the service goes no lower than that.
    run.step(20_000, &four(4, &["sendgrid"]));
    let t = run.step(31_000, &four(0, &[]));
    assert_eq!(run.status().level, Level::Degraded);
    assert_eq!(
        t[0].text,
        "mrg/order-orchestrator SEVERE -> DEGRADED: lowering to NORMAL once it has held for 30s"
    );
    run.step(60_999, &four(0, &[]));
    assert_eq!(run.status().level, Level::Degraded);
    run.step(61_000, &four(0, &[]));
    assert_eq!(run.status().level, Level::Normal);
    assert_eq!(run.status().pending, None);
}

#[test]
fn raising_is_immediate_and_cancels_a_pending_lowering() {
    let mut run = Run::new();
    run.step(0, &four(4, &["sendgrid", "whatsapp"]));
    run.step(1_000, &four(0, &[]));
    assert!(run.status().pending.is_some());
    run.step(2_000, &four(4, &["sendgrid", "whatsapp", "midtrans"]));
    assert_eq!(run.status().level, Level::Emergency);
    assert_eq!(run.status().pending, None);
    assert_eq!(run.status().since, 2_000);
}

#[test]
fn at_most_maxunreadypercent_of_the_pods_go_unready_and_the_choice_sticks() {
    let mut run = Run::new();
    // midtrans (critical) down everywhere: 30% of 4 pods is 1.
    run.step(0, &four(4, &["midtrans"]));
    assert_eq!(run.status().unready_pods, ["pod-a"]);

    // The chosen pod stays chosen while it reports; a new pod changes nothing.
    let mut pods = four(4, &["midtrans"]);
    pods.insert(0, ("pod-0", report(&["midtrans"], &[])));
    run.step(1_000, &pods);
    assert_eq!(run.status().unready_pods, ["pod-a"]);

    // A pod whose app already fails its probe uses up the budget.
    let mut pods = four(4, &["midtrans"]);
    pods[3].1.app.healthy = false;
    run.step(2_000, &pods);
    assert!(run.status().unready_pods.is_empty());

    // Nothing critical down and no `ready: false`: nobody.
    run.step(3_000, &four(4, &["sendgrid"]));
    assert!(run.status().unready_pods.is_empty());
}

#[test]
fn ready_false_at_emergency_takes_pods_out_even_without_a_critical_dependency() {
    let mut run = Run::new();
    let ten: Vec<(&str, HealthRecord)> =
        ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"]
            .iter()
            .map(|p| (*p, report(&["sendgrid", "whatsapp", "user-service"], &[])))
            .collect();
    run.step(0, &ten);
    assert_eq!(run.status().level, Level::Emergency);
    assert_eq!(run.status().unready_pods, ["p0", "p1", "p2"]);
}

#[test]
fn an_override_forces_the_level_and_its_end_returns_to_the_computed_one() {
    let mut run = Run::new();
    run.step(0, &four(0, &[]));
    let forced = OverrideRecord {
        level: "EMERGENCY".into(),
        reason: "provider outage".into(),
        by: "alice".into(),
        expires: 900_000,
        mesh: false,
    };
    let t = run.step_forced(1_000, &four(0, &[]), Some((&forced, Level::Emergency)));
    assert_eq!(run.status().level, Level::Emergency);
    assert_eq!(run.status().computed, Level::Normal);
    assert_eq!(
        t[0].text,
        "mrg/order-orchestrator NORMAL -> EMERGENCY: override by alice: provider outage"
    );
    assert_eq!(run.status().r#override.as_ref().unwrap().by, "alice");
    // EMERGENCY says ready: false: 1 of 4 pods.
    assert_eq!(run.status().unready_pods, ["pod-a"]);

    let t = run.step(2_000, &four(0, &[]));
    assert_eq!(
        run.status().level,
        Level::Normal,
        "no damping after an override"
    );
    assert_eq!(t[0].text, "mrg/order-orchestrator EMERGENCY -> NORMAL");
}

#[test]
fn breaker_events_are_one_per_dependency_whatever_the_number_of_pods() {
    let mut run = Run::new();
    run.step(0, &four(0, &[]));
    let t = run.step(1_000, &four(1, &["whatsapp"]));
    assert_eq!(
        t.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        ["mrg/order-orchestrator: whatsapp breaker open on 1/4 pods"]
    );
    let t = run.step(2_000, &four(3, &["whatsapp"]));
    assert!(t.iter().all(|t| t.kind == "level"), "{t:?}");
    let t = run.step(3_000, &four(0, &[]));
    assert_eq!(
        t.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        ["mrg/order-orchestrator: whatsapp breaker closed on every pod"]
    );
}

#[test]
fn the_state_compares_without_counts_or_time() {
    let mut run = Run::new();
    run.step(0, &four(0, &[]));
    let first = run.status().clone();
    let mut busier = four(0, &[]);
    for (_, r) in &mut busier {
        for u in &mut r.upstreams {
            u.requests = 500;
        }
    }
    run.step(5_000, &busier);
    assert!(first.same_state(run.status()));
    run.step(6_000, &four(4, &["whatsapp"]));
    assert!(!first.same_state(run.status()));
}

#[test]
fn no_reports_means_every_dependency_healthy() {
    let mut run = Run::new();
    run.step(0, &[]);
    assert_eq!(run.status().level, Level::Normal);
    assert_eq!(run.status().reporting_pods, 0);
    assert!(
        run.status()
            .dependencies
            .iter()
            .all(|d| d.healthy && d.pods == 0)
    );
}

#[test]
fn levels_parse_in_any_case() {
    assert_eq!(Level::parse("emergency"), Some(Level::Emergency));
    assert_eq!(Level::parse("Severe"), Some(Level::Severe));
    assert_eq!(Level::parse("CRITICAL"), None);
    assert!(Level::Emergency > Level::Severe);
}

#[test]
fn a_dependency_its_callers_see_overloaded_is_unhealthy_under_overloaded_pods() {
    let mut run = Run::new();
    run.policy.spec.unhealthy_when = Some(bulwark_proto::policy::UnhealthyWhen {
        overloaded_pods: Some(bulwark_proto::policy::Percent::new("50%")),
        ..run.policy.spec.unhealthy_when.clone().unwrap_or_default()
    });
    let overloaded = |on: bool| {
        let mut r = report(&[], &[]);
        for u in &mut r.upstreams {
            if u.name == "sendgrid" && on {
                u.overloaded = 7;
            }
        }
        r
    };
    // One pod of four: not enough.
    let pods = [
        ("pod-a", overloaded(true)),
        ("pod-b", overloaded(false)),
        ("pod-c", overloaded(false)),
        ("pod-d", overloaded(false)),
    ];
    run.step(0, &pods);
    assert_eq!(run.status().level, Level::Normal);
    let sendgrid = |run: &Run| {
        run.status()
            .dependencies
            .iter()
            .find(|d| d.name == "sendgrid")
            .cloned()
            .expect("listed")
    };
    assert_eq!(sendgrid(&run).overloaded_pods, 1);
    // Two of four: unhealthy, and why.
    let pods = [
        ("pod-a", overloaded(true)),
        ("pod-b", overloaded(true)),
        ("pod-c", overloaded(false)),
        ("pod-d", overloaded(false)),
    ];
    run.step(1_000, &pods);
    assert_eq!(run.status().level, Level::Degraded);
    assert_eq!(
        run.status().reasons,
        ["sendgrid unhealthy (overloaded on 2/4 pods)"]
    );
    assert_eq!(sendgrid(&run).overloaded_pods, 2);
}
