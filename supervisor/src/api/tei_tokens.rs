//! TEI's per-token routes, answered from bge-m3's extra heads (`heads/` of a model pulled
//! with `sparse_linear.pt` / `colbert_linear.pt`) and, for `/embed_sparse`, from SPLADE
//! models (weights per vocabulary id, docs/hybrid-search.md). Shapes from TEI's
//! `router/src/http/types.rs`:
//!
//! - `POST /embed_sparse`: `EmbedSparseRequest {inputs, truncate?, truncation_direction?,
//!   prompt_name?}` → `EmbedSparseResponse`, per input a list of `SparseValue {index,
//!   value}`: here bge-m3's lexical weights (token id, weight), ascending by id.
//! - `POST /embed_all`: `EmbedAllRequest` (same fields) → `EmbedAllResponse`, per input a
//!   list of token vectors: here bge-m3's ColBERT vectors, one per token after CLS.
//!
//! Extension as on `/embed`: `model`, `prompt`. A model without the head gets a 400 in
//! TEI's error shape naming it.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use mlx_serve_protocol::{ModelKind, TokenOutputs};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::default_model::model_or_only;
use super::inference::{self, EmbedOptions, Embedded};
use super::input::{check_truncation_direction, EmbeddingInput};
use super::tei::{TeiError, TeiErrorBody};
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};

/// TEI's `EmbedSparseRequest` and `EmbedAllRequest` (the same fields).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokensRequest {
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
    /// Extension: for a PyLate ColBERT model (required there) or an inference-free sparse
    /// encoder (`/embed_sparse`; absent: its default route, document), whether the inputs
    /// are queries or documents (`/v1/embeddings`' `is_query`).
    pub is_query: Option<bool>,
    /// Extension (`/embed_all`): PyLate's token pooling of a PyLate ColBERT model's document
    /// vectors (`/v1/embeddings`' `pool_factor`).
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub pool_factor: Option<serde_json::Value>,
    /// Extension (`/embed_all`): with `pool_factor`, the first vectors kept as they are
    /// (`/v1/embeddings`' `protected_tokens`).
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub protected_tokens: Option<serde_json::Value>,
}

/// TEI's `SparseValue`: a token id and its weight.
#[derive(Serialize, ToSchema)]
pub struct SparseValue {
    pub index: usize,
    pub value: f32,
}

async fn run(state: &SharedState, req: TokensRequest, outputs: TokenOutputs) -> Result<Embedded, ApiError> {
    let inputs = req.inputs.ok_or_else(|| ApiError::invalid_param("inputs", "`inputs` is required"))?;
    check_truncation_direction(req.truncation_direction.as_deref())?;
    let model = model_or_only(state, req.model, ModelKind::Embedding)?;
    let pool = super::pylate_pool::parse(req.pool_factor.as_ref(), req.protected_tokens.as_ref())?;
    let opts = EmbedOptions {
        truncate: req.truncate,
        prompt_name: req.prompt_name,
        prompt: req.prompt,
        outputs,
        is_query: req.is_query,
        pool,
        ..Default::default()
    };
    inference::embed(state, &model, inputs.into(), opts).await
}

fn log(out: &Embedded, inputs: usize) -> RequestLog {
    RequestLog { model: out.entry.name.clone(), inputs, tokens: out.tokens }
}

/// Sparse (lexical) weights per input (TEI; bge-m3's sparse head, or a SPLADE model).
#[utoipa::path(post, path = "/embed_sparse", tag = "TEI", request_body = TokensRequest,
    responses((status = 200, body = Vec<Vec<SparseValue>>, description = "per input, (token id, weight) ascending by id"), (status = "4XX", body = TeiErrorBody, description = "invalid request, a model without the sparse head (neither bge-m3's nor SPLADE), unknown model, too large, overloaded")))]
pub async fn embed_sparse(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TeiError> {
    let req: TokensRequest = parse_body(body)?;
    let out = run(&state, req, TokenOutputs { sparse: true, colbert: false }).await?;
    let rows = out.token_rows.as_ref().ok_or_else(|| ApiError::internal("the worker returned no sparse weights"))?;
    let body: Vec<Vec<SparseValue>> = rows
        .sparse
        .iter()
        .map(|s| s.iter().map(|&(index, value)| SparseValue { index: index as usize, value }).collect())
        .collect();
    let log = log(&out, body.len());
    Ok(with_log(Json(body), log))
}

/// Token vectors per input (TEI; bge-m3's ColBERT head, one per token after CLS).
#[utoipa::path(post, path = "/embed_all", tag = "TEI", request_body = TokensRequest,
    responses((status = 200, body = Vec<Vec<Vec<f32>>>, description = "per input, one normalized vector per token after CLS (bge-m3), or a PyLate ColBERT model's token vectors (with pool_factor a document's pooled ones: cluster means, not renormalized)"), (status = "4XX", body = TeiErrorBody, description = "invalid request, a model without the ColBERT head, pool_factor on a query or a model that is not PyLate's, unknown model, too large, overloaded")))]
pub async fn embed_all(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TeiError> {
    let req: TokensRequest = parse_body(body)?;
    let out = run(&state, req, TokenOutputs { sparse: false, colbert: true }).await?;
    let rows = out.token_rows.as_ref().ok_or_else(|| ApiError::internal("the worker returned no token vectors"))?;
    let dim = rows.colbert_dim.max(1);
    let body: Vec<Vec<&[f32]>> = rows.colbert.iter().map(|c| c.chunks_exact(dim).collect()).collect();
    let log = log(&out, body.len());
    Ok(with_log(Json(body), log))
}
