//! A SPLADE model's head (`mlx_serve_protocol::splade`): the masked-language-model head of
//! its family, then `SpladePooling` and `max_active_dims`, as sentence-transformers'
//! `SparseEncoder` computes them (sparse_encoder/modules/splade_pooling.py, 6.2).
//!
//! The MLM head is the one transformers' `*ForMaskedLM` class of the family defines
//! (`MlmLayout`, given by the family's file): `LayerNorm(act(transform(h)))`, then the
//! decoder `· Wᵀ + b` over the vocabulary, `W` being the word embeddings when the model ties
//! them (`tie_word_embeddings`, true by default) and its own matrix otherwise.
//!
//! The logits are `[tokens, vocab]` (30522 wide for BERT's vocabulary), so they are computed
//! and pooled a group of sequences at a time; only `[batch, vocab]` pooled rows remain.

use anyhow::{bail, Result};
use mlx_rs::fast::layer_norm;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array, Dtype};
use mlx_serve_protocol::splade::{Splade, SpladeActivation, SpladeStrategy};

use crate::layers::Linear;
use crate::models::{Activation, Kernels};
use crate::packing::Packing;
use crate::weights::Weights;

/// Where a family's MLM head lives in its (sanitized) checkpoint, and what it computes.
pub struct MlmLayout {
    /// The `hidden → hidden` transform (`cls.predictions.transform.dense`, `vocab_transform`).
    pub transform: &'static str,
    pub act: Activation,
    /// The LayerNorm after the activation, and its eps.
    pub norm: &'static str,
    pub eps: f32,
    /// The decoder's own weight prefix (`….weight` `[vocab, hidden]`), read when not tied.
    pub decoder: &'static str,
    /// The decoder's bias, by the names checkpoints store it under, first found wins.
    pub bias: &'static [&'static str],
    /// The word-embedding table the decoder shares when tied.
    pub word_embeddings: &'static str,
    pub tied: bool,
    pub hidden: i32,
    pub vocab: i32,
}

/// Rows of logits computed at once: bounds the `[rows, vocab]` intermediate (64 MiB in
/// float32 for BERT's 30522-token vocabulary).
const ROWS_PER_GROUP: i32 = 512;

pub struct SpladeHead {
    transform: Linear,
    act: Activation,
    norm_weight: Array,
    norm_bias: Array,
    eps: f32,
    decoder: Linear,
    spec: Splade,
}

impl SpladeHead {
    /// Loads the head. Call before the family's `load`: a tied decoder reads the word
    /// embeddings, which the body then takes.
    pub fn load(layout: &MlmLayout, spec: Splade, w: &mut Weights) -> Result<SpladeHead> {
        let (hidden, vocab) = (layout.hidden, layout.vocab);
        let transform = w.linear(layout.transform, hidden, hidden, true)?;
        let norm_weight = w.take(&format!("{}.weight", layout.norm), &[hidden])?;
        let norm_bias = w.take(&format!("{}.bias", layout.norm), &[hidden])?;
        let Some(bias_name) = layout.bias.iter().find(|b| w.has(b)) else {
            bail!("the masked-language-model head has no decoder bias (looked for {:?})", layout.bias);
        };
        let bias = w.take(bias_name, &[vocab])?;
        let weight = if layout.tied {
            if w.has(&format!("{}.scales", layout.word_embeddings)) {
                bail!("a quantized SPLADE model is not supported (its decoder is the quantized word embeddings)");
            }
            w.shared(&format!("{}.weight", layout.word_embeddings), &[vocab, hidden])?
        } else {
            w.take(&format!("{}.weight", layout.decoder), &[vocab, hidden])?
        };
        Ok(SpladeHead {
            transform,
            act: layout.act,
            norm_weight,
            norm_bias,
            eps: layout.eps,
            decoder: Linear::Dense { w_t: weight.t(), bias: Some(bias) },
            spec,
        })
    }

    /// `SpladePooling` of final states `[total, hidden]`: float32 `[batch, vocab]`.
    pub fn pooled(&self, hidden: &Array, packing: &Packing) -> Result<Array> {
        self.pooled_in_groups(hidden, packing, ROWS_PER_GROUP)
    }

    /// [`pooled`](Self::pooled), the logits computed `group_rows` rows at a time.
    fn pooled_in_groups(&self, hidden: &Array, packing: &Packing, group_rows: i32) -> Result<Array> {
        let mut rows = Vec::with_capacity(packing.len());
        let mut first = 0;
        while first < packing.len() {
            // Whole sequences, at least one, up to ROWS_PER_GROUP rows.
            let start = packing.offsets[first];
            let mut end = first + 1;
            while end < packing.len() && packing.offsets[end + 1] - start <= group_rows {
                end += 1;
            }
            let weights = self.token_weights(&hidden.index(start..packing.offsets[end]))?;
            for i in first..end {
                let seq = weights.index(packing.offsets[i] - start..packing.offsets[i + 1] - start);
                rows.push(match self.spec.strategy {
                    SpladeStrategy::Max => seq.max_axis(0, true)?,
                    SpladeStrategy::Sum => seq.sum_axis(0, true)?,
                });
            }
            first = end;
        }
        Ok(ops::concatenate(&rows, 0)?)
    }

