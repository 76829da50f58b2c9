//! The end of every proxied request: when its response body ends (or is dropped), one access
//! log line and the request metrics are recorded, with the gRPC status if trailers carried one.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bulwark_proto::policy::GrpcCode;
use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderValue, Method, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use super::mtls::PeerIdentity;
use crate::body::{Body, BodyError};
use crate::headers::GRPC_STATUS;
use crate::metrics::{Classification, Ending, ProtocolLabel, UpstreamMetrics};
use crate::overload::Refusal;
use crate::policy_stack::outcome::{ConditionSet, Outcome};
use crate::priority::Criticality;
use crate::state::InFlightGuard;
use crate::trace::{RequestEnd, RequestIds, RequestSpan};

/// What the access log line says about one request.
pub struct Completion {
    pub direction: &'static str,
    pub upstream: Option<Arc<str>>,
    pub metrics: Option<Arc<UpstreamMetrics>>,
    pub protocol: ProtocolLabel,
    pub method: Method,
    pub authority: Option<Authority>,
    pub uri: Uri,
    /// `x-request-id` and `traceparent`.
    pub ids: RequestIds,
    pub started: Instant,
    pub attempts: u32,
    pub status: StatusCode,
    pub grpc_status: Option<HeaderValue>,
    /// What counts as a failure of the upstream's answers (its `failureOn`).
    pub failure_on: Option<Arc<ConditionSet>>,
    /// Whether the request failed, when the sidecar answered it (an error) rather than the
    /// upstream.
    pub failed: Option<bool>,
    pub error: Option<&'static str>,
    /// Why overload protection refused the request, and the request's criticality.
    pub refused: Option<(Refusal, Criticality)>,
    /// The peer's SPIFFE ID: the caller's (inbound mTLS) or the upstream's (outbound mTLS).
    pub peer_identity: Option<Arc<str>>,
    /// The verified caller of an inbound mTLS request.
    pub caller: Option<Arc<PeerIdentity>>,
    /// The endpoint the last attempt went to.
    pub endpoint: Option<SocketAddr>,
    /// The request's span, when it is traced: ended with the response.
    pub span: Option<Box<RequestSpan>>,
    /// Keeps the request counted as in flight until its response ends.
    pub in_flight: InFlightGuard,
}

impl Completion {
    /// How the request ended, for its metrics: `outcome` is how its response body ended.
    fn ending(&self, outcome: &'static str) -> Ending {
        let status = self.status.as_u16();
        let grpc = match self.protocol {
            ProtocolLabel::Grpc => self
                .grpc_status
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .and_then(GrpcCode::from_i32),
            _ => None,
        };
        let failed = self.failed.unwrap_or_else(|| {
            // The upstream's answer, judged as the breaker judges it; one whose body broke
            // off failed whatever its status said.
            outcome == "upstream-error"
                || self.failure_on.as_deref().map_or(status >= 500, |f| {
                    f.matches(&Outcome::Response { status, grpc })
                })
        });
        Ending {
            protocol: self.protocol,
            status,
            grpc,
            classification: if failed {
                Classification::Failure
            } else {
                Classification::Success
            },
        }
    }

    fn finish(mut self, outcome: &'static str) {
        let elapsed = self.started.elapsed();
        let ending = self.ending(outcome);
        if let Some(m) = &self.metrics {
            let caller = self.caller.as_ref().map(|c| &c.counters);
            m.record(caller, ending, elapsed);
        }
        if let Some(span) = self.span.take() {
            span.end(RequestEnd {
                upstream: self.upstream.as_deref(),
                status: self.status.as_u16(),
                grpc_status: self.grpc_status.as_ref().and_then(|v| v.to_str().ok()),
                attempts: self.attempts,
                failed: ending.classification == Classification::Failure,
                error: self
                    .error
                    .or((outcome == "upstream-error").then_some("upstream-error")),
                refused: self.refused.map(|(r, _)| r.as_str()),
                endpoint: self.endpoint,
            });
        }
        let s = |v: &Option<HeaderValue>| {
            v.as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        tracing::info!(
            target: "bulwark::access",
            direction = self.direction,
            upstream = self.upstream.as_deref().unwrap_or(""),
            method = %self.method,
            authority = self.authority.as_ref().map_or("", Authority::as_str),
            path = self.uri.path(),
            protocol = self.protocol.as_str(),
            status = self.status.as_u16(),
            grpc_status = s(&self.grpc_status),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            attempts = self.attempts,
            request_id = self.ids.request_id.to_str().unwrap_or(""),
            trace_id = self.ids.trace_id(),
            endpoint = self.endpoint.map(|e| e.to_string()).unwrap_or_default(),
            error = self.error.unwrap_or(""),
            reason = self.refused.map_or("", |(r, _)| r.as_str()),
            criticality = self.refused.map_or("", |(_, c)| c.as_str()),
            peer_identity = self.peer_identity.as_deref().unwrap_or(""),
            outcome,
            "request"
        );
    }
}

/// A response body that records its request's completion when it ends.
pub struct ObservedBody {
    inner: Body,
    completion: Option<Box<Completion>>,
}

impl std::fmt::Debug for ObservedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody").finish_non_exhaustive()
    }
}

impl ObservedBody {
    pub fn new(inner: Body, completion: Completion) -> ObservedBody {
        let mut body = ObservedBody {
            inner,
            completion: Some(Box::new(completion)),
        };
        // Bodies empty from the start are never polled by the server: finish now.
        if http_body::Body::is_end_stream(&body.inner) {
            body.finish("complete");
        }
        body
    }

    /// A body with no request to record (admin answers).
    pub fn plain(inner: Body) -> ObservedBody {
        ObservedBody {
            inner,
            completion: None,
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        if let Some(c) = self.completion.take() {
            c.finish(outcome);
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish("cancelled");
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(c)) = (frame.trailers_ref(), this.completion.as_mut())
                {
                    c.grpc_status = trailers.get(GRPC_STATUS).cloned();
                }
                if this.inner.is_end_stream() {
                    this.finish("complete");
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish("upstream-error"),
            Poll::Ready(None) => this.finish("complete"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
