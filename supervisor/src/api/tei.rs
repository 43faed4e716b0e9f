//! Text Embeddings Inference (TEI) routes, so TEI clients and
//! `huggingface_hub.InferenceClient(base_url=...)` work unchanged. Shapes from TEI's
//! `router/src/http/types.rs` (`EmbedRequest`, `EmbedResponse`, `TruncationDirection`) and
//! `router/src/lib.rs` (`Info`, `ModelType`, `ErrorResponse`):
//!
//! - `POST /embed`: `{inputs: str | [str] | ids | [ids], truncate?, truncation_direction?,
//!   prompt_name?, normalize? (default true), dimensions?}` → a bare array of vectors.
//!   Extensions: `model` (TEI serves one model, so it has no such field), `prompt`.
//! - `POST /`: TEI routes it by the type of the one model it serves (`server.rs`: embedding
//!   → embed, reranker → rerank). We serve several, so we route by the body: `query` +
//!   `texts` → rerank (TEI shape), `inputs` → embed. That is what `InferenceClient`'s
//!   `feature_extraction` posts to the base URL.
//!   A body with `inputs: {source_sentence, sentences}` goes to `/similarity`
//!   (`similarity.rs`), as `sentence_similarity` posts it; `inputs` with `parameters` goes
//!   to `/predict` (`predict.rs`), as `text_classification` posts it.
//! - `GET /info`: TEI's `Info` for one model (`?model=NAME`).
//!
//! Without `model`, the request means the only installed model of the right type; with
//! several installed, a 400 lists them (`default_model.rs`). Errors use TEI's shape,
//! `{"error": "...", "error_type": "Validation" | "Overloaded" | "Backend" | ...}`. Unknown
//! fields are refused (400). Not supported, with a 400: `truncation_direction: left`,
//! `normalize: false` for a model whose pipeline normalizes (the worker's rows are already
//! normalized), `encoding_format` other than `float`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mlx_serve_protocol::ModelKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::chunking::ChunkingRequest;
use super::default_model::model_or_only;
use super::encode;
use super::inference::{self, EmbedOptions, Embedded};
use super::input::{check_truncation_direction, EmbeddingInput};
use super::{parse_body, predict, rerank, similarity, with_log, ApiError, RequestLog, SharedState};

/// TEI's error body (`router/src/lib.rs` `ErrorResponse`).
#[derive(Serialize, ToSchema)]
pub struct TeiErrorBody {
    pub error: String,
    /// Validation, Overloaded, Backend, Unhealthy, Tokenizer, Empty
    pub error_type: &'static str,
}

/// An [`ApiError`] rendered the way TEI renders errors.
pub struct TeiError(ApiError);

impl From<ApiError> for TeiError {
    fn from(e: ApiError) -> Self {
        TeiError(e)
    }
}

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        let error_type = match self.0.status {
            StatusCode::TOO_MANY_REQUESTS => "Overloaded",
            StatusCode::SERVICE_UNAVAILABLE => "Unhealthy",
            s if s.is_server_error() => "Backend",
            _ => "Validation",
        };
        let mut resp =
            (self.0.status, Json(TeiErrorBody { error: crate::store::redact::redact(&self.0.message), error_type }))
                .into_response();
        if let Some(s) = self.0.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub inputs: Option<EmbeddingInput>,
    /// Extension: which model; default the only installed embedding model.
    pub model: Option<String>,
    /// Default `limits.truncate` (TEI: `--auto-truncate`).
    pub truncate: Option<bool>,
    /// `right` (default); `left` is refused.
    pub truncation_direction: Option<String>,
    /// One of the model's named prompts; default its `default_prompt_name`.
    pub prompt_name: Option<String>,
    /// Extension: a raw prefix (wins over `prompt_name`).
    pub prompt: Option<String>,
    /// Default true: L2-normalize.
    pub normalize: Option<bool>,
    /// Keep the first N dimensions (then normalize, when `normalize`).
    #[schema(minimum = 1)]
    pub dimensions: Option<i64>,
    /// `float` only (sent by some clients).
    pub encoding_format: Option<String>,
    /// Extension: chunk inputs longer than the model's window (`true` or
    /// `{"overlap_tokens": N}`; docs/long-documents.md).
    pub chunking: Option<ChunkingRequest>,
}