    /// `log1p(relu(logits))` (twice `log1p` for "log1p_relu"), float32 `[rows, vocab]`.
    fn token_weights(&self, hidden: &Array) -> Result<Array> {
        let h = self.act.apply_biased(Kernels::Mlx, &self.transform.forward(hidden)?, None)?;
        let h = layer_norm(&h, &self.norm_weight, &self.norm_bias, self.eps)?;
        let logits = self.decoder.forward(&h)?.as_dtype(Dtype::Float32)?;
        let x = mlx_rs::nn::relu(&logits)?.log1p()?;
        Ok(match self.spec.activation {
            SpladeActivation::Relu => x,
            SpladeActivation::Log1pRelu => x.log1p()?,
        })
    }

    /// Per row of `pooled` (`[batch, vocab]`, row-major), the non-zero weights ascending by
    /// id; with `max_active_dims` only that many largest (ties: the lower id).
    pub fn sparse(&self, pooled: &[f32], vocab: usize) -> Vec<Vec<(u32, f32)>> {
        pooled
            .chunks(vocab.max(1))
            .map(|row| {
                let mut active: Vec<(u32, f32)> =
                    row.iter().enumerate().filter(|(_, &x)| x > 0.0).map(|(i, &x)| (i as u32, x)).collect();
                if let Some(k) = self.spec.max_active_dims.map(|k| k as usize).filter(|&k| k < active.len()) {
                    active.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    active.truncate(k);
                    active.sort_by_key(|e| e.0);
                }
                active
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_serve_protocol::splade::SpladeStrategy;

    fn head(strategy: SpladeStrategy, activation: SpladeActivation, max_active_dims: Option<u32>) -> SpladeHead {
        // Identity transform, identity-ish norm, decoder = identity over a 3-token vocabulary.
        let eye = Array::from_slice(&[1f32, 0., 0., 0., 1., 0., 0., 0., 1.], &[3, 3]);
        SpladeHead {
            transform: Linear::Dense { w_t: eye.clone(), bias: None },
            act: Activation::Relu,
            norm_weight: Array::from_slice(&[1f32, 1., 1.], &[3]),
            norm_bias: Array::from_slice(&[0f32, 0., 0.], &[3]),
            eps: 1e-5,
            decoder: Linear::Dense { w_t: eye, bias: Some(Array::from_slice(&[0f32, 0., 0.], &[3])) },
            spec: Splade { strategy, activation, max_active_dims, dimension: None },
        }
    }

    #[test]
    fn sequences_pool_alone_and_max_active_dims_keeps_the_largest() {
        let h = head(SpladeStrategy::Max, SpladeActivation::Relu, Some(1));
        let rows = vec![0.0, 0.5, 0.7, 0.2, 0.0, 0.1, 0.0, 0.0, 0.0];
        assert_eq!(h.sparse(&rows, 3), vec![vec![(2, 0.7)], vec![(0, 0.2)], vec![]]);
        let all = head(SpladeStrategy::Max, SpladeActivation::Relu, None);
        assert_eq!(all.sparse(&rows, 3)[0], vec![(1, 0.5), (2, 0.7)]);
        // Two sequences [2 rows, 1 row]: the pooled rows are each sequence's own.
        let hidden = Array::from_slice(&[1f32, -2., 3., 2., 1., -1., -3., 4., 0.5], &[3, 3]);
        let packing = Packing::from_lengths([2, 1]);
        let pooled = all.pooled(&hidden, &packing).unwrap();
        assert_eq!(pooled.shape(), &[2, 3]);
        let sum = head(SpladeStrategy::Sum, SpladeActivation::Log1pRelu, None).pooled(&hidden, &packing).unwrap();
        assert_eq!(sum.shape(), &[2, 3]);
        let (p, s) = (pooled.as_slice::<f32>(), sum.as_slice::<f32>());
        assert!(p.iter().all(|&x| x >= 0.0) && s.iter().all(|&x| x >= 0.0));
        // Row 2 of `hidden` only feeds sequence 1; its negative first column gives 0 there.
        assert_eq!(p[3], 0.0);
        // Logits computed one sequence at a time pool to the same rows.
        for h in [&all, &head(SpladeStrategy::Sum, SpladeActivation::Log1pRelu, None)] {
            let whole = h.pooled(&hidden, &packing).unwrap();
            let grouped = h.pooled_in_groups(&hidden, &packing, 1).unwrap();
            assert_eq!(whole.as_slice::<f32>(), grouped.as_slice::<f32>());
        }
    }
}
