//! The HTTP surface: routes, shared state, request logging and metrics, errors.
//!
//! Handlers live one API family per file (`openai`, `rerank`, `tokenize`, `models`,
//! `ollama` + `ollama_pull`, `health`) and are thin: they translate their API's shape to
//! the calls in `inference.rs` (resolve model → tokenize → submit → await) and back.
//! Errors from every layer below become an [`ApiError`] in `error.rs`.

mod body;
pub mod error;
mod health;
pub mod inference;
mod models;
mod observe;
mod ollama;
mod ollama_pull;
mod openai;
mod rerank;
mod state;
mod tokenize;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware;
use axum::routing::{delete, get, post};
use axum::Router;

pub use body::parse_body;
pub use error::ApiError;
pub use observe::{with_log, RequestLog};
pub use state::{AppState, SharedState};

/// Every route of the main listener.
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
        .route("/api/pull", post(ollama_pull::pull))
        .route("/api/version", get(ollama::version))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready));
    if state.config.metrics.enabled {
        app = app.route("/metrics", get(health::metrics));
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe::observe))
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
