//! TEI's `POST /similarity`, the sentence-similarity task of the Hugging Face inference
//! API (what `huggingface_hub.InferenceClient.sentence_similarity` and LiteLLM's Hugging
//! Face provider post). Shape from TEI's `router/src/http/types.rs`: `SimilarityRequest
//! {inputs: {source_sentence, sentences}, parameters?: {prompt_name?, truncate?,
//! truncation_direction?}}` → `SimilarityResponse`, a bare array with the cosine of each
//! sentence's embedding to the source sentence's, as sentence-transformers'
//! `util.cos_sim`. Extension: `model` (default the only installed embedding model).
//! `tei.rs` routes `POST /similarity`, and `POST /` with such a body, here.

use axum::response::Response;
use axum::Json;
use mlx_serve_protocol::ModelKind;
use serde::Deserialize;
use utoipa::ToSchema;

use super::default_model::model_or_only;
use super::encode;
use super::inference::{self, EmbedOptions, Inputs};
use super::input::check_truncation_direction;
use super::{with_log, ApiError, RequestLog, SharedState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarityInput {
    /// The sentence the others are compared with.
    pub source_sentence: String,
    pub sentences: Vec<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SimilarityParameters {
    pub prompt_name: Option<String>,
    /// Default `limits.truncate`.
    pub truncate: Option<bool>,
    /// `right` (default); `left` is refused.
    pub truncation_direction: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarityRequest {
    pub inputs: Option<SimilarityInput>,
    pub parameters: Option<SimilarityParameters>,
    /// Extension: which model; default the only installed embedding model.
    pub model: Option<String>,
}

/// The cosines for `req` (TEI's route `/similarity` and `/` answer with this).
pub async fn similarity_request(state: &SharedState, req: SimilarityRequest) -> Result<Response, ApiError> {
    let inputs = req.inputs.ok_or_else(|| ApiError::invalid_param("inputs", "`inputs` is required"))?;
    if inputs.sentences.is_empty() {
        return Err(ApiError::invalid_param("inputs", "`inputs.sentences` must not be empty"));
    }
    let params = req.parameters.unwrap_or_default();
    check_truncation_direction(params.truncation_direction.as_deref())?;
    let model = model_or_only(state, req.model, ModelKind::Embedding)?;
    let opts = EmbedOptions { truncate: params.truncate, prompt_name: params.prompt_name, ..Default::default() };
    let n = inputs.sentences.len();
    let mut texts = Vec::with_capacity(n + 1);
    texts.push(inputs.source_sentence);
    texts.extend(inputs.sentences);
    let out = inference::embed(state, &model, Inputs::Texts(texts), opts).await?;
    let (dim, mut data) = (out.dim, out.data.clone());
    // Cosine whatever the model's pipeline does: rows made unit length first.
    encode::normalize_rows(&mut data, dim);
    let source = &data[..dim];
    let scores: Vec<f32> =
        data[dim..].chunks_exact(dim).map(|row| row.iter().zip(source).map(|(a, b)| a * b).sum()).collect();
    let log = RequestLog { model: out.entry.name.clone(), inputs: n + 1, tokens: out.tokens };
    Ok(with_log(Json(scores), log))
}
