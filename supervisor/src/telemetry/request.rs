//! The span of one HTTP request, continuing the caller's trace when it sends a W3C
//! `traceparent` (www.w3.org/TR/trace-context), and the context jobs carry to the runner.

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use opentelemetry::Context;

/// Reads `traceparent` / `tracestate` from the request's headers.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The server span of a request (None when tracing is off). Its name is the method and
/// route template (OpenTelemetry's HTTP semantic conventions: `{method} {http.route}`);
/// the fields left empty are recorded when the response is known (`api/observe.rs`).
pub fn request_span(headers: &HeaderMap, method: &str, route: &str) -> Option<tracing::Span> {
    if !super::enabled() {
        return None;
    }
    let span = tracing::info_span!(
        target: "mlx_serve::trace",
        "http.request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        mlx.model = tracing::field::Empty,
        mlx.inputs = tracing::field::Empty,
        mlx.tokens = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    Some(span)
}

/// The trace context of the current request's span, when tracing is on and the trace is
/// sampled: the runner hangs the request's queue, batch and forward spans under it.
pub fn current_context() -> Option<Context> {
    if !super::enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    cx.span().span_context().is_sampled().then_some(cx)
}
