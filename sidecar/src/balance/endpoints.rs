//! Where an upstream's endpoints come from: a static list, or a DNS name resolved again every
//! refresh interval in a background task that ends when the upstream is dropped. Endpoints that
//! survive a re-resolution keep their connections and counters.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::upstream::Endpoint;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolution {
    Pending,
    Resolved,
    Failed(String),
}

/// The current endpoints of one upstream.
pub struct EndpointSet {
    current: ArcSwap<Vec<Arc<Endpoint>>>,
    resolution: watch::Sender<Resolution>,
    describe: String,
}

impl std::fmt::Debug for EndpointSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSet")
            .field("source", &self.describe)
            .field("endpoints", &self.current.load().len())
            .finish()
    }
}

impl EndpointSet {
    /// A fixed list of addresses.
    pub fn fixed(addrs: &[SocketAddr]) -> Arc<EndpointSet> {
        let endpoints = addrs.iter().map(|a| Endpoint::new(*a)).collect();
        Arc::new(EndpointSet {
            current: ArcSwap::from_pointee(endpoints),
            resolution: watch::Sender::new(Resolution::Resolved),
            describe: format!("static {addrs:?}"),
        })
    }

    /// `host:port` resolved now and every `refresh`, in a task that stops with the set.
    pub fn dns(target: &str, refresh: Duration) -> Arc<EndpointSet> {
        let set = Arc::new(EndpointSet {
            current: ArcSwap::from_pointee(Vec::new()),
            resolution: watch::Sender::new(Resolution::Pending),
            describe: format!("dns {target}"),
        });
        tokio::spawn(resolve_forever(
            Arc::downgrade(&set),
            target.to_string(),
            refresh,
        ));
        set
    }

    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.current.load_full()
    }

    /// The endpoints, waiting up to `wait` for the first DNS answer when there are none yet;
    /// `Err` says why there are none.
    pub async fn ready(&self, wait: Duration) -> Result<Arc<Vec<Arc<Endpoint>>>, String> {
        let current = self.current.load_full();
        if !current.is_empty() {
            return Ok(current);
        }
        let mut rx = self.resolution.subscribe();
        let settled = tokio::time::timeout(wait, rx.wait_for(|r| *r != Resolution::Pending)).await;
        let current = self.current.load_full();
        if !current.is_empty() {
            return Ok(current);
        }
        Err(match (settled, &*self.resolution.borrow()) {
            (_, Resolution::Failed(reason)) => reason.clone(),
            (Err(_), _) => format!("{} has not resolved yet", self.describe),
            _ => format!("{} resolved to no addresses", self.describe),
        })
    }

    fn update(&self, addrs: Vec<SocketAddr>) {
        let old = self.current.load();
        let next: Vec<Arc<Endpoint>> = addrs
            .into_iter()
            .map(|a| {
                old.iter()
                    .find(|e| e.addr == a)
                    .cloned()
                    .unwrap_or_else(|| Endpoint::new(a))
            })
            .collect();
        let changed =
            next.len() != old.len() || next.iter().zip(old.iter()).any(|(a, b)| a.addr != b.addr);
        if changed {
            tracing::info!(source = %self.describe, endpoints = ?next.iter().map(|e| e.addr).collect::<Vec<_>>(), "endpoints changed");
            self.current.store(Arc::new(next));
        }
        self.resolution.send_replace(Resolution::Resolved);
    }

    fn fail(&self, reason: String) {
        // Keep serving the last good addresses; report the failure only when there are none.
        tracing::warn!(source = %self.describe, %reason, "DNS resolution failed");
        if self.current.load().is_empty() {
            self.resolution.send_replace(Resolution::Failed(reason));
        }
    }
}

async fn resolve_forever(set: Weak<EndpointSet>, target: String, refresh: Duration) {
    loop {
        let result = tokio::net::lookup_host(target.as_str()).await;
        let Some(live) = set.upgrade() else { return };
        match result {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                if addrs.is_empty() {
                    live.fail(format!("DNS lookup of {target} returned no addresses"));
                } else {
                    live.update(addrs);
                }
            }
            Err(e) => live.fail(format!("DNS lookup of {target} failed: {e}")),
        }
        drop(live);
        tokio::time::sleep(refresh).await;
    }
}
