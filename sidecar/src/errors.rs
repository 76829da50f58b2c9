//! Why a proxied call failed, decided where the failure happens, and the ONE place
//! ([`rescue`]) that turns a failure into the HTTP or gRPC answer the caller sees.

use std::net::SocketAddr;
use std::time::Duration;

use bulwark_proto::policy::GrpcCode;
use http::{HeaderValue, Response, StatusCode, header};

use bulwark_proto::level::Level;
use bulwark_proto::policy::units::DurationText;

use crate::body::{Body, BodyError};
use crate::headers::{
    GRPC_MESSAGE, GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS, X_BULWARK_BREAKER, X_BULWARK_DEGRADATION,
    X_BULWARK_ERROR, level_value, retry_after_secs,
};
use crate::overload::Refusal;
use crate::priority::{Criticality, Priority};

/// A failure of the sidecar's own making or of the upstream, before a response began.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no UpstreamPolicy matches authority {authority:?}")]
    NoRoute { authority: String },
    #[error("request has no authority: set the Host header or :authority")]
    NoAuthority,
    #[error("upstream {upstream} has no endpoints: {reason}")]
    NoEndpoints { upstream: String, reason: String },
    #[error("upstream {upstream}: connect to {endpoint} failed: {source}")]
    Connect {
        upstream: String,
        endpoint: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {upstream}: connect to {endpoint} timed out after {timeout:?}")]
    ConnectTimeout {
        upstream: String,
        endpoint: SocketAddr,
        timeout: Duration,
    },
    #[error("upstream {upstream}: TLS ({mode}) with {endpoint} failed: {reason}")]
    Tls {
        upstream: String,
        endpoint: SocketAddr,
        /// `mesh` or `simple`.
        mode: &'static str,
        reason: String,
    },
    #[error("upstream {upstream}: HTTP handshake with {endpoint} failed: {source}")]
    Handshake {
        upstream: String,
        endpoint: SocketAddr,
        #[source]
        source: BodyError,
    },
    #[error("upstream {upstream}: {endpoint} reset the request: {source}")]
    Reset {
        upstream: String,
        endpoint: SocketAddr,
        #[source]
        source: BodyError,
    },
    #[error("deadline of {} exceeded before {upstream} answered", DurationText(*timeout))]
    DeadlineExceeded { upstream: String, timeout: Duration },
    /// The caller's deadline is too short to call the upstream at all.
    #[error("the caller's deadline of {timeout:?} is too short to call {upstream}")]
    DeadlineTooShort { upstream: String, timeout: Duration },
    #[error("upstream \"{upstream}\": attempt timed out after {}", DurationText(*timeout))]
    AttemptTimeout { upstream: String, timeout: Duration },
    #[error("circuit breaker of upstream \"{upstream}\" is open: {reason}")]
    BreakerOpen {
        upstream: String,
        reason: std::sync::Arc<str>,
    },
    #[error(
        "upstream \"{upstream}\" is at its concurrency limit (maxConcurrent {max_concurrent}, maxPending {max_pending})"
    )]
    BulkheadFull {
        upstream: String,
        max_concurrent: u32,
        max_pending: u32,
    },
    #[error(
        "{service} is at its inbound concurrency limit (spec.inbound.maxConcurrent {max_concurrent})"
    )]
    InboundLimit {
        /// `namespace/service` of the app.
        service: String,
        max_concurrent: u32,
    },
    #[error(
        "no local app port is configured for inbound traffic (set --app-port or spec.app.port of ServicePolicy {service})"
    )]
    NoApp { service: String },
    #[error("shed by {service} at {level}: priority {priority} is shed at this level")]
    Shed {
        /// `namespace/service` of the app the request was for.
        service: String,
        level: Level,
        priority: Priority,
        /// When the caller may come back (`Retry-After`, `grpc-retry-pushback-ms`).
        retry_after: Duration,
    },
    #[error("{}", overloaded(target, *criticality, *refusal, *limit, *wait))]
    Overloaded {
        /// `upstream "name"`, or `namespace/service` for the app.
        target: String,
        criticality: Criticality,
        refusal: Refusal,
        /// The concurrency limit when the request was refused.
        limit: usize,
        /// How long it waited in the queue (`queue-wait`: would have waited).
        wait: Duration,
    },
    #[error("{}", rate_limited(target, caller.as_deref(), limit))]
    RateLimited {
        /// `upstream "name"`, or `namespace/service` for the app.
        target: String,
        /// Inbound: the caller over its limit.
        caller: Option<String>,
        /// `100 requests per 1s (burst 200)`.
        limit: String,
        /// When the next request would be let through (`Retry-After`, `grpc-retry-pushback-ms`).
        retry_after: Duration,
    },
    #[error(
        "upstream \"{upstream}\" refuses many requests for overload: this one was not sent (client-side throttling refuses {:.0}% now)",
        probability * 100.0
    )]
    Throttled { upstream: String, probability: f64 },
    #[error("upstream {upstream} is at EMERGENCY: low-priority calls fail fast")]
    UpstreamEmergency { upstream: String },
    #[error(
        "CONNECT to {authority} is not allowed: UpstreamPolicy {upstream} does not set spec.allowConnect"
    )]
    ConnectNotAllowed { authority: String, upstream: String },
    #[error(
        "{policy} requires mutual TLS (spec.inbound.mtls strict): a plaintext request is refused; call it through a meshed sidecar"
    )]
    MtlsRequired { policy: String },
    #[error(
        "{caller} may not call {method} {path}: no rule of spec.inbound.authorization of {policy} allows it ({rules} rules)"
    )]
    Unauthorized {
        /// The caller's SPIFFE ID, or "a caller without identity".
        caller: String,
        policy: String,
        rules: usize,
        method: http::Method,
        path: String,
    },
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The caller's request body could not be read (a chunk size that overflows, a body cut
    /// short): its fault, not the upstream's.
    #[error("invalid request: the request body is malformed: {0}")]
    MalformedBody(String),
}

