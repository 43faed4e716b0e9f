//! `POST /v1/rerank`, `/rerank`, `/v2/rerank`.
//!
//! - Jina / Cohere shape: `{model, query, documents: [str | {text}], top_n,
//!   return_documents}` → `{id, model, results: [{index, relevance_score, document?}],
//!   usage, meta}` sorted by score (`id` and `meta` as Cohere's responses have them).
//!   Seed extras: `return_text` adds `text_output` "yes"/"no" by `decision_threshold`
//!   (default 0.5); `instruction` for Qwen3-Reranker and mxbai-rerank-v2. Cohere's `priority` orders the
//!   model's queue (lower first); `max_chunks_per_doc` is accepted and ignored; `rank_fields` other than `["text"]`,
//!   `max_tokens_per_doc` and `relevant_spans` are refused (400), as are unknown fields.
//! - TEI shape (`texts` instead of `documents`): `{query, texts, raw_scores, return_text,
//!   truncate}` → a bare array `[{index, score, text?}]` sorted by score; `raw_scores`
//!   returns logits instead of probabilities (TEI router/src/http/types.rs `RerankRequest`,
//!   `Rank`). Without `model`, the only installed reranker (`default_model.rs`).
//! - An embedding model ranks as a bi-encoder (`hybrid_score.rs`): the cosine of the dense
//!   vectors, or with bge-m3's heads the weighted mean of its dense, sparse and ColBERT
//!   scores as `BGEM3FlagModel.compute_score` gives it (extension `weights`, default 1 on
//!   every score the model has); `return_scores` adds each part as `scores`. `raw_scores`
//!   and the Cohere shape's `return_text` judge a cross-encoder's probability and are
//!   refused for it.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use mlx_serve_protocol::ModelKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::resolve::ResolveError;
use crate::runner::ModelEntry;

use super::cohere_meta::{response_id, Meta};
use super::default_model::model_or_only;
use super::hybrid_score::{score_pairs, Mix, PartScores, ScoreWeights, Side};
use super::inference;
use super::usage::Usage;
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};

/// A document: a string, or an object whose `text` is ranked (Cohere v1, Jina).
#[derive(ToSchema)]
#[serde(untagged)]
pub enum Document {
    Text(String),
    #[schema(value_type = Object)]
    Object(serde_json::Map<String, Value>),
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Document::Text(s)),
            Value::Object(o) => Ok(Document::Object(o)),
            other => Err(serde::de::Error::custom(format!(
                "a document must be a string or an object with a string `text`, got {other}"
            ))),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    /// Required, except in the TEI shape with one reranker installed.
    pub model: Option<String>,
    pub query: Option<String>,
    pub documents: Option<Vec<Document>>,
    /// TEI's name for the documents; the response is then TEI's bare array.
    pub texts: Option<Vec<Document>>,
    #[schema(minimum = 1)]
    pub top_n: Option<i64>,
    /// Default true (Jina/Cohere shape).
    pub return_documents: Option<bool>,
    /// Seed extra: add `text_output` "yes"/"no" (TEI shape: add `text`).
    pub return_text: Option<bool>,
    /// Threshold for `text_output`, 0..1, default 0.5.
    pub decision_threshold: Option<f64>,
    /// TEI: logits instead of probabilities.
    pub raw_scores: Option<bool>,
    /// `false`: an over-long pair is an error instead of being truncated.
    pub truncate: Option<bool>,
    /// TEI: only `Right` (the default) is supported.
    pub truncation_direction: Option<String>,
    /// Task instruction of a causal-LM reranker (Qwen3-Reranker, mxbai-rerank-v2).
    pub instruction: Option<String>,
    /// Cohere v1: only `["text"]`.
    pub rank_fields: Option<Vec<String>>,
    /// Cohere: lower runs first, -1000..1000 (the model's queue; `priority.rs`).
    pub priority: Option<i64>,
    /// Cohere v1: accepted and ignored (long documents are truncated, not chunked).
    #[allow(dead_code)]
    pub max_chunks_per_doc: Option<i64>,
    /// Cohere v2: refused.
    pub max_tokens_per_doc: Option<i64>,
    /// Cohere v2: refused.
    #[schema(value_type = Option<Object>)]
    pub relevant_spans: Option<Value>,
    /// Extension, embedding models: the weights of the dense, sparse and ColBERT scores
    /// (bge-m3's `compute_score`); default 1 on each score the model can give.
    pub weights: Option<ScoreWeights>,
    /// Extension, embedding models: add each document's dense / sparse / ColBERT score as
    /// `scores` (every score the model can give).
    pub return_scores: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct DocumentText {
    pub text: String,
}

