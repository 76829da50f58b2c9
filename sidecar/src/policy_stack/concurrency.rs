//! The adaptive concurrency limit (`adaptiveConcurrency`, or `spec.inbound.adaptiveConcurrency`
//! for the app): at most as many attempts in flight as the [`AdaptiveLimit`] allows now, learned
//! from their latency; past it an attempt waits in a bounded queue served most critical first
//! ([`TierQueue`]) for at most `maxQueueWait` (and never past its per-try deadline). A full
//! queue sheds its least critical, most recent waiter for a more critical newcomer, and refuses
//! a newcomer with none below it — 503 / `RESOURCE_EXHAUSTED`, `x-bulwark-error: overloaded`.
//! A slot is held until the response body ends; its latency sample is taken when the response
//! headers arrive (what the callee's queueing shows in), from responses and timeouts only: a
//! refused connection says nothing about how busy the callee is.
//!
//! One lock per limiter, held for a few comparisons; nothing in this layer allocates unless the
//! request has to wait.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bulwark_proto::policy::{AdaptiveConcurrency, defaults};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::bulkhead::Limited;
use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use crate::errors::ProxyError;
use crate::headers::is_kubelet_probe;
use crate::metrics::ConcurrencyMetrics;
use crate::overload::Refusal;
use crate::overload::limit::{AdaptiveLimit, LimitSettings};
use crate::overload::queue::{Offered, TierQueue};
use crate::priority::Criticality;

/// What a policy's `adaptiveConcurrency` compiles to.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencySettings {
    pub limit: LimitSettings,
    pub max_queue: usize,
    pub max_queue_wait: Duration,
}

impl ConcurrencySettings {
    /// A validated block, defaults for absent fields; `None` without one (no limit).
    pub fn from_policy(block: Option<&AdaptiveConcurrency>) -> Option<ConcurrencySettings> {
        let b = block?;
        let n = |v: Option<u32>, default: u32| v.unwrap_or(default) as usize;
        let tolerance = b
            .tolerance
            .as_ref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(defaults::ADAPTIVE_TOLERANCE_PERCENT);
        Some(ConcurrencySettings {
            limit: LimitSettings {
                initial: n(b.initial_limit, defaults::ADAPTIVE_INITIAL_LIMIT),
                min: n(b.min_limit, defaults::ADAPTIVE_MIN_LIMIT),
                max: n(b.max_limit, defaults::ADAPTIVE_MAX_LIMIT),
                tolerance: 1.0 + tolerance / 100.0,
                update_interval: b
                    .update_interval
                    .as_ref()
                    .map_or(defaults::ADAPTIVE_UPDATE_INTERVAL, |d| d.get()),
                probe_interval: b
                    .probe_interval
                    .as_ref()
                    .map_or(defaults::ADAPTIVE_PROBE_INTERVAL, |d| d.get()),
                probe_concurrency: n(b.probe_concurrency, defaults::ADAPTIVE_PROBE_CONCURRENCY),
                probe_samples: n(b.probe_samples, defaults::ADAPTIVE_PROBE_SAMPLES),
            },
            max_queue: n(b.max_queue, defaults::ADAPTIVE_MAX_QUEUE),
            max_queue_wait: b
                .max_queue_wait
                .as_ref()
                .map_or(defaults::ADAPTIVE_MAX_QUEUE_WAIT, |d| d.get()),
        })
    }
}

/// One upstream's limit, what is in flight under it and who waits; kept across policy versions
/// while its settings do not change.
#[derive(Debug)]
pub struct Limiter {
    settings: ConcurrencySettings,
    state: Mutex<State>,
    metrics: ConcurrencyMetrics,
}

#[derive(Debug)]
struct State {
    limit: AdaptiveLimit,
    in_flight: usize,
    queue: TierQueue<Waiter>,
    /// How fast each tier gets slots.
    grants: Grants,
}

/// How fast each tier's queue moves: slots given to the tier per second while it had waiters,
/// measured over windows of [`GRANT_WINDOW`] and smoothed. What the tiers above take is in it.
/// A window in which the tier had no waiters leaves its rate as it was: an idle tier's queue
/// has not slowed down.
#[derive(Debug)]
struct Grants {
    counted: [u32; 4],
    waited: [bool; 4],
    since: Instant,
    per_second: [Option<f64>; 4],
}

