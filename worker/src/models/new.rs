//! Alibaba's GTE encoder, config.json `model_type: "new"` (gte-multilingual-base,
//! gte-large-en-v1.5, gte-multilingual-reranker-base; custom code `Alibaba-NLP/new-impl`,
//! which mlx-serve recognises and never runs): word + token-type embeddings, post-LayerNorm
//! blocks with RoPE, a packed QKV projection and a gated feed-forward.
//!
//! Follows transformers 5.24's native implementation of this network, `modeling_gte.py`,
//! and its conversion mapping from the `new` checkpoint layout (conversion_mapping.py,
//! `"gte"`: prefix `new.` dropped, `encoder.layer` → `layers`, `attention.qkv_proj` chunked
//! into q, k, v, `mlp.up_gate_proj` chunked into up, gate, `attn_ln` / `mlp_ln` →
//! `post_attention_layernorm` / `post_mlp_layernorm`):
//! - `GteEmbeddings`: `LayerNorm(word + token_type)`, no position table (token types 0 when
//!   the batch has none; no table at all when `type_vocab_size` is 0).
//! - `GteLayer`: `x = attn_ln(x + o_proj(attn(x)))`, `x = mlp_ln(x + down_proj(up * act(gate)))`;
//!   attention with rotate-half RoPE over the whole head, positions `0..n`.
//! - `GteForSequenceClassification`: pooler (dense + tanh on the first token) and
//!   `classifier`, BERT's cross-encoder head.
//!
//! What the new-impl config can ask beyond that — a RoPE scaling (its NTK variant), log-n
//! attention scaling, RMSNorm, unpacked QKV, absolute positions — is refused by field.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;
use serde::Deserialize;

use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};

use super::attention::{attention, Heads, Mask};
use super::bert::Norm;
use super::rope::{self, rope, RopeParameters};
use super::{
    check_positive, parse_config, strip_prefix, Activation, Architecture, Inputs, Kernels, Load, Loaded, Network,
};
use crate::cpu_attention::HeadBlock;
use crate::heads::{check_single_label, CrossEncoder, Scorer};
use crate::layers::{Embedding, Linear};
use crate::weights::Weights;

pub const ARCHITECTURE: Architecture = Architecture { family: "new", check, sanitize, load };

fn check(facts: &ModelFacts) -> Result<()> {
    let config: NewConfig = parse_config(&facts.config)?;
    config.check()?;
    if facts.pooling == Pooling::CrossEncoder {
        check_single_label(config.num_labels())?;
    }
    Ok(())
}

fn load(l: &mut Load) -> Result<Loaded> {
    let config: NewConfig = parse_config(&l.facts.config)?;
    let net = Gte::load(&config, l.weights, l.kernels)?;
    let scorer = match l.facts.pooling {
        // GteForSequenceClassification: GtePooler (`pooler.dense`, tanh) and `classifier`.
        Pooling::CrossEncoder => {
            Some(Scorer::CrossEncoder(CrossEncoder::load_bert(config.num_labels(), l.weights, net.hidden)?))
        }
        _ => None,
    };
    Ok(Loaded { network: Box::new(net), scorer })
}

/// config.json of a `new` model (new-impl's `NewConfig`). The sizes, `type_vocab_size` and
/// `rope_theta` are required: every published config states them, and the two
/// implementations' defaults differ.
#[derive(Debug, Clone, Deserialize)]
pub struct NewConfig {
    pub hidden_size: i32,
    pub num_attention_heads: i32,
    pub num_hidden_layers: i32,
    pub intermediate_size: i32,
    pub vocab_size: i32,
    pub type_vocab_size: i32,
    pub rope_theta: f32,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub layer_norm_type: Option<String>,
    #[serde(default)]
    pub pack_qkv: Option<bool>,
    #[serde(default)]
    pub logn_attention_scale: bool,
    #[serde(default)]
    pub logn_attention_clip1: bool,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn default_layer_norm_eps() -> f32 {
    1e-12
}
fn default_hidden_act() -> String {
    "gelu".into()
}

impl NewConfig {
    fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(1, BTreeMap::len)
    }

