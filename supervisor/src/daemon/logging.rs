//! The process's `tracing` subscriber: the log (`logging.level`, `logging.format`) and,
//! with `tracing.enabled`, the OpenTelemetry bridge (`telemetry/`).
//!
//! Its level hint matters for speed, not only for what is printed: `try_init` also routes
//! the `log` crate into `tracing` and sets `log`'s max level from the hint, and a filter
//! without one (a `filter_fn`, or an `and` with one) makes the hint "everything". The
//! tokenizers crate logs a `trace!` for every character it normalizes; with no hint, each
//! went through the subscriber's filters to be dropped there: 30% of the supervisor's CPU
//! on one-text requests and 64% on 64-passage requests (docs/host-cpu.md). So every
//! filter here carries its level.

use opentelemetry_sdk::trace::SdkTracer;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

use crate::config::Config;

/// Sets up `tracing` from `logging.level` / `logging.format` (RUST_LOG wins when set),
/// and, with `tracing.enabled`, the OpenTelemetry exporter and its bridge layer: it gets
/// the request spans (`telemetry::TARGET`, which the log leaves out) and the server's own
/// events at info and above, whatever the log level.
pub fn init_logging(config: &Config) {
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.logging.level));
    let (otel, problem) = match crate::telemetry::install(&config.tracing) {
        Ok(tracer) => (tracer, None),
        Err(e) => (None, Some(e)),
    };
    let _ = subscriber(filter, config.logging.format == "json", otel).try_init();
    match problem {
        Some(e) => tracing::warn!("traces are not exported: {e}"),
        None if config.tracing.enabled => tracing::info!(
            endpoint = %config.tracing.endpoint,
            sample_ratio = config.tracing.sample_ratio,
            "exporting traces over OTLP/HTTP"
        ),
        None => {}
    }
}

/// The log layer filtered by `filter` (text, or JSON lines with `json`), and the trace
/// exporter's layer when there is a `tracer`.
fn subscriber(filter: EnvFilter, json: bool, tracer: Option<SdkTracer>) -> impl tracing::Subscriber + Send + Sync {
    use std::io::IsTerminal;
    // The request spans are for the exporter, not the log; this leaves them out and keeps
    // the log filter's level as the hint (`and` takes the lower of two hints).
    let not_trace_spans = filter_fn(|m| m.target() != crate::telemetry::TARGET).with_max_level_hint(LevelFilter::TRACE);
    let fmt = tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().flatten_event(true).with_filter(filter.and(not_trace_spans)).boxed()
    } else {
        fmt.with_filter(filter.and(not_trace_spans)).boxed()
    };
    let otel = tracer.map(|tracer| {
        // Only the spans' own attributes: no source paths, thread ids or busy/idle counters.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(
                filter_fn(|m| m.target().starts_with("mlx_serve") && *m.level() <= tracing::Level::INFO)
                    .with_max_level_hint(LevelFilter::INFO),
            )
    });
    tracing_subscriber::registry().with(fmt).with(otel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Subscriber;

    /// The subscriber's level hint is the log level's, so `log` records and `tracing`
    /// events below it are dropped at their call site, before any filter runs.
    #[test]
    fn the_level_hint_is_the_log_level() {
        for (level, want) in [("info", LevelFilter::INFO), ("warn", LevelFilter::WARN), ("debug", LevelFilter::DEBUG)] {
            for json in [false, true] {
                let s = subscriber(EnvFilter::new(level), json, None);
                assert_eq!(s.max_level_hint(), Some(want), "{level}, json {json}");
            }
        }
        // The trace exporter takes the server's events at info and above, whatever the log's level.
        use opentelemetry::trace::TracerProvider as _;
        let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder().build().tracer("test");
        let s = subscriber(EnvFilter::new("warn"), false, Some(tracer));
        assert_eq!(s.max_level_hint(), Some(LevelFilter::INFO));
    }
}
