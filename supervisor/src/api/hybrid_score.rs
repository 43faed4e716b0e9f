//! Scores of text pairs from an embedding model's outputs (a bi-encoder): the cosine of the
//! dense vectors, bge-m3's lexical-matching score of the sparse weights, and the ColBERT
//! (MaxSim) score of the token vectors, combined with caller weights as FlagEmbedding's
//! `BGEM3FlagModel.compute_score` combines them (FlagEmbedding 1.3,
//! `inference/embedder/encoder_only/m3.py`, `compute_score_single_device`):
//!
//! `(colbert * w_colbert + sparse * w_sparse + dense * w_dense) / (w_dense + w_sparse + w_colbert)`
//!
//! with `weights_for_different_modes` defaulting to `[1, 1, 1]`. Its three scores
//! (`finetune/embedder/encoder_only/m3/modeling.py`, temperature 1): `compute_dense_score`,
//! the dot product of the normalized dense vectors; `compute_sparse_score`, the dot product
//! of the two texts' vocabulary-wide lexical weights (a sum over the token ids both have);
//! `compute_colbert_score`, per first-text token the best dot product with a second-text
//! token, summed and divided by the first text's tokens after CLS. Used by `/v1/rerank`
//! (`rerank.rs`) and `/v1/score` (`score.rs`); docs/hybrid-search.md.
//!
//! Each text is embedded once, with every output the request needs from the same forward
//! pass, through the model's batcher like any embedding request. Each pair is scored on its
//! own: FlagEmbedding's batched `compute_score` pads passages with zero ColBERT vectors, so a
//! passage shorter than its batch's longest gets a MaxSim of at least 0 per query token; here
//! a pair's score never depends on the other texts of the request.

use std::sync::Arc;

use mlx_serve_protocol::model_dir::Pooling;
use mlx_serve_protocol::TokenOutputs;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::encode;
use super::inference::{self, EmbedOptions, Embedded, Inputs};
use super::pylate;
use super::{ApiError, SharedState};
use crate::runner::ModelEntry;

/// Caller weights of the three scores (FlagEmbedding's `weights_for_different_modes`,
/// here by name). An absent weight is 0; the weights need not sum to 1.
#[derive(Deserialize, ToSchema, Clone, Copy, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ScoreWeights {
    /// Weight of the dense (cosine) score.
    pub dense: Option<f64>,
    /// Weight of the lexical-matching score of the sparse weights (bge-m3's sparse head).
    pub sparse: Option<f64>,
    /// Weight of the ColBERT (MaxSim) score (bge-m3's ColBERT head).
    pub colbert: Option<f64>,
}

/// Each score of a pair the request computed (`return_scores`).
#[derive(Serialize, ToSchema, Clone, Copy, Debug, Default, PartialEq)]
pub struct PartScores {
    /// Cosine of the dense vectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense: Option<f32>,
    /// Sum over shared token ids of the product of the two lexical weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse: Option<f32>,
    /// ColBERT MaxSim: averaged over the first text's token vectors for bge-m3, summed for
    /// a PyLate model (as each scores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colbert: Option<f32>,
}

/// The weights a request scores with, checked against what the model has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    dense: f32,
    sparse: f32,
    colbert: f32,
}

impl Mix {
    /// The cosine of the dense vectors alone (a bi-encoder's score; vLLM's `/score`).
    pub const DENSE: Mix = Mix { dense: 1.0, sparse: 0.0, colbert: 0.0 };
    /// The ColBERT score alone (`/v1/score`'s `late_interaction`).
    pub const COLBERT: Mix = Mix { dense: 0.0, sparse: 0.0, colbert: 1.0 };

