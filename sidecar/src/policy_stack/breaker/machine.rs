//! The circuit breaker's state machine, one per upstream (CLOSED → OPEN → HALF-OPEN),
//! fed one [`Outcome`] per attempt, with the clock passed in by the caller.
//!
//! Semantics follow resilience4j's time-based sliding window, with the open period doubling on
//! each consecutive trip:
//!
//! ```text
//!            failure or slow-call rate >= threshold          open period elapsed,
//!            over >= minRequests in the window               next try_acquire
//!   CLOSED ──────────────────────────────────────▶ OPEN ─────────────────────▶ HALF-OPEN
//!     ▲                                              ▲   any probe fails or is slow  │
//!     │                                              └───────────────────────────────┤
//!     └──────────────── all halfOpenProbes succeed (window cleared) ─────────────────┘
//! ```
//!
//! Nothing here spawns, sleeps or reads a clock: the sidecar keeps each `Breaker` in a
//! `std::sync::Mutex` per upstream and passes `tokio::time::Instant::now()`, so tests drive time
//! with explicit instants. The hot path (`try_acquire`, `record` without a transition) does not
//! allocate; reasons are built only when the state changes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::policy::units::DurationText;
use bulwark_proto::policy::{CircuitBreaker, Condition, GrpcCode, defaults};
use serde::Serialize;
use tokio::time::Instant;

use crate::policy_stack::outcome::{ConditionSet, Outcome};

/// Rates are compared with this slack because thresholds come from decimal text (`33.3%`)
/// and observed rates from integer division: a rate that equals the threshold on paper must
/// trip even when the two floats differ in the last bit.
const RATE_EPSILON: f64 = 1e-9;

/// The `circuitBreaker` block of an UpstreamPolicy, with defaults applied, ready to run.
#[derive(Clone, PartialEq, Debug)]
pub struct BreakerConfig {
    /// Length of the rolling window.
    pub window: Duration,
    /// Number of buckets the window is divided into (≥ 1).
    pub buckets: u32,
    /// Requests needed in the window before the breaker may trip (≥ 1).
    pub min_requests: u32,
    /// Failure share (0..=1) at which the breaker opens.
    pub failure_rate: f64,
    pub slow_call: Option<SlowCallConfig>,
    /// Open period after the first trip; doubled on each consecutive trip.
    pub open_for: Duration,
    /// Cap of the doubled open period (never below `open_for`).
    pub max_open_for: Duration,
    /// Requests let through while half-open, counted whether in flight or finished (≥ 1).
    pub half_open_probes: u32,
    /// Outcomes that count as failures.
    pub failure_on: ConditionSet,
}

#[derive(Clone, PartialEq, Debug)]
pub struct SlowCallConfig {
    /// A call taking at least this long is slow, whether it succeeded or failed.
    pub duration: Duration,
    /// Slow share (0..=1) at which the breaker opens.
    pub rate: f64,
}

/// What `failureOn` means when the policy does not say: the outcomes that say the upstream
/// itself is in trouble — a 5xx, and the gRPC statuses a server gives for its own faults
/// (UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS: what a 5xx is to HTTP). 4xx and the other gRPC
/// statuses are the caller's business unless listed.
pub fn default_failure_on() -> ConditionSet {
    ConditionSet::new(&[
        Condition::Status5xx,
        Condition::ConnectFailure,
        Condition::Reset,
        Condition::Timeout,
        Condition::Grpc(GrpcCode::Unknown),
        Condition::Grpc(GrpcCode::Internal),
        Condition::Grpc(GrpcCode::Unavailable),
        Condition::Grpc(GrpcCode::DataLoss),
    ])
}

impl BreakerConfig {
    /// Compiles the policy block; `None` (no block) means the upstream has no breaker.
    pub fn from_policy(policy: Option<&CircuitBreaker>) -> Option<BreakerConfig> {
        let p = policy?;
        let open_for = p
            .open_for
            .as_ref()
            .map_or(defaults::BREAKER_OPEN_FOR, |d| d.get());
        let max_open_for = p
            .max_open_for
            .as_ref()
            .map_or(defaults::BREAKER_MAX_OPEN_FOR, |d| d.get());
        Some(BreakerConfig {
            window: p
                .window
                .as_ref()
                .map_or(defaults::BREAKER_WINDOW, |d| d.get()),
            buckets: p.buckets.unwrap_or(defaults::BREAKER_BUCKETS).max(1),
            min_requests: p
                .min_requests
                .unwrap_or(defaults::BREAKER_MIN_REQUESTS)
                .max(1),
            failure_rate: p
                .failure_rate
                .as_ref()
                .map_or(defaults::BREAKER_FAILURE_RATE_PERCENT / 100.0, |r| {
                    r.fraction()
                }),
            slow_call: p.slow_call.as_ref().map(|s| SlowCallConfig {
                duration: s.duration.get(),
                rate: s.rate.fraction(),
            }),
            open_for,
            // Validation only compares the two when both are written; a long `openFor` with
            // the default cap must still open for at least `openFor`.
            max_open_for: max_open_for.max(open_for),
            half_open_probes: p
                .half_open_probes
                .unwrap_or(defaults::BREAKER_HALF_OPEN_PROBES)
                .max(1),
            failure_on: p
                .failure_on
                .as_deref()
                .map_or_else(default_failure_on, ConditionSet::parse),
        })
    }

