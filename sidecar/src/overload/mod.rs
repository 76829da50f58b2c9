//! Overload protection's pure parts, for the policy stages that use them: the adaptive
//! concurrency limit ([`limit`]), token buckets for local rate limits ([`bucket`]) and
//! client-side throttling ([`throttle`]).

pub mod bucket;
pub mod limit;
pub mod throttle;
