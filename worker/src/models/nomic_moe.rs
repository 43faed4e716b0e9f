//! NomicBERT's mixture-of-experts feed-forward (nomic-embed-text-v2-moe): every
//! `moe_every_n_layers`-th block's MLP is `num_experts` GELU experts, of which a router picks
//! `moe_top_k` per token.
//!
//! What it computes, as nomic-ai's own code and two independent ports do (nomic-ai/contrastors
//! `layers/block.py`, which trains it with megablocks' `dMoE`, megablocks `layers/router.py`,
//! vLLM `model_executor/models/bert_with_rope.py` `NomicRouter`/`NomicExperts`, and
//! text-embeddings-inference `backends/candle/src/models/nomic.rs`):
//!
//! - which blocks: index `i` with `i % moe_every_n_layers == 1` (contrastors
//!   `modeling_nomic_bert.py`: `Block(config, moe=i % every_n == 1)`; vLLM and TEI alike), so
//!   v2-moe's blocks 1, 3, 5, ... of 12;
//! - router: `softmax(x Wᵀ)` over all experts (`mlp.router.layer.weight` `[experts, hidden]`,
//!   no bias), in float32, then the top k of those probabilities. They are not renormalized
//!   over the k: megablocks divides by their p-norm only when `moe_normalize_expert_weights`
//!   is set, and v2-moe has `false`;
//! - expert `e`: `gelu(x w1[e]ᵀ) w2[e]` with `w1`, `w2` (`mlp.experts.mlp.w1` / `.w2`) each
//!   stored `[experts · ffn, hidden]`, expert-major, so `w2[e]` (`[ffn, hidden]`) multiplies
//!   untransposed; exact (erf) GELU (`F.gelu` for `activation_function: "gelu"`); no bias
//!   per expert;
//! - output: `Σ_k p_k · expert_k(x)` plus one bias shared by all experts (`mlp.experts.bias`),
//!   added after the sum.
//!
//! Refused, naming the field: shared experts, the expert-choice router, any normalization of
//! the top-k weights, `ffn_div` other than 1 (megablocks' expert width `n_inner / ffn_div`,
//! where the Hub's code reads `n_inner`), and `moe_every_n_layers` 1 (the rule above then
//! makes no block an MoE block, which the name does not say).
//!
//! Only the chosen experts are computed: each token's k (expert, weight) pairs are sorted by
//! expert on the host (one synchronisation per MoE block), the token rows gathered in that
//! order, one GEMM pair per expert over its contiguous run, and the weighted rows put back
//! in token order and summed. Every backend runs this same code (MLX ops; the GELU on host
//! kernels in float32 on the CPU, like every other activation).

use anyhow::{bail, Result};
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::ops::{argpartition_axis, concatenate, softmax_axis};
use mlx_rs::{Array, Dtype};
use serde::Deserialize;
use serde_json::Value;

use super::{Activation, Kernels};
use crate::layers::Linear;
use crate::weights::Weights;

/// config.json's mixture-of-experts fields (the Hub's custom-code config, from contrastors'
/// `NomicBertConfig` keyword arguments).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MoeConfig {
    #[serde(default)]
    pub moe_every_n_layers: Option<i32>,
    #[serde(default)]
    pub num_experts: Option<i32>,
    #[serde(default)]
    pub moe_top_k: Option<i32>,
    /// `false`/`null`: the top-k probabilities as they are; a number p: divided by their p-norm.
    #[serde(default)]
    pub moe_normalize_expert_weights: Option<Value>,
    #[serde(default)]
    pub num_shared_experts: Option<i32>,
    #[serde(default)]
    pub expert_choice_router: Option<bool>,
    #[serde(default)]
    pub ffn_div: Option<i32>,
    #[serde(default)]
    pub moe_impl: Option<String>,
}

/// The checked mixture-of-experts shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeDims {
    pub every_n: i32,
    pub experts: i32,
    pub top_k: i32,
}

impl MoeDims {
    /// Whether block `i` has the mixture-of-experts MLP (module docs).
    pub fn is_moe_layer(&self, i: i32) -> bool {
        i % self.every_n == 1
    }
}

