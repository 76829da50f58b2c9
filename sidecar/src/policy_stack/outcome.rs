//! The outcome of one attempt, classified once where it is observed, and the condition sets
//! (`retryOn`, `failureOn`) that the retry layer and the circuit breaker test it against.

use bulwark_proto::policy::{Condition, GrpcCode};
use http::Response;

use crate::body::Body;
use crate::errors::ProxyError;
use crate::headers::GRPC_STATUS;

/// What one attempt to an upstream came to, as far as response headers (or a trailers-only
/// gRPC response) tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived: the HTTP status, and the gRPC status when the headers carry
    /// one (trailers-only responses).
    Response { status: u16, grpc: Option<GrpcCode> },
    /// The connection could not be established (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The stream or connection was reset before response headers arrived.
    Reset,
    /// The per-try timeout fired before response headers arrived.
    Timeout,
}

impl Outcome {
    /// True for a 2xx–4xx response without a failing gRPC status. Only used for logs: what
    /// counts as a failure is always decided by a [`ConditionSet`].
    pub fn is_success(&self) -> bool {
        match self {
            Outcome::Response { status, grpc } => {
                *status < 500 && matches!(grpc, None | Some(GrpcCode::Ok))
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Response { status, grpc: None } => write!(f, "status {status}"),
            Outcome::Response {
                status,
                grpc: Some(code),
            } => write!(f, "status {status}, grpc-status {}", code.name()),
            Outcome::ConnectFailure => f.write_str("connect failure"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Timeout => f.write_str("per-try timeout"),
        }
    }
}

/// What an attempt came to, as far as its response headers (or its error) tell; `None` for
/// failures that are not the upstream's (deadline, breaker open, bulkhead full).
pub fn classify(result: &Result<Response<Body>, ProxyError>) -> Option<Outcome> {
    match result {
        Ok(rsp) => Some(Outcome::Response {
            status: rsp.status().as_u16(),
            grpc: rsp
                .headers()
                .get(GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .and_then(GrpcCode::from_i32),
        }),
        Err(e) => match e {
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Tls { .. }
            | ProxyError::NoEndpoints { .. } => Some(Outcome::ConnectFailure),
            ProxyError::Reset { .. } | ProxyError::Handshake { .. } => Some(Outcome::Reset),
            ProxyError::AttemptTimeout { .. } => Some(Outcome::Timeout),
            _ => None,
        },
    }
}

/// A set of conditions (`retryOn` or `failureOn`), compiled for cheap matching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConditionSet {
    connect_failure: bool,
    reset: bool,
    status_5xx: bool,
    gateway_error: bool,
    timeout: bool,
    statuses: Vec<u16>,
    /// Bit `n` set: gRPC code `n` matches.
    grpc_codes: u32,
}

impl ConditionSet {
    pub fn new(conditions: &[Condition]) -> ConditionSet {
        let mut set = ConditionSet::default();
        for c in conditions {
            match *c {
                Condition::ConnectFailure => set.connect_failure = true,
                Condition::Reset => set.reset = true,
                Condition::Status5xx => set.status_5xx = true,
                Condition::GatewayError => set.gateway_error = true,
                Condition::Timeout => set.timeout = true,
                Condition::Status(s) => set.statuses.push(s),
                Condition::Grpc(code) => set.grpc_codes |= 1 << code.code(),
            }
        }
        set
    }

    /// Parses the policy's strings; unknown entries are skipped (validated policies have none).
    pub fn parse(conditions: &[String]) -> ConditionSet {
        let parsed: Vec<Condition> = conditions
            .iter()
            .filter_map(|c| Condition::parse(c).ok())
            .collect();
        ConditionSet::new(&parsed)
    }

    pub fn matches(&self, outcome: &Outcome) -> bool {
        match *outcome {
            Outcome::ConnectFailure => self.connect_failure,
            Outcome::Reset => self.reset,
            Outcome::Timeout => self.timeout,
            Outcome::Response { status, grpc } => {
                (self.status_5xx && (500..=599).contains(&status))
                    || (self.gateway_error && matches!(status, 502..=504))
                    || self.statuses.contains(&status)
                    || grpc.is_some_and(|code| self.grpc_codes & (1 << code.code()) != 0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> ConditionSet {
        ConditionSet::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn rsp(status: u16, grpc: Option<GrpcCode>) -> Outcome {
        Outcome::Response { status, grpc }
    }

    #[test]
    fn classes_match_as_documented() {
        let gw = set(&["gateway-error"]);
        assert!(gw.matches(&rsp(502, None)));
        assert!(gw.matches(&rsp(504, None)));
        assert!(!gw.matches(&rsp(500, None)));
        let any5 = set(&["5xx"]);
        assert!(any5.matches(&rsp(500, None)) && any5.matches(&rsp(599, None)));
        assert!(!any5.matches(&rsp(429, None)));
        let exact = set(&["429", "connect-failure"]);
        assert!(exact.matches(&rsp(429, None)));
        assert!(exact.matches(&Outcome::ConnectFailure));
        assert!(!exact.matches(&Outcome::Reset));
        assert!(!exact.matches(&Outcome::Timeout));
        let grpc = set(&["grpc-unavailable", "timeout"]);
        assert!(grpc.matches(&rsp(200, Some(GrpcCode::Unavailable))));
        assert!(!grpc.matches(&rsp(200, Some(GrpcCode::Internal))));
        assert!(grpc.matches(&Outcome::Timeout));
    }
}
