//! `POST /v1/tokenize` (docs/api.md): `{model, input: str | [str]}` →
//! `{model, data: [{index, tokens: COUNT, token_ids}], usage}`. With
//! `return_token_strings: true` each item also has `token_strings` (the tokenizer's pieces).
//!
//! Answers from the supervisor's tokenizer without waking a worker; the ids are exactly what
//! `/v1/embeddings` sends for the same request — the same prompt selection (`prompt_name`,
//! `prompt`, `instruction`, the model's `default_prompt_name`) and truncation — so embedding
//! those ids gives the same vector as embedding the text.
//!
//! Extension for rerankers: `{model, query, documents, instruction?}` returns the ids of
//! each (query, document) pair as `/v1/rerank` sends them (template, segment ids).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::inference::{check_document_count, check_input_count, prompted_texts, EmbedOptions};
use super::input::TextInput;
use super::usage::Usage;
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};
use crate::tokenize::TokenizeError;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    #[serde(default)]
    pub model: String,
    /// Texts to tokenize (embedding models; rerankers too, as single texts).
    pub input: Option<TextInput>,
    /// `false`: an input over the model's limit is an error instead of being truncated.
    pub truncate: Option<bool>,
    /// Also return each token's string.
    pub return_token_strings: Option<bool>,
    /// As on `/v1/embeddings`: a named prompt of the model.
    pub prompt_name: Option<String>,
    /// As on `/v1/embeddings`: a raw prefix.
    pub prompt: Option<String>,
    /// As on `/v1/embeddings` (with `input`) or `/v1/rerank` (with `query` + `documents`).
    pub instruction: Option<String>,
    /// Reranker pairs: the query…
    pub query: Option<String>,
    /// …and the documents paired with it.
    pub documents: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenizedText {
    pub index: usize,
    /// How many tokens (the length of `token_ids`).
    pub tokens: usize,
    pub token_ids: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_strings: Option<Vec<String>>,
    /// Segment ids of a reranker pair (only when some are non-zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type_ids: Option<Vec<u8>>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenizeResponse {
    /// Always `list`.
    pub object: &'static str,
    pub model: String,
    pub data: Vec<TokenizedText>,
    pub usage: Usage,
}

fn respond(model: String, entry_name: String, data: Vec<TokenizedText>) -> Response {
    let total = data.iter().map(|d| d.tokens).sum();
    let log = RequestLog { model: entry_name, inputs: data.len(), tokens: total };
    with_log(axum::Json(TokenizeResponse { object: "list", model, data, usage: Usage::new(total) }), log)
}

/// Tokenize texts (or reranker pairs) exactly as the model will see them.
#[utoipa::path(post, path = "/v1/tokenize", tag = "mlx-serve", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse, description = "success"), (status = "4XX", body = super::error::ErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn tokenize(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: TokenizeRequest = parse_body(body)?;
    let truncate = req.truncate.unwrap_or(state.config.limits.truncate);
    if let (Some(query), Some(documents)) = (&req.query, &req.documents) {
        check_document_count(&state, documents.len())?;
        let entry = state.resolver().entry(&req.model, None).await?;
        let refs: Vec<&str> = documents.iter().map(String::as_str).collect();
        let seqs = entry
            .tokenizer
            .encode_pairs(query, &refs, req.instruction.as_deref(), truncate)
            .map_err(|e| ApiError::tokenize(e, "documents"))?;
        let data = seqs
            .into_iter()
            .enumerate()
            .map(|(index, s)| TokenizedText {
                index,
                tokens: s.ids.len(),
                token_ids: s.ids,
                token_strings: None,
                token_type_ids: (!s.type_ids.is_empty()).then_some(s.type_ids),
            })
            .collect();
        return Ok(respond(req.model, entry.name.clone(), data));
    }
    let texts = match req.input {
        Some(input) => input.into_texts(),
        None => return Err(ApiError::invalid_param("input", "`input` is required (or `query` and `documents`)")),
    };
    check_input_count(&state, texts.len())?;
    let entry = state.resolver().entry(&req.model, None).await?;
    let opts = EmbedOptions {
        instruction: req.instruction,
        prompt_name: req.prompt_name,
        prompt: req.prompt,
        ..Default::default()
    };
    let texts = prompted_texts(&entry, texts, &opts)?;
    let strings = req.return_token_strings.unwrap_or(false);
    let mut data = Vec::with_capacity(texts.len());
    for (index, text) in texts.iter().enumerate() {
        let (ids, pieces) = entry.tokenizer.tokenize_with_pieces(text, truncate).map_err(|e| match e {
            TokenizeError::TooLong { limit, .. } => {
                ApiError::tokenize(TokenizeError::TooLong { index, limit }, "input")
            }
            e => ApiError::tokenize(e, "input"),
        })?;
        data.push(TokenizedText {
            index,
            tokens: ids.len(),
            token_ids: ids,
            token_strings: strings.then_some(pieces),
            token_type_ids: None,
        });
    }
    Ok(respond(req.model, entry.name.clone(), data))
}
