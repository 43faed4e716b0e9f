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
//! Extension: `late_interaction: true` with a model that has bge-m3's ColBERT head scores
//! each pair by its ColBERT token vectors, as FlagEmbedding's `BGEM3FlagModel.colbert_score`
//! does: each `text_1` token's best dot product with a `text_2` token, averaged over the
//! `text_1` tokens (docs/hybrid-search.md).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use mlx_serve_protocol::{ModelKind, TokenOutputs};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::runner::TokenRows;

use super::cohere_meta::response_id;
use super::encode;
use super::inference::{self, EmbedOptions, Inputs};
use super::input::TextInput;
use super::openai::Usage;
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
        ModelKind::Reranker if late => {
            return Err(ApiError::invalid_param(
                "late_interaction",
                "`late_interaction` needs a model with a ColBERT head (bge-m3); this model is a reranker",
            ))
        }
        ModelKind::Reranker => cross_encoder(&state, &req.model, text_1, text_2, &pairs, req.truncate).await?,
        ModelKind::Embedding => bi_encoder(&state, &req.model, text_1, text_2, &pairs, req.truncate, late).await?,
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

/// An embedding model's score of each pair: the cosine of the two texts' embeddings (or,
/// `late`, the MaxSim of their ColBERT vectors). Each side is one embed request (the
/// batcher runs them together), so an error names its side and the text's place in it.
async fn bi_encoder(
    state: &SharedState,
    model: &str,
    text_1: Vec<String>,
    text_2: Vec<String>,
    pairs: &[(usize, usize)],
    truncate: Option<bool>,
    late: bool,
) -> Result<(Vec<f32>, usize), ApiError> {
    inference::check_input_count(state, text_1.len() + text_2.len())?;
    let outputs = TokenOutputs { sparse: false, colbert: late };
    let side = |texts: Vec<String>, param: &'static str| async move {
        let opts = EmbedOptions { truncate, outputs, ..Default::default() };
        inference::embed(state, model, Inputs::Texts(texts), opts).await.map_err(|e| named_side(e, param))
    };
    let (first, second) = futures_util::future::try_join(side(text_1, "text_1"), side(text_2, "text_2")).await?;
    let tokens = first.tokens + second.tokens;
    if late {
        fn colbert(out: &inference::Embedded) -> Result<&TokenRows, ApiError> {
            out.token_rows.as_ref().ok_or_else(|| ApiError::internal("the worker sent no ColBERT vectors"))
        }
        let (a, b) = (colbert(&first)?, colbert(&second)?);
        let scores = pairs.iter().map(|&(i, j)| max_sim(&a.colbert[i], &b.colbert[j], a.colbert_dim)).collect();
        return Ok((scores, tokens));
    }
    // The cosine whatever the model's pipeline does: rows made unit length first.
    let (dim, mut a, mut b) = (first.dim, first.data.clone(), second.data.clone());
    encode::normalize_rows(&mut a, dim);
    encode::normalize_rows(&mut b, dim);
    let scores = pairs
        .iter()
        .map(|&(i, j)| a[i * dim..(i + 1) * dim].iter().zip(&b[j * dim..(j + 1) * dim]).map(|(x, y)| x * y).sum())
        .collect();
    Ok((scores, tokens))
}

/// An embed error about `input` N, renamed to the side it came from (`text_1` text N).
fn named_side(mut e: ApiError, param: &'static str) -> ApiError {
    if e.param.as_deref() == Some("input") {
        e.param = Some(param.to_owned());
        if let Some(rest) = e.message.strip_prefix("input ") {
            e.message = format!("`{param}` text {rest}");
        }
    }
    e
}

/// FlagEmbedding's `colbert_score`: for each query token vector, the largest dot product
/// with a document token vector; their mean over the query tokens.
fn max_sim(query: &[f32], document: &[f32], dim: usize) -> f32 {
    let dim = dim.max(1);
    let rows = query.len() / dim;
    if rows == 0 {
        return 0.0;
    }
    let best = query.chunks_exact(dim).map(|q| {
        document.chunks_exact(dim).map(|d| q.iter().zip(d).map(|(a, b)| a * b).sum::<f32>()).fold(f32::MIN, f32::max)
    });
    best.sum::<f32>() / rows as f32
}

#[cfg(test)]
mod tests {
    use super::{max_sim, pairs};

    #[test]
    fn max_sim_averages_each_query_tokens_best_match() {
        // Query tokens (1,0) and (0,1); document tokens (1,0) and (0.6,0.8).
        let q = [1.0, 0.0, 0.0, 1.0];
        let d = [1.0, 0.0, 0.6, 0.8];
        assert!((max_sim(&q, &d, 2) - (1.0 + 0.8) / 2.0).abs() < 1e-6);
    }

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
