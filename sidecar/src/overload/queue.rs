//! The queue in front of a concurrency limit: bounded, served most critical first and, within a
//! tier, first come first served. When it is full a newcomer takes the place of the newest
//! waiter of a lower tier, which is refused instead; with none lower, the newcomer is refused.
//! So under overload the least critical requests are shed first, and the most recent of them
//! (whose callers have waited least). Pure: waiters are whatever the caller queues (a channel
//! to wake a request, say).

use std::collections::VecDeque;

use crate::priority::Criticality;

#[derive(Debug)]
pub struct TierQueue<T> {
    tiers: [VecDeque<T>; 4],
    len: usize,
    capacity: usize,
}

/// What happened to a waiter offered to the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered<T> {
    Queued,
    /// Queued in the place of this waiter of a lower tier, to be refused.
    QueuedInstead(T),
    /// Not queued: the queue is full of waiters at least as critical. Here it is back.
    Refused(T),
}

impl<T> TierQueue<T> {
    /// A queue of at most `capacity` waiters (0: every waiter is refused).
    pub fn new(capacity: usize) -> TierQueue<T> {
        TierQueue {
            tiers: Default::default(),
            len: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waiters of each tier, least critical first.
    pub fn lengths(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| self.tiers[i].len())
    }

    pub fn offer(&mut self, tier: Criticality, waiter: T) -> Offered<T> {
        if self.len < self.capacity {
            self.tiers[tier.index()].push_back(waiter);
            self.len += 1;
            return Offered::Queued;
        }
        let victim = (0..tier.index()).find(|&t| !self.tiers[t].is_empty());
        match victim.and_then(|t| self.tiers[t].pop_back()) {
            Some(evicted) => {
                self.tiers[tier.index()].push_back(waiter);
                Offered::QueuedInstead(evicted)
            }
            None => Offered::Refused(waiter),
        }
    }

    /// The next waiter to serve: the oldest of the most critical tier.
    pub fn take_next(&mut self) -> Option<(Criticality, T)> {
        let tier = Criticality::ALL
            .into_iter()
            .rev()
            .find(|t| !self.tiers[t.index()].is_empty())?;
        let waiter = self.tiers[tier.index()].pop_front()?;
        self.len -= 1;
        Some((tier, waiter))
    }

    /// Takes every waiter of `tier` and of the tiers below it, handing each to `each`.
    pub fn shed_up_to(&mut self, tier: Criticality, mut each: impl FnMut(T)) {
        for waiters in &mut self.tiers[..=tier.index()] {
            self.len -= waiters.len();
            waiters.drain(..).for_each(&mut each);
        }
    }

    /// Drops the waiters `gone` says are gone (their callers stopped waiting).
    pub fn forget(&mut self, mut gone: impl FnMut(&T) -> bool) {
        for tier in &mut self.tiers {
            tier.retain(|w| !gone(w));
        }
        self.len = self.tiers.iter().map(VecDeque::len).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Criticality::*;

    #[test]
    fn the_most_critical_is_served_first_and_in_order_within_a_tier() {
        let mut q = TierQueue::new(10);
        for (tier, id) in [
            (Sheddable, 1),
            (Critical, 2),
            (SheddablePlus, 3),
            (Critical, 4),
            (CriticalPlus, 5),
        ] {
            assert_eq!(q.offer(tier, id), Offered::Queued);
        }
        let order: Vec<i32> = std::iter::from_fn(|| q.take_next().map(|(_, id)| id)).collect();
        assert_eq!(order, [5, 2, 4, 3, 1]);
        assert!(q.is_empty());
    }

    #[test]
    fn when_full_the_newest_of_the_lowest_tier_gives_way_and_equals_are_refused() {
        let mut q = TierQueue::new(3);
        q.offer(Sheddable, 1);
        q.offer(Sheddable, 2);
        q.offer(Critical, 3);
        // A critical request takes the place of the newest sheddable one.
        assert_eq!(q.offer(Critical, 4), Offered::QueuedInstead(2));
        assert_eq!(q.offer(SheddablePlus, 5), Offered::QueuedInstead(1));
        // Nothing below sheddable-plus is left: another one is refused, so is a sheddable one.
        assert_eq!(q.offer(SheddablePlus, 6), Offered::Refused(6));
        assert_eq!(q.offer(Sheddable, 7), Offered::Refused(7));
        assert_eq!(q.lengths(), [0, 1, 2, 0]);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn waiters_that_left_are_forgotten_and_a_zero_queue_refuses() {
        let mut q = TierQueue::new(4);
        for id in 0..4 {
            q.offer(Critical, id);
        }
        q.forget(|id| id % 2 == 0);
        assert_eq!(q.len(), 2);
        assert_eq!(q.take_next(), Some((Critical, 1)));
        let mut none = TierQueue::new(0);
        assert_eq!(none.offer(CriticalPlus, 1), Offered::Refused(1));
    }

    #[test]
    fn a_tier_and_those_below_it_are_shed_together() {
        let mut q = TierQueue::new(10);
        for (tier, id) in [
            (Sheddable, 1),
            (Critical, 2),
            (SheddablePlus, 3),
            (Sheddable, 4),
        ] {
            q.offer(tier, id);
        }
        let mut shed = Vec::new();
        q.shed_up_to(SheddablePlus, |id| shed.push(id));
        assert_eq!(shed, [1, 4, 3]);
        assert_eq!((q.len(), q.lengths()), (1, [0, 0, 1, 0]));
        assert_eq!(q.take_next(), Some((Critical, 2)));
    }
}
