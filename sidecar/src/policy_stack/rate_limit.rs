//! Local rate limits: `rateLimit` of an UpstreamPolicy (what this sidecar sends the upstream)
//! and `spec.inbound.rateLimit` of the own ServicePolicy (what each caller may send the app,
//! told apart by verified identity, client IP or a header). Token buckets, one per upstream or
//! per caller, each request taking one token — retries and failover attempts below do not. A
//! bucket keeps a reserve for the more critical: a `sheddable` request takes a token only while
//! half the burst is left after it, a `sheddable-plus` one while a quarter is, `critical` and
//! `critical-plus` ones while any is. Past the limit: 429 with `Retry-After` (gRPC
//! `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`), `x-bulwark-error: rate-limited`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_proto::policy::{InboundRateLimit, RateLimit, RateLimitKey, defaults};
use http::HeaderName;
use tokio::time::Instant;

use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use crate::errors::ProxyError;
use crate::headers::{X_BULWARK_PEER_IDENTITY, is_kubelet_probe};
use crate::health::levels::Degradation;
use crate::overload::bucket::TokenBucket;
use crate::priority::Criticality;

/// What a `rateLimit` block compiles to.
#[derive(Debug, Clone, PartialEq)]
pub struct RateSettings {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    /// `None`: one bucket for every request (outbound); else one per caller.
    pub by: Option<CallerKey>,
    /// `meshWide`: `requests` and `burst` are split across the service's reporting pods.
    pub mesh_wide: bool,
}

/// How an inbound limit tells callers apart.
#[derive(Debug, Clone, PartialEq)]
pub enum CallerKey {
    Identity,
    ClientIp,
    Header(HeaderName),
}

impl RateSettings {
    pub fn outbound(r: &RateLimit) -> RateSettings {
        RateSettings::new(r.requests, r.per.as_ref(), r.burst, None, r.mesh_wide)
    }

    pub fn inbound(r: &InboundRateLimit) -> RateSettings {
        let by = match r.by.unwrap_or_default() {
            RateLimitKey::Identity => CallerKey::Identity,
            RateLimitKey::ClientIp => CallerKey::ClientIp,
            RateLimitKey::Header => match r
                .header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            {
                Some(h) => CallerKey::Header(h),
                // Validation requires the header; without one, by address.
                None => CallerKey::ClientIp,
            },
        };
        RateSettings::new(r.requests, r.per.as_ref(), r.burst, Some(by), r.mesh_wide)
    }

    fn new(
        requests: u32,
        per: Option<&bulwark_proto::policy::Duration>,
        burst: Option<u32>,
        by: Option<CallerKey>,
        mesh_wide: Option<bool>,
    ) -> RateSettings {
        RateSettings {
            requests: requests.max(1),
            per: per.map_or(defaults::RATE_LIMIT_PER, |d| d.get()),
            burst: burst.unwrap_or(requests).max(1),
            by,
            mesh_wide: mesh_wide.unwrap_or(false),
        }
    }

    /// This sidecar's share of the rate (tokens a second) and of the burst, when the service
    /// has `pods` reporting pods.
    fn share(&self, pods: u32) -> (f64, f64) {
        let pods = if self.mesh_wide {
            f64::from(pods.max(1))
        } else {
            1.0
        };
        let rate = f64::from(self.requests) / self.per.as_secs_f64().max(1e-3);
        (rate / pods, (f64::from(self.burst) / pods).max(1.0))
    }

    /// Tokens a request of `tier` leaves in a bucket `burst` deep.
    fn reserve(tier: Criticality, burst: f64) -> f64 {
        match tier {
            Criticality::Sheddable => burst / 2.0,
            Criticality::SheddablePlus => burst / 4.0,
            Criticality::Critical | Criticality::CriticalPlus => 0.0,
        }
    }

    /// `100 requests per 1s (burst 200)`, and for a mesh-wide limit this pod's share.
    fn describe(&self, pods: u32) -> String {
        let limit = format!(
            "{} requests per {} (burst {})",
            self.requests,
            bulwark_proto::policy::units::DurationText(self.per),
            self.burst
        );
        if self.mesh_wide {
            format!("{limit} across its {} pods", pods.max(1))
        } else {
            limit
        }
    }
}

