//! `bulwark-levels-bench`: how long a dependency's failure takes to become a degradation level
//! on every sidecar of the service. It applies a ServicePolicy (`bench/orders`: one critical
//! dependency `pay`, unhealthy when its breaker is open on 50% of the pods, DEGRADED at one
//! unhealthy dependency, `lowerAfter: 1s`) and the UpstreamPolicy `pay`, then connects N
//! simulated sidecars of `bench/orders` (real Discovery streams: Hello, an ACK per snapshot, a
//! HealthReport every report interval, each sidecar on its own phase). A round: at t0 every
//! sidecar starts reporting `pay`'s breaker OPEN from its next report on; per sidecar, the
//! time from t0 until a Levels message with `bench/orders` DEGRADED arrived. Then back to
//! CLOSED, and the next round once every sidecar is NORMAL again. With `--etcd`, it also
//! watches `health/` and `status/` in etcd to split the time into its stages.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use bulwark_control_plane::degradation::compute::ServiceStatus;
use bulwark_control_plane::store::values::{BreakerState, HealthRecord};
use bulwark_proto::v1 as pb;
use bulwark_proto::v1::discovery_client::DiscoveryClient;
use clap::Parser;
use etcd_client::{EventType, WatchOptions};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

const NAMESPACE: &str = "bench";
const SERVICE: &str = "orders";
const DEPENDENCY: &str = "pay";
/// The policy's `breakerOpenPods`.
const OPEN_SHARE: f64 = 0.5;

#[derive(Debug, Parser)]
struct Args {
    /// The replica's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    grpc: String,
    /// The replica's REST address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// Simulated sidecars of bench/orders.
    #[arg(long, default_value_t = 50)]
    sidecars: usize,
    /// Sidecar streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    per_connection: usize,
    /// Measured rounds.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// The sidecars' health report interval (the sidecar's own default is 5s).
    #[arg(long, default_value = "1s", value_parser = duration)]
    report_interval: Duration,
    /// etcd client URL: watch health/ and status/ to split the time into stages.
    #[arg(long)]
    etcd: Option<String>,
    /// The control plane's etcd key prefix.
    #[arg(long, default_value = "/bulwark/v1")]
    etcd_prefix: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = bulwark_proto::policy::units::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(d)
}

fn policies() -> String {
    serde_json::json!({
        "resources": [
            {
                "apiVersion": "bulwark/v1",
                "kind": "UpstreamPolicy",
                "metadata": { "name": DEPENDENCY, "namespace": NAMESPACE },
                "spec": { "endpoints": { "static": ["127.0.0.1:9"] } }
            },
            {
                "apiVersion": "bulwark/v1",
                "kind": "ServicePolicy",
                "metadata": { "name": SERVICE, "namespace": NAMESPACE },
                "spec": {
                    "dependencies": { DEPENDENCY: { "critical": true } },
                    "unhealthyWhen": { "breakerOpenPods": "50%" },
                    "levels": { "DEGRADED": { "unhealthyDependencies": 1 } },
                    "lowerAfter": "1s"
                }
            }
        ],
        "by": "bulwark-levels-bench"
    })
    .to_string()
}

async fn apply(http: &str) -> anyhow::Result<()> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(format!("{http}/v1/apply"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(policies())))?;
    let rsp = client.request(req).await.context("POST /v1/apply")?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "apply answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// What the sidecars and the etcd watch saw, each when it happened.
#[derive(Debug)]
enum Event {
    /// A sidecar received (and ACKed) a snapshot.
    Snapshot { id: usize },
    /// A sidecar received Levels; `level` is bench/orders' (NORMAL when not listed).
    Level {
        id: usize,
        level: pb::Level,
        at: Instant,
    },
    /// A sidecar sent a report.
    Report { id: usize, open: bool, at: Instant },
    /// A pod's health record changed in etcd (`None`: it is gone).
    Health {
        pod: String,
        open: Option<bool>,
        at: Instant,
    },
    /// bench/orders' status changed in etcd.
    Status { degraded: bool, at: Instant },
}

fn report(open: bool, interval: Duration) -> pb::SidecarMessage {
    let requests = 100;
    pb::SidecarMessage {
        message: Some(pb::sidecar_message::Message::Health(pb::HealthReport {
            identity: None,
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            applied_version: 0,
            app: Some(pb::AppHealth {
                probed: false,
                healthy: true,
                detail: String::new(),
            }),
            upstreams: vec![pb::UpstreamHealth {
                namespace: NAMESPACE.into(),
                name: DEPENDENCY.into(),
                requests,
                failures: if open { requests } else { 0 },
                slow: 0,
                breaker: if open {
                    pb::BreakerState::Open
                } else {
                    pb::BreakerState::Closed
                }
                .into(),
                endpoints: 2,
                ejected: 0,
                overloaded: 0,
                p99_micros: 0,
            }],
        })),
    }
}

