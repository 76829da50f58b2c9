//! Outlier ejection for one upstream's endpoints: a run of consecutive failures takes an
//! endpoint out of the balancer's rotation for a while (Envoy's consecutive-failure detector),
//! never more than `maxEjectedPercent` of the endpoints at once.
//!
//! The breaker protects the caller from a failing *upstream*; this protects the upstream's
//! healthy endpoints from sharing traffic with a broken one. Like the breaker it is a pure,
//! synchronous state machine: the caller passes `tokio::time::Instant`s and decides what a
//! failure is (the upstream's `failureOn`, or the breaker's default failure conditions).
//!
//! Rules, following Envoy where the policy is silent:
//! - `consecutiveFailures` failures in a row (a success resets the run) eject the endpoint for
//!   `baseEjection × n`, `n` counting this ejection, capped at `max(5m, baseEjection)` (Envoy's
//!   default `max_ejection_time`). Each full `baseEjection` an endpoint spends back in rotation
//!   takes one off `n` (Envoy decrements once per sweep interval; we have no sweep, so the base
//!   ejection time stands in for it), so an endpoint that failed once a day ago is not punished
//!   like one that keeps failing.
//! - The ejection is skipped when the endpoints ejected *after* it would exceed
//!   `maxEjectedPercent` of the known endpoints: at most `⌊n × maxEjectedPercent / 100⌋` are
//!   ejected at once, with no rounding up. This is Envoy's current rule without
//!   `always_eject_one_host`: one endpoint at 50% is never ejected, 3 endpoints at 50% allow 1.
//!   Like Envoy, reaching the threshold restarts the run even when the ejection was skipped.
//! - Outcomes that arrive while an endpoint is ejected (requests that were already in flight)
//!   are ignored, and its run starts from zero when it returns.
//! - If every endpoint offered to the balancer is ejected, all of them are offered anyway
//!   ("panic mode", as Envoy's load balancer does): a degraded endpoint beats none.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bulwark_proto::policy::units::DurationText;
use bulwark_proto::policy::{OutlierDetection, defaults};
use serde::Serialize;
use tokio::time::Instant;

/// Longest ejection unless `baseEjection` itself is longer (Envoy's default
/// `max_ejection_time`); the policy has no field for it.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// The `outlierDetection` block of an UpstreamPolicy, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint (≥ 1).
    pub consecutive_failures: u32,
    /// Ejection time of a first ejection.
    pub base_ejection: Duration,
    /// Share of the endpoints that may be ejected at once, in percent (0..=100).
    pub max_ejected_percent: u32,
}

impl OutlierConfig {
    /// Compiles the policy block; `None` (no block) means no outlier detection.
    pub fn from_policy(policy: Option<&OutlierDetection>) -> Option<OutlierConfig> {
        let p = policy?;
        Some(OutlierConfig {
            consecutive_failures: p
                .consecutive_failures
                .unwrap_or(defaults::OUTLIER_CONSECUTIVE_FAILURES)
                .max(1),
            base_ejection: p
                .base_ejection
                .as_ref()
                .map_or(defaults::OUTLIER_BASE_EJECTION, |d| d.get()),
            max_ejected_percent: p
                .max_ejected_percent
                .unwrap_or(defaults::OUTLIER_MAX_EJECTED_PERCENT)
                .min(100),
        })
    }

    /// Ejection time for the `times`-th ejection in a row, and whether the cap cut it.
    fn ejection_time(&self, times: u32) -> (Duration, bool) {
        let cap = MAX_EJECTION.max(self.base_ejection);
        let uncapped = self.base_ejection.saturating_mul(times);
        (uncapped.min(cap), uncapped > cap)
    }

    /// How many of `endpoints` may be ejected at once.
    fn max_ejected(&self, endpoints: usize) -> usize {
        endpoints * self.max_ejected_percent as usize / 100
    }
}

/// An endpoint was just taken out of rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection {
    pub addr: SocketAddr,
    /// When it returns on its own.
    pub until: Instant,
    /// The ejection multiplier: 1 for a first ejection, more for repeated ones.
    pub times: u32,
    /// E.g. `5 consecutive failures; ejected for 1m (2 × 30s)`.
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
struct EndpointState {
    consecutive_failures: u32,
    /// Multiplier of the last ejection (before decay).
    times: u32,
    /// End of the last ejection; kept after it passed, to decay `times`.
    ejected_until: Option<Instant>,
}