    /// Open period after `trips` consecutive trips (1 = first): `open_for` doubled per extra
    /// trip, capped at `max_open_for`.
    fn open_period(&self, trips: u32) -> Duration {
        let mut period = self.open_for;
        for _ in 1..trips {
            if period >= self.max_open_for {
                break;
            }
            period = period.saturating_mul(2);
        }
        period.min(self.max_open_for)
    }
}

pub use bulwark_proto::breaker::BreakerState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionKind {
    /// Admitted while closed; its outcome counts in the rolling window.
    Normal,
    /// One of the half-open probes; its outcome decides whether the breaker closes.
    Probe,
}

/// Permission for one attempt. Hand it back to [`Breaker::record`] with the attempt's outcome,
/// or to [`Breaker::release`] if the attempt ends without one.
///
/// It remembers the breaker period it was issued in, so an outcome that arrives after the
/// state changed (a request admitted before the trip, a probe that lost the race to another
/// failing probe) is ignored instead of polluting the new period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    kind: AdmissionKind,
    period: u64,
}

impl Admission {
    pub fn kind(&self) -> AdmissionKind {
        self.kind
    }

    pub fn is_probe(&self) -> bool {
        self.kind == AdmissionKind::Probe
    }
}

/// The answer of [`Breaker::try_acquire`] when the attempt may go ahead: the admission, and
/// the OPEN → HALF-OPEN transition when this very call made it (for the caller to log).
#[must_use]
#[derive(Debug)]
pub struct Admitted {
    pub admission: Admission,
    pub transition: Option<Transition>,
}

/// The attempt must fail fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// `Open`, or `HalfOpen` while all probes are out.
    pub state: BreakerState,
    /// When the breaker may admit again: the end of the open period, or `now` when half-open
    /// (as soon as the probes come back).
    pub until: Instant,
    /// Why the breaker last opened, e.g. `failure rate 60% >= 50% over 10 requests in 10s`.
    /// Shared rather than formatted per rejection: rejections are the hot path while open.
    pub reason: Arc<str>,
}

/// A state change, for logs (`info`) and the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: String,
}

/// What `/breakers` shows for one upstream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    /// Outcomes counted in the rolling window right now.
    pub requests: u64,
    pub failures: u64,
    pub slow_calls: u64,
    /// Failure share of `requests`, in percent (0 when there are none).
    pub failure_rate_percent: f64,
    pub slow_call_rate_percent: f64,
    /// Trips since the breaker last closed; the open period doubles with each.
    pub consecutive_trips: u32,
    /// While open or half-open: seconds since the breaker (last) opened.
    pub opened_seconds_ago: Option<f64>,
    /// While open: seconds until it lets probes through (0 once due).
    pub open_until_seconds_from_now: Option<f64>,
    /// While half-open: probes admitted (in flight or finished) and probes that succeeded.
    pub probes_admitted: Option<u32>,
    pub probes_succeeded: Option<u32>,
    /// Reason of the last state change, e.g. `3 half-open probes succeeded`.
    pub last_transition: Option<String>,
}