/// Callers tracked at most per shard: beyond, buckets that are full again (their caller has
/// been quiet) are dropped first, then any.
const KEYS_PER_SHARD: usize = 1024;
const SHARDS: usize = 16;

/// One shard's buckets, by caller.
type Callers = HashMap<Box<str>, TokenBucket>;

/// The buckets of one limit; kept across policy versions while its settings do not change.
#[derive(Debug)]
pub struct RateLimiter {
    settings: RateSettings,
    single: Mutex<TokenBucket>,
    /// Per caller, sharded so callers seldom wait for each other.
    shards: Box<[Mutex<Callers>]>,
    hasher: RandomState,
}

impl RateLimiter {
    pub fn new(settings: RateSettings) -> Arc<RateLimiter> {
        let now = Instant::now();
        let (rate, _) = settings.share(1);
        Arc::new(RateLimiter {
            single: Mutex::new(TokenBucket::new(rate, settings.burst, now)),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            settings,
        })
    }

    pub fn settings(&self) -> &RateSettings {
        &self.settings
    }

    /// Takes a token for a request of `tier` from `caller`'s bucket (or the one bucket), the
    /// service having `pods` reporting pods.
    fn take(
        &self,
        caller: Option<&str>,
        tier: Criticality,
        pods: u32,
    ) -> Result<(), Option<Duration>> {
        let now = Instant::now();
        let (rate, burst) = self.settings.share(pods);
        let keep = RateSettings::reserve(tier, burst);
        let take = |bucket: &mut TokenBucket| {
            if self.settings.mesh_wide {
                bucket.set(rate, burst, now);
            }
            bucket.take_keeping(now, keep)
        };
        let Some(caller) = caller else {
            let mut bucket = self.single.lock().unwrap_or_else(|e| e.into_inner());
            return take(&mut bucket);
        };
        let shard = self.hasher.hash_one(caller) as usize % SHARDS;
        let mut buckets = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(caller) {
            return take(bucket);
        }
        if buckets.len() >= KEYS_PER_SHARD {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= KEYS_PER_SHARD
                && let Some(any) = buckets.keys().next().cloned()
            {
                buckets.remove(&any);
            }
        }
        let mut bucket = TokenBucket::new(rate, self.settings.burst, now);
        let taken = take(&mut bucket);
        buckets.insert(caller.into(), bucket);
        taken
    }
}

/// The rate limit layer over `S`.
pub struct RateLimited<S> {
    info: Arc<UpstreamInfo>,
    /// `None`: no limit.
    limiter: Option<Arc<RateLimiter>>,
    /// The levels in force: how many pods a mesh-wide limit is split across.
    degradation: Arc<Degradation>,
    inner: S,
}

impl<S> RateLimited<S> {
    pub fn new(
        info: Arc<UpstreamInfo>,
        limiter: Option<Arc<RateLimiter>>,
        degradation: Arc<Degradation>,
        inner: S,
    ) -> Self {
        RateLimited {
            info,
            limiter,
            degradation,
            inner,
        }
    }
}

