//! Retry decisions: whether a request may be retried at all (idempotency), what the upstream
//! asked for (`Retry-After`, `grpc-retry-pushback-ms`), and how long to wait before the next
//! attempt — or that there must be none. The retry layer asks; this file decides.
//!
//! Why idempotency gates retries: a retry after a failure whose cause is unknown (a reset, a
//! timeout, a 503 from a proxy in front of the app) may repeat work the upstream already did.
//! That is harmless for methods HTTP defines as idempotent (RFC 9110 §9.2.2) and can charge a
//! card twice for the rest, so those are only retried when the policy says the caller made it
//! safe (`nonIdempotent: with-idempotency-key` plus an `Idempotency-Key` header) or accepts the
//! risk (`always`). gRPC carries every call as a POST and says nothing about idempotency, so
//! a gRPC call is non-idempotent unless its route says `idempotent: true`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_proto::policy::NonIdempotent;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::config::RetryConfig;

/// The header a caller sets to make a non-idempotent request safe to repeat
/// (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// gRPC's server pushback (gRFC A6), in trailers or a trailers-only response.
pub const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

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
    let date = http_date(value, now)?;
    // Before the epoch is certainly in the past.
    let Ok(secs) = u64::try_from(date) else {
        return Some(Duration::ZERO);
    };
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(secs))?;
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

// ───────────────────────────── HTTP-date ─────────────────────────────
//
// A small parser for the three forms of RFC 9110 §5.6.7, exactly as the grammar spells them
// (case-sensitive names, fixed widths, "GMT"). The day name is checked to be a day name but not
// against the date: a server that gets it wrong still means the date it wrote.