    fn theta(&self) -> Result<f32> {
        rope::theta(
            &[("rope_scaling", &self.rope_scaling), ("rope_parameters", &self.rope_parameters)],
            Some(self.rope_theta),
            self.rope_theta,
        )
    }

    pub(crate) fn check(&self) -> Result<()> {
        check_positive(&[
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
        ])?;
        if self.type_vocab_size < 0 {
            bail!("config.json: type_vocab_size = {} is out of range", self.type_vocab_size);
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if let Some(t) = self.position_embedding_type.as_deref().filter(|t| *t != "rope") {
            bail!("config.json: position_embedding_type {t:?} is not implemented (only \"rope\")");
        }
        if let Some(t) = self.layer_norm_type.as_deref().filter(|t| *t != "layer_norm") {
            bail!("config.json: layer_norm_type {t:?} is not implemented (only \"layer_norm\")");
        }
        if self.pack_qkv == Some(false) {
            bail!("config.json: pack_qkv false is not implemented (only the packed qkv_proj)");
        }
        for (field, on) in
            [("logn_attention_scale", self.logn_attention_scale), ("logn_attention_clip1", self.logn_attention_clip1)]
        {
            if on {
                bail!("config.json: {field} true is not implemented (attention scaled by 1/sqrt(head_dim) only)");
            }
        }
        Activation::from_name(&self.hidden_act).map_err(|e| anyhow::anyhow!("config.json: hidden_act: {e}"))?;
        self.theta()?;
        Ok(())
    }
}

/// Checkpoint names → module names: a task head's `new.` prefix dropped (`pooler.*` stays
/// with the body, `classifier.*` with the head).
pub fn sanitize(name: &str) -> String {
    strip_prefix(name, &["new."]).to_owned()
}

struct Layer {
    /// `[hidden → 3 × hidden]`: q, k, v blocks.
    qkv: Linear,
    o: Linear,
    attn_ln: Norm,
    /// `[hidden → 2 × intermediate]`: the up half, then the gate half.
    up_gate: Linear,
    down: Linear,
    mlp_ln: Norm,
}

/// The GTE body (embeddings + encoder), without pooler or heads.
pub struct Gte {
    word: Embedding,
    token_type: Option<Embedding>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    hidden: i32,
    heads: i32,
    head_dim: i32,
    intermediate: i32,
    theta: f32,
    act: Activation,
    kernels: Kernels,
}

impl Gte {
    pub fn load(config: &NewConfig, w: &mut Weights, kernels: Kernels) -> Result<Gte> {
        config.check()?;
        let (hidden, heads, inter) = (config.hidden_size, config.num_attention_heads, config.intermediate_size);
        let eps = config.layer_norm_eps;
        let word = w.embedding("embeddings.word_embeddings", config.vocab_size, hidden)?;
        let token_type = if config.type_vocab_size > 0 {
            Some(w.embedding("embeddings.token_type_embeddings", config.type_vocab_size, hidden)?)
        } else {
            None
        };
        let emb_norm = Norm::load(w, "embeddings.LayerNorm", hidden, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                qkv: w.linear(&format!("{p}.attention.qkv_proj"), hidden, 3 * hidden, true)?,
                o: w.linear(&format!("{p}.attention.o_proj"), hidden, hidden, true)?,
                attn_ln: Norm::load(w, &format!("{p}.attn_ln"), hidden, eps)?,
                up_gate: w.linear(&format!("{p}.mlp.up_gate_proj"), hidden, 2 * inter, false)?,
                down: w.linear(&format!("{p}.mlp.down_proj"), inter, hidden, true)?,
                mlp_ln: Norm::load(w, &format!("{p}.mlp_ln"), hidden, eps)?,
            });
        }
        Ok(Gte {
            word,
            token_type,
            emb_norm,
            layers,
            hidden,
            heads,
            head_dim: hidden / heads,
            intermediate: inter,
            theta: config.theta()?,
            act: Activation::from_name(&config.hidden_act)?,
            kernels,
        })
    }
}

