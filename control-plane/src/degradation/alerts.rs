//! Alert webhooks: the elected replica posts every level change and breaker transition to the
//! service's `alerts.webhook` as JSON with a Slack-compatible `text` field. Sending never
//! blocks anything: alerts are queued (and dropped, counted, when the queue is full), limited
//! per service to `alerts.maxPerMinute`, and delivered with retries and backoff. A service's
//! alerts arrive in the order they were made (one delivery queue per service: a retried alert
//! holds back the ones after it), while different services are delivered side by side.
//! Deduplication happens upstream: only the leader makes alerts, one per transition of the
//! service's state as stored in etcd (`levels`). Each delivery, sent or given up, is recorded
//! as an `alert` event naming the webhook's host only (a webhook's path often holds its
//! secret).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::backoff::Backoff;
use bytes::Bytes;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::degradation::events::{self, Recorder};
use crate::metrics::Metrics;

const QUEUE: usize = 1024;
const CONCURRENT_DELIVERIES: usize = 8;
const ATTEMPTS: u32 = 4;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);

/// One alert, as posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// `namespace/service`.
    pub service: String,
    /// `level` or `breaker`.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub reasons: Vec<String>,
    /// Unix milliseconds.
    pub time: i64,
    /// RFC 3339.
    pub at: String,
    /// One line, for chat tools.
    pub text: String,
}

/// Where and how often.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook: String,
    pub max_per_minute: u32,
}

/// The sending side, cheap to clone.
#[derive(Debug, Clone)]
pub struct AlertSender {
    tx: mpsc::Sender<(Alert, Delivery)>,
    metrics: Arc<Metrics>,
}

impl AlertSender {
    /// Queues an alert; never waits.
    pub fn send(&self, alert: Alert, delivery: Delivery) {
        if let Err(e) = self.tx.try_send((alert, delivery)) {
            self.metrics.alert("dropped");
            tracing::warn!(error = %e, "alert queue full; alert dropped");
        }
    }
}

/// The queue and its worker.
pub fn channel(metrics: Arc<Metrics>) -> (AlertSender, AlertWorker) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        AlertSender {
            tx,
            metrics: metrics.clone(),
        },
        AlertWorker {
            rx,
            metrics,
            events: None,
        },
    )
}

pub struct AlertWorker {
    rx: mpsc::Receiver<(Alert, Delivery)>,
    metrics: Arc<Metrics>,
    events: Option<Arc<Recorder>>,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

impl AlertWorker {
    /// Records each delivery as an event in `events`.
    pub fn with_events(mut self, events: Arc<Recorder>) -> Self {
        self.events = Some(events);
        self
    }

    /// Delivers alerts until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let client = match client() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "cannot set up TLS for alert webhooks; alerts are off");
                return;
            }
        };
        let deliveries = Arc::new(Semaphore::new(CONCURRENT_DELIVERIES));
        let clock = MonotonicClock;
        let mut limits: HashMap<String, Bucket> = HashMap::new();
        let mut queues: HashMap<String, mpsc::UnboundedSender<(Alert, Delivery)>> = HashMap::new();
        loop {
            let (alert, delivery) = tokio::select! {
                next = self.rx.recv() => match next {
                    Some(next) => next,
                    None => return,
                },
                _ = shutdown.changed() => return,
            };
            let per_minute = delivery.max_per_minute.max(1);
            let bucket = limits
                .entry(alert.service.clone())
                .or_insert_with(|| Bucket::new(per_minute, &clock));
            if bucket.per_minute != per_minute {
                // The ServicePolicy's alerts.maxPerMinute changed: a new budget.
                *bucket = Bucket::new(per_minute, &clock);
            }
            if !bucket.take() {
                self.metrics.alert("rate-limited");
                tracing::warn!(service = %alert.service, text = %alert.text, "alert rate limit reached; alert dropped");
                continue;
            }
            // The per-service rate limit bounds what each queue can hold.
            let queue = queues.entry(alert.service.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(deliver_in_order(
                    rx,
                    client.clone(),
                    deliveries.clone(),
                    self.metrics.clone(),
                    self.events.clone(),
                ));
                tx
            });
            if queue.send((alert, delivery)).is_err() {
                tracing::warn!("alert delivery queue closed; alert dropped");
                self.metrics.alert("dropped");
            }
        }
    }
}

