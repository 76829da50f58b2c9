//! `bulwark-load`: the load bench/run cannot get from wrk or h2load. Each subcommand prints one
//! JSON object on stdout.
//!
//! ```text
//! bulwark-load http     --addr 127.0.0.1:15101 --host bench-http --rate 2000 --seconds 10
//! bulwark-load grpc     --addr 127.0.0.1:15101 --host bench-grpc --rate 2000 --seconds 10
//! bulwark-load bidi     --addr 127.0.0.1:15101 --host bench-grpc --seconds 10
//! bulwark-load download --addr 127.0.0.1:15101 --host bench-bulk --bytes 100000000
//! bulwark-load upload   --addr 127.0.0.1:15101 --host bench-bulk --bytes 100000000
//! ```
//!
//! `http` and `grpc` are open loops: requests leave at a fixed rate whatever the answers do, and
//! latency counts from each request's intended send time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bulwark_bench::grpc::{self, EchoRequest, GrpcUnary};
use bulwark_bench::http1::Http1Get;
use bulwark_bench::open_loop::{self, Shape};
use bulwark_bench::{bidi, bulk};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bulwark-load",
    version,
    about = "Load for bench/run: open loop, bidi stream, large bodies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open loop of HTTP/1.1 `GET`s at a fixed rate.
    Http {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        open: Open,
        /// Request path.
        #[arg(long, default_value = "/status/200")]
        path: String,
        /// Keep-alive connections (one request at a time on each).
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    /// Open loop of gRPC unary calls (`Echo/Unary`, message "hi") at a fixed rate.
    Grpc {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        open: Open,
        /// HTTP/2 connections, used round-robin.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// One long-lived `Echo/Bidi` stream: echoed messages per second.
    Bidi {
        #[command(flatten)]
        target: Target,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Messages in flight at most.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// `GET /bytes/N`: one large response body.
    Download {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 100_000_000)]
        bytes: u64,
        /// Transfers, one after the other; the median one is reported.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
    },
    /// `POST /sink`: one large request body.
    Upload {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 100_000_000)]
        bytes: u64,
        /// Transfers, one after the other; the median one is reported.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
    },
}

#[derive(Debug, Args)]
struct Target {
    /// Where to connect: the upstream itself or a proxy's listener.
    #[arg(long)]
    addr: SocketAddr,
    /// `Host` / `:authority` (a proxy routes by it).
    #[arg(long)]
    host: String,
}

#[derive(Debug, Args)]
struct Open {
    /// Requests per second.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// A request not answered within this many seconds counts as an error.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

impl Open {
    fn shape(&self) -> anyhow::Result<Shape> {
        anyhow::ensure!(self.rate > 0.0, "--rate must be above 0");
        Ok(Shape {
            rate: self.rate,
            duration: Duration::try_from_secs_f64(self.seconds).context("--seconds")?,
            timeout: Duration::try_from_secs_f64(self.timeout).context("--timeout")?,
            drain: Duration::try_from_secs_f64(self.timeout + 1.0).context("--timeout")?,
        })
    }
}

// One thread for requests (the pacer has its own): the tool shares one core with the upstream.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let json = match Cli::parse().command {
        Command::Http {
            target,
            open,
            path,
            connections,
        } => {
            let caller = Http1Get::new(target.addr, &target.host, &path, connections)
                .await
                .map_err(|e| anyhow::anyhow!("connect to {}: {e}", target.addr))?;
            let report =
                open_loop::run("http", connections, Arc::new(caller), open.shape()?).await?;
            serde_json::to_string(&report)?
        }
        Command::Grpc {
            target,
            open,
            connections,
        } => {
            let request = EchoRequest {
                message: "hi".into(),
                payload: Default::default(),
            };
            let caller = GrpcUnary::new(
                target.addr,
                &target.host,
                grpc::UNARY,
                &request,
                connections,
            )
            .await
            .map_err(|e| anyhow::anyhow!("connect to {}: {e}", target.addr))?;
            let report =
                open_loop::run("grpc", connections, Arc::new(caller), open.shape()?).await?;
            serde_json::to_string(&report)?
        }
        Command::Bidi {
            target,
            seconds,
            window,
            payload,
        } => {
            let duration = Duration::try_from_secs_f64(seconds).context("--seconds")?;
            let report = bidi::run(target.addr, &target.host, duration, window, payload).await;
            serde_json::to_string(&report)?
        }
        Command::Download {
            target,
            bytes,
            repeat,
        } => {
            let mut reports = Vec::new();
            for _ in 0..repeat {
                reports.push(bulk::download(target.addr, &target.host, bytes).await);
            }
            serde_json::to_string(&bulk::median(reports))?
        }
        Command::Upload {
            target,
            bytes,
            repeat,
        } => {
            let mut reports = Vec::new();
            for _ in 0..repeat {
                reports.push(bulk::upload(target.addr, &target.host, bytes).await);
            }
            serde_json::to_string(&bulk::median(reports))?
        }
    };
    println!("{json}");
    Ok(())
}
