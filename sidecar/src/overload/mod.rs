//! Overload protection's pure parts, for the policy stages that use them: the adaptive
//! concurrency limit ([`limit`]), the queue in front of it, served and shed by criticality
//! ([`queue`]), token buckets for local rate limits ([`bucket`]) and client-side throttling
//! ([`throttle`]).

pub mod bucket;
pub mod limit;
pub mod queue;
pub mod throttle;
