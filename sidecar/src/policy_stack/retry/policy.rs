//! The retry policy: the compiled `retry` settings of a route ([`RetryConfig`]) and the
//! decisions taken from them — whether a request may be retried at all (idempotency), what the
//! upstream asked for (`Retry-After`, `grpc-retry-pushback-ms`), and how long to wait before the
//! next attempt, or that there must be none. The retry layer asks; this file decides.
//!
//! Why idempotency gates retries: a retry after a failure whose cause is unknown (a reset, a
//! timeout, a 503 from a proxy in front of the app) may repeat work the upstream already did.
//! That is harmless for methods HTTP defines as idempotent (RFC 9110 §9.2.2) and can charge a
//! card twice for the rest, so those are only retried when the policy says the caller made it
//! safe (`nonIdempotent: with-idempotency-key` plus an `Idempotency-Key` header) or accepts the
//! risk (`always`). gRPC carries every call as a POST and says nothing about idempotency, so
//! a gRPC call is non-idempotent unless its route says `idempotent: true`.

use std::time::{Duration, SystemTime};

use bulwark_proto::policy::{Condition, NonIdempotent, Retry, defaults};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::backoff::BackoffSchedule;
use crate::headers::GRPC_RETRY_PUSHBACK_MS;
use crate::policy_stack::outcome::ConditionSet;

/// The header a caller sets to make a non-idempotent request safe to repeat
/// (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Conditions retried when a policy does not say (`retryOn` absent): failures where the
/// upstream application did not do the work. See the module docs for why.
pub const DEFAULT_RETRY_ON: [Condition; 3] = [
    Condition::ConnectFailure,
    Condition::Reset,
    Condition::GatewayError,
];

/// Retry settings of one route.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 = no retries.
    pub max_attempts: u32,
    pub backoff: BackoffSchedule,
    /// No retry starts later than this after the first attempt started.
    pub max_elapsed: Option<Duration>,
    /// Attempt outcomes that are retried.
    pub retry_on: ConditionSet,
    /// When requests that are not idempotent may be retried.
    pub non_idempotent: NonIdempotent,
    /// Wait as `Retry-After` / `grpc-retry-pushback-ms` say instead of the backoff.
    pub honor_retry_after: bool,
    /// Request bodies larger than this are not buffered, hence not retried.
    pub replay_buffer_bytes: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: defaults::RETRY_MAX_ATTEMPTS,
            backoff: BackoffSchedule::default(),
            max_elapsed: None,
            retry_on: ConditionSet::new(&DEFAULT_RETRY_ON),
            non_idempotent: NonIdempotent::default(),
            honor_retry_after: false,
            replay_buffer_bytes: defaults::RETRY_REPLAY_BUFFER_BYTES,
        }
    }
}

impl RetryConfig {
    /// An upstream's `retry`, with defaults for absent fields (absent block: no retries).
    pub fn from_policy(retry: Option<&Retry>) -> RetryConfig {
        RetryConfig::default().merge(retry)
    }

    /// These settings with the fields written in `over` replacing ours, field by field (the
    /// backoff too). `budget` is ignored: it is per upstream (`UpstreamRoutes::budget`).
    pub fn merge(&self, over: Option<&Retry>) -> RetryConfig {
        let Some(r) = over else { return self.clone() };
        RetryConfig {
            // 0 (rejected by validation) would mean "not even one attempt"; keep one.
            max_attempts: r.max_attempts.unwrap_or(self.max_attempts).max(1),
            backoff: self.backoff.merge(r.backoff.as_ref()),
            max_elapsed: r.max_elapsed.as_ref().map(|d| d.get()).or(self.max_elapsed),
            retry_on: r
                .retry_on
                .as_deref()
                .map_or_else(|| self.retry_on.clone(), ConditionSet::parse),
            non_idempotent: r.non_idempotent.unwrap_or(self.non_idempotent),
            honor_retry_after: r.honor_retry_after.unwrap_or(self.honor_retry_after),
            replay_buffer_bytes: r.replay_buffer_bytes.unwrap_or(self.replay_buffer_bytes),
        }
    }
}

