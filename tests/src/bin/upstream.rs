//! `bulwark-upstream`: the kit's HTTP and gRPC test upstreams as a standalone process, for the
//! demo and the benchmarks.
//!
//! ```text
//! bulwark-upstream --http 127.0.0.1:8081 --grpc 127.0.0.1:9091 [--fail-percent 10] [--workers 8]
//! ```
//!
//! Prints `listening http=ADDR grpc=ADDR` once both are bound; stops on SIGINT or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context as _;
use bulwark_tests::{GrpcUpstream, HttpUpstream};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Test upstreams: HTTP (`/echo`, `/status/{code}`, `/bytes/{n}`, ...) and gRPC `Echo`.
#[derive(Debug, Parser)]
#[command(name = "bulwark-upstream", version)]
struct Args {
    /// Address of the HTTP upstream (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:8081")]
    http: SocketAddr,
    /// Address of the gRPC upstream.
    #[arg(long, default_value = "127.0.0.1:9091")]
    grpc: SocketAddr,
    /// Share of requests (0–100) answered with 503 / gRPC UNAVAILABLE, evenly spread.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    fail_percent: u32,
    /// Workers of the HTTP upstream's `/work/{ms}` (default: no limit): an app of known
    /// capacity, `workers` / `ms` requests a millisecond.
    #[arg(long)]
    workers: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut http = HttpUpstream::builder()
        .bind(args.http)
        .fail_percent(args.fail_percent);
    if let Some(n) = args.workers {
        http = http.workers(n);
    }
    let http = http
        .start()
        .await
        .with_context(|| format!("bind the HTTP upstream on {}", args.http))?;
    let grpc = GrpcUpstream::builder()
        .bind(args.grpc)
        .fail_percent(args.fail_percent)
        .start()
        .await
        .with_context(|| format!("bind the gRPC upstream on {}", args.grpc))?;
    println!("listening http={} grpc={}", http.addr(), grpc.addr());

    let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("listen for SIGINT")?,
        _ = term.recv() => {}
    }
    eprintln!(
        "stopping: http served {} requests, grpc served {} calls",
        http.requests(),
        grpc.requests()
    );
    Ok(())
}