const GRANT_WINDOW: Duration = Duration::from_millis(100);

impl Grants {
    fn new(now: Instant) -> Grants {
        Grants {
            counted: [0; 4],
            waited: [false; 4],
            since: now,
            per_second: [None; 4],
        }
    }

    fn granted(&mut self, tier: Criticality) {
        self.counted[tier.index()] += 1;
    }

    fn queued(&mut self, tier: Criticality) {
        self.waited[tier.index()] = true;
    }

    /// Closes the window once it is over; `waiting` are the queue's lengths now.
    fn roll(&mut self, now: Instant, waiting: [usize; 4]) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < GRANT_WINDOW {
            return;
        }
        let secs = elapsed.as_secs_f64();
        let tiers = self
            .per_second
            .iter_mut()
            .zip(&mut self.counted)
            .zip(&mut self.waited)
            .zip(waiting);
        for (((rate, counted), waited), waiting) in tiers {
            if *waited || waiting > 0 {
                let now_rate = f64::from(*counted) / secs;
                *rate = Some(rate.map_or(now_rate, |old| (old + now_rate) / 2.0));
            }
            *counted = 0;
            *waited = waiting > 0;
        }
        self.since = now;
    }
}

/// A request waiting for a slot: since when, and where its slot goes.
#[derive(Debug)]
struct Waiter {
    since: Instant,
    tx: oneshot::Sender<Slot>,
}

/// A place under the limit, released when dropped (when the response body ends).
#[derive(Debug)]
pub struct Slot {
    /// `None` once handed back without being used.
    limiter: Option<Arc<Limiter>>,
    /// Requests in flight when this one started, itself included.
    in_flight: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(limiter) = self.limiter.take() {
            limiter.release();
        }
    }
}

/// What entering the limiter came to.
#[derive(Debug)]
pub enum Entry {
    Slot(Slot),
    Refused(Refused),
    /// Queued: the slot comes through here.
    Queued(oneshot::Receiver<Slot>),
}

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub limit: usize,
    /// How long it waited (`queue-wait`: would have waited).
    pub wait: Duration,
}

impl Limiter {
    pub fn new(settings: ConcurrencySettings, metrics: ConcurrencyMetrics) -> Arc<Limiter> {
        let limit = AdaptiveLimit::new(settings.limit.clone(), Instant::now());
        metrics.limit.set(limit.limit() as i64);
        Arc::new(Limiter {
            state: Mutex::new(State {
                limit,
                in_flight: 0,
                queue: TierQueue::new(settings.max_queue),
                grants: Grants::new(Instant::now()),
            }),
            settings,
            metrics,
        })
    }

    pub fn settings(&self) -> &ConcurrencySettings {
        &self.settings
    }