/// One simulated sidecar: Hello, an ACK per snapshot, a report every interval (first one at a
/// random point of the first interval, as sidecars start at different times).
async fn sidecar(
    channel: tonic::transport::Channel,
    id: usize,
    interval: Duration,
    open: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let mut client = DiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::SidecarMessage>(8);
    tx.send(pb::SidecarMessage {
        message: Some(pb::sidecar_message::Message::Hello(pb::Hello {
            namespace: NAMESPACE.into(),
            service: SERVICE.into(),
            pod: format!("orders-{id}"),
            last_applied_version: 0,
        })),
    })
    .await?;
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut ticks =
        tokio::time::interval_at(Instant::now() + interval.mul_f64(fastrand::f64()), interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(message) = message? else { return Ok(()) };
                match message.message {
                    Some(pb::control_plane_message::Message::Snapshot(s)) => {
                        tx.send(pb::SidecarMessage {
                            message: Some(pb::sidecar_message::Message::Ack(pb::Ack {
                                version: s.version,
                                error: String::new(),
                            })),
                        })
                        .await?;
                        let _ = events.send(Event::Snapshot { id });
                    }
                    Some(pb::control_plane_message::Message::Levels(levels)) => {
                        let at = Instant::now();
                        let level = levels
                            .services
                            .iter()
                            .find(|s| s.namespace == NAMESPACE && s.service == SERVICE)
                            .map(|s| s.level())
                            .unwrap_or(pb::Level::Normal);
                        let _ = events.send(Event::Level { id, level, at });
                    }
                    None => {}
                }
            }
            _ = ticks.tick() => {
                let open = *open.borrow();
                tx.send(report(open, interval)).await?;
                let _ = events.send(Event::Report { id, open, at: Instant::now() });
            }
        }
    }
}

