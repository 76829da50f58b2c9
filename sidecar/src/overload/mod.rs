//! Overload protection's pure parts, for the policy stages that use them: the adaptive
//! concurrency limit ([`limit`]), the queue in front of it, served and shed by criticality
//! ([`queue`]), token buckets for local rate limits ([`bucket`]) and client-side throttling
//! ([`throttle`]).

pub mod bucket;
pub mod limit;
pub mod queue;
pub mod throttle;

/// Why overload protection refused a request (the `reason` label and the access log's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The limit was reached and the queue was full of requests at least as critical.
    QueueFull,
    /// The limit was reached and the requests ahead in the queue would keep it waiting longer
    /// than it may wait.
    QueueWait,
    /// It waited in the queue as long as it may.
    QueueTimeout,
    /// It waited in the queue and a more critical request took its place.
    Displaced,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::QueueFull,
        Refusal::QueueWait,
        Refusal::QueueTimeout,
        Refusal::Displaced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue-full",
            Refusal::QueueWait => "queue-wait",
            Refusal::QueueTimeout => "queue-timeout",
            Refusal::Displaced => "displaced",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}
