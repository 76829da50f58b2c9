//! The per-upstream resilience stack: what each layer decides and in which order they apply.
//! Pure decision logic (schedules, windows, state machines) lives in one file per concern and is
//! unit-tested with explicit clocks.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod config;
pub mod outcome;
pub mod outlier;
pub mod replay;
pub mod retry_policy;
