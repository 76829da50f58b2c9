//! `bulwark-bench-report`: bench/run's arithmetic.
//!
//! ```text
//! bulwark-bench-report h2load-log FILE   # percentiles of h2load's --log-file, as JSON
//! bulwark-bench-report table RUN_DIR     # the Markdown table of a run (see bulwark_bench::report)
//! ```

use std::path::PathBuf;

use anyhow::Context as _;
use bulwark_bench::{report, tools};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bulwark-bench-report",
    version,
    about = "Tables and percentiles for bench/run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Latency percentiles (µs) of an h2load `--log-file`, as one JSON object.
    H2loadLog { file: PathBuf },
    /// The Markdown table of medians and ratios of a run directory.
    Table { dir: PathBuf },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::H2loadLog { file } => {
            let log = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let p = tools::h2load_log_percentiles(&log)
                .with_context(|| format!("no answered request in {}", file.display()))?;
            println!("{}", serde_json::to_string(&p)?);
        }
        Command::Table { dir } => {
            let run = report::load(&dir)?;
            print!("{}", report::render(&run));
        }
    }
    Ok(())
}