    /// The caller's weights, or without them weight 1 on every score the model can give
    /// (compute_score's default `[1, 1, 1]` for bge-m3; the dense cosine for a model
    /// without its heads). `param` names the request field in errors.
    pub fn resolve(entry: &ModelEntry, weights: Option<ScoreWeights>, param: &str) -> Result<Mix, ApiError> {
        let has = available(entry);
        let Some(w) = weights else {
            let on = |b: bool| if b { 1.0 } else { 0.0 };
            return Ok(Mix { dense: on(has_dense(entry)), sparse: on(has.sparse), colbert: on(has.colbert) });
        };
        let one = |v: Option<f64>, name: &str| -> Result<f32, ApiError> {
            match v {
                None => Ok(0.0),
                Some(x) if x.is_finite() && x >= 0.0 && x <= f32::MAX as f64 => Ok(x as f32),
                Some(x) => Err(ApiError::invalid_param(
                    param,
                    format!("`{param}.{name}` must be a finite number ≥ 0, got {x}"),
                )),
            }
        };
        let mix = Mix {
            dense: one(w.dense, "dense")?,
            sparse: one(w.sparse, "sparse")?,
            colbert: one(w.colbert, "colbert")?,
        };
        inference::check_token_outputs(entry, mix.token_outputs(), param)?;
        if mix.total() <= 0.0 {
            return Err(ApiError::invalid_param(
                param,
                format!("`{param}` must give at least one of `dense`, `sparse`, `colbert` a weight above 0"),
            ));
        }
        Ok(mix)
    }

    fn total(&self) -> f32 {
        self.dense + self.sparse + self.colbert
    }

    /// The per-token outputs the weighted scores need.
    fn token_outputs(&self) -> TokenOutputs {
        TokenOutputs { sparse: self.sparse > 0.0, colbert: self.colbert > 0.0 }
    }

    /// The weighted mean of the parts (compute_score's "colbert+sparse+dense").
    fn combine(&self, p: PartScores) -> f32 {
        (p.colbert.unwrap_or(0.0) * self.colbert
            + p.sparse.unwrap_or(0.0) * self.sparse
            + p.dense.unwrap_or(0.0) * self.dense)
            / self.total()
    }
}

/// Whether `entry` gives a dense vector: every embedding model but a SPLADE encoder,
/// whose only score is the dot product of its sparse weights (`SparseEncoder.similarity`'s
/// default, which [`lexical_match`] computes).
fn has_dense(entry: &ModelEntry) -> bool {
    !matches!(entry.facts.pooling, Pooling::Splade | Pooling::Colbert)
}

/// The per-token outputs `entry` has heads for.
fn available(entry: &ModelEntry) -> TokenOutputs {
    let has = |outputs| inference::check_token_outputs(entry, outputs, "model").is_ok();
    TokenOutputs {
        sparse: has(TokenOutputs { sparse: true, colbert: false }),
        colbert: has(TokenOutputs { sparse: false, colbert: true }),
    }
}

/// One side of the pairs: its texts, the request field that holds them (errors name it),
/// and a query instruction for it.
pub struct Side {
    pub texts: Vec<String>,
    pub param: &'static str,
    pub instruction: Option<String>,
    /// For a PyLate ColBERT model: whether this side holds the queries.
    pub is_query: Option<bool>,
}

pub struct PairScores {
    pub entry: Arc<ModelEntry>,
    /// Per pair, the weighted score.
    pub scores: Vec<f32>,
    /// Per pair, every score computed: those weighted, or with `all_parts` all the model has.
    pub parts: Vec<PartScores>,
    pub tokens: usize,
}

