//! Open-loop load: requests sent at a fixed rate whatever the answers, each on its own task,
//! so a stalled proxy shows as failures and late answers instead of a slower sender (what a
//! closed loop would hide). Each outcome is kept with the time it was sent, for the chaos
//! suite's figures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{self, HttpClient};
use crate::process::lock;

/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed request: when it was sent (since the load started) and why it failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub sent_at: Duration,
    pub reason: String,
}

/// What a run of load saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    pub failures: Vec<Failure>,
    /// The slowest successful answer.
    pub slowest: Duration,
    /// The slowest failed one.
    pub slowest_failure: Duration,
}

impl LoadReport {
    /// Failures, as one line each, for assertion messages.
    pub fn describe_failures(&self) -> String {
        self.failures
            .iter()
            .map(|f| format!("{:?}: {}", f.sent_at, f.reason))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: LoadReport) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.failures.extend(other.failures);
        self.slowest = self.slowest.max(other.slowest);
        self.slowest_failure = self.slowest_failure.max(other.slowest_failure);
    }

    /// The share of requests answered 200.
    pub fn success_ratio(&self) -> f64 {
        self.ok as f64 / (self.ok as usize + self.failures.len()).max(1) as f64
    }
}

/// Load running against one proxy until [`OpenLoad::stop`].
#[derive(Debug)]
pub struct OpenLoad {
    sender: tokio::task::JoinHandle<JoinSet<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    report: Arc<Mutex<LoadReport>>,
}

impl OpenLoad {
    /// Sends `GET uri` through `client` `per_second` times a second.
    pub fn start(client: HttpClient, uri: &str, per_second: u32) -> OpenLoad {
        OpenLoad::start_with(client, uri, &[], per_second)
    }

    /// Like [`OpenLoad::start`], each request with `headers`.
    pub fn start_with(
        client: HttpClient,
        uri: &str,
        headers: &[(&'static str, &'static str)],
        per_second: u32,
    ) -> OpenLoad {
        let headers: Arc<[(&'static str, &'static str)]> = Arc::from(headers);
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let uri = uri.to_string();
        let shared = report.clone();
        let sender = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
            // Open loop: ticks missed while the runtime was busy are sent at once.
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut in_flight = JoinSet::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return in_flight,
                }
                let sent_at = started.elapsed();
                lock(&shared).sent += 1;
                let (client, uri, shared) = (client.clone(), uri.clone(), shared.clone());
                let headers = headers.clone();
                in_flight.spawn(async move {
                    let started = Instant::now();
                    let outcome = one(&client, &uri, &headers).await;
                    let took = started.elapsed();
                    let mut report = lock(&shared);
                    match outcome {
                        Ok(()) => {
                            report.ok += 1;
                            report.slowest = report.slowest.max(took);
                        }
                        Err(reason) => {
                            report.slowest_failure = report.slowest_failure.max(took);
                            report.failures.push(Failure { sent_at, reason });
                        }
                    }
                });
                // Finished requests leave the set as it goes.
                while in_flight.try_join_next().is_some() {}
            }
        });
        OpenLoad {
            sender,
            stop,
            report,
        }
    }

    /// What was seen so far (requests still in flight are in `sent` only).
    pub fn so_far(&self) -> LoadReport {
        lock(&self.report).clone()
    }

    /// Stops sending at once; the future waits for every request in flight to end, and
    /// reports.
    pub fn stop(self) -> impl std::future::Future<Output = LoadReport> {
        let _ = self.stop.send(true);
        async move {
            if let Ok(mut in_flight) = self.sender.await {
                while in_flight.join_next().await.is_some() {}
            }
            lock(&self.report).clone()
        }
    }
}

async fn one(
    client: &HttpClient,
    uri: &str,
    headers: &[(&'static str, &'static str)],
) -> Result<(), String> {
    let mut request = client::request(Method::GET, uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(client::empty())
        .map_err(|e| format!("build the request: {e}"))?;
    match tokio::time::timeout(REQUEST_TIMEOUT, client::try_send(client, request)).await {
        Ok(Ok(answer)) if answer.status == StatusCode::OK => Ok(()),
        Ok(Ok(answer)) => Err(format!("{}: {}", answer.status, answer.text().trim())),
        Ok(Err(e)) => Err(format!("no answer: {e}")),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}
