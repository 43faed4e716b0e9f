//! `POST /v1/rerank`, `/rerank`, `/v2/rerank`.
//!
//! - Jina / Cohere shape: `{model, query, documents: [str | {text}], top_n,
//!   return_documents}` → `{model, results: [{index, relevance_score, document?}], usage}`
//!   sorted by score. Seed extras: `return_text` adds `text_output` "yes"/"no" by
//!   `decision_threshold` (default 0.5); `instruction` for Qwen3-Reranker.
//! - TEI shape (`texts` instead of `documents`): `{query, texts, raw_scores, return_text,
//!   truncate}` → a bare array `[{index, score, text?}]` sorted by score; `raw_scores`
//!   returns logits instead of probabilities (TEI router/src/http/types.rs).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::inference;
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};

#[derive(Deserialize)]
struct RerankRequest {
    #[serde(default)]
    model: Option<String>,
    query: Option<String>,
    documents: Option<Vec<Value>>,
    /// TEI's name for the documents.
    texts: Option<Vec<Value>>,
    top_n: Option<i64>,
    return_documents: Option<bool>,
    return_text: Option<bool>,
    decision_threshold: Option<f64>,
    raw_scores: Option<bool>,
    truncate: Option<bool>,
    instruction: Option<String>,
}

fn document_text(i: usize, v: Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Object(mut o) => match o.remove("text") {
            Some(Value::String(s)) => Ok(s),
            _ => Err(ApiError::invalid_param("documents", format!("document {i} must be a string or an object with a string `text`"))),
        },
        _ => Err(ApiError::invalid_param("documents", format!("document {i} must be a string or an object with a string `text`"))),
    }
}

/// The model used when a TEI-shaped request names none: the only installed reranker.
async fn default_reranker(state: &SharedState) -> Result<String, ApiError> {
    let mut rerankers: Vec<String> = state
        .pool
        .store()
        .facts()
        .into_iter()
        .filter(|(_, facts)| facts.as_ref().is_ok_and(|f| f.kind == mlx_serve_protocol::ModelKind::Reranker))
        .map(|(name, _)| name)
        .collect();
    rerankers.sort();
    match rerankers.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::invalid_param("model", "`model` is required (no reranker is installed)")),
        _ => Err(ApiError::invalid_param("model", format!("`model` is required; installed rerankers: {}", rerankers.join(", ")))),
    }
}

pub async fn rerank(State(state): State<SharedState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: RerankRequest = parse_body(body)?;
    let tei_shape = req.documents.is_none() && req.texts.is_some();
    let raw_docs = req
        .documents
        .or(req.texts)
        .ok_or_else(|| ApiError::invalid_param("documents", "`documents` is required"))?;
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
        _ if tei_shape => default_reranker(&state).await?,
        _ => return Err(ApiError::invalid_param("model", "`model` is required")),
    };
    let n_docs = documents.len();
    let out = inference::rerank(&state, &model, query, documents.clone(), req.truncate, req.instruction).await?;

    let mut order: Vec<usize> = (0..out.scores.len()).collect();
    order.sort_by(|&a, &b| out.scores[b].total_cmp(&out.scores[a]).then(a.cmp(&b)));
    if let Some(n) = req.top_n {
        order.truncate(n as usize);
    }
    let return_text = req.return_text.unwrap_or(false);
    let log = RequestLog { model: out.entry.name.clone(), inputs: n_docs, tokens: out.tokens };

    if tei_shape {
        let raw = req.raw_scores.unwrap_or(false);
        let results: Vec<Value> = order
            .iter()
            .map(|&i| {
                let p = out.scores[i] as f64;
                let score = if raw { (p / (1.0 - p)).ln() } else { p };
                let mut r = json!({"index": i, "score": score});
                if return_text {
                    r["text"] = json!(documents[i]);
                }
                r
            })
            .collect();
        return Ok(with_log(axum::Json(Value::Array(results)), log));
    }

    let return_documents = req.return_documents.unwrap_or(true);
    let results: Vec<Value> = order
        .iter()
        .map(|&i| {
            let score = out.scores[i];
            let mut r = json!({"index": i, "relevance_score": score});
            if return_documents {
                r["document"] = json!({"text": documents[i]});
            }
            if return_text {
                r["text_output"] = json!(if (score as f64) >= threshold { "yes" } else { "no" });
            }
            r
        })
        .collect();
    let body = json!({
        "object": "list",
        "model": model,
        "results": results,
        "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
    });
    Ok(with_log(axum::Json(body), log))
}