/// Why a request may not be retried, whatever its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NotRetryable {
    /// POST, PATCH, CONNECT or an extension method, and `nonIdempotent: never`.
    #[error("the request method is not idempotent")]
    NonIdempotentMethod,
    /// A gRPC call on a route not marked `idempotent: true`, and `nonIdempotent: never`.
    #[error("gRPC calls are not idempotent unless their route says so")]
    GrpcNotIdempotent,
    /// The route says `idempotent: false`, and `nonIdempotent: never`.
    #[error("the route is marked not idempotent")]
    RouteNotIdempotent,
    /// Not idempotent, `nonIdempotent: with-idempotency-key`, and no (non-empty)
    /// `Idempotency-Key` header.
    #[error("the request is not idempotent and has no Idempotency-Key")]
    NoIdempotencyKey,
}

impl NotRetryable {
    /// A short, fixed label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NotRetryable::NonIdempotentMethod => "non_idempotent_method",
            NotRetryable::GrpcNotIdempotent => "grpc_not_idempotent",
            NotRetryable::RouteNotIdempotent => "route_not_idempotent",
            NotRetryable::NoIdempotencyKey => "no_idempotency_key",
        }
    }
}

/// Whether a request may be retried at all, decided once before the first attempt (so that
/// the body is only buffered for requests that may be replayed).
///
/// A request is idempotent when its route says `idempotent: true`; when the route says
/// `idempotent: false` it is not, even a GET; otherwise GET, HEAD, OPTIONS, TRACE, PUT and
/// DELETE are, and POST, PATCH, CONNECT, extension methods and every gRPC call are not.
/// A request that is not idempotent may be retried only under `nonIdempotent: always`, or
/// `with-idempotency-key` when it carries a non-empty `Idempotency-Key` header.
pub fn request_retryable(
    method: &Method,
    grpc: bool,
    headers: &HeaderMap,
    cfg: &RetryConfig,
    route_idempotent: Option<bool>,
) -> Result<(), NotRetryable> {
    let idempotent = route_idempotent.unwrap_or(!grpc && idempotent_method(method));
    if idempotent {
        return Ok(());
    }
    match cfg.non_idempotent {
        NonIdempotent::Always => Ok(()),
        NonIdempotent::WithIdempotencyKey if has_idempotency_key(headers) => Ok(()),
        NonIdempotent::WithIdempotencyKey => Err(NotRetryable::NoIdempotencyKey),
        NonIdempotent::Never => Err(if route_idempotent == Some(false) {
            NotRetryable::RouteNotIdempotent
        } else if grpc {
            NotRetryable::GrpcNotIdempotent
        } else {
            NotRetryable::NonIdempotentMethod
        }),
    }
}

/// The methods RFC 9110 §9.2.2 defines as idempotent. Extension methods are not: we cannot
/// know what they do.
fn idempotent_method(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// `HeaderMap` names are case-insensitive (stored lowercase), so `Idempotency-Key` and
/// `IDEMPOTENCY-KEY` are found alike. A blank value identifies nothing.
fn has_idempotency_key(headers: &HeaderMap) -> bool {
    headers
        .get(IDEMPOTENCY_KEY)
        .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
}

/// What the upstream asked the client to do before retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// Wait this long before the next attempt.
    Delay(Duration),
    /// Do not retry (a negative or malformed `grpc-retry-pushback-ms`).
    Stop,
}