    /// The limit now, what is in flight and what waits per tier (for the admin listener and
    /// tests).
    pub fn snapshot(&self) -> (usize, usize, [usize; 4]) {
        let s = self.lock();
        (s.limit.limit(), s.in_flight, s.queue.lengths())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every step: a panic elsewhere never leaves it half
        // updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a request of `tier`, waiting until `wait_until` at most.
    pub async fn acquire(
        self: &Arc<Self>,
        tier: Criticality,
        wait_until: Instant,
    ) -> Result<Slot, Refused> {
        match self.enter(tier, wait_until) {
            Entry::Slot(slot) => Ok(slot),
            Entry::Refused(refused) => Err(refused),
            Entry::Queued(rx) => self.wait(rx, wait_until, Instant::now()).await,
        }
    }

    /// A slot at once, a refusal at once, or a place in the queue: no waiting here, so that a
    /// request that need not wait carries no timer in its state.
    pub fn enter(self: &Arc<Self>, tier: Criticality, wait_until: Instant) -> Entry {
        {
            let mut s = self.lock();
            let limit = s.limit.limit();
            let now = Instant::now();
            let waiting = s.queue.lengths();
            s.grants.roll(now, waiting);
            if s.in_flight < limit && s.queue.is_empty() {
                s.in_flight += 1;
                s.grants.granted(tier);
                self.metrics.in_flight.set(s.in_flight as i64);
                return Entry::Slot(Slot {
                    limiter: Some(self.clone()),
                    in_flight: s.in_flight,
                });
            }
            if tier < Criticality::Critical
                && let Some(wait) = expected_wait(&s, tier)
                && wait > wait_until.saturating_duration_since(now) / 2
            {
                return Entry::Refused(Refused {
                    refusal: Refusal::QueueWait,
                    limit,
                    wait,
                });
            }
            // A sheddable request is refused at once rather than after waiting in vain when its
            // tier's queue stands — the oldest waiter of its tier has waited half of what this
            // one may — or (below) would take more than half of that, judged from the rate it
            // moves at (which varies with the tiers above it and the limit, hence the half). A
            // critical request is never refused on what others waited: it waits its turn.
            if tier < Criticality::Critical
                && let Some(oldest) = s.queue.oldest(tier).filter(|w| !w.tx.is_closed())
            {
                let waited = now.saturating_duration_since(oldest.since);
                if waited > wait_until.saturating_duration_since(now) / 2 {
                    return Entry::Refused(Refused {
                        refusal: Refusal::QueueWait,
                        limit,
                        wait: waited,
                    });
                }
            }
            let (tx, rx) = oneshot::channel();
            let mut offered = s.queue.offer(tier, Waiter { since: now, tx });
            if let Offered::Refused(waiter) = offered {
                // Waiters that stopped waiting still hold places: make room, then try again.
                s.queue.forget(|w| w.tx.is_closed());
                offered = s.queue.offer(tier, waiter);
            }
            match offered {
                Offered::Queued => s.grants.queued(tier),
                // Dropping its sender tells the displaced waiter.
                Offered::QueuedInstead(displaced) => {
                    s.grants.queued(tier);
                    drop(displaced);
                }
                Offered::Refused(_) => {
                    return Entry::Refused(Refused {
                        refusal: Refusal::QueueFull,
                        limit,
                        wait: Duration::ZERO,
                    });
                }
            }
            self.dispatch(&mut s);
            self.queued_metrics(&s);
            Entry::Queued(rx)
        }
    }

    /// Waits in the queue (entered at `started`) for a slot, until `wait_until` at most.
    pub async fn wait(
        self: &Arc<Self>,
        rx: oneshot::Receiver<Slot>,
        wait_until: Instant,
        started: Instant,
    ) -> Result<Slot, Refused> {
        let result = tokio::time::timeout_at(wait_until, rx).await;
        let refused = |refusal| {
            let s = self.lock();
            self.queued_metrics(&s);
            Refused {
                refusal,
                limit: s.limit.limit(),
                wait: started.elapsed(),
            }
        };
        match result {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_)) => Err(refused(Refusal::Displaced)),
            // Its sender stays queued, closed, until it is skipped or forgotten.
            Err(_) => Err(refused(Refusal::QueueTimeout)),
        }
    }

    /// An attempt under `slot` got its answer after `rtt`.
    pub fn sample(self: &Arc<Self>, slot: &Slot, rtt: Duration) {
        let mut s = self.lock();
        s.limit.sample(Instant::now(), rtt, slot.in_flight);
        let limit = s.limit.limit();
        self.metrics.limit.set(limit as i64);
        if let Some(m) = s.limit.median() {
            self.metrics.median.set(m.as_secs_f64());
        }
        if let Some(b) = s.limit.baseline() {
            self.metrics.baseline.set(b.as_secs_f64());
        }
        // A grown limit lets waiters in at once.
        self.dispatch(&mut s);
        self.queued_metrics(&s);
    }

    /// A slot was given back: to the next waiter while the limit allows, else freed.
    fn release(self: Arc<Self>) {
        let mut s = self.lock();
        s.in_flight -= 1;
        self.dispatch(&mut s);
        self.metrics.in_flight.set(s.in_flight as i64);
        self.queued_metrics(&s);
    }

    /// Hands slots to waiters, most critical first, while the limit allows.
    fn dispatch(self: &Arc<Self>, s: &mut State) {
        while s.in_flight < s.limit.limit() {
            let Some((tier, Waiter { tx, .. })) = s.queue.take_next() else {
                break;
            };
            s.in_flight += 1;
            s.grants.granted(tier);
            let slot = Slot {
                limiter: Some(self.clone()),
                in_flight: s.in_flight,
            };
            if let Err(mut unused) = tx.send(slot) {
                // It stopped waiting: the slot goes to the next one (not released through
                // `Drop`, which would take the lock held here).
                unused.limiter = None;
                s.in_flight -= 1;
            }
        }
        self.metrics.in_flight.set(s.in_flight as i64);
    }

    fn queued_metrics(&self, s: &State) {
        for (gauge, n) in self.metrics.queued.iter().zip(s.queue.lengths()) {
            gauge.set(n as i64);
        }
    }
}

