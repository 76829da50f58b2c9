//! The adaptive concurrency limit (`adaptiveConcurrency`, or `spec.inbound.adaptiveConcurrency`
//! for the app): at most as many attempts in flight as the [`AdaptiveLimit`] allows now, learned
//! from their latency; past it an attempt waits in a bounded queue served most critical first
//! ([`TierQueue`]), for at most `maxQueueWait` and never past its per-try deadline. Who may wait
//! is decided on arrival, so that a refusal comes at once rather than after waiting in vain: a
//! newcomer predicted to wait longer than it may — `maxQueueWait` in a burst,
//! `standingQueueWait` once the queue *stands* (has not emptied for an update interval while
//! more came than got slots: waiting then only adds latency) — is refused; the prediction counts
//! everyone of its tier or above already waiting as slots free up (in a burst, less what more
//! critical arrivals take; in a standing queue the next in line joins while the queue moves at
//! all, to keep a slot that frees up busy) and how fast its tier's queue has moved. (A critical newcomer in a
//! burst waits its turn: the limit is still moving.) A full queue sheds its least critical, most
//! recent waiter for a more critical newcomer and refuses a newcomer with none below it; while a
//! tier is refused the tiers below it get no slot and those of them waiting are refused at once,
//! as are a tier's waiters when its queue stops moving — 503 / `RESOURCE_EXHAUSTED`,
//! `x-bulwark-error: overloaded`.
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
    /// How long a request may wait once the queue has stood for an update interval.
    pub standing_queue_wait: Duration,
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
            standing_queue_wait: b
                .standing_queue_wait
                .as_ref()
                .map_or(defaults::ADAPTIVE_STANDING_QUEUE_WAIT, |d| d.get()),
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
    /// Per tier, since when the queue has held a waiter of that tier or a more critical one
    /// without a break: what a newcomer of the tier waits behind. Restarted while the limit
    /// probes, which queues requests on purpose.
    busy_since: [Option<Instant>; 4],
    /// Per tier, when that queue was last seen standing.
    stood_at: [Option<Instant>; 4],
    /// Per tier, when a request of the tier was last refused.
    shed_at: [Option<Instant>; 4],
}

impl State {
    /// Whether the queue a newcomer of `tier` joins stands at `now`: it has been busy for
    /// `interval`, or stood less than `interval` ago — a standing queue that empties for a
    /// moment (as a short one does all the time) still stands until it stays empty for an
    /// interval. Not a burst being absorbed, then, but more demand than the limit lets
    /// through — so it must also have had more requests come than get slots in the last grant
    /// window: a backlog going away is not standing. A probe, which queues requests on purpose,
    /// starts no standing queue (but does not end one); nor does the queue that builds while
    /// the limit first looks for the callee's capacity.
    fn standing(&self, tier: Criticality, now: Instant, interval: Duration) -> bool {
        let i = tier.index();
        let ago = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
        // A queue of critical requests starts standing only while the limit is settled (not
        // letting through less than it could, as it does while it climbs back after a cut or
        // a probe, or still looks for the callee's capacity) and after two intervals: then
        // they alone are more than the callee can take.
        let (settled, start) = if tier >= Criticality::Critical {
            (self.limit.settled(), interval)
        } else {
            (true, interval)
        };
        self.limit.found()
            && ((settled
                && !self.limit.probing()
                && self.grants.outran(tier)
                && ago(self.busy_since[i]).is_some_and(|busy| busy >= start))
                || ago(self.stood_at[i]).is_some_and(|ago| ago < interval))
    }

    /// Whether a tier more critical than `tier` had a request refused within `interval` of
    /// `now`: then no request of `tier` waits — it could only take a slot a more critical one
    /// is refused for, the moment their queue is short.
    fn shedding_above(&self, tier: Criticality, now: Instant, interval: Duration) -> bool {
        self.shed_at[tier.index() + 1..]
            .iter()
            .flatten()
            .any(|&at| now.saturating_duration_since(at) < interval)
    }

    /// A request of `tier` is refused at `now`: for an update interval the tiers below it get
    /// no slot, and those of them already waiting are refused now rather than after waiting
    /// in vain — as are those of its own tier when its queue does not move (`stalled`).
    fn shed(&mut self, tier: Criticality, now: Instant, stalled: bool) {
        self.shed_at[tier.index()] = Some(now);
        let below = if stalled {
            Some(tier)
        } else {
            tier.index().checked_sub(1).map(|i| Criticality::ALL[i])
        };
        if let Some(below) = below {
            self.queue.shed_up_to(below, |w| {
                // One that stopped waiting no longer hears it.
                let _ = w.tx.send(Err(Refusal::QueueWait));
            });
        }
    }

