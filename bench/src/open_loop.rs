//! The open-loop run: requests leave at their intended times whatever the earlier ones are doing,
//! and each latency counts from the intended send time, so a stall shows as the latency of every
//! request it delayed (no coordinated omission). Answers that are not a success (HTTP status other
//! than 200, `grpc-status` other than 0) are counted apart from transport errors.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::latency::{Latencies, Percentiles};
use crate::pace::{self, Schedule};

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// HTTP 200, or `grpc-status: 0`.
    Ok,
    /// Answered, but not with a success: the status seen.
    Failed(String),
    /// No answer: the connection or stream failed.
    Error(String),
}

/// One kind of request the open loop sends.
pub trait Call: Send + Sync + 'static {
    fn call(&self) -> impl Future<Output = Outcome> + Send;
}

/// What the load tool prints for an open-loop run (one JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenLoopReport {
    pub mode: String,
    pub rate: f64,
    pub seconds: f64,
    pub connections: usize,
    /// Requests sent (the schedule's count).
    pub sent: u64,
    pub ok: u64,
    /// Answered with a failure status.
    pub failed: u64,
    /// Connection or stream errors, and requests past the per-request timeout.
    pub errors: u64,
    /// Requests still running when the run gave up waiting for them.
    pub unfinished: u64,
    /// `ok / sent`.
    pub success_ratio: f64,
    /// Answers (`ok + failed`) per second, from the first intended send to the last answer.
    pub achieved_rps: f64,
    /// Latency of the answered requests, from the intended send time to the end of the response.
    pub latency: Option<Percentiles>,
    /// How late the pacer handed each request to the runtime (included in `latency`).
    pub dispatch_lag: Option<Percentiles>,
    pub first_failure: Option<String>,
    pub first_error: Option<String>,
}

/// How an open-loop run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub rate: f64,
    pub duration: Duration,
    /// A request not answered within this counts as an error.
    pub timeout: Duration,
    /// How long to wait for the requests in flight once the last one was sent.
    pub drain: Duration,
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    errors: u64,
    finished: u64,
    latencies: Latencies,
    last_answer: Option<Instant>,
    first_failure: Option<String>,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, intended: Instant, end: Instant) {
        self.finished += 1;
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Failed(why) => {
                self.failed += 1;
                self.first_failure.get_or_insert(why);
            }
            Outcome::Error(why) => {
                self.errors += 1;
                self.first_error.get_or_insert(why);
                return;
            }
        }
        self.latencies
            .record(end.saturating_duration_since(intended));
        self.last_answer = Some(self.last_answer.map_or(end, |t| t.max(end)));
    }
}

/// Sends `shape.rate` requests per second made by `caller` for `shape.duration`. Must run inside
/// a tokio runtime: the pacer thread spawns each request onto it.
pub async fn run<C: Call>(
    mode: &str,
    connections: usize,
    caller: Arc<C>,
    shape: Shape,
) -> anyhow::Result<OpenLoopReport> {
    let handle = tokio::runtime::Handle::current();
    let tally = Arc::new(Mutex::new(Tally::default()));
    // Every request holds a sender; `recv` returns `None` once all of them are done.
    let (in_flight, mut all_done) = mpsc::channel::<()>(1);
    // A little ahead, so that the pacer thread is running before the first send time.
    let schedule = Schedule::new(
        Instant::now() + Duration::from_millis(20),
        shape.rate,
        shape.duration,
    );
    let pacer_tally = tally.clone();
    let pacer = std::thread::spawn(move || {
        pace::run(&schedule, |intended| {
            let caller = caller.clone();
            let tally = pacer_tally.clone();
            let in_flight = in_flight.clone();
            handle.spawn(async move {
                let outcome = match tokio::time::timeout(shape.timeout, caller.call()).await {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::Error(format!("no answer within {:?}", shape.timeout)),
                };
                let end = Instant::now();
                tally
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(outcome, intended, end);
                drop(in_flight);
            });
        })
    });
    let mut lag = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    let _ = tokio::time::timeout(shape.drain, all_done.recv()).await;

    let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    let sent = schedule.count();
    let answered = tally.ok + tally.failed;
    let achieved_rps = match tally.last_answer {
        Some(last) if last > schedule.start() => {
            answered as f64 / (last - schedule.start()).as_secs_f64()
        }
        _ => 0.0,
    };
    Ok(OpenLoopReport {
        mode: mode.to_string(),
        rate: shape.rate,
        seconds: shape.duration.as_secs_f64(),
        connections,
        sent,
        ok: tally.ok,
        failed: tally.failed,
        errors: tally.errors,
        unfinished: sent.saturating_sub(tally.finished),
        success_ratio: tally.ok as f64 / sent as f64,
        achieved_rps,
        latency: tally.latencies.percentiles(),
        dispatch_lag: lag.percentiles(),
        first_failure: tally.first_failure.take(),
        first_error: tally.first_error.take(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Every tenth call fails, every call takes 1 ms.
    struct Every10th(AtomicU64);

    impl Call for Every10th {
        async fn call(&self) -> Outcome {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if self.0.fetch_add(1, Ordering::Relaxed) % 10 == 9 {
                Outcome::Failed("HTTP 503".into())
            } else {
                Outcome::Ok
            }
        }
    }

    #[tokio::test]
    async fn counts_every_request_and_its_outcome() {
        let shape = Shape {
            rate: 1_000.0,
            duration: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
            drain: Duration::from_secs(1),
        };
        let report = run("test", 1, Arc::new(Every10th(AtomicU64::new(0))), shape)
            .await
            .unwrap();
        assert_eq!(report.sent, 200);
        assert_eq!((report.ok, report.failed, report.errors), (180, 20, 0));
        assert_eq!(report.unfinished, 0);
        assert_eq!(report.success_ratio, 0.9);
        assert_eq!(report.first_failure.as_deref(), Some("HTTP 503"));
        let latency = report.latency.unwrap();
        assert_eq!(latency.count, 200);
        assert!(latency.p50_us >= 1_000.0, "{latency:?}");
    }

    /// Never answers.
    struct Stuck;

    impl Call for Stuck {
        async fn call(&self) -> Outcome {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_request_past_its_timeout_is_an_error() {
        let shape = Shape {
            rate: 100.0,
            duration: Duration::from_millis(50),
            timeout: Duration::from_millis(20),
            drain: Duration::from_secs(1),
        };
        let report = run("test", 1, Arc::new(Stuck), shape).await.unwrap();
        assert_eq!((report.sent, report.errors, report.ok), (5, 5, 0));
        assert!(report.latency.is_none());
    }
}
