//! Spans of sampled requests: one per proxied request (the caller's span its parent), one per
//! attempt under it (the span the upstream sees as its parent in `traceparent`), and what the
//! layers decided on the way (retries, breakers, failover, shedding) as events of the request's
//! span. Nothing here runs for a request that is not sampled or when no collector is set.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

use super::ids::{RequestIds, TRACEPARENT, parse_ids, traceparent};

/// Where spans go: nowhere (no collector configured), or an OTLP exporter's batch.
#[derive(Debug, Clone)]
pub struct Tracer {
    inner: Option<SdkTracer>,
    /// The share of the traces the sidecar starts that are sampled.
    ratio: f64,
}

impl Tracer {
    /// A tracer that exports nothing; traces it starts are sampled with probability `ratio`.
    pub fn disabled(ratio: f64) -> Tracer {
        Tracer { inner: None, ratio }
    }

    /// A tracer exporting through `provider`.
    pub fn exporting(provider: &SdkTracerProvider, ratio: f64) -> Tracer {
        use opentelemetry::trace::TracerProvider as _;
        Tracer {
            inner: Some(provider.tracer("bulwark-sidecar")),
            ratio,
        }
    }

    /// The sampling ratio of traces the sidecar starts.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Starts the span of a request whose ids are `ids` (given by [`ensure`](super::ensure)
    /// from the same `headers`), when the request is sampled and spans are exported. A trace the
    /// sidecar started gets the span's trace id in its `traceparent`.
    pub fn request(
        &self,
        ids: &mut RequestIds,
        headers: &mut HeaderMap,
        started: SystemTime,
        attributes: RequestAttributes<'_>,
    ) -> Option<Box<RequestSpan>> {
        let tracer = self.inner.as_ref()?;
        if !ids.sampled {
            return None;
        }
        let parent = if ids.continued {
            let (trace, span) = parse_ids(ids.traceparent.as_bytes())?;
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(trace.to_be_bytes()),
                SpanId::from_bytes(span.to_be_bytes()),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ))
        } else {
            Context::new()
        };
        let kind = if attributes.direction == "inbound" {
            SpanKind::Server
        } else {
            SpanKind::Internal
        };
        let span = tracer
            .span_builder(format!("{} {}", attributes.direction, attributes.method))
            .with_kind(kind)
            .with_start_time(started)
            .with_attributes([
                KeyValue::new("bulwark.direction", attributes.direction),
                KeyValue::new("http.request.method", attributes.method.to_string()),
                KeyValue::new("url.path", attributes.path.to_string()),
                KeyValue::new("server.address", attributes.authority.to_string()),
                KeyValue::new(
                    "bulwark.request_id",
                    String::from_utf8_lossy(ids.request_id.as_bytes()).into_owned(),
                ),
            ])
            .start_with_context(tracer, &parent);
        let context = span.span_context().clone();
        if !ids.continued {
            // The trace starts here: its id is the span's.
            let trace = u128::from_be_bytes(context.trace_id().to_bytes());
            let span_id = u64::from_be_bytes(context.span_id().to_bytes());
            ids.traceparent = traceparent(trace, span_id, true);
            headers.insert(TRACEPARENT, ids.traceparent.clone());
        }
        Some(Box::new(RequestSpan {
            tracer: tracer.clone(),
            context,
            span: Mutex::new(span),
        }))
    }
}

/// What a request's span is named and labelled with from the start.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttributes<'a> {
    pub direction: &'static str,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub authority: &'a str,
}

/// How a request ended, for its span.
#[derive(Debug, Clone, Copy)]
pub struct RequestEnd<'a> {
    pub upstream: Option<&'a str>,
    pub status: u16,
    pub grpc_status: Option<&'a str>,
    pub attempts: u32,
    pub failed: bool,
    /// The sidecar's error kind, when it answered the request itself.
    pub error: Option<&'static str>,
    /// Why overload protection refused it.
    pub refused: Option<&'static str>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
}

/// The span of one sampled request; its attempts' spans are its children.
pub struct RequestSpan {
    tracer: SdkTracer,
    context: SpanContext,
    span: Mutex<Span>,
}

impl std::fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSpan")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl RequestSpan {
    /// Records what a layer decided, as an event of the request's span.
    pub fn event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        if let Ok(mut span) = self.span.lock() {
            span.add_event(name, attributes);
        }
    }

    /// Starts the span of attempt `number`, sent to `endpoint`.
    pub fn attempt(&self, upstream: &str, number: u32, endpoint: SocketAddr) -> AttemptSpan {
        let parent = Context::new().with_remote_span_context(self.context.clone());
        let span = self
            .tracer
            .span_builder(format!("attempt {upstream}"))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("bulwark.upstream", upstream.to_string()),
                KeyValue::new("bulwark.attempt", i64::from(number)),
                KeyValue::new("network.peer.address", endpoint.ip().to_string()),
                KeyValue::new("network.peer.port", i64::from(endpoint.port())),
            ])
            .start_with_context(&self.tracer, &parent);
        AttemptSpan { span }
    }

    /// Ends the request's span.
    pub fn end(self: Box<Self>, end: RequestEnd<'_>) {
        let Ok(mut span) = self.span.into_inner() else {
            return;
        };
        let mut attributes = vec![
            KeyValue::new("http.response.status_code", i64::from(end.status)),
            KeyValue::new("bulwark.attempts", i64::from(end.attempts)),
        ];
        if let Some(upstream) = end.upstream {
            attributes.push(KeyValue::new("bulwark.upstream", upstream.to_string()));
        }
        if let Some(code) = end.grpc_status.and_then(|c| c.parse::<i64>().ok()) {
            attributes.push(KeyValue::new("rpc.grpc.status_code", code));
        }
        if let Some(error) = end.error {
            attributes.push(KeyValue::new("error.type", error));
        }
        if let Some(reason) = end.refused {
            attributes.push(KeyValue::new("bulwark.refused", reason));
        }
        if let Some(endpoint) = end.endpoint {
            attributes.push(KeyValue::new(
                "network.peer.address",
                endpoint.ip().to_string(),
            ));
            attributes.push(KeyValue::new(
                "network.peer.port",
                i64::from(endpoint.port()),
            ));
        }
        span.set_attributes(attributes);
        if end.failed {
            span.set_status(Status::error(end.error.unwrap_or("failed")));
        }
        span.end();
    }
}

/// The span of one attempt: what the upstream sees as its parent.
pub struct AttemptSpan {
    span: Span,
}

impl std::fmt::Debug for AttemptSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptSpan").finish_non_exhaustive()
    }
}

impl AttemptSpan {
    /// The `traceparent` the attempt goes out with: the attempt's span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        let context = self.span.span_context();
        traceparent(
            u128::from_be_bytes(context.trace_id().to_bytes()),
            u64::from_be_bytes(context.span_id().to_bytes()),
            true,
        )
    }

    /// Ends the attempt: answered with `status` (headers received), or failed with `error`.
    pub fn end(mut self, status: Option<u16>, error: Option<&'static str>) {
        if let Some(status) = status {
            self.span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                self.span
                    .set_status(Status::error(format!("status {status}")));
            }
        }
        if let Some(error) = error {
            self.span.set_attribute(KeyValue::new("error.type", error));
            self.span.set_status(Status::error(error));
        }
        self.span.end();
    }
}