    /// Brings [`State::busy_since`] and [`State::stood_at`] up to date after the queue changed.
    fn track(&mut self, now: Instant, interval: Duration) {
        let lengths = self.queue.lengths();
        let probing = self.limit.probing();
        let mut ahead = 0;
        for tier in Criticality::ALL.into_iter().rev() {
            let i = tier.index();
            ahead += lengths[i];
            // Standing and still busy: it stands on (an empty queue lets it lapse).
            if ahead > 0 && self.standing(tier, now, interval) {
                self.stood_at[i] = Some(now);
            }
            self.busy_since[i] = match (ahead, self.busy_since[i]) {
                (0, _) => None,
                (_, Some(since)) if !probing => Some(since),
                _ => Some(now),
            };
        }
    }
}

/// How fast each tier's queue moves: slots given to the tier per second while it had waiters,
/// measured over windows of [`GRANT_WINDOW`] and smoothed. What the tiers above take is in it.
/// A window in which the tier had no waiters leaves its rate as it was: an idle tier's queue
/// has not slowed down. A rate not measured for [`RATE_MEMORY`] is forgotten, so that a tier
/// refused on it gets to wait (and be measured) again.
#[derive(Debug)]
struct Grants {
    counted: [u32; 4],
    /// Requests of each tier that came in this window.
    came: [u32; 4],
    /// Per tier, (came, got slots) in the last window closed.
    last: [(u32, u32); 4],
    /// How long the last window closed lasted, in seconds.
    last_secs: f64,
    waited: [bool; 4],
    since: Instant,
    /// Per tier, the rate and when it was last measured.
    per_second: [Option<(f64, Instant)>; 4],
}

const GRANT_WINDOW: Duration = Duration::from_millis(100);
const RATE_MEMORY: Duration = Duration::from_secs(1);

impl Grants {
    fn new(now: Instant) -> Grants {
        Grants {
            counted: [0; 4],
            came: [0; 4],
            last: [(0, 0); 4],
            last_secs: 0.0,
            waited: [false; 4],
            since: now,
            per_second: [None; 4],
        }
    }

    fn granted(&mut self, tier: Criticality) {
        self.counted[tier.index()] += 1;
    }

    fn arrived(&mut self, tier: Criticality) {
        self.came[tier.index()] += 1;
    }

    /// Whether, in the last window closed, more requests of `tier` and the tiers above came
    /// than got slots: their demand outran what they got (refused, or left waiting).
    fn outran(&self, tier: Criticality) -> bool {
        let (came, got) = self.last[tier.index()..]
            .iter()
            .fold((0, 0), |(c, g), &(came, got)| (c + came, g + got));
        came > got
    }

    /// Requests of the tiers above `tier` arriving per second lately: over the window under way
    /// (as if at least a tenth of a window long, so that its first request is no surge) and the
    /// one closed before it, unless that one spanned a lull (it lasted over two windows).
    fn arriving_above(&self, tier: Criticality, now: Instant) -> f64 {
        let above = tier.index() + 1;
        let mut came: u32 = self.came[above..].iter().sum();
        let mut secs = now
            .saturating_duration_since(self.since)
            .max(GRANT_WINDOW / 10)
            .as_secs_f64();
        if self.last_secs <= 2.0 * GRANT_WINDOW.as_secs_f64() {
            came += self.last[above..].iter().map(|&(c, _)| c).sum::<u32>();
            secs += self.last_secs;
        }
        f64::from(came) / secs
    }

    fn queued(&mut self, tier: Criticality) {
        self.waited[tier.index()] = true;
    }

    /// Slots per second `tier` got while it waited, if measured lately.
    fn rate(&self, tier: Criticality, now: Instant) -> Option<f64> {
        let (rate, at) = self.per_second[tier.index()]?;
        (now.saturating_duration_since(at) < RATE_MEMORY).then_some(rate)
    }

    /// Closes the window once it is over; `waiting` are the queue's lengths now.
    fn roll(&mut self, now: Instant, waiting: [usize; 4]) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < GRANT_WINDOW {
            return;
        }
        let secs = elapsed.as_secs_f64();
        self.last_secs = secs;
        for ((last, came), counted) in self.last.iter_mut().zip(&mut self.came).zip(&self.counted) {
            *last = (*came, *counted);
            *came = 0;
        }
        let tiers = self
            .per_second
            .iter_mut()
            .zip(&mut self.counted)
            .zip(&mut self.waited)
            .zip(waiting);
        for (((rate, counted), waited), waiting) in tiers {
            if *waited || waiting > 0 {
                let now_rate = f64::from(*counted) / secs;
                let smoothed = rate.map_or(now_rate, |(old, _)| (old + now_rate) / 2.0);
                *rate = Some((smoothed, now));
            }
            *counted = 0;
            *waited = waiting > 0;
        }
        self.since = now;
    }
}