/// Scores each (index into `first`, index into `second`) pair with embedding `model`.
/// `all_parts` computes every score the model can give, for `return_scores`.
#[allow(clippy::too_many_arguments)]
pub async fn score_pairs(
    state: &SharedState,
    entry: &ModelEntry,
    first: Side,
    second: Side,
    pairs: &[(usize, usize)],
    mix: Mix,
    all_parts: bool,
    truncate: Option<bool>,
) -> Result<PairScores, ApiError> {
    inference::check_input_count(state, first.texts.len() + second.texts.len())?;
    let dense = has_dense(entry);
    let pylate = pylate::is_colbert(entry);
    if mix.dense > 0.0 && !dense {
        // The refusal that names what the model gives instead.
        inference::check_token_outputs(entry, TokenOutputs::default(), "model")?;
    }
    let wanted = mix.token_outputs();
    let outputs = if all_parts {
        let has = available(entry);
        TokenOutputs { sparse: wanted.sparse || has.sparse, colbert: wanted.colbert || has.colbert }
    } else {
        wanted
    };
    let model = entry.name.as_str();
    let side = |s: Side| async move {
        let opts =
            EmbedOptions { truncate, outputs, instruction: s.instruction, is_query: s.is_query, ..Default::default() };
        inference::embed(state, model, Inputs::Texts(s.texts), opts).await.map_err(|e| named_side(e, s.param))
    };
    let (a, b) = futures_util::future::try_join(side(first), side(second)).await?;
    let (da, db) = (unit_rows(&a), unit_rows(&b));
    let dim = a.dim.max(1);
    let mut scores = Vec::with_capacity(pairs.len());
    let mut parts = Vec::with_capacity(pairs.len());
    for &(i, j) in pairs {
        let cosine = || da[i * dim..(i + 1) * dim].iter().zip(&db[j * dim..(j + 1) * dim]).map(|(x, y)| x * y).sum();
        let mut p = PartScores { dense: dense.then(cosine), ..Default::default() };
        if let (Some(ta), Some(tb)) = (&a.token_rows, &b.token_rows) {
            if outputs.sparse {
                p.sparse = Some(lexical_match(&ta.sparse[i], &tb.sparse[j]));
            }
            if outputs.colbert {
                p.colbert = Some(if pylate {
                    pylate::max_sim_sum(&ta.colbert[i], &tb.colbert[j], ta.colbert_dim)
                } else {
                    max_sim(&ta.colbert[i], &tb.colbert[j], ta.colbert_dim)
                });
            }
        }
        if (outputs.sparse && p.sparse.is_none()) || (outputs.colbert && p.colbert.is_none()) {
            return Err(ApiError::internal("the worker sent no per-token outputs"));
        }
        scores.push(mix.combine(p));
        parts.push(p);
    }
    Ok(PairScores { entry: a.entry.clone(), scores, parts, tokens: a.tokens + b.tokens })
}

/// The dense rows made unit length: the cosine whatever the model's pipeline does.
fn unit_rows(out: &Embedded) -> Vec<f32> {
    let mut rows = out.data.clone();
    encode::normalize_rows(&mut rows, out.dim.max(1));
    rows
}

/// An embed error about `input` N, renamed to the side it came from (`text_2` text N).
pub fn named_side(mut e: ApiError, param: &'static str) -> ApiError {
    if e.param.as_deref() == Some("input") {
        e.param = Some(param.to_owned());
        if let Some(rest) = e.message.strip_prefix("input ") {
            e.message = format!("`{param}` text {rest}");
        }
    }
    e
}

/// FlagEmbedding's `compute_lexical_matching_score`: over the token ids both texts have,
/// the sum of the products of their weights. Both lists are ascending by id.
fn lexical_match(a: &[(u32, f32)], b: &[(u32, f32)]) -> f32 {
    let (mut i, mut j, mut sum) = (0, 0, 0.0f32);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                sum += a[i].1 * b[j].1;
                i += 1;
                j += 1;
            }
        }
    }
    sum
}

/// FlagEmbedding's `colbert_score`: for each query token vector, the largest dot product
/// with a document token vector; their mean over the query tokens.
pub fn max_sim(query: &[f32], document: &[f32], dim: usize) -> f32 {
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
    use super::{lexical_match, max_sim, Mix, PartScores};

    #[test]
    fn max_sim_averages_each_query_tokens_best_match() {
        // Query tokens (1,0) and (0,1); document tokens (1,0) and (0.6,0.8).
        let q = [1.0, 0.0, 0.0, 1.0];
        let d = [1.0, 0.0, 0.6, 0.8];
        assert!((max_sim(&q, &d, 2) - (1.0 + 0.8) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn lexical_match_sums_products_over_shared_ids() {
        let a = [(3, 0.5), (7, 2.0), (9, 1.0)];
        let b = [(1, 4.0), (7, 0.25), (9, 3.0), (12, 1.0)];
        assert!((lexical_match(&a, &b) - (2.0 * 0.25 + 1.0 * 3.0)).abs() < 1e-6);
        assert_eq!(lexical_match(&a, &[]), 0.0);
    }

    #[test]
    fn combine_is_the_weighted_mean_of_the_parts() {
        let mix = Mix { dense: 0.4, sparse: 0.2, colbert: 0.4 };
        let p = PartScores { dense: Some(0.9), sparse: Some(4.0), colbert: Some(0.8) };
        let want = (0.8 * 0.4 + 4.0 * 0.2 + 0.9 * 0.4) / 1.0;
        assert!((mix.combine(p) - want).abs() < 1e-6);
        let p = PartScores { dense: Some(0.5), ..Default::default() };
        assert_eq!(Mix::DENSE.combine(p), 0.5);
    }
}
