//! Wall-clock timestamps for records (history `at`, ack `at`) as RFC 3339 text in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as `2025-11-22T03:12:00.123Z`.
pub fn now() -> String {
    format_unix_millis(unix_millis())
}

/// Now, in milliseconds since the Unix epoch.
pub fn unix_millis() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since.as_millis().try_into().unwrap_or(i64::MAX)
}

/// Formats milliseconds since the Unix epoch, milliseconds included.
pub fn format_unix_millis(millis: i64) -> String {
    bulwark_proto::time::rfc3339_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_looks_like_rfc3339() {
        let s = now();
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
    }
}
