//! The OTLP exporter: sampled requests' spans batched and sent over gRPC to a collector
//! (`--otlp-endpoint`), labelled with the workload they belong to.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};

/// Where spans go and how often.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// The collector's OTLP/gRPC endpoint, `http://host:4317`.
    pub endpoint: String,
    /// How often a batch is sent (and at most how long a span waits).
    pub interval: Duration,
    /// The workload the spans belong to: `service.name`, `service.namespace`, `k8s.pod.name`.
    pub service: String,
    pub namespace: String,
    pub pod: String,
}

/// Spans kept waiting for export at most; more are dropped (counted by the SDK's own logs)
/// rather than held while the collector is away.
const MAX_QUEUE: usize = 8192;

/// A provider exporting to `settings.endpoint`. Must be called within the Tokio runtime whose
/// tasks carry the exporter's connection.
pub fn provider(settings: &ExportSettings) -> anyhow::Result<SdkTracerProvider> {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(Duration::from_secs(10))
        .build()
        .with_context(|| format!("the OTLP exporter to {}", settings.endpoint))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUE)
        .with_scheduled_delay(settings.interval)
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let resource = Resource::builder_empty()
        .with_service_name(settings.service.clone())
        .with_attributes([
            KeyValue::new("service.namespace", settings.namespace.clone()),
            KeyValue::new("k8s.namespace.name", settings.namespace.clone()),
            KeyValue::new("k8s.pod.name", settings.pod.clone()),
            KeyValue::new("bulwark.version", bulwark_telemetry::VERSION),
        ])
        .build();
    // Sampling is decided per request before a span exists (the ratio, or the caller's
    // `traceparent`): every span made is kept.
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build())
}

/// Sends what is still batched and stops the exporter. Blocks: call it off the runtime's
/// threads (the export runs on them).
pub fn shutdown(provider: &SdkTracerProvider) {
    if let Err(e) = provider.shutdown() {
        tracing::warn!(error = %e, "spans still batched could not be exported");
    }
}
