//! `bulwark-demo`: the traffic half of `scripts/demo.sh`. It calls upstreams through a running
//! sidecar the way an application would (HTTP/1.1, HTTP/2, gRPC), reloads a policy, reads the
//! admin endpoints, and prints what happened at each step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bulwark_tests::client::{self, HttpClient};
use bulwark_tests::pattern::PatternBody;
use bulwark_tests::pb::{EchoRequest, StreamRequest};
use bulwark_tests::{HttpUpstream, metrics, try_eventually};
use clap::Parser;
use http::Method;

#[derive(Debug, Parser)]
struct Args {
    /// The sidecar's outbound listener.
    #[arg(long, default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,
    /// The sidecar's admin listener.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// The sidecar's local port bound to the `catalog` upstream.
    #[arg(long, default_value = "127.0.0.1:15101")]
    catalog_port: SocketAddr,
    /// The policy directory the sidecar watches (the demo adds a policy to it).
    #[arg(long, required_unless_present = "probe")]
    policies: Option<PathBuf>,
    /// The test upstream's HTTP address (the reloaded policy points at it).
    #[arg(long, default_value = "127.0.0.1:18081")]
    upstream_http: SocketAddr,
    /// Where `ledger` lives (down until the demo starts it).
    #[arg(long, default_value = "127.0.0.1:18083")]
    ledger: SocketAddr,
    /// Only wait until `http://HOST/` through `--outbound` is served by an upstream, print
    /// who served it, and exit (the control-plane part of the demo).
    #[arg(long, value_name = "HOST")]
    probe: Option<String>,
}

/// Waits (at most 15 s) until HOST routes through the sidecar, then prints the answer.
async fn probe(outbound: SocketAddr, host: &str) -> anyhow::Result<()> {
    let http = client::http1_client(outbound);
    let res = try_eventually(Duration::from_secs(15), || async {
        let res = client::get(&http, &format!("http://{host}/status/200")).await;
        (res.status == http::StatusCode::OK).then_some(res)
    })
    .await
    .with_context(|| format!("http://{host}/ was not routed within 15 s"))?;
    println!(
        "   GET http://{host}/status/200 through {outbound}: {} (served by {})",
        res.status,
        res.header("x-bulwark-upstream").unwrap_or("-")
    );
    Ok(())
}

