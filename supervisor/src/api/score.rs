//! `POST /v1/score` and `/score`, vLLM's Score API (vLLM docs, "OpenAI-Compatible Server",
//! Score API: <https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html#score-api>;
//! its example `examples/online_serving/openai_cross_encoder_score.py`):
//! `{model, text_1: str | [str], text_2: str | [str]}` → `{id, object: "list", created,
//! model, data: [{index, object: "score", score}], usage}`.
//!
//! Pairing as vLLM documents it: a string and a string is one pair; one `text_1` and a list
//! `text_2` pairs `text_1` with each of them (1:N); two lists of the same length pair them
//! item by item, as `zip()` (N:N). Any other pair of lengths is a 400.
//!
//! What the score is depends on the model, as in vLLM: a reranker reads each pair together
//! (cross-encoder) and its score is the relevance probability `/v1/rerank` gives; an
//! embedding model embeds both texts and the score is the cosine of the two embeddings
//! (bi-encoder; bge-m3's dense vectors). `data` keeps the pairs' order, unsorted.
//!
//! Extensions for an embedding model (`hybrid_score.rs`, docs/hybrid-search.md):
//! `late_interaction: true` with a model that has bge-m3's ColBERT head scores each pair by
//! its ColBERT token vectors, as FlagEmbedding's `BGEM3FlagModel.colbert_score` does: each
//! `text_1` token's best dot product with a `text_2` token, averaged over the `text_1`
//! tokens; `weights` combines the dense, sparse and ColBERT scores as
//! `BGEM3FlagModel.compute_score` does.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use mlx_serve_protocol::{ModelKind, TokenOutputs};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::cohere_meta::response_id;
use super::hybrid_score::{score_pairs, Mix, ScoreWeights, Side};
use super::inference;
use super::input::TextInput;
use super::usage::Usage;
use super::{parse_body, with_log, ApiError, RequestLog, SharedState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// A reranker (cross-encoder scores) or an embedding model (cosine of embeddings).
    #[serde(default)]
    pub model: String,
    /// One text, or a list as long as `text_2`.
    #[schema(value_type = TextInput)]
    pub text_1: Option<TextInput>,
    #[schema(value_type = TextInput)]
    pub text_2: Option<TextInput>,
    /// `false` makes an over-long text or pair an error instead of truncating it.
    pub truncate: Option<bool>,
    /// vLLM's extension: lower runs first, -1000..1000 (`priority.rs`).
    pub priority: Option<i64>,
    /// Extension: for a model with bge-m3's ColBERT head, the late-interaction (MaxSim)
    /// score of the token vectors instead of the cosine of the dense vectors.
    pub late_interaction: Option<bool>,
    /// Extension: for an embedding model, the weighted mean of its dense, sparse and ColBERT
    /// scores (bge-m3's `compute_score`); instead of `late_interaction`.
    pub weights: Option<ScoreWeights>,
}

#[derive(Serialize, ToSchema)]
pub struct ScoreData {
    /// The pair's position: the position in `text_2` (1:N) or in both lists (N:N).
    pub index: usize,
    /// Always `score`.
    pub object: &'static str,
    pub score: f32,
}

#[derive(Serialize, ToSchema)]
pub struct ScoreResponse {
    /// `score-` and a random hex id.
    pub id: String,
    /// Always `list`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub data: Vec<ScoreData>,
    pub usage: Usage,
}

/// The pairs (index into `text_1`, index into `text_2`) vLLM's pairing rules make.
fn pairs(n1: usize, n2: usize) -> Result<Vec<(usize, usize)>, ApiError> {
    if n1 == 1 {
        Ok((0..n2).map(|j| (0, j)).collect())
    } else if n1 == n2 {
        Ok((0..n1).map(|i| (i, i)).collect())
    } else {
        Err(ApiError::invalid_param(
            "text_2",
            format!(
                "`text_1` has {n1} texts and `text_2` has {n2}: send one `text_1` (paired with each `text_2`) \
                 or as many as `text_2` (paired item by item)"
            ),
        ))
    }
}

fn texts(input: Option<TextInput>, param: &str) -> Result<Vec<String>, ApiError> {
    let texts = input.ok_or_else(|| ApiError::invalid_param(param, format!("`{param}` is required")))?.into_texts();
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(ApiError::invalid_param(param, format!("`{param}` text {i} is empty")));
    }
    Ok(texts)
}