/// A request waiting for a slot: where its slot goes.
#[derive(Debug)]
struct Waiter {
    /// A slot, or why none comes.
    tx: oneshot::Sender<Result<Slot, Refusal>>,
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
    /// Queued: the slot comes through `rx`, if it comes before `until`.
    Queued {
        rx: oneshot::Receiver<Result<Slot, Refusal>>,
        until: Instant,
    },
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
                busy_since: [None; 4],
                stood_at: [None; 4],
                shed_at: [None; 4],
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

    /// A slot for a request of `tier`, waiting as long as the queue allows and never past
    /// `deadline`.
    pub async fn acquire(
        self: &Arc<Self>,
        tier: Criticality,
        deadline: Option<Instant>,
    ) -> Result<Slot, Refused> {
        match self.enter(tier, deadline) {
            Entry::Slot(slot) => Ok(slot),
            Entry::Refused(refused) => Err(refused),
            Entry::Queued { rx, until } => self.wait(tier, rx, until, Instant::now()).await,
        }
    }

    /// The longest a newcomer may be expected to wait to join the queue: `maxQueueWait`, or
    /// `standingQueueWait` once the queue it joins stands (then waiting longer only adds
    /// latency: the limit is already full all the time) — but never less than two slots take
    /// to free up (the latency over the limit): a newcomer may always wait for the next ones,
    /// however slow the callee.
    fn patience(&self, s: &State, standing: bool) -> Duration {
        let settings = &self.settings;
        if standing {
            settings
                .standing_queue_wait
                .max(turnover(s) * 2)
                .min(settings.max_queue_wait)
        } else {
            settings.max_queue_wait
        }
    }

    /// A slot at once, a refusal at once, or a place in the queue: no waiting here, so that a
    /// request that need not wait carries no timer in its state.
    pub fn enter(self: &Arc<Self>, tier: Criticality, deadline: Option<Instant>) -> Entry {
        {
            let mut s = self.lock();
            let limit = s.limit.limit();
            let now = Instant::now();
            let waiting = s.queue.lengths();
            s.grants.roll(now, waiting);
            s.grants.arrived(tier);
            let interval = self.settings.limit.update_interval;
            // A free slot is taken by whoever comes, but not by a tier below one being shed:
            // it is kept for the more critical request that comes next.
            let shedding_above = s.shedding_above(tier, now, interval);
            if s.in_flight < limit && s.queue.is_empty() && !shedding_above {
                s.in_flight += 1;
                s.grants.granted(tier);
                self.metrics.in_flight.set(s.in_flight as i64);
                return Entry::Slot(Slot {
                    limiter: Some(self.clone()),
                    in_flight: s.in_flight,
                });
            }
            // Refused at once, rather than after waiting in vain, while more critical requests
            // are being refused, or when it would wait longer than it may — in a standing
            // queue, or (a sheddable one) in a burst: behind everyone of its tier or above
            // already waiting as slots free up ([`predicted_wait`]), or behind those of its
            // tier at the rate its tier's queue has been moving at (what the tiers above leave
            // it). A critical request in a burst waits its turn: the limit moves, and its queue
            // with it. Whoever joins then waits for its slot up to `maxQueueWait`: served, not
            // refused after waiting, unless the queue stops moving.
            let standing = s.standing(tier, now, interval);
            let patience = self.patience(&s, standing);
            let wait = if shedding_above {
                Some(Duration::MAX)
            } else if standing || tier < Criticality::Critical {
                predicted_wait(&s, tier, now, standing)
                    .max(expected_wait(&s, tier, now))
                    .filter(|&wait| wait > patience)
            } else {
                None
            };
            let max_wait = now + self.settings.max_queue_wait;
            let until = deadline.map_or(max_wait, |d| d.min(max_wait));
            if let Some(wait) = wait {
                s.shed(tier, now, wait == Duration::MAX);
                s.track(now, interval);
                self.queued_metrics(&s);
                return Entry::Refused(Refused {
                    refusal: Refusal::QueueWait,
                    limit,
                    wait,
                });
            }
            let (tx, rx) = oneshot::channel();
            let mut offered = s.queue.offer(tier, Waiter { tx });
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
                    s.shed(tier, now, false);
                    s.track(now, interval);
                    return Entry::Refused(Refused {
                        refusal: Refusal::QueueFull,
                        limit,
                        wait: Duration::ZERO,
                    });
                }
            }
            self.dispatch(&mut s);
            self.queued_metrics(&s);
            Entry::Queued { rx, until }
        }
    }

    /// Waits in the queue (entered at `started`) for a slot, until `wait_until` at most.
    pub async fn wait(
        self: &Arc<Self>,
        tier: Criticality,
        rx: oneshot::Receiver<Result<Slot, Refusal>>,
        wait_until: Instant,
        started: Instant,
    ) -> Result<Slot, Refused> {
        let result = tokio::time::timeout_at(wait_until, rx).await;
        let refused = |refusal| {
            let mut s = self.lock();
            let now = Instant::now();
            s.shed(tier, now, false);
            // Its place (closed now) goes at once, so that the queue's length is what waits.
            s.queue.forget(|w| w.tx.is_closed());
            s.track(now, self.settings.limit.update_interval);
            self.queued_metrics(&s);
            Refused {
                refusal,
                limit: s.limit.limit(),
                // Refused while waiting because its queue does not move: it would wait forever.
                wait: match refusal {
                    Refusal::QueueWait => Duration::MAX,
                    _ => started.elapsed(),
                },
            }
        };
        match result {
            Ok(Ok(Ok(slot))) => Ok(slot),
            Ok(Ok(Err(refusal))) => Err(refused(refusal)),
            Ok(Err(_)) => Err(refused(Refusal::Displaced)),
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
            if let Err(Ok(mut unused)) = tx.send(Ok(slot)) {
                // It stopped waiting: the slot goes to the next one (not released through
                // `Drop`, which would take the lock held here).
                unused.limiter = None;
                s.in_flight -= 1;
            }
        }
        s.track(Instant::now(), self.settings.limit.update_interval);
        self.metrics.in_flight.set(s.in_flight as i64);
    }

    fn queued_metrics(&self, s: &State) {
        for (gauge, n) in self.metrics.queued.iter().zip(s.queue.lengths()) {
            gauge.set(n as i64);
        }
    }
}

