//! `bulwark-cp-fanout`: how fast one control-plane replica fans a change out to many sidecars.
//! It connects N simulated sidecars (Discovery streams multiplexed over a few HTTP/2
//! connections, as many pods' sidecars would look to one replica), waits for every initial
//! snapshot, then applies a change through the REST API and measures, per sidecar, the time
//! from the apply until its new snapshot arrived and was ACKed: p50, p99 and max over rounds.
//! It also reports the replica's RSS per connected sidecar (from /proc).

use std::time::Duration;

use anyhow::{Context, bail};
use bulwark_proto::v1::discovery_client::DiscoveryClient;
use bulwark_proto::v1::{Ack, Hello, SidecarMessage, control_plane_message, sidecar_message};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    /// The replica's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    grpc: String,
    /// The replica's REST address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// Simulated sidecars.
    #[arg(long, default_value_t = 1000)]
    sidecars: usize,
    /// Sidecar streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    per_connection: usize,
    /// Changes applied and measured.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The replica's pid, for its RSS.
    #[arg(long)]
    pid: Option<u32>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn policy(round: usize) -> String {
    serde_json::json!({
        "resources": [{
            "apiVersion": "bulwark/v1",
            "kind": "UpstreamPolicy",
            "metadata": { "name": "fanout", "namespace": "bench", "labels": { "round": round.to_string() } },
            "spec": { "endpoints": { "static": ["127.0.0.1:9"] } }
        }],
        "by": "bulwark-cp-fanout"
    })
    .to_string()
}

async fn apply(http: &str, round: usize) -> anyhow::Result<()> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(format!("{http}/v1/apply"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(policy(round))))?;
    let rsp = client.request(req).await.context("POST /v1/apply")?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "apply answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// One simulated sidecar: Hello, then ACK every snapshot, reporting each arrival.
async fn sidecar(
    channel: tonic::transport::Channel,
    id: usize,
    arrivals: mpsc::UnboundedSender<(usize, i64, Instant)>,
) -> anyhow::Result<()> {
    let mut client = DiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel::<SidecarMessage>(4);
    tx.send(SidecarMessage {
        message: Some(sidecar_message::Message::Hello(Hello {
            namespace: "bench".into(),
            service: format!("svc-{}", id % 100),
            pod: format!("pod-{id}"),
            last_applied_version: 0,
        })),
    })
    .await?;
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(msg) = inbound.message().await? {
        if let Some(control_plane_message::Message::Snapshot(s)) = msg.message {
            let at = Instant::now();
            tx.send(SidecarMessage {
                message: Some(sidecar_message::Message::Ack(Ack {
                    version: s.version,
                    error: String::new(),
                })),
            })
            .await?;
            let _ = arrivals.send((id, s.version, at));
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The policy must exist before the sidecars connect, so every round is an update.
    apply(&args.http, 0).await?;
    let rss_before = args.pid.and_then(rss_kib);

    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    let connections = args.sidecars.div_ceil(args.per_connection.max(1));
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(args.grpc.clone())?
            .connect()
            .await
            .with_context(|| format!("connect to {}", args.grpc))?;
        channels.push(channel);
    }
    let started = Instant::now();
    for id in 0..args.sidecars {
        let channel = channels[id % connections].clone();
        let tx = arrivals_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = sidecar(channel, id, tx).await {
                eprintln!("sidecar {id}: {e:#}");
            }
        });
    }
    // Every sidecar's first snapshot.
    let mut latest = vec![0i64; args.sidecars];
    let mut initial = 0;
    while initial < args.sidecars {
        let Some((id, version, _)) =
            tokio::time::timeout(Duration::from_secs(60), arrivals.recv()).await?
        else {
            bail!("arrivals ended");
        };
        if latest[id] == 0 {
            initial += 1;
        }
        latest[id] = version;
    }
    let connect_time = started.elapsed();
    let rss_after = args.pid.and_then(rss_kib);
    let mut all = Vec::with_capacity(args.sidecars * args.rounds);
    let mut maxes = Vec::new();
    for round in 1..=args.rounds {
        let before = latest.iter().copied().max().unwrap_or(0);
        let t0 = Instant::now();
        apply(&args.http, round).await?;
        let mut got = 0;
        let mut round_lat = Vec::with_capacity(args.sidecars);
        while got < args.sidecars {
            let Some((id, version, at)) =
                tokio::time::timeout(Duration::from_secs(60), arrivals.recv()).await?
            else {
                bail!("arrivals ended");
            };
            if version > before && latest[id] <= before {
                got += 1;
                round_lat.push(at - t0);
            }
            latest[id] = latest[id].max(version);
        }
        round_lat.sort();
        maxes.push(*round_lat.last().unwrap_or(&Duration::ZERO));
        all.extend(round_lat);
    }
    all.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "sidecars {}, connections {}, rounds {}: all connected with a snapshot in {:.0} ms",
        args.sidecars,
        connections,
        args.rounds,
        ms(connect_time)
    );
    println!(
        "propagation apply -> snapshot ACKed: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (worst round max {:.1} ms)",
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().unwrap_or(&Duration::ZERO)),
        ms(maxes.iter().copied().max().unwrap_or_default())
    );
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        let per = (a.saturating_sub(b) as f64 * 1024.0) / args.sidecars as f64;
        println!(
            "control-plane RSS: {:.1} MiB before, {:.1} MiB with {} sidecars: {:.1} KiB per sidecar",
            b as f64 / 1024.0,
            a as f64 / 1024.0,
            args.sidecars,
            per / 1024.0
        );
    }
    Ok(())
}
