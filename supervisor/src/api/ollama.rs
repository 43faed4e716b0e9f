//! Ollama-compatible endpoints (Ollama docs/api.md): `/api/embed`, legacy
//! `/api/embeddings`, `/api/tags`, `/api/ps`, `/api/show`, `/api/delete`, `/api/version`
//! (`/api/pull` is in `ollama_pull.rs`). Errors use Ollama's shape, `{"error": "message"}`,
//! with the same status codes. Model names may be store names, repo ids or aliases
//! (`store/aliases.rs`). Unknown request fields are refused (400) as on every route;
//! `keep_alive` and `options` are accepted and ignored (workers are kept by
//! `cache.ttl_seconds`). Extension on `/api/embed`: `prompt_name`, one of the model's named
//! prompts (the model's `default_prompt_name` applies without it, on both embed routes).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::chunking::ChunkingRequest;
use super::inference::{self, EmbedOptions, Embedded, Inputs};
use super::input::TextInput;
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};
use crate::resolve::ResolveError;
use crate::store::matryoshka::{self, Matryoshka};
use crate::store::metadata::{rfc3339, ModelMetadata};
use crate::store::{InstalledModel, StoreError};

/// An [`ApiError`] rendered the way Ollama renders errors.
pub struct OllamaError(ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        OllamaError(e)
    }
}

impl From<ResolveError> for OllamaError {
    fn from(e: ResolveError) -> Self {
        OllamaError(e.into())
    }
}

