//! How close a quantized model is to its original: both run on the same token set
//! (`mlx_serve_protocol::quantization::EvalSet`), one after the other, and their outputs
//! are compared.
//!
//! Both load with float32 activations (`--compute-dtype float32`), so on a GPU, where the
//! copy runs through quantized matmuls, the numbers measure the weights' quantization and
//! not half-precision arithmetic. Embedding models: cosine of every vector to the
//! original's, and a retrieval task (each query ranks every document by cosine) scored
//! against the original's ranking. Rerankers: score differences, and each query's document
//! ranking the same way. The definitions are on [`Quality`]'s fields.

use std::path::Path;

use anyhow::{bail, Result};
use mlx_rs::Dtype;
use mlx_serve_protocol::quantization::{EvalSet, Quality, Sequence};
use mlx_serve_protocol::{ModelKind, TokenBatch};

use crate::engine::{Engine, Options};

/// Sequences per forward pass.
const BATCH: usize = 16;
/// Ranking depth of recall@k and nDCG@k.
const K: usize = 10;

/// What one model produced for a set.
struct Outputs {
    /// Embedding models: texts, then queries, then documents.
    vectors: Vec<Vec<f32>>,
    /// Rerankers: each group's scores.
    scores: Vec<Vec<f32>>,
}

fn run_batches(
    engine: &mut Engine,
    seqs: &[Sequence],
    mut f: impl FnMut(&mut Engine, &TokenBatch) -> Result<()>,
) -> Result<()> {
    for chunk in seqs.chunks(BATCH) {
        let mut batch = TokenBatch::new();
        for s in chunk {
            batch.push(&s.ids, &s.type_ids);
        }
        engine.validate(&batch).map_err(anyhow::Error::msg)?;
        f(engine, &batch)?;
    }
    Ok(())
}

fn outputs(dir: &Path, set: &EvalSet) -> Result<Outputs> {
    let opts = Options { compute_dtype: Some(Dtype::Float32), ..Options::default() };
    let mut engine = Engine::load(dir, &opts)?;
    let mut out = Outputs { vectors: Vec::new(), scores: Vec::new() };
    match engine.kind() {
        ModelKind::Embedding => {
            for part in [&set.texts, &set.queries, &set.documents] {
                run_batches(&mut engine, part, |e, b| {
                    let (dim, flat) = e.embed(b, None)?;
                    out.vectors.extend(flat.chunks(dim as usize).map(<[f32]>::to_vec));
                    Ok(())
                })?;
            }
        }
        ModelKind::Reranker => {
            for group in &set.pair_groups {
                let mut scores = Vec::new();
                run_batches(&mut engine, group, |e, b| {
                    scores.extend(e.score(b, None)?);
                    Ok(())
                })?;
                out.scores.push(scores);
            }
        }
        // The quality check measures vectors and scores; a classifier's labels are not measured.
        ModelKind::Classifier => bail!("quantizing a classifier is not supported"),
    }
    Ok(out)
}

