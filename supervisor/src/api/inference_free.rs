//! Inference-free sparse encoders on the API side (opensearch's; docs/hybrid-search.md,
//! "Inference-free sparse models"): a request says whether its texts are queries or
//! documents (`is_query`, as `encode_query` / `encode_document`); without it the model's
//! Router takes its `default_route` (what sentence-transformers' plain `encode` does, the
//! document side for every published model), and a Router without one needs `is_query`.
//! Documents go to the worker's SPLADE head like any SPLADE model's; queries are a token
//! lookup computed here (`tokenize/static_query.rs`), without a worker.

use mlx_serve_protocol::model_dir::Route;

use super::ApiError;
use crate::runner::ModelEntry;
use crate::tokenize::QueryWeights;

/// Whether `entry` is an inference-free sparse encoder.
pub fn is_inference_free(entry: &ModelEntry) -> bool {
    entry.facts.static_query.is_some()
}

/// The route a request on `entry` takes: `None` for a model without routes.
pub fn route(entry: &ModelEntry, is_query: Option<bool>) -> Result<Option<Route>, ApiError> {
    let Some(spec) = &entry.facts.static_query else { return Ok(None) };
    match is_query {
        Some(true) => Ok(Some(Route::Query)),
        Some(false) => Ok(Some(Route::Document)),
        None => spec.default_route.map(Some).ok_or_else(|| {
            ApiError::invalid_param(
                "is_query",
                format!(
                    "model `{}` is an inference-free sparse encoder without a default route: send \
                     `\"is_query\": true` for queries or `false` for documents",
                    entry.name
                ),
            )
        }),
    }
}

/// What the query side does not take: prompts (its tokenizer sees the text alone) and
/// token ids (they are the document tokenizer's).
pub fn check_query_options(entry: &ModelEntry, ids: bool, prompted: Option<&'static str>) -> Result<(), ApiError> {
    let (param, what) = match (ids, prompted) {
        (true, _) => ("input", "token-id input"),
        (false, Some(param)) => (param, param),
        (false, None) => return Ok(()),
    };
    Err(ApiError::invalid_param(
        param,
        format!(
            "model `{}` encodes queries with a token lookup of the text alone: {what} is not served for queries \
             (`\"is_query\": true`)",
            entry.name
        ),
    ))
}

/// The query weights of `texts` (blocking: `inference.rs` runs it off the async threads
/// and checks `limits.max_tokens_per_request`).
pub fn query_weights(entry: &ModelEntry, texts: &[String], truncate: bool) -> Result<QueryWeights, ApiError> {
    let encoder =
        entry.static_query.as_ref().ok_or_else(|| ApiError::internal("the model's query weights are not loaded"))?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    encoder.encode(&refs, truncate).map_err(|e| ApiError::tokenize(e, "input"))
}