/// How long a request of `tier` would wait for a slot: its tier's waiters ahead of it and
/// itself, at the rate its tier's queue moves. `None` when none of its tier waits or the rate
/// is not known yet (nothing says it would wait long); `Duration::MAX` when its tier's queue
/// does not move at all (the tiers above take every slot).
fn expected_wait(s: &State, tier: Criticality) -> Option<Duration> {
    let ahead = s.queue.lengths()[tier.index()];
    if ahead == 0 {
        return None;
    }
    let rate = s.grants.per_second[tier.index()]?;
    if rate <= 0.0 {
        return Some(Duration::MAX);
    }
    Some(Duration::try_from_secs_f64((ahead + 1) as f64 / rate).unwrap_or(Duration::MAX))
}

/// The adaptive concurrency layer over `S`.
pub struct Concurrency<S> {
    info: Arc<UpstreamInfo>,
    /// `None`: no limit.
    limiter: Option<Arc<Limiter>>,
    limited: Limited,
    inner: S,
}

impl<S> Concurrency<S> {
    pub fn new(
        info: Arc<UpstreamInfo>,
        limiter: Option<Arc<Limiter>>,
        limited: Limited,
        inner: S,
    ) -> Self {
        Concurrency {
            info,
            limiter,
            limited,
            inner,
        }
    }

    fn refused(&self, limiter: &Limiter, tier: Criticality, r: Refused) -> ProxyError {
        limiter.metrics.refused(tier, r.refusal);
        self.info.stats.overloaded();
        tracing::debug!(upstream = %self.info.name, criticality = %tier, reason = r.refusal.as_str(), "request refused by the adaptive concurrency limit");
        ProxyError::Overloaded {
            target: match &self.limited {
                Limited::Upstream => format!("upstream {:?}", self.info.name.as_ref()),
                Limited::Inbound(service) => service.to_string(),
            },
            criticality: tier,
            refusal: r.refusal,
            limit: r.limit,
            wait: r.wait,
        }
    }
}

