//! Qwen3 decoder (Qwen3-Embedding, Qwen3-Reranker): RMSNorm, RoPE, grouped-query attention
//! with per-head q/k RMSNorm, SwiGLU, causal attention.
//!
//! Follows transformers' `modeling_qwen3.py` (Qwen3Attention: q_norm/k_norm over head_dim
//! before RoPE; rotate-half RoPE, i.e. MLX's non-"traditional" layout).
//!
//! Packed batches: every token's RoPE position is its index in its own sequence (each
//! sequence is encoded as if alone, from position 0), and attention is causal within the
//! sequence.

use anyhow::{bail, Result};
use mlx_rs::fast::rms_norm;
use mlx_rs::Array;
use serde::Deserialize;

use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};

use super::attention::{attention, Heads, Mask};
use super::rope::{self, rope, RopeParameters};
use super::{
    check_positive, parse_config, residual_rms_norm, strip_prefix, Activation, Architecture, Inputs, Kernels, Load,
    Loaded, Network,
};
use crate::cpu_attention::HeadBlock;
use crate::heads::{Scorer, YesNo};
use crate::layers::{Embedding, Linear};
use crate::weights::Weights;

pub const ARCHITECTURE: Architecture = Architecture { family: "qwen3", check, sanitize, load };

fn check(facts: &ModelFacts) -> Result<()> {
    let config: Qwen3Config = parse_config(&facts.config)?;
    config.check()?;
    config.rope_theta()?;
    if facts.pooling == Pooling::CrossEncoder {
        bail!("{}: Qwen3 sequence-classification heads are not implemented", facts.architecture);
    }
    Ok(())
}

fn load(l: &mut Load) -> Result<Loaded> {
    let config: Qwen3Config = parse_config(&l.facts.config)?;
    let net = Qwen3::load(&config, l.weights, l.kernels)?;
    let scorer = match (l.facts.pooling, l.facts.family.judge()) {
        (Pooling::YesNo, Some(judge)) => {
            let yes_no = YesNo::load(
                l.dir,
                judge,
                l.weights,
                (net.vocab, net.hidden),
                &net.embed_tokens,
                config.tie_word_embeddings,
            )?;
            Some(Scorer::YesNo(yes_no))
        }
        (Pooling::YesNo, None) => bail!("{}: no reranker recipe for this family", l.facts.architecture),
        _ => None,
    };
    Ok(Loaded { network: Box::new(net), scorer })
}

/// config.json of a Qwen3 model (transformers' `Qwen3Config`; fields mlx-serve reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3Config {
    pub hidden_size: i32,
    pub num_attention_heads: i32,
    /// Grouped-query attention; `num_attention_heads` when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<i32>,
    /// `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<i32>,
    pub intermediate_size: i32,
    pub num_hidden_layers: i32,
    pub vocab_size: i32,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f32,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Bidirectional attention (voyage-4-nano's embedder); transformers' Qwen3Model
    /// ignores the flag, so a reference must apply it (tests/fixtures/make_fixtures.py).
    #[serde(default)]
    pub use_bidirectional_attention: bool,
    /// Top-level `rope_theta` (Hub checkpoints, transformers 4.x).
    #[serde(default)]
    pub rope_theta: Option<f32>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// transformers 5 moves `rope_theta` in here.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// The lm_head is the input embeddings (Qwen3Config's default: false).
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_rms_norm_eps() -> f32 {
    1e-6
}

impl Qwen3Config {
    pub fn kv_heads(&self) -> i32 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i32 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// RoPE base; only the default RoPE type is implemented (no scaling).
    pub fn rope_theta(&self) -> Result<f32> {
        let blocks = [("rope_scaling", &self.rope_scaling), ("rope_parameters", &self.rope_parameters)];
        rope::theta(&blocks, self.rope_theta, 10000.0)
    }

    fn check(&self) -> Result<()> {
        check_positive(&[
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("vocab_size", self.vocab_size),
        ])?;
        if self.num_attention_heads % self.kv_heads() != 0 {
            bail!(
                "config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            );
        }
        if self.use_sliding_window {
            bail!("config.json: use_sliding_window true is not implemented (sliding-window attention)");
        }
        Ok(())
    }
}

/// Checkpoint names → module names: the causal LM's `model.` prefix dropped (`lm_head`
/// stays as it is).
pub fn sanitize(name: &str) -> String {
    strip_prefix(name, &["model."]).to_owned()
}

struct Layer {
    input_norm: Array,
    /// q, k and v projections fused into one GEMM.
    qkv: Linear,
    q_norm: Array,
    k_norm: Array,
    o_proj: Linear,
    post_norm: Array,
    /// gate and up projections fused into one GEMM.
    gate_up: Linear,
    down: Linear,
}

pub struct Qwen3 {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: Array,
    hidden: i32,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    intermediate: i32,
    eps: f32,
    rope_theta: f32,
    vocab: i32,
    /// False with `use_bidirectional_attention`.
    causal: bool,
    kernels: Kernels,
}

impl Qwen3 {
    pub fn load(config: &Qwen3Config, w: &mut Weights, kernels: Kernels) -> Result<Qwen3> {
        config.check()?;
        let (hidden, heads, kv_heads, head_dim) =
            (config.hidden_size, config.num_attention_heads, config.kv_heads(), config.head_dim());
        let intermediate = config.intermediate_size;
        let bias = config.attention_bias;
        let rope_theta = config.rope_theta()?;

        let embed_tokens = w.embedding("embed_tokens", config.vocab_size, hidden)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for i in 0..config.num_hidden_layers {
            let p = format!("layers.{i}");
            let q = w.linear(&format!("{p}.self_attn.q_proj"), hidden, heads * head_dim, bias)?;
            let k = w.linear(&format!("{p}.self_attn.k_proj"), hidden, kv_heads * head_dim, bias)?;
            let v = w.linear(&format!("{p}.self_attn.v_proj"), hidden, kv_heads * head_dim, bias)?;
            let gate = w.linear(&format!("{p}.mlp.gate_proj"), hidden, intermediate, false)?;
            let up = w.linear(&format!("{p}.mlp.up_proj"), hidden, intermediate, false)?;
            layers.push(Layer {
                input_norm: w.take(&format!("{p}.input_layernorm.weight"), &[hidden])?,
                qkv: Linear::concat(vec![q, k, v])?,
                q_norm: w.take(&format!("{p}.self_attn.q_norm.weight"), &[head_dim])?,
                k_norm: w.take(&format!("{p}.self_attn.k_norm.weight"), &[head_dim])?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), heads * head_dim, hidden, bias)?,
                post_norm: w.take(&format!("{p}.post_attention_layernorm.weight"), &[hidden])?,
                gate_up: Linear::concat(vec![gate, up])?,
                down: w.linear(&format!("{p}.mlp.down_proj"), intermediate, hidden, false)?,
            });
        }
        let norm = w.take("norm.weight", &[hidden])?;
        Ok(Qwen3 {
            embed_tokens,
            layers,
            norm,
            hidden,
            heads,
            kv_heads,
            head_dim,
            intermediate,
            eps: config.rms_norm_eps,
            rope_theta,
            vocab: config.vocab_size,
            causal: !config.use_bidirectional_attention,
            kernels,
        })
    }

    /// Per-head RMSNorm, then RoPE at each token's own position (`rope.rs`), of `[total,
    /// heads * head_dim]` columns; returns `[total, heads * head_dim]`.
    fn norm_rope(&self, x: &Array, weight: &Array, heads: i32, positions: &Array) -> Result<Array> {
        let total = x.dim(0);
        let x = x.reshape(&[total, heads, 1, self.head_dim])?;
        let x = rms_norm(&x, Some(weight), self.eps)?;
        let x = rope(self.kernels, &x, self.rope_theta, 1.0, positions)?;
        Ok(x.reshape(&[total, heads * self.head_dim])?)
    }
}

