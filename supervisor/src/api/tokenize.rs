//! `POST /v1/tokenize`: `{model, input: str | [str], truncate?}` →
//! `{model, data: [{index, tokens, token_ids}], usage}`. Answers from the supervisor's
//! tokenizer without waking a worker; the ids are exactly what `/v1/embeddings` would
//! send for the same text (and embedding those ids gives the same vector).
//! Extension for rerankers: `{model, query, documents, instruction?}` returns the ids of
//! each (query, document) pair as `/v1/rerank` sends them (template, segment ids).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_body, with_log, ApiError, RequestLog, SharedState};

#[derive(Deserialize)]
struct TokenizeRequest {
    #[serde(default)]
    model: String,
    input: Option<Value>,
    truncate: Option<bool>,
    query: Option<String>,
    documents: Option<Vec<String>>,
    instruction: Option<String>,
}

pub async fn tokenize(State(state): State<SharedState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: TokenizeRequest = parse_body(body)?;
    if let (Some(query), Some(documents)) = (&req.query, &req.documents) {
        let entry = state.resolver().entry(&req.model, None).await?;
        let refs: Vec<&str> = documents.iter().map(String::as_str).collect();
        let truncate = req.truncate.unwrap_or(state.config.limits.truncate);
        let seqs = entry
            .tokenizer
            .encode_pairs(query, &refs, req.instruction.as_deref(), truncate)
            .map_err(|e| ApiError::invalid_param("documents", e.to_string()))?;
        let total: usize = seqs.iter().map(|s| s.ids.len()).sum();
        let data: Vec<Value> = seqs
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let mut v = json!({"index": index, "token_ids": s.ids});
                if !s.type_ids.is_empty() {
                    v["token_type_ids"] = json!(s.type_ids);
                }
                v
            })
            .collect();
        let body = json!({"object": "list", "model": req.model, "data": data,
                          "usage": {"prompt_tokens": total, "total_tokens": total}});
        return Ok(with_log(axum::Json(body), RequestLog { model: entry.name.clone(), inputs: seqs.len(), tokens: total }));
    }
    let texts: Vec<String> = match req.input {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if !items.is_empty() => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid_param("input", "`input` must be a string or a list of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid_param("input", "`input` must be a string or a non-empty list of strings")),
        None => return Err(ApiError::invalid_param("input", "`input` is required")),
    };
    if texts.len() > state.config.limits.max_inputs_per_request {
        return Err(ApiError::too_large("too many inputs (limits.max_inputs_per_request)"));
    }
    let entry = state.resolver().entry(&req.model, None).await?;
    let truncate = req.truncate.unwrap_or(state.config.limits.truncate);
    let mut data = Vec::with_capacity(texts.len());
    let mut total = 0;
    for (index, text) in texts.iter().enumerate() {
        let (ids, tokens) = entry
            .tokenizer
            .tokenize_with_pieces(text, truncate)
            .map_err(|e| ApiError::invalid_param("input", format!("input {index}: {e}")))?;
        total += ids.len();
        data.push(json!({"index": index, "tokens": tokens, "token_ids": ids}));
    }
    let body = json!({
        "object": "list",
        "model": req.model,
        "data": data,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    });
    Ok(with_log(axum::Json(body), RequestLog { model: entry.name.clone(), inputs: texts.len(), tokens: total }))
}
