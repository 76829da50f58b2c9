//! `bulwark-otlp-receiver`: the kit's OTLP/gRPC trace receiver as a process (no
//! OpenTelemetry Collector can be installed here), for the tracing tests.
//!
//! ```text
//! bulwark-otlp-receiver --listen 127.0.0.1:4317
//! ```
//!
//! Prints `listening ADDR` once bound, then one JSON line per span it receives.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;

/// An OTLP trace receiver that prints the spans it is sent.
#[derive(Debug, Parser)]
#[command(name = "bulwark-otlp-receiver", version)]
struct Args {
    /// Where to listen for OTLP/gRPC exports.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    println!("listening {}", listener.local_addr()?);
    bulwark_tests::otlp::serve(listener).await
}
