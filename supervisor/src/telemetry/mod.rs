//! OpenTelemetry traces (docs/tracing.md): the OTLP exporter, the `tracing` bridge, the
//! request span with W3C trace-context propagation, and the spans the runner records with
//! explicit times (queue wait, the batch, the worker's forward pass).
//!
//! Off by default. Off, [`install`] returns no layer and builds no exporter, [`enabled`]
//! is false and every function here returns at once: no span is created.

mod batch_spans;
mod export;
mod request;

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};

pub use batch_spans::{BatchFacts, BatchTrace, JobTrace};
pub use request::{current_context, request_span, Context};

use crate::config::TracingConfig;

/// The `tracing` target of the spans this module makes; only these (and events under
/// `mlx_serve`) reach the exporter, and the log output leaves them out.
pub const TARGET: &str = "mlx_serve::trace";

/// Spans waiting for export at most; more are dropped (the SDK's default size), so a
/// collector that is down costs bounded memory and never blocks a request.
const MAX_QUEUED_SPANS: usize = 2048;

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// True when traces are exported.
pub fn enabled() -> bool {
    TELEMETRY.get().is_some()
}

fn tracer() -> Option<&'static SdkTracer> {
    TELEMETRY.get().map(|t| &t.tracer)
}

/// Builds the exporter and the provider when `config.enabled`, and returns the tracer the
/// `tracing` bridge layer needs. Must run outside the async runtime (the OTLP client is
/// a blocking one, driven by the batch processor's own thread).
pub fn install(config: &TracingConfig) -> Result<Option<SdkTracer>, String> {
    if !config.enabled {
        return Ok(None);
    }
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(config.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot set up the OTLP exporter for {}: {e}", config.endpoint))?;
    let processor = BatchSpanProcessor::builder(export::LoggingExporter::new(exporter, config.endpoint.clone()))
        .with_batch_config(BatchConfigBuilder::default().with_max_queue_size(MAX_QUEUED_SPANS).build())
        .build();
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("mlx-serve");
    let _ = TELEMETRY.set(Telemetry { provider, tracer: tracer.clone() });
    Ok(Some(tracer))
}

/// Exports what is still queued and stops the exporter: the spans of the last requests
/// before shutdown are not lost. Blocks up to the export timeout (call it off the runtime's
/// worker threads).
pub fn flush() {
    if let Some(t) = TELEMETRY.get() {
        if let Err(e) = t.provider.shutdown() {
            tracing::warn!("traces: the last spans could not be exported at shutdown: {e}");
        }
    }
}
