//! The adaptive concurrency limit: how many requests may be in flight to what it protects,
//! learned from latency. Every update interval the median latency of the interval is compared
//! with a baseline — the latency of requests that did not queue — and the limit moves by the
//! gradient between them (Envoy's gradient controller, Netflix's Gradient2):
//!
//! `gradient = clamp(tolerance × baseline / median, 0.5, 2)`; while `gradient ≥ 1` the limit
//! grows a fifth of the way to `limit × gradient + √limit`, else it drops to `limit × gradient`
//!
//! so it grows while requests take what unqueued ones take, and shrinks in proportion once they
//! queue: it settles where queueing begins. An interval whose answers already take twice what
//! is tolerated ends early, once a limit's worth of them (and a quarter of the interval) is in:
//! a surge that finds the limit high is cut within a round trip or two. The baseline is measured by a **probe**: at
//! start and then, once a probe interval (jittered) has gone by, when answers have taken longer
//! than the baseline tolerates for several intervals in a row (not merely at the onset of a
//! surge, which the limit's own cut answers), the limit is briefly the probe concurrency —
//! a few requests, whatever the configured floor — and the median of those requests' latency is
//! the new baseline; then the limit returns to where it was before the probe. A floor set high
//! is therefore never the probe level, and the limit never sticks at it: a baseline that went
//! stale (the callee got slower for good) is replaced at the next probe, after which the limit
//! climbs back. Between probes a faster interval lowers the baseline at once. The limit grows
//! only while demand reaches at least half of it: an idle upstream teaches nothing about
//! capacity.
//!
//! Each change downwards (and each probe) is judged only by requests that started after it:
//! those let in before queued behind what the higher limit let in, and would shrink it again
//! for the same cause.
//!
//! Pure: the caller gives the time, each sample's latency and the requests in flight when it
//! started.

use std::time::Duration;

use tokio::time::Instant;

/// The share of the way to its target the limit grows per interval.
const GROWTH_SMOOTHING: f64 = 0.2;

/// The fewest answers an interval may end early on.
const EARLY_SAMPLES: usize = 8;

/// Intervals in a row answers must take longer than tolerated before a due probe starts: a
/// surge that finds the limit high is slow for an interval or two (until the cut lands), a
/// callee that got slower for good stays slow however far the limit goes down.
const SLOW_BEFORE_PROBE: u32 = 5;

/// The share of the way the limit's long-run level moves towards the limit per interval: about
/// ten intervals' memory.
const LEVEL_SMOOTHING: f64 = 0.1;

/// How far (as a share of its long-run level) the limit may be from that level and still be
/// settled.
const SETTLED_SPREAD: f64 = 0.2;

/// How the limit moves. [`LimitSettings::default`] gives every field a value.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// The limit before the first update.
    pub initial: usize,
    /// The limit is never below this (at least 1)…
    pub min: usize,
    /// …nor above this.
    pub max: usize,
    /// How much slower than the baseline the median may be before the limit shrinks (1.25:
    /// 25% slower).
    pub tolerance: f64,
    /// How often the limit is updated.
    pub update_interval: Duration,
    /// How often the baseline is measured again (jittered by ±15%).
    pub probe_interval: Duration,
    /// Requests in flight while the baseline is measured.
    pub probe_concurrency: usize,
    /// Requests the baseline is the median of.
    pub probe_samples: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            initial: 20,
            min: 1,
            max: 1000,
            tolerance: 1.25,
            update_interval: Duration::from_millis(100),
            probe_interval: Duration::from_secs(60),
            probe_concurrency: 3,
            probe_samples: 10,
        }
    }
}

/// The limit, its baseline, and what is being measured now.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    settings: LimitSettings,
    limit: f64,
    /// The latency of unqueued requests (seconds); `None` until the first probe ends.
    baseline: Option<f64>,
    /// The median latency of the last interval (seconds).
    median: Option<f64>,
    phase: Phase,
    /// The current interval's latencies (seconds), and the most in flight among its samples.
    window: Vec<f64>,
    window_in_flight: usize,
    window_started: Instant,
    next_probe: Instant,
    /// Probes so far, to vary their jitter.
    probes: u64,
    /// Requests that started before this say nothing of the limit in force: they were let in
    /// under a higher one (or before a probe began).
    fresh_since: Instant,
    /// Whether the limit has found where queueing begins: it had demand enough and answers as
    /// fast as tolerated at least once.
    found: bool,
    /// The limit's long-run level: smoothed over about ten intervals.
    level: f64,
    /// Intervals in a row whose median was past what the baseline tolerates.
    slow_intervals: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Learning,
    /// Measuring the baseline; the limit to go back to afterwards.
    Probing {
        restore: f64,
    },
}

