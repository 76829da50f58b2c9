//! Every way a `meshctl` command fails, what it prints and its exit status — decided here
//! and nowhere else: transport failures and HTTP answers are classified in this file.
//!
//! Exit status: 0 ok, 1 the input was rejected (locally or by the control plane), 2 the
//! control plane cannot be reached or cannot serve (connection refused, timeout, 502/503/504).

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::io;
use std::process::ExitCode;
use std::time::Duration;

use hyper::StatusCode;

use serde::Deserialize;

/// The error body: `{"error": "<kind>", "message": "...", "details": [...]}`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ApiError {
    pub error: String,
    pub message: String,
    pub details: Vec<String>,
}

impl ApiError {
    /// Reads an error body; a body that is not the contract's JSON (a proxy's HTML page, a
    /// plain-text panic) becomes the message, first line only.
    pub fn parse(status: StatusCode, body: &[u8]) -> Self {
        if let Ok(parsed) = serde_json::from_slice::<ApiError>(body) {
            return parsed;
        }
        let text = String::from_utf8_lossy(body);
        let first = text.lines().map(str::trim).find(|l| !l.is_empty());
        ApiError {
            error: status.canonical_reason().unwrap_or_default().to_lowercase(),
            message: first.unwrap_or_default().to_string(),
            details: Vec::new(),
        }
    }
}

/// A command's failure. `lines()` is what reaches stderr, `exit_code()` the status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Policy files failed local parsing or validation; each line is already
    /// `FILE: Kind/namespace/name: path: message`.
    #[error("{} problem(s) in the input", .0.len())]
    Invalid(Vec<String>),
    /// A flag, argument or the config file makes no sense.
    #[error("{0}")]
    Usage(String),
    /// The control plane answered with an error that is the request's fault (400, 404, 409,
    /// or anything else that is not an outage).
    #[error("the control plane answered {status} to {request}")]
    Refused {
        /// `METHOD /path`, named when the answer itself says nothing.
        request: String,
        status: StatusCode,
        body: ApiError,
    },
    /// What the command acts on is not there (an override to clear); the control plane said
    /// 404 with a message, and this says it in the command's terms.
    #[error("{0}")]
    NotFound(String),
    /// No answer, or an answer saying the control plane cannot serve right now.
    #[error("cannot reach the control plane at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The TLS handshake failed: a certificate one side does not trust.
    #[error("TLS with the control plane at {server} failed: {reason}")]
    Tls { server: String, reason: String },
    /// A 2xx answer whose body does not follow the API contract.
    #[error("unexpected answer from the control plane at {server}: {reason}")]
    BadAnswer { server: String, reason: String },
    /// `auth can-i` said no: its output says so, and the exit status is 1.
    #[error("not allowed")]
    Denied(crate::output::Output),
    /// `diff` found differences: its output shows them, and the exit status is 1 (as
    /// `kubectl diff`'s).
    #[error("differences found")]
    Differs(crate::output::Output),
    /// `check` found problems: its lines say which.
    #[error("{0} check(s) failed")]
    ChecksFailed(usize),
    /// A command that printed part of its answer before it failed (`version`: the client's,
    /// then no server).
    #[error("{1}")]
    Partial(crate::output::Output, Box<CliError>),
    /// Writing to stdout or stderr failed (a closed pipe, a full disk).
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