/// The pushback in a response's headers (or trailers), if any.
///
/// `grpc-retry-pushback-ms` (gRFC A6) is read first, being the more precise and the one gRPC
/// clients obey: a non-negative integer is a delay in milliseconds; anything else (negative,
/// not a number, empty) means [`Pushback::Stop`], as A6 says. Otherwise `Retry-After` (RFC 9110
/// §10.2.3): delay-seconds, or an HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime
/// forms every recipient must accept) taken relative to `now`, a date in the past meaning no
/// wait. A malformed `Retry-After` is ignored (`None`), as RFC 9110 allows for invalid fields.
/// Huge values saturate instead of overflowing.
pub fn pushback(headers: &HeaderMap, now: SystemTime) -> Option<Pushback> {
    if let Some(value) = headers.get(GRPC_RETRY_PUSHBACK_MS) {
        return Some(grpc_pushback(value));
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    retry_after(value, now).map(Pushback::Delay)
}

fn grpc_pushback(value: &HeaderValue) -> Pushback {
    match decimal(value.as_bytes().trim_ascii()) {
        Some(ms) => Pushback::Delay(Duration::from_millis(ms)),
        None => Pushback::Stop,
    }
}

fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Some(secs) = decimal(value.as_bytes()) {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `1*DIGIT` as a number, saturating at `u64::MAX`.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

// ───────────────────────────── next delay ─────────────────────────────

/// How long to wait before retry number `retry` (1 for the first retry, i.e. the second
/// attempt), or `None`: do not retry.
///
/// The wait is the backoff ([`BackoffSchedule::delay`]
/// with `rand`), or the upstream's pushback delay instead when `honor_retry_after` is set and
/// one was given. `None` when:
/// - the retry would exceed `max_attempts` (`retry ≥ max_attempts`);
/// - the pushback is [`Pushback::Stop`] — whether or not `honor_retry_after` is set, since not
///   retrying can only lower the load on a server that asked for it;
/// - the retry would start after `max_elapsed` (`elapsed + wait > max_elapsed`): `elapsed` is
///   the time since the first attempt started;
/// - the retry would start at or after the request deadline (`wait ≥ remaining_deadline`): an
///   attempt with no time left can only fail, and it would still load the upstream.
pub fn next_delay(
    cfg: &RetryConfig,
    retry: u32,
    rand: f64,
    pushback: Option<Pushback>,
    elapsed: Duration,
    remaining_deadline: Option<Duration>,
) -> Option<Duration> {
    if retry >= cfg.max_attempts {
        return None;
    }
    let wait = match pushback {
        Some(Pushback::Stop) => return None,
        Some(Pushback::Delay(d)) if cfg.honor_retry_after => d,
        _ => cfg.backoff.delay(retry, rand),
    };
    if cfg
        .max_elapsed
        .is_some_and(|max| elapsed.saturating_add(wait) > max)
    {
        return None;
    }
    if remaining_deadline.is_some_and(|remaining| wait >= remaining) {
        return None;
    }
    Some(wait)
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderName, RETRY_AFTER};

    use super::*;
    use std::time::UNIX_EPOCH;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn cfg(non_idempotent: NonIdempotent) -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            non_idempotent,
            ..RetryConfig::default()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        map
    }

    fn method(name: &str) -> Method {
        Method::from_bytes(name.as_bytes()).expect("method")
    }

    // ── request_retryable ──

    #[test]
    fn idempotent_methods_are_always_retryable() {
        let none = HeaderMap::new();
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert_eq!(
                request_retryable(&method(m), false, &none, &cfg(NonIdempotent::Never), None),
                Ok(()),
                "{m}"
            );
        }
    }

    #[test]
    fn non_idempotent_methods_are_not_retried_by_default() {
        let none = HeaderMap::new();
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert_eq!(
                request_retryable(&method(m), false, &none, &cfg(NonIdempotent::Never), None),
                Err(NotRetryable::NonIdempotentMethod),
                "{m}"
            );
        }
        assert_eq!(
            RetryConfig::default().non_idempotent,
            NonIdempotent::Never,
            "never is the default"
        );
    }

    #[test]
    fn always_retries_non_idempotent_requests() {
        let none = HeaderMap::new();
        let always = cfg(NonIdempotent::Always);
        for m in ["POST", "PATCH", "CONNECT"] {
            assert_eq!(
                request_retryable(&method(m), false, &none, &always, None),
                Ok(())
            );
        }
        assert_eq!(
            request_retryable(&Method::POST, true, &none, &always, None),
            Ok(())
        );
    }

    #[test]
    fn with_idempotency_key_needs_a_non_empty_key() {
        let keyed = cfg(NonIdempotent::WithIdempotencyKey);
        let retryable = |h: &HeaderMap| request_retryable(&Method::POST, false, h, &keyed, None);
        assert_eq!(retryable(&headers(&[("Idempotency-Key", "abc")])), Ok(()));
        assert_eq!(retryable(&headers(&[("IDEMPOTENCY-KEY", "abc")])), Ok(()));
        assert_eq!(retryable(&headers(&[("idempotency-key", "abc")])), Ok(()));
        assert_eq!(
            retryable(&HeaderMap::new()),
            Err(NotRetryable::NoIdempotencyKey)
        );
        assert_eq!(
            retryable(&headers(&[("idempotency-key", "")])),
            Err(NotRetryable::NoIdempotencyKey)
        );
        assert_eq!(
            retryable(&headers(&[("idempotency-key", "   ")])),
            Err(NotRetryable::NoIdempotencyKey)
        );
        assert_eq!(
            retryable(&headers(&[("x-idempotency-key", "abc")])),
            Err(NotRetryable::NoIdempotencyKey)
        );
        // A key does not make a difference under `never`.
        assert_eq!(
            request_retryable(
                &Method::POST,
                false,
                &headers(&[("idempotency-key", "abc")]),
                &cfg(NonIdempotent::Never),
                None
            ),
            Err(NotRetryable::NonIdempotentMethod)
        );
    }

    #[test]
    fn grpc_is_not_idempotent_unless_the_route_says_so() {
        let none = HeaderMap::new();
        let never = cfg(NonIdempotent::Never);
        assert_eq!(
            request_retryable(&Method::POST, true, &none, &never, None),
            Err(NotRetryable::GrpcNotIdempotent)
        );
        // Even if a gRPC call came as a GET (it never does), it is gRPC that decides.
        assert_eq!(
            request_retryable(&Method::GET, true, &none, &never, None),
            Err(NotRetryable::GrpcNotIdempotent)
        );
        assert_eq!(
            request_retryable(&Method::POST, true, &none, &never, Some(true)),
            Ok(())
        );
        let keyed = cfg(NonIdempotent::WithIdempotencyKey);
        assert_eq!(
            request_retryable(&Method::POST, true, &none, &keyed, None),
            Err(NotRetryable::NoIdempotencyKey)
        );
        assert_eq!(
            request_retryable(
                &Method::POST,
                true,
                &headers(&[("idempotency-key", "k1")]),
                &keyed,
                None
            ),
            Ok(())
        );
    }

    #[test]
    fn route_idempotent_overrides_the_method() {
        let none = HeaderMap::new();
        let never = cfg(NonIdempotent::Never);
        assert_eq!(
            request_retryable(&Method::POST, false, &none, &never, Some(true)),
            Ok(())
        );
        assert_eq!(
            request_retryable(&Method::GET, false, &none, &never, Some(false)),
            Err(NotRetryable::RouteNotIdempotent)
        );
        assert_eq!(
            request_retryable(&Method::POST, true, &none, &never, Some(false)),
            Err(NotRetryable::RouteNotIdempotent)
        );
        // Not idempotent, but the policy accepts retrying such requests.
        assert_eq!(
            request_retryable(
                &Method::GET,
                false,
                &none,
                &cfg(NonIdempotent::Always),
                Some(false)
            ),
            Ok(())
        );
        assert_eq!(
            request_retryable(
                &Method::GET,
                false,
                &none,
                &cfg(NonIdempotent::WithIdempotencyKey),
                Some(false)
            ),
            Err(NotRetryable::NoIdempotencyKey)
        );
    }

    #[test]
    fn reasons_have_fixed_labels() {
        assert_eq!(
            NotRetryable::NonIdempotentMethod.as_str(),
            "non_idempotent_method"
        );
        assert_eq!(
            NotRetryable::GrpcNotIdempotent.as_str(),
            "grpc_not_idempotent"
        );
        assert_eq!(
            NotRetryable::RouteNotIdempotent.as_str(),
            "route_not_idempotent"
        );
        assert_eq!(
            NotRetryable::NoIdempotencyKey.as_str(),
            "no_idempotency_key"
        );
    }

    // ── pushback ──

    /// 1994-11-06T08:49:37Z, the RFC's example date.
    fn rfc_example() -> SystemTime {
        UNIX_EPOCH + secs(784_111_777)
    }

    fn retry_after_at(value: &str, now: SystemTime) -> Option<Pushback> {
        pushback(&headers(&[("retry-after", value)]), now)
    }

    #[test]
    fn no_pushback_headers() {
        assert_eq!(pushback(&HeaderMap::new(), rfc_example()), None);
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = rfc_example();
        assert_eq!(retry_after_at("120", now), Some(Pushback::Delay(secs(120))));
        assert_eq!(
            retry_after_at("0", now),
            Some(Pushback::Delay(Duration::ZERO))
        );
        assert_eq!(retry_after_at(" 7 ", now), Some(Pushback::Delay(secs(7))));
        assert_eq!(
            retry_after_at("99999999999999999999999", now),
            Some(Pushback::Delay(secs(u64::MAX)))
        );
    }

    #[test]
    fn malformed_retry_after_is_ignored() {
        let now = rfc_example();
        for value in [
            "",
            "-1",
            "+5",
            "1.5",
            "5s",
            "soon",
            "Sun, 06 Nov 1994 08:49:37",
        ] {
            assert_eq!(retry_after_at(value, now), None, "{value:?}");
        }
        let mut opaque = HeaderMap::new();
        opaque.insert(
            RETRY_AFTER,
            HeaderValue::from_bytes(b"\xff12").expect("opaque value"),
        );
        assert_eq!(pushback(&opaque, now), None);
    }

    #[test]
    fn retry_after_imf_fixdate() {
        let now = rfc_example();
        assert_eq!(
            retry_after_at("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Pushback::Delay(Duration::ZERO))
        );
        assert_eq!(
            retry_after_at("Sun, 06 Nov 1994 08:51:07 GMT", now),
            Some(Pushback::Delay(secs(90)))
        );
        // Across a day, a month and a year boundary.
        assert_eq!(
            retry_after_at(
                "Mon, 01 Jan 1996 00:00:00 GMT",
                UNIX_EPOCH + secs(820_454_399)
            ),
            Some(Pushback::Delay(secs(1)))
        );
        // Sub-second precision of `now` is kept.
        assert_eq!(
            retry_after_at("Sun, 06 Nov 1994 08:49:38 GMT", now + ms(250)),
            Some(Pushback::Delay(ms(750)))
        );
    }

    #[test]
    fn retry_after_date_in_the_past_means_no_wait() {
        let now = rfc_example();
        assert_eq!(
            retry_after_at("Sun, 06 Nov 1994 08:49:36 GMT", now),
            Some(Pushback::Delay(Duration::ZERO))
        );
        assert_eq!(
            retry_after_at("Thu, 01 Jan 1970 00:00:00 GMT", now),
            Some(Pushback::Delay(Duration::ZERO))
        );
    }

    #[test]
    fn retry_after_takes_the_obsolete_date_forms() {
        let now = rfc_example();
        for text in ["Sunday, 06-Nov-94 08:51:07 GMT", "Sun Nov  6 08:51:07 1994"] {
            assert_eq!(
                retry_after_at(text, now),
                Some(Pushback::Delay(secs(90))),
                "{text:?}"
            );
        }
        for text in [
            "Sun, 30 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(retry_after_at(text, now), None, "{text:?}");
        }
    }

    #[test]
    fn grpc_pushback_ms() {
        let now = rfc_example();
        let at = |v: &str| pushback(&headers(&[("grpc-retry-pushback-ms", v)]), now);
        assert_eq!(at("250"), Some(Pushback::Delay(ms(250))));
        assert_eq!(at("0"), Some(Pushback::Delay(Duration::ZERO)));
        assert_eq!(
            at("18446744073709551616"),
            Some(Pushback::Delay(ms(u64::MAX)))
        );
        for stop in ["-1", "-0", "", "abc", "1.5", "+3", "10ms"] {
            assert_eq!(at(stop), Some(Pushback::Stop), "{stop:?}");
        }
    }

    #[test]
    fn grpc_pushback_wins_over_retry_after() {
        let h = headers(&[("retry-after", "10"), ("grpc-retry-pushback-ms", "20")]);
        assert_eq!(pushback(&h, rfc_example()), Some(Pushback::Delay(ms(20))));
        let h = headers(&[("retry-after", "10"), ("grpc-retry-pushback-ms", "-1")]);
        assert_eq!(pushback(&h, rfc_example()), Some(Pushback::Stop));
    }

    // ── next_delay ──

    /// Backoff 100ms doubling to 1s with 20% jitter, 5 attempts.
    fn retry_cfg(honor: bool, max_elapsed: Option<Duration>) -> RetryConfig {
        RetryConfig {
            max_attempts: 5,
            backoff: BackoffSchedule {
                initial: ms(100),
                max: ms(1000),
                multiplier: 2.0,
                jitter: 0.2,
            },
            max_elapsed,
            honor_retry_after: honor,
            ..RetryConfig::default()
        }
    }

    #[test]
    fn waits_the_backoff() {
        let c = retry_cfg(false, None);
        assert_eq!(next_delay(&c, 1, 0.5, None, ms(0), None), Some(ms(100)));
        assert_eq!(next_delay(&c, 1, 0.0, None, ms(0), None), Some(ms(80)));
        assert_eq!(next_delay(&c, 2, 1.0, None, ms(0), None), Some(ms(240)));
        assert_eq!(next_delay(&c, 4, 0.5, None, ms(0), None), Some(ms(800)));
    }

    #[test]
    fn stops_after_max_attempts() {
        let c = retry_cfg(false, None);
        assert_eq!(next_delay(&c, 4, 0.5, None, ms(0), None), Some(ms(800)));
        assert_eq!(next_delay(&c, 5, 0.5, None, ms(0), None), None);
        assert_eq!(next_delay(&c, u32::MAX, 0.5, None, ms(0), None), None);
        let no_retries = RetryConfig::default();
        assert_eq!(next_delay(&no_retries, 1, 0.5, None, ms(0), None), None);
    }

    #[test]
    fn pushback_replaces_the_backoff_when_honored() {
        let honor = retry_cfg(true, None);
        let push = Some(Pushback::Delay(secs(3)));
        assert_eq!(next_delay(&honor, 1, 0.5, push, ms(0), None), Some(secs(3)));
        // Also when it is shorter than the backoff, and when it is zero.
        assert_eq!(
            next_delay(&honor, 4, 0.5, Some(Pushback::Delay(ms(5))), ms(0), None),
            Some(ms(5))
        );
        assert_eq!(
            next_delay(
                &honor,
                1,
                0.5,
                Some(Pushback::Delay(Duration::ZERO)),
                ms(0),
                None
            ),
            Some(Duration::ZERO)
        );
        let ignore = retry_cfg(false, None);
        assert_eq!(
            next_delay(&ignore, 1, 0.5, push, ms(0), None),
            Some(ms(100))
        );
    }

    #[test]
    fn pushback_stop_always_stops() {
        for honor in [true, false] {
            let c = retry_cfg(honor, None);
            assert_eq!(
                next_delay(&c, 1, 0.5, Some(Pushback::Stop), ms(0), None),
                None
            );
        }
    }

    #[test]
    fn max_elapsed_bounds_when_a_retry_may_start() {
        let c = retry_cfg(true, Some(secs(2)));
        // 1900ms + 100ms = 2s: not past max_elapsed.
        assert_eq!(next_delay(&c, 1, 0.5, None, ms(1900), None), Some(ms(100)));
        assert_eq!(next_delay(&c, 1, 0.5, None, ms(1901), None), None);
        assert_eq!(next_delay(&c, 1, 0.5, None, secs(5), None), None);
        // The pushback counts instead of the backoff.
        let push = Some(Pushback::Delay(secs(1)));
        assert_eq!(next_delay(&c, 1, 0.5, push, ms(1000), None), Some(secs(1)));
        assert_eq!(next_delay(&c, 1, 0.5, push, ms(1001), None), None);
        // No overflow with absurd values.
        assert_eq!(
            next_delay(
                &c,
                1,
                0.5,
                Some(Pushback::Delay(Duration::MAX)),
                secs(1),
                None
            ),
            None
        );
    }

    #[test]
    fn the_deadline_must_leave_time_for_the_attempt() {
        let c = retry_cfg(true, None);
        assert_eq!(
            next_delay(&c, 1, 0.5, None, ms(0), Some(ms(101))),
            Some(ms(100))
        );
        assert_eq!(next_delay(&c, 1, 0.5, None, ms(0), Some(ms(100))), None);
        assert_eq!(next_delay(&c, 1, 0.5, None, ms(0), Some(ms(50))), None);
        assert_eq!(
            next_delay(
                &c,
                1,
                0.5,
                Some(Pushback::Delay(Duration::ZERO)),
                ms(0),
                Some(Duration::ZERO)
            ),
            None
        );
        let push = Some(Pushback::Delay(secs(30)));
        assert_eq!(next_delay(&c, 1, 0.5, push, ms(0), Some(secs(10))), None);
        // An ignored pushback does not count against the deadline.
        let ignore = retry_cfg(false, None);
        assert_eq!(
            next_delay(&ignore, 1, 0.5, push, ms(0), Some(secs(10))),
            Some(ms(100))
        );
    }
}