/// Runs `reference` and `candidate` on `set` and compares them.
pub fn measure(reference: &Path, candidate: &Path, set: &EvalSet) -> Result<Quality> {
    let full = outputs(reference, set)?;
    let quant = outputs(candidate, set)?;
    if !full.vectors.is_empty() {
        let (t, q) = (set.texts.len(), set.queries.len());
        Ok(embedding_quality(&full.vectors, &quant.vectors, t..t + q, t + q..full.vectors.len()))
    } else if !full.scores.is_empty() {
        Ok(reranker_quality(&full.scores, &quant.scores))
    } else {
        bail!("the evaluation set has nothing for this kind of model")
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

/// Indices of `scores`, best first (ties by index).
fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

/// (recall@k, nDCG@k) of `got` against `want` (both rankings of the same documents), with
/// `want`'s top k as graded relevance: k for its first document down to 1 for its k-th.
pub fn ranking_agreement(want: &[usize], got: &[usize]) -> (f64, f64) {
    let k = K.min(want.len());
    if k == 0 {
        return (1.0, 1.0);
    }
    let gain = |doc: usize| want[..k].iter().position(|&d| d == doc).map_or(0.0, |r| (k - r) as f64);
    let discount = |i: usize| (i as f64 + 2.0).log2();
    let hits = got[..k].iter().filter(|d| want[..k].contains(d)).count();
    let dcg: f64 = got[..k].iter().enumerate().map(|(i, &d)| gain(d) / discount(i)).sum();
    let ideal: f64 = (0..k).map(|i| (k - i) as f64 / discount(i)).sum();
    (hits as f64 / k as f64, dcg / ideal)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn embedding_quality(
    full: &[Vec<f32>],
    quant: &[Vec<f32>],
    queries: std::ops::Range<usize>,
    docs: std::ops::Range<usize>,
) -> Quality {
    let cos: Vec<f64> = full.iter().zip(quant).map(|(a, b)| cosine(a, b)).collect();
    let (mut recall, mut ndcg) = (Vec::new(), Vec::new());
    for q in queries.clone() {
        let sims = |v: &[Vec<f32>]| -> Vec<f64> { docs.clone().map(|d| cosine(&v[q], &v[d])).collect() };
        let (r, n) = ranking_agreement(&ranking(&sims(full)), &ranking(&sims(quant)));
        recall.push(r);
        ndcg.push(n);
    }
    Quality {
        sequences: cos.len(),
        mean_cosine: Some(mean(&cos)),
        min_cosine: Some(cos.iter().cloned().fold(1.0, f64::min)),
        mean_score_diff: None,
        max_score_diff: None,
        queries: queries.len(),
        documents: docs.len(),
        recall_at_10: if recall.is_empty() { 1.0 } else { mean(&recall) },
        ndcg_at_10: if ndcg.is_empty() { 1.0 } else { mean(&ndcg) },
    }
}

fn reranker_quality(full: &[Vec<f32>], quant: &[Vec<f32>]) -> Quality {
    let diffs: Vec<f64> =
        full.iter().zip(quant).flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs())).collect();
    let (mut recall, mut ndcg) = (Vec::new(), Vec::new());
    for (a, b) in full.iter().zip(quant) {
        let as64 = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<_>>();
        let (r, n) = ranking_agreement(&ranking(&as64(a)), &ranking(&as64(b)));
        recall.push(r);
        ndcg.push(n);
    }
    Quality {
        sequences: diffs.len(),
        mean_cosine: None,
        min_cosine: None,
        mean_score_diff: Some(mean(&diffs)),
        max_score_diff: Some(diffs.iter().cloned().fold(0.0, f64::max)),
        queries: full.len(),
        documents: full.iter().map(Vec::len).max().unwrap_or(0),
        recall_at_10: mean(&recall),
        ndcg_at_10: mean(&ndcg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_of_rankings() {
        let want: Vec<usize> = (0..20).collect();
        assert_eq!(ranking_agreement(&want, &want), (1.0, 1.0));
        // The first two swapped: every document still in the top 10, nDCG a little lower.
        let mut swapped = want.clone();
        swapped.swap(0, 1);
        let (r, n) = ranking_agreement(&want, &swapped);
        assert_eq!(r, 1.0);
        assert!(n < 1.0 && n > 0.95, "{n}");
        // The full model's 10th document replaced by its 11th: recall 0.9.
        let mut tail = want.clone();
        tail.swap(9, 10);
        assert_eq!(ranking_agreement(&want, &tail).0, 0.9);
        // Reversed: nothing of the top 10 left.
        let rev: Vec<usize> = want.iter().rev().cloned().collect();
        assert_eq!(ranking_agreement(&want, &rev), (0.0, 0.0));
        assert_eq!(ranking(&[0.1, 0.9, 0.5, 0.9]), vec![1, 3, 2, 0]);
    }
}
