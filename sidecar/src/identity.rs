//! Request identity: keeps or creates `x-request-id` and a W3C `traceparent`, so the app and
//! every upstream see the same ids and logs can be joined across hops.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Ensures both headers are present and valid; returns the request id.
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    let id = match headers.get(REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
        _ => {
            let v = hex_value(fastrand::u128(..), 32);
            headers.insert(REQUEST_ID, v.clone());
            v
        }
    };
    let valid = headers
        .get(TRACEPARENT)
        .is_some_and(|v| valid_traceparent(v.as_bytes()));
    if !valid {
        let trace = fastrand::u128(1..);
        let span = fastrand::u64(1..);
        let text = format!("00-{trace:032x}-{span:016x}-01");
        if let Ok(v) = HeaderValue::from_str(&text) {
            headers.insert(TRACEPARENT, v);
        }
    }
    id
}

fn hex_value(n: u128, width: usize) -> HeaderValue {
    HeaderValue::from_str(&format!("{n:0width$x}")).unwrap_or(HeaderValue::from_static("0"))
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
        let id = ensure(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h[REQUEST_ID], id);
        assert!(valid_traceparent(h[TRACEPARENT].as_bytes()));
    }

    #[test]
    fn keeps_valid_ids_and_replaces_invalid_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc"));
        h.insert(TRACEPARENT, HeaderValue::from_static(tp));
        assert_eq!(ensure(&mut h), "abc");
        assert_eq!(h[TRACEPARENT], tp);

        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("00-zz-00-01"));
        ensure(&mut h);
        assert_ne!(h[TRACEPARENT], "00-zz-00-01");
        assert!(!valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
    }
}