impl MoeConfig {
    /// `None` for a dense model; the checked shape of an MoE one, or a refusal naming the field.
    pub fn dims(&self) -> Result<Option<MoeDims>> {
        let every_n = self.moe_every_n_layers.unwrap_or(0);
        let experts = self.num_experts.unwrap_or(0);
        if every_n <= 0 && experts <= 0 {
            return Ok(None);
        }
        if every_n <= 0 {
            bail!("config.json: num_experts {experts} without moe_every_n_layers is not implemented (which blocks are MoE blocks is not said)");
        }
        if every_n == 1 {
            bail!(
                "config.json: moe_every_n_layers 1 is not implemented (nomic's code makes block i an MoE block when i % n == 1, \
                 which no block is for n = 1)"
            );
        }
        if experts <= 0 {
            bail!("config.json: moe_every_n_layers {every_n} without num_experts is not implemented");
        }
        let Some(top_k) = self.moe_top_k else {
            bail!("config.json: moe_top_k is missing (mixture-of-experts routing)")
        };
        if top_k < 1 || top_k > experts {
            bail!("config.json: moe_top_k {top_k} is out of range (1 to num_experts {experts})");
        }
        match &self.moe_normalize_expert_weights {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(v) => bail!(
                "config.json: moe_normalize_expert_weights {v} is not implemented (only false: the top-k router \
                 probabilities are used as they are, not renormalized)"
            ),
        }
        if let Some(n) = self.num_shared_experts.filter(|&n| n != 0) {
            bail!("config.json: num_shared_experts {n} is not implemented (only 0: no shared expert)");
        }
        if self.expert_choice_router == Some(true) {
            bail!("config.json: expert_choice_router true is not implemented (only token-choice top-k routing)");
        }
        if let Some(d) = self.ffn_div.filter(|&d| d != 1) {
            bail!("config.json: ffn_div {d} is not implemented (only 1: each expert is n_inner wide)");
        }
        if let Some(i) = self.moe_impl.as_deref().filter(|&i| i != "megablocks") {
            bail!("config.json: moe_impl {i:?} is not implemented (only \"megablocks\", the dropless top-k MoE)");
        }
        Ok(Some(MoeDims { every_n, experts, top_k }))
    }
}

/// One expert's two matrices: `w1[e]ᵀ` (`[hidden, ffn]`, a transposed view) and `w2[e]`
/// (`[ffn, hidden]`).
struct Expert {
    w1_t: Array,
    w2: Array,
}

/// A mixture-of-experts MLP block.
pub struct MoeMlp {
    router: Linear,
    experts: Vec<Expert>,
    /// The bias shared by all experts, added after their weighted sum.
    bias: Array,
    top_k: i32,
}

impl MoeMlp {
    /// Loads `{prefix}.router.layer`, `{prefix}.experts.mlp.w1/w2` and `{prefix}.experts.bias`.
    pub fn load(w: &mut Weights, prefix: &str, m: MoeDims, hidden: i32, ffn: i32) -> Result<MoeMlp> {
        let router = w.linear(&format!("{prefix}.router.layer"), hidden, m.experts, false)?;
        let shape = [m.experts * ffn, hidden];
        let w1 = w.take(&format!("{prefix}.experts.mlp.w1"), &shape)?.reshape(&[m.experts, ffn, hidden])?;
        let w2 = w.take(&format!("{prefix}.experts.mlp.w2"), &shape)?.reshape(&[m.experts, ffn, hidden])?;
        let mut experts = Vec::with_capacity(m.experts as usize);
        for e in 0..m.experts {
            let (a, b) = (w1.index(e), w2.index(e));
            // Each its own buffer, so that a GEMM reads one contiguous matrix.
            let (a, b) = (a.contiguous()?, b.contiguous()?);
            a.eval()?;
            b.eval()?;
            experts.push(Expert { w1_t: a.t(), w2: b });
        }
        let bias = w.take(&format!("{prefix}.experts.bias"), &[hidden])?;
        Ok(MoeMlp { router, experts, bias, top_k: m.top_k })
    }