impl ProxyError {
    /// The short error kind sent in `x-bulwark-error` and used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no-route",
            ProxyError::NoAuthority => "no-authority",
            ProxyError::NoEndpoints { .. } => "no-endpoints",
            ProxyError::Connect { .. } => "connect-failure",
            ProxyError::ConnectTimeout { .. } => "connect-timeout",
            ProxyError::Handshake { .. } => "handshake-failure",
            ProxyError::Tls { .. } => "tls-failure",
            ProxyError::Reset { .. } => "reset",
            ProxyError::DeadlineExceeded { .. } | ProxyError::DeadlineTooShort { .. } => {
                "deadline-exceeded"
            }
            ProxyError::AttemptTimeout { .. } => "attempt-timeout",
            ProxyError::BreakerOpen { .. } => "breaker-open",
            ProxyError::BulkheadFull { .. } | ProxyError::InboundLimit { .. } => "bulkhead-full",
            ProxyError::NoApp { .. } => "no-app",
            ProxyError::Shed { .. } => "shed",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::RateLimited { .. } => "rate-limited",
            ProxyError::Throttled { .. } => "throttled",
            ProxyError::UpstreamEmergency { .. } => "upstream-emergency",
            ProxyError::ConnectNotAllowed { .. } => "connect-not-allowed",
            ProxyError::MtlsRequired { .. } => "mtls-required",
            ProxyError::Unauthorized { .. } => "unauthorized",
            ProxyError::BadRequest(_) | ProxyError::MalformedBody(_) => "bad-request",
        }
    }

    /// Whether a request that ended in this error failed: the caller is told 5xx (or its gRPC
    /// counterpart). One refused for what the caller did — a bad request, its rate limit, its
    /// authorization — did not.
    pub fn is_failure(&self) -> bool {
        self.http_status().is_server_error()
    }

    fn http_status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::NoEndpoints { .. }
            | ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::NoApp { .. }
            | ProxyError::BreakerOpen { .. }
            | ProxyError::BulkheadFull { .. }
            | ProxyError::InboundLimit { .. }
            | ProxyError::Shed { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::Throttled { .. }
            | ProxyError::UpstreamEmergency { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Handshake { .. } | ProxyError::Reset { .. } | ProxyError::Tls { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::DeadlineExceeded { .. }
            | ProxyError::DeadlineTooShort { .. }
            | ProxyError::AttemptTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoAuthority | ProxyError::BadRequest(_) | ProxyError::MalformedBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::ConnectNotAllowed { .. }
            | ProxyError::MtlsRequired { .. }
            | ProxyError::Unauthorized { .. } => StatusCode::FORBIDDEN,
        }
    }

    fn grpc_code(&self) -> GrpcCode {
        match self {
            ProxyError::DeadlineExceeded { .. }
            | ProxyError::DeadlineTooShort { .. }
            | ProxyError::AttemptTimeout { .. } => GrpcCode::DeadlineExceeded,
            ProxyError::BulkheadFull { .. }
            | ProxyError::InboundLimit { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::RateLimited { .. } => GrpcCode::ResourceExhausted,
            ProxyError::NoAuthority | ProxyError::BadRequest(_) | ProxyError::MalformedBody(_) => {
                GrpcCode::Internal
            }
            ProxyError::ConnectNotAllowed { .. } | ProxyError::Unauthorized { .. } => {
                GrpcCode::PermissionDenied
            }
            ProxyError::MtlsRequired { .. } => GrpcCode::Unauthenticated,
            _ => GrpcCode::Unavailable,
        }
    }
}

/// When the caller may come back: `grpc-retry-pushback-ms` for gRPC, `Retry-After` (whole
/// seconds, rounded up) for HTTP.
fn pushback(h: &mut http::HeaderMap, after: Duration, grpc: bool) {
    if grpc {
        h.insert(
            GRPC_RETRY_PUSHBACK_MS,
            HeaderValue::from(u64::try_from(after.as_millis()).unwrap_or(u64::MAX)),
        );
    } else {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(after)),
        );
    }
}

