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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bulwark_proto::policy::OutlierDetection;

    use super::outlier::OutlierConfig;
    use super::*;

    fn addrs() -> [SocketAddr; 2] {
        [
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ]
    }

    fn balancer(outlier: bool) -> Balancer {
        let [a, b] = addrs();
        let endpoints = EndpointSet::fixed(&[a, b]);
        let outlier = outlier.then(|| {
            let cfg = OutlierConfig::from_policy(Some(&OutlierDetection {
                consecutive_failures: Some(1),
                base_ejection: None,
                max_ejected_percent: Some(100),
            }))
            .unwrap();
            Arc::new(Mutex::new(OutlierDetector::new(cfg, [a, b])))
        });
        Balancer::new(Arc::from("echo"), endpoints, outlier)
    }

    const WAIT: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_retry_goes_to_an_endpoint_not_tried_yet() {
        let b = balancer(false);
        let [first, second] = addrs();
        for _ in 0..50 {
            let picked = b.pick(WAIT, |a| a == first, true).await.unwrap();
            assert_eq!(picked.addr, second);
        }
        // Once every endpoint was tried, any will do.
        let picked = b.pick(WAIT, |_| true, true).await.unwrap();
        assert!(addrs().contains(&picked.addr));
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_are_skipped_until_all_are() {
        let b = balancer(true);
        let [first, second] = addrs();
        let ejection = b.record(first, true).expect("one failure ejects");
        assert_eq!(ejection.addr, first);
        for _ in 0..50 {
            assert_eq!(b.pick(WAIT, |_| false, false).await.unwrap().addr, second);
        }
        // Every endpoint ejected: panic mode balances over all of them.
        assert!(b.record(second, true).is_some());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            seen.insert(b.pick(WAIT, |_| false, false).await.unwrap().addr);
        }
        assert_eq!(seen.len(), 2);
        // A success does not eject.
        assert!(balancer(true).record(first, false).is_none());
    }

    #[tokio::test]
    async fn a_dns_name_resolves_to_its_addresses() {
        let set = EndpointSet::dns("localhost:4242", Duration::from_secs(60));
        let endpoints = set.ready(Duration::from_secs(5)).await.unwrap();
        assert!(!endpoints.is_empty());
        assert!(
            endpoints
                .iter()
                .all(|e| e.addr.port() == 4242 && e.addr.ip().is_loopback())
        );
    }
}