impl Network for Qwen3 {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let (q_width, kv_width) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let mut x = self.embed_tokens.lookup(&inputs.ids)?;
        // Pre-norm: each residual sum is normed for the sublayer after it in the same pass.
        let mut normed = match self.layers.first() {
            Some(l) => rms_norm(&x, Some(&l.input_norm), self.eps)?,
            None => x.clone(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let qkv = inputs.rows_in_slices(&[&normed], |r| layer.qkv.forward(&r[0]))?;
            let parts = qkv.split_at_indices(&[q_width, q_width + kv_width], 1)?;
            let q = self.norm_rope(&parts[0], &layer.q_norm, self.heads, &inputs.positions)?;
            let k = self.norm_rope(&parts[1], &layer.k_norm, self.kv_heads, &inputs.positions)?;
            let heads = Heads {
                q: HeadBlock { array: &q, col: 0, heads: self.heads as usize },
                k: HeadBlock { array: &k, col: 0, heads: self.kv_heads as usize },
                // V straight from the fused projection: a column block, no copy.
                v: HeadBlock { array: &qkv, col: (q_width + kv_width) as usize, heads: self.kv_heads as usize },
                head_dim: self.head_dim,
            };
            let mask = if self.causal { Mask::Causal } else { Mask::Full };
            let ctx = attention(self.kernels, &heads, inputs, scale, mask, None)?;
            // The next layer's input norm, or after the last layer the final norm.
            let next = self.layers.get(i + 1).map_or(&self.norm, |l| &l.input_norm);
            (x, normed) = inputs.rows_in_slices(&[&ctx, &x], |rows| {
                let (ctx, x) = (&rows[0], &rows[1]);
                let (sum, r) =
                    residual_rms_norm(self.kernels, x, &layer.o_proj.forward(ctx)?, &layer.post_norm, self.eps)?;
                let gu = layer.gate_up.forward(&r)?;
                let h = Activation::Silu.gated(self.kernels, &gu, self.intermediate, true)?;
                residual_rms_norm(self.kernels, &sum, &layer.down.forward(&h)?, next, self.eps)
            })?;
            inputs.layer_done(&[&x, &normed])?;
        }
        if self.layers.is_empty() {
            return Ok(rms_norm(&x, Some(&self.norm), self.eps)?);
        }
        Ok(normed)
    }

    fn hidden_size(&self) -> i32 {
        self.hidden
    }

    fn kernels(&self) -> Kernels {
        self.kernels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_theta_from_either_place() {
        let base = serde_json::json!({"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 100});
        let c: Qwen3Config = super::super::parse_config(&base).unwrap();
        assert_eq!((c.rope_theta().unwrap(), c.head_dim(), c.kv_heads()), (10000.0, 16, 2));
        let mut v = base.clone();
        v["rope_theta"] = 1_000_000.into();
        assert_eq!(super::super::parse_config::<Qwen3Config>(&v).unwrap().rope_theta().unwrap(), 1e6);
        let mut v = base.clone();
        v["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 5e5});
        assert_eq!(super::super::parse_config::<Qwen3Config>(&v).unwrap().rope_theta().unwrap(), 5e5);
        let mut v = base;
        v["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
        assert!(super::super::parse_config::<Qwen3Config>(&v).unwrap().rope_theta().is_err());
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("model.layers.0.self_attn.q_proj.weight"), "layers.0.self_attn.q_proj.weight");
        assert_eq!(sanitize("lm_head.weight"), "lm_head.weight");
    }
}
