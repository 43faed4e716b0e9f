//! The sentence-transformers modules after the transformer, for an embedding model:
//! pooling, then each `Dense` module (`activation(x · Wᵀ + b)`, weights in the module's
//! own folder, e.g. EmbeddingGemma's `2_Dense` and `3_Dense`, LaBSE's `2_Dense` with tanh),
//! then `Normalize`, in the order `modules.json` lists them (`protocol::st_pipeline`, which
//! refuses anything else).

use std::path::Path;

use anyhow::{Context, Result};
use mlx_rs::{ops, Array};
use mlx_serve_protocol::model_dir::{DenseActivation, ModelFacts, Pooling, PoolingMode};

use crate::layers::Linear;
use crate::packing::Packing;
use crate::pooling;
use crate::weights::{LoadPolicy, StorageConfig, Weights};

/// One `Dense` module.
struct DenseLayer {
    linear: Linear,
    activation: DenseActivation,
}

impl DenseLayer {
    fn forward(&self, x: &Array) -> Result<Array> {
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
    pub fn load(facts: &ModelFacts, dir: &Path, policy: LoadPolicy) -> Result<EmbeddingHead> {
        let Pooling::Embed(mode) = facts.pooling else {
            anyhow::bail!("{} is a scoring head, not an embedding pooling", facts.pooling.as_str());
        };
        let mut dense = Vec::with_capacity(facts.dense.len());
        for d in &facts.dense {
            let mut w = Weights::load(&dir.join(&d.path), &StorageConfig::default(), no_rename, policy)
                .with_context(|| format!("Dense module {}", d.path))?;
            let linear = w
                .linear("linear", d.in_features as i32, d.out_features as i32, d.bias)
                .with_context(|| format!("Dense module {}", d.path))?;
            dense.push(DenseLayer { linear, activation: d.activation });
        }
        Ok(EmbeddingHead { mode, dense, normalize: facts.normalize })
    }

    /// `[batch, output_dim]` float32 rows from final states `[total, hidden]`.
    pub fn apply(&self, hidden: &Array, packing: &Packing) -> Result<Array> {
        let mut x = pooling::pool(hidden, self.mode, packing)?;
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