impl CliError {
    /// Classifies a failure to get any answer: connect errors, resets, closed connections
    /// (a connect timeout says `connect_timeout`).
    pub fn from_transport(
        server: &str,
        error: &(dyn StdError + 'static),
        connect_timeout: Duration,
    ) -> Self {
        if let Some(reason) = tls_reason(error) {
            return CliError::Tls {
                server: server.to_string(),
                reason,
            };
        }
        CliError::Unreachable {
            server: server.to_string(),
            reason: transport_reason(error, connect_timeout),
        }
    }

    /// No answer within the request timeout.
    pub fn timed_out(server: &str, after: Duration) -> Self {
        CliError::Unreachable {
            server: server.to_string(),
            reason: format!("no answer within {}s", after.as_secs()),
        }
    }

    /// Classifies a non-2xx answer. Gateway errors and 503 (the control plane cannot reach
    /// etcd) mean "try again later", not "your input is wrong".
    pub fn from_response(server: &str, request: &str, status: StatusCode, body: &[u8]) -> Self {
        let body = ApiError::parse(status, body);
        match status {
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => {
                let mut reason = status.to_string();
                if !body.message.is_empty() {
                    let _ = write!(reason, ": {}", body.message);
                }
                CliError::Unreachable {
                    server: server.to_string(),
                    reason,
                }
            }
            _ => CliError::Refused {
                request: request.to_string(),
                status,
                body,
            },
        }
    }

    pub fn bad_answer(server: &str, reason: impl Into<String>) -> Self {
        CliError::BadAnswer {
            server: server.to_string(),
            reason: reason.into(),
        }
    }

    /// The process exit status for this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Partial(_, e) => e.exit_code(),
            CliError::Unreachable { .. } => ExitCode::from(2),
            CliError::Invalid(_)
            | CliError::Usage(_)
            | CliError::Refused { .. }
            | CliError::NotFound(_)
            | CliError::BadAnswer { .. }
            | CliError::Tls { .. }
            | CliError::Denied(_)
            | CliError::Differs(_)
            | CliError::ChecksFailed(_)
            | CliError::Output(_) => ExitCode::FAILURE,
        }
    }

    /// The lines printed on stderr, without trailing newlines.
    pub fn lines(&self) -> Vec<String> {
        match self {
            CliError::Partial(_, e) => e.lines(),
            CliError::Invalid(problems) => problems.clone(),
            CliError::Refused {
                request,
                status,
                body,
            } => refused_lines(request, *status, body),
            // Nobody reads a message about a pipe that was closed on purpose (`| head`).
            CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => Vec::new(),
            other => vec![format!("meshctl: {other}")],
        }
    }
}

fn refused_lines(request: &str, status: StatusCode, body: &ApiError) -> Vec<String> {
    let with_message = |prefix: &str| {
        if body.message.is_empty() {
            // A bare "not found" from whatever listens there (a wrong port, a proxy).
            format!("meshctl: {prefix}: {request}")
        } else {
            format!("meshctl: {prefix}: {}", body.message)
        }
    };
    match status {
        StatusCode::BAD_REQUEST => {
            std::iter::once(with_message("the control plane rejected the request"))
                .chain(body.details.iter().cloned())
                .collect()
        }
        StatusCode::CONFLICT => vec![with_message("conflict")],
        StatusCode::UNAUTHORIZED => vec![
            with_message("not authenticated"),
            "meshctl: give a token (--token-file, $BULWARK_TOKEN or the context's tokenFile) or a client certificate (--client-cert and --client-key)".to_string(),
        ],
        StatusCode::FORBIDDEN => vec![with_message("forbidden")],
        StatusCode::NOT_FOUND => vec![with_message("not found")],
        _ => std::iter::once(with_message(&format!(
            "the control plane answered {status}"
        )))
        .chain(body.details.iter().cloned())
        .collect(),
    }
}

/// What went wrong in a TLS handshake, in words that say what to do; `None` when the failure
/// is not TLS's.
fn tls_reason(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        let tls = rustls_error(e);
        if let Some(tls) = tls {
            use rustls::{AlertDescription, CertificateError, Error};
            return Some(match tls {
                Error::InvalidCertificate(CertificateError::UnknownIssuer) => "the control plane's certificate is not signed by a CA meshctl trusts (UnknownIssuer): give its CA with --ca or the context's ca".to_string(),
                Error::InvalidCertificate(CertificateError::NotValidForName)
                | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => format!("the control plane's certificate is not for the name dialled ({tls}): use a server name the certificate lists"),
                Error::InvalidCertificate(CertificateError::Expired)
                | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => format!("the control plane's certificate has expired ({tls})"),
                Error::AlertReceived(alert @ (AlertDescription::BadCertificate | AlertDescription::UnknownCA | AlertDescription::CertificateExpired | AlertDescription::CertificateRequired | AlertDescription::CertificateUnknown)) => format!("the control plane refused the client certificate ({alert:?})"),
                other => other.to_string(),
            });
        }
        next = e.source();
    }
    None
}

