//! RFC 3339 text in UTC for instants given as unix milliseconds, the way the control plane
//! stores them and meshctl prints them, formatted by the `time` crate.

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

const MILLIS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
const SECONDS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// `2025-11-22T03:12:00.123Z`.
pub fn rfc3339_millis(millis: i64) -> String {
    format(millis, MILLIS)
}

/// `2025-11-22T03:12:00Z`, the sub-second part dropped.
pub fn rfc3339_seconds(millis: i64) -> String {
    format(millis, SECONDS)
}

/// An instant outside the years -9999 to 9999 (no record has one) is said in milliseconds.
fn format(millis: i64, description: &[BorrowedFormatItem<'_>]) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(description).ok())
        .unwrap_or_else(|| format!("{millis} ms after 1970-01-01T00:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_763_781_120_123),
            "2025-11-22T03:12:00.123Z"
        );
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_seconds(1_795_342_500_999), "2026-11-22T10:15:00Z");
        assert_eq!(rfc3339_seconds(-1), "1969-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_millis(i64::MAX),
            "9223372036854775807 ms after 1970-01-01T00:00:00Z"
        );
    }
}
