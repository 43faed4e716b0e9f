//! A PyLate ColBERT model's head (`protocol::pylate`, docs/hybrid-search.md): every token's
//! final state through the model's Dense projections, L2-normalized, as
//! `pylate.models.ColBERT.encode` computes them (pylate 1.6, `models/colbert.py`).
//!
//! The supervisor sends each sequence as PyLate's `tokenize` builds it, and its marker token
//! (right after [CLS]) says what it is:
//! - a query keeps every token's vector; with query expansion and without
//!   `attend_to_expansion_tokens`, its trailing [MASK] tokens are not attended to (their
//!   attention-mask entries are 0 in PyLate) — [`ColbertHead::key_limits`];
//! - a document leaves out the vectors of skiplist ids (`skiplist_mask`).

use anyhow::{bail, Result};
use mlx_rs::{Array, Dtype};
use mlx_serve_protocol::model_dir::{Colbert, ModelFacts};
use mlx_serve_protocol::TokenBatch;

use crate::embedding_head::{load_dense, DenseLayer};
use crate::pooling::l2_normalize;
use crate::weights::{LoadPolicy, Weights};

pub struct ColbertHead {
    dense: Vec<DenseLayer>,
    spec: Colbert,
    dim: i32,
}

impl ColbertHead {
    /// The head of `facts`; a Stanford checkpoint's projection comes from `model`, the
    /// model's own weights.
    pub fn load(
        facts: &ModelFacts,
        dir: &std::path::Path,
        policy: LoadPolicy,
        model: &mut Weights,
    ) -> Result<ColbertHead> {
        let Some(spec) = facts.colbert.clone() else { bail!("not a PyLate ColBERT model") };
        Ok(ColbertHead { dense: load_dense(facts, dir, policy, model)?, spec, dim: facts.output_dim as i32 })
    }

    pub fn dim(&self) -> i32 {
        self.dim
    }

    /// Whether sequence `seq` is a query (its marker), or an error when it has neither
    /// marker: token ids not built by the supervisor's PyLate recipe.
    fn is_query(&self, seq: &[u32]) -> Result<bool> {
        match seq.get(1) {
            Some(&id) if id == self.spec.query_prefix_id => Ok(true),
            Some(&id) if id == self.spec.document_prefix_id => Ok(false),
            _ => bail!("a sequence without PyLate's query or document marker after its first token"),
        }
    }

    /// Per sequence, the tokens attended to, when some query's expansion tokens are not:
    /// the query without its trailing [MASK] run (PyLate pads after [SEP]).
    pub fn key_limits(&self, batch: &TokenBatch) -> Option<Vec<i32>> {
        if !self.spec.do_query_expansion || self.spec.attend_to_expansion_tokens {
            return None;
        }
        let limits: Vec<i32> = (0..batch.len())
            .map(|i| {
                let seq = batch.sequence(i);
                let n = seq.len();
                if seq.get(1) != Some(&self.spec.query_prefix_id) {
                    return n as i32;
                }
                let pad = seq.iter().rev().take_while(|&&t| t == self.spec.mask_id).count();
                (n - pad).max(1) as i32
            })
            .collect();
        let lengths = batch.offsets.windows(2).map(|w| (w[1] - w[0]) as i32);
        limits.iter().zip(lengths).any(|(&k, n)| k < n).then_some(limits)
    }

    /// Rows of final states projected and normalized, float32 `[rows, dim]`.
    pub fn project(&self, hidden: &Array) -> Result<Array> {
        let mut x = hidden.clone();
        for layer in &self.dense {
            x = layer.forward(&x)?;
        }
        l2_normalize(&x.as_dtype(Dtype::Float32)?)
    }

    /// Per sequence, its kept tokens' vectors, float32 `[kept × dim]` row-major.
    pub fn vectors(&self, hidden: &Array, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::new();
        let mut counts = Vec::with_capacity(batch.len());
        for i in 0..batch.len() {
            let seq = batch.sequence(i);
            let query = self.is_query(seq)?;
            let first = batch.offsets[i] as i32;
            let before = rows.len();
            for (j, id) in seq.iter().enumerate() {
                if query || self.spec.skiplist_ids.binary_search(id).is_err() {
                    rows.push(first + j as i32);
                }
            }
            counts.push(rows.len() - before);
        }
        let flat = if rows.is_empty() {
            Vec::new()
        } else {
            let x = self.project(&hidden.take_axis(Array::from_slice(&rows, &[rows.len() as i32]), 0)?)?;
            x.eval()?;
            x.as_slice::<f32>().to_vec()
        };
        let dim = self.dim as usize;
        let mut at = 0;
        Ok(counts
            .into_iter()
            .map(|n| {
                let v = flat[at * dim..(at + n) * dim].to_vec();
                at += n;
                v
            })
            .collect())
    }
}
