//! `bulwark-cp-fanout`: how fast one control-plane replica fans a change out to many sidecars.
//! It connects N simulated sidecars (Discovery streams multiplexed over a few HTTP/2
//! connections, as many pods' sidecars would look to one replica), waits for every initial
//! snapshot, then applies a change through the REST API and measures, per sidecar, the time
//! from the apply until its new snapshot arrived and was ACKed: p50, p99 and max over rounds.
//! It also reports the replica's RSS per connected sidecar (from /proc).
//!
//! With `--dev-identity DIR` (the replica's development authority) it runs as production does:
//! each simulated sidecar gets its own workload certificate (signed here with the authority's
//! issuer, bound to its pod) and its own mutual-TLS connection, and the applies go over HTTPS
//! with the authority's administrator token.

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
    /// The replica's development authority: mTLS streams, one connection per sidecar, and
    /// HTTPS applies with its administrator token.
    #[arg(long, value_name = "DIR")]
    dev_identity: Option<std::path::PathBuf>,
    /// Then this many reads (`GET` of the policy) one after another on one connection: the
    /// per-request latency of the API (with authentication and authorisation when secure).
    #[arg(long, default_value_t = 2000)]
    api_requests: usize,
}

/// TLS for the run: the roots, the issuer that signs each sidecar's certificate, the token.
struct Secure {
    roots: rustls::RootCertStore,
    issuer: bulwark_identity::Issuer,
    token: String,
}

impl Secure {
    fn load(dir: &std::path::Path) -> anyhow::Result<Secure> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let root = std::fs::read(dir.join("root.pem")).context("root.pem")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&root) {
            roots.add(cert?)?;
        }
        let issuer = bulwark_identity::Issuer::from_pem(
            &std::fs::read(dir.join("issuer.pem")).context("issuer.pem")?,
            &std::fs::read_to_string(dir.join("issuer.key")).context("issuer.key")?,
            Duration::from_secs(3600),
        )?;
        let token = std::fs::read_to_string(dir.join("admin.token"))
            .context("admin.token")?
            .trim()
            .to_string();
        Ok(Secure {
            roots,
            issuer,
            token,
        })
    }

    /// An HTTPS client of the replica's REST API, trusting the authority's root.
    fn https_client(
        &self,
    ) -> anyhow::Result<
        Client<
            hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
            Full<bytes::Bytes>,
        >,
    > {
        let tls = rustls::ClientConfig::builder_with_provider(bulwark_identity::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Client::builder(TokioExecutor::new()).build(connector))
    }

    /// A client configuration presenting a fresh certificate for pod `pod`.
    fn client(&self, pod: &str, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
        let id = bulwark_identity::SpiffeId::new("cluster.local", "bench", "default")?;
        let (pending, csr) = bulwark_identity::PendingKey::new(&id).map_err(anyhow::Error::msg)?;
        let issued = self
            .issuer
            .issue(&csr, &id, Some(pod), std::time::SystemTime::now())?;
        let credentials = bulwark_identity::Credentials::new();
        credentials
            .install(pending, issued.chain)
            .map_err(anyhow::Error::msg)?;
        let key = credentials.current().context("installed")?.key.clone();
        let mut config = rustls::ClientConfig::builder_with_provider(bulwark_identity::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(std::sync::Arc::new(Fixed(key)));
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

/// Always presents the one certificate it holds.
#[derive(Debug)]
struct Fixed(std::sync::Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A gRPC channel over TLS with `config` to `url` (`https://host:port`).
async fn tls_channel(
    url: &str,
    config: rustls::ClientConfig,
) -> anyhow::Result<tonic::transport::Channel> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().context("host")?.to_string();
    let port = uri.port_u16().context("port")?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())?;
    let config = std::sync::Arc::new(config);
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tokio_rustls::TlsConnector::from(config.clone());
        let name = name.clone();
        let host = host.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok(tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        uri.authority().context("authority")?
    ))?
    .connect_with_connector(connector)
    .await?)
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

