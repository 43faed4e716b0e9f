//! `POST /v1/embeddings`, OpenAI-compatible.
//!
//! `input`: a string, a list of strings, a list of token ids, or a list of token-id lists
//! (OpenAI API reference, "Create embeddings"; token ids can be refused with
//! `limits.accept_token_ids: false`). `encoding_format`: `float` or `base64`
//! (little-endian f32, what the official Python client requests by default). `dimensions`:
//! truncate, then L2-renormalize. `user` is accepted and ignored. `priority` (vLLM's
//! extension: lower runs first) orders the model's queue (`priority.rs`).
//!
//! Extension for models with bge-m3's extra heads and SPLADE models (docs/hybrid-search.md): `return_sparse`
//! adds `sparse_embedding: {indices, values}` (token ids and lexical weights, the sparse
//! format vector databases take) to each item, `return_colbert_vecs` adds
//! `colbert_embedding`, one vector per token after CLS (base64 rows with `base64`).
//! Both come from the same forward pass as `embedding`. The names are FlagEmbedding's
//! `BGEM3FlagModel.encode` arguments.
//!
//! Extension for long documents (docs/long-documents.md): `chunking` (`true`, `false`,
//! `{"overlap_tokens": N}`) splits an input longer than the model's window into windows and
//! pools their vectors to one; each item that was split says into how many (`chunks`).
//!
//! Extension for late chunking (docs/long-documents.md): `late_chunking` (`{"spans": …}`,
//! `{"separator": …}` or `{"max_chunk_tokens": N}`, and optionally `overlap_tokens`) runs
//! each text through the model once and adds `late_chunks: [{span, embedding}]` to its
//! item; `embedding` stays the whole text's vector, so OpenAI clients parse the answer
//! as usual and find the chunks in the item's extra fields.
//!
//! Unknown fields are refused with a 400 naming them, as OpenAI's own API does
//! ("Unrecognized request argument supplied"): a misspelt `prompt_name` must not return the
//! un-prompted vector silently.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use mlx_serve_protocol::TokenOutputs;

