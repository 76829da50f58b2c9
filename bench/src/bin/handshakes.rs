//! `bulwark-bench-handshakes`: mutual-TLS handshakes per second against a proxy's inbound TLS
//! port (bench/mtls). Each of `--tasks` tasks connects, completes a TLS 1.3 handshake presenting
//! a client certificate, sends close_notify and reads until the server closes — so the server
//! has received the client's certificate and Finished, and verified them — then starts over,
//! for `--seconds`. Prints one JSON object on stdout.
//!
//! ```text
//! bulwark-bench-handshakes --addr 127.0.0.1:16006 --server-name catalog.shop.sa.bulwark.cluster.local \
//!   --roots CA/root.pem --cert CERTS/frontend.pem --key CERTS/frontend.key --seconds 10 [--resume]
//! ```
//!
//! The server is verified against `--roots` by the name it is asked for (mesh leaves carry their
//! identity's server name as a DNS name). Without `--resume` every handshake is a full one (the
//! client keeps no sessions); with it, the client keeps the server's session tickets and resumes
//! (TLS 1.3 PSK with a fresh key exchange: no certificates sent, none verified, nothing signed).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

#[derive(Debug, Parser)]
#[command(
    name = "bulwark-bench-handshakes",
    version,
    about = "Mutual-TLS handshakes per second against a TLS port"
)]
struct Args {
    /// The proxy's TLS port.
    #[arg(long)]
    addr: SocketAddr,
    /// The server name sent (SNI) and verified.
    #[arg(long)]
    server_name: String,
    /// PEM: the roots the server's chain must lead to.
    #[arg(long)]
    roots: PathBuf,
    /// PEM: the client's certificate chain (leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// PEM: the client's key.
    #[arg(long)]
    key: PathBuf,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    tasks: u16,
    /// Resume sessions (TLS 1.3 tickets) instead of a full handshake every time.
    #[arg(long)]
    resume: bool,
    /// A handshake (and close) not done within this many seconds counts as an error.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    resume: bool,
    tasks: u16,
    seconds: f64,
    /// Handshakes completed (and the connection closed by the server).
    handshakes: u64,
    /// Of those, resumed ones.
    resumed: u64,
    per_second: f64,
    errors: u64,
    first_error: Option<String>,
}

#[derive(Debug, Default)]
struct Tally {
    handshakes: u64,
    resumed: u64,
    errors: u64,
    first_error: Option<String>,
}

fn client_config(args: &Args) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.roots)
        .with_context(|| format!("read {}", args.roots.display()))?
    {
        roots.add(cert.with_context(|| format!("{}", args.roots.display()))?)?;
    }
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .with_context(|| format!("read {}", args.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}", args.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .with_context(|| format!("read {}", args.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.resumption = if args.resume {
        Resumption::default()
    } else {
        Resumption::disabled()
    };
    Ok(config)
}

/// One connection: handshake, close_notify, read until the server closes. Whether it resumed.
async fn handshake(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &ServerName<'static>,
) -> anyhow::Result<bool> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .context("handshake")?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    // close_notify without a TCP FIN: the server closes first, so the TIME_WAIT is its own and
    // a long run does not use up the client's ephemeral ports.
    tls.get_mut().1.send_close_notify();
    tls.flush().await.context("send close_notify")?;
    let mut sink = [0u8; 512];
    loop {
        match tls.read(&mut sink).await {
            Ok(0) => break,
            Ok(_) => {}
            // A server that closes without its own close_notify has still seen everything.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e).context("read until the server closes"),
        }
    }
    Ok(resumed)
}

// One thread: the tool shares its core with the upstream, as bench/run's load tools do.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::try_from_secs_f64(args.seconds).context("--seconds")?;
    let timeout = Duration::try_from_secs_f64(args.timeout).context("--timeout")?;
    let name = ServerName::try_from(args.server_name.clone()).context("--server-name")?;
    let connector = TlsConnector::from(Arc::new(client_config(&args)?));

    // One handshake first: a configuration that cannot work fails here, with its reason (in
    // the report too, so that a benchmark script carries on with the other measurements).
    if let Err(e) = handshake(&connector, args.addr, &name).await {
        let why = format!("first handshake with {}: {e:#}", args.addr);
        let report = Report {
            resume: args.resume,
            tasks: args.tasks,
            errors: 1,
            first_error: Some(why.clone()),
            ..Report::default()
        };
        println!("{}", serde_json::to_string(&report)?);
        anyhow::bail!(why);
    }

    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.tasks {
        let (connector, name, tally) = (connector.clone(), name.clone(), tally.clone());
        let addr = args.addr;
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let outcome = tokio::time::timeout(timeout, handshake(&connector, addr, &name))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")));
                let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok(resumed) => {
                        tally.handshakes += 1;
                        tally.resumed += u64::from(resumed);
                    }
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    let report = Report {
        resume: args.resume,
        tasks: args.tasks,
        seconds: elapsed,
        handshakes: tally.handshakes,
        resumed: tally.resumed,
        per_second: tally.handshakes as f64 / elapsed,
        errors: tally.errors,
        first_error: tally.first_error,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
