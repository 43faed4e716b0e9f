//! NomicBERT encoder (nomic-embed-text v1 / v1.5, snowflake-arctic-embed-m-long,
//! nomic-embed-text-v2-moe): word + token-type embeddings and a LayerNorm, no position table;
//! post-LayerNorm blocks with rotary attention (RoPE on q and k, rotate-half layout) and a
//! feed-forward (`nomic_mlp.rs`): a gated MLP (`down(act(gate(x)) * up(x))`, SwiGLU for v1 /
//! v1.5), or for v2-moe a plain GELU MLP in the even blocks and a mixture of experts in the
//! odd ones (`nomic_moe.rs`).
//!
//! Follows transformers' `modeling_nomic_bert.py` (NomicBertModel, NomicBertLayer:
//! `LayerNorm(x + attn(x))` then `LayerNorm(x + mlp(x))`) and the Hub's custom code it
//! replaces (`modeling_hf_nomic_bert.py` of nomic-ai/nomic-bert-2048), whose checkpoints and
//! config.json keep GPT-2 names: `n_embd`, `n_head`, `n_inner`, `rotary_emb_base`,
//! `activation_function`, and tensors `encoder.layers.N.attn.Wqkv` (q, k and v fused),
//! `mlp.fc11` (up), `mlp.fc12` (gate), `mlp.fc2`, `norm1`, `norm2`, `emb_ln`. Both spellings
//! load: `sanitize` maps the custom names onto transformers' (the names transformers'
//! `conversion_mapping.py` maps them to, except that a fused `Wqkv` stays fused, as
//! `self_attn.qkv_proj`), and `NomicBertConfig` (`nomic_config.rs`) reads either config.
//!
//! The custom code's options that change the function are refused unless computed here:
//! learned or partial positions (`rotary_emb_fraction` != 1), the interleaved (GPT-J) layout,
//! xPos (`rotary_emb_scale_base`), pre-norm, parallel blocks, RMSNorm, causal attention,
//! the sigmoid GLU, ungated MLPs other than exact GELU, and the mixture-of-experts options
//! `nomic_moe.rs` lists.
//! `rotary_scaling_factor` selects the custom code's dynamic-NTK RoPE, which only differs from
//! plain RoPE for sequences longer than `max_trained_positions`: accepted when the model's
//! length limit stays within that, refused otherwise.

use anyhow::Result;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};

use super::attention::{attention, Heads, Mask};
use super::bert::Norm;
use super::nomic_config::{Dims, NomicBertConfig};
use super::nomic_mlp::FeedForward;
use super::rope::rope;
use super::{parse_config, strip_prefix, Activation, Architecture, Inputs, Kernels, Load, Loaded, Network};
use crate::cpu_attention::HeadBlock;
use crate::heads::{check_single_label, CrossEncoder, Scorer};
use crate::layers::{Embedding, Linear};
use crate::weights::Weights;

pub const ARCHITECTURE: Architecture = Architecture { family: "nomic_bert", check, sanitize, load };

fn check(facts: &ModelFacts) -> Result<()> {
    let config: NomicBertConfig = parse_config(&facts.config)?;
    config.dims(facts.max_tokens)?;
    if facts.pooling == Pooling::CrossEncoder {
        check_single_label(config.num_labels())?;
    }
    Ok(())
}

fn load(l: &mut Load) -> Result<Loaded> {
    let config: NomicBertConfig = parse_config(&l.facts.config)?;
    let net = NomicBert::load(&config.dims(l.facts.max_tokens)?, l.weights, l.kernels)?;
    let scorer = match l.facts.pooling {
        // NomicBertForSequenceClassification is BERT's head: pooler.dense + tanh, classifier.
        Pooling::CrossEncoder => {
            Some(Scorer::CrossEncoder(CrossEncoder::load_bert(config.num_labels(), l.weights, net.hidden)?))
        }
        _ => None,
    };
    Ok(Loaded { network: Box::new(net), scorer })
}