/// How long, at the latency the limit measures, one slot takes to free up.
fn turnover(s: &State) -> Duration {
    s.limit
        .median()
        .map_or(Duration::ZERO, |m| m / s.limit.limit().max(1) as u32)
}

/// How long a newcomer of `tier` would wait at `now` for its slot: behind everyone of its tier
/// or above already waiting, a slot each as slots free up (a turnover each) — in a burst, less
/// what the more critical requests arriving meanwhile take. In a standing queue those are not
/// taken off: the next ones in line are what keeps a slot that frees up busy, and are served
/// soon enough while slots free up faster than more critical requests arrive. `None` before the
/// limit has measured a latency; `Duration::MAX` when more critical requests arrive as fast as
/// slots free up (its tier's queue does not move).
fn predicted_wait(s: &State, tier: Criticality, now: Instant, standing: bool) -> Option<Duration> {
    let turnover = turnover(s);
    if turnover.is_zero() {
        return None;
    }
    let slots = 1.0 / turnover.as_secs_f64();
    let above = s.grants.arriving_above(tier, now);
    if above >= slots {
        return Some(Duration::MAX);
    }
    let rate = if standing { slots } else { slots - above };
    let ahead: usize = s.queue.lengths()[tier.index()..].iter().sum();
    Some(Duration::try_from_secs_f64((ahead + 1) as f64 / rate).unwrap_or(Duration::MAX))
}

