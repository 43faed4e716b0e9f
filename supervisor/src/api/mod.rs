//! The HTTP surface: routes, shared state, request logging/metrics, body parsing.
//!
//! Handlers live one API family per file (`openai`, `rerank`, `tokenize`, `models`,
//! `ollama`, `health`) and are thin: they translate their API's shape to the calls in
//! `inference` (resolve model → tokenize → queue → await) and back.

mod autodownload;
pub mod error;
mod health;
pub mod inference;
mod models;
mod ollama;
mod openai;
mod rerank;
mod tokenize;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::downloads::Downloads;
use crate::metrics::metrics;
use crate::pool::Pool;
pub use autodownload::preload;
pub use error::ApiError;

/// Shared by every handler.
pub struct AppState {
    pub pool: Pool,
    /// Model downloads in flight (`/api/pull`, auto-download).
    pub downloads: Arc<Downloads>,
    pub config: Arc<Config>,
    pub started: Instant,
    /// False once shutdown began (`/ready` answers 503 so load balancers drain us).
    pub ready: AtomicBool,
    next_request_id: AtomicU64,
}

impl AppState {
    pub fn new(pool: Pool, config: Arc<Config>) -> Arc<AppState> {
        Arc::new(AppState {
            downloads: Arc::new(Downloads::new(pool.store().clone())),
            pool,
            config,
            started: Instant::now(),
            ready: AtomicBool::new(false),
            next_request_id: AtomicU64::new(1),
        })
    }
}

pub type SharedState = Arc<AppState>;

/// What a handler tells the request log about its work (a response extension).
#[derive(Clone, Debug, Default)]
pub struct RequestLog {
    pub model: String,
    pub inputs: usize,
    pub tokens: usize,
}

pub fn router(state: SharedState) -> Router {
    let body_limit = state.config.limits.max_request_bytes;
    let mut app = Router::new()
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/embeddings", post(openai::embeddings))
        .route("/v1/rerank", post(rerank::rerank))
        .route("/rerank", post(rerank::rerank))
        .route("/v2/rerank", post(rerank::rerank))
        .route("/v1/tokenize", post(tokenize::tokenize))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/v1/models", get(models::list))
        .route("/models", get(models::list))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings_legacy))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/delete", delete(ollama::delete))
        .route("/api/pull", post(ollama::pull))
        .route("/api/version", get(ollama::version))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready));
    if state.config.metrics.enabled {
        app = app.route("/metrics", get(health::metrics));
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The `/metrics` listener used when `metrics.port` is set.
pub fn metrics_router(state: SharedState) -> Router {
    Router::new().route("/metrics", get(health::metrics)).with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    let mut e = ApiError::invalid(format!("method {} is not allowed on {}", req.method(), req.uri().path()));
    e.status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    e
}

/// Per-request metrics and the one-line request log.
async fn observe(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    // Route templates only: raw paths would make label values unbounded.
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
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
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let status = resp.status();
    let m = metrics();
    m.requests_total.with_label_values(&[&endpoint, status.as_str()]).inc();
    m.request_duration_seconds.with_label_values(&[&endpoint]).observe(elapsed.as_secs_f64());
    let size = declared.unwrap_or_else(|| read.load(Ordering::Relaxed));
    m.request_size_bytes.with_label_values(&[&endpoint]).observe(size as f64);
    let log = resp.extensions().get::<RequestLog>().cloned().unwrap_or_default();
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

/// Wraps a request body so every data frame read adds its length to `read`.
fn count_body(req: Request, read: Arc<AtomicU64>) -> Request {
    use futures_util::TryStreamExt;
    req.map(|body| {
        axum::body::Body::from_stream(body.into_data_stream().inspect_ok(move |chunk| {
            read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }))
    })
}

/// Parses a JSON body, mapping every failure to an OpenAI-shaped error.
pub fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("request body exceeds limits.max_request_bytes")
        } else {
            ApiError::invalid(format!("cannot read request body: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid("request body is empty; send a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// Attaches the request-log details to a response.
pub fn with_log(resp: impl IntoResponse, log: RequestLog) -> Response {
    let mut resp = resp.into_response();
    resp.extensions_mut().insert(log);
    resp
}