impl AdaptiveLimit {
    /// Starts with a probe: the baseline is measured first.
    pub fn new(settings: LimitSettings, now: Instant) -> AdaptiveLimit {
        let min = settings.min.max(1);
        let max = settings.max.max(min);
        let settings = LimitSettings {
            min,
            max,
            probe_concurrency: settings.probe_concurrency.max(1),
            probe_samples: settings.probe_samples.max(1),
            tolerance: settings.tolerance.max(1.0),
            ..settings
        };
        let limit = settings.initial.clamp(min, max) as f64;
        AdaptiveLimit {
            window: Vec::with_capacity(64),
            window_in_flight: 0,
            window_started: now,
            next_probe: now,
            phase: Phase::Probing { restore: limit },
            baseline: None,
            median: None,
            limit,
            probes: 0,
            fresh_since: now,
            found: false,
            level: limit,
            slow_intervals: 0,
            settings,
        }
    }

    /// Requests that may be in flight now.
    pub fn limit(&self) -> usize {
        match self.phase {
            Phase::Probing { .. } => self.settings.probe_concurrency.min(self.settings.max),
            Phase::Learning => self.limit as usize,
        }
    }

    /// Whether the limit has found where queueing begins (once found, always): until then it
    /// is still moving from where it started, and what queues is its own doing.
    pub fn found(&self) -> bool {
        self.found
    }

    /// Whether the limit is where it has been lately (within [`SETTLED_SPREAD`] of its long-run
    /// level) and not probing: then a queue that stands is demand past the callee's capacity,
    /// not the limit's own doing — as it is while the limit climbs back after a cut or a probe,
    /// or still looks for the capacity after a start, and lets through less than the callee
    /// could take.
    pub fn settled(&self) -> bool {
        !self.probing()
            && self.found
            && (self.limit - self.level).abs() <= SETTLED_SPREAD * self.level
    }

    /// Whether the baseline is being measured now.
    pub fn probing(&self) -> bool {
        matches!(self.phase, Phase::Probing { .. })
    }

