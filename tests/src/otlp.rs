//! An OTLP trace receiver for the end-to-end tests: no OpenTelemetry Collector can be installed
//! from this project's registries, so the kit has its own, built on the OpenTelemetry
//! project's protocol types (`opentelemetry-proto`). [`serve`] is the receiver (run as the
//! `bulwark-otlp-receiver` process, one JSON line per received span on its stdout);
//! [`OtlpReceiver`] starts that process and reads what it received.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::poll::try_eventually;
use crate::process::{capture, kill, lock};

/// One received span, as the receiver prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `server`, `client`, `internal`, …
    pub kind: String,
    /// `unset`, `ok` or `error`.
    pub status: String,
    pub attributes: BTreeMap<String, String>,
    pub events: Vec<ReceivedEvent>,
}

/// An event of a received span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedEvent {
    pub name: String,
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute's value as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Flattens an export request into its spans.
pub fn spans_of(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let kind = match span.kind {
                    1 => "internal",
                    2 => "server",
                    3 => "client",
                    4 => "producer",
                    5 => "consumer",
                    _ => "unspecified",
                };
                let status = match span.status.as_ref().map(|s| s.code) {
                    Some(1) => "ok",
                    Some(2) => "error",
                    _ => "unset",
                };
                out.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: kind.to_string(),
                    status: status.to_string(),
                    attributes: attributes(&span.attributes),
                    events: span
                        .events
                        .iter()
                        .map(|e| ReceivedEvent {
                            name: e.name.clone(),
                            attributes: attributes(&e.attributes),
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

/// The receiver: prints every span it is sent as one JSON line.
#[derive(Debug, Default)]
struct Printer;

#[tonic::async_trait]
impl TraceService for Printer {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for span in spans_of(request.get_ref()) {
            let line =
                serde_json::to_string(&span).map_err(|e| tonic::Status::internal(e.to_string()))?;
            writeln!(out, "{line}").map_err(|e| tonic::Status::internal(e.to_string()))?;
        }
        out.flush()
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves OTLP/gRPC trace exports on `listener` until the process ends.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Printer))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// Where `bulwark-otlp-receiver` is: `$BULWARK_OTLP_RECEIVER_BIN`, else beside the sidecar.
pub fn receiver_bin() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("BULWARK_OTLP_RECEIVER_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the test executable's directory");
    dir.join("..").join("bulwark-otlp-receiver")
}

/// A running `bulwark-otlp-receiver` process and the spans it printed.
pub struct OtlpReceiver {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl OtlpReceiver {
    /// Starts the receiver on a free loopback port and waits until it listens.
    pub async fn start() -> OtlpReceiver {
        let mut child = Command::new(receiver_bin())
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start bulwark-otlp-receiver (cargo build --workspace --bins)");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let stdout = child.stdout.take().expect("the receiver's stdout");
        capture(stdout, lines.clone());
        let addr = try_eventually(Duration::from_secs(20), || {
            let lines = lines.clone();
            async move {
                lock(&lines)
                    .iter()
                    .find_map(|l| l.strip_prefix("listening "))
                    .and_then(|a| a.trim().parse().ok())
            }
        })
        .await;
        match addr {
            Some(addr) => OtlpReceiver { child, addr, lines },
            None => {
                kill(&mut child);
                panic!("bulwark-otlp-receiver did not say where it listens");
            }
        }
    }

    /// The endpoint to give an exporter: `http://ADDR`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.lines)
            .iter()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The spans of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