#[derive(Serialize, ToSchema)]
pub struct RerankResult {
    pub index: usize,
    pub relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentText>,
    /// "yes" / "no" by `decision_threshold` (with `return_text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_output: Option<&'static str>,
    /// Each score of an embedding model (`return_scores`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<PartScores>,
}

#[derive(Serialize, ToSchema)]
pub struct CohereRerankResponse {
    pub id: String,
    /// Always `list`.
    pub object: &'static str,
    pub model: String,
    pub results: Vec<RerankResult>,
    pub usage: Usage,
    pub meta: Meta,
}

/// One TEI rank (TEI `Rank`).
#[derive(Serialize, ToSchema)]
pub struct TeiRank {
    pub index: usize,
    pub score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Each score of an embedding model (`return_scores`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<PartScores>,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum RerankResponse {
    Cohere(CohereRerankResponse),
    Tei(Vec<TeiRank>),
}

fn document_text(i: usize, d: Document) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid_param("documents", format!("document {i} must be a string or an object with a string `text`"))
    };
    match d {
        Document::Text(s) => Ok(s),
        Document::Object(mut o) => match o.remove("text") {
            Some(Value::String(s)) => Ok(s),
            _ => Err(bad()),
        },
    }
}

fn check_cohere_options(req: &RerankRequest) -> Result<(), ApiError> {
    if let Some(fields) = &req.rank_fields {
        if fields.iter().any(|f| f != "text") {
            return Err(ApiError::invalid_param("rank_fields", "only the `text` field of a document is ranked"));
        }
    }
    if req.max_tokens_per_doc.is_some() {
        return Err(ApiError::invalid_param(
            "max_tokens_per_doc",
            "`max_tokens_per_doc` is not supported: pairs are truncated at the model's limit (send `truncate: false` to refuse long ones)",
        ));
    }
    if req.relevant_spans.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid_param("relevant_spans", "`relevant_spans` is not supported"));
    }
    super::input::check_truncation_direction(req.truncation_direction.as_deref())
}

/// The version in Cohere's `meta.api_version`: the route's.
fn api_version(path: &axum::http::Uri) -> &'static str {
    if path.path().starts_with("/v2/") {
        "2"
    } else {
        "1"
    }
}