use super::chunking::ChunkingRequest;
use super::encode::{self, Vector};
use super::inference::{self, EmbedOptions, Embedded};
use super::input::EmbeddingInput;
use super::late_chunking::{self, LateEmbedded};
use super::late_request::LateChunking;
use super::usage::Usage;
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    /// Model name: store name, repo id (`BAAI/bge-m3`) or alias.
    #[serde(default)]
    pub model: String,
    pub input: Option<EmbeddingInput>,
    /// `float` (default) or `base64` (little-endian float32).
    pub encoding_format: Option<String>,
    /// Keep the first N dimensions, then L2-renormalize (Matryoshka).
    #[schema(minimum = 1)]
    pub dimensions: Option<i64>,
    /// Accepted and ignored (OpenAI's end-user id).
    #[schema(value_type = Option<String>)]
    #[allow(dead_code)]
    pub user: Option<serde_json::Value>,
    /// Extension: one of the model's named prompts (`config_sentence_transformers.json`
    /// `prompts`, e.g. `query`); 400 for a name the model does not have.
    pub prompt_name: Option<String>,
    /// Extension: a raw prefix put before every text (wins over `prompt_name`).
    pub prompt: Option<String>,
    /// Extension: a query instruction (Qwen3-Embedding formats it as
    /// `Instruct: {instruction}\nQuery:{text}`; other models get a plain prefix).
    pub instruction: Option<String>,
    /// Extension: `false` makes over-long inputs an error instead of truncating them.
    pub truncate: Option<bool>,
    /// Extension: `true` or `{"overlap_tokens": N}` splits an input longer than the model's
    /// window into windows (each repeating N tokens of the one before) and returns the
    /// token-weighted mean of their vectors (normalized when the model normalizes);
    /// `false` truncates. Default: `truncate` if sent, else `models.chunking`.
    pub chunking: Option<ChunkingRequest>,
    /// Extension (vLLM's): lower runs first, -1000..1000; default from the `X-Priority`
    /// header, the API key's default, or `scheduling.default_priority`.
    pub priority: Option<i64>,
    /// Extension: add each input's sparse (lexical) weights as `sparse_embedding`; 400 for
    /// a model without a sparse head. A SPLADE model answers only with this (its
    /// `embedding` empty).
    pub return_sparse: Option<bool>,
    /// Extension: add each input's ColBERT token vectors as `colbert_embedding`; 400 for a
    /// model without a ColBERT head. A PyLate ColBERT model answers only with this (its
    /// `embedding` empty).
    pub return_colbert_vecs: Option<bool>,
    /// Extension: for a PyLate ColBERT model (required there), whether the inputs are
    /// queries (`true`: query marker, [MASK] expansion) or documents (`false`: document
    /// marker, punctuation vectors left out); PyLate's `encode(is_query=...)`. For an
    /// inference-free sparse encoder (opensearch's) `true` takes the query route (a token
    /// weight lookup), `false` the document route (SPLADE), as `encode_query` /
    /// `encode_document`; absent: the model's default route (document), as `encode`.
    /// Refused for other models.
    pub is_query: Option<bool>,
    /// Extension: PyLate's token pooling of a PyLate ColBERT model's document vectors
    /// (`"is_query": false`): an integer >= 1, at most the model's `document_length`
    /// (default 1, no pooling). The vectors after the protected ones are clustered by
    /// Ward's method and each cluster's mean kept, leaving about 1/`pool_factor` of them;
    /// PyLate's `encode(pool_factor=...)`. 400 on any other model and for queries.
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub pool_factor: Option<serde_json::Value>,
    /// Extension: with `pool_factor`, how many of a document's first vectors are kept as they
    /// are (default 1, the [CLS] token's); PyLate's `encode(protected_tokens=...)`.
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub protected_tokens: Option<serde_json::Value>,
    /// Extension: late chunking. Each text runs through the model once (in overlapping
    /// macro-windows past the model's window); its item gets `late_chunks`, one vector per
    /// chunk pooled from the chunk's span of token states, and `embedding` stays the
    /// whole text's vector.
    pub late_chunking: Option<LateChunking>,
}

/// One chunk of a late-chunked input.
#[derive(Serialize, ToSchema)]
pub struct LateChunkEmbedding {
    /// `[start, end)` in Unicode code points (Python `str` indices).
    pub span: [usize; 2],
    pub embedding: Vector,
}

/// Sparse weights as vector databases take them (Qdrant `SparseVector`, Milvus, Pinecone
/// `sparse_values`): token ids ascending, and their weights.
#[derive(Serialize, ToSchema)]
pub struct SparseEmbedding {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

#[derive(Serialize, ToSchema)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: &'static str,
    pub index: usize,
    /// Empty for a SPLADE model, which gives `sparse_embedding` only.
    pub embedding: Vector,
    /// Extension (`return_sparse`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse_embedding: Option<SparseEmbedding>,
    /// Extension (`return_colbert_vecs`): one normalized vector per token after CLS (bge-m3),
    /// or per kept token (a PyLate model: a query's every token, a document's but its
    /// skiplist's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colbert_embedding: Option<Vec<Vector>>,
    /// Extension (`chunking`): the windows this input was split into and pooled from,
    /// present only when it was split (2 or more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u32>,
    /// Extension (`late_chunking`): one vector per chunk, in order, with its span.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_chunks: Option<Vec<LateChunkEmbedding>>,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: Usage,
    /// Extension (`late_chunking`): how each chunk's span was pooled — the model's pooling
    /// where it is token-wise, mean for CLS and last-token models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_pooling: Option<&'static str>,
}