impl EndpointState {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

/// One upstream's endpoints and their ejections.
#[derive(Debug)]
pub struct OutlierDetector {
    cfg: OutlierConfig,
    endpoints: BTreeMap<SocketAddr, EndpointState>,
    /// Ejections refused by `maxEjectedPercent`, for the admin endpoint.
    skipped: u64,
}

impl OutlierDetector {
    pub fn new(cfg: OutlierConfig, endpoints: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut detector = OutlierDetector {
            cfg,
            endpoints: BTreeMap::new(),
            skipped: 0,
        };
        detector.set_endpoints(endpoints);
        detector
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.cfg
    }

    /// Replaces the endpoint set (after discovery changed it): endpoints that stay keep their
    /// state, removed ones are forgotten, new ones start clean. The set is what
    /// `maxEjectedPercent` is a share of.
    pub fn set_endpoints(&mut self, endpoints: impl IntoIterator<Item = SocketAddr>) {
        let mut old = std::mem::take(&mut self.endpoints);
        self.endpoints = endpoints
            .into_iter()
            .map(|addr| (addr, old.remove(&addr).unwrap_or_default()))
            .collect();
    }

    /// Records one attempt's result at `addr`; `failed` is whether the upstream's `failureOn`
    /// matched its outcome. Results from endpoints no longer in the set are ignored.
    pub fn record(&mut self, addr: SocketAddr, failed: bool, now: Instant) -> Option<Ejection> {
        let threshold = self.cfg.consecutive_failures;
        let state = self.endpoints.get_mut(&addr)?;
        if state.is_ejected(now) {
            return None;
        }
        if !failed {
            state.consecutive_failures = 0;
            return None;
        }
        state.consecutive_failures += 1;
        if state.consecutive_failures < threshold {
            return None;
        }
        // Envoy restarts the run on reaching the threshold, ejected or not: a refused
        // ejection is retried after another full run, not on every further failure.
        state.consecutive_failures = 0;

        let ejected = self.ejected_count(now);
        if ejected + 1 > self.cfg.max_ejected(self.endpoints.len()) {
            self.skipped += 1;
            return None;
        }
        let cfg = &self.cfg;
        let state = self.endpoints.get_mut(&addr)?;
        let decayed = match state.ejected_until {
            Some(returned) => {
                let healthy = now.saturating_duration_since(returned).as_nanos();
                let steps = healthy / cfg.base_ejection.as_nanos().max(1);
                state
                    .times
                    .saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
            }
            None => 0,
        };
        let times = decayed.saturating_add(1);
        let (time, capped) = cfg.ejection_time(times);
        let until = now + time;
        state.times = times;
        state.ejected_until = Some(until);

        let mut reason = format!(
            "{threshold} consecutive {}; ejected for {}",
            if threshold == 1 {
                "failure"
            } else {
                "failures"
            },
            DurationText(time)
        );
        if times > 1 {
            reason = format!(
                "{reason} ({times} × {}{})",
                DurationText(cfg.base_ejection),
                if capped { ", capped" } else { "" }
            );
        }
        Some(Ejection {
            addr,
            until,
            times,
            reason,
        })
    }

    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.endpoints
            .get(&addr)
            .is_some_and(|state| state.is_ejected(now))
    }

    /// Endpoints of the set ejected at `now`.
    pub fn ejected_count(&self, now: Instant) -> usize {
        self.endpoints
            .values()
            .filter(|state| state.is_ejected(now))
            .count()
    }

    /// When the next ejected endpoint returns, so a balancer that caches its ready set knows
    /// when to rebuild it.
    pub fn next_return(&self, now: Instant) -> Option<Instant> {
        self.endpoints
            .values()
            .filter_map(|state| state.ejected_until.filter(|&until| now < until))
            .min()
    }

    /// Which of `endpoints` the balancer may pick at `now`: the ones not ejected, or all of
    /// them (`panic`) when every one is ejected.
    pub fn available<'a>(&'a self, endpoints: &'a [SocketAddr], now: Instant) -> Available<'a> {
        let len = endpoints
            .iter()
            .filter(|&&addr| !self.is_ejected(addr, now))
            .count();
        let panic = len == 0 && !endpoints.is_empty();
        Available {
            detector: self,
            endpoints,
            now,
            len: if panic { endpoints.len() } else { len },
            panic,
        }
    }

