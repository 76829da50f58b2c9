//! The small parsers on every path: policy durations and percentages, `grpc-timeout`,
//! `Retry-After` (delay-seconds and the three HTTP-date forms) and `grpc-retry-pushback-ms`.
//! None panics or overflows; what each accepts is in range.
#![no_main]

use std::time::{Duration, SystemTime};

use bulwark_proto::policy::{Percent, units::parse_duration};
use bulwark_sidecar::headers::grpc_timeout;
use bulwark_sidecar::policy_stack::retry::policy::pushback;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_duration(text);
        if let Ok(v) = Percent::new(text).parse() {
            assert!((0.0..=100.0).contains(&v), "{text:?} → {v}");
        }
    }
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    for name in ["grpc-timeout", "retry-after", "grpc-retry-pushback-ms"] {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.clone());
        if let Some(timeout) = grpc_timeout(&headers) {
            // At most 8 digits of hours.
            assert!(
                timeout <= Duration::from_secs(99_999_999 * 3600),
                "{value:?}"
            );
        }
        let _ = pushback(
            &headers,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
    }
});
