//! Textual units of the policy format: durations (`250ms`, `10s`, `1m30s`), percentages
//! (`50%`), retry/failure conditions (`5xx`, `"429"`, `grpc-unavailable`) and gRPC codes.
//!
//! Values keep the text the user wrote so that a policy round-trips unchanged and validation
//! can report a bad value at its field path instead of failing deserialization.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration as written in a policy, e.g. `250ms`, `10s`, `30m`, `1h`, `1m30s`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Duration(String);

impl Duration {
    pub fn new(text: impl Into<String>) -> Self {
        Duration(text.into())
    }

    /// A duration written as a policy would write it ([`DurationText`]).
    pub fn from_std(d: std::time::Duration) -> Self {
        Duration(DurationText(d).to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text. Units: `ms`, `s`, `m`, `h`; several may follow each other (`1m30s`).
    pub fn parse(&self) -> Result<std::time::Duration, String> {
        parse_duration(&self.0)
    }

    /// The parsed value, or zero when the text is invalid (validated policies never are).
    pub fn get(&self) -> std::time::Duration {
        self.parse().unwrap_or_default()
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration shown as a policy writes it: `500us`, `300ms`, `2s`, `1.5s`, `1m30s`, `2h`,
/// `1h5m` (whole microseconds below a millisecond, whole milliseconds above; the one formatter
/// of durations in errors, logs and admin answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationText(pub std::time::Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 && !self.0.is_zero() {
            return write!(f, "{}us", self.0.as_micros());
        }
        if ms < 1000 {
            return write!(f, "{ms}ms");
        }
        if !ms.is_multiple_of(1000) {
            let text = format!("{:.3}", ms as f64 / 1000.0);
            return write!(f, "{}s", text.trim_end_matches('0'));
        }
        let secs = ms / 1000;
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Duration(scalar_text(
            d,
            "a duration such as \"250ms\" or \"10s\"",
        )?))
    }
}

/// Parses `500us` (or `500µs`), `250ms`, `10s`, `1.5s`, `30m`, `1h`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("must be a duration such as \"250ms\" or \"10s\", got an empty string".into());
    }
    let bad = || {
        format!(
            "must be a duration such as \"250ms\", \"10s\" or \"1m30s\" (units us, ms, s, m, h), got {text:?}"
        )
    };
    // jiff's "friendly" format: units from hours down to microseconds (and their long names),
    // concatenated or spaced, a fraction on the last one.
    let parsed: jiff::SignedDuration = t.parse().map_err(|_| bad())?;
    let duration = std::time::Duration::try_from(parsed).map_err(|_| bad())?;
    if duration > std::time::Duration::from_secs(365 * 24 * 3600) {
        return Err(format!("must be at most one year, got {text:?}"));
    }
    Ok(duration)
}

/// A percentage as written in a policy, e.g. `50%` or `12.5%`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Percent(String);

impl Percent {
    pub fn new(text: impl Into<String>) -> Self {
        Percent(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value in percent (`50%` → 50.0); must lie in 0..=100.
    pub fn parse(&self) -> Result<f64, String> {
        let t = self.0.trim();
        let bad = || format!("must be a percentage such as \"50%\", got {:?}", self.0);
        let num = t.strip_suffix('%').ok_or_else(bad)?;
        let v: f64 = num.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("must be between 0% and 100%, got {:?}", self.0));
        }
        Ok(v)
    }

    /// The value as a fraction (`50%` → 0.5), zero when invalid (validated policies never are).
    pub fn fraction(&self) -> f64 {
        self.parse().map(|v| v / 100.0).unwrap_or_default()
    }
}

impl fmt::Debug for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Percent(scalar_text(d, "a percentage such as \"50%\"")?))
    }
}

/// Accepts a string or a number and keeps its text, so that `10` and `"10s"` both reach
/// validation (which names the field) instead of failing in the deserializer.
fn scalar_text<'de, D: Deserializer<'de>>(d: D, what: &'static str) -> Result<String, D::Error> {
    struct V(&'static str);
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V(what))
}

