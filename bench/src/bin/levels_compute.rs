//! `bulwark-levels-compute`: the CPU cost of one levels round of the elected replica, without
//! etcd. It builds N ServicePolicies of the order-orchestrator shape (five dependencies, two
//! critical, three level rules, two capabilities) and the latest `HealthRecord` of P pods each,
//! then runs `degradation::compute::evaluate` for every service, round after round, each round fed the
//! statuses of the previous one (as the leader keeps them). Reported: the time of a round and
//! of one service (mean, p50, p99, max), for evaluation alone and with the leader's bookkeeping
//! around it (the policy clone of `gather`, the change test, the JSON encoding of every status
//! as when all are rewritten).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bulwark_control_plane::degradation::compute::{self, Inputs, ServiceStatus};
use bulwark_control_plane::store::values::{AppHealth, BreakerState, HealthRecord, UpstreamHealth};
use bulwark_proto::policy::{Resource, ServicePolicy, parse_yaml};
use clap::{Parser, ValueEnum};

const ORCHESTRATOR: &str = include_str!("../../../examples/order-orchestrator.yaml");
const DEPENDENCIES: [&str; 5] = ["midtrans", "bbd", "user-service", "sendgrid", "whatsapp"];

#[derive(Debug, Parser)]
struct Args {
    /// Services with a ServicePolicy.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Reporting pods per service.
    #[arg(long, default_value_t = 10)]
    pods: usize,
    /// Measured rounds (after as many warm-up rounds as a tenth of these).
    #[arg(long, default_value_t = 300)]
    rounds: usize,
    /// What the reports say.
    #[arg(long, value_enum, default_value_t = Scenario::Churn)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every breaker closed, no failures: every service NORMAL.
    Healthy,
    /// Every round a different tenth of the services has a dependency with its breaker open on
    /// 6 of 10 pods and another failing 15% of its requests, so levels rise, wait out
    /// `lowerAfter` and fall all the time.
    Churn,
}

fn orchestrator() -> anyhow::Result<ServicePolicy> {
    match parse_yaml(ORCHESTRATOR)
        .context("examples/order-orchestrator.yaml")?
        .into_iter()
        .next()
    {
        Some(Resource::ServicePolicy(p)) => Ok(p),
        _ => bail!("examples/order-orchestrator.yaml is not a ServicePolicy"),
    }
}

/// One pod's report; `open` and `failing` name dependencies by index in [`DEPENDENCIES`].
fn record(pod: usize, open: Option<usize>, failing: Option<usize>) -> HealthRecord {
    HealthRecord {
        at: 0,
        interval_ms: 5000,
        applied_version: 1,
        replica: "cp-0".into(),
        app: AppHealth {
            probed: true,
            healthy: true,
            detail: String::new(),
        },
        upstreams: DEPENDENCIES
            .iter()
            .enumerate()
            .map(|(d, name)| UpstreamHealth {
                namespace: "mrg".into(),
                name: name.to_string(),
                requests: 100 + pod as u64,
                failures: if failing == Some(d) { 15 } else { 0 },
                slow: 0,
                // The breaker is open on 6 pods of 10 (60%, over the policy's 50%).
                breaker: if open == Some(d) && pod % 10 < 6 {
                    BreakerState::Open
                } else {
                    BreakerState::Closed
                },
                endpoints: 3,
                ejected: 0,
                overloaded: 0,
                p99_micros: 0,
            })
            .collect(),
        identity: None,
    }
}

/// One service's pods and their reports, as the index holds them.
type Pods = Vec<(String, Arc<HealthRecord>)>;