fn step(title: &str) {
    println!("\n── {title}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(host) = &args.probe {
        return probe(args.outbound, host).await;
    }
    let http1 = client::http1_client(args.outbound);
    let h2 = client::h2c_client(args.outbound);
    let admin = client::http1_client(args.admin);

    step("HTTP/1.1: GET http://catalog/headers through 127.0.0.1:15001");
    let res = client::get(&http1, "http://catalog/headers").await;
    let seen = res.json();
    println!("   status {} ({:?})", res.status, res.version);
    for name in ["host", "x-request-id", "traceparent", "x-bulwark-attempt"] {
        println!(
            "   upstream saw {name}: {}",
            seen["headers"][name][0].as_str().unwrap_or("-")
        );
    }

    step("HTTP/2 (h2c prior knowledge) on the same port: GET http://catalog.shop/headers");
    let res = client::get(&h2, "http://catalog.shop/headers").await;
    println!(
        "   status {} ({:?}); upstream saw {}",
        res.status,
        res.version,
        res.json()["version"]
    );

    step("gRPC through the sidecar: dispatch (protocol: grpc)");
    let mut grpc = client::grpc_client_for(args.outbound, "dispatch").await;
    let reply = grpc
        .unary(EchoRequest {
            message: "hello from the app".into(),
            ..Default::default()
        })
        .await
        .context("unary call")?;
    println!("   unary: {:?}", reply.get_ref().message);
    let mut stream = grpc
        .server_stream(StreamRequest {
            count: 5,
            payload_size: 16,
            delay_ms: 0,
        })
        .await
        .context("server-streaming call")?
        .into_inner();
    let mut received = 0;
    while stream.message().await.context("stream message")?.is_some() {
        received += 1;
    }
    println!("   server streaming: {received} messages");
    let failed = grpc
        .unary(EchoRequest {
            fail_with_code: 5,
            fail_message: "order 42 not found".into(),
            ..Default::default()
        })
        .await
        .expect_err("the upstream answers NOT_FOUND");
    println!(
        "   upstream error passed through: {:?} {:?}",
        failed.code(),
        failed.message()
    );
    let deadline = grpc
        .unary(EchoRequest {
            delay_ms: 3000,
            ..Default::default()
        })
        .await
        .expect_err("the policy's deadline passes first");
    println!(
        "   a 3 s call under the policy's timeouts.request 2s: {:?} {:?}",
        deadline.code(),
        deadline.message()
    );

    step("An authority no policy names");
    let res = client::get(&http1, "http://nowhere:8080/").await;
    println!("   status {}: {}", res.status, res.text().trim_end());

    step("A per-upstream local port (--upstream-port 127.0.0.1:15101=catalog)");
    let port_client = client::http1_client(args.catalog_port);
    let res = client::get(
        &port_client,
        &format!("http://{}/status/200", args.catalog_port),
    )
    .await;
    println!("   status {}: {}", res.status, res.text());

    step("Streaming 50 MB up through the sidecar (never buffered whole)");
    let started = Instant::now();
    let upload = client::request(Method::POST, "http://catalog/sink")
        .body(PatternBody::chunked(50 * 1024 * 1024).boxed())
        .context("build the upload")?;
    let res = client::send(&http1, upload).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "   upstream received {} ({:.0} MB/s)",
        res.text().trim_end(),
        50.0 / secs
    );

    step("Hot reload: add an UpstreamPolicy `inventory` to the watched directory");
    let before = config_version(&admin).await?;
    let policy = format!(
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: inventory, namespace: shop }}\nspec:\n  endpoints: {{ static: [\"{}\"] }}\n",
        args.upstream_http
    );
    let dir = args.policies.clone().unwrap_or_default();
    write_atomically(&dir.join("inventory.yaml"), &policy)?;
    let after = try_eventually(Duration::from_secs(10), || async {
        let v = config_version(&admin).await.ok()?;
        (v != before).then_some(v)
    })
    .await
    .context("the sidecar did not apply the new policy within 10 s")?;
    println!("   /config version {before} -> {after}");
    let res = client::get(&http1, "http://inventory/status/200").await;
    println!("   GET http://inventory/status/200: {}", res.status);
    write_atomically(
        &dir.join("broken.yaml"),
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: broken }\nspec: { endpoints: {} }\n",
    )?;
    try_eventually(Duration::from_secs(10), || async {
        (rejected_reloads(&admin).await >= 1.0).then_some(())
    })
    .await
    .context("the sidecar did not look at the invalid file within 10 s")?;
    let still = config_version(&admin).await?;
    println!(
        "   an invalid file was written: version still {still} ({})",
        if still == after {
            "rejected, old policies kept"
        } else {
            "unexpected change"
        }
    );
    std::fs::remove_file(dir.join("broken.yaml")).context("remove broken.yaml")?;

    step(
        "Retries: `flaky` fails every other request with 503 (retry: maxAttempts 3, retryOn [5xx])",
    );
    for _ in 0..3 {
        let res = client::get(&http1, "http://flaky/headers").await;
        let attempt = res.json()["headers"]["x-bulwark-attempt"][0]
            .as_str()
            .unwrap_or("-")
            .to_string();
        println!(
            "   GET http://flaky/headers: {} — answered on attempt {attempt}",
            res.status
        );
    }

    step("Circuit breaker and failover: `ledger` is down (connection refused)");
    for i in 1..=5 {
        let res = client::get(&http1, "http://ledger/status/200").await;
        println!(
            "   call {i}: {} served by {} {}",
            res.status,
            res.header("x-bulwark-upstream").unwrap_or("-"),
            match breaker_state(&admin, "ledger").await.as_str() {
                "open" => "(ledger's breaker is now open: calls fail over without trying ledger)"
                    .to_string(),
                s => format!("(ledger's breaker: {s})"),
            }
        );
    }
    println!(
        "   ledger comes back; after openFor (2s) one probe goes through and closes the breaker"
    );
    let _ledger = HttpUpstream::builder()
        .bind(args.ledger)
        .start()
        .await
        .with_context(|| format!("start ledger on {}", args.ledger))?;
    try_eventually(Duration::from_secs(10), || async {
        let breakers = client::get(&admin, "http://admin/breakers").await.json();
        let due = breakers["upstreams"]
            .as_array()
            .and_then(|all| all.iter().find(|u| u["name"] == "ledger"))
            .and_then(|u| u["breaker"]["openUntilSecondsFromNow"].as_f64())
            .is_none_or(|left| left <= 0.0);
        due.then_some(())
    })
    .await
    .context("ledger's breaker did not finish its open period within 10 s")?;
    let served = client::get(&http1, "http://ledger/status/200").await;
    println!(
        "   {} served by ledger; ledger's breaker: {}",
        served.status,
        breaker_state(&admin, "ledger").await
    );

    step("What the sidecar counted (GET 127.0.0.1:15000/metrics)");
    let text = client::get(&admin, "http://admin/metrics").await.text();
    for sample in metrics::parse(&text) {
        let interesting = [
            "bulwark_retries_total",
            "bulwark_breaker_transitions_total",
            "bulwark_breaker_rejections_total",
            "bulwark_fallbacks_total",
        ];
        if interesting.contains(&sample.name.as_str()) && sample.value > 0.0 {
            let extra = ["to", "kind"]
                .iter()
                .filter_map(|k| sample.labels.get(*k).map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(" ");
            println!(
                "   {} {{upstream={} {extra}}} = {}",
                sample.name,
                sample.labels.get("upstream").map_or("", String::as_str),
                sample.value
            );
        }
        if sample.name == "bulwark_requests_total" {
            println!(
                "   {:<9} {:<10} {:<6} {} = {}",
                sample.labels.get("direction").map_or("", String::as_str),
                sample.labels.get("upstream").map_or("", String::as_str),
                sample.labels.get("protocol").map_or("", String::as_str),
                sample.labels.get("status_class").map_or("", String::as_str),
                sample.value
            );
        }
    }
    Ok(())
}

async fn breaker_state(admin: &HttpClient, upstream: &str) -> String {
    let breakers = client::get(admin, "http://admin/breakers").await.json();
    breakers["upstreams"]
        .as_array()
        .and_then(|all| all.iter().find(|u| u["name"] == upstream))
        .and_then(|u| u["breaker"]["state"].as_str())
        .unwrap_or("-")
        .to_string()
}

async fn rejected_reloads(admin: &HttpClient) -> f64 {
    let text = client::get(admin, "http://admin/metrics").await.text();
    metrics::value(
        &text,
        "bulwark_policy_reloads_total",
        &[("result", "rejected")],
    )
    .unwrap_or(0.0)
}

async fn config_version(admin: &HttpClient) -> anyhow::Result<String> {
    let res = client::try_send(
        admin,
        client::request(Method::GET, "http://admin/config").body(client::empty())?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("GET /config: {e}"))?;
    match res.json()["version"].as_str() {
        Some(v) => Ok(v.to_string()),
        None => bail!("/config has no version"),
    }
}

fn write_atomically(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}
