//! Balancing an upstream's requests over its endpoints: where the endpoints come from
//! ([`endpoints`]: static or DNS), which of them are out of rotation ([`outlier`] ejection), and
//! which one an attempt goes to ([`p2c`]). [`Balancer`] puts the three together for one
//! upstream; the policy stack's bottom layer asks it for an endpoint per attempt and tells it
//! how the attempt went.

pub mod endpoints;
pub mod outlier;
pub mod p2c;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::upstream::Endpoint;
use endpoints::EndpointSet;
use outlier::{Ejection, OutlierDetector};

/// One upstream's endpoints and outlier detector.
pub struct Balancer {
    /// The upstream's name, for logs.
    name: Arc<str>,
    pub endpoints: Arc<EndpointSet>,
    pub outlier: Option<Arc<Mutex<OutlierDetector>>>,
    /// Identity of the endpoint list the outlier detector last saw.
    outlier_endpoints: AtomicUsize,
    /// Whether the last pick was in panic mode (every endpoint ejected).
    outlier_panic: AtomicBool,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    pub fn new(
        name: Arc<str>,
        endpoints: Arc<EndpointSet>,
        outlier: Option<Arc<Mutex<OutlierDetector>>>,
    ) -> Balancer {
        Balancer {
            name,
            endpoints,
            outlier,
            outlier_endpoints: AtomicUsize::new(0),
            outlier_panic: AtomicBool::new(false),
        }
    }

    /// Picks an endpoint for an attempt, waiting up to `wait` for the first DNS answer.
    /// Endpoints ejected as outliers are skipped (unless all are: panic mode); endpoints this
    /// request already `tried` are avoided while others remain. `Err` says why there is none.
    pub async fn pick(
        &self,
        wait: Duration,
        tried: impl Fn(SocketAddr) -> bool,
        retrying: bool,
    ) -> Result<Arc<Endpoint>, String> {
        let all = self.endpoints.ready(wait).await?;
        if self.outlier.is_none() && !retrying {
            return p2c::p2c(&all, |_| true)
                .cloned()
                .ok_or_else(|| "no endpoints".to_string());
        }
        let now = Instant::now();
        let mut detector = self.outlier.as_deref().and_then(|o| o.lock().ok());
        if let Some(d) = detector.as_mut() {
            // Resync the detector only when discovery replaced the endpoint list.
            let id = Arc::as_ptr(&all) as usize;
            if self.outlier_endpoints.swap(id, Ordering::Relaxed) != id {
                d.set_endpoints(all.iter().map(|e| e.addr));
            }
        }
        let ejected = |e: &Endpoint| detector.as_ref().is_some_and(|d| d.is_ejected(e.addr, now));
        // Widen the choice step by step: healthy and untried, healthy, then everything.
        let steps: [&dyn Fn(&Endpoint) -> bool; 3] = [
            &|e| !ejected(e) && !tried(e.addr),
            &|e| !ejected(e),
            &|_| true,
        ];
        for (step, eligible) in steps.iter().enumerate() {
            let Some(chosen) = p2c::p2c(&all, eligible) else {
                continue;
            };
            let panic = step == 2 && detector.is_some();
            if self.outlier_panic.swap(panic, Ordering::Relaxed) != panic && panic {
                tracing::warn!(upstream = %self.name, "every endpoint is ejected: balancing over all of them (panic mode)");
            }
            return Ok(chosen.clone());
        }
        Err("no endpoints".to_string())
    }

    /// Records an attempt's outcome on `endpoint` for outlier detection; returns the ejection
    /// it caused, if any.
    pub fn record(&self, endpoint: SocketAddr, failed: bool) -> Option<Ejection> {
        let outlier = self.outlier.as_ref()?;
        let ejection = outlier
            .lock()
            .ok()?
            .record(endpoint, failed, Instant::now());
        if let Some(e) = &ejection {
            tracing::info!(upstream = %self.name, endpoint = %e.addr, times = e.times, reason = %e.reason, "endpoint ejected as an outlier");
        }
        ejection
    }
}