/// Checkpoint names → module names (transformers' spelling): a task head's `nomic_bert.`
/// prefix, or the custom pretraining model's `bert.`, dropped; the custom code's names
/// renamed as transformers' conversion mapping for `nomic_bert` does, except that `Wqkv`
/// stays fused as `self_attn.qkv_proj`.
pub fn sanitize(name: &str) -> String {
    let name = strip_prefix(name, &["nomic_bert.", "bert."]);
    let name = name.strip_prefix("encoder.").unwrap_or(name);
    if let Some(param) = name.strip_prefix("emb_ln.") {
        return format!("embeddings.LayerNorm.{param}");
    }
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() >= 4 && parts[0] == "layers" {
        let (module, rest) = match (parts[2], parts[3]) {
            ("attn", "Wqkv") => ("self_attn.qkv_proj", 4),
            ("attn", "out_proj") => ("self_attn.o_proj", 4),
            ("mlp", "fc11") => ("mlp.up_proj", 4),
            ("mlp", "fc12") => ("mlp.gate_proj", 4),
            ("mlp", "fc2") => ("mlp.down_proj", 4),
            // The plain MLP's fc1 and the MoE block's router and experts keep their names.
            ("norm1", _) => ("post_attention_layernorm", 3),
            ("norm2", _) => ("post_mlp_layernorm", 3),
            _ => return name.to_owned(),
        };
        return format!("layers.{}.{module}.{}", parts[1], parts[rest..].join("."));
    }
    name.to_owned()
}

struct Layer {
    /// q, k and v: fused in the checkpoint (`Wqkv`, gte's `qkv_proj`) or here, one GEMM.
    qkv: Linear,
    o_proj: Linear,
    attn_norm: Norm,
    mlp: FeedForward,
    mlp_norm: Norm,
}

/// The NomicBERT body, without pooler or heads. gte's `new` (new.rs) is the same network with
/// biases and another RoPE base (transformers builds both from JinaEmbeddingsV3's attention
/// and layer modules and Gemma's gated MLP).
pub struct NomicBert {
    word: Embedding,
    token_type: Option<Embedding>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    hidden: i32,
    heads: i32,
    head_dim: i32,
    rope_theta: f32,
    rope_scale: f32,
    act: Activation,
    kernels: Kernels,
}

impl NomicBert {
    pub fn load(d: &Dims, w: &mut Weights, kernels: Kernels) -> Result<NomicBert> {
        let (hidden, width, eps) = (d.hidden, d.heads * d.head_dim, d.eps);
        let word = w.embedding("embeddings.word_embeddings", d.vocab_rows, hidden)?;
        let token_type = if d.type_vocab > 0 {
            w.embedding_opt("embeddings.token_type_embeddings", d.type_vocab, hidden)?
        } else {
            None
        };
        let emb_norm = Norm::load(w, "embeddings.LayerNorm", hidden, eps)?;
        let mut layers = Vec::with_capacity(d.layers as usize);
        for i in 0..d.layers {
            let p = format!("layers.{i}");
            let qkv = if w.has(&format!("{p}.self_attn.qkv_proj.weight")) {
                w.linear(&format!("{p}.self_attn.qkv_proj"), hidden, 3 * width, d.qkv_bias)?
            } else {
                let q = w.linear(&format!("{p}.self_attn.q_proj"), hidden, width, d.qkv_bias)?;
                let k = w.linear(&format!("{p}.self_attn.k_proj"), hidden, width, d.qkv_bias)?;
                let v = w.linear(&format!("{p}.self_attn.v_proj"), hidden, width, d.qkv_bias)?;
                Linear::concat(vec![q, k, v])?
            };
            layers.push(Layer {
                qkv,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), width, hidden, d.qkv_bias)?,
                attn_norm: Norm::load(w, &format!("{p}.post_attention_layernorm"), hidden, eps)?,
                mlp: FeedForward::load(w, d, i)?,
                mlp_norm: Norm::load(w, &format!("{p}.post_mlp_layernorm"), hidden, eps)?,
            });
        }
        Ok(NomicBert {
            word,
            token_type,
            emb_norm,
            layers,
            hidden,
            heads: d.heads,
            head_dim: d.head_dim,
            rope_theta: d.rope_theta,
            rope_scale: d.rope_scale,
            act: d.act,
            kernels,
        })
    }
}

