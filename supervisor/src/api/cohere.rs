//! Cohere embed: `POST /v1/embed` and `POST /v2/embed`, as the official `cohere` Python
//! client sends them (cohere 7.3: `texts`, `model`, `input_type`, `embedding_types`,
//! `truncate`; v2 also `output_dimension`, `max_tokens`, `priority`, `images`, `inputs`).
//!
//! - `input_type` selects the model's own prompt: `search_query` → its `query` prompt,
//!   `search_document` → `document` (or `passage`), `classification` / `clustering` → the
//!   prompt of that name; a model without such a prompt gets its default prompt (if any),
//!   as a plain `encode()` would. Any other value is a 400.
//! - `embedding_types`: `float`, `base64` (little-endian f32), `binary`, `ubinary` (packed
//!   sign bits as sentence-transformers' `quantize_embeddings`), `int8`, `uint8` (over the
//!   fixed range [-1, 1], normalized models only) — `encode.rs` says how each is computed.
//!   v1 without `embedding_types` answers `embeddings_floats` (a bare list of vectors).
//! - `truncate`: `END` (default) truncates, `NONE` refuses over-long texts; `START` is not
//!   supported (400).
//! - `output_dimension`: keep the first N dimensions and renormalize. `priority` orders
//!   the model's queue (lower first); `max_tokens`, `images` and `inputs` are refused (400); so are
//!   unknown fields.
//!
//! Errors use Cohere's shape, `{"id", "message"}`. `model` may be omitted on v1 when one
//! embedding model is installed (`default_model.rs`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mlx_serve_protocol::ModelKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::cohere_meta::{response_id, Meta};
use super::default_model::model_or_only;
use super::encode;
use super::inference::{self, EmbedOptions, Inputs};
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};
use crate::tokenize::Prompts;

/// Cohere's error body.
#[derive(Serialize, ToSchema)]
pub struct CohereErrorBody {
    pub id: String,
    pub message: String,
}

/// An [`ApiError`] rendered the way Cohere renders errors.
pub struct CohereError(ApiError);

impl From<ApiError> for CohereError {
    fn from(e: ApiError) -> Self {
        CohereError(e)
    }
}

