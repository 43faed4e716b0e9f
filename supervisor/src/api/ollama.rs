//! Ollama-compatible endpoints (Ollama docs/api.md): `/api/embed`, legacy
//! `/api/embeddings`, `/api/tags`, `/api/ps`, `/api/show`, `/api/delete`, `/api/version`.
//! Errors use Ollama's shape, `{"error": "message"}`, with the same status codes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::inference::{self, Inputs};
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};
use crate::store::InstalledModel;

/// An [`ApiError`] rendered the way Ollama renders errors.
pub struct OllamaError(ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        OllamaError(e)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let mut resp = (self.0.status, Json(json!({"error": self.0.message}))).into_response();
        if let Some(s) = self.0.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

#[derive(Deserialize)]
struct EmbedRequest {
    #[serde(default)]
    model: String,
    input: Option<Value>,
    truncate: Option<bool>,
    dimensions: Option<i64>,
    #[allow(dead_code)]
    keep_alive: Option<Value>,
    #[allow(dead_code)]
    options: Option<Value>,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

pub async fn embed(State(state): State<SharedState>, body: Result<Bytes, BytesRejection>) -> Result<Response, OllamaError> {
    let t0 = Instant::now();
    let req: EmbedRequest = parse_body(body)?;
    let inputs = match req.input {
        Some(Value::String(s)) => Inputs::Texts(vec![s]),
        Some(Value::Array(items)) => Inputs::Texts(
            items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(ApiError::invalid("invalid input type: `input` must be a string or a list of strings")),
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(ApiError::invalid("`input` is required: a string or a list of strings").into()),
    };
    let n = inputs.len();
    let out = inference::embed(&state, &req.model, inputs, req.truncate, None).await?;
    let (dim, data) = match req.dimensions {
        Some(d) if d < 1 || d as usize > out.dim => {
            return Err(ApiError::invalid(format!("dimensions must be between 1 and {}", out.dim)).into())
        }
        Some(d) if (d as usize) < out.dim => (d as usize, inference::shorten_rows(&out.data, out.dim, d as usize)),
        _ => (out.dim, out.data),
    };
    let embeddings: Vec<&[f32]> = data.chunks_exact(dim).collect();
    let body = json!({
        "model": req.model,
        "embeddings": embeddings,
        "total_duration": nanos(t0.elapsed()),
        "load_duration": 0,
        "prompt_eval_count": out.tokens,
    });
    Ok(with_log(Json(body), RequestLog { model: out.entry.name.clone(), inputs: n, tokens: out.tokens }))
}

#[derive(Deserialize)]
struct LegacyRequest {
    #[serde(default)]
    model: String,
    prompt: Option<String>,
}

/// Legacy `/api/embeddings`: `{model, prompt}` → `{embedding}`.
pub async fn embeddings_legacy(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let req: LegacyRequest = parse_body(body)?;
    let prompt = req.prompt.ok_or_else(|| ApiError::invalid("`prompt` is required"))?;
    let out = inference::embed(&state, &req.model, Inputs::Texts(vec![prompt]), None, None).await?;
    let log = RequestLog { model: out.entry.name.clone(), inputs: 1, tokens: out.tokens };
    Ok(with_log(Json(json!({"embedding": out.data})), log))
}

/// RFC 3339 UTC time for Unix seconds (civil-from-days, H. Hinnant's algorithm).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn details(m: &InstalledModel) -> Value {
    let (family, quant) = match &m.facts {
        Ok(f) => (f.family.as_str().to_owned(), json!(f.config.get("quantization").map(|q| format!("Q{}", q["bits"])).unwrap_or_else(|| "F32".into()))),
        Err(_) => (String::new(), json!("")),
    };
    json!({
        "format": "safetensors",
        "family": family,
        "families": [family],
        "parameter_size": "",
        "quantization_level": quant,
    })
}

fn model_json(m: &InstalledModel) -> Value {
    json!({
        "name": m.name,
        "model": m.name,
        "modified_at": rfc3339(m.modified),
        "size": m.size_bytes,
        "digest": "",
        "details": details(m),
    })
}

pub async fn tags(State(state): State<SharedState>) -> Json<Value> {
    let models: Vec<Value> = state.pool.store().list().iter().map(model_json).collect();
    Json(json!({"models": models}))
}

pub async fn ps(State(state): State<SharedState>) -> Json<Value> {
    let installed = state.pool.store().list();
    let ttl = state.config.cache.ttl_seconds;
    let mut models = Vec::new();
    for e in state.pool.entries() {
        if !e.runner.is_loaded() {
            continue;
        }
        let Some(m) = installed.iter().find(|m| m.name == e.name) else { continue };
        let status = e.runner.status.lock().unwrap().clone();
        let idle = status.last_used.elapsed().as_secs();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut v = model_json(m);
        v["expires_at"] = json!(if ttl == 0 || e.runner.preload { rfc3339(now + 100 * 365 * 86_400) } else { rfc3339(now + ttl.saturating_sub(idle)) });
        v["size_vram"] = json!(status.worker_stats.map(|s| s.rss_bytes).unwrap_or(m.size_bytes));
        v["state"] = json!(status.state.as_str());
        models.push(v);
    }
    Json(json!({"models": models}))
}

#[derive(Deserialize)]
struct NameRequest {
    model: Option<String>,
    /// Older Ollama clients send `name`.
    name: Option<String>,
}

impl NameRequest {
    fn model(self) -> Result<String, ApiError> {
        self.model.or(self.name).filter(|m| !m.is_empty()).ok_or_else(|| ApiError::invalid("`model` is required"))
    }
}

pub async fn show(State(state): State<SharedState>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, OllamaError> {
    let name = parse_body::<NameRequest>(body)?.model()?;
    let store = state.pool.store();
    let m = store
        .find(&name)
        .and_then(|p| store.list().into_iter().find(|m| m.path == p))
        .ok_or_else(|| ApiError::not_found(format!("model '{name}' not found")))?;
    let facts = m.facts.as_ref().map_err(|e| ApiError::internal(e.clone()))?;
    let capability = match facts.kind {
        mlx_serve_protocol::ModelKind::Embedding => "embedding",
        mlx_serve_protocol::ModelKind::Reranker => "rerank",
    };
    let metadata: Value = std::fs::read_to_string(m.path.join("mlx-serve.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": details(&m),
        "model_info": {
            "general.architecture": facts.architecture,
            "general.type": facts.kind.as_str(),
            "mlx_serve.pooling": facts.pooling.as_str(),
            "mlx_serve.normalize": facts.normalize,
            "mlx_serve.max_tokens": facts.max_tokens,
            "mlx_serve.hidden_size": facts.hidden_size,
            "mlx_serve.vocab_size": facts.vocab_size,
            "mlx_serve.metadata": metadata,
        },
        "capabilities": [capability],
        "modified_at": rfc3339(m.modified),
    })))
}

pub async fn delete(State(state): State<SharedState>, body: Result<Bytes, BytesRejection>) -> Result<Response, OllamaError> {
    let name = parse_body::<NameRequest>(body)?.model()?;
    let store = state.pool.store();
    let path = store.find(&name).ok_or_else(|| ApiError::not_found(format!("model '{name}' not found")))?;
    let dir_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    // Stop its worker first, then remove the folder atomically (rename, then delete).
    state.pool.forget(&dir_name).await;
    let trash = store.dir().join(format!(".deleting-{dir_name}-{}", std::process::id()));
    std::fs::rename(&path, &trash).map_err(|e| ApiError::internal(format!("cannot remove {dir_name}: {e}")))?;
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash)).await;
    Ok(StatusCode::OK.into_response())
}

pub async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_764_028_800), "2025-11-25T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