/// How long a request of `tier` would wait at `now` before it is next of its tier: its tier's
/// waiters ahead of it, at the rate its tier's queue has been moving at. (Once next it may still
/// wait; it is not refused for that: a slot that frees up finds it waiting rather than nobody.)
/// `None` when the rate is not known (nothing says it would wait long); `Duration::MAX` when its
/// tier's queue does not move at all (the tiers above take every slot).
fn expected_wait(s: &State, tier: Criticality, now: Instant) -> Option<Duration> {
    let ahead = s.queue.lengths()[tier.index()];
    let rate = s.grants.rate(tier, now)?;
    if rate <= 0.0 {
        return Some(Duration::MAX);
    }
    Some(Duration::try_from_secs_f64(ahead as f64 / rate).unwrap_or(Duration::MAX))
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
        let deadline = cx.attempt.map(|attempt| attempt.at);
        let slot = match limiter.enter(cx.criticality, deadline) {
            Entry::Slot(slot) => slot,
            Entry::Refused(r) => return Err(self.refused(limiter, cx.criticality, r)),
            // Boxed: the wait (a timer and a channel) is in the state of waiting requests only.
            Entry::Queued { rx, until } => {
                match Box::pin(limiter.wait(cx.criticality, rx, until, Instant::now())).await {
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
            standing_queue_wait: Duration::from_millis(20),
        };
        Limiter::new(
            settings,
            metrics.upstream("outbound", "default", "up").concurrency(),
        )
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_most_critical_waiter() {
        let l = limiter(1, 10);
        let held = l
            .acquire(Criticality::Sheddable, Some(later()))
            .await
            .unwrap();
        let low = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Sheddable, Some(later())).await }
        });
        tokio::task::yield_now().await;
        let high = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::CriticalPlus, Some(later())).await }
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
        let _held = l
            .acquire(Criticality::Critical, Some(later()))
            .await
            .unwrap();
        let low = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Sheddable, Some(later())).await }
        });
        tokio::task::yield_now().await;
        // As critical as the queue's only waiter's: refused at once.
        let same = l
            .acquire(Criticality::Sheddable, Some(later()))
            .await
            .unwrap_err();
        assert_eq!(same.refusal, Refusal::QueueFull);
        assert_eq!(same.wait, Duration::ZERO);
        // More critical: takes its place.
        let high = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Critical, Some(later())).await }
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
        let held = l
            .acquire(Criticality::Critical, Some(later()))
            .await
            .unwrap();
        let start = Instant::now();
        let until = start + Duration::from_millis(250);
        let timed_out = l
            .acquire(Criticality::Critical, Some(until))
            .await
            .unwrap_err();
        assert_eq!(timed_out.refusal, Refusal::QueueTimeout);
        assert_eq!(timed_out.wait, Duration::from_millis(250));
        // The stale place does not keep a newcomer out…
        let next = waiting(&l, Criticality::Critical);
        tokio::task::yield_now().await;
        // …and the freed slot skips the waiter that left.
        drop(held);
        let slot = next.await.unwrap().expect("the newcomer gets the slot");
        assert_eq!(l.snapshot(), (1, 1, [0, 0, 0, 0]));
        drop(slot);
        assert_eq!(l.snapshot().1, 0, "every slot came back");
    }

    /// Ends the limiter's first probe (its limit comes back from the probe level), then lets
    /// it find the callee's capacity (answers as fast as the baseline for an interval).
    async fn probed(l: &Arc<Limiter>) {
        let slot = l.acquire(Criticality::Critical, None).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        for _ in 0..LimitSettings::default().probe_samples {
            l.sample(&slot, Duration::from_millis(10));
        }
        assert!(!l.lock().limit.probing());
        drop(slot);
        let slot = l.acquire(Criticality::Critical, None).await.unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
        l.sample(&slot, Duration::from_millis(10));
        assert!(l.lock().limit.found());
    }

    fn waiting(
        l: &Arc<Limiter>,
        tier: Criticality,
    ) -> tokio::task::JoinHandle<Result<Slot, Refused>> {
        tokio::spawn({
            let l = l.clone();
            async move { l.acquire(tier, None).await }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn once_the_queue_has_stood_for_an_interval_only_the_next_in_line_join_it() {
        let l = limiter(1, 10);
        probed(&l).await;
        let held = l.acquire(Criticality::Critical, None).await.unwrap();
        // A burst: the first waiter may wait maxQueueWait (1s).
        let first = waiting(&l, Criticality::Critical);
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(50)).await;
        let second = waiting(&l, Criticality::SheddablePlus);
        tokio::task::yield_now().await;
        // The queue has not emptied for an update interval (100ms): it stands. A newcomer
        // that would wait longer than standingQueueWait (here 20ms) — behind the two waiting,
        // a slot turnover (10ms at a limit of 1) each, then its own — is refused at once.
        tokio::time::advance(Duration::from_millis(60)).await;
        let began = Instant::now();
        let late = l.acquire(Criticality::Sheddable, None).await.unwrap_err();
        assert_eq!(late.refusal, Refusal::QueueWait);
        assert!(late.wait >= Duration::from_millis(30), "{:?}", late.wait);
        assert_eq!(began.elapsed(), Duration::ZERO);
        // Those that came during the burst keep what they were given.
        drop(held);
        let first = first.await.unwrap().expect("the first waiter is served");
        assert_eq!(l.snapshot(), (1, 1, [0, 1, 0, 0]));
        drop(first);
        let second = second.await.unwrap().expect("so is the second");
        // Next in line, a newcomer joins the standing queue and then waits for its slot —
        // longer than standingQueueWait if it must — rather than being refused after waiting.
        let began = Instant::now();
        let next = waiting(&l, Criticality::Sheddable);
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(40)).await;
        drop(second);
        drop(next.await.unwrap().expect("served after 40ms"));
        assert_eq!(began.elapsed(), Duration::from_millis(40));
        // The queue emptied: the next burst may wait long again.
        let held = l.acquire(Criticality::Critical, None).await.unwrap();
        let next = waiting(&l, Criticality::Sheddable);
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(held);
        assert!(next.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn while_a_tier_is_refused_the_tiers_below_it_get_no_slot() {
        let l = limiter(2, 10);
        probed(&l).await;
        let held = l.acquire(Criticality::Critical, None).await.unwrap();
        let other = l.acquire(Criticality::Critical, None).await.unwrap();
        tokio::time::advance(Duration::from_millis(300)).await;
        let waiter = waiting(&l, Criticality::Sheddable);
        tokio::task::yield_now().await;
        assert_eq!(l.snapshot(), (2, 2, [1, 0, 0, 0]));
        // A critical request that may not wait (its deadline is now) is refused…
        let now = Instant::now();
        let late = l
            .acquire(Criticality::Critical, Some(now))
            .await
            .unwrap_err();
        assert_eq!(late.refusal, Refusal::QueueTimeout);
        // …so the sheddable one waiting is refused then, rather than after waiting in vain…
        let gone = waiter.await.unwrap().unwrap_err();
        assert_eq!(
            (gone.refusal, gone.wait),
            (Refusal::QueueWait, Duration::MAX)
        );
        assert_eq!(now.elapsed(), Duration::ZERO);
        drop(other);
        // …and for an update interval a sheddable-plus one neither takes the free slot nor
        // waits: the slot is kept for the next critical request.
        let below = l
            .acquire(Criticality::SheddablePlus, None)
            .await
            .unwrap_err();
        assert_eq!(
            (below.refusal, below.wait),
            (Refusal::QueueWait, Duration::MAX)
        );
        assert_eq!(l.snapshot(), (2, 1, [0; 4]));
        let critical = l.acquire(Criticality::Critical, None).await.unwrap();
        drop((held, critical));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(l.acquire(Criticality::SheddablePlus, None).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_built_by_the_probe_does_not_count_as_standing() {
        // Still in its first probe, at 1 slot: requests queue because the limit measures.
        let l = limiter(1, 10);
        let held = l.acquire(Criticality::Critical, None).await.unwrap();
        let first = waiting(&l, Criticality::Critical);
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(300)).await;
        let second = waiting(&l, Criticality::Sheddable);
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(300)).await;
        drop(held);
        drop(first.await.unwrap().expect("served"));
        assert!(second.await.unwrap().is_ok(), "waited 300ms, not 20ms");
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

    /// Per tier: how long each success and each refusal took.
    #[derive(Debug, Default, Clone)]
    struct Tally {
        served: Vec<Duration>,
        refused: Vec<Duration>,
    }

    impl Tally {
        fn ratio(&self) -> f64 {
            self.served.len() as f64 / (self.served.len() + self.refused.len()) as f64
        }
    }

    /// The `q` quantile of `times`.
    fn quantile(times: &[Duration], q: f64) -> Duration {
        let mut sorted = times.to_vec();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * q) as usize]
    }

    /// Offers `rate` requests a second for `secs` seconds, the `i`th of tier `mix(i)`, and
    /// waits for every answer.
    async fn offer(
        layer: &'static Concurrency<App>,
        route: &'static super::super::routes::RouteConfig,
        rate: u32,
        secs: u32,
        mix: fn(u32) -> Criticality,
    ) -> [Tally; 4] {
        let tally = Arc::new(Mutex::new(<[Tally; 4]>::default()));
        let start = Instant::now();
        let every = Duration::from_secs(1) / rate;
        let mut tasks = Vec::new();
        for i in 0..rate * secs {
            tokio::time::sleep_until(start + every * i).await;
            let tier = mix(i);
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
                    Ok(_) => t.served.push(took),
                    Err(ProxyError::Overloaded { .. }) => t.refused.push(took),
                    Err(e) => panic!("unexpected {e}"),
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let tally = tally.lock().unwrap();
        tally.clone()
    }

    /// 20% critical, 50% sheddable-plus, 30% sheddable.
    fn mixed(i: u32) -> Criticality {
        match i % 10 {
            0 | 1 => Criticality::Critical,
            2..=6 => Criticality::SheddablePlus,
            _ => Criticality::Sheddable,
        }
    }

    /// An app of 10 workers × 10 ms (1,000 requests a second) behind the inbound layer with
    /// every default.
    fn app_behind_limit() -> (
        &'static Concurrency<App>,
        Arc<Limiter>,
        &'static super::super::routes::RouteConfig,
    ) {
        let app = App {
            workers: Arc::new(tokio::sync::Semaphore::new(10)),
            service: Duration::from_millis(10),
            busy: Default::default(),
            most_busy: Default::default(),
        };
        let metrics = Arc::new(Metrics::new());
        let settings =
            ConcurrencySettings::from_policy(Some(&AdaptiveConcurrency::default())).expect("on");
        let limiter = Limiter::new(
            settings,
            metrics.upstream("inbound", "default", "app").concurrency(),
        );
        let info = Arc::new(UpstreamInfo {
            name: Arc::from("app"),
            namespace: Arc::from("shop"),
            metrics: Arc::new(metrics.upstream("inbound", "default", "app")),
            stats: Default::default(),
        });
        let layer: &'static Concurrency<App> = Box::leak(Box::new(Concurrency::new(
            info,
            Some(limiter.clone()),
            Limited::Inbound(Arc::from("shop/orders")),
            app,
        )));
        let routes = Box::leak(Box::new(super::super::testing::routes("")));
        (layer, limiter, routes.default_route())
    }

    #[tokio::test(start_paused = true)]
    async fn at_three_times_its_capacity_an_app_serves_the_critical_and_sheds_the_sheddable() {
        let (layer, limiter, route) = app_behind_limit();
        let [sheddable, sheddable_plus, critical, _] = offer(layer, route, 3000, 5, mixed).await;
        assert!(critical.ratio() >= 0.99, "critical {}", critical.ratio());
        assert!(sheddable.ratio() <= 0.05, "sheddable {}", sheddable.ratio());
        let served = critical.served.len() + sheddable_plus.served.len() + sheddable.served.len();
        assert!(
            served as f64 >= 0.9 * 5000.0,
            "goodput: {served} of the app's 5,000 in 5 s"
        );
        let slowest = quantile(&critical.served, 1.0);
        assert!(
            slowest <= Duration::from_millis(100),
            "critical requests wait little: {slowest:?}"
        );
        let (limit, in_flight, queued) = limiter.snapshot();
        assert!(
            (8..=40).contains(&limit),
            "the limit found the app's 10 workers: {limit}"
        );
        assert_eq!((in_flight, queued), (0, [0; 4]));

        // The spike is over: an update interval later (a tier is shed for an interval after
        // the last refusal above it), at half its capacity every request is served again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let calm = offer(layer, route, 500, 3, mixed).await;
        for (tier, t) in Criticality::ALL.iter().zip(&calm) {
            assert!(t.refused.is_empty(), "{tier}: {} refused", t.refused.len());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn under_sustained_overload_the_queue_stays_short() {
        // Twice what the app can do, every request sheddable-plus: no tier to shed first, so
        // the queue must not grow to maxQueueWait (500ms) in front of every request served.
        sustained_overload(Criticality::SheddablePlus).await;
    }

    #[tokio::test(start_paused = true)]
    async fn critical_requests_alone_past_capacity_wait_briefly_too() {
        // Critical requests alone twice what the app can do: the limit is settled at the
        // app's capacity, so their queue stands too, and they are served in about the app's
        // time or refused, not after maxQueueWait.
        sustained_overload(Criticality::Critical).await;
    }

    async fn sustained_overload(tier: Criticality) {
        let (layer, _, route) = app_behind_limit();
        // It ran at half its capacity before: the limit has its baseline; then a second of
        // the overload brought the limit down from where it started (20) to the app's
        // capacity and it settled there (until then a critical request waits its turn).
        offer(layer, route, 500, 1, |_| Criticality::SheddablePlus).await;
        let mix: fn(u32) -> Criticality = match tier {
            Criticality::Critical => |_| Criticality::Critical,
            _ => |_| Criticality::SheddablePlus,
        };
        offer(layer, route, 2000, 1, mix).await;
        let tallies = offer(layer, route, 2000, 5, mix).await;
        let tier = &tallies[tier.index()];
        assert!(
            tier.served.len() as f64 >= 0.9 * 5000.0,
            "goodput: {} of the app's 5,000 in 5 s",
            tier.served.len()
        );
        // Served: the app's 10 ms, what the limit queues inside it, and a few ms in front —
        // but for the start of the overload, a burst as far as the queue can tell, which waits
        // up to the 100 requests it holds.
        let p95 = quantile(&tier.served, 0.95);
        assert!(p95 <= Duration::from_millis(30), "served p95 {p95:?}");
        let slowest = quantile(&tier.served, 1.0);
        assert!(slowest <= Duration::from_millis(200), "slowest {slowest:?}");
        let p99 = quantile(&tier.refused, 0.99);
        assert!(p99 <= Duration::from_millis(5), "refused p99 {p99:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn past_capacity_a_refusal_comes_at_once_not_after_waiting() {
        // From the app's capacity to three times it, the mixed tiers: whoever is refused is
        // refused on arrival — a caller told to go away is told at once — while the app stays
        // as busy as before and every critical request is served.
        for rate in [1000, 1500, 2000, 3000] {
            let (layer, _, route) = app_behind_limit();
            offer(layer, route, 500, 1, mixed).await;
            offer(layer, route, rate, 1, mixed).await;
            let tallies = offer(layer, route, rate, 5, mixed).await;
            let served: usize = tallies.iter().map(|t| t.served.len()).sum();
            assert!(
                served as f64 >= 0.9 * 5000.0,
                "{rate}/s: goodput {served} of the app's 5,000 in 5 s"
            );
            assert_eq!(tallies[Criticality::Critical.index()].ratio(), 1.0);
            let refused: Vec<Duration> = tallies.iter().flat_map(|t| t.refused.clone()).collect();
            let waited = refused.iter().filter(|&&d| d > Duration::ZERO).count();
            assert!(
                waited * 100 <= refused.len(),
                "{rate}/s: {waited} of {} refusals came after waiting",
                refused.len()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_a_surges_onset_the_tiers_it_sheds_do_not_wait_in_vain() {
        // Quiet, then at once three and five times what the app can take, the mixed tiers.
        // The critical and sheddable-plus requests alone are more than it can take, so a
        // sheddable request that queued at the onset (nothing had told the queue yet) would
        // wait until maxQueueWait (500ms) for nothing: it is refused as soon as the demand
        // above it shows. At five times, the critical ones alone are all the app can take: the
        // sheddable-plus requests that queued are refused once the limit's first update (100ms)
        // shows how fast slots really free up.
        for (rate, sheddable_plus_within) in [(3000, 20), (5000, 120)] {
            let (layer, _, route) = app_behind_limit();
            offer(layer, route, 500, 1, mixed).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let [sheddable, sheddable_plus, critical, _] =
                offer(layer, route, rate, 1, mixed).await;
            assert_eq!(critical.ratio(), 1.0, "{rate}/s");
            let slowest = quantile(&sheddable.refused, 1.0);
            assert!(slowest <= Duration::from_millis(5), "{rate}/s: {slowest:?}");
            let slowest = quantile(&sheddable_plus.refused, 1.0);
            assert!(
                slowest <= Duration::from_millis(sheddable_plus_within),
                "{rate}/s: {slowest:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn in_a_standing_queue_the_next_in_line_joins_while_the_queue_moves() {
        // A limit of 1 at 10ms: a slot frees up every 10ms, 100 a second.
        let l = limiter(1, 10);
        probed(&l).await;
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1000.0).round() as u64);
        let mut s = l.lock();
        let start = Instant::now();
        let later = start + Duration::from_millis(100);
        s.grants.since = start;
        s.grants.last_secs = 1.0;
        // 60 critical requests a second arrive.
        s.grants.came[Criticality::Critical.index()] = 6;
        // In a burst a sheddable-plus newcomer waits for a slot those leave it: 1/(100 - 60) s.
        assert_eq!(
            ms(predicted_wait(&s, Criticality::SheddablePlus, later, false)),
            Some(25)
        );
        // In a standing queue, next in line, it waits for the next slot: it joins
        // (standingQueueWait is 20ms here) and keeps the slot busy when it frees up.
        assert_eq!(
            ms(predicted_wait(&s, Criticality::SheddablePlus, later, true)),
            Some(10)
        );
        // Behind a critical waiter, the slot after.
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(
            s.queue.offer(Criticality::Critical, Waiter { tx }),
            Offered::Queued
        ));
        assert_eq!(
            ms(predicted_wait(&s, Criticality::SheddablePlus, later, true)),
            Some(20)
        );
        // Critical requests arriving as fast as slots free up: its queue does not move.
        s.grants.came[Criticality::Critical.index()] = 10;
        for standing in [false, true] {
            let wait = predicted_wait(&s, Criticality::SheddablePlus, later, standing);
            assert_eq!(wait, Some(Duration::MAX));
        }
    }
}