/// The message of a [`ProxyError::RateLimited`] refusal.
fn rate_limited(target: &str, caller: Option<&str>, limit: &str) -> String {
    match caller {
        None => format!("{target} is rate limited to {limit} from this sidecar"),
        Some(caller) => format!("{target} limits each caller to {limit}; {caller} is over it"),
    }
}

/// The message of an [`ProxyError::Overloaded`] refusal.
fn overloaded(
    target: &str,
    criticality: Criticality,
    refusal: Refusal,
    limit: usize,
    wait: Duration,
) -> String {
    match refusal {
        Refusal::QueueFull => format!(
            "{target} is overloaded: its concurrency limit ({limit}) is reached and its queue is full of requests at least as critical as this {criticality} one"
        ),
        Refusal::QueueWait if wait == Duration::MAX => format!(
            "{target} is overloaded: its concurrency limit ({limit}) is reached and the queue of {criticality} requests does not move: more critical ones take every slot"
        ),
        Refusal::QueueWait => format!(
            "{target} is overloaded: its concurrency limit ({limit}) is reached and the requests waiting ahead of this {criticality} one would keep it waiting about {}, longer than it may wait",
            DurationText(wait)
        ),
        Refusal::QueueTimeout => format!(
            "{target} is overloaded: this {criticality} request waited {} for its concurrency limit ({limit})",
            DurationText(wait)
        ),
        Refusal::Displaced => format!(
            "{target} is overloaded: this {criticality} request gave its place in the queue to a more critical one after {}",
            DurationText(wait)
        ),
    }
}

impl ProxyError {
    /// Why overload protection refused the request, and its tier (for the access log).
    pub fn refusal(&self) -> Option<(Refusal, Criticality)> {
        match self {
            ProxyError::Overloaded {
                refusal,
                criticality,
                ..
            } => Some((*refusal, *criticality)),
            _ => None,
        }
    }
}

/// Turns a failure into the caller's answer: an HTTP status with a one-line text body, or for
/// gRPC callers a trailers-only response (HTTP 200, `grpc-status`, `grpc-message`).
pub fn rescue(err: &ProxyError, grpc: bool) -> Response<Body> {
    let message = err.to_string();
    let kind = HeaderValue::from_static(err.kind());
    let mut rsp = if grpc {
        grpc_status_response(err.grpc_code(), &message, kind)
    } else {
        http_error_response(err.http_status(), &message, kind)
    };
    let h = rsp.headers_mut();
    match err {
        ProxyError::BreakerOpen { .. } => {
            h.insert(X_BULWARK_BREAKER, HeaderValue::from_static("open"));
        }
        ProxyError::RateLimited { retry_after, .. } => pushback(h, *retry_after, grpc),
        ProxyError::Shed {
            level, retry_after, ..
        } => {
            h.insert(X_BULWARK_DEGRADATION, level_value(*level));
            pushback(h, *retry_after, grpc);
        }
        ProxyError::UpstreamEmergency { .. } => {
            h.insert(X_BULWARK_DEGRADATION, level_value(Level::Emergency));
        }
        _ => {}
    }
    rsp
}