/// One upstream's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    window: Window,
    /// Bumped on every transition; admissions from an older period are ignored.
    period: u64,
    /// Trips since the last close (0 while closed after a close or at start).
    consecutive_trips: u32,
    opened_at: Option<Instant>,
    open_until: Instant,
    probes_admitted: u32,
    probes_succeeded: u32,
    /// Why the breaker last opened; handed out with every rejection.
    open_reason: Arc<str>,
    last_transition: Option<String>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, now: Instant) -> Breaker {
        let window = Window::new(cfg.window, cfg.buckets, now);
        Breaker {
            cfg,
            state: BreakerState::Closed,
            window,
            period: 0,
            consecutive_trips: 0,
            opened_at: None,
            open_until: now,
            probes_admitted: 0,
            probes_succeeded: 0,
            open_reason: Arc::from(""),
            last_transition: None,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// The state as of the last call; an OPEN breaker whose period has elapsed stays OPEN until
    /// the next `try_acquire` moves it to HALF-OPEN.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to send one attempt.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Admitted, Rejected> {
        match self.state {
            BreakerState::Closed => Ok(Admitted {
                admission: self.admission(AdmissionKind::Normal),
                transition: None,
            }),
            BreakerState::Open if now >= self.open_until => {
                let probes = self.cfg.half_open_probes;
                let reason = format!(
                    "after {} open, letting {probes} {} through",
                    DurationText(self.cfg.open_period(self.consecutive_trips)),
                    plural(probes, "probe", "probes"),
                );
                let transition = self.transition(BreakerState::HalfOpen, reason);
                self.probes_admitted = 1;
                self.probes_succeeded = 0;
                Ok(Admitted {
                    admission: self.admission(AdmissionKind::Probe),
                    transition: Some(transition),
                })
            }
            BreakerState::Open => Err(self.rejected(self.open_until)),
            BreakerState::HalfOpen if self.probes_admitted < self.cfg.half_open_probes => {
                self.probes_admitted += 1;
                Ok(Admitted {
                    admission: self.admission(AdmissionKind::Probe),
                    transition: None,
                })
            }
            BreakerState::HalfOpen => Err(self.rejected(now)),
        }
    }

    /// Records the outcome of an admitted attempt (every attempt is one outcome). `elapsed` is
    /// how long the attempt took, for the slow-call rule.
    pub fn record(
        &mut self,
        admission: Admission,
        outcome: &Outcome,
        elapsed: Duration,
        now: Instant,
    ) -> Option<Transition> {
        if admission.period != self.period {
            return None;
        }
        let failed = self.cfg.failure_on.matches(outcome);
        let slow = self
            .cfg
            .slow_call
            .as_ref()
            .is_some_and(|s| elapsed >= s.duration);
        match (admission.kind, self.state) {
            (AdmissionKind::Normal, BreakerState::Closed) => {
                self.window.add(now, failed, slow);
                let reason = self.trip_reason()?;
                Some(self.open(now, reason))
            }
            (AdmissionKind::Probe, BreakerState::HalfOpen) => {
                if failed {
                    let reason = format!("half-open probe failed: {}", OutcomeText(outcome));
                    return Some(self.open(now, reason));
                }
                if let Some(s) = self.cfg.slow_call.as_ref().filter(|_| slow) {
                    // A slow probe is not a recovery: closing would only re-trip on the
                    // slow-call rate once the window fills again.
                    let reason = format!(
                        "half-open probe slow: {} >= {}",
                        DurationText(elapsed),
                        DurationText(s.duration)
                    );
                    return Some(self.open(now, reason));
                }
                self.probes_succeeded += 1;
                if self.probes_succeeded < self.cfg.half_open_probes {
                    return None;
                }
                let n = self.probes_succeeded;
                let reason = format!("{n} half-open {} succeeded", plural(n, "probe", "probes"));
                self.consecutive_trips = 0;
                self.window.clear();
                Some(self.transition(BreakerState::Closed, reason))
            }
            // Unreachable while periods match (each period has one state), kept total.
            _ => None,
        }
    }

    /// Gives back an admission whose attempt ended without an outcome (the caller went away
    /// before the upstream answered), so a half-open probe slot is not lost for good.
    pub fn release(&mut self, admission: Admission) {
        if admission.period == self.period
            && admission.is_probe()
            && self.state == BreakerState::HalfOpen
        {
            self.probes_admitted = self.probes_admitted.saturating_sub(1);
        }
    }

    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let counts = self.window.counts_at(now);
        let rate = |n: u64| {
            if counts.total == 0 {
                0.0
            } else {
                round2(100.0 * n as f64 / counts.total as f64)
            }
        };
        let half_open = self.state == BreakerState::HalfOpen;
        BreakerSnapshot {
            state: self.state,
            requests: counts.total,
            failures: counts.failures,
            slow_calls: counts.slow,
            failure_rate_percent: rate(counts.failures),
            slow_call_rate_percent: rate(counts.slow),
            consecutive_trips: self.consecutive_trips,
            opened_seconds_ago: self
                .opened_at
                .filter(|_| self.state != BreakerState::Closed)
                .map(|at| seconds(now.saturating_duration_since(at))),
            open_until_seconds_from_now: (self.state == BreakerState::Open)
                .then(|| seconds(self.open_until.saturating_duration_since(now))),
            probes_admitted: half_open.then_some(self.probes_admitted),
            probes_succeeded: half_open.then_some(self.probes_succeeded),
            last_transition: self.last_transition.clone(),
        }
    }

    fn admission(&self, kind: AdmissionKind) -> Admission {
        Admission {
            kind,
            period: self.period,
        }
    }

    fn rejected(&self, until: Instant) -> Rejected {
        Rejected {
            state: self.state,
            until,
            reason: Arc::clone(&self.open_reason),
        }
    }

    /// Why the window says the breaker must open, if it does.
    fn trip_reason(&self) -> Option<String> {
        let c = self.window.counts();
        if c.total < u64::from(self.cfg.min_requests) {
            return None;
        }
        let total = c.total as f64;
        let failure_rate = c.failures as f64 / total;
        if failure_rate + RATE_EPSILON >= self.cfg.failure_rate {
            return Some(format!(
                "failure rate {} >= {} over {} requests in {}",
                PercentText(failure_rate),
                PercentText(self.cfg.failure_rate),
                c.total,
                DurationText(self.cfg.window),
            ));
        }
        let slow = self.cfg.slow_call.as_ref()?;
        let slow_rate = c.slow as f64 / total;
        (slow_rate + RATE_EPSILON >= slow.rate).then(|| {
            format!(
                "slow-call rate {} >= {} (calls >= {}) over {} requests in {}",
                PercentText(slow_rate),
                PercentText(slow.rate),
                DurationText(slow.duration),
                c.total,
                DurationText(self.cfg.window),
            )
        })
    }

    /// Opens, from CLOSED (where `consecutive_trips` is 0: closing resets the doubling) or
    /// from HALF-OPEN (one more consecutive trip).
    fn open(&mut self, now: Instant, reason: String) -> Transition {
        self.consecutive_trips = self.consecutive_trips.saturating_add(1);
        self.opened_at = Some(now);
        self.open_until = now + self.cfg.open_period(self.consecutive_trips);
        self.open_reason = Arc::from(reason.as_str());
        self.transition(BreakerState::Open, reason)
    }

    fn transition(&mut self, to: BreakerState, reason: String) -> Transition {
        let from = self.state;
        self.state = to;
        self.period += 1;
        self.last_transition = Some(reason.clone());
        Transition { from, to, reason }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    total: u64,
    failures: u64,
    slow: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.total += other.total;
        self.failures += other.failures;
        self.slow += other.slow;
    }

    fn sub(&mut self, other: Counts) {
        self.total = self.total.saturating_sub(other.total);
        self.failures = self.failures.saturating_sub(other.failures);
        self.slow = self.slow.saturating_sub(other.slow);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Absolute bucket number (time since the window's origin / bucket width).
    index: u64,
    counts: Counts,
}

/// The rolling window: a ring of buckets plus running totals, so recording is O(1) and
/// advancing costs one step per bucket that went by (at most `buckets`).
///
/// The window counts the current bucket and the `buckets - 1` before it, so an outcome
/// stops counting between `window - window/buckets` and `window` after it was recorded.
#[derive(Debug)]
struct Window {
    origin: Instant,
    width_nanos: u128,
    ring: Box<[Bucket]>,
    /// Newest bucket number advanced to; ring slot `i % len` holds bucket `i` for every `i`
    /// in `head - len + 1 ..= head` that has counts.
    head: u64,
    totals: Counts,
}

impl Window {
    fn new(window: Duration, buckets: u32, now: Instant) -> Window {
        let buckets = buckets.max(1);
        Window {
            origin: now,
            width_nanos: (window.as_nanos() / u128::from(buckets)).max(1),
            ring: vec![Bucket::default(); buckets as usize].into_boxed_slice(),
            head: 0,
            totals: Counts::default(),
        }
    }

    fn len(&self) -> u64 {
        self.ring.len() as u64
    }

    fn index_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / self.width_nanos).unwrap_or(u64::MAX)
    }

    fn slot(&self, index: u64) -> usize {
        (index % self.len()) as usize
    }

    /// Drops buckets that fell out of the window by `now`.
    fn advance(&mut self, now: Instant) {
        let current = self.index_of(now);
        if current <= self.head {
            // Same bucket, or an instant taken before the last one (callers read the clock
            // before taking the lock): count it in the newest bucket.
            return;
        }
        if current - self.head >= self.len() {
            self.ring.fill(Bucket::default());
            self.totals = Counts::default();
        } else {
            for index in self.head + 1..=current {
                let slot = self.slot(index);
                let old = std::mem::replace(
                    &mut self.ring[slot],
                    Bucket {
                        index,
                        counts: Counts::default(),
                    },
                );
                self.totals.sub(old.counts);
            }
        }
        self.head = current;
    }

    fn add(&mut self, now: Instant, failed: bool, slow: bool) {
        self.advance(now);
        let outcome = Counts {
            total: 1,
            failures: u64::from(failed),
            slow: u64::from(slow),
        };
        let slot = self.slot(self.head);
        self.ring[slot].index = self.head;
        self.ring[slot].counts.add(outcome);
        self.totals.add(outcome);
    }

    /// Totals as of the last `add`.
    fn counts(&self) -> Counts {
        self.totals
    }

    /// Totals as they would be at `now`, without advancing (for read-only snapshots).
    fn counts_at(&self, now: Instant) -> Counts {
        let current = self.index_of(now).max(self.head);
        let oldest = (current + 1).saturating_sub(self.len());
        let mut counts = Counts::default();
        for bucket in self.ring.iter() {
            // Buckets with counts always carry their own index (see `head`).
            if bucket.index >= oldest && bucket.index <= current {
                counts.add(bucket.counts);
            }
        }
        counts
    }

    fn clear(&mut self) {
        self.ring.fill(Bucket::default());
        self.totals = Counts::default();
    }
}

