//! Qwen3 decoder (Qwen3-Embedding, Qwen3-Reranker): RMSNorm, RoPE, grouped-query attention
//! with per-head q/k RMSNorm, SwiGLU, causal attention.
//!
//! Follows transformers' `modeling_qwen3.py` (Qwen3Attention: q_norm/k_norm over head_dim
//! before RoPE; rotate-half RoPE, i.e. MLX's non-"traditional" layout).
//!
//! Padding: batches are right-padded and attention is causal, so a real token at position
//! `i` only sees keys `0..=i`, all of them real; no extra key mask is needed, and every real
//! token's position id is simply its index (RoPE offset 0), as for a sequence alone.

use anyhow::{bail, Result};
use mlx_rs::fast::{rms_norm, rope};
use mlx_rs::Array;
use serde_json::Value;

use super::{attention, cfg_f32, cfg_i32, embed, merge_heads, split_heads, AttnMask, Inputs, Network};
use crate::weights::{Linear, Weights};

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
    embed_tokens: Array,
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
}

/// `rope_theta` at the top level (Hub checkpoints, transformers 4.x) or inside
/// `rope_parameters` (transformers 5); only the default RoPE type is implemented.
fn rope_theta(config: &Value) -> Result<f32> {
    for key in ["rope_scaling", "rope_parameters"] {
        if let Some(rs) = config.get(key).filter(|v| !v.is_null()) {
            let ty = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or("default");
            if ty != "default" {
                bail!("unsupported RoPE scaling {ty:?} in config.json (only default RoPE is implemented)");
            }
            if let Some(t) = rs.get("rope_theta").and_then(Value::as_f64) {
                return Ok(t as f32);
            }
        }
    }
    Ok(cfg_f32(config, "rope_theta", 10000.0))
}

impl Qwen3 {
    pub fn load(config: &Value, w: &mut Weights) -> Result<Qwen3> {
        let hidden = cfg_i32(config, "hidden_size")?;
        let heads = cfg_i32(config, "num_attention_heads")?;
        let kv_heads = config.get("num_key_value_heads").and_then(Value::as_i64).map(|v| v as i32).unwrap_or(heads);
        let head_dim = config.get("head_dim").and_then(Value::as_i64).map(|v| v as i32).unwrap_or(hidden / heads);
        let intermediate = cfg_i32(config, "intermediate_size")?;
        let layers_n = cfg_i32(config, "num_hidden_layers")?;
        let vocab = cfg_i32(config, "vocab_size")?;
        let eps = cfg_f32(config, "rms_norm_eps", 1e-6);
        let bias = config.get("attention_bias").and_then(Value::as_bool).unwrap_or(false);
        if kv_heads <= 0 || heads % kv_heads != 0 {
            bail!("config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}");
        }
        if config.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false) {
            bail!("sliding-window attention is not supported");
        }
        let rope_theta = rope_theta(config)?;

        let embed_tokens = w.take("embed_tokens.weight", &[vocab, hidden])?;
        let mut layers = Vec::with_capacity(layers_n as usize);
        for i in 0..layers_n {
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
        Ok(Qwen3 { embed_tokens, layers, norm, hidden, heads, kv_heads, head_dim, intermediate, eps, rope_theta, vocab })
    }

    /// The input embedding table `[vocab, hidden]` (the lm_head when embeddings are tied).
    pub fn embedding_table(&self) -> &Array {
        &self.embed_tokens
    }

    pub fn vocab_size(&self) -> i32 {
        self.vocab
    }
}

impl Network for Qwen3 {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let (b, l) = (inputs.batch, inputs.len);
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let mut x = embed(&self.embed_tokens, &inputs.ids)?;
        for layer in &self.layers {
            let r = rms_norm(&x, Some(&layer.input_norm), self.eps)?;
            let qkv = layer.qkv.forward(&r)?;
            let hs = split_heads(&qkv, b, l, &[self.heads, self.kv_heads, self.kv_heads], self.head_dim)?;
            let q = rms_norm(&hs[0], Some(&layer.q_norm), self.eps)?;
            let k = rms_norm(&hs[1], Some(&layer.k_norm), self.eps)?;
            let q = rope(&q, self.head_dim, false, self.rope_theta, 1.0, 0, None)?;
            let k = rope(&k, self.head_dim, false, self.rope_theta, 1.0, 0, None)?;
            // GQA: fewer kv heads than query heads, no tiling (see models::attention).
            let ctx = attention(&q, &k, &hs[2], scale, AttnMask::Causal)?;
            x = x.add(layer.o_proj.forward(&merge_heads(&ctx, b, l)?)?)?;
            let r = rms_norm(&x, Some(&layer.post_norm), self.eps)?;
            let gu = layer.gate_up.forward(&r)?;
            let parts = gu.split_at_indices(&[self.intermediate], 1)?;
            let h = mlx_rs::nn::silu(&parts[0])?.multiply(&parts[1])?;
            x = x.add(layer.down.forward(&h)?)?;
        }
        Ok(rms_norm(&x, Some(&self.norm), self.eps)?)
    }

    fn hidden_size(&self) -> i32 {
        self.hidden
    }
}