impl IntoResponse for CohereError {
    fn into_response(self) -> Response {
        let body = CohereErrorBody { id: response_id(), message: crate::store::redact::redact(&self.0.message) };
        let mut resp = (self.0.status, Json(body)).into_response();
        if let Some(s) = self.0.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CohereEmbedRequest {
    /// Required on v2; on v1 it may be omitted when one embedding model is installed.
    pub model: Option<String>,
    pub texts: Option<Vec<String>>,
    /// search_query, search_document, classification, clustering.
    pub input_type: Option<String>,
    /// float (default), base64, binary, ubinary, int8, uint8.
    pub embedding_types: Option<Vec<String>>,
    /// END (default), NONE; START is refused.
    pub truncate: Option<String>,
    /// v2: keep the first N dimensions, renormalized.
    #[schema(minimum = 1)]
    pub output_dimension: Option<i64>,
    /// Lower runs first, -1000..1000 (the model's queue; `priority.rs`).
    pub priority: Option<i64>,
    /// Refused.
    pub max_tokens: Option<i64>,
    /// Refused (text only).
    #[schema(value_type = Option<Vec<Object>>)]
    pub images: Option<Value>,
    /// Refused (text only).
    #[schema(value_type = Option<Vec<Object>>)]
    pub inputs: Option<Value>,
}

/// Each requested type's vectors (Cohere `EmbedByTypeResponseEmbeddings`).
#[derive(Serialize, ToSchema, Default)]
pub struct EmbeddingsByType {
    #[serde(rename = "float", skip_serializing_if = "Option::is_none")]
    pub float: Option<Vec<Vec<f32>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8: Option<Vec<Vec<i8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uint8: Option<Vec<Vec<u8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<Vec<Vec<i8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ubinary: Option<Vec<Vec<u8>>>,
}

/// `embeddings_by_type` (v2 always; v1 with `embedding_types`) or `embeddings_floats`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum CohereEmbeddings {
    ByType(EmbeddingsByType),
    Floats(Vec<Vec<f32>>),
}

#[derive(Serialize, ToSchema)]
pub struct CohereEmbedResponse {
    /// `embeddings_by_type` or `embeddings_floats`.
    pub response_type: &'static str,
    pub id: String,
    pub embeddings: CohereEmbeddings,
    pub texts: Vec<String>,
    pub meta: Meta,
}

/// The model prompt an `input_type` stands for, if the model has one.
fn prompt_for(input_type: &str, prompts: &Prompts) -> Result<Option<String>, ApiError> {
    let candidates: &[&str] = match input_type {
        "search_query" => &["query"],
        "search_document" => &["document", "passage"],
        "classification" => &["classification"],
        "clustering" => &["clustering"],
        other => {
            return Err(ApiError::invalid_param(
                "input_type",
                format!(
                    "input_type must be search_query, search_document, classification or clustering, got {other:?}"
                ),
            ))
        }
    };
    Ok(candidates.iter().find(|c| prompts.prompts.contains_key(**c)).map(|c| (*c).to_owned()))
}

const TYPES: [&str; 6] = ["float", "base64", "binary", "ubinary", "int8", "uint8"];

fn check(req: &CohereEmbedRequest) -> Result<(), ApiError> {
    for (field, present) in
        [("max_tokens", req.max_tokens.is_some()), ("images", req.images.is_some()), ("inputs", req.inputs.is_some())]
    {
        if present {
            return Err(ApiError::invalid_param(field, format!("`{field}` is not supported (send `texts`)")));
        }
    }
    if let Some(bad) = req.embedding_types.iter().flatten().find(|t| !TYPES.contains(&t.as_str())) {
        return Err(ApiError::invalid_param(
            "embedding_types",
            format!("unknown embedding type {bad:?}; one of {}", TYPES.join(", ")),
        ));
    }
    Ok(())
}

/// Embed texts (Cohere v1).
#[utoipa::path(post, path = "/v1/embed", tag = "Cohere", request_body = CohereEmbedRequest,
    responses((status = 200, body = CohereEmbedResponse, description = "success"), (status = "4XX", body = CohereErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn embed_v1(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, CohereError> {
    Ok(embed(&state, parse_body(body)?, 1).await?)
}

/// Embed texts (Cohere v2).
#[utoipa::path(post, path = "/v2/embed", tag = "Cohere", request_body = CohereEmbedRequest,
    responses((status = 200, body = CohereEmbedResponse, description = "success"), (status = "4XX", body = CohereErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn embed_v2(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, CohereError> {
    Ok(embed(&state, parse_body(body)?, 2).await?)
}

async fn embed(state: &SharedState, req: CohereEmbedRequest, version: u8) -> Result<Response, ApiError> {
    check(&req)?;
    super::priority::set_from_body(req.priority)?;
    let texts = req.texts.ok_or_else(|| ApiError::invalid_param("texts", "`texts` is required"))?;
    let model = match version {
        1 => model_or_only(state, req.model, ModelKind::Embedding)?,
        _ => req
            .model
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ApiError::invalid_param("model", "`model` is required"))?,
    };
    let truncate = match req.truncate.as_deref() {
        None | Some("END") => Some(true),
        Some("NONE") => Some(false),
        Some("START") => {
            return Err(ApiError::invalid_param(
                "truncate",
                "truncate START is not supported; inputs are truncated at the end",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid_param(
                "truncate",
                format!("truncate must be NONE, START or END, got {other:?}"),
            ))
        }
    };
    let dims = encode::check_dimensions(req.output_dimension, "output_dimension")?;
    let entry = state.resolver().entry(&model, Some(ModelKind::Embedding)).await?;
    let prompt_name = match req.input_type.as_deref() {
        Some(t) => prompt_for(t, &entry.tokenizer.prompts)?,
        None => None,
    };
    let types = req.embedding_types.clone().unwrap_or_default();
    let quantized = types.iter().any(|t| t == "int8" || t == "uint8");
    if quantized && !entry.facts.normalize {
        return Err(ApiError::invalid_param(
            "embedding_types",
            format!("int8/uint8 map [-1, 1] to 256 levels, which needs normalized embeddings; model `{model}` does not normalize"),
        ));
    }
    let opts = EmbedOptions { truncate, prompt_name, ..Default::default() };
    let out = inference::embed(state, &model, Inputs::Texts(texts.clone()), opts).await?;
    let (dim, data) = encode::shorten(&out, dims, &model, "output_dimension")?;
    let rows: Vec<&[f32]> = data.chunks_exact(dim).collect();
    let embeddings = if version == 1 && req.embedding_types.is_none() {
        CohereEmbeddings::Floats(rows.iter().map(|r| r.to_vec()).collect())
    } else {
        let wants = |t: &str| types.is_empty() && t == "float" || types.iter().any(|x| x == t);
        let mut by = EmbeddingsByType::default();
        let each = |f: &dyn Fn(&[f32]) -> Vec<u8>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
        if wants("float") {
            by.float = Some(rows.iter().map(|r| r.to_vec()).collect());
        }
        if wants("base64") {
            by.base64 = Some(rows.iter().map(|r| encode::base64_f32(r)).collect());
        }
        if wants("binary") {
            by.binary = Some(rows.iter().map(|r| encode::binary(r)).collect());
        }
        if wants("ubinary") {
            by.ubinary = Some(each(&encode::ubinary));
        }
        if wants("int8") {
            by.int8 = Some(rows.iter().map(|r| encode::int8(r)).collect());
        }
        if wants("uint8") {
            by.uint8 = Some(each(&encode::uint8));
        }
        CohereEmbeddings::ByType(by)
    };
    let response_type = match embeddings {
        CohereEmbeddings::Floats(_) => "embeddings_floats",
        CohereEmbeddings::ByType(_) => "embeddings_by_type",
    };
    let log = RequestLog { model: out.entry.name.clone(), inputs: rows.len(), tokens: out.tokens };
    let body = CohereEmbedResponse {
        response_type,
        id: response_id(),
        embeddings,
        texts,
        meta: Meta::new(&version.to_string(), out.tokens),
    };
    Ok(with_log(Json(body), log))
}