fn plural<'a>(n: u32, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

fn seconds(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A fraction shown as a percentage with at most two decimals: `0.6` → `60%`, `0.125` →
/// `12.5%`.
struct PercentText(f64);

impl fmt::Display for PercentText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{:.2}", self.0 * 100.0);
        let text = text.trim_end_matches('0').trim_end_matches('.');
        write!(f, "{text}%")
    }
}

/// An outcome in the vocabulary of `failureOn`: `503`, `grpc-unavailable`, `connect-failure`,
/// `reset`, `timeout`.
struct OutcomeText<'a>(&'a Outcome);

impl fmt::Display for OutcomeText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Outcome::Response {
                grpc: Some(code), ..
            } if *code != GrpcCode::Ok => write!(f, "grpc-{}", code.name()),
            Outcome::Response { status, .. } => write!(f, "{status}"),
            Outcome::ConnectFailure => f.write_str("connect-failure"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Timeout => f.write_str("timeout"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_proto::policy::{Duration as PolicyDuration, Percent, SlowCall};

    const OK: Outcome = Outcome::Response {
        status: 200,
        grpc: None,
    };
    const E503: Outcome = Outcome::Response {
        status: 503,
        grpc: None,
    };
    const FAST: Duration = Duration::from_millis(5);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 10s window in 10 buckets, 10 requests minimum, 50%, open 10s doubling up to 35s,
    /// 3 probes, default failureOn.
    fn cfg() -> BreakerConfig {
        BreakerConfig::from_policy(Some(&CircuitBreaker {
            min_requests: Some(10),
            open_for: Some(PolicyDuration::new("10s")),
            max_open_for: Some(PolicyDuration::new("35s")),
            ..Default::default()
        }))
        .unwrap()
    }

    /// Acquires and records one attempt, returning the transition if any.
    fn call(b: &mut Breaker, now: Instant, outcome: Outcome) -> Option<Transition> {
        call_took(b, now, outcome, FAST)
    }

    fn call_took(
        b: &mut Breaker,
        now: Instant,
        outcome: Outcome,
        elapsed: Duration,
    ) -> Option<Transition> {
        let admitted = b.try_acquire(now).expect("admitted");
        assert!(admitted.transition.is_none(), "unexpected transition");
        b.record(admitted.admission, &outcome, elapsed, now)
    }

    /// Fails attempts at `now` until the (closed) breaker trips.
    fn trip(b: &mut Breaker, now: Instant) -> Transition {
        for _ in 0..100 {
            if let Some(t) = call(b, now, E503) {
                assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
                return t;
            }
        }
        panic!("did not trip");
    }

    #[test]
    fn no_block_no_breaker_and_defaults_apply() {
        assert_eq!(BreakerConfig::from_policy(None), None);
        let c = BreakerConfig::from_policy(Some(&CircuitBreaker::default())).unwrap();
        assert_eq!(c.window, secs(10));
        assert_eq!(c.buckets, 10);
        assert_eq!(c.min_requests, 20);
        assert_eq!(c.failure_rate, 0.5);
        assert_eq!(c.slow_call, None);
        assert_eq!(c.open_for, secs(30));
        assert_eq!(c.max_open_for, secs(300));
        assert_eq!(c.half_open_probes, 3);
        assert_eq!(c.failure_on, default_failure_on());
        // 4xx and the gRPC statuses of the caller's doing are not failures by default; 5xx,
        // the gRPC statuses of a server's own faults and transport errors are.
        assert!(!c.failure_on.matches(&Outcome::Response {
            status: 429,
            grpc: None
        }));
        for code in [
            GrpcCode::ResourceExhausted,
            GrpcCode::NotFound,
            GrpcCode::DeadlineExceeded,
        ] {
            assert!(!c.failure_on.matches(&Outcome::Response {
                status: 200,
                grpc: Some(code)
            }));
        }
        for code in [
            GrpcCode::Unknown,
            GrpcCode::Internal,
            GrpcCode::Unavailable,
            GrpcCode::DataLoss,
        ] {
            assert!(
                c.failure_on.matches(&Outcome::Response {
                    status: 200,
                    grpc: Some(code)
                }),
                "{code:?}"
            );
        }
        for o in [
            E503,
            Outcome::ConnectFailure,
            Outcome::Reset,
            Outcome::Timeout,
        ] {
            assert!(c.failure_on.matches(&o), "{o:?}");
        }
    }

    #[test]
    fn policy_values_compile() {
        let c = BreakerConfig::from_policy(Some(&CircuitBreaker {
            window: Some(PolicyDuration::new("1m")),
            buckets: Some(6),
            min_requests: Some(5),
            failure_rate: Some(Percent::new("25%")),
            slow_call: Some(SlowCall {
                duration: PolicyDuration::new("2s"),
                rate: Percent::new("80%"),
            }),
            open_for: Some(PolicyDuration::new("10m")),
            max_open_for: None,
            half_open_probes: Some(1),
            failure_on: Some(vec!["grpc-unavailable".into()]),
        }))
        .unwrap();
        assert_eq!(c.window, secs(60));
        assert_eq!(c.buckets, 6);
        assert_eq!(c.failure_rate, 0.25);
        assert_eq!(
            c.slow_call,
            Some(SlowCallConfig {
                duration: secs(2),
                rate: 0.8
            })
        );
        // openFor above the default cap: the cap rises to openFor.
        assert_eq!(c.max_open_for, secs(600));
        assert!(c.failure_on.matches(&Outcome::Response {
            status: 200,
            grpc: Some(GrpcCode::Unavailable)
        }));
        assert!(!c.failure_on.matches(&E503));
        // Equal configs compare equal, so a reload can keep the breaker's state.
        assert_eq!(c.clone(), c);
    }

    #[test]
    fn does_not_trip_below_min_requests() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        for _ in 0..9 {
            assert_eq!(call(&mut b, t0, E503), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let t = call(&mut b, t0, E503).unwrap();
        assert_eq!(
            t,
            Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open,
                reason: "failure rate 100% >= 50% over 10 requests in 10s".into(),
            }
        );
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn trips_at_exactly_the_threshold() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        // 4 of 10: below 50%.
        for _ in 0..6 {
            assert_eq!(call(&mut b, t0, OK), None);
        }
        for _ in 0..4 {
            assert_eq!(call(&mut b, t0, E503), None);
        }
        // 5 of 11 = 45%: still below.
        assert_eq!(call(&mut b, t0, E503), None);
        // 6 of 12 = exactly 50%.
        let t = call(&mut b, t0, E503).unwrap();
        assert_eq!(t.reason, "failure rate 50% >= 50% over 12 requests in 10s");
    }

    #[test]
    fn reason_shows_observed_rate() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        for _ in 0..4 {
            call(&mut b, t0, OK);
        }
        for _ in 0..5 {
            assert_eq!(call(&mut b, t0, E503), None);
        }
        let t = call(&mut b, t0, Outcome::ConnectFailure).unwrap();
        assert_eq!(t.reason, "failure rate 60% >= 50% over 10 requests in 10s");
    }

    #[test]
    fn fractional_thresholds_compare_exactly() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.failure_rate = Percent::new("30%").fraction();
        let mut b = Breaker::new(c, t0);
        for _ in 0..7 {
            call(&mut b, t0, OK);
        }
        for _ in 0..2 {
            assert_eq!(call(&mut b, t0, E503), None);
        }
        let t = call(&mut b, t0, E503).unwrap();
        assert_eq!(t.reason, "failure rate 30% >= 30% over 10 requests in 10s");
    }

    #[test]
    fn slow_calls_trip_whether_they_succeed_or_fail() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.min_requests = 5;
        c.failure_rate = 1.0; // failures alone never trip here
        c.slow_call = Some(SlowCallConfig {
            duration: secs(2),
            rate: 0.8,
        });
        let mut b = Breaker::new(c, t0);
        assert_eq!(call_took(&mut b, t0, OK, ms(1999)), None); // not slow: < 2s
        assert_eq!(call_took(&mut b, t0, OK, secs(2)), None); // slow: exactly 2s
        assert_eq!(call_took(&mut b, t0, E503, secs(3)), None); // slow failure
        assert_eq!(call_took(&mut b, t0, OK, secs(5)), None);
        // 4 of 5 slow = 80%.
        let t = call_took(&mut b, t0, OK, ms(2500)).unwrap();
        assert_eq!(
            t.reason,
            "slow-call rate 80% >= 80% (calls >= 2s) over 5 requests in 10s"
        );
        let s = b.snapshot(t0);
        assert_eq!((s.requests, s.failures, s.slow_calls), (5, 1, 4));
        assert_eq!(s.slow_call_rate_percent, 80.0);
        assert_eq!(s.failure_rate_percent, 20.0);
    }

    #[test]
    fn old_buckets_age_out() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        // 5 failures in bucket 0, 4 in bucket 5.
        for _ in 0..5 {
            call(&mut b, t0, E503);
        }
        for _ in 0..4 {
            call(&mut b, t0 + secs(5), E503);
        }
        assert_eq!(b.snapshot(t0 + ms(9999)).requests, 9);
        // At 10s bucket 0 has left the window: 4 + 1 = 5 requests, under minRequests.
        assert_eq!(b.snapshot(t0 + secs(10)).requests, 4);
        assert_eq!(call(&mut b, t0 + secs(10), E503), None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.snapshot(t0 + secs(10)).requests, 5);
        // After a full window of silence everything is gone.
        assert_eq!(b.snapshot(t0 + secs(20)).requests, 0);
        assert_eq!(call(&mut b, t0 + secs(30), E503), None);
        assert_eq!(b.snapshot(t0 + secs(30)).requests, 1);
    }

    #[test]
    fn a_late_instant_counts_in_the_newest_bucket() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        call(&mut b, t0 + secs(5), E503);
        // Read before the lock was taken: earlier than the last record.
        call(&mut b, t0 + secs(4), E503);
        assert_eq!(b.snapshot(t0 + secs(5)).requests, 2);
        assert_eq!(b.snapshot(t0 + secs(15)).requests, 0);
    }

    #[test]
    fn open_rejects_until_the_period_ends_with_the_trip_reason() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        let opened = trip(&mut b, t0);
        let r = b.try_acquire(t0 + ms(9999)).unwrap_err();
        assert_eq!(r.state, BreakerState::Open);
        assert_eq!(r.until, t0 + secs(10));
        assert_eq!(&*r.reason, opened.reason.as_str());
        let a = b.try_acquire(t0 + secs(10)).unwrap();
        assert!(a.admission.is_probe());
        assert_eq!(
            a.transition,
            Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
                reason: "after 10s open, letting 3 probes through".into(),
            })
        );
    }

    #[test]
    fn open_period_doubles_per_consecutive_trip_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        trip(&mut b, t0);
        let mut now = t0;
        // Expected open periods: 10s, then 20s, 35s (40s capped), 35s.
        let mut periods = vec![];
        for _ in 0..4 {
            let until = b.try_acquire(now).unwrap_err().until;
            periods.push(until - now);
            now = until;
            let probe = b.try_acquire(now).unwrap().admission;
            let t = b.record(probe, &E503, FAST, now).unwrap();
            assert_eq!(t.reason, "half-open probe failed: 503");
            assert_eq!(t.from, BreakerState::HalfOpen);
            assert_eq!(t.to, BreakerState::Open);
        }
        assert_eq!(periods, [secs(10), secs(20), secs(35), secs(35)]);
        assert_eq!(b.snapshot(now).consecutive_trips, 5);
        assert_eq!(
            b.try_acquire(now + secs(34)).unwrap_err().until,
            now + secs(35)
        );
        let a = b.try_acquire(now + secs(35)).unwrap();
        assert_eq!(
            a.transition.unwrap().reason,
            "after 35s open, letting 3 probes through"
        );
    }

    #[test]
    fn a_trip_after_closing_starts_from_open_for_again() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        trip(&mut b, t0);
        // Fail one half-open round: 20s next.
        let p = b.try_acquire(t0 + secs(10)).unwrap().admission;
        b.record(p, &Outcome::Timeout, FAST, t0 + secs(10)).unwrap();
        let now = t0 + secs(30);
        let probes: Vec<_> = (0..3)
            .map(|_| b.try_acquire(now).unwrap().admission)
            .collect();
        for p in &probes[..2] {
            assert_eq!(b.record(*p, &OK, FAST, now), None);
        }
        let closed = b.record(probes[2], &OK, FAST, now).unwrap();
        assert_eq!(closed.to, BreakerState::Closed);
        assert_eq!(b.snapshot(now).consecutive_trips, 0);
        trip(&mut b, now);
        assert_eq!(b.try_acquire(now).unwrap_err().until, now + secs(10));
    }

    #[test]
    fn half_open_admits_exactly_the_probes_even_concurrently() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        trip(&mut b, t0);
        let now = t0 + secs(10);
        let first = b.try_acquire(now).unwrap();
        assert!(first.transition.is_some());
        let second = b.try_acquire(now).unwrap();
        let third = b.try_acquire(now).unwrap();
        assert!(second.transition.is_none() && third.transition.is_none());
        for a in [&first, &second, &third] {
            assert_eq!(a.admission.kind(), AdmissionKind::Probe);
        }
        // All three out: the fourth is turned away, with the reason the breaker opened.
        let r = b.try_acquire(now).unwrap_err();
        assert_eq!(r.state, BreakerState::HalfOpen);
        assert_eq!(r.until, now);
        assert_eq!(
            &*r.reason,
            "failure rate 100% >= 50% over 10 requests in 10s"
        );
        // Finished probes still count: no fourth probe after two successes.
        assert_eq!(b.record(first.admission, &OK, FAST, now), None);
        assert_eq!(b.record(second.admission, &OK, FAST, now), None);
        assert!(b.try_acquire(now).is_err());
        let s = b.snapshot(now);
        assert_eq!(s.state, BreakerState::HalfOpen);
        assert_eq!((s.probes_admitted, s.probes_succeeded), (Some(3), Some(2)));
        let t = b.record(third.admission, &OK, FAST, now).unwrap();
        assert_eq!(
            t,
            Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed,
                reason: "3 half-open probes succeeded".into(),
            }
        );
    }

    #[test]
    fn closing_clears_the_window() {
        let t0 = Instant::now();
        // A window long enough that the failures that tripped it would still count.
        let mut c = cfg();
        c.window = secs(60);
        c.buckets = 6;
        let mut b = Breaker::new(c, t0);
        trip(&mut b, t0);
        assert_eq!(b.snapshot(t0).requests, 10);
        let now = t0 + secs(10);
        let probes: Vec<_> = (0..3)
            .map(|_| b.try_acquire(now).unwrap().admission)
            .collect();
        for p in probes {
            b.record(p, &OK, FAST, now);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let s = b.snapshot(now);
        assert_eq!((s.requests, s.failures), (0, 0));
        // Had the window kept the ten failures from t0, nine more would trip it.
        for _ in 0..9 {
            assert_eq!(call(&mut b, now, E503), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn one_failed_probe_reopens_and_later_probe_outcomes_are_ignored() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        trip(&mut b, t0);
        let now = t0 + secs(10);
        let p1 = b.try_acquire(now).unwrap().admission;
        let p2 = b.try_acquire(now).unwrap().admission;
        assert_eq!(b.record(p1, &OK, FAST, now), None);
        let grpc = Outcome::Response {
            status: 200,
            grpc: Some(GrpcCode::NotFound),
        };
        // Not a failure under the default failureOn: counts as a success.
        let p3 = b.try_acquire(now).unwrap().admission;
        assert_eq!(b.record(p3, &grpc, FAST, now), None);
        let t = b.record(p2, &Outcome::Reset, FAST, now).unwrap();
        assert_eq!(t.reason, "half-open probe failed: reset");
        assert_eq!(b.state(), BreakerState::Open);
        // A probe from the previous half-open round finishing now changes nothing.
        assert_eq!(b.record(p3, &OK, FAST, now), None);
        let r = b.try_acquire(now).unwrap_err();
        assert_eq!(r.until, now + secs(20));
        assert_eq!(&*r.reason, "half-open probe failed: reset");
    }

    #[test]
    fn grpc_failures_are_named_in_the_reason() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.failure_on = ConditionSet::parse(&["grpc-unavailable".to_string()]);
        let mut b = Breaker::new(c, t0);
        let grpc = Outcome::Response {
            status: 200,
            grpc: Some(GrpcCode::Unavailable),
        };
        // 503 is not listed: ten of them leave the breaker closed.
        for _ in 0..10 {
            assert_eq!(call(&mut b, t0, E503), None);
        }
        for _ in 0..9 {
            call(&mut b, t0, grpc);
        }
        let t = call(&mut b, t0, grpc).unwrap();
        assert_eq!(t.reason, "failure rate 50% >= 50% over 20 requests in 10s");
        let p = b.try_acquire(t0 + secs(10)).unwrap().admission;
        let t = b.record(p, &grpc, FAST, t0 + secs(10)).unwrap();
        assert_eq!(t.reason, "half-open probe failed: grpc-unavailable");
    }

    #[test]
    fn a_slow_probe_reopens() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.slow_call = Some(SlowCallConfig {
            duration: secs(2),
            rate: 0.8,
        });
        let mut b = Breaker::new(c, t0);
        trip(&mut b, t0);
        let now = t0 + secs(10);
        let p = b.try_acquire(now).unwrap().admission;
        let t = b.record(p, &OK, ms(2500), now).unwrap();
        assert_eq!(t.reason, "half-open probe slow: 2.5s >= 2s");
        assert_eq!(t.to, BreakerState::Open);
    }

    #[test]
    fn a_single_probe_closes_with_singular_wording() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.half_open_probes = 1;
        let mut b = Breaker::new(c, t0);
        trip(&mut b, t0);
        let a = b.try_acquire(t0 + secs(10)).unwrap();
        assert_eq!(
            a.transition.unwrap().reason,
            "after 10s open, letting 1 probe through"
        );
        assert!(b.try_acquire(t0 + secs(10)).is_err());
        let t = b.record(a.admission, &OK, FAST, t0 + secs(10)).unwrap();
        assert_eq!(t.reason, "1 half-open probe succeeded");
    }

    #[test]
    fn released_probe_frees_its_slot() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.half_open_probes = 1;
        let mut b = Breaker::new(c, t0);
        trip(&mut b, t0);
        let now = t0 + secs(10);
        let p = b.try_acquire(now).unwrap().admission;
        assert!(b.try_acquire(now).is_err());
        b.release(p);
        let again = b.try_acquire(now).unwrap();
        assert!(again.admission.is_probe() && again.transition.is_none());
    }

    #[test]
    fn outcomes_admitted_before_a_trip_do_not_count_after_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        let in_flight = b.try_acquire(t0).unwrap().admission;
        assert_eq!(in_flight.kind(), AdmissionKind::Normal);
        trip(&mut b, t0);
        assert_eq!(b.record(in_flight, &E503, FAST, t0), None);
        assert_eq!(b.snapshot(t0).requests, 10);
        // Nor do they count after the breaker closed again.
        let now = t0 + secs(10);
        let probes: Vec<_> = (0..3)
            .map(|_| b.try_acquire(now).unwrap().admission)
            .collect();
        for p in probes {
            b.record(p, &OK, FAST, now);
        }
        assert_eq!(b.record(in_flight, &E503, FAST, now), None);
        assert_eq!(b.snapshot(now).requests, 0);
    }

    #[test]
    fn snapshot_serializes_for_the_admin_endpoint() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        let closed = serde_json::to_value(b.snapshot(t0)).unwrap();
        assert_eq!(
            closed,
            serde_json::json!({
                "state": "closed",
                "requests": 0,
                "failures": 0,
                "slowCalls": 0,
                "failureRatePercent": 0.0,
                "slowCallRatePercent": 0.0,
                "consecutiveTrips": 0,
                "openedSecondsAgo": null,
                "openUntilSecondsFromNow": null,
                "probesAdmitted": null,
                "probesSucceeded": null,
                "lastTransition": null,
            })
        );
        for _ in 0..4 {
            call(&mut b, t0, OK);
        }
        trip(&mut b, t0);
        let open = serde_json::to_value(b.snapshot(t0 + ms(2500))).unwrap();
        assert_eq!(
            open,
            serde_json::json!({
                "state": "open",
                "requests": 10,
                "failures": 6,
                "slowCalls": 0,
                "failureRatePercent": 60.0,
                "slowCallRatePercent": 0.0,
                "consecutiveTrips": 1,
                "openedSecondsAgo": 2.5,
                "openUntilSecondsFromNow": 7.5,
                "probesAdmitted": null,
                "probesSucceeded": null,
                "lastTransition": "failure rate 60% >= 50% over 10 requests in 10s",
            })
        );
        let _probe = b.try_acquire(t0 + secs(11)).unwrap();
        let half = serde_json::to_value(b.snapshot(t0 + secs(11))).unwrap();
        assert_eq!(half["state"], "half-open");
        assert_eq!(half["openedSecondsAgo"], 11.0);
        assert_eq!(half["probesAdmitted"], 1);
        assert_eq!(
            half["lastTransition"],
            "after 10s open, letting 3 probes through"
        );
    }

    #[test]
    fn durations_and_percentages_print_like_policy_text() {
        let d = |d: Duration| DurationText(d).to_string();
        assert_eq!(d(ms(250)), "250ms");
        assert_eq!(d(ms(2500)), "2.5s");
        assert_eq!(d(secs(30)), "30s");
        assert_eq!(d(secs(90)), "1m30s");
        assert_eq!(d(secs(300)), "5m");
        assert_eq!(d(secs(3600)), "1h");
        let p = |f: f64| PercentText(f).to_string();
        assert_eq!(p(0.5), "50%");
        assert_eq!(p(0.125), "12.5%");
        assert_eq!(p(2.0 / 3.0), "66.67%");
        assert_eq!(p(1.0), "100%");
        assert_eq!(p(0.0), "0%");
    }

    /// The sidecar's way of driving it: tokio's paused clock instead of explicit offsets.
    #[tokio::test(start_paused = true)]
    async fn runs_on_tokio_paused_time() {
        let mut b = Breaker::new(cfg(), Instant::now());
        trip(&mut b, Instant::now());
        tokio::time::advance(secs(9)).await;
        assert!(b.try_acquire(Instant::now()).is_err());
        tokio::time::advance(secs(1)).await;
        assert!(b.try_acquire(Instant::now()).unwrap().admission.is_probe());
    }
}
