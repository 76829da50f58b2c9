//! Default values of optional policy fields, in one place so that the sidecar, the control
//! plane and `docs/policies.md` agree.

use std::time::Duration;

pub const NAMESPACE: &str = "default";
pub const DNS_REFRESH: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub const RETRY_MAX_ATTEMPTS: u32 = 1;
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(25);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
pub const BACKOFF_MULTIPLIER: f64 = 2.0;
pub const BACKOFF_JITTER_PERCENT: f64 = 20.0;
pub const RETRY_REPLAY_BUFFER_BYTES: u64 = 64 * 1024;
pub const BUDGET_RATIO_PERCENT: f64 = 20.0;
pub const BUDGET_MIN_PER_SECOND: u32 = 10;
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

pub const BREAKER_WINDOW: Duration = Duration::from_secs(10);
pub const BREAKER_BUCKETS: u32 = 10;
pub const BREAKER_MIN_REQUESTS: u32 = 20;
pub const BREAKER_FAILURE_RATE_PERCENT: f64 = 50.0;
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);
pub const BREAKER_MAX_OPEN_FOR: Duration = Duration::from_secs(300);
pub const BREAKER_HALF_OPEN_PROBES: u32 = 3;

pub const OUTLIER_CONSECUTIVE_FAILURES: u32 = 5;
pub const OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(30);
pub const OUTLIER_MAX_EJECTED_PERCENT: u32 = 50;

pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub const PRIORITY_HEADER: &str = "x-priority";
pub const SHED_RETRY_AFTER: Duration = Duration::from_secs(30);
pub const LOWER_AFTER: Duration = Duration::from_secs(30);
pub const MAX_UNREADY_PERCENT: f64 = 30.0;
pub const ALERTS_MAX_PER_MINUTE: u32 = 10;

pub const CRITICALITY_HEADER: &str = "x-bulwark-criticality";
/// The criticality of a request that names none (and of a priority `normal`).
pub const CRITICALITY: &str = "sheddable-plus";
/// The criticality tiers, least critical first.
pub const CRITICALITIES: [&str; 4] = ["sheddable", "sheddable-plus", "critical", "critical-plus"];

pub const ADAPTIVE_MIN_LIMIT: u32 = 1;
pub const ADAPTIVE_MAX_LIMIT: u32 = 1000;
pub const ADAPTIVE_INITIAL_LIMIT: u32 = 20;
pub const ADAPTIVE_TOLERANCE_PERCENT: f64 = 25.0;
pub const ADAPTIVE_UPDATE_INTERVAL: Duration = Duration::from_millis(100);
pub const ADAPTIVE_PROBE_INTERVAL: Duration = Duration::from_secs(60);
pub const ADAPTIVE_PROBE_CONCURRENCY: u32 = 3;
pub const ADAPTIVE_PROBE_SAMPLES: u32 = 10;
pub const ADAPTIVE_MAX_QUEUE: u32 = 100;
pub const ADAPTIVE_MAX_QUEUE_WAIT: Duration = Duration::from_millis(500);
pub const ADAPTIVE_STANDING_QUEUE_WAIT: Duration = Duration::from_millis(5);

pub const RATE_LIMIT_PER: Duration = Duration::from_secs(1);
pub const THROTTLING_MULTIPLIER: f64 = 2.0;
pub const THROTTLING_WINDOW: Duration = Duration::from_secs(120);
