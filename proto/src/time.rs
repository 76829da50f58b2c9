//! RFC 3339 text in UTC for instants given as unix milliseconds, the way the control plane
//! stores them and meshctl prints them. Plain arithmetic; no calendar dependency.

/// `2025-11-22T03:12:00.123Z`.
pub fn rfc3339_millis(millis: i64) -> String {
    let (date, ms) = rfc3339_parts(millis);
    format!("{date}.{ms:03}Z")
}

/// `2025-11-22T03:12:00Z`, the sub-second part dropped.
pub fn rfc3339_seconds(millis: i64) -> String {
    format!("{}Z", rfc3339_parts(millis).0)
}

/// (`YYYY-MM-DDTHH:MM:SS`, milliseconds).
fn rfc3339_parts(millis: i64) -> (String, i64) {
    let secs = millis.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let date = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    );
    (date, millis.rem_euclid(1000))
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`: 400-year eras, years starting in March so that the
/// leap day comes last).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
    }
}
