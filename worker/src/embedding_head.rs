//! The sentence-transformers modules after the transformer, for an embedding model:
//! pooling, then each `Dense` module (`activation(x · Wᵀ + b)`, weights in the module's
//! own folder, e.g. EmbeddingGemma's `2_Dense` and `3_Dense`, LaBSE's `2_Dense` with tanh),
//! then `Normalize`, in the order `modules.json` lists them (`protocol::st_pipeline`, which
//! refuses anything else).

use std::path::Path;

use anyhow::{Context, Result};
use mlx_rs::{ops, Array};
use mlx_serve_protocol::model_dir::{DenseActivation, ModelFacts, Pooling, PoolingMode};
use mlx_serve_protocol::{span_pooling, Pool};

use crate::layers::Linear;
use crate::packing::Packing;
use crate::pooling;
use crate::weights::{LoadPolicy, StorageConfig, Weights};

/// One `Dense` module.
pub(crate) struct DenseLayer {
    linear: Linear,
    activation: DenseActivation,
}

impl DenseLayer {
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        let y = self.linear.forward(x)?;
        Ok(match self.activation {
            DenseActivation::Identity => y,
            DenseActivation::Tanh => ops::tanh(&y)?,
            DenseActivation::Relu => mlx_rs::nn::relu(&y)?,
            // torch.nn.GELU's default is the exact (erf) form.
            DenseActivation::Gelu => mlx_rs::nn::gelu(&y)?,
            DenseActivation::Sigmoid => ops::sigmoid(&y)?,
            DenseActivation::Silu => mlx_rs::nn::silu(&y)?,
        })
    }
}

/// The `Dense` modules `facts` list, weights read from their folders under `dir` in the
/// compute dtype of `policy`; one without a folder (a Stanford ColBERT checkpoint's
/// projection) takes `linear` from the model's own weights `model`.
pub(crate) fn load_dense(
    facts: &ModelFacts,
    dir: &Path,
    policy: LoadPolicy,
    model: &mut Weights,
) -> Result<Vec<DenseLayer>> {
    let mut dense = Vec::with_capacity(facts.dense.len());
    for d in &facts.dense {
        let (i, o) = (d.in_features as i32, d.out_features as i32);
        let linear = if d.path.is_empty() {
            model.linear("linear", i, o, d.bias).context("the ColBERT projection (linear.weight)")?
        } else {
            let mut w = Weights::load(&dir.join(&d.path), &StorageConfig::default(), no_rename, policy)
                .with_context(|| format!("Dense module {}", d.path))?;
            w.linear("linear", i, o, d.bias).with_context(|| format!("Dense module {}", d.path))?
        };
        dense.push(DenseLayer { linear, activation: d.activation });
    }
    Ok(dense)
}

/// Pooling → Dense* → Normalize.
pub struct EmbeddingHead {
    mode: PoolingMode,
    dense: Vec<DenseLayer>,
    normalize: bool,
}

fn no_rename(name: &str) -> String {
    name.to_owned()
}

impl EmbeddingHead {
    /// The head `facts` describe; Dense weights are read from their module folders under
    /// `dir` in the compute dtype of `policy`.
    pub fn load(facts: &ModelFacts, dir: &Path, policy: LoadPolicy, model: &mut Weights) -> Result<EmbeddingHead> {
        let Pooling::Embed(mode) = facts.pooling else {
            anyhow::bail!("{} is a scoring head, not an embedding pooling", facts.pooling.as_str());
        };
        Ok(EmbeddingHead { mode, dense: load_dense(facts, dir, policy, model)?, normalize: facts.normalize })
    }

    /// `[batch, output_dim]` float32 rows from final states `[total, hidden]`.
    pub fn apply(&self, hidden: &Array, packing: &Packing) -> Result<Array> {
        self.finish(pooling::pool(hidden, self.mode, packing)?)
    }

    /// One float32 row per pool (`EmbedPooled`, late chunking): a whole sequence with the
    /// model's pooling, or row ranges with `span_pooling` of it; then Dense and Normalize
    /// as for any input.
    pub fn apply_pools(&self, hidden: &Array, packing: &Packing, pools: &[Pool]) -> Result<Array> {
        let mut seqs = Vec::new();
        let mut groups = Vec::new();
        // Each pool's row: (is a span, its index among its kind); the rows are computed
        // as [sequence rows; span rows] and put back in the pools' order.
        let mut at = Vec::with_capacity(pools.len());
        for p in pools {
            match p {
                Pool::Sequence(i) => {
                    at.push((false, seqs.len()));
                    seqs.push(*i as i32);
                }
                Pool::Rows(r) => {
                    at.push((true, groups.len()));
                    groups.push(r.clone());
                }
            }
        }
        let mut parts = Vec::new();
        if !seqs.is_empty() {
            let all = pooling::pool(hidden, self.mode, packing)?;
            parts.push(all.take_axis(Array::from_slice(&seqs, &[seqs.len() as i32]), 0)?);
        }
        if !groups.is_empty() {
            parts.push(pooling::pool_ranges(hidden, span_pooling(self.mode), &groups)?);
        }
        let order: Vec<i32> =
            at.iter().map(|&(span, k)| if span { (seqs.len() + k) as i32 } else { k as i32 }).collect();
        let x = ops::concatenate(&parts, 0)?.take_axis(Array::from_slice(&order, &[order.len() as i32]), 0)?;
        self.finish(x)
    }

    /// Dense*, then Normalize, on pooled rows.
    fn finish(&self, mut x: Array) -> Result<Array> {
        for layer in &self.dense {
            x = layer.forward(&x)?;
        }
        let x = x.as_dtype(mlx_rs::Dtype::Float32)?;
        if self.normalize {
            pooling::l2_normalize(&x)
        } else {
            Ok(x)
        }
    }
}