/// Embed texts (TEI). Returns one vector per input.
#[utoipa::path(post, path = "/embed", tag = "TEI", operation_id = "tei_embed", request_body = EmbedRequest,
    responses((status = 200, body = Vec<Vec<f32>>, description = "success"), (status = "4XX", body = TeiErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn embed(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TeiError> {
    let req: EmbedRequest = parse_body(body)?;
    Ok(embed_request(&state, req).await?)
}

async fn embed_request(state: &SharedState, req: EmbedRequest) -> Result<Response, ApiError> {
    let inputs = req.inputs.ok_or_else(|| ApiError::invalid_param("inputs", "`inputs` is required"))?;
    check_truncation_direction(req.truncation_direction.as_deref())?;
    if let Some(f) = req.encoding_format.as_deref().filter(|f| *f != "float") {
        return Err(ApiError::invalid_param(
            "encoding_format",
            format!("encoding_format must be \"float\" here, got {f:?}"),
        ));
    }
    let dims = encode::check_dimensions(req.dimensions, "dimensions")?;
    let model = model_or_only(state, req.model, ModelKind::Embedding)?;
    let opts = EmbedOptions {
        truncate: req.truncate,
        instruction: None,
        prompt_name: req.prompt_name,
        prompt: req.prompt,
        chunking: req.chunking,
        ..Default::default()
    };
    let normalize = req.normalize.unwrap_or(true);
    let inputs: inference::Inputs = inputs.into();
    if inputs.len() > state.config.limits.max_inputs_per_request {
        let shape = RowsShape { model: model.clone(), dims, normalize };
        return super::streamed::respond(state.clone(), &model, inputs, opts, shape).await;
    }
    let out = inference::embed(state, &model, inputs, opts).await?;
    let (dim, data) = rows_of(&out, dims, normalize, &model)?;
    let rows: Vec<&[f32]> = data.chunks_exact(dim).collect();
    let log = RequestLog { model: out.entry.name.clone(), inputs: rows.len(), tokens: out.tokens };
    Ok(with_log(Json(rows), log))
}

/// `/embed`'s rows: cut to `dimensions`, then normalized unless the request says not to.
fn rows_of(out: &Embedded, dims: Option<usize>, normalize: bool, model: &str) -> Result<(usize, Vec<f32>), ApiError> {
    if !normalize && out.entry.facts.normalize {
        return Err(ApiError::invalid_param(
            "normalize",
            format!(
                "model `{model}` normalizes its embeddings in its own pipeline; `normalize: false` cannot undo that"
            ),
        ));
    }
    let (dim, mut data) = encode::shorten(out, dims, model, "dimensions")?;
    if normalize {
        encode::normalize_rows(&mut data, dim);
    }
    Ok((dim, data))
}

/// `/embed` with more inputs than `limits.max_inputs_per_request`, streamed
/// (`streamed.rs`): `[[…],…]`, the rows as the unstreamed answer writes them.
struct RowsShape {
    model: String,
    dims: Option<usize>,
    normalize: bool,
}

impl super::streamed::Shape for RowsShape {
    fn head(&self) -> Vec<u8> {
        b"[".to_vec()
    }

    fn items(&self, out: &Embedded, _first: usize) -> Result<Vec<Vec<u8>>, ApiError> {
        let (dim, data) = rows_of(out, self.dims, self.normalize, &self.model)?;
        data.chunks_exact(dim.max(1))
            .map(|row| serde_json::to_vec(row).map_err(|e| ApiError::internal(e.to_string())))
            .collect()
    }

    fn tail(&self, _tokens: usize) -> Vec<u8> {
        b"]".to_vec()
    }
}

/// TEI's root route: embed (`inputs`) or rerank (`query` + `texts`), by the body.
#[utoipa::path(post, path = "/", tag = "TEI", request_body(content = serde_json::Value,
        description = "`{inputs, ...}` as for `/embed`, or `{query, texts, ...}` as for `/rerank`"),
    responses((status = 200, description = "as `/embed` or `/rerank`"), (status = "4XX", body = TeiErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn root(
    State(state): State<SharedState>,
    uri: axum::http::Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body {
        Ok(b) => b,
        Err(e) => return TeiError(parse_body::<Value>(Err(e)).unwrap_err()).into_response(),
    };
    let peek: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let is_rerank = peek.get("query").is_some() && peek.get("texts").is_some();
    let is_similarity = peek.get("inputs").is_some_and(|i| i.get("source_sentence").is_some());
    // `parameters` beside `inputs`: the Inference API's text-classification task, as
    // `InferenceClient.text_classification` posts it (feature_extraction sends none).
    let is_classification = !is_similarity && peek.get("inputs").is_some() && peek.get("parameters").is_some();
    if is_classification {
        return match parse_body::<predict::PredictRequest>(Ok(bytes)) {
            Ok(req) => match predict::predict_request(&state, req).await {
                Ok(r) => r,
                Err(e) => TeiError(e).into_response(),
            },
            Err(e) => TeiError(e).into_response(),
        };
    }
    if is_rerank {
        return match rerank::rerank(State(state), uri, Ok(bytes)).await {
            Ok(r) => r,
            Err(e) => TeiError(e).into_response(),
        };
    }
    if is_similarity {
        return match parse_body::<similarity::SimilarityRequest>(Ok(bytes)) {
            Ok(req) => match similarity::similarity_request(&state, req).await {
                Ok(r) => r,
                Err(e) => TeiError(e).into_response(),
            },
            Err(e) => TeiError(e).into_response(),
        };
    }
    match parse_body::<EmbedRequest>(Ok(bytes)) {
        Ok(req) => match embed_request(&state, req).await {
            Ok(r) => r,
            Err(e) => TeiError(e).into_response(),
        },
        Err(e) => TeiError(e).into_response(),
    }
}

/// Cosine similarity of each sentence to the source sentence (TEI).
#[utoipa::path(post, path = "/similarity", tag = "TEI", request_body = similarity::SimilarityRequest,
    responses((status = 200, body = Vec<f32>, description = "one cosine per sentence, in order"), (status = "4XX", body = TeiErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn similarity(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TeiError> {
    let req: similarity::SimilarityRequest = parse_body(body)?;
    Ok(similarity::similarity_request(&state, req).await?)
}

/// Classify texts or pairs (TEI): every label's score per input (`predict.rs`).
#[utoipa::path(post, path = "/predict", tag = "TEI", request_body = predict::PredictRequest,
    responses((status = 200, body = predict::PredictResponse, description = "per input, every label by score, descending"), (status = "4XX", body = TeiErrorBody, description = "invalid request, not a classifier, unknown model, too large, overloaded")))]
pub async fn predict(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TeiError> {
    let req: predict::PredictRequest = parse_body(body)?;
    Ok(predict::predict_request(&state, req).await?)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InfoQuery {
    /// The model to describe; default the only installed model.
    pub model: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingType {
    pub pooling: String,
}

#[derive(Serialize, ToSchema)]
pub struct ClassifierType {
    pub id2label: std::collections::BTreeMap<String, String>,
    pub label2id: std::collections::BTreeMap<String, usize>,
}

impl ClassifierType {
    fn of(labels: &[String]) -> ClassifierType {
        ClassifierType {
            id2label: labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone())).collect(),
            label2id: labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect(),
        }
    }
}

/// TEI `ModelType`: `{"embedding": {pooling}}`, `{"reranker": {id2label, label2id}}` or
/// `{"classifier": {id2label, label2id}}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    Classifier(ClassifierType),
    Embedding(EmbeddingType),
    Reranker(ClassifierType),
}

/// TEI `Info`, for one installed model.
#[derive(Serialize, ToSchema)]
pub struct Info {
    pub model_id: String,
    pub model_sha: Option<String>,
    pub model_dtype: String,
    pub served_model_name: String,
    pub model_type: ModelType,
    pub max_concurrent_requests: usize,
    pub max_input_length: usize,
    pub max_batch_tokens: usize,
    pub max_batch_requests: Option<usize>,
    pub max_client_batch_size: usize,
    pub auto_truncate: bool,
    pub tokenization_workers: usize,
    pub version: &'static str,
    pub sha: Option<String>,
    pub docker_label: Option<String>,
    /// Extension: the model's named prompts (`prompt_name` values).
    pub prompts: Vec<String>,
    /// Extension: the prompt applied when none is named.
    pub default_prompt_name: Option<String>,
}

/// Describe a model the way TEI's `/info` does.
#[utoipa::path(get, path = "/info", tag = "TEI", params(InfoQuery),
    responses((status = 200, body = Info, description = "success"), (status = "4XX", body = TeiErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn info(
    State(state): State<SharedState>,
    query: Result<Query<InfoQuery>, QueryRejection>,
) -> Result<Json<Info>, TeiError> {
    // axum's own rejection is text/plain; this route answers in TEI's JSON shape.
    let Query(q) = query.map_err(|e| ApiError::invalid_param("model", format!("invalid query: {}", e.body_text())))?;
    let name = match q.model.filter(|m| !m.is_empty()) {
        Some(m) => m,
        None => {
            let mut all: Vec<String> = state.pool.store().list().into_iter().map(|m| m.name).collect();
            all.sort();
            match all.as_slice() {
                [one] => one.clone(),
                [] => return Err(ApiError::invalid_param("model", "no model is installed").into()),
                _ => {
                    let msg = format!("{} models are installed; name one with ?model= ({})", all.len(), all.join(", "));
                    return Err(ApiError::invalid_param("model", msg).into());
                }
            }
        }
    };
    let target = state.resolver().resolve_name(&name).map_err(ApiError::from)?;
    let m = state.pool.store().installed(&target.name).ok_or_else(|| ApiError::model_not_found(&name))?;
    let facts = m.facts.as_ref().map_err(|e| ApiError::concealed("the model's files cannot be read", e))?;
    let prompts = crate::tokenize::Prompts::load(&m.path);
    let dtype = crate::store::metadata::ModelMetadata::read(&m.path).map(|meta| meta.dtype).unwrap_or_default();
    let model_type = match facts.kind {
        ModelKind::Embedding => ModelType::Embedding(EmbeddingType { pooling: facts.pooling.as_str().to_owned() }),
        ModelKind::Reranker => ModelType::Reranker(ClassifierType::of(&facts.labels)),
        ModelKind::Classifier => ModelType::Classifier(ClassifierType::of(&facts.labels)),
    };
    let limits = &state.config.limits;
    Ok(Json(Info {
        model_id: m.name.clone(),
        model_sha: None,
        model_dtype: if dtype.is_empty() { "float32".into() } else { dtype },
        served_model_name: m.name.clone(),
        model_type,
        max_concurrent_requests: state.config.batch.max_queue_size,
        max_input_length: facts.max_tokens as usize,
        max_batch_tokens: state.config.batch.max_batch_tokens,
        max_batch_requests: Some(state.config.batch.max_batch_size),
        max_client_batch_size: limits.max_inputs_per_request,
        auto_truncate: limits.truncate,
        tokenization_workers: 1,
        version: env!("CARGO_PKG_VERSION"),
        sha: None,
        docker_label: None,
        prompts: prompts.names(),
        default_prompt_name: prompts.default_prompt_name,
    }))
}
