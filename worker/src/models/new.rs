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
//! - new-impl's fixed NTK RoPE scaling, `rope_scaling: {"type": "ntk", "factor": F}`
//!   (gte-multilingual-base, its reranker and gte-large-en-v1.5; transformers' Gte does not
//!   implement it): see [`NewConfig::rope`].
//!
//! What the new-impl config can ask beyond that — another RoPE scaling (its mixed NTK,
//! `mixed_b`), log-n attention scaling, RMSNorm, unpacked QKV, absolute positions — is
//! refused by field.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;
use serde::Deserialize;
use serde_json::{Map, Value};

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
    /// new-impl's own block (`type`, `factor`, `mixed_b`), read by [`NewConfig::rope`].
    #[serde(default)]
    pub rope_scaling: Option<Map<String, Value>>,
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

    /// RoPE base and angle scale for [`rope`]: `(rope_theta, 1)`, or with new-impl's fixed NTK
    /// scaling of factor F, `(rope_theta × F, F^(-2 / head_dim))`.
    ///
    /// new-impl (Alibaba-NLP/new-impl modeling.py: `NewEmbeddings._init_rope` picks
    /// `NTKScalingRotaryEmbedding` for `rope_scaling["type"] == "ntk"`, with
    /// `rope_scaling.get("mixed_b")`; read in the copy beside gte-multilingual-base's config in
    /// CheshireClef/Indra_Desktop_Pet, tests/fixtures/published/README.md; vLLM's
    /// rotary_embedding/ntk_scaling_rope.py is the same; kexue.fm/archives/9706 eq. 6)
    /// computes, with `mixed_b` None, `inv_freq_i = (θF)^(-2i/d) / F^(2/d)`. Its `__init__`
    /// caches `max_position_embeddings × F` positions, which for F > 1 is past
    /// `max_position_embeddings` and so sets those frequencies once, for every length (not
    /// dynamic). [`rope`]'s angle `scale × p × base^(-2i/d)` with base θF and scale F^(-2/d) is
    /// that exactly. F below 1 (new-impl then switches frequencies with the sequence length)
    /// and `mixed_b` (its mixed NTK, eq. 10-13) are refused, as is any other key or type.
    pub(crate) fn rope(&self) -> Result<(f32, f32)> {
        let theta = rope::theta(&[("rope_parameters", &self.rope_parameters)], Some(self.rope_theta), self.rope_theta)?;
        let Some(block) = &self.rope_scaling else { return Ok((theta, 1.0)) };
        let name = |key: &str| block.get(key).filter(|v| !v.is_null());
        let kind = match (name("type"), name("rope_type")) {
            (Some(a), Some(b)) if a != b => bail!("config.json: rope_scaling has type {a} and rope_type {b}"),
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => bail!("config.json: rope_scaling has no type (new-impl reads rope_scaling[\"type\"])"),
        };
        if kind.as_str() != Some("ntk") {
            bail!("config.json: rope_scaling type {kind} is not implemented (only new-impl's fixed \"ntk\")");
        }
        if let Some(b) = name("mixed_b") {
            bail!("config.json: rope_scaling mixed_b {b} (new-impl's mixed NTK) is not implemented (only fixed NTK)");
        }
        if let Some(key) = block.keys().find(|k| !["type", "rope_type", "factor", "mixed_b"].contains(&k.as_str())) {
            bail!(
                "config.json: rope_scaling key {key:?} is not implemented (new-impl's ntk reads type, factor, mixed_b)"
            );
        }
        let factor = match name("factor").and_then(Value::as_f64) {
            Some(f) if f.is_finite() && f >= 1.0 => f,
            // Below 1, new-impl's frequencies change with the sequence length.
            Some(f) => bail!("config.json: rope_scaling factor {f} is not implemented (only factor >= 1)"),
            None => bail!("config.json: rope_scaling ntk needs a numeric factor"),
        };
        let head_dim = f64::from(self.hidden_size / self.num_attention_heads);
        Ok(((f64::from(theta) * factor) as f32, factor.powf(-2.0 / head_dim) as f32))
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
        self.rope()?;
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
    /// RoPE base and angle scale ([`NewConfig::rope`]).
    rope: (f32, f32),
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
            rope: config.rope()?,
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
            let qkv = inputs.rows_in_slices(&[&x], |r| layer.qkv.forward(&r[0]))?;
            let total = qkv.dim(0);
            // Q and K rotated together: `[total, 2 × heads, 1, head_dim]` (see rope.rs).
            let qk = qkv.index((.., ..2 * hidden)).reshape(&[total, 2 * heads, 1, self.head_dim])?;
            let qk =
                rope(self.kernels, &qk, self.rope.0, self.rope.1, &inputs.positions)?.reshape(&[total, 2 * hidden])?;
            let parts = Heads {
                q: HeadBlock { array: &qk, col: 0, heads: heads as usize },
                k: HeadBlock { array: &qk, col: hidden as usize, heads: heads as usize },
                v: HeadBlock { array: &qkv, col: 2 * hidden as usize, heads: heads as usize },
                head_dim: self.head_dim,
            };
            let ctx = attention(self.kernels, &parts, inputs, scale, Mask::Full, None)?;
            x = inputs.rows_in_slices(&[&ctx, &x], |r| {
                let (attn, attn_bias) = layer.o.forward_unbiased(&r[0])?;
                let x = layer.attn_ln.add_apply(self.kernels, &attn, attn_bias, &r[1])?;
                let up_gate = layer.up_gate.forward(&x)?;
                let h = self.act.gated(self.kernels, &up_gate, self.intermediate, false)?;
                let (down, down_bias) = layer.down.forward_unbiased(&h)?;
                layer.mlp_ln.add_apply(self.kernels, &down, down_bias, &x)
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
        assert_eq!((c.rope().unwrap(), c.layer_norm_eps, c.hidden_act.as_str()), ((160000.0, 1.0), 1e-12, "gelu"));
    }

    /// gte-multilingual-base's block (factor 8, theta 20000, head_dim 64): base θF, and
    /// `scale × base^(-2i/d)` equal to new-impl's `(θF)^(-2i/d) / F^(2/d)` for every i,
    /// computed here in f64 straight from that formula.
    #[test]
    fn ntk_is_base_times_factor_and_scaled_angles() {
        for key in ["type", "rope_type"] {
            let mut v = base();
            v["hidden_size"] = json!(768);
            v["num_attention_heads"] = json!(12);
            v["rope_theta"] = json!(20000);
            v["rope_scaling"] = json!({"factor": 8.0, key: "ntk"});
            let c: NewConfig = parse_config(&v).unwrap();
            c.check().unwrap();
            let (base, scale) = c.rope().unwrap();
            assert_eq!(base, 160000.0);
            let d = 64.0f64;
            for i in 0..32 {
                let new_impl = (20000.0f64 * 8.0).powf(-2.0 * i as f64 / d) / 8.0f64.powf(2.0 / d);
                let ours = f64::from(scale) * f64::from(base).powf(-2.0 * i as f64 / d);
                assert!((ours / new_impl - 1.0).abs() < 1e-6, "i {i}: {ours} vs {new_impl}");
            }
        }
        // mixed_b null is new-impl's fixed NTK too; factor 1 is unscaled.
        let mut v = base();
        v["rope_scaling"] = json!({"type": "ntk", "factor": 1.0, "mixed_b": null});
        assert_eq!(parse_config::<NewConfig>(&v).unwrap().rope().unwrap(), (160000.0, 1.0));
    }

    #[test]
    fn what_is_not_computed_is_refused_by_name() {
        for (value, names) in [
            (json!({"type": "dynamic", "factor": 2.0}), "dynamic"),
            (json!({"type": "linear", "factor": 2.0}), "linear"),
            (json!({"type": "ntk", "factor": 2.0, "mixed_b": 0.75}), "mixed_b"),
            (json!({"type": "ntk", "factor": 0.5}), "factor"),
            (json!({"type": "ntk"}), "factor"),
            (json!({"type": "ntk", "factor": 2.0, "original_max_position_embeddings": 512}), "original_max"),
            (json!({"type": "ntk", "rope_type": "yarn", "factor": 2.0}), "yarn"),
            (json!({"factor": 2.0}), "type"),
        ] {
            let e = refusal("rope_scaling", value.clone());
            assert!(e.contains("rope_scaling") && e.contains(names), "{value}: {e}");
        }
        let e = refusal("rope_parameters", json!({"rope_type": "ntk", "factor": 2.0}));
        assert!(e.contains("rope_parameters") && e.contains("ntk"), "{e}");
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