impl Network for Gte {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let mut x = self.word.lookup(&inputs.ids)?;
        if let Some(tt) = &self.token_type {
            x = x.add(tt.lookup(&inputs.type_ids)?)?;
        }
        x = self.emb_norm.apply(&x)?;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let (hidden, heads) = (self.hidden, self.heads);
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let total = qkv.dim(0);
            // Q and K rotated together: `[total, 2 × heads, 1, head_dim]` (see rope.rs).
            let qk = qkv.index((.., ..2 * hidden)).reshape(&[total, 2 * heads, 1, self.head_dim])?;
            let qk = rope(&qk, self.theta, 1.0, &inputs.positions)?.reshape(&[total, 2 * hidden])?;
            let parts = Heads {
                q: HeadBlock { array: &qk, col: 0, heads: heads as usize },
                k: HeadBlock { array: &qk, col: hidden as usize, heads: heads as usize },
                v: HeadBlock { array: &qkv, col: 2 * hidden as usize, heads: heads as usize },
                head_dim: self.head_dim,
            };
            let ctx = attention(self.kernels, &parts, inputs, scale, Mask::Full, None)?;
            let (attn, attn_bias) = layer.o.forward_unbiased(&ctx)?;
            x = layer.attn_ln.add_apply(self.kernels, &attn, attn_bias, &x)?;
            let up_gate = layer.up_gate.forward(&x)?;
            let halves = up_gate.split_at_indices(&[self.intermediate], 1)?;
            let h = halves[0].multiply(&self.act.apply_biased(self.kernels, &halves[1], None)?)?;
            let (down, down_bias) = layer.down.forward_unbiased(&h)?;
            x = layer.mlp_ln.add_apply(self.kernels, &down, down_bias, &x)?;
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
    use serde_json::{json, Value};

    fn base() -> Value {
        json!({"model_type": "new", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 96, "vocab_size": 100, "type_vocab_size": 1, "rope_theta": 160000.0,
            "position_embedding_type": "rope", "layer_norm_type": "layer_norm", "pack_qkv": true,
            "logn_attention_scale": false, "logn_attention_clip1": false, "rope_scaling": null})
    }

    fn refusal(field: &str, value: Value) -> String {
        let mut v = base();
        v[field] = value;
        parse_config::<NewConfig>(&v).unwrap().check().unwrap_err().to_string()
    }

    #[test]
    fn published_layout_is_read() {
        let c: NewConfig = parse_config(&base()).unwrap();
        c.check().unwrap();
        assert_eq!((c.theta().unwrap(), c.layer_norm_eps, c.hidden_act.as_str()), (160000.0, 1e-12, "gelu"));
    }

    #[test]
    fn what_is_not_computed_is_refused_by_name() {
        let e = refusal("rope_scaling", json!({"type": "ntk", "factor": 2.0}));
        assert!(e.contains("rope_scaling") && e.contains("ntk"), "{e}");
        let e = refusal("logn_attention_scale", json!(true));
        assert!(e.contains("logn_attention_scale"), "{e}");
        let e = refusal("logn_attention_clip1", json!(true));
        assert!(e.contains("logn_attention_clip1"), "{e}");
        let e = refusal("layer_norm_type", json!("rms_norm"));
        assert!(e.contains("layer_norm_type") && e.contains("rms_norm"), "{e}");
        let e = refusal("pack_qkv", json!(false));
        assert!(e.contains("pack_qkv"), "{e}");
        let e = refusal("position_embedding_type", json!("absolute"));
        assert!(e.contains("position_embedding_type"), "{e}");
        let mut v = base();
        v.as_object_mut().unwrap().remove("rope_theta");
        assert!(parse_config::<NewConfig>(&v).unwrap_err().to_string().contains("rope_theta"));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(
            sanitize("new.encoder.layer.0.attention.qkv_proj.weight"),
            "encoder.layer.0.attention.qkv_proj.weight"
        );
        assert_eq!(sanitize("new.pooler.dense.bias"), "pooler.dense.bias");
        assert_eq!(sanitize("classifier.weight"), "classifier.weight");
    }
}
