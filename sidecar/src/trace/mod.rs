//! Tracing of proxied requests: the W3C ids every request travels with and its sampling
//! decision ([`ids`]); with a collector configured, a span per sampled request and attempt
//! ([`spans`]) exported with OTLP ([`export`]).

pub mod export;
pub mod ids;
pub mod spans;

pub use ids::{REQUEST_ID, RequestIds, TRACEPARENT, ensure, valid_traceparent};
pub use spans::{AttemptSpan, RequestAttributes, RequestEnd, RequestSpan, Tracer};