/// Score text pairs (vLLM).
#[utoipa::path(post, path = "/v1/score", tag = "Score", request_body = ScoreRequest,
    responses((status = 200, body = ScoreResponse, description = "success"), (status = "4XX", body = super::error::ErrorBody, description = "invalid request, unknown model, too large, overloaded")))]
pub async fn score(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ScoreRequest = parse_body(body)?;
    super::priority::set_from_body(req.priority)?;
    if req.model.is_empty() {
        return Err(ApiError::invalid_param("model", "`model` is required"));
    }
    let text_1 = texts(req.text_1, "text_1")?;
    let text_2 = texts(req.text_2, "text_2")?;
    let pairs = pairs(text_1.len(), text_2.len())?;
    let entry = state.resolver().entry(&req.model, None).await?;
    let late = req.late_interaction.unwrap_or(false);
    let (scores, tokens) = match entry.facts.kind {
        ModelKind::Reranker if late || req.weights.is_some() => {
            let param = if late { "late_interaction" } else { "weights" };
            return Err(ApiError::invalid_param(
                param,
                format!("`{param}` needs an embedding model (bge-m3's heads); this model is a reranker"),
            ));
        }
        ModelKind::Reranker => cross_encoder(&state, &req.model, text_1, text_2, &pairs, req.truncate).await?,
        ModelKind::Embedding => {
            let mix = match (late, req.weights) {
                (true, Some(_)) => return Err(ApiError::invalid_param(
                    "weights",
                    "send either `late_interaction` or `weights` (`{\"colbert\": 1}` is the late-interaction score)",
                )),
                (true, None) => {
                    let colbert = TokenOutputs { sparse: false, colbert: true };
                    inference::check_token_outputs(&entry, colbert, "late_interaction")?;
                    Mix::COLBERT
                }
                (false, Some(w)) => Mix::resolve(&entry, Some(w), "weights")?,
                // A PyLate model's only score is its late interaction.
                (false, None) if super::pylate::is_colbert(&entry) => Mix::COLBERT,
                (false, None) => Mix::DENSE,
            };
            // A PyLate model reads `text_1` as queries, `text_2` as documents.
            // So does an inference-free sparse encoder.
            let pylate = super::pylate::is_colbert(&entry) || super::inference_free::is_inference_free(&entry);
            let side = |texts, param, q: bool| Side { texts, param, instruction: None, is_query: pylate.then_some(q) };
            let out = score_pairs(
                &state,
                &entry,
                side(text_1, "text_1", true),
                side(text_2, "text_2", false),
                &pairs,
                mix,
                false,
                req.truncate,
            )
            .await?;
            (out.scores, out.tokens)
        }
        ModelKind::Classifier => {
            return Err(ApiError::invalid_param(
                "model",
                format!("model `{}` is a classifier with several labels: use /predict", req.model),
            ))
        }
    };
    let data =
        scores.into_iter().enumerate().map(|(index, score)| ScoreData { index, object: "score", score }).collect();
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let body = ScoreResponse {
        id: format!("score-{}", response_id().replace('-', "")),
        object: "list",
        created,
        model: req.model,
        data,
        usage: Usage::new(tokens),
    };
    let log = RequestLog { model: entry.name.clone(), inputs: pairs.len(), tokens };
    Ok(with_log(axum::Json(body), log))
}

/// A reranker's score of each pair, all pairs in one job.
async fn cross_encoder(
    state: &SharedState,
    model: &str,
    text_1: Vec<String>,
    text_2: Vec<String>,
    pairs: &[(usize, usize)],
    truncate: Option<bool>,
) -> Result<(Vec<f32>, usize), ApiError> {
    let pairs = pairs.iter().map(|&(i, j)| (text_1[i].clone(), text_2[j].clone())).collect();
    let out = inference::rerank_pairs(state, model, pairs, truncate).await?;
    Ok((out.scores, out.tokens))
}

#[cfg(test)]
mod tests {
    use super::pairs;

    #[test]
    fn pairs_follow_vllms_rules() {
        assert_eq!(pairs(1, 1).unwrap(), vec![(0, 0)]);
        assert_eq!(pairs(1, 3).unwrap(), vec![(0, 0), (0, 1), (0, 2)]);
        assert_eq!(pairs(2, 2).unwrap(), vec![(0, 0), (1, 1)]);
        let e = pairs(2, 3).unwrap_err();
        assert!(e.message.contains("2 texts") && e.message.contains("has 3"), "{}", e.message);
        assert!(pairs(3, 1).is_err());
    }
}