/// The caller a request comes from, as `by` tells them apart: its verified identity (which
/// admission set in `x-bulwark-peer-identity`), its header value, else its IP address.
fn caller_of(by: &CallerKey, req: &Req, client: Option<IpAddr>) -> String {
    let header = match by {
        CallerKey::Identity => req.headers().get(X_BULWARK_PEER_IDENTITY),
        CallerKey::Header(name) => req.headers().get(name),
        CallerKey::ClientIp => None,
    };
    match (header.and_then(|v| v.to_str().ok()), client) {
        (Some(v), _) => v.to_string(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => "unknown".to_string(),
    }
}

impl<S: Call> Call for RateLimited<S> {
    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let Some(limiter) = &self.limiter else {
            return self.inner.call(req, cx).await;
        };
        let settings = &limiter.settings;
        let caller = match &settings.by {
            Some(_) if is_kubelet_probe(req.headers()) => {
                return self.inner.call(req, cx).await;
            }
            Some(by) => Some(caller_of(by, &req, cx.state.client())),
            None => None,
        };
        let pods = if settings.mesh_wide {
            self.degradation.levels().own_pods()
        } else {
            1
        };
        if let Err(wait) = limiter.take(caller.as_deref(), cx.criticality, pods) {
            self.info.metrics.rate_limited(cx.criticality);
            return Err(ProxyError::RateLimited {
                target: match &caller {
                    None => format!("upstream {:?}", self.info.name.as_ref()),
                    Some(_) => format!("{}/{}", self.info.namespace, self.info.name),
                },
                caller,
                limit: settings.describe(pods),
                retry_after: wait.unwrap_or(settings.per),
            });
        }
        self.inner.call(req, cx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(requests: u32, burst: u32, by: Option<CallerKey>) -> RateSettings {
        RateSettings {
            requests,
            per: Duration::from_secs(1),
            burst,
            by,
            mesh_wide: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_caller_has_its_own_bucket_and_the_less_critical_leave_a_reserve() {
        let limiter = RateLimiter::new(settings(4, 4, Some(CallerKey::Identity)));
        let take = |caller, tier| limiter.take(Some(caller), tier, 1);
        // Sheddable requests leave half the burst: two of four.
        assert!(take("a", Criticality::Sheddable).is_ok());
        assert!(take("a", Criticality::Sheddable).is_ok());
        assert_eq!(
            take("a", Criticality::Sheddable),
            Err(Some(Duration::from_millis(250)))
        );
        // Critical ones may take the rest.
        assert!(take("a", Criticality::Critical).is_ok());
        assert!(take("a", Criticality::CriticalPlus).is_ok());
        assert!(take("a", Criticality::CriticalPlus).is_err());
        // Another caller is not held back by the first.
        assert!(take("b", Criticality::Sheddable).is_ok());
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(take("a", Criticality::Critical).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_mesh_wide_limit_takes_this_pods_share() {
        let limiter = RateLimiter::new(RateSettings {
            mesh_wide: true,
            ..settings(10, 10, None)
        });
        // 5 pods: 2 tokens a second, a burst of 2 here.
        let taken = (0..10)
            .filter(|_| limiter.take(None, Criticality::Critical, 5).is_ok())
            .count();
        assert_eq!(taken, 2);
        assert_eq!(
            limiter.take(None, Criticality::Critical, 5),
            Err(Some(Duration::from_millis(500)))
        );
        // Down to 1 pod: the whole rate from then on (the tokens there are stay).
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.take(None, Criticality::Critical, 1).is_ok());
        tokio::time::advance(Duration::from_secs(1)).await;
        let taken = (0..20)
            .filter(|_| limiter.take(None, Criticality::Critical, 1).is_ok())
            .count();
        assert_eq!(taken, 10);
        assert_eq!(
            limiter.settings().describe(4),
            "10 requests per 1s (burst 10) across its 4 pods"
        );
    }

    #[test]
    fn a_caller_is_its_verified_identity_or_header_else_its_address() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let req = |headers: &[(&'static str, &'static str)]| {
            let mut b = http::Request::get("/");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(crate::body::Body::Empty).unwrap()
        };
        let spiffe = "spiffe://cluster.local/ns/shop/sa/web";
        let key = HeaderName::from_static("x-api-key");
        let with_both = req(&[("x-bulwark-peer-identity", spiffe), ("x-api-key", "k1")]);
        assert_eq!(
            caller_of(&CallerKey::Identity, &with_both, Some(ip)),
            spiffe
        );
        assert_eq!(
            caller_of(&CallerKey::Header(key.clone()), &with_both, Some(ip)),
            "k1"
        );
        assert_eq!(
            caller_of(&CallerKey::ClientIp, &with_both, Some(ip)),
            "10.0.0.7"
        );
        let bare = req(&[]);
        assert_eq!(caller_of(&CallerKey::Identity, &bare, Some(ip)), "10.0.0.7");
        assert_eq!(
            caller_of(&CallerKey::Header(key), &bare, Some(ip)),
            "10.0.0.7"
        );
        assert_eq!(caller_of(&CallerKey::Identity, &bare, None), "unknown");
    }

    #[tokio::test(start_paused = true)]
    async fn callers_beyond_what_a_shard_holds_evict_the_quiet_first() {
        let limiter = RateLimiter::new(settings(1, 1, Some(CallerKey::ClientIp)));
        for i in 0..(KEYS_PER_SHARD * SHARDS * 2) {
            let _ = limiter.take(
                Some(&format!("10.0.{}.{}", i / 256, i % 256)),
                Criticality::Critical,
                1,
            );
        }
        let held: usize = limiter.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= KEYS_PER_SHARD * SHARDS, "{held}");
    }
}
