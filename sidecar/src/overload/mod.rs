//! Overload protection's pure parts, for the policy stages that use them: the adaptive
//! concurrency limit ([`limit`]).

pub mod limit;
