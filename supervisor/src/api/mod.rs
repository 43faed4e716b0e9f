//! The HTTP surface: routes, shared state, request logging and metrics, errors.
//!
//! Handlers live one API family per file (`openai`, `rerank`, `score`, `tokenize`, `models`, `tei`, `predict`,
//! `cohere`, `ollama` + `ollama_pull`, `health`, `openapi`) and are thin: they translate
//! their API's shape to the calls in `inference.rs` (resolve model → prompt → tokenize →
//! submit → await) and back; `input.rs` holds the input unions, `encode.rs` the output
//! encodings. Errors from every layer below become an [`ApiError`] in `error.rs`.
//!
//! Request bodies are typed (they make the OpenAPI document, `openapi.rs`) and refuse
//! unknown fields with a 400 that names them: a misspelt or unsupported option must not
//! be ignored silently. Fields a known client sends that change nothing here (`user`,
//! `keep_alive`…) are declared and ignored; `priority` orders the model's queue
//! (`priority.rs`).
//!
//! Around every route, outermost first: `observe.rs` (metrics, request log), a panic
//! catcher (a short 500, the panic only in the log), `origin.rs` (the `Host` and `Origin`
//! checks, CORS), `auth.rs` (the optional API key, before any body is read), `manage.rs`
//! (who may pull and delete models), `priority.rs` (the request's priority and client),
//! `body.rs` (body size, read time and the in-flight memory budget). `peer.rs` says who is
//! connecting; `activity.rs` (outside them all) whether a connection is busy.

pub mod activity;
mod auth;
mod body;
mod chunking;
mod cohere;
mod cohere_meta;
mod default_model;
mod encode;
pub mod error;
mod health;
mod hybrid_score;
pub mod inference;
mod inference_free;
mod input;
mod late_chunking;
mod late_request;
mod manage;
mod models;
mod observe;
mod ollama;
mod ollama_pull;
mod openai;
pub mod openapi;
mod origin;
pub mod peer;
mod pieces;
mod predict;
mod priority;
mod pylate;
mod pylate_pool;
mod rerank;
mod score;
mod similarity;
mod state;
mod streamed;
mod tei;
mod tei_tokens;
mod tokenize;
mod usage;
mod ward_linkage;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;

pub use auth::ApiKeyCheck;
pub use body::{decoded_size, parse_body, InflightBudget};
pub use error::ApiError;
pub use observe::{with_log, RequestLog};
pub use origin::OriginPolicy;
pub use state::{AppState, SharedState};

/// Every route of the main listener. Each path also answers with a trailing slash
/// (`/v1/embeddings/`), since clients differ in how they join base URL and path.
pub fn router(state: SharedState) -> Router {
    let body_limit = state.config.limits.max_request_bytes;
    let mut routes: Vec<(&str, MethodRouter<SharedState>)> = vec![
        ("/v1/embeddings", post(openai::embeddings)),
        ("/embeddings", post(openai::embeddings)),
        ("/v1/late_chunking", post(late_chunking::late_chunking)),
        ("/late_chunking", post(late_chunking::late_chunking)),
        ("/v1/rerank", post(rerank::rerank)),
        ("/rerank", post(rerank::rerank)),
        ("/v2/rerank", post(rerank::rerank)),
        ("/v1/score", post(score::score)),
        ("/score", post(score::score)),
        ("/v1/tokenize", post(tokenize::tokenize)),
        ("/tokenize", post(tokenize::tokenize)),
        ("/v1/models", get(models::list)),
        ("/models", get(models::list)),
        ("/v1/models/{*id}", get(models::retrieve)),
        ("/models/{*id}", get(models::retrieve)),
        ("/", post(tei::root)),
        ("/embed", post(tei::embed)),
        ("/embed_sparse", post(tei_tokens::embed_sparse)),
        ("/embed_all", post(tei_tokens::embed_all)),
        ("/similarity", post(tei::similarity)),
        ("/predict", post(tei::predict)),
        ("/info", get(tei::info)),
        ("/v1/embed", post(cohere::embed_v1)),
        ("/v2/embed", post(cohere::embed_v2)),
        ("/api/embed", post(ollama::embed)),
        ("/api/embeddings", post(ollama::embeddings_legacy)),
        ("/api/tags", get(ollama::tags)),
        ("/api/ps", get(ollama::ps)),
        ("/api/show", post(ollama::show)),
        ("/api/delete", delete(ollama::delete)),
        ("/api/pull", post(ollama_pull::pull)),
        ("/api/version", get(ollama::version)),
        ("/openapi.json", get(openapi::openapi_json)),
        ("/docs", get(openapi::docs)),
        ("/health", get(health::health)),
        ("/ready", get(health::ready)),
    ];
    if state.config.metrics.enabled {
        routes.push(("/metrics", get(health::metrics)));
    }
    let mut app = Router::new();
    for (path, handler) in routes {
        // A catch-all (`{*id}`) already takes what follows; "/" has no other spelling.
        if path != "/" && !path.contains("{*") {
            app = app.route(&format!("{path}/"), handler.clone());
        }
        app = app.route(path, handler);
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), body::admit))
        .layer(middleware::from_fn_with_state(state.clone(), priority::classify))
        .layer(middleware::from_fn_with_state(state.clone(), manage::check))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_key))
        .layer(middleware::from_fn_with_state(state.clone(), origin::check))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(state.clone(), observe::observe))
        .layer(middleware::from_fn(activity::track))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The `/metrics` listener used when `metrics.port` is set (the API key applies as on
/// the main port).
pub fn metrics_router(state: SharedState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_key))
        .layer(middleware::from_fn_with_state(state.clone(), origin::check))
        .with_state(state)
}

/// An error in the shape of the API `path` belongs to, for what answers before a handler
/// (the API key, body limits): Ollama's `{"error": "…"}` under `/api/`, TEI's
/// `{error, error_type}` on its own routes, Cohere's `{id, message}` on its embed routes,
/// OpenAI's `{"error": {message, type, code, param}}` elsewhere.
pub fn error_for_route(path: &str, e: ApiError) -> Response {
    let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    match path {
        _ if path.starts_with("/api/") => ollama::OllamaError::from(e).into_response(),
        "/" | "/embed" | "/embed_sparse" | "/embed_all" | "/similarity" | "/predict" | "/info" => {
            tei::TeiError::from(e).into_response()
        }
        "/v1/embed" | "/v2/embed" => cohere::CohereError::from(e).into_response(),
        _ => e.into_response(),
    }
}

/// A handler panicked: a bug. The panic message stays in the log (it may name files and
/// lines); the client gets a short 500.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!("a request handler panicked: {what}");
    ApiError::internal("internal error (the server log has the details)").into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    let mut e = ApiError::invalid(format!("method {} is not allowed on {}", req.method(), req.uri().path()));
    e.status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    e
}