impl<S: Call> Call for Concurrency<S> {
    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let Some(limiter) = &self.limiter else {
            return self.inner.call(req, cx).await;
        };
        if matches!(self.limited, Limited::Inbound(_)) && is_kubelet_probe(req.headers()) {
            return self.inner.call(req, cx).await;
        }
        let mut wait_until = Instant::now() + limiter.settings.max_queue_wait;
        if let Some(attempt) = cx.attempt {
            wait_until = wait_until.min(attempt.at);
        }
        let slot = match limiter.enter(cx.criticality, wait_until) {
            Entry::Slot(slot) => slot,
            Entry::Refused(r) => return Err(self.refused(limiter, cx.criticality, r)),
            // Boxed: the wait (a timer and a channel) is in the state of waiting requests only.
            Entry::Queued(rx) => {
                match Box::pin(limiter.wait(rx, wait_until, Instant::now())).await {
                    Ok(slot) => slot,
                    Err(r) => return Err(self.refused(limiter, cx.criticality, r)),
                }
            }
        };
        let started = Instant::now();
        let result = self.inner.call(req, cx).await;
        match &result {
            Ok(_) | Err(ProxyError::AttemptTimeout { .. }) => {
                limiter.sample(&slot, started.elapsed());
            }
            Err(_) => {}
        }
        result.map(|rsp| rsp.map(|b| b.guarded(slot)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn limiter(initial: usize, max_queue: usize) -> Arc<Limiter> {
        let metrics = Arc::new(Metrics::new());
        let settings = ConcurrencySettings {
            limit: LimitSettings {
                initial,
                min: initial,
                max: initial,
                probe_concurrency: initial,
                ..LimitSettings::default()
            },
            max_queue,
            max_queue_wait: Duration::from_secs(1),
        };
        Limiter::new(settings, metrics.upstream("outbound", "up").concurrency())
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_most_critical_waiter() {
        let l = limiter(1, 10);
        let held = l.acquire(Criticality::Sheddable, later()).await.unwrap();
        let low = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Sheddable, later()).await }
        });
        tokio::task::yield_now().await;
        let high = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::CriticalPlus, later()).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(l.snapshot(), (1, 1, [1, 0, 0, 1]));
        drop(held);
        let high = high
            .await
            .unwrap()
            .expect("the critical-plus waiter gets the slot");
        assert_eq!(l.snapshot(), (1, 1, [1, 0, 0, 0]));
        drop(high);
        let low = low.await.unwrap().expect("then the sheddable one");
        drop(low);
        assert_eq!(l.snapshot(), (1, 0, [0, 0, 0, 0]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_sheds_the_least_critical_for_a_more_critical_newcomer() {
        let l = limiter(1, 1);
        let _held = l.acquire(Criticality::Critical, later()).await.unwrap();
        let low = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Sheddable, later()).await }
        });
        tokio::task::yield_now().await;
        // As critical as the queue's only waiter's: refused at once.
        let same = l
            .acquire(Criticality::Sheddable, later())
            .await
            .unwrap_err();
        assert_eq!(same.refusal, Refusal::QueueFull);
        assert_eq!(same.wait, Duration::ZERO);
        // More critical: takes its place.
        let high = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Critical, later()).await }
        });
        let displaced = low.await.unwrap().unwrap_err();
        assert_eq!(displaced.refusal, Refusal::Displaced);
        assert_eq!(l.snapshot(), (1, 1, [0, 0, 1, 0]));
        drop(_held);
        assert!(high.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_deadline_and_its_place_is_reused() {
        let l = limiter(1, 1);
        let held = l.acquire(Criticality::Critical, later()).await.unwrap();
        let start = Instant::now();
        let until = start + Duration::from_millis(250);
        let timed_out = l.acquire(Criticality::Critical, until).await.unwrap_err();
        assert_eq!(timed_out.refusal, Refusal::QueueTimeout);
        assert_eq!(timed_out.wait, Duration::from_millis(250));
        // The stale place does not keep a newcomer out…
        let next = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Sheddable, later()).await }
        });
        tokio::task::yield_now().await;
        // …and the freed slot skips the waiter that left.
        drop(held);
        let slot = next.await.unwrap().expect("the newcomer gets the slot");
        assert_eq!(l.snapshot(), (1, 1, [0, 0, 0, 0]));
        drop(slot);
        assert_eq!(l.snapshot().1, 0, "every slot came back");
    }

    /// An app with `workers` workers and a fixed service time: what it cannot start at once
    /// waits in its own queue, as a real server's accept queue would.
    struct App {
        workers: Arc<tokio::sync::Semaphore>,
        service: Duration,
        busy: std::sync::atomic::AtomicUsize,
        most_busy: std::sync::atomic::AtomicUsize,
    }

    impl Call for App {
        async fn call<'a>(&'a self, _req: Req, _cx: Cx<'a>) -> Result<Rsp, ProxyError> {
            use std::sync::atomic::Ordering::Relaxed;
            let _worker = self.workers.acquire().await.expect("never closed");
            let now = self.busy.fetch_add(1, Relaxed) + 1;
            self.most_busy.fetch_max(now, Relaxed);
            tokio::time::sleep(self.service).await;
            self.busy.fetch_sub(1, Relaxed);
            Ok(http::Response::new(crate::body::Body::Empty))
        }
    }

    /// Per tier: (succeeded, refused) and the slowest success.
    #[derive(Debug, Default, Clone, Copy)]
    struct Tally {
        ok: u32,
        refused: u32,
        slowest: Duration,
    }

    /// Offers `rate` requests a second for `secs` seconds, 20% critical, 50% sheddable-plus and
    /// 30% sheddable, and waits for every answer.
    async fn offer(
        layer: &'static Concurrency<App>,
        route: &'static super::super::routes::RouteConfig,
        rate: u32,
        secs: u32,
    ) -> [Tally; 4] {
        let tally = Arc::new(Mutex::new([Tally::default(); 4]));
        let start = Instant::now();
        let every = Duration::from_secs(1) / rate;
        let mut tasks = Vec::new();
        for i in 0..rate * secs {
            tokio::time::sleep_until(start + every * i).await;
            let tier = match i % 10 {
                0 | 1 => Criticality::Critical,
                2..=6 => Criticality::SheddablePlus,
                _ => Criticality::Sheddable,
            };
            let tally = tally.clone();
            tasks.push(tokio::spawn(async move {
                let state = super::super::layer::CallState::default();
                let cx = Cx {
                    criticality: tier,
                    ..super::super::testing::cx(route, &state)
                };
                let began = Instant::now();
                let result = layer.call(super::super::testing::get("/"), cx).await;
                let took = began.elapsed();
                let mut t = tally.lock().unwrap();
                let t = &mut t[tier.index()];
                match result {
                    Ok(_) => {
                        t.ok += 1;
                        t.slowest = t.slowest.max(took);
                    }
                    Err(ProxyError::Overloaded { .. }) => t.refused += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        *tally.lock().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn at_three_times_its_capacity_an_app_serves_the_critical_and_sheds_the_sheddable() {
        // 10 workers × 10 ms: 1,000 requests a second.
        let app = App {
            workers: Arc::new(tokio::sync::Semaphore::new(10)),
            service: Duration::from_millis(10),
            busy: Default::default(),
            most_busy: Default::default(),
        };
        let metrics = Arc::new(Metrics::new());
        let settings =
            ConcurrencySettings::from_policy(Some(&AdaptiveConcurrency::default())).expect("on");
        let limiter = Limiter::new(settings, metrics.upstream("inbound", "app").concurrency());
        let info = Arc::new(UpstreamInfo {
            name: Arc::from("app"),
            namespace: Arc::from("shop"),
            metrics: Arc::new(metrics.upstream("inbound", "app")),
            stats: Default::default(),
        });
        let layer: &'static Concurrency<App> = Box::leak(Box::new(Concurrency::new(
            info,
            Some(limiter.clone()),
            Limited::Inbound(Arc::from("shop/orders")),
            app,
        )));
        let routes = Box::leak(Box::new(super::super::testing::routes("")));
        let route = routes.default_route();

        let overload = offer(layer, route, 3000, 5).await;
        let [sheddable, sheddable_plus, critical, _] = overload;
        let ratio = |t: Tally| f64::from(t.ok) / f64::from(t.ok + t.refused);
        assert!(ratio(critical) >= 0.99, "critical {critical:?}");
        assert!(ratio(sheddable) <= 0.05, "sheddable {sheddable:?}");
        let served = critical.ok + sheddable_plus.ok + sheddable.ok;
        assert!(
            f64::from(served) >= 0.9 * 5000.0,
            "goodput: {served} of the app's 5,000 in 5 s"
        );
        assert!(
            critical.slowest <= Duration::from_millis(100),
            "critical requests wait little: {critical:?}"
        );
        let (limit, in_flight, queued) = limiter.snapshot();
        assert!(
            (8..=40).contains(&limit),
            "the limit found the app's 10 workers: {limit}"
        );
        assert_eq!((in_flight, queued), (0, [0; 4]));

        // The spike is over: at half its capacity every request is served again.
        let calm = offer(layer, route, 500, 3).await;
        for t in &calm[..3] {
            assert_eq!(t.refused, 0, "{calm:?}");
        }
    }
}