/// The gRPC status codes, by the names used in policies (`grpc-unavailable` → `Unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    pub const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The kebab-case name used in policies: `unavailable`, `resource-exhausted`, …
    pub fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "ok",
            GrpcCode::Cancelled => "cancelled",
            GrpcCode::Unknown => "unknown",
            GrpcCode::InvalidArgument => "invalid-argument",
            GrpcCode::DeadlineExceeded => "deadline-exceeded",
            GrpcCode::NotFound => "not-found",
            GrpcCode::AlreadyExists => "already-exists",
            GrpcCode::PermissionDenied => "permission-denied",
            GrpcCode::ResourceExhausted => "resource-exhausted",
            GrpcCode::FailedPrecondition => "failed-precondition",
            GrpcCode::Aborted => "aborted",
            GrpcCode::OutOfRange => "out-of-range",
            GrpcCode::Unimplemented => "unimplemented",
            GrpcCode::Internal => "internal",
            GrpcCode::Unavailable => "unavailable",
            GrpcCode::DataLoss => "data-loss",
            GrpcCode::Unauthenticated => "unauthenticated",
        }
    }

    /// The name gRPC itself gives the code (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`, …): what
    /// metrics label it with.
    pub fn canonical(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    pub fn from_i32(code: i32) -> Option<GrpcCode> {
        GrpcCode::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// Parses a kebab-case (`resource-exhausted`), snake/upper (`RESOURCE_EXHAUSTED`) name.
    pub fn from_name(name: &str) -> Option<GrpcCode> {
        let norm = name.trim().to_ascii_lowercase().replace('_', "-");
        GrpcCode::ALL.into_iter().find(|c| c.name() == norm)
    }

    pub fn code(self) -> i32 {
        self as i32
    }
}

/// A condition in `retryOn` or `failureOn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// The TCP connection could not be established (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The stream or connection was reset before response headers arrived.
    Reset,
    /// Any 5xx status.
    Status5xx,
    /// 502, 503 or 504.
    GatewayError,
    /// The per-try timeout fired.
    Timeout,
    /// One exact HTTP status code.
    Status(u16),
    /// One gRPC status code (from headers or trailers-only responses).
    Grpc(GrpcCode),
}

impl Condition {
    pub fn parse(text: &str) -> Result<Condition, String> {
        let t = text.trim();
        match t {
            "connect-failure" => return Ok(Condition::ConnectFailure),
            "reset" => return Ok(Condition::Reset),
            "5xx" => return Ok(Condition::Status5xx),
            "gateway-error" => return Ok(Condition::GatewayError),
            "timeout" => return Ok(Condition::Timeout),
            _ => {}
        }
        if let Some(code) = t.strip_prefix("grpc-") {
            return GrpcCode::from_name(code).map(Condition::Grpc).ok_or_else(|| {
                format!("unknown gRPC code {code:?} in {text:?}; expected e.g. grpc-unavailable, grpc-resource-exhausted")
            });
        }
        if let Ok(status) = t.parse::<u16>() {
            if (100..=599).contains(&status) {
                return Ok(Condition::Status(status));
            }
            return Err(format!(
                "status code must be between 100 and 599, got {status}"
            ));
        }
        Err(format!(
            "unknown condition {text:?}; expected connect-failure, reset, 5xx, gateway-error, timeout, a status code such as \"429\", or grpc-<code> such as grpc-unavailable"
        ))
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::ConnectFailure => f.write_str("connect-failure"),
            Condition::Reset => f.write_str("reset"),
            Condition::Status5xx => f.write_str("5xx"),
            Condition::GatewayError => f.write_str("gateway-error"),
            Condition::Timeout => f.write_str("timeout"),
            Condition::Status(s) => write!(f, "{s}"),
            Condition::Grpc(c) => write!(f, "grpc-{}", c.name()),
        }
    }
}