impl Network for NomicBert {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let mut x = self.word.lookup(&inputs.ids)?;
        if let Some(tt) = &self.token_type {
            x = x.add(tt.lookup(&inputs.type_ids)?)?;
        }
        x = self.emb_norm.apply(&x)?;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let (heads, width) = (self.heads, self.heads * self.head_dim);
        for layer in &self.layers {
            let qkv = inputs.rows_in_slices(&[&x], |r| layer.qkv.forward(&r[0]))?;
            let total = qkv.dim(0);
            // q and k rotated together: [total, 2 * heads, 1, head_dim].
            let qk = qkv.index((.., 0..2 * width)).reshape(&[total, 2 * heads, 1, self.head_dim])?;
            let qk = rope(self.kernels, &qk, self.rope_theta, self.rope_scale, &inputs.positions)?
                .reshape(&[total, 2 * width])?;
            let parts = Heads {
                q: HeadBlock { array: &qk, col: 0, heads: heads as usize },
                k: HeadBlock { array: &qk, col: width as usize, heads: heads as usize },
                // V straight from the projection: a column block, no copy.
                v: HeadBlock { array: &qkv, col: 2 * width as usize, heads: heads as usize },
                head_dim: self.head_dim,
            };
            let ctx = attention(self.kernels, &parts, inputs, scale, Mask::Full, None)?;
            x = inputs.rows_in_slices(&[&ctx, &x], |r| {
                let (attn, attn_bias) = layer.o_proj.forward_unbiased(&r[0])?;
                let x = layer.attn_norm.add_apply(self.kernels, &attn, attn_bias, &r[1])?;
                let (out, out_bias) = layer.mlp.forward(&x, self.act, self.kernels)?;
                layer.mlp_norm.add_apply(self.kernels, &out, out_bias, &x)
            })?;
            inputs.layer_done(&[&x])?;
        }
        Ok(x)
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
    fn names_are_sanitized() {
        let cases = [
            ("encoder.layers.3.attn.Wqkv.weight", "layers.3.self_attn.qkv_proj.weight"),
            ("encoder.layers.3.attn.out_proj.weight", "layers.3.self_attn.o_proj.weight"),
            ("encoder.layers.0.mlp.fc11.weight", "layers.0.mlp.up_proj.weight"),
            ("encoder.layers.0.mlp.fc12.weight", "layers.0.mlp.gate_proj.weight"),
            ("encoder.layers.0.mlp.fc2.weight", "layers.0.mlp.down_proj.weight"),
            ("encoder.layers.11.norm1.bias", "layers.11.post_attention_layernorm.bias"),
            ("encoder.layers.11.norm2.weight", "layers.11.post_mlp_layernorm.weight"),
            ("emb_ln.weight", "embeddings.LayerNorm.weight"),
            ("embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
            ("bert.encoder.layers.1.attn.Wqkv.weight", "layers.1.self_attn.qkv_proj.weight"),
            ("nomic_bert.layers.1.self_attn.q_proj.weight", "layers.1.self_attn.q_proj.weight"),
            ("nomic_bert.pooler.dense.bias", "pooler.dense.bias"),
            ("classifier.weight", "classifier.weight"),
            ("layers.0.mlp.gate_proj.weight", "layers.0.mlp.gate_proj.weight"),
        ];
        for (from, to) in cases {
            assert_eq!(sanitize(from), to, "{from}");
        }
    }
}