/// Delivers one service's alerts, one after the other, each holding one of the shared
/// delivery permits while it is posted (and retried).
async fn deliver_in_order(
    mut rx: mpsc::UnboundedReceiver<(Alert, Delivery)>,
    client: HttpsClient,
    deliveries: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    events: Option<Arc<Recorder>>,
) {
    while let Some((alert, delivery)) = rx.recv().await {
        let Ok(permit) = deliveries.acquire().await else {
            return;
        };
        let result = deliver(&client, &alert, &delivery.webhook).await;
        drop(permit);
        let host = webhook_host(&delivery.webhook);
        let (outcome, text) = match &result {
            Ok(()) => {
                metrics.alert("sent");
                tracing::info!(service = %alert.service, webhook = %delivery.webhook, text = %alert.text, "alert sent");
                ("sent", format!("alert sent to {host}: {}", alert.text))
            }
            Err(e) => {
                metrics.alert("failed");
                tracing::warn!(service = %alert.service, webhook = %delivery.webhook, error = %e, "alert not delivered");
                (
                    "failed",
                    format!("alert to {host} not delivered ({e}): {}", alert.text),
                )
            }
        };
        if let Some(events) = &events {
            events
                .record(events::record(
                    crate::timestamp::unix_millis(),
                    alert.service.clone(),
                    "alert",
                    (alert.kind.clone(), outcome.to_string()),
                    alert.reasons.clone(),
                    String::new(),
                    text,
                ))
                .await;
        }
    }
}

/// The host (and port) of a webhook URL, which is all an event tells of it.
fn webhook_host(webhook: &str) -> String {
    let uri = webhook.parse::<hyper::Uri>().ok();
    match uri.as_ref().and_then(|u| u.authority()) {
        Some(a) => match a.port_u16() {
            Some(port) => format!("{}:{port}", a.host()),
            None => a.host().to_string(),
        },
        None => "the webhook".to_string(),
    }
}

fn client() -> Result<HttpsClient, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Posts `alert`, retrying failures that may pass (connection errors, timeouts, 5xx, 429).
async fn deliver(client: &HttpsClient, alert: &Alert, webhook: &str) -> Result<(), String> {
    let body = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_FIRST * 2u32.pow(ATTEMPTS));
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let request = hyper::Request::post(webhook)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "bulwark-control-plane")
            .body(Full::new(Bytes::from(body.clone())))
            // Not the URL itself: its path often holds the webhook's secret, and this error is
            // recorded in an event.
            .map_err(|e| format!("the webhook URL is not valid: {e}"))?;
        match tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => return Ok(()),
            Ok(Ok(response)) => {
                let status = response.status();
                last = format!("answered {status}");
                if status.is_client_error() && status != hyper::StatusCode::TOO_MANY_REQUESTS {
                    return Err(last);
                }
            }
            Ok(Err(e)) => last = format!("request failed: {e}"),
            Err(_) => last = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff.next_wait()).await;
        }
    }
    Err(format!("{last} (after {ATTEMPTS} attempts)"))
}

/// A service's alert budget: `per_minute` alerts at once, then one every `60 s / per_minute`
/// (governor's GCRA, the same shape as a token bucket refilled continuously).
struct Bucket<C: Clock = MonotonicClock> {
    per_minute: u32,
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
}

impl<C: Clock + Clone> Bucket<C> {
    fn new(per_minute: u32, clock: &C) -> Self {
        let per_minute = per_minute.max(1);
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        Bucket {
            per_minute,
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
        }
    }

    /// Takes one alert's token, if there is one.
    fn take(&self) -> bool {
        self.limiter.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_the_webhooks_host_and_never_its_secret_path() {
        assert_eq!(
            webhook_host("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "hooks.slack.com"
        );
        assert_eq!(
            webhook_host("http://127.0.0.1:9000/hook?token=s"),
            "127.0.0.1:9000"
        );
        assert_eq!(webhook_host("not a url"), "the webhook");
    }

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_interval() {
        let clock = governor::clock::FakeRelativeClock::default();
        let bucket = Bucket::new(2, &clock);
        assert!(bucket.take());
        assert!(bucket.take());
        assert!(!bucket.take());
        clock.advance(Duration::from_secs(29));
        assert!(!bucket.take());
        clock.advance(Duration::from_secs(2));
        assert!(bucket.take());
        assert!(!bucket.take());
    }

    #[test]
    fn alerts_carry_a_slack_text_field() {
        let alert = Alert {
            service: "mrg/orders".into(),
            kind: "level".into(),
            from: "NORMAL".into(),
            to: "DEGRADED".into(),
            reasons: vec!["smtp unhealthy (breaker open on 2/4 pods)".into()],
            time: 1,
            at: "1970-01-01T00:00:00.001Z".into(),
            text: "mrg/orders NORMAL -> DEGRADED: smtp unhealthy (breaker open on 2/4 pods)".into(),
        };
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(
            json["text"],
            "mrg/orders NORMAL -> DEGRADED: smtp unhealthy (breaker open on 2/4 pods)"
        );
        assert_eq!(json["to"], "DEGRADED");
    }
}
