//! `GET /health` (the process is up), `GET /ready` (it can serve: not shutting down),
//! `GET /metrics` (Prometheus text format).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::SharedState;
use crate::metrics::metrics as registry;

/// Liveness: the process is up.
#[utoipa::path(get, path = "/health", tag = "Operations", responses((status = 200, description = "`{status, version, uptime_seconds}`", body = serde_json::Value)))]
pub async fn health(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
}

/// Readiness: 503 while starting or shutting down.
#[utoipa::path(get, path = "/ready", tag = "Operations",
    responses((status = 200, description = "`{status: ready}`", body = serde_json::Value), (status = 503, body = super::error::ErrorBody, description = "not ready")))]
pub async fn ready(State(state): State<SharedState>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let mut e = super::ApiError::unavailable("not ready: starting up or shutting down", 1);
        e.status = StatusCode::SERVICE_UNAVAILABLE;
        e.into_response()
    }
}

pub async fn metrics_handler_body(state: &SharedState) -> String {
    state.pool.refresh_gauges().await;
    registry().uptime_seconds.set(state.started.elapsed().as_secs_f64());
    registry().render()
}

/// Prometheus metrics (text format; `docs/metrics.md`).
#[utoipa::path(get, path = "/metrics", tag = "Operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<SharedState>) -> Response {
    let body = metrics_handler_body(&state).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
