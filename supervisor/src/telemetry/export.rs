//! The OTLP exporter, wrapped so that a collector that is down is said once in the log,
//! and again only after exports worked in between; never once per span or per batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

#[derive(Debug)]
pub struct LoggingExporter<E> {
    inner: E,
    endpoint: String,
    /// True while exports fail (the failure has been logged).
    failing: AtomicBool,
}

impl<E> LoggingExporter<E> {
    pub fn new(inner: E, endpoint: String) -> Self {
        LoggingExporter { inner, endpoint, failing: AtomicBool::new(false) }
    }
}

impl<E: SpanExporter> SpanExporter for LoggingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                "traces: export to {} failed ({e}); {spans} spans dropped, and later failures are not logged \
                 until an export succeeds (requests are not affected)",
                self.endpoint
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("traces: export to {} works again", self.endpoint)
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}
