//! Per-request metrics (`mlx_serve_requests_total`, durations, sizes, by route template)
//! and the one-line request log, as a middleware around every route. Handlers tell it
//! which model and how many inputs and tokens they handled through a [`RequestLog`]
//! response extension.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::SharedState;
use crate::metrics::metrics;

/// What a handler tells the request log about its work (a response extension).
#[derive(Clone, Debug, Default)]
pub struct RequestLog {
    pub model: String,
    pub inputs: usize,
    pub tokens: usize,
}

/// Attaches the request-log details to a response.
pub fn with_log(resp: impl IntoResponse, log: RequestLog) -> Response {
    let mut resp = resp.into_response();
    resp.extensions_mut().insert(log);
    resp
}

/// Per-request metrics and the one-line request log.
pub async fn observe(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    // Route templates only: raw paths would make label values unbounded.
    let endpoint =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned());
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Without a Content-Length (chunked transfer) the size is what the handler reads.
    let read = Arc::new(AtomicU64::new(0));
    let req = if declared.is_none() { count_body(req, read.clone()) } else { req };
    let id = state.next_request_id.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let span = crate::telemetry::request_span(req.headers(), method.as_str(), &endpoint);
    let resp = match &span {
        Some(span) => tracing::Instrument::instrument(next.run(req), span.clone()).await,
        None => next.run(req).await,
    };
    let elapsed = start.elapsed();
    let status = resp.status();
    let m = metrics();
    m.requests_total.with_label_values(&[&endpoint, status.as_str()]).inc();
    m.request_duration_seconds.with_label_values(&[&endpoint]).observe(elapsed.as_secs_f64());
    let size = declared.unwrap_or_else(|| read.load(Ordering::Relaxed));
    m.request_size_bytes.with_label_values(&[&endpoint]).observe(size as f64);
    let log = resp.extensions().get::<RequestLog>().cloned().unwrap_or_default();
    if let Some(span) = span {
        record_on_span(&span, status, &log);
    }
    if endpoint != "/metrics" && endpoint != "/health" && endpoint != "/ready" {
        tracing::info!(
            target: "request",
            id,
            method = %method,
            endpoint = %endpoint,
            model = %log.model,
            inputs = log.inputs,
            tokens = log.tokens,
            status = status.as_u16(),
            ms = format!("{:.2}", elapsed.as_secs_f64() * 1e3),
            "request"
        );
    }
    resp
}

/// What the response says, on the request's trace span (OpenTelemetry's HTTP semantic
/// conventions: a 5xx is an error of a server span, a 4xx is not).
fn record_on_span(span: &tracing::Span, status: axum::http::StatusCode, log: &RequestLog) {
    // As i64: the bridge exports unsigned integers as strings.
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if !log.model.is_empty() {
        span.record("mlx.model", log.model.as_str());
        span.record("mlx.inputs", log.inputs as i64);
        span.record("mlx.tokens", log.tokens as i64);
    }
}

/// Wraps a request body so every data frame read adds its length to `read`.
fn count_body(req: Request, read: Arc<AtomicU64>) -> Request {
    use futures_util::TryStreamExt;
    req.map(|body| {
        axum::body::Body::from_stream(body.into_data_stream().inspect_ok(move |chunk| {
            read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }))
    })
}