fn http_error_response(status: StatusCode, message: &str, kind: HeaderValue) -> Response<Body> {
    let mut rsp = Response::new(Body::full(format!("{message}\n")));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_BULWARK_ERROR, kind);
    rsp
}

/// A gRPC trailers-only response carrying `code` and `message`.
pub fn grpc_status_response(code: GrpcCode, message: &str, kind: HeaderValue) -> Response<Body> {
    let mut rsp = Response::new(Body::Empty);
    let h = rsp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(code.code()));
    if let Ok(v) = HeaderValue::from_str(&percent_encode_grpc_message(message)) {
        h.insert(GRPC_MESSAGE, v);
    }
    h.insert(X_BULWARK_ERROR, kind);
    rsp
}

/// What a `grpc-message` percent-encodes besides bytes outside ASCII: control characters
/// (below 0x20, and DEL) and `%` itself — printable ASCII stays readable (gRPC over HTTP/2).
const GRPC_MESSAGE_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec asks (printable ASCII except `%`
/// is kept; everything else becomes `%XX` of its UTF-8 bytes).
pub fn percent_encode_grpc_message(message: &str) -> String {
    percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE_ESCAPED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_route_answers_503_naming_the_authority() {
        let err = ProxyError::NoRoute {
            authority: "nowhere:8080".into(),
        };
        let rsp = rescue(&err, false);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()["x-bulwark-error"], "no-route");
        let Body::Full(Some(b)) = rsp.into_body() else {
            panic!("expected a full body")
        };
        assert_eq!(
            &b[..],
            b"no UpstreamPolicy matches authority \"nowhere:8080\"\n"
        );
    }

    #[test]
    fn grpc_callers_get_trailers_only_status() {
        let err = ProxyError::DeadlineExceeded {
            upstream: "echo".into(),
            timeout: Duration::from_millis(100),
        };
        let rsp = rescue(&err, true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "4");
        assert_eq!(
            rsp.headers()["grpc-message"],
            "deadline of 100ms exceeded before echo answered"
        );
    }

    #[test]
    fn breaker_open_is_marked() {
        let err = ProxyError::BreakerOpen {
            upstream: "echo".into(),
            reason: "failure rate 100% >= 50% over 4 requests in 10s".into(),
        };
        let rsp = rescue(&err, false);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()["x-bulwark-breaker"], "open");
        assert_eq!(rsp.headers()["x-bulwark-error"], "breaker-open");
    }

    fn body_text(rsp: Response<Body>) -> String {
        match rsp.into_body() {
            Body::Full(Some(b)) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("expected a full body, got {other:?}"),
        }
    }

    fn shed() -> ProxyError {
        ProxyError::Shed {
            service: "mrg/order-orchestrator".into(),
            level: Level::Severe,
            priority: Priority::Low,
            retry_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn shed_requests_are_told_when_to_come_back() {
        let rsp = rescue(&shed(), false);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()["retry-after"], "30");
        assert_eq!(rsp.headers()["x-bulwark-error"], "shed");
        assert_eq!(rsp.headers()["x-bulwark-degradation"], "SEVERE");
        assert_eq!(
            body_text(rsp),
            "shed by mrg/order-orchestrator at SEVERE: priority low is shed at this level\n"
        );

        let rsp = rescue(&shed(), true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(
            rsp.headers()["grpc-message"],
            "shed by mrg/order-orchestrator at SEVERE: priority low is shed at this level"
        );
        assert_eq!(rsp.headers()["grpc-retry-pushback-ms"], "30000");
        assert!(!rsp.headers().contains_key("retry-after"));
    }

    #[test]
    fn low_priority_calls_to_an_emergency_upstream_fail_fast() {
        let err = ProxyError::UpstreamEmergency {
            upstream: "midtrans".into(),
        };
        let rsp = rescue(&err, false);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()["x-bulwark-error"], "upstream-emergency");
        assert_eq!(rsp.headers()["x-bulwark-degradation"], "EMERGENCY");
        assert_eq!(
            body_text(rsp),
            "upstream midtrans is at EMERGENCY: low-priority calls fail fast\n"
        );
        let rsp = rescue(&err, true);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(
            rsp.headers()["grpc-message"],
            "upstream midtrans is at EMERGENCY: low-priority calls fail fast"
        );
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(
            percent_encode_grpc_message("a%b\ncafé"),
            "a%25b%0Acaf%C3%A9"
        );
    }
}