/// Follows bench/orders' pods' health records and its status in etcd.
async fn follow_etcd(
    endpoint: String,
    prefix: String,
    events: mpsc::UnboundedSender<Event>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .with_context(|| format!("connect to etcd at {endpoint}"))?;
    let prefix = prefix.trim_end_matches('/');
    let health = format!("{prefix}/health/{NAMESPACE}/{SERVICE}/");
    let status = format!("{prefix}/status/{NAMESPACE}/{SERVICE}");
    let mut healths = client
        .watch(health.as_str(), Some(WatchOptions::new().with_prefix()))
        .await?;
    let mut statuses = client.watch(status.as_str(), None).await?;
    let _ = ready.send(());
    loop {
        let (response, is_health) = tokio::select! {
            r = healths.message() => (r?, true),
            r = statuses.message() => (r?, false),
        };
        let Some(response) = response else {
            bail!("an etcd watch ended");
        };
        let at = Instant::now();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let deleted = event.event_type() == EventType::Delete;
            if is_health {
                let pod = String::from_utf8_lossy(kv.key()).into_owned();
                let open =
                    if deleted {
                        None
                    } else {
                        // Written by the control plane; a record that does not parse is skipped.
                        match serde_json::from_slice::<HealthRecord>(kv.value()) {
                            Ok(r) => Some(r.upstreams.iter().any(|u| {
                                u.name == DEPENDENCY && u.breaker != BreakerState::Closed
                            })),
                            Err(_) => continue,
                        }
                    };
                let _ = events.send(Event::Health { pod, open, at });
            } else {
                let degraded = !deleted
                    && serde_json::from_slice::<ServiceStatus>(kv.value()).is_ok_and(|s| {
                        s.level == bulwark_control_plane::degradation::compute::Level::Degraded
                    });
                let _ = events.send(Event::Status { degraded, at });
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Reports say OPEN since `t0`.
    Degrading,
    /// Reports say CLOSED again.
    Recovering,
}

/// Everything known, updated from the events.
struct State {
    phase: Phase,
    snapshots: Vec<bool>,
    level: Vec<pb::Level>,
    /// This round: when each sidecar first received DEGRADED (or NORMAL when recovering).
    reached: Vec<Option<Instant>>,
    /// This round: when each sidecar sent its first report of the new breaker state.
    reported: Vec<Option<Instant>>,
    /// Pods whose record in etcd says `pay`'s breaker is open.
    open_in_etcd: HashSet<String>,
    /// This round: when the open records in etcd first reached the threshold.
    threshold_in_etcd: Option<Instant>,
    /// This round: when etcd first had bench/orders DEGRADED.
    status_degraded: Option<Instant>,
}

impl State {
    fn new(n: usize) -> Self {
        State {
            phase: Phase::Idle,
            snapshots: vec![false; n],
            level: vec![pb::Level::Normal; n],
            reached: vec![None; n],
            reported: vec![None; n],
            open_in_etcd: HashSet::new(),
            threshold_in_etcd: None,
            status_degraded: None,
        }
    }

    fn start(&mut self, phase: Phase) {
        self.phase = phase;
        self.reached.iter_mut().for_each(|r| *r = None);
        self.reported.iter_mut().for_each(|r| *r = None);
        self.threshold_in_etcd = None;
        self.status_degraded = None;
    }

    /// Open records that make `pay` unhealthy: `open >= 50% of pods`.
    fn threshold(&self) -> usize {
        (OPEN_SHARE * self.snapshots.len() as f64).ceil() as usize
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Snapshot { id } => self.snapshots[id] = true,
            Event::Level { id, level, at } => {
                self.level[id] = level;
                let wanted = match self.phase {
                    Phase::Degrading => pb::Level::Degraded,
                    Phase::Recovering => pb::Level::Normal,
                    Phase::Idle => return,
                };
                if level == wanted && self.reached[id].is_none() {
                    self.reached[id] = Some(at);
                }
            }
            Event::Report { id, open, at } => {
                let wanted = self.phase == Phase::Degrading;
                if self.phase != Phase::Idle && open == wanted && self.reported[id].is_none() {
                    self.reported[id] = Some(at);
                }
            }
            Event::Health { pod, open, at } => {
                if open == Some(true) {
                    self.open_in_etcd.insert(pod);
                } else {
                    self.open_in_etcd.remove(&pod);
                }
                if self.phase == Phase::Degrading
                    && self.threshold_in_etcd.is_none()
                    && self.open_in_etcd.len() >= self.threshold()
                {
                    self.threshold_in_etcd = Some(at);
                }
            }
            Event::Status { degraded, at } => {
                if self.phase == Phase::Degrading && degraded && self.status_degraded.is_none() {
                    self.status_degraded = Some(at);
                }
            }
        }
    }
}

/// Applies events until `done` holds, or fails after `limit`.
async fn pump(
    events: &mut mpsc::UnboundedReceiver<Event>,
    state: &mut State,
    limit: Duration,
    what: &str,
    done: impl Fn(&State) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done(state) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => state.apply(event),
            Ok(None) => bail!("every sidecar ended"),
            Err(_) => bail!("timed out after {limit:?} waiting for {what}"),
        }
    }
    Ok(())
}