/// Create embeddings (OpenAI).
///
/// More inputs than `limits.max_inputs_per_request` are computed piece by piece and the
/// answer streamed (chunked, the same JSON); a failure after it started aborts the
/// connection before the body ends (docs/long-documents.md, "Streamed requests").
#[utoipa::path(post, path = "/v1/embeddings", tag = "OpenAI", request_body = EmbeddingsRequest,
    responses((status = 200, body = EmbeddingsResponse, description = "success (streamed past limits.max_inputs_per_request inputs)"), (status = "4XX", body = super::error::ErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn embeddings(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: EmbeddingsRequest = parse_body(body)?;
    super::priority::set_from_body(req.priority)?;
    let input = req.input.ok_or_else(|| ApiError::invalid_param("input", "`input` is required"))?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("encoding_format must be \"float\" or \"base64\", got {other:?}"),
            ))
        }
    };
    let dims = encode::check_dimensions(req.dimensions, "dimensions")?;
    if let Some(late) = req.late_chunking {
        let others = [
            ("chunking", req.chunking.is_some()),
            ("truncate", req.truncate.is_some()),
            ("prompt", req.prompt.is_some()),
            ("prompt_name", req.prompt_name.is_some()),
            ("instruction", req.instruction.is_some()),
            ("return_sparse", req.return_sparse == Some(true)),
            ("return_colbert_vecs", req.return_colbert_vecs == Some(true)),
            ("is_query", req.is_query.is_some()),
            ("pool_factor", req.pool_factor.is_some()),
            ("protected_tokens", req.protected_tokens.is_some()),
        ];
        if let Some((name, _)) = others.iter().find(|(_, set)| *set) {
            return Err(ApiError::invalid_param(
                "late_chunking",
                format!("`late_chunking` cannot be combined with `{name}` (spans are of the text as sent)"),
            ));
        }
        let (texts, single) = match input {
            EmbeddingInput::Text(t) => (vec![t], true),
            EmbeddingInput::Texts(t) => (t, false),
            _ => return Err(ApiError::invalid_param("input", "late chunking takes text input, not token ids")),
        };
        let rules = late.rules(texts.len(), single, "late_chunking")?;
        let overlap = late.overlap("late_chunking")?;
        let out = late_chunking::late_embed(&state, &req.model, texts, rules, overlap, "late_chunking").await?;
        return late_response(out, req.model, dims, base64);
    }
    let pool = super::pylate_pool::parse(req.pool_factor.as_ref(), req.protected_tokens.as_ref())?;
    let inputs: inference::Inputs = input.into();
    let opts = EmbedOptions {
        truncate: req.truncate,
        instruction: req.instruction,
        prompt_name: req.prompt_name,
        prompt: req.prompt,
        outputs: TokenOutputs {
            sparse: req.return_sparse.unwrap_or(false),
            colbert: req.return_colbert_vecs.unwrap_or(false),
        },
        chunking: req.chunking,
        is_query: req.is_query,
        pool,
    };
    if inputs.len() > state.config.limits.max_inputs_per_request && !opts.outputs.any() {
        let shape = ListShape { model: req.model.clone(), dims, base64 };
        return super::streamed::respond(state, &req.model, inputs, opts, shape).await;
    }
    let out = inference::embed(&state, &req.model, inputs, opts).await?;
    let (dim, data) = encode::shorten(&out, dims, &req.model, "dimensions")?;
    let sparse = req.return_sparse == Some(true);
    let colbert = req.return_colbert_vecs == Some(true);
    let rows = items(&out, dim, &data, 0, base64, sparse, colbert);
    let n = rows.len();
    let body = EmbeddingsResponse {
        object: "list",
        data: rows,
        model: req.model,
        usage: Usage::new(out.tokens),
        chunk_pooling: None,
    };
    let log = RequestLog { model: out.entry.name.clone(), inputs: n, tokens: out.tokens };
    Ok(with_log(axum::Json(body), log))
}

/// The response items of `out` (its rows at `dim` dimensions in `data`), the first
/// numbered `first`; `sparse` and `colbert` add the per-token outputs asked for.
/// The streamed answer (`streamed.rs`): `EmbeddingsResponse`'s bytes, piece by piece.
struct ListShape {
    model: String,
    dims: Option<usize>,
    base64: bool,
}