    /// The latency of unqueued requests, once measured.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(Duration::from_secs_f64)
    }

    /// The median latency of the last interval, once there was one.
    pub fn median(&self) -> Option<Duration> {
        self.median.map(Duration::from_secs_f64)
    }

    /// One request ended at `now` after `rtt`; `in_flight` were in flight when it started
    /// (itself included).
    pub fn sample(&mut self, now: Instant, rtt: Duration, in_flight: usize) {
        // A request let in under an earlier, higher limit queued behind what that limit let
        // in: judging the present limit by it would shrink it again for the same cause.
        if now
            .checked_sub(rtt)
            .is_some_and(|started| started < self.fresh_since)
        {
            return;
        }
        self.window.push(rtt.as_secs_f64().max(1e-6));
        self.window_in_flight = self.window_in_flight.max(in_flight);
        match self.phase {
            Phase::Probing { restore } => {
                if self.window.len() >= self.settings.probe_samples {
                    self.baseline = Some(median(&mut self.window));
                    self.limit = restore;
                    self.slow_intervals = 0;
                    self.phase = Phase::Learning;
                    self.probes += 1;
                    self.next_probe = now + self.jittered_probe_interval();
                    self.start_window(now);
                }
            }
            Phase::Learning => {
                let elapsed = now.duration_since(self.window_started);
                if elapsed >= self.settings.update_interval || self.queueing_already(elapsed) {
                    let before = self.limit;
                    self.update();
                    if self.limit < before {
                        self.fresh_since = now;
                    }
                    self.start_window(now);
                }
                // A probe tells a callee that got slower for good from one that queues: due
                // only when answers have taken longer than the baseline tolerates for
                // [`SLOW_BEFORE_PROBE`] intervals in a row. One that answers as fast as ever is
                // not probed (a probe queues or sheds what comes meanwhile), nor one whose
                // slowness the limit is cutting: the onset of a surge, when a probe would hold
                // the callee to a few requests just as demand peaks.
                if now >= self.next_probe && self.slow_intervals >= SLOW_BEFORE_PROBE {
                    self.phase = Phase::Probing {
                        restore: self.limit,
                    };
                    self.fresh_since = now;
                    self.start_window(now);
                }
            }
        }
    }

    /// Whether the interval may end early, `elapsed` into it: it has answers for the whole
    /// limit (at least [`EARLY_SAMPLES`]), a quarter of the interval went by, and their median
    /// is already twice what the limit tolerates (the limit will halve). So a surge that finds
    /// the limit high (as it is after quiet times, when nothing tells it where capacity ends)
    /// is cut within a round trip or two rather than a whole interval later, while the small
    /// swings of a limit near capacity wait for the interval. Until the limit has found where
    /// queueing begins (it starts at `initial`, which knows nothing of the callee), any median
    /// past what it tolerates ends the interval early: a cold start under a surge queues in the
    /// callee for one round trip, not for a whole interval. Growth always waits for it.
    fn queueing_already(&mut self, elapsed: Duration) -> bool {
        let Some(baseline) = self.baseline else {
            return false;
        };
        // Before it is found: past the tolerance, on the answers of three quarters of the
        // limit (those let in first took the callee's free workers; the later ones queued
        // behind them, and their answers tell it).
        let (past, answers) = if self.found {
            (2.0, self.limit as usize)
        } else {
            (1.0, self.limit as usize * 3 / 4)
        };
        elapsed >= self.settings.update_interval / 4
            && self.window.len() >= answers.max(EARLY_SAMPLES)
            && median(&mut self.window) > past * self.settings.tolerance * baseline
    }

    fn start_window(&mut self, now: Instant) {
        self.window.clear();
        self.window_in_flight = 0;
        self.window_started = now;
    }

    fn update(&mut self) {
        let (Some(baseline), false) = (self.baseline, self.window.is_empty()) else {
            return;
        };
        let median = median(&mut self.window);
        self.median = Some(median);
        if median > self.settings.tolerance * baseline {
            self.slow_intervals = self.slow_intervals.saturating_add(1);
        } else {
            self.slow_intervals = 0;
        }
        let baseline = if median < baseline {
            // Faster than the baseline: requests queue less than when it was measured.
            self.baseline = Some(median);
            median
        } else {
            baseline
        };
        let gradient = (self.settings.tolerance * baseline / median).clamp(0.5, 2.0);
        // Demand below half the limit says nothing about capacity: no growth from it.
        if gradient > 1.0 && (self.window_in_flight as f64) < self.limit / 2.0 {
            return;
        }
        // Headroom (up to √limit) only while answers take less than the limit tolerates, in
        // proportion to how much less: none once they take just that. So the limit slows as it
        // nears where queueing begins and settles there instead of √limit past it (once they
        // queue more, it shrinks in proportion).
        let next = if gradient >= 1.0 {
            self.found = true;
            let span = self.settings.tolerance - 1.0;
            let room = if span > 0.0 {
                ((gradient - 1.0) / span).clamp(0.0, 1.0)
            } else {
                1.0
            };
            // Growth is smoothed (a fifth of the way each interval), shrinking is not: a
            // limit that overshoots queues requests until the next interval, one that
            // undershoots only waits for the next interval to grow.
            let target = self.limit * gradient + room * self.limit.sqrt();
            self.limit + GROWTH_SMOOTHING * (target - self.limit)
        } else {
            self.limit * gradient
        };
        self.limit = next.clamp(self.settings.min as f64, self.settings.max as f64);
        self.level += LEVEL_SMOOTHING * (self.limit - self.level);
    }

    /// The probe interval ±15%, varied per probe so that sidecars started together do not
    /// probe together.
    fn jittered_probe_interval(&self) -> Duration {
        // A fixed pseudo-random sequence is enough to spread probes (no RNG on the path).
        let x = self.probes.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        let unit = (x as f64) / ((1u64 << 53) as f64);
        self.settings.probe_interval.mul_f64(0.85 + 0.3 * unit)
    }
}