/// `n` reads one after another on one keep-alive connection; their latencies, sorted.
async fn reads(http: &str, n: usize, secure: Option<&Secure>) -> anyhow::Result<Vec<Duration>> {
    let url = format!("{http}/v1/UpstreamPolicy/bench/fanout");
    let request = || {
        let mut req = http::Request::get(url.as_str());
        if let Some(secure) = secure {
            req = req.header("authorization", format!("Bearer {}", secure.token));
        }
        req.body(Full::new(bytes::Bytes::new()))
    };
    let mut latencies = Vec::with_capacity(n);
    match secure {
        None => {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
            for _ in 0..n {
                let t0 = Instant::now();
                let rsp = client.request(request()?).await?;
                let _ = rsp.into_body().collect().await?;
                latencies.push(t0.elapsed());
            }
        }
        Some(secure) => {
            let client = secure.https_client()?;
            for _ in 0..n {
                let t0 = Instant::now();
                let rsp = client.request(request()?).await?;
                let status = rsp.status();
                let _ = rsp.into_body().collect().await?;
                if !status.is_success() {
                    bail!("GET answered {status}");
                }
                latencies.push(t0.elapsed());
            }
        }
    }
    latencies.sort();
    Ok(latencies)
}

async fn apply(http: &str, round: usize, secure: Option<&Secure>) -> anyhow::Result<()> {
    let mut req =
        http::Request::post(format!("{http}/v1/apply")).header("content-type", "application/json");
    if let Some(secure) = secure {
        req = req.header("authorization", format!("Bearer {}", secure.token));
    }
    let req = req.body(Full::new(bytes::Bytes::from(policy(round))))?;
    let rsp = match secure {
        None => {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
            client.request(req).await.context("POST /v1/apply")?
        }
        Some(secure) => {
            let client = secure.https_client()?;
            client.request(req).await.context("POST /v1/apply")?
        }
    };
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
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secure = args.dev_identity.as_deref().map(Secure::load).transpose()?;
    // The policy must exist before the sidecars connect, so every round is an update.
    apply(&args.http, 0, secure.as_ref()).await?;
    let rss_before = args.pid.and_then(rss_kib);

    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    // With mTLS every sidecar has its own connection (its certificate is its pod's).
    let per_connection = if secure.is_some() {
        1
    } else {
        args.per_connection.max(1)
    };
    let connections = args.sidecars.div_ceil(per_connection);
    // Certificates are made before the clock starts: in production each pod has its own.
    let configs = match &secure {
        Some(secure) => (0..connections)
            .map(|id| secure.client(&format!("pod-{id}"), b"h2"))
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let started = Instant::now();
    // Pods connect at once, as after a control-plane restart; 256 handshakes in flight.
    let mut configs = configs.into_iter();
    let mut pending = tokio::task::JoinSet::new();
    let mut channels: Vec<Option<tonic::transport::Channel>> = vec![None; connections];
    let mut next = 0;
    while next < connections || !pending.is_empty() {
        while next < connections && pending.len() < 256 {
            let grpc = args.grpc.clone();
            let config = configs.next();
            let i = next;
            pending.spawn(async move {
                let channel = match config {
                    Some(config) => tls_channel(&grpc, config).await,
                    None => tonic::transport::Endpoint::from_shared(grpc.clone())?
                        .connect()
                        .await
                        .map_err(anyhow::Error::from),
                }
                .with_context(|| format!("connect to {grpc}"))?;
                Ok::<_, anyhow::Error>((i, channel))
            });
            next += 1;
        }
        if let Some(done) = pending.join_next().await {
            let (i, channel) = done??;
            channels[i] = Some(channel);
        }
    }
    let channels: Vec<tonic::transport::Channel> = channels.into_iter().flatten().collect();
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
        apply(&args.http, round, secure.as_ref()).await?;
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
    if args.api_requests > 0 {
        let latencies = reads(&args.http, args.api_requests, secure.as_ref()).await?;
        println!(
            "API reads ({} GETs on one connection{}): p50 {:.0} µs, p99 {:.0} µs",
            args.api_requests,
            if secure.is_some() {
                ", TLS, bearer token, role check"
            } else {
                ", plaintext, no authentication"
            },
            percentile(&latencies, 0.50).as_secs_f64() * 1e6,
            percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        );
    }
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
