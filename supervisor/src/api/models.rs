//! `GET /v1/models`: installed models (the store), their type and whether a worker is loaded.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::SharedState;

pub async fn list(State(state): State<SharedState>) -> Json<Value> {
    let loaded: std::collections::HashMap<String, bool> =
        state.pool.entries().iter().map(|e| (e.name.clone(), e.runner.is_loaded())).collect();
    let data: Vec<Value> = state
        .pool
        .store()
        .list()
        .into_iter()
        .map(|m| {
            let mut v = json!({
                "id": m.name,
                "object": "model",
                "created": m.modified,
                "owned_by": "mlx-serve",
                "loaded": loaded.get(&m.name).copied().unwrap_or(false),
                "size_bytes": m.size_bytes,
            });
            match &m.facts {
                Ok(f) => {
                    v["type"] = json!(f.kind.as_str());
                    v["architecture"] = json!(f.architecture);
                    v["max_tokens"] = json!(f.max_tokens);
                    v["pooling"] = json!(f.pooling.as_str());
                    if f.kind == mlx_serve_protocol::ModelKind::Embedding {
                        v["dimensions"] = json!(f.hidden_size);
                    }
                }
                Err(e) => v["error"] = json!(e),
            }
            v
        })
        .collect();
    // Not an OpenAI field: downloads in flight (auto-download, /api/pull).
    let downloads: Vec<Value> = state.downloads.list().iter().map(|d| d.to_json()).collect();
    Json(json!({"object": "list", "data": data, "downloads": downloads}))
}
