//! Chunked embedding on the API side (docs/long-documents.md): the request's `chunking`
//! field, how it combines with `truncate` and `models.chunking` into what becomes of an
//! over-long input, and the pooling of a document's window vectors back to one.
//!
//! The pooling is vLLM's `enable_chunked_processing` ("Chunked processing uses MEAN
//! aggregation for cross-chunk combination", weighted by each chunk's token count;
//! docs.vllm.ai, examples/online_serving/openai_embedding_long_text): the weighted mean of
//! the windows' vectors as the model outputs them, then L2 normalization when the model's
//! pipeline normalizes. Unlike vLLM, which cuts the token ids as they are, each window
//! here carries the model's special tokens (`tokenize/windows.rs`), so a CLS- or
//! last-token-pooled model sees every window as a normal input.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiError;
use crate::config::Config;
use crate::tokenize::{LongInput, ModelTokenizer, WindowError};

/// The `chunking` request field: `true`, `false`, or `{"overlap_tokens": N}` (chunking on
/// with that overlap).
#[derive(Debug, Clone, Copy, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum ChunkingRequest {
    On(bool),
    Options {
        /// Tokens each window repeats from the end of the one before it; less than the
        /// model's window.
        overlap_tokens: usize,
    },
}

const SHAPE: &str = "`chunking` must be true, false, or {\"overlap_tokens\": N} with N a non-negative integer";

impl<'de> Deserialize<'de> for ChunkingRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bad = || serde::de::Error::custom(SHAPE);
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(ChunkingRequest::On(b)),
            Value::Object(map) => {
                if map.len() != 1 {
                    return Err(bad());
                }
                let n = map.get("overlap_tokens").and_then(Value::as_u64).ok_or_else(bad)?;
                Ok(ChunkingRequest::Options { overlap_tokens: usize::try_from(n).map_err(|_| bad())? })
            }
            _ => Err(bad()),
        }
    }
}

/// What becomes of `model`'s over-long inputs for one request: the request's `chunking`
/// first, then its `truncate`, then `models.chunking` (per model, then the default), then
/// `limits.truncate`. `can_chunk` is false where chunking does not apply (token-id input,
/// per-token outputs): asked for in the request it is a 400, from the config it is skipped.
pub fn long_input(
    config: &Config,
    model: &str,
    tokenizer: &ModelTokenizer,
    chunking: Option<ChunkingRequest>,
    truncate: Option<bool>,
    can_chunk: Result<(), &str>,
) -> Result<LongInput, ApiError> {
    let fallback = LongInput::truncate(truncate.unwrap_or(config.limits.truncate));
    let chunks = &config.models.chunking;
    let (overlap, from) = match chunking {
        Some(ChunkingRequest::On(false)) => return Ok(fallback),
        Some(ChunkingRequest::On(true)) => (chunks.overlap_for(model), "models.chunking"),
        Some(ChunkingRequest::Options { overlap_tokens }) => (overlap_tokens, "the request"),
        None if truncate.is_some() => return Ok(fallback),
        None => match chunks.for_model(model) {
            Some(overlap) if can_chunk.is_ok() => (overlap, "models.chunking"),
            _ => return Ok(fallback),
        },
    };
    if let Err(why) = can_chunk {
        if chunking.is_some() {
            return Err(ApiError::invalid_param("chunking", format!("chunking does not apply to {why}")));
        }
    }
    tokenizer
        .check_overlap(overlap)
        .map_err(|e| window_error(e, &format!("model `{model}`, overlap from {from}: ")))?;
    Ok(LongInput::Chunk { overlap })
}

/// The API error for a text that cannot be chunked.
pub fn window_error(e: WindowError, context: &str) -> ApiError {
    match e {
        WindowError::Overlap { .. } => ApiError::invalid_param("chunking", format!("{context}{e}")),
        WindowError::TooMany { .. } => ApiError::too_large(e.to_string()),
        WindowError::Tokenize(e) => ApiError::tokenize(e, "input"),
    }
}

/// One document's vector from its windows' (`rows`, `dim` each): the mean weighted by
/// each window's tokens, then L2-normalized when the model normalizes. Summed in f64.
pub fn pool(rows: &[f32], dim: usize, tokens: &[u32], normalize: bool) -> Vec<f32> {
    let mut sum = vec![0f64; dim];
    let total: f64 = tokens.iter().map(|&t| t as f64).sum();
    for (row, &t) in rows.chunks_exact(dim).zip(tokens) {
        for (s, &x) in sum.iter_mut().zip(row) {
            *s += x as f64 * t as f64;
        }
    }
    let mut scale = 1.0 / total.max(1.0);
    if normalize {
        let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
        scale = if norm > 0.0 { 1.0 / norm } else { 1.0 };
    }
    sum.iter().map(|x| (x * scale) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_field_takes_a_bool_or_an_overlap() {
        let p = |v: Value| serde_json::from_value::<ChunkingRequest>(v).map_err(|e| e.to_string());
        assert_eq!(p(json!(true)), Ok(ChunkingRequest::On(true)));
        assert_eq!(p(json!({"overlap_tokens": 32})), Ok(ChunkingRequest::Options { overlap_tokens: 32 }));
        for bad in [json!(1), json!("yes"), json!({"overlap_tokens": -1}), json!({"overlap": 3}), json!({})] {
            assert!(p(bad.clone()).unwrap_err().contains("`chunking` must be"), "{bad}");
        }
    }

    #[test]
    fn pooling_is_the_token_weighted_mean_then_normalized() {
        let rows = [1.0, 0.0, 0.0, 1.0];
        assert_eq!(pool(&rows, 2, &[3, 1], false), vec![0.75, 0.25]);
        let n = pool(&rows, 2, &[3, 1], true);
        let expect = [3.0 / 10f32.sqrt(), 1.0 / 10f32.sqrt()];
        assert!(n.iter().zip(expect).all(|(a, b)| (a - b).abs() < 1e-7), "{n:?}");
        assert_eq!(pool(&[0.5, 0.5], 2, &[7], false), vec![0.5, 0.5], "one window is itself");
    }
}
