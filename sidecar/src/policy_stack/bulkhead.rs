//! The bulkhead (`limits`): at most `maxConcurrent` requests in flight to an upstream and
//! `maxPending` waiting for a slot; past that a request is refused at once (503 /
//! RESOURCE_EXHAUSTED). A slot is held until the response body ends, because a streaming
//! response occupies the upstream as long as it streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tower::Service;

use super::{AttemptDeadline, Req, ResponseFuture, Rsp, Stage};
use crate::errors::ProxyError;
use crate::upstream::UpstreamCore;

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

impl<S> Service<Req> for Stage<BulkheadStage, S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(bulkhead) = self.core.bulkhead.clone() else {
            return Box::pin(self.inner.call(req));
        };
        let full = |core: &UpstreamCore, b: &Bulkhead| {
            core.metrics.bulkhead_rejections.inc();
            ProxyError::BulkheadFull {
                upstream: core.name.to_string(),
                max_concurrent: b.max_concurrent,
                max_pending: b.max_pending,
            }
        };
        // The fast path: a free slot, no waiting.
        if let Ok(permit) = bulkhead.slots.clone().try_acquire_owned() {
            let call = self.inner.call(req);
            return Box::pin(async move {
                let rsp = call.await?;
                Ok(rsp.map(|b| b.guarded(permit)))
            });
        }
        if bulkhead.pending.fetch_add(1, Ordering::Relaxed) >= bulkhead.max_pending {
            bulkhead.pending.fetch_sub(1, Ordering::Relaxed);
            return Box::pin(std::future::ready(Err(full(&self.core, &bulkhead))));
        }
        let core = self.core.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let permit = {
                let _waiting = Waiting(&bulkhead.pending);
                let acquire = bulkhead.slots.clone().acquire_owned();
                match req.extensions().get::<AttemptDeadline>().copied() {
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
                }
            };
            let permit = permit.map_err(|_| full(&core, &bulkhead))?;
            let rsp = inner.call(req).await?;
            Ok(rsp.map(|b| b.guarded(permit)))
        })
    }
}
