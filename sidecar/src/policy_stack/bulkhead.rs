//! The bulkhead (`limits`): at most `maxConcurrent` requests in flight to an upstream and
//! `maxPending` waiting for a slot; past that a request is refused at once (503 /
//! RESOURCE_EXHAUSTED). A slot is held until the response body ends, because a streaming
//! response occupies the upstream as long as it streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Semaphore;

use super::{AttemptDeadline, Call, Req, Rsp, Stage};
use crate::errors::ProxyError;

/// The limits of one upstream and their counters.
#[derive(Debug)]
pub struct Bulkhead {
    slots: Arc<Semaphore>,
    pending: AtomicU32,
    pub max_concurrent: u32,
    pub max_pending: u32,
}

impl Bulkhead {
    pub fn new(max_concurrent: u32, max_pending: u32) -> Bulkhead {
        Bulkhead {
            slots: Arc::new(Semaphore::new(max_concurrent as usize)),
            pending: AtomicU32::new(0),
            max_concurrent,
            max_pending,
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.max_concurrent
            .saturating_sub(u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX))
    }
}

/// Counts a waiting request for as long as it waits.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks the bulkhead stage in [`Stage`](super::Stage).
#[derive(Debug, Clone, Copy)]
pub struct BulkheadStage;

impl<S: Call> Call for Stage<BulkheadStage, S> {
    async fn call(&self, req: Req) -> Result<Rsp, ProxyError> {
        let core = &self.core;
        let Some(bulkhead) = &core.bulkhead else {
            return self.inner.call(req).await;
        };
        let full = || {
            core.metrics.bulkhead_rejections.inc();
            ProxyError::BulkheadFull {
                upstream: core.name.to_string(),
                max_concurrent: bulkhead.max_concurrent,
                max_pending: bulkhead.max_pending,
            }
        };
        // The fast path: a free slot, no waiting.
        let permit = match bulkhead.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if bulkhead.pending.fetch_add(1, Ordering::Relaxed) >= bulkhead.max_pending {
                    bulkhead.pending.fetch_sub(1, Ordering::Relaxed);
                    return Err(full());
                }
                let _waiting = Waiting(&bulkhead.pending);
                let acquire = bulkhead.slots.clone().acquire_owned();
                let permit = match req.extensions().get::<AttemptDeadline>().copied() {
                    Some(d) => match tokio::time::timeout_at(d.at, acquire).await {
                        Ok(p) => p,
                        Err(_) => {
                            return Err(ProxyError::AttemptTimeout {
                                upstream: core.name.to_string(),
                                timeout: d.limit,
                            });
                        }
                    },
                    None => acquire.await,
                };
                permit.map_err(|_| full())?
            }
        };
        let rsp = self.inner.call(req).await?;
        Ok(rsp.map(|b| b.guarded(permit)))
    }
}
