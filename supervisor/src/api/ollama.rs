//! Ollama-compatible endpoints (Ollama docs/api.md): `/api/embed`, legacy
//! `/api/embeddings`, `/api/tags`, `/api/ps`, `/api/show`, `/api/delete`, `/api/pull`,
//! `/api/version`. Errors use Ollama's shape, `{"error": "message"}`, with the same status
//! codes. Model names may be store names, repo ids or aliases (`aliases.rs`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::autodownload::{pull_error, pull_request, resolve_name};
use super::inference::{self, Inputs};
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};
use crate::downloads::{Download, Started};
use crate::metadata::{rfc3339, ModelMetadata};
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
            json!(f.config.get("quantization").map(|q| format!("Q{}", q["bits"])).unwrap_or_else(|| float_level.into())),
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
        v["expires_at"] = json!(if ttl == 0 || e.runner.is_preloaded() { rfc3339(now + 100 * 365 * 86_400) } else { rfc3339(now + ttl.saturating_sub(idle)) });
        v["size_vram"] = json!(status.worker_stats.map(|s| s.rss_bytes).unwrap_or(m.size_bytes));
        v["state"] = json!(status.state.as_str());
        models.push(v);
    }
    // Not an Ollama field: downloads in flight (clients ignore unknown keys).
    let downloads: Vec<Value> = state.downloads.list().iter().map(|d| d.to_json()).collect();
    Json(json!({"models": models, "downloads": downloads}))
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
    let target = resolve_name(&state, &name)?;
    let store = state.pool.store();
    let m = store
        .installed(&target.name)
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
    let target = resolve_name(&state, &name)?;
    let store = state.pool.store();
    let path = store.find(&target.name).ok_or_else(|| ApiError::not_found(format!("model '{name}' not found")))?;
    let dir_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    // Stop its worker first, then remove the folder atomically (rename, then delete).
    state.pool.forget(&dir_name).await;
    let trash = store.dir().join(format!(".deleting-{dir_name}-{}", std::process::id()));
    std::fs::rename(&path, &trash).map_err(|e| ApiError::internal(format!("cannot remove {dir_name}: {e}")))?;
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash)).await;
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
struct PullBody {
    model: Option<String>,
    name: Option<String>,
    /// Default true: an NDJSON progress stream; false: one object at the end.
    stream: Option<bool>,
    #[allow(dead_code)]
    insecure: Option<bool>,
}

/// `POST /api/pull`: pulls a repo id or alias into the store. Streams NDJSON lines
/// (Ollama docs/api.md "Pull a Model"): `{"status": "pulling manifest"}`, then per file
/// `{"status": "pulling <file>", "digest": "<file>", "total": N, "completed": M}`, then
/// `{"status": "verifying sha256 digest"}`, `{"status": "writing manifest"}`,
/// `{"status": "success"}`; a failure is an `{"error": "..."}` line.
pub async fn pull(State(state): State<SharedState>, body: Result<Bytes, BytesRejection>) -> Result<Response, OllamaError> {
    let req: PullBody = parse_body(body)?;
    let name = NameRequest { model: req.model, name: req.name }.model()?;
    let target = resolve_name(&state, &name)?;
    let Some(pull_req) = pull_request(&state, &target, None) else {
        // Not a repo id or alias: fine when it is installed (a folder import, say).
        return match state.pool.store().find(&target.name) {
            Some(_) => Ok(Json(json!({"status": "success"})).into_response()),
            None => Err(ApiError::not_found(format!(
                "model '{name}' is neither installed nor a Hugging Face repo id (owner/name) or alias"
            ))
            .into()),
        };
    };
    let download = loop {
        match state.downloads.start(pull_req.clone()) {
            Started::New(d) | Started::Joined(d) => break d,
            // An explicit pull retries what failed before.
            Started::PreviousFailed(_) => continue,
        }
    };
    if req.stream == Some(false) {
        return match download.wait().await {
            Ok(_) => Ok(Json(json!({"status": "success"})).into_response()),
            Err(e) => Err(pull_error(&e).into()),
        };
    }
    let lines = futures_util::stream::unfold(PullStream::new(download), |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), s))
    });
    let mut resp = axum::body::Body::from_stream(lines).into_response();
    resp.headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/x-ndjson"));
    Ok(resp)
}

/// Turns a download's progress into NDJSON lines: every status line once, in order, and
/// the progress of the file being pulled at most every [`PullStream::PERIOD`]. Files are
/// pulled one after another, so when a new status arrives the previous file's progress
/// is final and is sent first (a watcher that woke late still reports 100 %).
struct PullStream {
    download: std::sync::Arc<Download>,
    rx: tokio::sync::watch::Receiver<crate::downloads::Progress>,
    statuses_sent: usize,
    /// The file of the last "pulling FILE" status.
    current: Option<String>,
    /// Bytes last reported per file.
    reported: std::collections::HashMap<String, u64>,
    finished: bool,
}

impl PullStream {
    const PERIOD: Duration = Duration::from_millis(100);

    fn new(download: std::sync::Arc<Download>) -> PullStream {
        let rx = download.subscribe();
        PullStream { download, rx, statuses_sent: 0, current: None, reported: Default::default(), finished: false }
    }

    /// A progress line for `file` unless its byte count was already reported.
    fn file_progress(&mut self, p: &crate::downloads::Progress, file: &str, out: &mut String) {
        if let Some((f, completed, total)) = p.files.iter().find(|f| f.0 == file) {
            if self.reported.get(f) != Some(completed) {
                self.reported.insert(f.clone(), *completed);
                out.push_str(&progress_line(f, *completed, *total));
            }
        }
    }

    /// The lines to send next, or None when the stream is over.
    async fn next_chunk(&mut self) -> Option<String> {
        if self.finished {
            return None;
        }
        loop {
            let p = self.rx.borrow_and_update().clone();
            let mut out = String::new();
            for status in &p.history[self.statuses_sent.min(p.history.len())..] {
                if let Some(prev) = self.current.take() {
                    self.file_progress(&p, &prev, &mut out);
                }
                match status.strip_prefix("pulling ").filter(|f| *f != "manifest") {
                    Some(file) => {
                        // Before its first bytes (or when it came from the cache) the
                        // file has no progress yet: send the bare status.
                        if !p.files.iter().any(|x| x.0 == file) {
                            out.push_str(&format!("{}\n", json!({"status": status})));
                        }
                        self.file_progress(&p, file, &mut out);
                        self.current = Some(file.to_owned());
                    }
                    None => out.push_str(&format!("{}\n", json!({"status": status}))),
                }
            }
            self.statuses_sent = p.history.len();
            if let Some(cur) = self.current.clone() {
                self.file_progress(&p, &cur, &mut out);
            }
            match &p.done {
                Some(Ok(_)) => {
                    out.push_str(&format!("{}\n", json!({"status": "success"})));
                    self.finished = true;
                }
                Some(Err(e)) => {
                    out.push_str(&format!("{}\n", json!({"error": e.message})));
                    self.finished = true;
                }
                None => {}
            }
            if !out.is_empty() {
                return Some(out);
            }
            if self.rx.changed().await.is_err() {
                self.finished = true;
                return Some(format!("{}\n", json!({"error": format!("the download of {} stopped", self.download.name)})));
            }
            tokio::time::sleep(Self::PERIOD).await;
        }
    }
}

fn progress_line(file: &str, completed: u64, total: u64) -> String {
    format!("{}\n", json!({"status": format!("pulling {file}"), "digest": file, "total": total, "completed": completed}))
}

pub async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}
