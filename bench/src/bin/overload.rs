//! `bulwark-overload`: the load and the report of `bench/overload`.
//!
//! ```text
//! bulwark-overload run --target bulwark --addr 127.0.0.1:15306 --host orders --path /work/20 \
//!     --capacity 400 --load 5 --seconds 10 --deadline-ms 1000 --app 127.0.0.1:18381
//! bulwark-overload report --input points.jsonl --table table.md --svg goodput.svg
//! ```

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bulwark_bench::overload::{self, Point, Shape, TieredGet};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bulwark-overload")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One target at one offered load; prints the point as one JSON line.
    Run {
        /// The target's name in the report (`direct`, `bulwark`, `envoy-adaptive`, …).
        #[arg(long)]
        target: String,
        #[arg(long)]
        addr: SocketAddr,
        /// `:authority` of the requests.
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/work/20")]
        path: String,
        /// The app's capacity, requests a second.
        #[arg(long)]
        capacity: f64,
        /// Offered load as a multiple of the capacity.
        #[arg(long)]
        load: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1000.0)]
        deadline_ms: f64,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// The app's HTTP address, for its `/work-stats`.
        #[arg(long)]
        app: Option<SocketAddr>,
        /// Also write every request (due at, tier, outcome, milliseconds) to this CSV file.
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// The table (Markdown) and the plot (SVG) of a file of points.
    Report {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        table: PathBuf,
        #[arg(long)]
        svg: PathBuf,
    },
}

/// `GET /work-stats` of the app: the most requests in it at once since the last call.
fn app_concurrency(app: SocketAddr) -> anyhow::Result<u64> {
    let mut stream =
        TcpStream::connect(app).with_context(|| format!("connect to the app at {app}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /work-stats HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("the app's /work-stats has no body")?;
    let stats: serde_json::Value = serde_json::from_str(body.trim())
        .with_context(|| format!("the app's /work-stats is not JSON: {body:?}"))?;
    stats["most_in_app"]
        .as_u64()
        .context("the app's /work-stats has no most_in_app")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            target,
            addr,
            host,
            path,
            capacity,
            load,
            seconds,
            deadline_ms,
            connections,
            app,
            trace,
        } => {
            anyhow::ensure!(
                capacity > 0.0 && load > 0.0,
                "--capacity and --load must be above 0"
            );
            let deadline =
                Duration::try_from_secs_f64(deadline_ms / 1000.0).context("--deadline-ms")?;
            let shape = Shape {
                rate: capacity * load,
                duration: Duration::try_from_secs_f64(seconds).context("--seconds")?,
                deadline,
                timeout: deadline * 5,
            };
            if let Some(app) = app {
                app_concurrency(app)?;
            }
            let caller = TieredGet::new(addr, &host, &path, connections)
                .await
                .map_err(|e| anyhow::anyhow!("connect to {addr}: {e}"))?;
            let counted = overload::run(Arc::new(caller), shape).await?;
            if let Some(path) = trace {
                let mut csv = String::from("at_ms,tier,outcome,ms\n");
                for t in &counted.trace {
                    csv.push_str(&format!(
                        "{:.1},{},{},{:.2}\n",
                        t.at.as_secs_f64() * 1e3,
                        overload::TIERS[t.tier],
                        t.outcome,
                        t.took.as_secs_f64() * 1e3
                    ));
                }
                std::fs::write(&path, csv).with_context(|| format!("write {}", path.display()))?;
            }
            let point = Point {
                target,
                load,
                capacity_rps: capacity,
                offered_rps: shape.rate,
                seconds,
                deadline_ms,
                goodput: overload::goodput(&counted.tiers, seconds, capacity),
                tiers: counted.tiers,
                refusal_latency: counted.refusal_latency,
                app_concurrency: app.map(app_concurrency).transpose()?,
            };
            println!("{}", serde_json::to_string(&point)?);
        }
        Command::Report { input, table, svg } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("read {}", input.display()))?;
            let points = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str::<Point>(l)
                        .with_context(|| format!("a point of {}: {l}", input.display()))
                })
                .collect::<anyhow::Result<Vec<Point>>>()?;
            std::fs::write(&table, overload::render(&points))
                .with_context(|| format!("write {}", table.display()))?;
            std::fs::write(&svg, overload::plot(&points))
                .with_context(|| format!("write {}", svg.display()))?;
        }
    }
    Ok(())
}