/// The median of `values` (reorders them).
fn median(values: &mut [f64]) -> f64 {
    let mid = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app with `workers` workers and a fixed service time: up to `workers` requests in
    /// flight take `service`; more queue and take proportionally longer.
    #[derive(Clone, Copy)]
    struct App {
        workers: usize,
        service: Duration,
    }

    impl App {
        fn latency(self, in_flight: usize) -> Duration {
            let load = in_flight.max(1) as f64 / self.workers as f64;
            self.service.mul_f64(load.max(1.0))
        }
    }

    /// Saturating demand for `time`: as many requests in flight as the limit allows, 20
    /// samples per update interval. The limits seen, one per sample.
    fn run(limit: &mut AdaptiveLimit, now: &mut Instant, app: App, time: Duration) -> Vec<usize> {
        let step = limit.settings.update_interval / 20;
        let end = *now + time;
        let mut seen = Vec::new();
        while *now < end {
            *now += step;
            let in_flight = limit.limit();
            limit.sample(*now, app.latency(in_flight), in_flight);
            seen.push(limit.limit());
        }
        seen
    }

    /// The limits seen over the last `part` of `seen`, outside probes (which are short).
    fn settled(seen: &[usize], settings: &LimitSettings) -> (usize, usize) {
        let tail = &seen[seen.len() * 3 / 4..];
        let outside: Vec<usize> = tail
            .iter()
            .copied()
            .filter(|&l| l != settings.probe_concurrency)
            .collect();
        (
            *outside.iter().min().expect("limits"),
            *outside.iter().max().expect("limits"),
        )
    }

    fn app(workers: usize) -> App {
        App {
            workers,
            service: Duration::from_millis(20),
        }
    }

    #[test]
    fn the_first_probe_measures_the_baseline_then_the_limit_grows_to_the_capacity() {
        let mut now = Instant::now();
        let settings = LimitSettings {
            initial: 4,
            ..LimitSettings::default()
        };
        let mut limit = AdaptiveLimit::new(settings.clone(), now);
        assert!(limit.probing());
        assert_eq!(limit.limit(), 3);
        let seen = run(&mut limit, &mut now, app(50), Duration::from_secs(30));
        assert_eq!(limit.baseline().map(|b| b.as_micros()), Some(20_000));
        let (lo, hi) = settled(&seen, &settings);
        // Capacity 50; the tolerance and headroom allow some queueing above it.
        assert!(
            lo >= 50 && hi <= 80,
            "settled between {lo} and {hi} for 50 workers"
        );
    }

    #[test]
    fn the_limit_shrinks_when_capacity_drops_and_climbs_back_when_it_returns() {
        let mut now = Instant::now();
        let settings = LimitSettings::default();
        let mut limit = AdaptiveLimit::new(settings.clone(), now);
        run(&mut limit, &mut now, app(100), Duration::from_secs(30));
        let before = limit.limit();
        assert!(before >= 100, "{before}");
        let seen = run(&mut limit, &mut now, app(50), Duration::from_secs(30));
        let (lo, hi) = settled(&seen, &settings);
        assert!(
            lo >= 50 && hi <= 80,
            "{before} → {lo}..{hi} with half the workers"
        );
        let seen = run(&mut limit, &mut now, app(100), Duration::from_secs(30));
        let (lo, _) = settled(&seen, &settings);
        assert!(lo >= 100, "climbed back to {lo}");
    }

    #[test]
    fn a_limit_that_just_moved_is_not_settled_until_it_stays() {
        let mut now = Instant::now();
        let mut limit = AdaptiveLimit::new(LimitSettings::default(), now);
        assert!(!limit.settled(), "probing");
        run(&mut limit, &mut now, app(100), Duration::from_secs(10));
        assert!(limit.settled(), "at the capacity: {}", limit.limit());
        // Half the workers: the limit is cut, and lets through less than it did a moment ago.
        run(&mut limit, &mut now, app(50), Duration::from_millis(300));
        assert!(limit.limit() < 80, "cut to {}", limit.limit());
        assert!(!limit.settled());
        // Where it stays, it settles within a few seconds.
        run(&mut limit, &mut now, app(50), Duration::from_secs(3));
        assert!(limit.settled(), "settled at {}", limit.limit());
    }

    #[test]
    fn after_a_latency_spike_the_limit_recovers_and_a_high_floor_is_not_the_probe_level() {
        let mut now = Instant::now();
        let settings = LimitSettings {
            min: 40,
            probe_interval: Duration::from_secs(20),
            ..LimitSettings::default()
        };
        let mut limit = AdaptiveLimit::new(settings.clone(), now);
        let seen = run(&mut limit, &mut now, app(100), Duration::from_secs(15));
        // The probe ran at the probe concurrency, under the floor of 40.
        assert_eq!(seen.iter().min(), Some(&3), "a probe ran at 3 in flight");
        // Every request twenty times slower for two seconds.
        let slow = App {
            workers: 100,
            service: Duration::from_millis(400),
        };
        let seen = run(&mut limit, &mut now, slow, Duration::from_secs(2));
        assert_eq!(
            *seen.last().expect("limits"),
            40,
            "down to the floor, not below"
        );
        let seen = run(&mut limit, &mut now, app(100), Duration::from_secs(30));
        let (lo, _) = settled(&seen, &settings);
        assert!(lo >= 100, "recovered to {lo}");
        assert!(seen.iter().all(|&l| l == 3 || l >= 40), "{seen:?}");
    }

    #[test]
    fn a_baseline_gone_stale_is_replaced_at_the_next_probe() {
        let mut now = Instant::now();
        let settings = LimitSettings {
            probe_interval: Duration::from_secs(30),
            ..LimitSettings::default()
        };
        let mut limit = AdaptiveLimit::new(settings.clone(), now);
        run(&mut limit, &mut now, app(100), Duration::from_secs(20));
        // The callee becomes three times slower for good, with the same workers: every
        // interval looks like queueing against the old baseline, and the limit sinks…
        let slower = App {
            workers: 100,
            service: Duration::from_millis(60),
        };
        let seen = run(&mut limit, &mut now, slower, Duration::from_secs(5));
        assert!(*seen.last().expect("limits") < 50);
        // …until the next probe measures the new baseline; then it climbs back.
        let seen = run(&mut limit, &mut now, slower, Duration::from_secs(60));
        assert_eq!(limit.baseline().map(|b| b.as_micros()), Some(60_000));
        let (lo, _) = settled(&seen, &settings);
        assert!(lo >= 100, "climbed back to {lo}");
    }

    /// A limiter with every default whose first probe measured a 20 ms baseline (from
    /// requests that started after the limiter did), and the time then.
    fn after_first_probe() -> (AdaptiveLimit, Instant) {
        let mut now = Instant::now();
        let mut limit = AdaptiveLimit::new(LimitSettings::default(), now);
        now += Duration::from_millis(20);
        for _ in 0..LimitSettings::default().probe_samples {
            now += Duration::from_millis(5);
            limit.sample(now, Duration::from_millis(20), 1);
        }
        assert!(!limit.probing());
        (limit, now)
    }

    #[test]
    fn a_decrease_is_judged_only_by_requests_let_in_after_it() {
        let ms = Duration::from_millis;
        let (mut limit, mut now) = after_first_probe();
        assert_eq!((limit.limit(), limit.baseline()), (20, Some(ms(20))));
        // Answers queued five times as long: the limit halves.
        while limit.limit() == 20 {
            now += ms(5);
            limit.sample(now, ms(100), 20);
        }
        assert_eq!(limit.limit(), 10);
        // Requests let in before that, answered as slowly, do not halve it again…
        for _ in 0..19 {
            now += ms(5);
            limit.sample(now, ms(100), 20);
        }
        assert_eq!(limit.limit(), 10);
        // …those let in after it do, when they are as slow.
        for _ in 0..20 {
            now += ms(5);
            limit.sample(now, ms(100), 10);
        }
        assert_eq!(limit.limit(), 5);
    }

    #[test]
    fn little_demand_teaches_nothing() {
        let (mut limit, mut now) = after_first_probe();
        // Requests one at a time, fast: the limit stays where it was.
        for _ in 0..200 {
            now += Duration::from_millis(5);
            limit.sample(now, Duration::from_millis(20), 1);
        }
        assert_eq!(limit.limit(), 20);
    }

    #[test]
    fn a_surge_that_finds_the_limit_high_is_cut_within_the_interval() {
        let (mut limit, mut now) = after_first_probe();
        // Quiet times left the limit at 20; a surge fills it, and its answers queue (60 ms
        // against a 20 ms baseline: past twice the tolerated 25 ms).
        let surge = now;
        while limit.limit() == 20 {
            now += Duration::from_millis(1);
            limit.sample(now, Duration::from_millis(60), 20);
        }
        let cut_after = now - surge;
        assert!(
            cut_after >= Duration::from_millis(25) && cut_after < Duration::from_millis(100),
            "cut after {cut_after:?}: a limit's worth of answers and a quarter of the interval"
        );
        assert_eq!(limit.limit(), 10, "by the gradient, halved at most");
        // Fast answers do not end an interval early: growth waits for the whole interval.
        let calm = now;
        while limit.limit() == 10 {
            now += Duration::from_millis(1);
            limit.sample(now, Duration::from_millis(20), 10);
        }
        assert!(
            now - calm >= Duration::from_millis(100),
            "grew after {:?}",
            now - calm
        );
    }

    #[test]
    fn a_cold_start_under_a_surge_is_cut_within_a_round_trip_once_past_the_tolerance() {
        let ms = Duration::from_millis;
        // Answers at 40 ms against a 20 ms baseline: past the tolerated 25 ms, not past twice
        // it. Before the limit found the callee's capacity that ends the interval early…
        let (mut cold, mut now) = after_first_probe();
        let surge = now;
        while cold.limit() == 20 {
            now += ms(1);
            cold.sample(now, ms(40), 20);
        }
        assert!(now - surge < ms(50), "cut after {:?}", now - surge);
        assert_eq!(cold.limit(), 12, "by the gradient: 20 × 25 / 40 = 12.5");
        // …once it found it, the same swing waits for the interval.
        let (mut warm, mut now) = after_first_probe();
        while !warm.found() {
            now += ms(5);
            warm.sample(now, ms(20), 20);
        }
        let before = warm.limit();
        let swing = now;
        while warm.limit() >= before {
            now += ms(1);
            warm.sample(now, ms(40), before);
        }
        assert!(now - swing >= ms(100), "cut after {:?}", now - swing);
    }

    #[test]
    fn a_callee_as_fast_as_its_baseline_is_not_probed_again() {
        let (mut limit, mut now) = after_first_probe();
        // Three probe intervals of answers as fast as the baseline: no probe.
        let end = now + Duration::from_secs(210);
        while now < end {
            now += Duration::from_millis(5);
            limit.sample(now, Duration::from_millis(21), 12);
            assert!(!limit.probing());
        }
        // A surge's onset: slower than tolerated for an interval or two, then the limit's cut
        // lands and answers are fast again — no probe, which would hold the callee to a few
        // requests just as demand peaks.
        for latency in [40, 40, 21, 21] {
            let end = now + Duration::from_millis(100);
            while now < end {
                now += Duration::from_millis(5);
                limit.sample(now, Duration::from_millis(latency), 12);
                assert!(!limit.probing());
            }
        }
        // Slower than tolerated interval after interval: the overdue probe comes after five.
        let slow = now;
        while !limit.probing() {
            now += Duration::from_millis(5);
            limit.sample(now, Duration::from_millis(40), 12);
        }
        let after = now - slow;
        assert!(
            after >= Duration::from_millis(400) && after <= Duration::from_millis(700),
            "{after:?}"
        );
    }

    #[test]
    fn settings_are_clamped_into_a_sane_range() {
        let limit = AdaptiveLimit::new(
            LimitSettings {
                initial: 0,
                min: 0,
                max: 0,
                probe_concurrency: 0,
                ..LimitSettings::default()
            },
            Instant::now(),
        );
        assert_eq!(limit.limit(), 1);
        assert_eq!(limit.baseline(), None);
    }

    #[test]
    fn probes_are_spread_around_their_interval() {
        let limit = AdaptiveLimit::new(LimitSettings::default(), Instant::now());
        let mut seen = Vec::new();
        let mut probe = limit.clone();
        for i in 0..20 {
            probe.probes = i;
            let d = probe.jittered_probe_interval();
            assert!(
                d >= Duration::from_secs(51) && d <= Duration::from_secs(69),
                "{d:?}"
            );
            seen.push(d);
        }
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 10, "varied: {seen:?}");
    }
}
