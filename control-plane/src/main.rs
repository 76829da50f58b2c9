//! `control-plane`: Bulwark's control plane. This release checks its etcd connection and reports
//! the cluster it would serve from; the policy API and sidecar distribution build on it.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

/// Bulwark control plane.
#[derive(Debug, Parser)]
#[command(name = "control-plane", version)]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "BULWARK_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd_endpoints: Vec<String>,

    /// Key prefix of every key Bulwark stores.
    #[arg(long, env = "BULWARK_ETCD_PREFIX", default_value = "/bulwark/v1")]
    etcd_prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    let mut client = etcd_client::Client::connect(&args.etcd_endpoints, Some(options))
        .await
        .with_context(|| format!("cannot reach etcd at {}", args.etcd_endpoints.join(",")))?;
    let status = client
        .status()
        .await
        .with_context(|| format!("etcd at {} did not answer", args.etcd_endpoints.join(",")))?;
    let policies = client
        .get(
            format!("{}/policies/", args.etcd_prefix),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .context("cannot read the policy prefix from etcd")?;
    tracing::info!(
        etcd_version = status.version(),
        revision = status.header().map(|h| h.revision()).unwrap_or_default(),
        prefix = %args.etcd_prefix,
        policies = policies.count(),
        "etcd reachable"
    );
    Ok(())
}
