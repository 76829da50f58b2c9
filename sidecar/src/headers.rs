//! Headers at the proxy boundary: the names the request path uses, hop-by-hop headers removed
//! (RFC 9110 §7.6.1), gRPC detection and the `grpc-timeout` header (gRPC over HTTP/2 spec), and
//! the degradation level as a header value.

use std::time::Duration;

use bulwark_proto::level::Level;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Header names the request path uses, built at compile time: a `&str` name is parsed and
// validated on every lookup (bench/profile showed ~10% of a request's instructions in it).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub const X_BULWARK_UPSTREAM: HeaderName = HeaderName::from_static("x-bulwark-upstream");
/// The caller's verified SPIFFE ID, given to the app on inbound mTLS requests (and removed
/// from every inbound request that carries its own).
pub const X_BULWARK_PEER_IDENTITY: HeaderName = HeaderName::from_static("x-bulwark-peer-identity");
pub const X_BULWARK_ERROR: HeaderName = HeaderName::from_static("x-bulwark-error");
pub const X_BULWARK_BREAKER: HeaderName = HeaderName::from_static("x-bulwark-breaker");
pub const X_BULWARK_FALLBACK: HeaderName = HeaderName::from_static("x-bulwark-fallback");
/// Sent on every request that reaches the app (and on the sidecar's own degradation answers):
/// the level the sidecar acts on.
pub const X_BULWARK_DEGRADATION: HeaderName = HeaderName::from_static("x-bulwark-degradation");
/// Sent on every request that reaches the app: the own service's capabilities, as the control
/// plane computed them (`acceptOrders=true,sendNotifications=false`).
pub const X_BULWARK_CAPABILITIES: HeaderName = HeaderName::from_static("x-bulwark-capabilities");
pub const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection and must not be forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// Whether `strip_hop_by_hop` has anything to do: one pass over the names, no hashing. Most
/// requests (gRPC's `te: trailers` included) have nothing to strip.
fn needs_stripping(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| {
        if name == header::TE {
            // Anything but exactly `trailers` is rewritten (HTTP/2 peers refuse other values).
            value.as_bytes() != b"trailers"
        } else {
            name == header::EXPECT || HOP_BY_HOP.contains(name)
        }
    })
}

/// Removes hop-by-hop headers, and those listed in `Connection`. `te: trailers` is kept
/// (gRPC needs it end to end); `Expect` is answered by this hop and removed too.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !needs_stripping(headers) {
        return;
    }
    // Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1).
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            if name != header::TE {
                headers.remove(&name);
            }
        }
    }
    let keep_te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::EXPECT);
    if keep_te_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Whether a request is gRPC: `content-type: application/grpc` or `application/grpc+proto` etc.
/// Whether the kubelet sent this request (`User-Agent: kube-probe/<version>`): a liveness or
/// readiness probe of the app, captured on its way in. Probes are never shed nor held to the
/// inbound concurrency limit — shedding a liveness probe under load would have the kubelet
/// restart a pod that is only busy.
pub fn is_kubelet_probe(headers: &HeaderMap) -> bool {
    headers
        .get(header::USER_AGENT)
        .is_some_and(|v| v.as_bytes().starts_with(b"kube-probe/"))
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Parses `grpc-timeout` (`TimeoutValue TimeoutUnit`, at most 8 digits; units H M S m u n).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.as_bytes();
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-timeout` for a budget in milliseconds (at least 1, at most 8 digits), written without a
/// heap string. Marked sensitive, so HPACK sends it as a literal: a value that changes on every
/// request would otherwise be inserted into the connection's table each time, evicting entries
/// that do repeat.
pub fn grpc_timeout_value(ms: u128) -> HeaderValue {
    let mut n = ms.clamp(1, 99_999_999);
    let mut buf = [0u8; 9];
    buf[8] = b'm';
    let mut start = 8;
    while n > 0 {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut v = HeaderValue::from_bytes(&buf[start..]).unwrap_or(HeaderValue::from_static("1m"));
    v.set_sensitive(true);
    v
}

/// Whole seconds for `Retry-After`: rounded up so a caller never comes back early, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// A level as an `x-bulwark-degradation` value (no allocation).
pub fn level_value(level: Level) -> HeaderValue {
    HeaderValue::from_static(level.as_str())
}

/// The host part of an authority (`name.ns:8080` → `name.ns`, `[::1]:80` → `::1`).
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_hop_by_hop_and_connection_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("expect", HeaderValue::from_static("100-continue"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep", "te"]);

        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn any_single_hop_by_hop_header_is_found_and_removed() {
        for name in HOP_BY_HOP.iter().chain([&header::EXPECT]) {
            let mut h = HeaderMap::new();
            h.insert("x-keep", HeaderValue::from_static("yes"));
            h.insert(name.clone(), HeaderValue::from_static("gzip"));
            strip_hop_by_hop(&mut h);
            let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-keep"], "{name} was not stripped");
        }
        // A gRPC request has nothing to strip: `te: trailers` stays, the map is untouched.
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("grpc-timeout", HeaderValue::from_static("1S"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // Another spelling of `trailers` is written the one way HTTP/2 accepts.
        h.insert("te", HeaderValue::from_static("Trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn parses_grpc_timeout() {
        let t = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            grpc_timeout(&h)
        };
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("123456789m"), None);
        assert_eq!(t("m"), None);
        assert_eq!(t("10x"), None);
        assert_eq!(t("-1S"), None);
    }

    #[test]
    fn writes_grpc_timeout() {
        let t = |ms: u128| {
            let v = grpc_timeout_value(ms);
            assert!(v.is_sensitive());
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, v.clone());
            (v.to_str().unwrap().to_string(), grpc_timeout(&h))
        };
        assert_eq!(t(1500), ("1500m".into(), Some(Duration::from_millis(1500))));
        assert_eq!(t(0), ("1m".into(), Some(Duration::from_millis(1))));
        assert_eq!(t(7), ("7m".into(), Some(Duration::from_millis(7))));
        assert_eq!(
            t(u128::MAX),
            ("99999999m".into(), Some(Duration::from_millis(99_999_999)))
        );
    }

    #[test]
    fn host_of_strips_ports() {
        assert_eq!(host_of("echo:8080"), "echo");
        assert_eq!(host_of("echo"), "echo");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("a.b.svc.cluster.local:80"), "a.b.svc.cluster.local");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
        assert_eq!(retry_after_secs(Duration::from_millis(250)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(30_001)), 31);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
