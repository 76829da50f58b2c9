//! The long-lived gRPC bidirectional stream: one `Echo/Bidi` call kept busy with a window of
//! messages in flight (a new one goes out as each echo comes back), counting echoes per second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tonic::transport::Endpoint;

use crate::grpc::{BIDI, EchoReply, EchoRequest};

/// What the load tool prints for a bidi run (one JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BidiReport {
    pub seconds: f64,
    /// Messages in flight at most.
    pub window: usize,
    pub payload_bytes: usize,
    pub sent: u64,
    /// Echoes received in all, the drain after the measured time included.
    pub received: u64,
    /// Echoes received within the measured time, per second.
    pub messages_per_second: f64,
    pub error: Option<String>,
}

/// How long to wait for the next echo before calling the stream stuck.
const STALL: Duration = Duration::from_secs(10);

/// Runs one bidi stream to `addr` with `:authority: authority` for `duration`.
pub async fn run(
    addr: SocketAddr,
    authority: &str,
    duration: Duration,
    window: usize,
    payload_bytes: usize,
) -> BidiReport {
    let sent = Arc::new(AtomicU64::new(0));
    let mut report = BidiReport {
        seconds: duration.as_secs_f64(),
        window,
        payload_bytes,
        sent: 0,
        received: 0,
        messages_per_second: 0.0,
        error: None,
    };
    let result = stream(
        addr,
        authority,
        duration,
        window,
        payload_bytes,
        &sent,
        &mut report,
    )
    .await;
    report.sent = sent.load(Ordering::Relaxed);
    if let Err(e) = result {
        report.error = Some(e.to_string());
    }
    report
}

async fn stream(
    addr: SocketAddr,
    authority: &str,
    duration: Duration,
    window: usize,
    payload_bytes: usize,
    sent: &Arc<AtomicU64>,
    report: &mut BidiReport,
) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .origin(format!("http://{authority}").parse()?)
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;

    let credit = Arc::new(Semaphore::new(window.max(1)));
    let stop = Arc::new(AtomicBool::new(false));
    let message = EchoRequest {
        message: String::new(),
        payload: Bytes::from(vec![b'x'; payload_bytes]),
    };
    let outbound = {
        let (credit, stop, sent) = (credit.clone(), stop.clone(), sent.clone());
        futures_util::stream::unfold((), move |()| {
            let (credit, stop, sent, message) =
                (credit.clone(), stop.clone(), sent.clone(), message.clone());
            async move {
                credit.acquire().await.ok()?.forget();
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                Some((message, ()))
            }
        })
    };

    let start = Instant::now();
    let deadline = start + duration;
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
    let response = grpc
        .streaming(
            tonic::Request::new(outbound),
            PathAndQuery::from_static(BIDI),
            codec,
        )
        .await?;
    let mut inbound = response.into_inner();
    let mut in_time = 0u64;
    loop {
        let next = tokio::time::timeout(STALL, inbound.message())
            .await
            .map_err(|_| anyhow::anyhow!("no echo for {STALL:?}"))??;
        if next.is_none() {
            break;
        }
        report.received += 1;
        if Instant::now() < deadline {
            in_time += 1;
        } else {
            // Past the measured time: stop sending, then drain the echoes still in flight until
            // the server ends the call.
            stop.store(true, Ordering::Relaxed);
        }
        credit.add_permits(1);
    }
    report.messages_per_second = in_time as f64 / duration.as_secs_f64();
    Ok(())
}