/// The rustls error inside `e`, through any layers of `io::Error` (the TLS stream wraps it in
/// one, the connector in another).
fn rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = e.downcast_ref::<io::Error>()?.get_ref()?;
    rustls_error(inner)
}

/// A short reason for a transport failure: the common cases in plain words, otherwise the
/// error's causes joined (hyper-util's outer "client error (Connect)" says nothing).
fn transport_reason(error: &(dyn StdError + 'static), connect_timeout: Duration) -> String {
    let mut chain = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return "connection refused".to_string(),
                io::ErrorKind::TimedOut => {
                    return format!("no connection within {}s", connect_timeout.as_secs());
                }
                _ => {}
            }
        }
        chain.push(e.to_string());
        next = e.source();
    }
    if chain.len() > 1 {
        chain.remove(0);
    }
    // Causes often repeat their source's text; keep each piece once.
    chain.dedup();
    chain.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_that_are_not_json_become_the_message() {
        let e = ApiError::parse(StatusCode::BAD_GATEWAY, b"\n<html>bad gateway</html>\nmore");
        assert_eq!(e.message, "<html>bad gateway</html>");
        let e = ApiError::parse(
            StatusCode::CONFLICT,
            br#"{"error":"conflict","message":"current version is 42"}"#,
        );
        assert_eq!(e.error, "conflict");
        assert_eq!(e.message, "current version is 42");
        assert!(e.details.is_empty());
    }

    #[test]
    fn outages_exit_2_and_rejections_exit_1() {
        let server = "http://cp:8080";
        let unavailable = CliError::from_response(
            server,
            "POST /v1/apply",
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":"unavailable","message":"etcd is unreachable"}"#,
        );
        assert_eq!(unavailable.exit_code(), ExitCode::from(2));
        assert_eq!(
            unavailable.lines(),
            [
                "meshctl: cannot reach the control plane at http://cp:8080: 503 Service Unavailable: etcd is unreachable"
            ]
        );

        let invalid = CliError::from_response(
            server,
            "POST /v1/apply",
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid","message":"1 invalid resource","details":["UpstreamPolicy/a/b: spec: bad"]}"#,
        );
        assert_eq!(invalid.exit_code(), ExitCode::FAILURE);
        assert_eq!(
            invalid.lines(),
            [
                "meshctl: the control plane rejected the request: 1 invalid resource",
                "UpstreamPolicy/a/b: spec: bad"
            ]
        );

        let plain = CliError::from_response(
            server,
            "GET /v1/status",
            StatusCode::INTERNAL_SERVER_ERROR,
            b"boom\n",
        );
        assert_eq!(plain.exit_code(), ExitCode::FAILURE);
        assert_eq!(
            plain.lines(),
            ["meshctl: the control plane answered 500 Internal Server Error: boom"]
        );

        let bare = CliError::from_response(server, "GET /v1/status", StatusCode::NOT_FOUND, b"");
        assert_eq!(bare.exit_code(), ExitCode::FAILURE);
        assert_eq!(bare.lines(), ["meshctl: not found: GET /v1/status"]);
    }

    #[test]
    fn transport_reasons_are_short() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            transport_reason(&refused, Duration::from_secs(3)),
            "connection refused"
        );
        let slow = io::Error::new(io::ErrorKind::TimedOut, "deadline has elapsed");
        assert_eq!(
            transport_reason(&slow, Duration::from_secs(3)),
            "no connection within 3s"
        );
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(
            transport_reason(&reset, Duration::from_secs(3)),
            "reset by peer"
        );
        // The outer wrapper's text is dropped, its causes kept.
        let wrapped = Wrapped::new(
            "client error (Connect)",
            Some(Wrapped::new("dns error", None)),
        );
        assert_eq!(
            transport_reason(&wrapped, Duration::from_secs(3)),
            "dns error"
        );
    }

    #[derive(Debug)]
    struct Wrapped(&'static str, Option<Box<Wrapped>>);

    impl Wrapped {
        fn new(text: &'static str, source: Option<Wrapped>) -> Self {
            Wrapped(text, source.map(Box::new))
        }
    }

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Wrapped {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }
}