    pub fn snapshot(&self, now: Instant) -> OutlierSnapshot {
        OutlierSnapshot {
            ejected: self.ejected_count(now),
            max_ejected: self.cfg.max_ejected(self.endpoints.len()),
            ejections_skipped: self.skipped,
            endpoints: self
                .endpoints
                .iter()
                .map(|(&address, state)| {
                    let ejected = state.is_ejected(now);
                    EndpointSnapshot {
                        address,
                        consecutive_failures: state.consecutive_failures,
                        times_ejected: state.times,
                        ejected,
                        returns_in_seconds: state.ejected_until.filter(|_| ejected).map(|until| {
                            until.saturating_duration_since(now).as_millis() as f64 / 1000.0
                        }),
                    }
                })
                .collect(),
        }
    }
}

/// The endpoints a balancer may pick from, borrowed from the caller's list.
#[derive(Debug)]
pub struct Available<'a> {
    detector: &'a OutlierDetector,
    endpoints: &'a [SocketAddr],
    now: Instant,
    len: usize,
    /// Every endpoint is ejected, so all are offered anyway; log it once per episode.
    pub panic: bool,
}

impl Available<'_> {
    pub fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.endpoints
            .iter()
            .copied()
            .filter(|&addr| self.contains(addr))
    }

    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.panic || !self.detector.is_ejected(addr, self.now)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What `/breakers` shows for one upstream's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierSnapshot {
    /// Endpoints ejected now.
    pub ejected: usize,
    /// How many may be ejected at once under `maxEjectedPercent`.
    pub max_ejected: usize,
    /// Ejections refused because `maxEjectedPercent` was reached.
    pub ejections_skipped: u64,
    pub endpoints: Vec<EndpointSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSnapshot {
    pub address: SocketAddr,
    pub consecutive_failures: u32,
    /// Multiplier of the last ejection (0: never ejected).
    pub times_ejected: u32,
    pub ejected: bool,
    /// While ejected: seconds until it returns.
    pub returns_in_seconds: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_proto::policy::Duration as PolicyDuration;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 8080))
    }

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n).map(addr).collect()
    }

    /// 5 in a row, 30s base, 50%.
    fn cfg() -> OutlierConfig {
        OutlierConfig::from_policy(Some(&OutlierDetection::default())).unwrap()
    }

    fn detector(endpoints: u8) -> OutlierDetector {
        OutlierDetector::new(cfg(), addrs(endpoints))
    }

    /// Records `n` failures at `a`, returning the ejection if the last one ejected.
    fn fail(d: &mut OutlierDetector, a: SocketAddr, n: u32, now: Instant) -> Option<Ejection> {
        for _ in 1..n {
            assert_eq!(d.record(a, true, now), None);
        }
        d.record(a, true, now)
    }

    #[test]
    fn no_block_no_detection_and_defaults_apply() {
        assert_eq!(OutlierConfig::from_policy(None), None);
        assert_eq!(
            cfg(),
            OutlierConfig {
                consecutive_failures: 5,
                base_ejection: secs(30),
                max_ejected_percent: 50,
            }
        );
        let c = OutlierConfig::from_policy(Some(&OutlierDetection {
            consecutive_failures: Some(3),
            base_ejection: Some(PolicyDuration::new("1m")),
            max_ejected_percent: Some(100),
        }))
        .unwrap();
        assert_eq!(
            c,
            OutlierConfig {
                consecutive_failures: 3,
                base_ejection: secs(60),
                max_ejected_percent: 100,
            }
        );
    }

    #[test]
    fn consecutive_failures_eject_but_scattered_ones_do_not() {
        let t0 = Instant::now();
        let mut d = detector(4);
        let a = addr(1);
        // Nine failures, never five in a row.
        assert_eq!(fail(&mut d, a, 4, t0), None);
        assert_eq!(d.record(a, false, t0), None);
        assert_eq!(fail(&mut d, a, 4, t0), None);
        assert_eq!(d.record(a, false, t0), None);
        assert!(!d.is_ejected(a, t0));
        let e = fail(&mut d, a, 5, t0).unwrap();
        assert_eq!(
            e,
            Ejection {
                addr: a,
                until: t0 + secs(30),
                times: 1,
                reason: "5 consecutive failures; ejected for 30s".into(),
            }
        );
        assert!(d.is_ejected(a, t0));
        assert!(!d.is_ejected(addr(2), t0));
    }

    #[test]
    fn success_resets_the_run() {
        let t0 = Instant::now();
        let mut d = detector(4);
        let a = addr(1);
        fail(&mut d, a, 3, t0);
        assert_eq!(d.snapshot(t0).endpoints[0].consecutive_failures, 3);
        d.record(a, false, t0);
        assert_eq!(d.snapshot(t0).endpoints[0].consecutive_failures, 0);
        assert_eq!(fail(&mut d, a, 4, t0), None);
    }

    #[test]
    fn ejected_endpoints_return_on_their_own() {
        let t0 = Instant::now();
        let mut d = detector(4);
        let a = addr(1);
        fail(&mut d, a, 5, t0).unwrap();
        let eps = addrs(4);
        assert!(!d.available(&eps, t0).contains(a));
        assert_eq!(d.next_return(t0), Some(t0 + secs(30)));
        let almost = t0 + secs(30) - Duration::from_millis(1);
        assert!(d.is_ejected(a, almost));
        assert!(!d.is_ejected(a, t0 + secs(30)));
        assert!(d.available(&eps, t0 + secs(30)).contains(a));
        assert_eq!(d.next_return(t0 + secs(30)), None);
        // Back with a clean run: four failures do not eject again.
        assert_eq!(fail(&mut d, a, 4, t0 + secs(30)), None);
    }

    #[test]
    fn outcomes_while_ejected_are_ignored() {
        let t0 = Instant::now();
        let mut d = detector(4);
        let a = addr(1);
        let e = fail(&mut d, a, 5, t0).unwrap();
        // In-flight failures neither extend the ejection nor start a new run.
        assert_eq!(fail(&mut d, a, 10, t0 + secs(1)), None);
        assert_eq!(d.next_return(t0 + secs(1)), Some(e.until));
        assert_eq!(
            d.snapshot(t0 + secs(1)).endpoints[0].consecutive_failures,
            0
        );
    }

    #[test]
    fn repeated_ejections_last_longer() {
        let t0 = Instant::now();
        let mut d = detector(4);
        let a = addr(1);
        assert_eq!(fail(&mut d, a, 5, t0).unwrap().until, t0 + secs(30));
        // Fails again right after returning: twice the base.
        let e = fail(&mut d, a, 5, t0 + secs(31)).unwrap();
        assert_eq!((e.times, e.until), (2, t0 + secs(91)));
        assert_eq!(e.reason, "5 consecutive failures; ejected for 1m (2 × 30s)");
        let e = fail(&mut d, a, 5, t0 + secs(100)).unwrap();
        assert_eq!((e.times, e.until), (3, t0 + secs(190)));
        assert_eq!(
            e.reason,
            "5 consecutive failures; ejected for 1m30s (3 × 30s)"
        );
    }

    #[test]
    fn the_multiplier_decays_while_the_endpoint_stays_healthy() {
        let t0 = Instant::now();
        let mut d = detector(4);
        let a = addr(1);
        fail(&mut d, a, 5, t0).unwrap(); // back at 30s
        fail(&mut d, a, 5, t0 + secs(30)).unwrap(); // 2 × 30s, back at 90s
        // 59s back in rotation: one base period, one step off the multiplier (2 → 1 → 2).
        let e = fail(&mut d, a, 5, t0 + secs(149)).unwrap();
        assert_eq!(e.times, 2);
        // Back at 209s; two base periods later it starts over.
        let e = fail(&mut d, a, 5, t0 + secs(269)).unwrap();
        assert_eq!(e.times, 1);
        assert_eq!(e.until, t0 + secs(299));
    }

    #[test]
    fn ejection_time_is_capped() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.consecutive_failures = 1;
        let mut d = OutlierDetector::new(c, addrs(4));
        let a = addr(1);
        let mut now = t0;
        let mut last = None;
        for _ in 0..11 {
            let e = d.record(a, true, now).unwrap();
            now = e.until;
            last = Some(e);
        }
        let e = last.unwrap();
        assert_eq!(e.times, 11);
        assert_eq!(
            e.reason,
            "1 consecutive failure; ejected for 5m (11 × 30s, capped)"
        );

        // A base above the default cap is the cap.
        let mut c = cfg();
        c.consecutive_failures = 1;
        c.base_ejection = secs(600);
        let mut d = OutlierDetector::new(c, addrs(4));
        let first = d.record(a, true, t0).unwrap();
        let second = d.record(a, true, first.until).unwrap();
        assert_eq!(second.until - first.until, secs(600));
    }

    #[test]
    fn at_most_max_ejected_percent_are_out_at_once() {
        let t0 = Instant::now();
        let mut d = detector(4); // 50% of 4: two
        assert!(fail(&mut d, addr(1), 5, t0).is_some());
        assert!(fail(&mut d, addr(2), 5, t0).is_some());
        assert_eq!(fail(&mut d, addr(3), 5, t0), None);
        assert!(!d.is_ejected(addr(3), t0));
        // The refused run is over: one more failure is not a sixth in a row.
        assert_eq!(d.record(addr(3), true, t0 + secs(30)), None);
        assert_eq!(d.snapshot(t0).ejections_skipped, 1);
        // Once the first two are back there is room again.
        assert!(fail(&mut d, addr(3), 4, t0 + secs(30)).is_some());
    }

    #[test]
    fn the_share_is_rounded_down() {
        let t0 = Instant::now();
        // 50% of 1 is 0: a single endpoint is never ejected.
        let mut one = detector(1);
        assert_eq!(fail(&mut one, addr(1), 5, t0), None);
        assert_eq!(one.snapshot(t0).max_ejected, 0);
        // 50% of 3 is 1.
        let mut three = detector(3);
        assert!(fail(&mut three, addr(1), 5, t0).is_some());
        assert_eq!(fail(&mut three, addr(2), 5, t0), None);
        assert_eq!(three.snapshot(t0).max_ejected, 1);
        // 0% ejects nothing.
        let mut c = cfg();
        c.max_ejected_percent = 0;
        let mut none = OutlierDetector::new(c, addrs(10));
        assert_eq!(fail(&mut none, addr(1), 5, t0), None);
    }

    #[test]
    fn panic_mode_offers_everything_when_all_are_ejected() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.max_ejected_percent = 100;
        let eps = addrs(2);
        let mut d = OutlierDetector::new(c, eps.clone());
        let all = d.available(&eps, t0);
        assert!(!all.panic);
        assert_eq!(all.iter().collect::<Vec<_>>(), eps);

        fail(&mut d, addr(1), 5, t0).unwrap();
        let some = d.available(&eps, t0);
        assert!(!some.panic);
        assert_eq!(some.len(), 1);
        assert_eq!(some.iter().collect::<Vec<_>>(), [addr(2)]);

        fail(&mut d, addr(2), 5, t0).unwrap();
        let panic = d.available(&eps, t0);
        assert!(panic.panic);
        assert_eq!(panic.len(), 2);
        assert_eq!(panic.iter().collect::<Vec<_>>(), eps);

        let empty = d.available(&[], t0);
        assert!(!empty.panic && empty.is_empty());
    }

    #[test]
    fn set_endpoints_keeps_survivors_and_forgets_the_rest() {
        let t0 = Instant::now();
        let mut d = detector(4);
        fail(&mut d, addr(1), 5, t0).unwrap();
        fail(&mut d, addr(2), 3, t0);
        d.set_endpoints([addr(1), addr(2), addr(9)]);
        assert!(d.is_ejected(addr(1), t0));
        assert_eq!(d.snapshot(t0).endpoints[1].consecutive_failures, 3);
        // Gone: its results are ignored.
        assert_eq!(fail(&mut d, addr(3), 5, t0), None);
        assert!(!d.is_ejected(addr(3), t0));
        // 50% of 3 is 1, already used by addr(1).
        assert_eq!(fail(&mut d, addr(9), 5, t0), None);
        // Removed and re-added starts clean.
        d.set_endpoints([addr(2), addr(9)]);
        d.set_endpoints([addr(1), addr(2), addr(9)]);
        assert!(!d.is_ejected(addr(1), t0));
        assert_eq!(d.snapshot(t0).endpoints[0].times_ejected, 0);
    }

    #[test]
    fn snapshot_serializes_for_the_admin_endpoint() {
        let t0 = Instant::now();
        let mut d = detector(2);
        fail(&mut d, addr(1), 5, t0).unwrap();
        fail(&mut d, addr(2), 2, t0);
        let json = serde_json::to_value(d.snapshot(t0 + Duration::from_millis(2500))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ejected": 1,
                "maxEjected": 1,
                "ejectionsSkipped": 0,
                "endpoints": [
                    {
                        "address": "10.0.0.1:8080",
                        "consecutiveFailures": 0,
                        "timesEjected": 1,
                        "ejected": true,
                        "returnsInSeconds": 27.5,
                    },
                    {
                        "address": "10.0.0.2:8080",
                        "consecutiveFailures": 2,
                        "timesEjected": 0,
                        "ejected": false,
                        "returnsInSeconds": null,
                    },
                ],
            })
        );
    }
}