/// Rerank documents against a query (Jina / Cohere / TEI shapes).
#[utoipa::path(post, path = "/v1/rerank", tag = "Rerank", request_body = RerankRequest,
    responses((status = 200, body = RerankResponse, description = "success"), (status = "4XX", body = super::error::ErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn rerank(
    State(state): State<SharedState>,
    uri: axum::http::Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: RerankRequest = parse_body(body)?;
    check_cohere_options(&req)?;
    super::priority::set_from_body(req.priority)?;
    let tei_shape = req.documents.is_none() && req.texts.is_some();
    let raw_docs =
        req.documents.or(req.texts).ok_or_else(|| ApiError::invalid_param("documents", "`documents` is required"))?;
    let query = req.query.ok_or_else(|| ApiError::invalid_param("query", "`query` is required"))?;
    let documents: Vec<String> =
        raw_docs.into_iter().enumerate().map(|(i, v)| document_text(i, v)).collect::<Result<_, _>>()?;
    if let Some(n) = req.top_n {
        if n < 1 {
            return Err(ApiError::invalid_param("top_n", "`top_n` must be a positive integer"));
        }
    }
    let threshold = req.decision_threshold.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&threshold) {
        return Err(ApiError::invalid_param("decision_threshold", "`decision_threshold` must be between 0 and 1"));
    }
    let model = match req.model {
        Some(m) if !m.is_empty() => m,
        _ if tei_shape => model_or_only(&state, None, ModelKind::Reranker)?,
        _ => return Err(ApiError::invalid_param("model", "`model` is required")),
    };
    let n_docs = documents.len();
    // A reranker, else an embedding model: a model of neither kind (a classifier, a repo to
    // download) is refused from its small files as before, nothing downloaded for nothing.
    let entry = match state.resolver().entry(&model, Some(ModelKind::Reranker)).await {
        Err(ResolveError::WrongKind { kind: ModelKind::Embedding, .. }) => {
            state.resolver().entry(&model, Some(ModelKind::Embedding)).await?
        }
        other => other?,
    };
    let return_text = req.return_text.unwrap_or(false);
    let out = if entry.facts.kind == ModelKind::Embedding {
        let return_text = return_text && !tei_shape;
        let opts = BiEncoderOptions {
            weights: req.weights,
            return_scores: req.return_scores,
            raw_scores: req.raw_scores,
            return_text,
        };
        bi_encoder(&state, &entry, query, documents.clone(), opts, req.truncate, req.instruction).await?
    } else {
        for (param, asked) in [("weights", req.weights.is_some()), ("return_scores", req.return_scores == Some(true))] {
            if asked {
                return Err(ApiError::invalid_param(param, format!("`{param}` applies to an embedding model (a bi-encoder such as bge-m3); model `{model}` is not one")));
            }
        }
        let out = inference::rerank(&state, &model, query, documents.clone(), req.truncate, req.instruction).await?;
        Ranked { name: out.entry.name.clone(), scores: out.scores, parts: None, tokens: out.tokens }
    };

    let mut order: Vec<usize> = (0..out.scores.len()).collect();
    order.sort_by(|&a, &b| out.scores[b].total_cmp(&out.scores[a]).then(a.cmp(&b)));
    if let Some(n) = req.top_n {
        order.truncate(n as usize);
    }
    let parts = |i: usize| out.parts.as_ref().map(|p| p[i]);
    let log = RequestLog { model: out.name.clone(), inputs: n_docs, tokens: out.tokens };

    if tei_shape {
        let raw = req.raw_scores.unwrap_or(false);
        let results = order
            .iter()
            .map(|&i| {
                let p = out.scores[i] as f64;
                let score = if raw { (p / (1.0 - p)).ln() } else { p };
                TeiRank { index: i, score, text: return_text.then(|| documents[i].clone()), scores: parts(i) }
            })
            .collect();
        return Ok(with_log(axum::Json(RerankResponse::Tei(results)), log));
    }

    let return_documents = req.return_documents.unwrap_or(true);
    let results = order
        .iter()
        .map(|&i| {
            let score = out.scores[i];
            RerankResult {
                index: i,
                relevance_score: score,
                document: return_documents.then(|| DocumentText { text: documents[i].clone() }),
                text_output: return_text.then_some(if (score as f64) >= threshold { "yes" } else { "no" }),
                scores: parts(i),
            }
        })
        .collect();
    let body = CohereRerankResponse {
        id: response_id(),
        object: "list",
        model,
        results,
        usage: Usage::new(out.tokens),
        meta: Meta::new(api_version(&uri), out.tokens),
    };
    Ok(with_log(axum::Json(RerankResponse::Cohere(body)), log))
}

/// The scores of a ranking, from a reranker or an embedding model.
struct Ranked {
    name: String,
    scores: Vec<f32>,
    parts: Option<Vec<PartScores>>,
    tokens: usize,
}

/// The options an embedding model's ranking reads or refuses.
struct BiEncoderOptions {
    weights: Option<ScoreWeights>,
    return_scores: Option<bool>,
    raw_scores: Option<bool>,
    /// The Cohere shape's yes/no judgement (not TEI's `return_text`, which adds the text).
    return_text: bool,
}

/// Ranks `documents` by embedding model `entry`'s bi-encoder scores (`hybrid_score.rs`):
/// one embedding of the query (with `instruction`, as a query) and one of each document.
async fn bi_encoder(
    state: &SharedState,
    entry: &ModelEntry,
    query: String,
    documents: Vec<String>,
    opts: BiEncoderOptions,
    truncate: Option<bool>,
    instruction: Option<String>,
) -> Result<Ranked, ApiError> {
    let judged = [("raw_scores", opts.raw_scores == Some(true)), ("return_text", opts.return_text)];
    if let Some((param, _)) = judged.iter().find(|(_, asked)| *asked) {
        return Err(ApiError::invalid_param(
            param,
            format!(
                "`{param}` reads a cross-encoder's relevance probability; model `{}` is an embedding model, whose \
                 score is a similarity, not a probability",
                entry.name
            ),
        ));
    }
    if query.is_empty() {
        return Err(ApiError::invalid_param("query", "`query` must not be empty"));
    }
    if documents.is_empty() {
        return Err(ApiError::invalid_param("documents", "`documents` must not be empty"));
    }
    inference::check_document_count(state, documents.len())?;
    let mix = Mix::resolve(entry, opts.weights, "weights")?;
    let pairs: Vec<(usize, usize)> = (0..documents.len()).map(|j| (0, j)).collect();
    let all_parts = opts.return_scores.unwrap_or(false);
    // PyLate and inference-free sparse models encode queries and documents apart.
    let pylate = super::pylate::is_colbert(entry) || super::inference_free::is_inference_free(entry);
    let query = Side { texts: vec![query], param: "query", instruction, is_query: pylate.then_some(true) };
    let documents = Side { texts: documents, param: "documents", instruction: None, is_query: pylate.then_some(false) };
    let out = score_pairs(state, entry, query, documents, &pairs, mix, all_parts, truncate).await?;
    Ok(Ranked {
        name: out.entry.name.clone(),
        scores: out.scores,
        parts: all_parts.then_some(out.parts),
        tokens: out.tokens,
    })
}
