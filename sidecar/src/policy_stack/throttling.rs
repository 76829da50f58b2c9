//! Client-side throttling (`throttling` of an UpstreamPolicy): while the upstream refuses many
//! of this sidecar's requests for overload, the sidecar refuses some itself, with probability
//! `max(0, (requests − multiplier × accepts) / (requests + 1))` over the last `window`
//! ([`Throttle`]), so that an overloaded callee stops receiving what it would refuse anyway.
//! Above the retry layer: a request counts once however many attempts it makes (retries are not
//! new demand), and it counts as accepted when its final answer came from the upstream and was
//! not a refusal for overload (429, 503, gRPC `RESOURCE_EXHAUSTED` or `UNAVAILABLE`). A request
//! refused here gets 503 / `UNAVAILABLE`, `x-bulwark-error: throttled`; failover, when set,
//! takes over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_proto::policy::{GrpcCode, Throttling, defaults};
use tokio::time::Instant;

use super::layer::{Call, Cx, Req, Rsp, UpstreamInfo};
use super::outcome::{Outcome, classify};
use crate::errors::ProxyError;
use crate::overload::throttle::Throttle;

/// What a `throttling` block compiles to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleSettings {
    pub multiplier: f64,
    pub window: Duration,
}

impl ThrottleSettings {
    pub fn from_policy(t: &Throttling) -> ThrottleSettings {
        ThrottleSettings {
            multiplier: t.multiplier.unwrap_or(defaults::THROTTLING_MULTIPLIER),
            window: t
                .window
                .as_ref()
                .map_or(defaults::THROTTLING_WINDOW, |d| d.get()),
        }
    }
}

/// One upstream's throttle; kept across policy versions while its settings do not change.
#[derive(Debug)]
pub struct Throttler {
    settings: ThrottleSettings,
    throttle: Mutex<Throttle>,
}

impl Throttler {
    pub fn new(settings: ThrottleSettings) -> Arc<Throttler> {
        Arc::new(Throttler {
            throttle: Mutex::new(Throttle::new(
                settings.multiplier,
                settings.window,
                Instant::now(),
            )),
            settings,
        })
    }

    pub fn settings(&self) -> &ThrottleSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(probability)` when this request is refused here.
    fn refuse(&self, unit: f64) -> Option<f64> {
        let now = Instant::now();
        let mut t = self.lock();
        let p = t.reject_probability(now);
        t.refuse(now, unit).then_some(p)
    }

    fn record(&self, accepted: bool) {
        self.lock().record(Instant::now(), accepted);
    }
}

/// Whether the upstream accepted the request: it answered, and not with a refusal for
/// overload.
pub fn accepted(result: &Result<Rsp, ProxyError>) -> bool {
    match classify(result) {
        Some(Outcome::Response { status, grpc }) => {
            !matches!(status, 429 | 503)
                && !matches!(
                    grpc,
                    Some(GrpcCode::ResourceExhausted | GrpcCode::Unavailable)
                )
        }
        _ => false,
    }
}

/// The throttling layer over `S`.
pub struct Throttled<S> {
    info: Arc<UpstreamInfo>,
    /// `None`: no throttling.
    throttler: Option<Arc<Throttler>>,
    inner: S,
}

impl<S> Throttled<S> {
    pub fn new(info: Arc<UpstreamInfo>, throttler: Option<Arc<Throttler>>, inner: S) -> Self {
        Throttled {
            info,
            throttler,
            inner,
        }
    }
}

impl<S: Call> Call for Throttled<S> {
    async fn call<'a>(&'a self, req: Req, cx: Cx<'a>) -> Result<Rsp, ProxyError> {
        let Some(throttler) = &self.throttler else {
            return self.inner.call(req, cx).await;
        };
        if let Some(probability) = throttler.refuse(fastrand::f64()) {
            self.info.metrics.throttled.inc();
            self.info.stats.overloaded();
            return Err(ProxyError::Throttled {
                upstream: self.info.name.to_string(),
                probability,
            });
        }
        let result = self.inner.call(req, cx).await;
        throttler.record(accepted(&result));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;

    fn answer(status: u16, grpc: Option<&'static str>) -> Result<Rsp, ProxyError> {
        let mut rsp = http::Response::builder().status(status);
        if let Some(code) = grpc {
            rsp = rsp.header("grpc-status", code);
        }
        Ok(rsp.body(Body::Empty).unwrap())
    }

    #[test]
    fn only_an_answer_that_is_no_refusal_for_overload_is_accepted() {
        assert!(accepted(&answer(200, None)));
        assert!(accepted(&answer(500, None)));
        assert!(accepted(&answer(404, None)));
        assert!(accepted(&answer(200, Some("13"))));
        assert!(!accepted(&answer(503, None)));
        assert!(!accepted(&answer(429, None)));
        assert!(!accepted(&answer(200, Some("8"))));
        assert!(!accepted(&answer(200, Some("14"))));
        assert!(!accepted(&Err(ProxyError::AttemptTimeout {
            upstream: "up".into(),
            timeout: Duration::from_secs(1),
        })));
    }
}