impl From<StoreError> for OllamaError {
    fn from(e: StoreError) -> Self {
        OllamaError(e.into())
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let mut resp =
            (self.0.status, Json(json!({"error": crate::store::redact::redact(&self.0.message)}))).into_response();
        if let Some(s) = self.0.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OllamaEmbedRequest {
    #[serde(default)]
    pub model: String,
    pub input: Option<TextInput>,
    pub truncate: Option<bool>,
    #[schema(minimum = 1)]
    pub dimensions: Option<i64>,
    /// Extension: one of the model's named prompts.
    pub prompt_name: Option<String>,
    /// Extension: chunk inputs longer than the model's window (`true` or
    /// `{"overlap_tokens": N}`; docs/long-documents.md).
    pub chunking: Option<ChunkingRequest>,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    #[allow(dead_code)]
    pub keep_alive: Option<Value>,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    #[allow(dead_code)]
    pub options: Option<Value>,
}

/// The `{"error": "..."}` body of every Ollama route's errors.
#[derive(serde::Serialize, ToSchema)]
pub struct OllamaErrorBody {
    pub error: String,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// Embed texts (Ollama `/api/embed`).
#[utoipa::path(post, path = "/api/embed", tag = "Ollama", operation_id = "ollama_embed", request_body = OllamaEmbedRequest,
    responses((status = 200, description = "`{model, embeddings, total_duration, load_duration, prompt_eval_count}`",
        body = serde_json::Value), (status = "4XX", body = OllamaErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn embed(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let t0 = Instant::now();
    let req: OllamaEmbedRequest = parse_body(body)?;
    let inputs = match req.input {
        Some(input) => Inputs::Texts(input.into_texts()),
        None => return Err(ApiError::invalid("`input` is required: a string or a list of strings").into()),
    };
    let n = inputs.len();
    let opts = EmbedOptions {
        truncate: req.truncate,
        prompt_name: req.prompt_name,
        chunking: req.chunking,
        ..Default::default()
    };
    if n > state.config.limits.max_inputs_per_request {
        let shape = EmbedShape { model: req.model.clone(), dimensions: req.dimensions, t0 };
        return Ok(super::streamed::respond(state.clone(), &req.model, inputs, opts, shape).await?);
    }
    let out = inference::embed(&state, &req.model, inputs, opts).await?;
    let (dim, data) = shortened(&out, req.dimensions)?;
    let body = EmbedResponse {
        model: &req.model,
        embeddings: data.chunks_exact(dim).collect(),
        total_duration: nanos(t0.elapsed()),
        load_duration: 0,
        prompt_eval_count: out.tokens,
    };
    Ok(with_log(Json(body), RequestLog { model: out.entry.name.clone(), inputs: n, tokens: out.tokens }))
}

/// `/api/embed`'s answer, in Ollama's field order; the rows are written as f32 (`json!`
/// would widen them to f64's longer digits).
#[derive(Serialize)]
struct EmbedResponse<'a> {
    model: &'a str,
    embeddings: Vec<&'a [f32]>,
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: usize,
}

/// The rows cut to `dimensions`.
fn shortened(out: &Embedded, dimensions: Option<i64>) -> Result<(usize, Vec<f32>), ApiError> {
    match dimensions {
        Some(d) if d < 1 || d as usize > out.dim => {
            Err(ApiError::invalid(format!("dimensions must be between 1 and {}", out.dim)))
        }
        Some(d) if (d as usize) < out.dim => Ok((d as usize, inference::shorten_rows(&out.data, out.dim, d as usize))),
        _ => Ok((out.dim, out.data.clone())),
    }
}

/// `/api/embed` with more inputs than `limits.max_inputs_per_request`, streamed
/// (`streamed.rs`): `EmbedResponse`'s bytes, its `total_duration` taken when the last
/// piece is done.
struct EmbedShape {
    model: String,
    dimensions: Option<i64>,
    t0: Instant,
}

impl super::streamed::Shape for EmbedShape {
    fn head(&self) -> Vec<u8> {
        let model = serde_json::to_string(&self.model).unwrap_or_default();
        format!(r#"{{"model":{model},"embeddings":["#).into_bytes()
    }

    fn items(&self, out: &Embedded, _first: usize) -> Result<Vec<Vec<u8>>, ApiError> {
        let (dim, data) = shortened(out, self.dimensions)?;
        data.chunks_exact(dim.max(1))
            .map(|row| serde_json::to_vec(row).map_err(|e| ApiError::internal(e.to_string())))
            .collect()
    }

    fn tail(&self, tokens: usize) -> Vec<u8> {
        let total = nanos(self.t0.elapsed());
        format!(r#"],"total_duration":{total},"load_duration":0,"prompt_eval_count":{tokens}}}"#).into_bytes()
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyRequest {
    #[serde(default)]
    pub model: String,
    /// The text to embed (not a prompt prefix: Ollama's name).
    pub prompt: Option<String>,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    #[allow(dead_code)]
    pub keep_alive: Option<Value>,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    #[allow(dead_code)]
    pub options: Option<Value>,
}

/// Legacy `/api/embeddings`: `{model, prompt}` → `{embedding}`.
#[utoipa::path(post, path = "/api/embeddings", tag = "Ollama", request_body = LegacyRequest,
    responses((status = 200, description = "`{embedding}`", body = serde_json::Value), (status = "4XX", body = OllamaErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn embeddings_legacy(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let req: LegacyRequest = parse_body(body)?;
    let prompt = req.prompt.ok_or_else(|| ApiError::invalid("`prompt` is required"))?;
    let out = inference::embed(&state, &req.model, Inputs::Texts(vec![prompt]), EmbedOptions::default()).await?;
    let log = RequestLog { model: out.entry.name.clone(), inputs: 1, tokens: out.tokens };
    Ok(with_log(Json(json!({"embedding": out.data})), log))
}

fn details(m: &InstalledModel) -> Value {
    let dtype = ModelMetadata::read(&m.path).map(|meta| meta.dtype).unwrap_or_default();
    let float_level = match dtype.as_str() {
        "float16" => "F16",
        "bfloat16" => "BF16",
        _ => "F32",
    };
    let (family, quant) = match &m.facts {
        Ok(f) => (
            f.family.as_str().to_owned(),
            json!(f
                .config
                .get("quantization")
                .map(|q| format!("Q{}", q["bits"]))
                .unwrap_or_else(|| float_level.into())),
        ),
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

/// Installed models (Ollama `/api/tags`).
#[utoipa::path(get, path = "/api/tags", tag = "Ollama", responses((status = 200, description = "`{models}`", body = serde_json::Value)))]
pub async fn tags(State(state): State<SharedState>) -> Json<Value> {
    let models: Vec<Value> = state.pool.store().list().iter().map(model_json).collect();
    Json(json!({"models": models}))
}

/// Loaded models (Ollama `/api/ps`).
#[utoipa::path(get, path = "/api/ps", tag = "Ollama", responses((status = 200, description = "`{models}`", body = serde_json::Value)))]
pub async fn ps(State(state): State<SharedState>) -> Json<Value> {
    let installed = state.pool.store().list();
    let ttl = state.config.cache.ttl_seconds;
    let mut models = Vec::new();
    for e in state.pool.entries() {
        if !e.runner.is_loaded() {
            continue;
        }
        let Some(m) = installed.iter().find(|m| m.name == e.name) else { continue };
        let status = e.runner.status();
        let idle = status.last_used.elapsed().as_secs();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut v = model_json(m);
        v["expires_at"] = json!(if ttl == 0 || e.runner.is_preloaded() {
            rfc3339(now + 100 * 365 * 86_400)
        } else {
            rfc3339(now + ttl.saturating_sub(idle))
        });
        // Ollama's size_vram: accelerator memory where there is one, else the worker's RSS.
        let vram = status.worker_stats.map(|s| s.device_bytes.unwrap_or(s.rss_bytes));
        v["size_vram"] = json!(vram.unwrap_or(m.size_bytes));
        v["state"] = json!(status.state.as_str());
        models.push(v);
    }
    // Not an Ollama field: downloads in flight (clients ignore unknown keys).
    let downloads: Vec<Value> = state.downloads.list().iter().map(|d| d.to_json()).collect();
    Json(json!({"models": models, "downloads": downloads}))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NameRequest {
    pub model: Option<String>,
    /// Older Ollama clients send `name`.
    pub name: Option<String>,
    /// `/api/show`: accepted and ignored.
    #[allow(dead_code)]
    pub verbose: Option<bool>,
}

impl NameRequest {
    pub fn model(self) -> Result<String, ApiError> {
        self.model.or(self.name).filter(|m| !m.is_empty()).ok_or_else(|| ApiError::invalid("`model` is required"))
    }
}

/// Model details (Ollama `/api/show`).
#[utoipa::path(post, path = "/api/show", tag = "Ollama", request_body = NameRequest,
    responses((status = 200, description = "model details", body = serde_json::Value), (status = "4XX", body = OllamaErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn show(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, OllamaError> {
    let name = parse_body::<NameRequest>(body)?.model()?;
    let target = state.resolver().resolve_name(&name)?;
    let store = state.pool.store();
    let m = store.installed(&target.name).ok_or_else(|| ApiError::not_found(format!("model '{name}' not found")))?;
    let facts = m.facts.as_ref().map_err(|e| ApiError::concealed("the model's files cannot be read", e))?;
    let capability = match facts.kind {
        mlx_serve_protocol::ModelKind::Embedding => "embedding",
        mlx_serve_protocol::ModelKind::Reranker => "rerank",
        mlx_serve_protocol::ModelKind::Classifier => "classify",
    };
    let mut metadata: Value = std::fs::read_to_string(m.path.join("mlx-serve.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    // A model pulled from a folder records the folder's path: clients get its name only.
    if metadata["source_type"] == "folder" {
        if let Some(source) = metadata["source"].as_str() {
            let name = source.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_owned();
            metadata["source"] = json!(name);
        }
    }
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
            "mlx_serve.dimensions": (facts.kind == mlx_serve_protocol::ModelKind::Embedding).then(|| {
                // From the mlx-serve.json read above, not the file again.
                let declared = serde_json::from_value::<Matryoshka>(metadata["matryoshka"].clone()).ok();
                matryoshka::summary(declared.as_ref())
            }),
            "mlx_serve.metadata": metadata,
        },
        "capabilities": [capability],
        "modified_at": rfc3339(m.modified),
    })))
}

/// Remove a model (Ollama `/api/delete`).
#[utoipa::path(delete, path = "/api/delete", tag = "Ollama", request_body = NameRequest,
    responses((status = 200, description = "removed"), (status = "4XX", body = OllamaErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn delete(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let name = parse_body::<NameRequest>(body)?.model()?;
    let target = state.resolver().resolve_name(&name)?;
    let store = state.pool.store();
    let path = store.find(&target.name).ok_or_else(|| ApiError::not_found(format!("model '{name}' not found")))?;
    let dir_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    // The name goes first (rename): from then on no request can start the model again,
    // and one that was under way finds it gone (404). Then its worker stops (its open
    // files stay readable until then), then the files go.
    let trash = store.dir().join(format!(".deleting-{dir_name}-{}", std::process::id()));
    std::fs::rename(&path, &trash).map_err(|e| ApiError::internal(format!("cannot remove {dir_name}: {e}")))?;
    state.pool.forget(&dir_name).await;
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash)).await;
    Ok(StatusCode::OK.into_response())
}

/// Server version (Ollama `/api/version`).
#[utoipa::path(get, path = "/api/version", tag = "Ollama", responses((status = 200, description = "`{version}`", body = serde_json::Value)))]
pub async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}
