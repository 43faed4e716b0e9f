//! PyLate ColBERT models on the API side (docs/hybrid-search.md, "ColBERT models"): a
//! request says whether its texts are queries or documents (`is_query`, PyLate's
//! `encode(is_query=...)`), each text's tokens are laid out as PyLate's `ColBERT.tokenize`
//! lays them out (pylate 1.6, `models/colbert.py`), and a query and a document score by
//! PyLate's MaxSim (`scores/colbert.py`, `colbert_scores`).

use mlx_serve_protocol::model_dir::{Colbert, Pooling};
use mlx_serve_protocol::TokenOutputs;

use super::ApiError;
use crate::runner::ModelEntry;
use crate::tokenize::Tokens;

/// Whether `entry` is a PyLate ColBERT model.
pub fn is_colbert(entry: &ModelEntry) -> bool {
    entry.facts.pooling == Pooling::Colbert
}

/// A PyLate model gives token vectors only: a request for a dense vector or sparse
/// weights is refused, naming what it does give.
pub fn check_outputs(entry: &ModelEntry, outputs: TokenOutputs, param: &str) -> Result<(), ApiError> {
    let what = if outputs.sparse {
        "sparse (lexical) weights"
    } else if !outputs.colbert {
        "a dense embedding"
    } else {
        return Ok(());
    };
    Err(ApiError::unsupported_output(
        param,
        format!(
            "model `{}` is a PyLate ColBERT model: it gives one vector per token only, not {what}; ask for them \
             with `\"return_colbert_vecs\": true` and `is_query` on /v1/embeddings or POST /embed_all, or rank \
             with /v1/rerank",
            entry.name
        ),
    ))
}

/// The request's `is_query` checked against the model: required by a PyLate model (its
/// queries and documents are encoded differently), refused by any other.
pub fn check_is_query(entry: &ModelEntry, is_query: Option<bool>) -> Result<Option<bool>, ApiError> {
    match (is_colbert(entry), is_query) {
        (true, Some(q)) => Ok(Some(q)),
        (true, None) => Err(ApiError::invalid_param(
            "is_query",
            format!(
                "model `{}` is a PyLate ColBERT model, which encodes queries and documents differently: send \
                 `\"is_query\": true` for queries or `false` for documents",
                entry.name
            ),
        )),
        // An inference-free sparse encoder's route (`inference_free.rs`).
        (false, Some(q)) if entry.facts.static_query.is_some() => Ok(Some(q)),
        (false, Some(_)) => Err(ApiError::invalid_param(
            "is_query",
            format!(
                "`is_query` applies to PyLate ColBERT models and inference-free sparse encoders; model `{}` is \
                 neither",
                entry.name
            ),
        )),
        (false, None) => Ok(None),
    }
}

/// `ColBERT.tokenize`: the text's tokens ([CLS] … [SEP]) cut to `length - 1` with the
/// closing token kept (the tokenizer's truncation to `max_seq_length = length - 1`), the
/// marker inserted after the first token (`insert_prefix_token`), and with query expansion
/// a query padded with [MASK] to `length` (`padding="max_length"`; pad token = mask).
pub fn lay_out(spec: &Colbert, t: Tokens, is_query: bool) -> Tokens {
    let (length, marker) = if is_query {
        (spec.query_length as usize, spec.query_prefix_id)
    } else {
        (spec.document_length as usize, spec.document_prefix_id)
    };
    let keep = length - 1;
    let cut = |v: Vec<u32>| -> Vec<u32> {
        if v.len() <= keep {
            return v;
        }
        let last = v[v.len() - 1];
        let mut head = v[..keep - 1].to_vec();
        head.push(last);
        head
    };
    let mut ids = cut(t.ids);
    ids.insert(1.min(ids.len()), marker);
    let mut type_ids = if t.type_ids.is_empty() {
        Vec::new()
    } else {
        let mut ty: Vec<u32> = cut(t.type_ids.into_iter().map(u32::from).collect());
        ty.insert(1.min(ty.len()), 0);
        ty.into_iter().map(|x| x as u8).collect()
    };
    if is_query && spec.do_query_expansion && ids.len() < length {
        if !type_ids.is_empty() {
            type_ids.resize(length, 0);
        }
        ids.resize(length, spec.mask_id);
    }
    Tokens { ids, type_ids }
}

/// PyLate's `colbert_scores` for one query and one document: for each query token vector
/// the largest dot product with a document token vector, summed over the query's tokens
/// (not averaged, unlike bge-m3's ColBERT score).
pub fn max_sim_sum(query: &[f32], document: &[f32], dim: usize) -> f32 {
    let dim = dim.max(1);
    query
        .chunks_exact(dim)
        .map(|q| {
            document
                .chunks_exact(dim)
                .map(|d| q.iter().zip(d).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .filter(|m| m.is_finite())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(expand: bool) -> Colbert {
        Colbert {
            query_prefix_id: 100,
            document_prefix_id: 101,
            query_length: 8,
            document_length: 6,
            do_query_expansion: expand,
            attend_to_expansion_tokens: false,
            mask_id: 4,
            skiplist_ids: vec![],
        }
    }

    fn tokens(ids: &[u32]) -> Tokens {
        Tokens { ids: ids.to_vec(), type_ids: vec![] }
    }

    #[test]
    fn marker_after_cls_cut_keeps_sep_and_queries_expand() {
        // [CLS]=2 … [SEP]=3
        let d = lay_out(&spec(true), tokens(&[2, 10, 11, 12, 13, 14, 15, 3]), false);
        assert_eq!(d.ids, [2, 101, 10, 11, 12, 3]);
        let q = lay_out(&spec(true), tokens(&[2, 10, 3]), true);
        assert_eq!(q.ids, [2, 100, 10, 3, 4, 4, 4, 4]);
        let q = lay_out(&spec(false), tokens(&[2, 10, 3]), true);
        assert_eq!(q.ids, [2, 100, 10, 3]);
        let long = lay_out(&spec(true), tokens(&[2, 10, 11, 12, 13, 14, 15, 16, 17, 3]), true);
        assert_eq!(long.ids, [2, 100, 10, 11, 12, 13, 14, 3]);
    }

    #[test]
    fn max_sim_sums_each_query_tokens_best_match() {
        let q = [1.0, 0.0, 0.0, 1.0];
        let d = [1.0, 0.0, 0.6, 0.8];
        assert!((max_sim_sum(&q, &d, 2) - 1.8).abs() < 1e-6);
    }
}