impl super::streamed::Shape for ListShape {
    fn head(&self) -> Vec<u8> {
        br#"{"object":"list","data":["#.to_vec()
    }

    fn items(&self, out: &Embedded, first: usize) -> Result<Vec<Vec<u8>>, ApiError> {
        let (dim, data) = encode::shorten(out, self.dims, &self.model, "dimensions")?;
        items(out, dim, &data, first, self.base64, false, false)
            .iter()
            .map(|item| serde_json::to_vec(item).map_err(|e| ApiError::internal(e.to_string())))
            .collect()
    }

    /// What follows `data` in `EmbeddingsResponse`.
    fn tail(&self, tokens: usize) -> Vec<u8> {
        let model = serde_json::to_string(&self.model).unwrap_or_default();
        let usage = serde_json::to_string(&Usage::new(tokens)).unwrap_or_default();
        format!(r#"],"model":{model},"usage":{usage}}}"#).into_bytes()
    }
}

pub(super) fn items(
    out: &Embedded,
    dim: usize,
    data: &[f32],
    first: usize,
    base64: bool,
    sparse: bool,
    colbert: bool,
) -> Vec<Embedding> {
    // A sparse-only (SPLADE) model has no dense rows: one item per sparse answer, its
    // `embedding` empty.
    let n = match &out.token_rows {
        Some(t) if dim == 0 => t.sparse.len().max(t.colbert.len()),
        _ => data.len() / dim.max(1),
    };
    let vector =
        |row: &[f32]| if base64 { Vector::Base64(encode::base64_f32(row)) } else { Vector::Float(row.to_vec()) };
    (0..n)
        .map(|k| Embedding {
            object: "embedding",
            index: first + k,
            embedding: vector(&data[k * dim..(k + 1) * dim]),
            sparse_embedding: out.token_rows.as_ref().filter(|_| sparse).map(|t| {
                let (indices, values) = t.sparse[k].iter().copied().unzip();
                SparseEmbedding { indices, values }
            }),
            colbert_embedding: out
                .token_rows
                .as_ref()
                .filter(|_| colbert)
                .map(|t| t.colbert[k].chunks_exact(t.colbert_dim.max(1)).map(vector).collect()),
            chunks: out.chunks.as_ref().map(|c| c[k]).filter(|&n| n > 1),
            late_chunks: None,
        })
        .collect()
}

/// The OpenAI answer for late-chunked texts: each item's `embedding` is the whole text's
/// vector, `late_chunks` its chunks', `chunks` its macro-windows when more than one.
fn late_response(out: LateEmbedded, model: String, dims: Option<usize>, base64: bool) -> Result<Response, ApiError> {
    let mut data = Vec::with_capacity(out.docs.len());
    for (index, doc) in out.docs.iter().enumerate() {
        let (d, chunks) = late_chunking::at_dims(&doc.chunks, out.dim, dims, &model)?;
        let (_, whole) = late_chunking::at_dims(&doc.vector, out.dim, dims, &model)?;
        let late = chunks
            .chunks_exact(d)
            .zip(&doc.spans)
            .map(|(row, &(s, e))| LateChunkEmbedding { span: [s, e], embedding: late_chunking::vector(row, base64) })
            .collect();
        data.push(Embedding {
            object: "embedding",
            index,
            embedding: late_chunking::vector(&whole, base64),
            sparse_embedding: None,
            colbert_embedding: None,
            chunks: Some(doc.windows as u32).filter(|&n| n > 1),
            late_chunks: Some(late),
        });
    }
    let log = RequestLog { model: out.entry.name.clone(), inputs: out.docs.len(), tokens: out.tokens };
    let body = EmbeddingsResponse {
        object: "list",
        data,
        model,
        usage: Usage::new(out.tokens),
        chunk_pooling: Some(out.pooling),
    };
    Ok(with_log(axum::Json(body), log))
}