/// Applies events for `wait`.
async fn idle(events: &mut mpsc::UnboundedReceiver<Event>, state: &mut State, wait: Duration) {
    let deadline = Instant::now() + wait;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        state.apply(event);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of `values`, in ms.
fn median_ms(values: &mut [Duration]) -> f64 {
    values.sort();
    ms(percentile(values, 0.5))
}

/// One round's stages (with the etcd watch).
#[derive(Debug, Default, Clone, Copy)]
struct Stages {
    /// t0 → the report that made the threshold was sent.
    report_wait: Duration,
    /// → the threshold-th open record was in etcd.
    health_write: Duration,
    /// → the status said DEGRADED in etcd.
    leader: Duration,
    /// → the first sidecar had DEGRADED.
    first_push: Duration,
    /// → the last sidecar had DEGRADED.
    last_push: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.sidecars == 0 {
        bail!("--sidecars must be at least 1");
    }
    apply(&args.http).await?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    if let Some(endpoint) = args.etcd.clone() {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let tx = events_tx.clone();
        let prefix = args.etcd_prefix.clone();
        tokio::spawn(async move {
            if let Err(e) = follow_etcd(endpoint, prefix, tx, ready_tx).await {
                eprintln!("etcd watch: {e:#}");
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .context("the etcd watch did not start")?
            .context("the etcd watch failed")?;
    }
    let (open_tx, open_rx) = watch::channel(false);
    let connections = args.sidecars.div_ceil(args.per_connection.max(1));
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(args.grpc.clone())?
            .connect()
            .await
            .with_context(|| format!("connect to {}", args.grpc))?;
        channels.push(channel);
    }
    for id in 0..args.sidecars {
        let channel = channels[id % connections].clone();
        let tx = events_tx.clone();
        let open = open_rx.clone();
        let interval = args.report_interval;
        tokio::spawn(async move {
            if let Err(e) = sidecar(channel, id, interval, open, tx).await {
                eprintln!("sidecar {id}: {e:#}");
            }
        });
    }
    drop(events_tx);
    let mut state = State::new(args.sidecars);
    pump(
        &mut events,
        &mut state,
        Duration::from_secs(30),
        "every first snapshot",
        |s| s.snapshots.iter().all(|&b| b),
    )
    .await?;
    // Every pod reports at least twice before the first round, so all of them count.
    idle(&mut events, &mut state, args.report_interval * 2).await;
    let limit = args.report_interval * 3 + Duration::from_secs(30);
    pump(
        &mut events,
        &mut state,
        limit,
        "every sidecar NORMAL",
        |s| s.level.iter().all(|&l| l == pb::Level::Normal),
    )
    .await?;
    let threshold = state.threshold();
    println!(
        "{} sidecars of {NAMESPACE}/{SERVICE} over {connections} connection(s), report interval {:?}, {} rounds; {DEPENDENCY} is unhealthy once {threshold} pods report its breaker open",
        args.sidecars, args.report_interval, args.rounds
    );

    let mut all = Vec::with_capacity(args.sidecars * args.rounds);
    let mut recoveries = Vec::with_capacity(args.rounds);
    let mut stages: Vec<Stages> = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        // Rounds start anywhere in the report and levels cycles.
        idle(
            &mut events,
            &mut state,
            args.report_interval.mul_f64(fastrand::f64()),
        )
        .await;
        state.start(Phase::Degrading);
        let t0 = Instant::now();
        open_tx.send_replace(true);
        pump(
            &mut events,
            &mut state,
            limit,
            "every sidecar DEGRADED",
            |s| s.reached.iter().all(Option::is_some),
        )
        .await?;
        let mut reached: Vec<Duration> = state.reached.iter().flatten().map(|&t| t - t0).collect();
        reached.sort();
        let mut reported: Vec<Duration> =
            state.reported.iter().flatten().map(|&t| t - t0).collect();
        reported.sort();
        let first = reached.first().copied().unwrap_or_default();
        let last = reached.last().copied().unwrap_or_default();
        let crossing = reported
            .get(threshold.saturating_sub(1))
            .copied()
            .unwrap_or_default();
        let mut line = format!(
            "round {round:2}: DEGRADED on every sidecar after {:.0} ms (first {:.0} ms); threshold report sent at {:.0} ms",
            ms(last),
            ms(first),
            ms(crossing)
        );
        if let (Some(health), Some(status)) = (state.threshold_in_etcd, state.status_degraded) {
            let s = Stages {
                report_wait: crossing,
                health_write: (health - t0).saturating_sub(crossing),
                leader: status.saturating_duration_since(health),
                first_push: first.saturating_sub(status - t0),
                last_push: last.saturating_sub(status - t0),
            };
            line.push_str(&format!(
                ", in etcd +{:.1} ms, status +{:.1} ms, pushed +{:.1}..{:.1} ms",
                ms(s.health_write),
                ms(s.leader),
                ms(s.first_push),
                ms(s.last_push)
            ));
            stages.push(s);
        }
        all.extend(reached);

        state.start(Phase::Recovering);
        let t1 = Instant::now();
        open_tx.send_replace(false);
        pump(
            &mut events,
            &mut state,
            limit,
            "every sidecar NORMAL",
            |s| s.reached.iter().all(Option::is_some),
        )
        .await?;
        let back = state
            .reached
            .iter()
            .flatten()
            .map(|&t| t - t1)
            .max()
            .unwrap_or_default();
        recoveries.push(back);
        state.start(Phase::Idle);
        println!("{line}; NORMAL again after {:.0} ms", ms(back));
    }
    all.sort();
    println!(
        "t0 -> DEGRADED on a sidecar, over {} rounds x {} sidecars: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        args.rounds,
        args.sidecars,
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "CLOSED again -> NORMAL on every sidecar (includes lowerAfter 1s): median {:.0} ms",
        median_ms(&mut recoveries)
    );
    if !stages.is_empty() {
        let pick = |f: fn(&Stages) -> Duration| {
            let mut v: Vec<Duration> = stages.iter().map(f).collect();
            median_ms(&mut v)
        };
        println!(
            "stages, median over rounds: report wait {:.0} ms, report -> record in etcd {:.1} ms, record -> status DEGRADED in etcd {:.1} ms, status -> first sidecar {:.1} ms, -> last sidecar {:.1} ms",
            pick(|s| s.report_wait),
            pick(|s| s.health_write),
            pick(|s| s.leader),
            pick(|s| s.first_push),
            pick(|s| s.last_push),
        );
    }
    Ok(())
}
