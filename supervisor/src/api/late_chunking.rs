//! Late chunking over HTTP (docs/long-documents.md): each document runs through the
//! model once — in overlapping macro-windows when it is longer than the window — and each
//! chunk's vector is pooled from its span of the final hidden states (Günther et al.,
//! "Late Chunking", arXiv:2409.04701). A document is one item of the model's queue
//! (`runner/handle.rs`, `submit_late`), so it shares batches, priorities, fairness,
//! metrics and cancellation with every other input; only its rows cross the socket.
//!
//! Here: the work ([`late_embed`]) and `POST /v1/late_chunking`, a route of its own for one
//! document. The `late_chunking` extension of `POST /v1/embeddings` is in `openai.rs`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use mlx_serve_protocol::model_dir::Pooling;
use mlx_serve_protocol::{span_pooling, ModelKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::encode::{self, Vector};
use super::inference::{self, check_input_count, check_request_tokens, off_thread, Tokenizing};
use super::late_request::LateChunking;
use super::usage::Usage;
use super::{chunking, parse_body, with_log, ApiError, AppState, RequestLog, SharedState};
use crate::runner::{JobOutput, ModelEntry};
use crate::tokenize::{ChunkRule, SpanError};

/// One document's answer.
pub struct LateRows {
    /// The whole document's vector: the model's own pooling of its one window, or (several
    /// windows) their token-weighted mean as chunked embedding pools it, normalized when
    /// the model normalizes.
    pub vector: Vec<f32>,
    pub windows: usize,
    pub spans: Vec<(usize, usize)>,
    /// `spans.len() × dim` row-major.
    pub chunks: Vec<f32>,
}

pub struct LateEmbedded {
    pub entry: Arc<ModelEntry>,
    pub dim: usize,
    pub docs: Vec<LateRows>,
    /// Every window's tokens, special tokens and overlaps included.
    pub tokens: usize,
    /// How each chunk's span was pooled (`span_pooling` of the model's pooling).
    pub pooling: &'static str,
}

/// The API error for a document's chunks (`param` names the field, `index` the input).
fn span_error(e: SpanError, index: usize, single: bool, param: &str) -> ApiError {
    let doc = if single { String::new() } else { format!("input {index}: ") };
    match e {
        SpanError::TooMany { .. } => ApiError::too_large(format!("{doc}{e}")),
        SpanError::Tokenize(_) => ApiError::concealed("tokenization failed", &e.to_string()),
        other => ApiError::invalid_param(param, format!("{doc}{other}")).with_code("invalid_span"),
    }
}

/// Embeds `docs` with late chunking, each chunked by its rule; `overlap` for macro-windows
/// (None: a quarter of the window). `param` names the chunking field in errors.
pub async fn late_embed(
    state: &AppState,
    model: &str,
    docs: Vec<String>,
    rules: Vec<ChunkRule>,
    overlap: Option<usize>,
    param: &'static str,
) -> Result<LateEmbedded, ApiError> {
    let entry = state.resolver().entry(model, Some(ModelKind::Embedding)).await?;
    let Pooling::Embed(mode) = entry.facts.pooling else {
        return Err(ApiError::invalid_param("model", format!("model `{}` does not pool token states", entry.name)));
    };
    check_input_count(state, docs.len())?;
    if let Some(i) = docs.iter().position(String::is_empty) {
        return Err(ApiError::invalid_param("input", format!("input {i} is an empty string")));
    }
    let single = docs.len() == 1;
    let overlap = overlap.unwrap_or_else(|| entry.tokenizer.default_late_overlap());
    let max_tokens = state.config.limits.max_tokens_per_request;
    let heavy = docs.iter().map(String::len).sum::<usize>() > 8192;
    let tok = entry.tokenizer.clone();
    let how = Tokenizing::of(state, heavy, super::priority::current());
    let prepared = off_thread(how, move || {
        docs.iter()
            .zip(&rules)
            .enumerate()
            .map(|(i, (text, rule))| tok.late_chunks(text, rule, overlap, max_tokens).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?
    .map_err(|(i, e)| span_error(e, i, single, param))?;
    // Chunks cross the socket as rows, like inputs: they count against the same bound.
    let rows: usize = prepared.iter().map(|d| d.chunks.len() + d.windows.len()).sum();
    let max_inputs = state.config.limits.max_inputs_per_request;
    if rows > max_inputs {
        return Err(ApiError::too_large(format!(
            "{rows} chunks and windows in one request (each chunk and each macro-window counts one); the limit \
             (limits.max_inputs_per_request) is {max_inputs}"
        )));
    }
    let windows: Vec<_> = prepared.iter().flat_map(|d| d.windows.iter().cloned()).collect();
    let tokens = check_request_tokens(state, &windows)?;
    drop(windows);
    let mut spans = Vec::with_capacity(prepared.len());
    let mut window_tokens = Vec::with_capacity(prepared.len());
    let mut submit = Vec::with_capacity(prepared.len());
    for d in prepared {
        spans.push(d.spans);
        window_tokens.push(d.windows.iter().map(|w| w.ids.len() as u32).collect::<Vec<_>>());
        submit.push((d.windows, d.chunks));
    }
    let priority = super::priority::current();
    let out = inference::run_submitted(state, &entry, |r| r.submit_late(submit, priority)).await?;
    let JobOutput::Rows { dim, data } = out else {
        return Err(ApiError::internal("the worker answered a late-chunking request with other than rows"));
    };
    let mut docs = Vec::with_capacity(spans.len());
    let mut at = 0;
    for (spans, wt) in spans.into_iter().zip(window_tokens) {
        let (w, k) = (wt.len(), spans.len());
        let vector = chunking::pool(&data[at * dim..(at + w) * dim], dim, &wt, entry.facts.normalize);
        let chunks = data[(at + w) * dim..(at + w + k) * dim].to_vec();
        at += w + k;
        docs.push(LateRows { vector, windows: w, spans, chunks });
    }
    Ok(LateEmbedded { entry, dim, docs, tokens, pooling: span_pooling(mode).as_str() })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LateChunkingRequest {
    /// Model name: store name, repo id or alias (an embedding model).
    #[serde(default)]
    pub model: String,
    /// The document.
    pub input: Option<String>,
    /// `[[start, end], ...]`: half-open spans in Unicode code points, ascending.
    #[schema(value_type = Option<Vec<Vec<u64>>>)]
    pub spans: Option<serde_json::Value>,
    /// Chunks are the text between occurrences of this string, trimmed.
    pub separator: Option<String>,
    /// Chunks are sentences packed up to this many tokens.
    #[schema(minimum = 1)]
    pub max_chunk_tokens: Option<i64>,
    /// Tokens each macro-window repeats of the one before (default: a quarter of the window).
    #[schema(minimum = 0)]
    pub overlap_tokens: Option<i64>,
    /// `float` (default) or `base64` (little-endian float32).
    pub encoding_format: Option<String>,
    /// Keep the first N dimensions of every vector, then L2-renormalize.
    #[schema(minimum = 1)]
    pub dimensions: Option<i64>,
    /// Lower runs first, -1000..1000 (as on `/v1/embeddings`).
    pub priority: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct LateChunk {
    /// Always `chunk`.
    pub object: &'static str,
    pub index: usize,
    /// `[start, end)` in Unicode code points.
    pub span: [usize; 2],
    pub embedding: Vector,
}

#[derive(Serialize, ToSchema)]
pub struct LateChunkingResponse {
    /// Always `list`.
    pub object: &'static str,
    /// One vector per chunk, in document order.
    pub data: Vec<LateChunk>,
    /// The whole document's vector (its window's, or its windows' token-weighted mean).
    pub embedding: Vector,
    /// Macro-windows the document was computed in (1 when it fits the model's window).
    pub windows: usize,
    /// How each chunk's span was pooled: the model's pooling where it is token-wise, mean
    /// for CLS and last-token models.
    pub pooling: &'static str,
    pub model: String,
    pub usage: Usage,
}

/// `float` or `base64` (`param`-named errors).
pub fn base64_format(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("float") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(ApiError::invalid_param(
            "encoding_format",
            format!("encoding_format must be \"float\" or \"base64\", got {other:?}"),
        )),
    }
}

/// Rows of `dim` at `dims` (truncated and renormalized) or as they are.
pub fn at_dims(rows: &[f32], dim: usize, dims: Option<usize>, model: &str) -> Result<(usize, Vec<f32>), ApiError> {
    match dims {
        Some(d) if d > dim => Err(ApiError::invalid_param(
            "dimensions",
            format!("model `{model}` makes {dim}-dimensional embeddings; `dimensions` {d} is larger"),
        )),
        Some(d) if d < dim => Ok((d, inference::shorten_rows(rows, dim, d))),
        _ => Ok((dim, rows.to_vec())),
    }
}

/// One vector as floats or base64.
pub fn vector(row: &[f32], base64: bool) -> Vector {
    if base64 {
        Vector::Base64(encode::base64_f32(row))
    } else {
        Vector::Float(row.to_vec())
    }
}

/// Late chunking of one document: one vector per chunk, with its span.
#[utoipa::path(post, path = "/v1/late_chunking", tag = "mlx-serve", request_body = LateChunkingRequest,
    responses((status = 200, body = LateChunkingResponse, description = "success"), (status = "4XX", body = super::error::ErrorBody, description = "invalid request or span, not an embedding model, too large, overloaded")))]
pub async fn late_chunking(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: LateChunkingRequest = parse_body(body)?;
    super::priority::set_from_body(req.priority)?;
    let input = req.input.ok_or_else(|| ApiError::invalid_param("input", "`input` is required (the document)"))?;
    let base64 = base64_format(req.encoding_format.as_deref())?;
    let dims = encode::check_dimensions(req.dimensions, "dimensions")?;
    let choice = LateChunking {
        spans: req.spans,
        separator: req.separator,
        max_chunk_tokens: req.max_chunk_tokens,
        overlap_tokens: req.overlap_tokens,
    };
    let rules = choice.rules(1, true, "spans")?;
    let overlap = choice.overlap("overlap_tokens")?;
    let out = late_embed(&state, &req.model, vec![input], rules, overlap, "spans").await?;
    let doc = &out.docs[0];
    let (d, chunks) = at_dims(&doc.chunks, out.dim, dims, &req.model)?;
    let (_, whole) = at_dims(&doc.vector, out.dim, dims, &req.model)?;
    let data = chunks
        .chunks_exact(d)
        .zip(&doc.spans)
        .enumerate()
        .map(|(index, (row, &(s, e)))| LateChunk {
            object: "chunk",
            index,
            span: [s, e],
            embedding: vector(row, base64),
        })
        .collect();
    let body = LateChunkingResponse {
        object: "list",
        data,
        embedding: vector(&whole, base64),
        windows: doc.windows,
        pooling: out.pooling,
        model: req.model,
        usage: Usage::new(out.tokens),
    };
    let log = RequestLog { model: out.entry.name.clone(), inputs: 1, tokens: out.tokens };
    Ok(with_log(axum::Json(body), log))
}
