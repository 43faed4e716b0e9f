//! NomicBERT's three feed-forwards, one per block: the gated MLP of nomic-embed-text v1 /
//! v1.5 (`down(act(gate(x)) · up(x))`, the custom code's `NomciBertGatedMLP`: `fc11` up,
//! `fc12` gate, `fc2` down), the plain MLP of nomic-embed-text-v2-moe's dense blocks
//! (`fc2(act(fc1(x)))`, the custom code's `Mlp`, taken for a non-gated
//! `activation_function`: contrastors `layers/block.py`, text-embeddings-inference
//! `models/nomic.rs` `NomicBertMLP`), and its mixture-of-experts blocks (`nomic_moe.rs`).

use anyhow::Result;
use mlx_rs::Array;

use super::nomic_config::{Dims, MlpKind};
use super::nomic_moe::MoeMlp;
use super::{Activation, Kernels};
use crate::layers::Linear;
use crate::weights::Weights;

pub enum FeedForward {
    /// up and gate fused in one GEMM (up first), then down.
    Gated {
        up_gate: Linear,
        down: Linear,
        inner: i32,
    },
    Plain {
        fc1: Linear,
        fc2: Linear,
    },
    Moe(MoeMlp),
}

impl FeedForward {
    /// Block `i`'s feed-forward (sanitized names: `layers.{i}.mlp.*`).
    pub fn load(w: &mut Weights, d: &Dims, i: i32) -> Result<FeedForward> {
        let (p, hidden, inner) = (format!("layers.{i}.mlp"), d.hidden, d.inner);
        if let Some(m) = d.moe.filter(|m| m.is_moe_layer(i)) {
            return Ok(FeedForward::Moe(MoeMlp::load(w, &p, m, hidden, inner)?));
        }
        let down = w.linear(&format!("{p}.down_proj"), inner, hidden, d.fc2_bias)?;
        Ok(match d.mlp {
            MlpKind::Plain => {
                FeedForward::Plain { fc1: w.linear(&format!("{p}.fc1"), hidden, inner, d.fc1_bias)?, fc2: down }
            }
            MlpKind::Gated => {
                let up_gate = if w.has(&format!("{p}.up_gate_proj.weight")) {
                    w.linear(&format!("{p}.up_gate_proj"), hidden, 2 * inner, d.fc1_bias)?
                } else {
                    let up = w.linear(&format!("{p}.up_proj"), hidden, inner, d.fc1_bias)?;
                    let gate = w.linear(&format!("{p}.gate_proj"), hidden, inner, d.fc1_bias)?;
                    Linear::concat(vec![up, gate])?
                };
                FeedForward::Gated { up_gate, down, inner }
            }
        })
    }

    /// The output before its last bias, and that bias (fused into the caller's add + norm).
    pub fn forward(&self, x: &Array, act: Activation, kernels: Kernels) -> Result<(Array, Option<&Array>)> {
        match self {
            FeedForward::Gated { up_gate, down, inner } => {
                let h = act.gated(kernels, &up_gate.forward(x)?, *inner, false)?;
                down.forward_unbiased(&h)
            }
            FeedForward::Plain { fc1, fc2 } => {
                let (h, bias) = fc1.forward_unbiased(x)?;
                fc2.forward_unbiased(&act.apply_biased(kernels, &h, bias)?)
            }
            FeedForward::Moe(moe) => moe.forward(x, act, kernels),
        }
    }
}