const SHORT_DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const LONG_DAYS: [&[u8]; 7] = [
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
    b"Sunday",
];
const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Seconds since the Unix epoch of an HTTP-date (negative before 1970).
fn http_date(text: &str, now: SystemTime) -> Option<i64> {
    let b = text.as_bytes();
    let fields = imf_fixdate(b)
        .or_else(|| rfc850_date(b, now))
        .or_else(|| asctime_date(b))?;
    fields.unix_seconds()
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(b: &[u8]) -> Option<DateFields> {
    if b.len() != 29 || &b[3..5] != b", " || b[7] != b' ' || b[11] != b' ' || b[16] != b' ' {
        return None;
    }
    if !SHORT_DAYS.contains(&&b[..3]) || &b[25..] != b" GMT" {
        return None;
    }
    let (hour, minute, second) = time_of_day(&b[17..25])?;
    Some(DateFields {
        year: i64::try_from(decimal(&b[12..16])?).ok()?,
        month: month(&b[8..11])?,
        day: two_digits(&b[5..7])?,
        hour,
        minute,
        second,
    })
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`; a two-digit year more than 50 years ahead of `now` is
/// in the previous century (RFC 9110 §5.6.7).
fn rfc850_date(b: &[u8], now: SystemTime) -> Option<DateFields> {
    let comma = b.iter().position(|&c| c == b',')?;
    if !LONG_DAYS.contains(&&b[..comma]) {
        return None;
    }
    let r = &b[comma..];
    // ", 06-Nov-94 08:49:37 GMT"
    if r.len() != 24 || &r[..2] != b", " || r[4] != b'-' || r[8] != b'-' || r[11] != b' ' {
        return None;
    }
    if &r[20..] != b" GMT" {
        return None;
    }
    let (hour, minute, second) = time_of_day(&r[12..20])?;
    let yy = i64::from(two_digits(&r[9..11])?);
    let this_year = year_of(now);
    let mut year = this_year - this_year.rem_euclid(100) + yy;
    if year > this_year + 50 {
        year -= 100;
    }
    Some(DateFields {
        year,
        month: month(&r[5..8])?,
        day: two_digits(&r[2..4])?,
        hour,
        minute,
        second,
    })
}

/// `Sun Nov  6 08:49:37 1994` (the day is two digits or a space and one digit).
fn asctime_date(b: &[u8]) -> Option<DateFields> {
    if b.len() != 24 || b[3] != b' ' || b[7] != b' ' || b[10] != b' ' || b[19] != b' ' {
        return None;
    }
    if !SHORT_DAYS.contains(&&b[..3]) {
        return None;
    }
    let day = match b[8] {
        b' ' => decimal(&b[9..10])? as u32,
        _ => two_digits(&b[8..10])?,
    };
    let (hour, minute, second) = time_of_day(&b[11..19])?;
    Some(DateFields {
        year: i64::try_from(decimal(&b[20..24])?).ok()?,
        month: month(&b[4..7])?,
        day,
        hour,
        minute,
        second,
    })
}

fn two_digits(b: &[u8]) -> Option<u32> {
    if b.len() != 2 {
        return None;
    }
    decimal(b).map(|n| n as u32)
}

fn month(b: &[u8]) -> Option<u32> {
    MONTHS.iter().position(|m| *m == b).map(|i| i as u32 + 1)
}

/// `HH:MM:SS`
fn time_of_day(b: &[u8]) -> Option<(u32, u32, u32)> {
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    Some((
        two_digits(&b[0..2])?,
        two_digits(&b[3..5])?,
        two_digits(&b[6..8])?,
    ))
}

struct DateFields {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl DateFields {
    /// Checks the ranges (a leap second, `:60`, is allowed and counts as the next second) and
    /// converts to seconds since the epoch.
    fn unix_seconds(&self) -> Option<i64> {
        let days_in_month = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if is_leap_year(self.year) => 29,
            2 => 28,
            _ => return None,
        };
        if !(1..=days_in_month).contains(&self.day)
            || self.hour > 23
            || self.minute > 59
            || self.second > 60
        {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day);
        Some(
            days * 86_400
                + i64::from(self.hour) * 3_600
                + i64::from(self.minute) * 60
                + i64::from(self.second),
        )
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    // Months counted from March, so the leap day ends the year.
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The Gregorian year `now` falls in (UTC); Hinnant's `civil_from_days`, year only.
fn year_of(now: SystemTime) -> i64 {
    let days = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs() / 86_400).unwrap_or(i64::MAX / 2),
        Err(e) => -i64::try_from(e.duration().as_secs().div_ceil(86_400)).unwrap_or(0),
    };
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    // January and February belong to the next civil year.
    year_of_era + era * 400 + i64::from(month_from_march >= 10)
}

// ───────────────────────────── next delay ─────────────────────────────

/// How long to wait before retry number `retry` (1 for the first retry, i.e. the second
/// attempt), or `None`: do not retry.
///
/// The wait is the backoff ([`BackoffSchedule::delay`](super::backoff::BackoffSchedule::delay)
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

    use super::super::backoff::BackoffSchedule;
    use super::*;

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
        assert_eq!(
            retry_after_at("Fri, 31 Dec 1969 23:59:59 GMT", now),
            Some(Pushback::Delay(Duration::ZERO))
        );
    }

    #[test]
    fn imf_fixdate_known_instants() {
        let at = |text: &str| http_date(text, rfc_example());
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(at("Tue, 29 Feb 2000 12:00:00 GMT"), Some(951_825_600));
        assert_eq!(at("Mon, 01 Mar 2100 00:00:00 GMT"), Some(4_107_542_400));
        assert_eq!(at("Fri, 31 Dec 9999 23:59:59 GMT"), Some(253_402_300_799));
        assert_eq!(at("Mon, 01 Jan 0001 00:00:00 GMT"), Some(-62_135_596_800));
        // A leap second counts as the next second.
        assert_eq!(at("Sat, 31 Dec 2016 23:59:60 GMT"), Some(1_483_228_800));
    }

    #[test]
    fn invalid_http_dates_are_rejected() {
        for text in [
            "Sun, 30 Feb 1994 08:49:37 GMT", // no such day
            "Sun, 29 Feb 1900 08:49:37 GMT", // 1900 is not a leap year
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 nov 1994 08:49:37 GMT", // names are case-sensitive
            "sun, 06 Nov 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT", // day must be two digits
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun,  06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMTX",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT ",
        ] {
            assert_eq!(http_date(text, rfc_example()), None, "{text:?}");
        }
    }

    #[test]
    fn obsolete_rfc850_dates() {
        let now = rfc_example();
        assert_eq!(
            http_date("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(784_111_777)
        );
        // Two-digit years: at most 50 years ahead, else the previous century.
        let in_2026 = UNIX_EPOCH + secs(1_767_225_600); // 2026-01-01
        assert_eq!(
            http_date("Tuesday, 01-Jan-30 00:00:00 GMT", in_2026),
            Some(1_893_456_000) // 2030
        );
        assert_eq!(
            http_date("Tuesday, 01-Jan-80 00:00:00 GMT", in_2026),
            Some(315_532_800) // 1980, not 2080
        );
        assert_eq!(
            http_date("Wednesday, 01-Jan-76 00:00:00 GMT", in_2026),
            Some(3_345_062_400) // 2076: exactly 50 years ahead is still ahead
        );
        for text in [
            "Sun, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Funday, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06 Nov 94 08:49:37 GMT",
        ] {
            assert_eq!(http_date(text, now), None, "{text:?}");
        }
    }

    #[test]
    fn obsolete_asctime_dates() {
        let now = rfc_example();
        assert_eq!(
            http_date("Sun Nov  6 08:49:37 1994", now),
            Some(784_111_777)
        );
        assert_eq!(
            http_date("Wed Nov 16 08:49:37 1994", now),
            Some(784_975_777)
        );
        for text in [
            "Sun Nov 6 08:49:37 1994",
            "Sun Nov  6 08:49:37 94",
            "Sun Nov 06 08:49:37 1994 GMT",
            "Sun Nov  0 08:49:37 1994",
        ] {
            assert_eq!(http_date(text, now), None, "{text:?}");
        }
    }

    #[test]
    fn year_of_now() {
        assert_eq!(year_of(UNIX_EPOCH), 1970);
        assert_eq!(year_of(rfc_example()), 1994);
        assert_eq!(year_of(UNIX_EPOCH + secs(1_767_225_599)), 2025);
        assert_eq!(year_of(UNIX_EPOCH + secs(1_767_225_600)), 2026);
        assert_eq!(year_of(UNIX_EPOCH + secs(951_782_400)), 2000); // 2000-02-29
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
