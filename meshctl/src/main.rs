//! `meshctl`, Bulwark's operator command line: parses the flags and runs one subcommand.

mod validate;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "Operate a Bulwark mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check policy files offline: parse every resource and validate every field.
    ///
    /// Prints `ok: Kind/namespace/name` for each valid resource; otherwise prints every
    /// problem as `FILE: Kind/namespace/name: path: message` and exits with status 1.
    Validate {
        /// A policy file (YAML or JSON, several documents allowed), a directory whose
        /// *.yaml, *.yml and *.json files are read in name order, or `-` for standard input.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE_OR_DIR",
            required = true
        )]
        files: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files } => {
            let report = validate::run(&files);
            let mut out = std::io::stdout().lock();
            for id in &report.valid {
                writeln!(out, "ok: {id}")?;
            }
            out.flush()?;
            let mut err = std::io::stderr().lock();
            for problem in &report.problems {
                writeln!(err, "{problem}")?;
            }
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
