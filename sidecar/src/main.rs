//! `sidecar`: reads flags and environment, sets up logging, runs until SIGTERM or SIGINT.

use bulwark_sidecar::config::{Config, LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: a proxied request makes dozens of small,
/// short-lived allocations (header maps, futures, buffers), and glibc's malloc/free spent ~17% of
/// the sidecar's instructions per gRPC request on them (bench/profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => subscriber.json().flatten_event(false).init(),
        LogFormat::Text => subscriber.init(),
    }

    // One worker: a current-thread runtime. Its run queue is first in, first out (the
    // multi-threaded one runs a just-woken task next, from its LIFO slot), so when one read from
    // a connection wakes many requests' tasks, they all run before the connection task they
    // wake, and that task writes all their frames with one system call: 0.6 writev per proxied
    // gRPC request instead of 1.9 (bench/profile, docs/benchmarks.md).
    let mut runtime = if config.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.worker_threads(usize::from(config.workers));
        rt
    };
    runtime.enable_all();
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidecar: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bulwark_sidecar::run(config, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sidecar: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the sidecar");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