// JSON Schema of the unit types (the control plane's OpenAPI document): strings as written in a
// policy (numbers are accepted and reported by validation with the field's path).

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (us, ms, s, m, h), e.g. \"250ms\", \"2s\", \"1m30s\"",
            "pattern": "^\\s*([0-9.]+\\s*(us|µs|ms|s|m|h)\\s*)+$",
            "example": "2s"
        })
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Percent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Percent".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A percentage from 0% to 100%, e.g. \"50%\" or \"12.5%\"",
            "pattern": "^\\s*[0-9.]+\\s*%\\s*$",
            "example": "50%"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_policies_write_them() {
        let text = |ms: u64| DurationText(std::time::Duration::from_millis(ms)).to_string();
        assert_eq!(text(0), "0ms");
        let micros = |us: u64| DurationText(std::time::Duration::from_micros(us)).to_string();
        assert_eq!(micros(500), "500us");
        assert_eq!(
            parse_duration(&micros(750)),
            Ok(std::time::Duration::from_micros(750))
        );
        assert_eq!(text(300), "300ms");
        assert_eq!(text(2_000), "2s");
        assert_eq!(text(1_500), "1.5s");
        assert_eq!(text(1_234), "1.234s");
        assert_eq!(text(90_000), "1m30s");
        assert_eq!(text(1_800_000), "30m");
        assert_eq!(text(7_200_000), "2h");
        assert_eq!(text(3_900_000), "1h5m");
        assert_eq!(
            Duration::from_std(std::time::Duration::from_secs(300)).as_str(),
            "5m"
        );
        // What is printed parses back to the same duration.
        for ms in [1, 999, 1_001, 61_000, 3_601_000] {
            assert_eq!(
                parse_duration(&text(ms)).map(|d| d.as_millis()),
                Ok(u128::from(ms))
            );
        }
    }

    #[test]
    fn durations() {
        let ms = |t: &str| parse_duration(t).map(|d| d.as_millis());
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("10s"), Ok(10_000));
        assert_eq!(ms("1.5s"), Ok(1_500));
        assert_eq!(ms("30m"), Ok(1_800_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("0s"), Ok(0));
        let us = |t: &str| parse_duration(t).map(|d| d.as_micros());
        assert_eq!(us("500us"), Ok(500));
        assert_eq!(us("500µs"), Ok(500));
        assert_eq!(us("1ms500us"), Ok(1_500));
        assert_eq!(us("2.5us"), Ok(2));
        assert_eq!(
            ms("10"),
            Err("must be a duration such as \"250ms\", \"10s\" or \"1m30s\" (units us, ms, s, m, h), got \"10\"".into())
        );
        assert!(ms("s").is_err());
        assert_eq!(ms("10 s"), Ok(10_000));
        assert_eq!(ms("1m 30s"), Ok(90_000));
        assert!(ms("-1s").is_err());
        assert!(ms("10d").is_err());
        assert_eq!(
            ms("9000h"),
            Err("must be at most one year, got \"9000h\"".into())
        );
    }

    #[test]
    fn percents() {
        assert_eq!(Percent::new("50%").parse(), Ok(50.0));
        assert_eq!(Percent::new("12.5%").parse(), Ok(12.5));
        assert_eq!(Percent::new("20%").fraction(), 0.2);
        assert_eq!(
            Percent::new("50").parse(),
            Err("must be a percentage such as \"50%\", got \"50\"".into())
        );
        assert_eq!(
            Percent::new("150%").parse(),
            Err("must be between 0% and 100%, got \"150%\"".into())
        );
    }

    #[test]
    fn conditions() {
        assert_eq!(Condition::parse("5xx"), Ok(Condition::Status5xx));
        assert_eq!(Condition::parse("429"), Ok(Condition::Status(429)));
        assert_eq!(
            Condition::parse("grpc-resource-exhausted"),
            Ok(Condition::Grpc(GrpcCode::ResourceExhausted))
        );
        assert_eq!(
            Condition::parse("grpc-unavailable").map(|c| c.to_string()),
            Ok("grpc-unavailable".to_string())
        );
        assert!(Condition::parse("grpc-nope").is_err());
        assert!(Condition::parse("700").is_err());
        assert!(Condition::parse("4xx").is_err());
    }

    #[test]
    fn grpc_codes() {
        assert_eq!(GrpcCode::from_i32(14), Some(GrpcCode::Unavailable));
        assert_eq!(GrpcCode::from_i32(17), None);
        assert_eq!(
            GrpcCode::from_name("UNAVAILABLE"),
            Some(GrpcCode::Unavailable)
        );
        assert_eq!(
            GrpcCode::from_name("deadline_exceeded"),
            Some(GrpcCode::DeadlineExceeded)
        );
    }
}
