//! `POST /v1/embeddings`, OpenAI-compatible.
//!
//! `input`: a string, a list of strings, a list of token ids, or a list of token-id lists
//! (OpenAI API reference, "Create embeddings"). `encoding_format`: `float` or `base64`
//! (little-endian f32, what the official Python client requests by default). `dimensions`:
//! truncate, then L2-renormalize. `user` is accepted and ignored.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::inference::{self, Inputs};
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};

#[derive(Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: String,
    input: Option<Value>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<Value>,
    /// Extension: a query instruction for models that want one (Qwen3-Embedding formats
    /// it as its model card says; other models get it as a plain prefix).
    #[serde(default)]
    instruction: Option<String>,
    /// Extension: `false` makes over-long inputs an error instead of truncating them.
    #[serde(default)]
    truncate: Option<bool>,
}

/// Classifies OpenAI's `input` union.
pub fn parse_input(value: Value) -> Result<Inputs, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "input",
            "`input` must be a string, a list of strings, a list of token ids, or a list of token-id lists",
        )
    };
    let token = |v: &Value| -> Result<i64, ApiError> {
        v.as_i64().ok_or_else(|| ApiError::invalid_param("input", format!("token ids must be integers, got {v}")))
    };
    match value {
        Value::String(s) => Ok(Inputs::Texts(vec![s])),
        Value::Array(items) => match items.first() {
            None => Err(ApiError::invalid_param("input", "`input` must not be an empty list")),
            Some(Value::String(_)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(bad()),
                })
                .collect::<Result<_, _>>()
                .map(Inputs::Texts),
            Some(Value::Number(_)) => Ok(Inputs::Ids(vec![items.iter().map(token).collect::<Result<_, _>>()?])),
            Some(Value::Array(_)) => items
                .into_iter()
                .map(|v| match v {
                    Value::Array(ids) => ids.iter().map(token).collect::<Result<Vec<_>, _>>(),
                    _ => Err(bad()),
                })
                .collect::<Result<_, _>>()
                .map(Inputs::Ids),
            Some(_) => Err(bad()),
        },
        _ => Err(bad()),
    }
}

pub async fn embeddings(State(state): State<SharedState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: EmbeddingsRequest = parse_body(body)?;
    let input = req.input.ok_or_else(|| ApiError::invalid_param("input", "`input` is required"))?;
    let inputs = parse_input(input)?;
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
    if let Some(d) = req.dimensions {
        if d < 1 {
            return Err(ApiError::invalid_param("dimensions", "`dimensions` must be a positive integer"));
        }
    }
    let n = inputs.len();
    let out = inference::embed(&state, &req.model, inputs, req.truncate, req.instruction).await?;
    let (dim, data) = match req.dimensions {
        Some(d) if d as usize > out.dim => {
            return Err(ApiError::invalid_param(
                "dimensions",
                format!("model `{}` makes {}-dimensional embeddings; `dimensions` {d} is larger", req.model, out.dim),
            ))
        }
        Some(d) if (d as usize) < out.dim => (d as usize, inference::shorten_rows(&out.data, out.dim, d as usize)),
        _ => (out.dim, out.data),
    };
    let rows: Vec<Value> = data
        .chunks_exact(dim)
        .enumerate()
        .map(|(index, row)| {
            let embedding = if base64 {
                let mut bytes = Vec::with_capacity(row.len() * 4);
                for x in row {
                    bytes.extend_from_slice(&x.to_le_bytes());
                }
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(row)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": rows,
        "model": req.model,
        "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
    });
    let log = RequestLog { model: out.entry.name.clone(), inputs: n, tokens: out.tokens };
    Ok(with_log(axum::Json(body), log))
}
