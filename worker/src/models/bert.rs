//! BERT encoder (all-MiniLM, bge-*-en, e5, gte-base): word + position + token-type
//! embeddings, post-LayerNorm transformer blocks, exact GELU by default.
//!
//! Follows transformers' `modeling_bert.py` (BertEmbeddings, BertSelfAttention with an
//! additive key-padding mask, BertSelfOutput/BertOutput as `LayerNorm(x + dense(h))`).
//! XLM-RoBERTa is the same network with other position ids, so `xlm_roberta.rs` reuses
//! [`Bert`] through [`Bert::load`] and [`Bert::encode`].

use anyhow::{bail, Result};
use mlx_rs::fast::layer_norm;
use mlx_rs::{ops, Array};
use serde_json::Value;

use super::{attention, cfg_f32, cfg_i32, embed, merge_heads, split_heads, Activation, AttnMask, Inputs, Network};
use crate::cpu_attention::attention_from_qkv;
use crate::cpu_kernels::add_layer_norm_f32;
use crate::weights::{Linear, Weights};

/// LayerNorm parameters.
struct Norm {
    weight: Array,
    bias: Array,
    eps: f32,
}

impl Norm {
    fn load(w: &mut Weights, prefix: &str, dim: i32, eps: f32) -> Result<Norm> {
        Ok(Norm { weight: w.take(&format!("{prefix}.weight"), &[dim])?, bias: w.take(&format!("{prefix}.bias"), &[dim])?, eps })
    }

    fn apply(&self, x: &Array) -> Result<Array> {
        Ok(layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }

    /// `LayerNorm(x + x_bias + residual)`; fused on the host on the CPU backend
    /// (cpu_kernels.rs).
    fn add_apply(&self, x: &Array, x_bias: Option<&Array>, residual: &Array) -> Result<Array> {
        if !cfg!(feature = "metal") {
            if let Some(y) = add_layer_norm_f32(x, x_bias, residual, &self.weight, &self.bias, self.eps)? {
                return Ok(y);
            }
        }
        let sum = x.add(residual)?;
        self.apply(&match x_bias {
            Some(b) => sum.add(b)?,
            None => sum,
        })
    }
}

struct Layer {
    /// Query, key and value projections fused into one `[hidden, 3 * hidden]` GEMM.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    output: Linear,
    out_norm: Norm,
}

/// The BERT body (embeddings + encoder), without pooler or heads.
pub struct Bert {
    word: Array,
    position: Array,
    token_type: Option<Array>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    hidden: i32,
    heads: i32,
    head_dim: i32,
    act: Activation,
}

impl Bert {
    pub fn load(config: &Value, w: &mut Weights) -> Result<Bert> {
        let hidden = cfg_i32(config, "hidden_size")?;
        let heads = cfg_i32(config, "num_attention_heads")?;
        let layers_n = cfg_i32(config, "num_hidden_layers")?;
        let inter = cfg_i32(config, "intermediate_size")?;
        let vocab = cfg_i32(config, "vocab_size")?;
        let positions = cfg_i32(config, "max_position_embeddings")?;
        let type_vocab = config.get("type_vocab_size").and_then(Value::as_i64).unwrap_or(2) as i32;
        let eps = cfg_f32(config, "layer_norm_eps", 1e-12);
        if hidden % heads != 0 {
            bail!("config.json: hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
        }
        if let Some(t) = config.get("position_embedding_type").and_then(Value::as_str) {
            if t != "absolute" {
                bail!("unsupported position_embedding_type {t:?} (only \"absolute\")");
            }
        }
        let act = Activation::from_config(config)?;

        let word = w.take("embeddings.word_embeddings.weight", &[vocab, hidden])?;
        let position = w.take("embeddings.position_embeddings.weight", &[positions, hidden])?;
        let token_type = if type_vocab > 0 {
            w.take_opt("embeddings.token_type_embeddings.weight", &[type_vocab, hidden])?
        } else {
            None
        };
        let emb_norm = Norm::load(w, "embeddings.LayerNorm", hidden, eps)?;
        let mut layers = Vec::with_capacity(layers_n as usize);
        for i in 0..layers_n {
            let p = format!("encoder.layer.{i}");
            let q = w.linear(&format!("{p}.attention.self.query"), hidden, hidden, true)?;
            let k = w.linear(&format!("{p}.attention.self.key"), hidden, hidden, true)?;
            let v = w.linear(&format!("{p}.attention.self.value"), hidden, hidden, true)?;
            layers.push(Layer {
                qkv: Linear::concat(vec![q, k, v])?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), hidden, hidden, true)?,
                attn_norm: Norm::load(w, &format!("{p}.attention.output.LayerNorm"), hidden, eps)?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), hidden, inter, true)?,
                output: w.linear(&format!("{p}.output.dense"), inter, hidden, true)?,
                out_norm: Norm::load(w, &format!("{p}.output.LayerNorm"), hidden, eps)?,
            });
        }
        Ok(Bert { word, position, token_type, emb_norm, layers, hidden, heads, head_dim: hidden / heads, act })
    }

    /// Runs the encoder with the given `[batch, len]` position ids.
    pub fn encode(&self, inputs: &Inputs, positions: &Array) -> Result<Array> {
        let (b, l) = (inputs.batch, inputs.len);
        let mut x = embed(&self.word, &inputs.ids)?;
        x = x.add(embed(&self.position, &positions.reshape(&[b * l])?)?)?;
        if let Some(tt) = &self.token_type {
            x = x.add(embed(tt, &inputs.type_ids)?)?;
        }
        x = self.emb_norm.apply(&x)?;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let ctx = self.attention(&qkv, inputs, scale)?;
            // Biases of these three go into the next host kernel (Linear::forward_unbiased).
            let (attn, attn_bias) = layer.attn_out.forward_unbiased(&ctx)?;
            x = layer.attn_norm.add_apply(&attn, attn_bias, &x)?;
            let (inter, inter_bias) = layer.intermediate.forward_unbiased(&x)?;
            let h = self.act.apply_biased(&inter, inter_bias)?;
            let (out, out_bias) = layer.output.forward_unbiased(&h)?;
            x = layer.out_norm.add_apply(&out, out_bias, &x)?;
        }
        Ok(x)
    }
}

impl Bert {
    /// Self-attention from the fused projection `[batch * len, 3 * hidden]` to
    /// `[batch * len, hidden]`.
    fn attention(&self, qkv: &Array, inputs: &Inputs, scale: f32) -> Result<Array> {
        let (b, l) = (inputs.batch, inputs.len);
        if !cfg!(feature = "metal") {
            let (heads, dim) = (self.heads as usize, self.head_dim as usize);
            if let Some(ctx) = attention_from_qkv(qkv, &inputs.lengths, l as usize, heads, dim, scale)? {
                return Ok(ctx);
            }
        }
        let hs = split_heads(qkv, b, l, &[self.heads; 3], self.head_dim)?;
        let mask = AttnMask::Padding { lengths: &inputs.lengths, key_mask: &inputs.key_mask };
        merge_heads(&attention(&hs[0], &hs[1], &hs[2], scale, mask)?, b, l)
    }
}

impl Network for Bert {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let positions = match &inputs.positions {
            Some(p) => p.clone(),
            // Absolute positions 0..len for every row (right padding keeps them aligned).
            None => ops::broadcast_to(ops::arange::<_, i32>(0, inputs.len, None)?, &[inputs.batch, inputs.len])?,
        };
        self.encode(inputs, &positions)
    }

    fn hidden_size(&self) -> i32 {
        self.hidden
    }
}
