//! The bulkhead (`limits`, or `spec.inbound.maxConcurrent` for the app): at most
//! `maxConcurrent` requests in flight and `maxPending` waiting for a slot; past that a request
//! is refused at once (503 / RESOURCE_EXHAUSTED). A slot is held until the response body ends,
//! because a streaming response occupies the upstream as long as it streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Semaphore;

use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use crate::errors::ProxyError;
use crate::headers::is_kubelet_probe;

/// The slots of one upstream and their counters; kept across policy versions while the limits
/// do not change.
#[derive(Debug)]
pub struct Slots {
    slots: Arc<Semaphore>,
    pending: AtomicU32,
    pub max_concurrent: u32,
    pub max_pending: u32,
}

impl Slots {
    pub fn new(max_concurrent: u32, max_pending: u32) -> Slots {
        Slots {
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

/// Whose limit a bulkhead is, for the error a refused request gets.
#[derive(Debug, Clone)]
pub enum Limited {
    /// An upstream's `limits`.
    Upstream,
    /// The app's `spec.inbound.maxConcurrent`; `namespace/service`.
    Inbound(Arc<str>),
}

/// The bulkhead layer over `S`.
pub struct Bulkhead<S> {
    info: Arc<UpstreamInfo>,
    /// `None`: no limit.
    slots: Option<Arc<Slots>>,
    limited: Limited,
    inner: S,
}

impl<S> Bulkhead<S> {
    pub fn new(
        info: Arc<UpstreamInfo>,
        slots: Option<Arc<Slots>>,
        limited: Limited,
        inner: S,
    ) -> Self {
        Bulkhead {
            info,
            slots,
            limited,
            inner,
        }
    }

    fn full(&self, slots: &Slots) -> ProxyError {
        self.info.metrics.bulkhead_rejections.inc();
        match &self.limited {
            Limited::Upstream => ProxyError::BulkheadFull {
                upstream: self.info.name.to_string(),
                max_concurrent: slots.max_concurrent,
                max_pending: slots.max_pending,
            },
            Limited::Inbound(service) => ProxyError::InboundLimit {
                service: service.to_string(),
                max_concurrent: slots.max_concurrent,
            },
        }
    }
}

impl<S: Call> Call for Bulkhead<S> {
    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let Some(slots) = &self.slots else {
            return self.inner.call(req, cx).await;
        };
        if matches!(self.limited, Limited::Inbound(_)) && is_kubelet_probe(req.headers()) {
            return self.inner.call(req, cx).await;
        }
        // The fast path: a free slot, no waiting.
        let permit = match slots.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if slots.pending.fetch_add(1, Ordering::Relaxed) >= slots.max_pending {
                    slots.pending.fetch_sub(1, Ordering::Relaxed);
                    return Err(self.full(slots));
                }
                let _waiting = Waiting(&slots.pending);
                let acquire = slots.slots.clone().acquire_owned();
                let permit = match cx.attempt {
                    Some(d) => match tokio::time::timeout_at(d.at, acquire).await {
                        Ok(p) => p,
                        Err(_) => {
                            return Err(ProxyError::AttemptTimeout {
                                upstream: self.info.name.to_string(),
                                timeout: d.limit,
                            });
                        }
                    },
                    None => acquire.await,
                };
                permit.map_err(|_| self.full(slots))?
            }
        };
        let rsp = self.inner.call(req, cx).await?;
        Ok(rsp.map(|b| b.guarded(permit)))
    }
}
