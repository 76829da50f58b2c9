//! Request correlation: keeps or creates `x-request-id` and a W3C `traceparent`, so the app and
//! every upstream see the same ids and logs can be joined across hops. A trace the sidecar
//! starts is sampled or not by the sampling ratio, and its `traceparent` says which; one that
//! came with the request keeps the caller's decision.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The ids a request travels with, for its access log line.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: HeaderValue,
    pub traceparent: HeaderValue,
    /// Whether the trace is sampled (the `traceparent`'s flag).
    pub sampled: bool,
    /// Whether the `traceparent` came with the request (the caller's span is the parent).
    pub continued: bool,
}

impl RequestIds {
    /// The trace id of the `traceparent` (32 hex digits), as the access log prints it.
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .to_str()
            .ok()
            .and_then(|t| t.get(3..35))
            .unwrap_or("")
    }
}

/// Ensures both headers are present and valid; returns them. A trace started here is sampled
/// with probability `ratio` (0 to 1).
///
/// Both values are unique per request, so they are marked sensitive: HTTP/2 then sends them as
/// never-indexed literals instead of churning the HPACK dynamic table (every new value evicted
/// an entry and was compared against the previous ones on each request).
pub fn ensure(headers: &mut HeaderMap, ratio: f64) -> RequestIds {
    let id = match headers.get_mut(REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 200 => {
            v.set_sensitive(true);
            v.clone()
        }
        _ => {
            let mut buf = [0u8; 32];
            hex(fastrand::u128(..), &mut buf);
            let v = unique_value(&buf);
            headers.insert(REQUEST_ID, v.clone());
            v
        }
    };
    let (traceparent, sampled, continued) = match headers.get_mut(TRACEPARENT) {
        Some(v) if valid_traceparent(v.as_bytes()) => {
            v.set_sensitive(true);
            (v.clone(), sampled_flag(v.as_bytes()), true)
        }
        _ => {
            let sampled = ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio);
            let v = traceparent(fastrand::u128(1..), fastrand::u64(1..), sampled);
            headers.insert(TRACEPARENT, v.clone());
            (v, sampled, false)
        }
    };
    RequestIds {
        request_id: id,
        traceparent,
        sampled,
        continued,
    }
}

/// A version 00 `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<flags>`, sensitive.
pub fn traceparent(trace_id: u128, parent_id: u64, sampled: bool) -> HeaderValue {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(trace_id, &mut buf[3..35]);
    hex(u128::from(parent_id), &mut buf[36..52]);
    if sampled {
        buf[54] = b'1';
    }
    unique_value(&buf)
}

/// The trace id and parent id of a valid `traceparent`.
pub fn parse_ids(v: &[u8]) -> Option<(u128, u64)> {
    let text = std::str::from_utf8(v).ok()?;
    let trace = u128::from_str_radix(text.get(3..35)?, 16).ok()?;
    let parent = u64::from_str_radix(text.get(36..52)?, 16).ok()?;
    Some((trace, parent))
}

/// The sampled bit of a valid `traceparent`'s flags.
fn sampled_flag(v: &[u8]) -> bool {
    let low = v.get(54).copied().unwrap_or(b'0');
    let nibble = match low {
        b'0'..=b'9' => low - b'0',
        b'a'..=b'f' => low - b'a' + 10,
        _ => 0,
    };
    nibble & 1 == 1
}

/// Writes the low `out.len() * 4` bits of `n` as lowercase hex, zero-padded.
fn hex(mut n: u128, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// A header value made of hex digits and dashes (always valid), marked sensitive.
fn unique_value(bytes: &[u8]) -> HeaderValue {
    let mut v = HeaderValue::from_bytes(bytes).unwrap_or(HeaderValue::from_static("0"));
    v.set_sensitive(true);
    v
}

/// `version-traceid-parentid-flags`, lowercase hex, ids not all zero (W3C Trace Context §3.2).
pub fn valid_traceparent(v: &[u8]) -> bool {
    let is_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let not_zero = |s: &[u8]| s.iter().any(|&c| c != b'0');
    if v.len() < 55 {
        return false;
    }
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && is_hex(version)
        && version != b"ff"
        && (v.len() == 55 || (version != b"00" && v[55] == b'-'))
        && is_hex(trace)
        && not_zero(trace)
        && is_hex(parent)
        && not_zero(parent)
        && is_hex(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_ids() {
        let mut h = HeaderMap::new();
        let ids = ensure(&mut h, 1.0);
        assert!(ids.sampled && !ids.continued);
        assert!(h[TRACEPARENT].to_str().unwrap().ends_with("-01"));
        let id = ids.request_id.clone();
        assert_eq!(id.len(), 32);
        assert_eq!(h[TRACEPARENT], ids.traceparent);
        assert_eq!(ids.trace_id(), &h[TRACEPARENT].to_str().unwrap()[3..35]);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(h[REQUEST_ID], id);
        assert!(valid_traceparent(h[TRACEPARENT].as_bytes()));
        // Unique per request: never indexed by HPACK.
        assert!(h[REQUEST_ID].is_sensitive() && h[TRACEPARENT].is_sensitive());
        let mut other = HeaderMap::new();
        assert_ne!(ensure(&mut other, 1.0).request_id, id);
        assert_ne!(other[TRACEPARENT], h[TRACEPARENT]);
    }

    #[test]
    fn writes_zero_padded_lowercase_hex() {
        let mut buf = [0u8; 6];
        hex(0xab_cdef, &mut buf);
        assert_eq!(&buf, b"abcdef");
        let mut buf = [0u8; 4];
        hex(0xa, &mut buf);
        assert_eq!(&buf, b"000a");
        let mut buf = [0u8; 32];
        hex(u128::MAX, &mut buf);
        assert_eq!(&buf, b"ffffffffffffffffffffffffffffffff");
    }

    #[test]
    fn keeps_valid_ids_and_replaces_invalid_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc"));
        h.insert(TRACEPARENT, HeaderValue::from_static(tp));
        let ids = ensure(&mut h, 0.0);
        assert!(ids.sampled && ids.continued, "the caller's decision stands");
        assert_eq!(ids.request_id, "abc");
        assert_eq!(ids.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h[TRACEPARENT], tp);
        assert!(h[REQUEST_ID].is_sensitive() && h[TRACEPARENT].is_sensitive());

        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("00-zz-00-01"));
        ensure(&mut h, 1.0);
        assert_ne!(h[TRACEPARENT], "00-zz-00-01");
        assert!(!valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
    }

    #[test]
    fn a_started_trace_follows_the_ratio_and_a_continued_one_the_caller() {
        let sampled = |ratio: f64| {
            (0..1000)
                .filter(|_| {
                    let mut h = HeaderMap::new();
                    let ids = ensure(&mut h, ratio);
                    let flag = h[TRACEPARENT].to_str().unwrap().ends_with("-01");
                    assert_eq!(flag, ids.sampled);
                    ids.sampled
                })
                .count()
        };
        assert_eq!(sampled(0.0), 0);
        assert_eq!(sampled(1.0), 1000);
        let tenth = sampled(0.1);
        assert!((50..=160).contains(&tenth), "{tenth} of 1000 at 0.1");

        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        let ids = ensure(&mut h, 1.0);
        assert!(!ids.sampled && ids.continued, "not sampled by the caller");
        assert_eq!(
            parse_ids(ids.traceparent.as_bytes()),
            Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7))
        );
        assert_eq!(
            traceparent(0x4bf9, 0xab, true),
            "00-00000000000000000000000000004bf9-00000000000000ab-01"
        );
    }
}