    /// The block's output before its bias `[total, hidden]`, and that bias (for the caller's
    /// fused add + LayerNorm).
    pub fn forward(&self, x: &Array, act: Activation, kernels: Kernels) -> Result<(Array, Option<&Array>)> {
        let (total, k) = (x.dim(0), self.top_k);
        // Router probabilities in float32 (as the reference casts them), top k by value.
        let probs = softmax_axis(self.router.forward(x)?.as_dtype(Dtype::Float32)?, -1, true)?;
        let top = argpartition_axis(probs.negative()?, k - 1, -1)?.index((.., 0..k)).as_dtype(Dtype::Int32)?;
        let weights = probs.take_along_axis(&top, -1)?.as_dtype(x.dtype())?.reshape(&[total * k, 1])?;
        top.eval()?;
        let chosen: Vec<i32> = top.contiguous()?.as_slice::<i32>().to_vec();

        // Slots (token t, choice j) = t·k + j, sorted by expert (stable): a counting sort.
        let n = self.experts.len();
        let mut counts = vec![0usize; n];
        for &e in &chosen {
            counts[e as usize] += 1;
        }
        let mut start = vec![0usize; n + 1];
        for e in 0..n {
            start[e + 1] = start[e] + counts[e];
        }
        let mut next = start.clone();
        let mut order = vec![0i32; chosen.len()];
        for (slot, &e) in chosen.iter().enumerate() {
            order[next[e as usize]] = slot as i32;
            next[e as usize] += 1;
        }
        let mut back = vec![0i32; order.len()];
        for (pos, &slot) in order.iter().enumerate() {
            back[slot as usize] = pos as i32;
        }
        let len = order.len() as i32;
        let rows: Vec<i32> = order.iter().map(|s| s / k).collect();
        let sorted = x.take_axis(Array::from_slice(&rows, &[len]), 0)?;
        let mut outs = Vec::with_capacity(n);
        for (e, expert) in self.experts.iter().enumerate() {
            if counts[e] == 0 {
                continue;
            }
            let rows = sorted.index(start[e] as i32..start[e + 1] as i32);
            let h = act.apply_biased(kernels, &rows.matmul(&expert.w1_t)?, None)?;
            outs.push(h.matmul(&expert.w2)?);
        }
        let by_expert = concatenate(&outs, 0)?;
        let slot_weights = weights.take_axis(Array::from_slice(&order, &[len]), 0)?;
        let weighted = by_expert.multiply(&slot_weights)?;
        let per_slot = weighted.take_axis(Array::from_slice(&back, &[len]), 0)?;
        let out = per_slot.reshape(&[total, k, -1])?.sum_axis(1, false)?;
        Ok((out, Some(&self.bias)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v2_moe() -> Value {
        json!({"moe_every_n_layers": 2, "num_experts": 8, "moe_top_k": 2, "moe_normalize_expert_weights": false,
            "num_shared_experts": 0, "expert_choice_router": false, "ffn_div": 1, "moe_impl": "megablocks"})
    }

    fn dims(v: &Value) -> Result<Option<MoeDims>> {
        MoeConfig::deserialize(v)?.dims()
    }

    #[test]
    fn v2_moe_has_moe_in_the_odd_blocks() {
        let m = dims(&v2_moe()).unwrap().unwrap();
        assert_eq!(m, MoeDims { every_n: 2, experts: 8, top_k: 2 });
        let moe: Vec<i32> = (0..12).filter(|&i| m.is_moe_layer(i)).collect();
        assert_eq!(moe, [1, 3, 5, 7, 9, 11]);
        let m3 = MoeDims { every_n: 3, ..m };
        assert_eq!((0..7).filter(|&i| m3.is_moe_layer(i)).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(dims(&json!({})).unwrap(), None);
    }

    #[test]
    fn what_is_not_computed_is_refused_by_field() {
        let cases: &[(&str, Value)] = &[
            ("moe_normalize_expert_weights", json!(1.0)),
            ("moe_normalize_expert_weights", json!(true)),
            ("num_shared_experts", json!(1)),
            ("expert_choice_router", json!(true)),
            ("ffn_div", json!(2)),
            ("moe_impl", json!("contrastors")),
            ("moe_every_n_layers", json!(1)),
            ("moe_top_k", json!(9)),
            ("moe_top_k", json!(0)),
        ];
        for (field, value) in cases {
            let mut v = v2_moe();
            v[*field] = value.clone();
            let err = dims(&v).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let mut v = v2_moe();
        v.as_object_mut().unwrap().remove("moe_top_k");
        assert!(dims(&v).unwrap_err().to_string().contains("moe_top_k"));
        assert!(dims(&json!({"num_experts": 8})).unwrap_err().to_string().contains("moe_every_n_layers"));
        assert!(dims(&json!({"moe_every_n_layers": 2})).unwrap_err().to_string().contains("num_experts"));
    }
}