/// The pods' reports of every service in round `round`.
fn reports(args: &Args, round: usize) -> Vec<Pods> {
    let healthy: Vec<Arc<HealthRecord>> = (0..args.pods)
        .map(|p| Arc::new(record(p, None, None)))
        .collect();
    (0..args.services)
        .map(|s| {
            let troubled = args.scenario == Scenario::Churn && (s + round).is_multiple_of(10);
            (0..args.pods)
                .map(|p| {
                    let r = if troubled {
                        Arc::new(record(
                            p,
                            Some(s % DEPENDENCIES.len()),
                            Some((s + 1) % DEPENDENCIES.len()),
                        ))
                    } else {
                        healthy[p].clone()
                    };
                    (format!("pod-{p}"), r)
                })
                .collect()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Totals {
    rounds: Vec<Duration>,
    changed_levels: usize,
    encoded_bytes: usize,
}

/// Runs `rounds` rounds from `start`; with `bookkeeping`, also what the leader does around
/// `evaluate`.
fn run(
    args: &Args,
    policies: &[ServicePolicy],
    inputs: &[Vec<Pods>],
    start: usize,
    rounds: usize,
    bookkeeping: bool,
) -> Totals {
    let mut previous: Vec<Option<Arc<ServiceStatus>>> = vec![None; args.services];
    let mut totals = Totals {
        rounds: Vec::with_capacity(rounds),
        changed_levels: 0,
        encoded_bytes: 0,
    };
    // 15 s apart: a level lowers (`lowerAfter`, 30s by default) two rounds after it could.
    let mut now = 1_700_000_000_000i64;
    for round in start..start + rounds {
        let reports = &inputs[round % inputs.len()];
        now += 15_000;
        let began = Instant::now();
        for (s, policy) in policies.iter().enumerate() {
            let cloned;
            let policy = if bookkeeping {
                cloned = policy.clone();
                &cloned
            } else {
                policy
            };
            let refs: Vec<(&str, &HealthRecord)> = reports[s]
                .iter()
                .map(|(pod, r)| (pod.as_str(), r.as_ref()))
                .collect();
            let before = previous[s].as_deref();
            let (status, transitions) = compute::evaluate(
                policy,
                Inputs {
                    reports: &refs,
                    forced: None,
                    previous: before,
                    now,
                },
            );
            if transitions.iter().any(|t| t.kind == "level") {
                totals.changed_levels += 1;
            }
            if bookkeeping {
                let changed = before.is_none_or(|p| !p.same_state(&status));
                std::hint::black_box(changed);
                // Every status encoded, changed or not: the round where all are refreshed.
                totals.encoded_bytes += serde_json::to_vec(&status).map_or(0, |v| v.len());
            }
            previous[s] = Some(Arc::new(status));
        }
        totals.rounds.push(began.elapsed());
    }
    totals
}

fn summarize(label: &str, args: &Args, totals: &Totals) {
    let mut sorted = totals.rounds.clone();
    sorted.sort();
    let n = sorted.len().max(1) as u32;
    let mean = sorted.iter().sum::<Duration>() / n;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / args.services.max(1) as f64;
    println!(
        "{label}: round mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; per service mean {:.2} µs, p99 {:.2} µs",
        ms(mean),
        ms(percentile(&sorted, 0.50)),
        ms(percentile(&sorted, 0.99)),
        ms(*sorted.last().unwrap_or(&Duration::ZERO)),
        per(mean),
        per(percentile(&sorted, 0.99)),
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let template = orchestrator()?;
    let policies: Vec<ServicePolicy> = (0..args.services)
        .map(|s| {
            let mut p = template.clone();
            p.metadata.name = format!("svc-{s:04}");
            p
        })
        .collect();
    // Ten different rounds of reports (the churn pattern repeats every ten).
    let inputs: Vec<_> = (0..10).map(|r| reports(&args, r)).collect();
    let warmup = (args.rounds / 10).max(1);
    println!(
        "{} services x {} pods, {} dependencies each, scenario {:?}, {} rounds (+{} warm-up)",
        args.services,
        args.pods,
        DEPENDENCIES.len(),
        args.scenario,
        args.rounds,
        warmup
    );
    run(&args, &policies, &inputs, 0, warmup, false);
    let plain = run(&args, &policies, &inputs, warmup, args.rounds, false);
    summarize("evaluate only        ", &args, &plain);
    run(&args, &policies, &inputs, 0, warmup, true);
    let full = run(&args, &policies, &inputs, warmup, args.rounds, true);
    summarize("with leader overhead ", &args, &full);
    println!(
        "level changes per round: {:.0} of {} services; status JSON {:.0} bytes per service",
        plain.changed_levels as f64 / args.rounds.max(1) as f64,
        args.services,
        full.encoded_bytes as f64 / (args.rounds.max(1) * args.services.max(1)) as f64,
    );
    Ok(())
}
