//! What every layer of an upstream's stack is: a [`Call`] that takes a request and the
//! request's context ([`Cx`]) and returns its response. The context carries what the layers
//! above decided — the route selected where the request entered the stack, the deadlines, the
//! authority to send it with — and what they share across attempts ([`CallState`]), so no
//! layer looks anything up again and nothing travels in request extensions.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use tokio::time::Instant;

use super::routes::RouteConfig;
use crate::body::Body;
use crate::errors::ProxyError;
use crate::health::stats::UpstreamStats;
use crate::metrics::UpstreamMetrics;
use crate::priority::Criticality;
use crate::trace::RequestSpan;

pub type Req = Request<Body>;
pub type Rsp = Response<Body>;

/// One layer of an upstream's stack, called by shared reference. A stack is built once per
/// policy version and shared by every request to the upstream, so a call neither clones the
/// stack nor boxes a future: each layer's future is nested in the one above it, and a request
/// runs as one state machine.
pub trait Call: Send + Sync + 'static {
    fn call<'a>(
        &'a self,
        req: Req,
        cx: Cx<'a>,
    ) -> impl Future<Output = Result<Rsp, ProxyError>> + Send + 'a;
}

impl<T: Call> Call for Arc<T> {
    fn call<'a>(
        &'a self,
        req: Req,
        cx: Cx<'a>,
    ) -> impl Future<Output = Result<Rsp, ProxyError>> + Send + 'a {
        T::call(self, req, cx)
    }
}

/// What one request carries down an upstream's stack beside the request itself. Layers pass
/// it on, changed where they decide something (a deadline, a failover target's route).
#[derive(Debug, Clone, Copy)]
pub struct Cx<'a> {
    /// The request's route within the upstream (`spec.routes`, or the upstream's own settings).
    pub route: &'a RouteConfig,
    /// Whether the request is gRPC: errors are answered in kind, deadlines sent as
    /// `grpc-timeout`.
    pub grpc: bool,
    /// The authority the request goes out with: the caller's, or a failover target's name.
    pub authority: &'a Authority,
    /// What the request's attempts share.
    pub state: &'a CallState,
    /// The overall deadline, once the deadline layer set one.
    pub deadline: Option<Instant>,
    /// The current attempt's deadline, once the per-try layer set one.
    pub attempt: Option<AttemptDeadline>,
    /// How much the request matters: what it is shed and queued by.
    pub criticality: Criticality,
}

/// The deadline of the current attempt and the per-try limit it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptDeadline {
    pub at: Instant,
    pub limit: Duration,
}

/// What the layers of one request share across its attempts: how many were made and which
/// endpoints they went to (the last few, so a retry goes elsewhere when it can), where the
/// request came from, and its span when it is traced.
#[derive(Debug, Default)]
pub struct CallState {
    attempts: AtomicU32,
    tried: Mutex<Tried>,
    /// The address of the connection the request came on.
    client: Option<std::net::IpAddr>,
    /// The request's span: sampled, with a collector configured (boxed: most requests have
    /// none, and the state lives in every request's future).
    trace: Option<Box<RequestSpan>>,
}

/// The endpoints of the last [`TRIED`] attempts, without allocating.
#[derive(Debug, Default)]
struct Tried {
    endpoints: [Option<SocketAddr>; TRIED],
    next: usize,
}

/// How many tried endpoints a request remembers: more than any sensible `maxAttempts` needs to
/// spread its retries.
const TRIED: usize = 8;

impl CallState {
    /// The state of a request that came on a connection from `client`.
    pub fn from_client(client: std::net::IpAddr) -> CallState {
        CallState {
            client: Some(client),
            ..CallState::default()
        }
    }

    /// With the request's span: its attempts' spans go under it, the layers' decisions are its
    /// events.
    pub fn with_trace(mut self, trace: Option<Box<RequestSpan>>) -> CallState {
        self.trace = trace;
        self
    }

    /// The request's span, when it is traced.
    pub fn trace(&self) -> Option<&RequestSpan> {
        self.trace.as_deref()
    }

    /// The request's span, to end once its response has.
    pub fn into_trace(self) -> Option<Box<RequestSpan>> {
        self.trace
    }

    /// The endpoint the last attempt went to.
    pub fn last_endpoint(&self) -> Option<SocketAddr> {
        let tried = self.tried.lock().ok()?;
        let last = tried.next.checked_sub(1)? % TRIED;
        tried.endpoints[last]
    }

    /// The address of the connection the request came on.
    pub fn client(&self) -> Option<std::net::IpAddr> {
        self.client
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// An attempt starts on `endpoint`.
    pub fn attempt_started(&self, endpoint: SocketAddr) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut tried) = self.tried.lock() {
            let slot = tried.next % TRIED;
            tried.endpoints[slot] = Some(endpoint);
            tried.next += 1;
        }
    }

    /// Whether an earlier attempt of this request went to `endpoint`.
    pub fn tried(&self, endpoint: SocketAddr) -> bool {
        self.tried
            .lock()
            .map(|t| t.endpoints.contains(&Some(endpoint)))
            .unwrap_or(false)
    }

    /// Whether an attempt was made already (the next one is a retry or a failover).
    pub fn retrying(&self) -> bool {
        self.attempts() > 0
    }
}

/// What every layer of an upstream's stack knows of it: its name, metric handles and health
/// counters.
#[derive(Debug)]
pub struct UpstreamInfo {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub metrics: Arc<UpstreamMetrics>,
    /// What the next health report says of it.
    pub stats: Arc<UpstreamStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_endpoints_are_remembered_without_allocating() {
        let state = CallState::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert!(!state.retrying() && !state.tried(a));
        assert_eq!(state.last_endpoint(), None);
        state.attempt_started(a);
        assert!(state.retrying() && state.tried(a) && !state.tried(b));
        assert_eq!(state.last_endpoint(), Some(a));
        for _ in 0..TRIED {
            state.attempt_started(b);
        }
        assert!(!state.tried(a), "only the last attempts are remembered");
        assert_eq!(state.last_endpoint(), Some(b));
        assert_eq!(state.attempts(), 1 + TRIED as u32);
    }
}
