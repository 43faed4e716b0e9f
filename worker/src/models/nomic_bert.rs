//! NomicBERT encoder (nomic-embed-text v1 / v1.5, snowflake-arctic-embed-m-long): word +
//! token-type embeddings and a LayerNorm, no position table; post-LayerNorm blocks with
//! rotary attention (RoPE on q and k, rotate-half layout) and a gated MLP
//! (`down(act(gate(x)) * up(x))`, SwiGLU for every released model).
//!
//! Follows transformers' `modeling_nomic_bert.py` (NomicBertModel, NomicBertLayer:
//! `LayerNorm(x + attn(x))` then `LayerNorm(x + mlp(x))`) and the Hub's custom code it
//! replaces (`modeling_hf_nomic_bert.py` of nomic-ai/nomic-bert-2048), whose checkpoints and
//! config.json keep GPT-2 names: `n_embd`, `n_head`, `n_inner`, `rotary_emb_base`,
//! `activation_function`, and tensors `encoder.layers.N.attn.Wqkv` (q, k and v fused),
//! `mlp.fc11` (up), `mlp.fc12` (gate), `mlp.fc2`, `norm1`, `norm2`, `emb_ln`. Both spellings
//! load: `sanitize` maps the custom names onto transformers' (the names transformers'
//! `conversion_mapping.py` maps them to, except that a fused `Wqkv` stays fused, as
//! `self_attn.qkv_proj`), and [`NomicBertConfig`] reads either config.
//!
//! The custom code's options that change the function are refused unless computed here:
//! learned or partial positions (`rotary_emb_fraction` != 1), the interleaved (GPT-J) layout,
//! xPos (`rotary_emb_scale_base`), pre-norm, parallel blocks, RMSNorm, causal attention,
//! the sigmoid GLU and ungated MLPs, and mixture-of-experts layers (nomic-embed-text-v2-moe).
//! `rotary_scaling_factor` selects the custom code's dynamic-NTK RoPE, which only differs from
//! plain RoPE for sequences longer than `max_trained_positions`: accepted when the model's
//! length limit stays within that, refused otherwise.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;
use serde::{Deserialize, Deserializer};

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

/// `Some(value)` for a key that is present, even as `null` (`Some(None)`): the custom code's
/// `rotary_scaling_factor` defaults to 1.0 when absent, and `null` turns the scaling off.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f32>>, D::Error> {
    Option::<f32>::deserialize(d).map(Some)
}

/// config.json of a NomicBERT model, in either spelling: transformers' `NomicBertConfig`
/// (`hidden_size`, `rope_parameters`, ...) or the Hub's custom-code config (a GPT2Config:
/// `n_embd`, `rotary_emb_base`, ...; its presence is told by `n_embd`). Defaults are those of
/// each config class.
#[derive(Debug, Clone, Deserialize)]
pub struct NomicBertConfig {
    #[serde(default)]
    pub vocab_size: Option<i32>,
    #[serde(default)]
    pub type_vocab_size: Option<i32>,
    /// Labels of a `*ForSequenceClassification` head (one label when absent).
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    /// nomic-embed-text-v2-moe: an MoE MLP every n-th layer.
    #[serde(default)]
    pub moe_every_n_layers: Option<i32>,
    #[serde(default)]
    pub num_experts: Option<i32>,

    // transformers' NomicBertConfig.
    #[serde(default)]
    pub hidden_size: Option<i32>,
    #[serde(default)]
    pub num_attention_heads: Option<i32>,
    #[serde(default)]
    pub num_hidden_layers: Option<i32>,
    #[serde(default)]
    pub intermediate_size: Option<i32>,
    #[serde(default)]
    pub head_dim: Option<i32>,
    #[serde(default)]
    pub layer_norm_eps: Option<f32>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f32>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,

    // The Hub's custom code (configuration_hf_nomic_bert.py, on GPT2Config).
    #[serde(default)]
    pub n_embd: Option<i32>,
    #[serde(default)]
    pub n_head: Option<i32>,
    #[serde(default)]
    pub n_layer: Option<i32>,
    #[serde(default)]
    pub n_inner: Option<i32>,
    #[serde(default)]
    pub layer_norm_epsilon: Option<f32>,
    #[serde(default)]
    pub activation_function: Option<String>,
    #[serde(default)]
    pub rotary_emb_base: Option<f32>,
    #[serde(default)]
    pub rotary_emb_fraction: Option<f32>,
    #[serde(default)]
    pub rotary_emb_interleaved: Option<bool>,
    #[serde(default)]
    pub rotary_emb_scale_base: Option<f32>,
    #[serde(default, deserialize_with = "present")]
    pub rotary_scaling_factor: Option<Option<f32>>,
    #[serde(default)]
    pub max_trained_positions: Option<u32>,
    #[serde(default)]
    pub qkv_proj_bias: Option<bool>,
    #[serde(default)]
    pub mlp_fc1_bias: Option<bool>,
    #[serde(default)]
    pub mlp_fc2_bias: Option<bool>,
    #[serde(default)]
    pub prenorm: Option<bool>,
    #[serde(default)]
    pub parallel_block: Option<bool>,
    #[serde(default)]
    pub use_rms_norm: Option<bool>,
    #[serde(default)]
    pub causal: Option<bool>,
    #[serde(default)]
    pub pad_vocab_size_multiple: Option<i32>,
    #[serde(default)]
    pub num_heads_kv: Option<i32>,
    #[serde(default)]
    pub rotary_head_dim: Option<bool>,
}

/// The network's sizes and options, from either spelling, once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub hidden: i32,
    pub heads: i32,
    pub head_dim: i32,
    pub layers: i32,
    /// Width of the gated MLP.
    pub inner: i32,
    /// Rows of the word table (the custom code pads the vocabulary).
    pub vocab_rows: i32,
    pub type_vocab: i32,
    pub eps: f32,
    /// Activation of the gate.
    pub act: Activation,
    pub rope_theta: f32,
    /// Positions' factor in the RoPE angle (rope.rs): 1 but for gte's fixed NTK scaling.
    pub rope_scale: f32,
    /// Biases of the q/k/v and output projections, of gate/up (fc11/fc12), of down (fc2).
    pub qkv_bias: bool,
    pub fc1_bias: bool,
    pub fc2_bias: bool,
}

impl Dims {
    /// Fails unless the sizes can index tensors and RoPE has pairs to rotate.
    pub fn checked(self) -> Result<Dims> {
        check_positive(&[
            ("hidden size", self.hidden),
            ("attention heads", self.heads),
            ("head_dim", self.head_dim),
            ("layers", self.layers),
            ("intermediate size", self.inner),
            ("vocab_size", self.vocab_rows),
        ])?;
        if self.type_vocab < 0 {
            bail!("config.json: type_vocab_size = {} is out of range", self.type_vocab);
        }
        if self.head_dim % 2 != 0 {
            bail!("config.json: head_dim {} is odd (RoPE rotates pairs of dimensions)", self.head_dim);
        }
        Ok(self)
    }
}

impl NomicBertConfig {
    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(1, BTreeMap::len)
    }

    /// Resolves and checks the config for a model serving up to `max_tokens` tokens.
    pub fn dims(&self, max_tokens: u32) -> Result<Dims> {
        if let Some(n) = self.moe_every_n_layers.filter(|&n| n > 0) {
            bail!(
                "config.json: moe_every_n_layers {n} is not implemented (mixture-of-experts layers, as in nomic-embed-text-v2-moe)"
            );
        }
        if let Some(n) = self.num_experts.filter(|&n| n > 0) {
            bail!("config.json: num_experts {n} is not implemented (mixture-of-experts layers, as in nomic-embed-text-v2-moe)");
        }
        if self.n_embd.is_some() {
            self.custom_dims(max_tokens)?.checked()
        } else {
            self.transformers_dims()?.checked()
        }
    }

    /// transformers' NomicBertConfig (defaults from configuration_nomic_bert.py).
    fn transformers_dims(&self) -> Result<Dims> {
        let hidden = self.hidden_size.unwrap_or(768);
        let heads = self.num_attention_heads.unwrap_or(12);
        Ok(Dims {
            hidden,
            heads,
            head_dim: self.head_dim.unwrap_or(hidden / heads.max(1)),
            layers: self.num_hidden_layers.unwrap_or(12),
            inner: self.intermediate_size.unwrap_or(3072),
            vocab_rows: self.vocab_size.unwrap_or(30528),
            type_vocab: self.type_vocab_size.unwrap_or(2),
            eps: self.layer_norm_eps.unwrap_or(1e-12),
            act: Activation::from_name(self.hidden_act.as_deref().unwrap_or("silu"))?,
            // NomicBertConfig.default_theta.
            rope_theta: rope::theta(
                &[("rope_scaling", &self.rope_scaling), ("rope_parameters", &self.rope_parameters)],
                self.rope_theta,
                1000.0,
            )?,
            rope_scale: 1.0,
            qkv_bias: false,
            fc1_bias: false,
            fc2_bias: false,
        })
    }

    /// The Hub's custom-code config: defaults of its NomicBertConfig, else of GPT2Config.
    fn custom_dims(&self, max_tokens: u32) -> Result<Dims> {
        let hidden = self.n_embd.unwrap_or(768);
        if let Some(h) = self.hidden_size.filter(|&h| h != hidden) {
            bail!("config.json: hidden_size {h} and n_embd {hidden} disagree");
        }
        let heads = self.n_head.unwrap_or(12);
        if heads <= 0 || hidden % heads != 0 {
            bail!("config.json: n_embd {hidden} is not a multiple of n_head {heads}");
        }
        if let Some(kv) = self.num_heads_kv.filter(|&kv| kv != heads) {
            bail!("config.json: num_heads_kv {kv} is not implemented (grouped-query attention; n_head is {heads})");
        }
        let flags = [
            ("prenorm", self.prenorm, "pre-LayerNorm blocks"),
            ("parallel_block", self.parallel_block, "parallel attention and MLP"),
            ("use_rms_norm", self.use_rms_norm, "RMSNorm"),
            ("causal", self.causal, "causal attention"),
            ("rotary_emb_interleaved", self.rotary_emb_interleaved, "the interleaved (GPT-J) RoPE layout"),
            ("rotary_head_dim", self.rotary_head_dim, "RoPE along the head axis"),
        ];
        for (field, value, what) in flags {
            if value == Some(true) {
                bail!("config.json: {field} true is not implemented ({what})");
            }
        }
        let fraction = self.rotary_emb_fraction.unwrap_or(0.0);
        if fraction != 1.0 {
            bail!(
                "config.json: rotary_emb_fraction {fraction} is not implemented (only 1.0, rotary positions over the whole head; \
                 0 means a learned position table)"
            );
        }
        if let Some(b) = self.rotary_emb_scale_base {
            bail!("config.json: rotary_emb_scale_base {b} is not implemented (xPos scaled RoPE)");
        }
        // The custom code builds its dynamic-NTK rotary embedding whenever the factor is
        // truthy (1.0 when absent); it changes the base only when a batch is longer than
        // max_trained_positions (NomicBertDynamicNTKRotaryEmbedding._update_cos_sin_cache).
        let trained = self.max_trained_positions.unwrap_or(2048);
        if let Some(f) = self.rotary_scaling_factor.unwrap_or(Some(1.0)).filter(|&f| f != 0.0) {
            if max_tokens > trained {
                bail!(
                    "config.json: rotary_scaling_factor {f} is not implemented (dynamic NTK RoPE, which rescales \
                     sequences longer than max_trained_positions {trained}, and this model accepts {max_tokens} tokens)"
                );
            }
        }
        let act = match self.activation_function.as_deref().unwrap_or("gelu_new") {
            "swiglu" => Activation::Silu,
            // The custom code passes F.gelu (exact) as the gate's activation.
            "geglu" => Activation::Gelu,
            other => bail!(
                "config.json: activation_function {other:?} is not implemented (only the gated \"swiglu\" and \"geglu\" MLPs)"
            ),
        };
        // NomciBertGatedMLP: n_inner (else 8/3 of the width), rounded up to a multiple of 256.
        let inner = self.n_inner.unwrap_or(8 * hidden / 3);
        let multiple = self.pad_vocab_size_multiple.unwrap_or(1).max(1);
        let vocab = self.vocab_size.unwrap_or(50257);
        Ok(Dims {
            hidden,
            heads,
            head_dim: hidden / heads,
            layers: self.n_layer.unwrap_or(12),
            inner: (inner + 255) / 256 * 256,
            // NomicBertModel pads config.vocab_size up to a multiple of pad_vocab_size_multiple.
            vocab_rows: (vocab + multiple - 1) / multiple * multiple,
            type_vocab: self.type_vocab_size.unwrap_or(2),
            eps: self.layer_norm_epsilon.unwrap_or(1e-5),
            act,
            rope_theta: self.rotary_emb_base.unwrap_or(1000.0),
            rope_scale: 1.0,
            qkv_bias: self.qkv_proj_bias.unwrap_or(true),
            fc1_bias: self.mlp_fc1_bias.unwrap_or(true),
            fc2_bias: self.mlp_fc2_bias.unwrap_or(true),
        })
    }
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
    /// up and gate projections, in that order: fused in the checkpoint (gte's
    /// `up_gate_proj`) or here, one GEMM.
    up_gate: Linear,
    down: Linear,
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
    inner: i32,
    rope_theta: f32,
    rope_scale: f32,
    act: Activation,
    kernels: Kernels,
}

impl NomicBert {
    pub fn load(d: &Dims, w: &mut Weights, kernels: Kernels) -> Result<NomicBert> {
        let (hidden, width, inner, eps) = (d.hidden, d.heads * d.head_dim, d.inner, d.eps);
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
            let up_gate = if w.has(&format!("{p}.mlp.up_gate_proj.weight")) {
                w.linear(&format!("{p}.mlp.up_gate_proj"), hidden, 2 * inner, d.fc1_bias)?
            } else {
                let up = w.linear(&format!("{p}.mlp.up_proj"), hidden, inner, d.fc1_bias)?;
                let gate = w.linear(&format!("{p}.mlp.gate_proj"), hidden, inner, d.fc1_bias)?;
                Linear::concat(vec![up, gate])?
            };
            layers.push(Layer {
                qkv,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), width, hidden, d.qkv_bias)?,
                attn_norm: Norm::load(w, &format!("{p}.post_attention_layernorm"), hidden, eps)?,
                up_gate,
                down: w.linear(&format!("{p}.mlp.down_proj"), inner, hidden, d.fc2_bias)?,
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
            inner,
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
            let qkv = layer.qkv.forward(&x)?;
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
            let (attn, attn_bias) = layer.o_proj.forward_unbiased(&ctx)?;
            x = layer.attn_norm.add_apply(self.kernels, &attn, attn_bias, &x)?;
            let ug = layer.up_gate.forward(&x)?;
            let h = self.act.gated(self.kernels, &ug, self.inner, false)?;
            let (out, out_bias) = layer.down.forward_unbiased(&h)?;
            x = layer.mlp_norm.add_apply(self.kernels, &out, out_bias, &x)?;
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
    use serde_json::json;

    /// The Hub's config.json of nomic-ai/nomic-embed-text-v1.5 (the fields that matter).
    fn hub_v15() -> serde_json::Value {
        json!({"activation_function": "swiglu", "architectures": ["NomicBertModel"], "causal": false,
            "layer_norm_epsilon": 1e-12, "max_trained_positions": 2048, "mlp_fc1_bias": false, "mlp_fc2_bias": false,
            "model_type": "nomic_bert", "n_embd": 768, "n_head": 12, "n_inner": 3072, "n_layer": 12,
            "n_positions": 8192, "pad_vocab_size_multiple": 64, "parallel_block": false, "prenorm": false,
            "qkv_proj_bias": false, "rotary_emb_base": 1000, "rotary_emb_fraction": 1.0,
            "rotary_emb_interleaved": false, "rotary_emb_scale_base": null, "rotary_scaling_factor": null,
            "type_vocab_size": 2, "use_rms_norm": false, "vocab_size": 30528})
    }

    fn dims(v: &serde_json::Value, max_tokens: u32) -> Result<Dims> {
        parse_config::<NomicBertConfig>(v)?.dims(max_tokens)
    }

    fn refusal(v: &serde_json::Value, max_tokens: u32) -> String {
        dims(v, max_tokens).unwrap_err().to_string()
    }

    #[test]
    fn hub_and_transformers_configs_read_alike() {
        let hub = dims(&hub_v15(), 8192).unwrap();
        let native = dims(
            &json!({"hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12, "intermediate_size": 3072,
                "hidden_act": "silu", "layer_norm_eps": 1e-12, "vocab_size": 30528, "type_vocab_size": 2,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0}}),
            8192,
        )
        .unwrap();
        assert_eq!(hub, native);
        assert_eq!((hub.head_dim, hub.inner, hub.rope_theta, hub.qkv_bias), (64, 3072, 1000.0, false));
        // The custom code rounds the MLP width up to 256 and pads the vocabulary.
        let mut v = hub_v15();
        v["n_inner"] = 200.into();
        v["vocab_size"] = 1000.into();
        let d = dims(&v, 8192).unwrap();
        assert_eq!((d.inner, d.vocab_rows), (256, 1024));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: &[(&str, serde_json::Value)] = &[
            ("moe_every_n_layers", json!(2)),
            ("num_experts", json!(8)),
            ("rotary_emb_fraction", json!(0.5)),
            ("rotary_emb_interleaved", json!(true)),
            ("rotary_emb_scale_base", json!(512)),
            ("prenorm", json!(true)),
            ("parallel_block", json!(true)),
            ("use_rms_norm", json!(true)),
            ("causal", json!(true)),
            ("num_heads_kv", json!(4)),
            ("activation_function", json!("gelu")),
            ("activation_function", json!("glu")),
            ("rotary_scaling_factor", json!(2.0)),
        ];
        for (field, value) in cases {
            let mut v = hub_v15();
            v[*field] = value.clone();
            let err = refusal(&v, 8192);
            assert!(err.contains(field), "{field}: {err}");
        }
        // Absent, the custom code's defaults: no rotary (a learned table) and the factor 1.0.
        let mut v = hub_v15();
        v.as_object_mut().unwrap().remove("rotary_emb_fraction");
        assert!(refusal(&v, 512).contains("rotary_emb_fraction"));
        let mut v = hub_v15();
        v.as_object_mut().unwrap().remove("rotary_scaling_factor");
        assert!(refusal(&v, 8192).contains("rotary_scaling_factor"));
        // MoE in transformers' spelling too.
        let err = refusal(&json!({"hidden_size": 64, "num_experts": 8, "moe_every_n_layers": 2}), 512);
        assert!(err.contains("moe_every_n_layers"), "{err}");
        // transformers' spelling: a RoPE scaling type.
        let err =
            refusal(&json!({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000.0}}), 512);
        assert!(err.contains("rope_parameters") && err.contains("dynamic"), "{err}");
    }

    #[test]
    fn dynamic_ntk_within_the_trained_length_is_plain_rope() {
        // arctic-embed-m-long / nomic v1.5 loaded with rotary_scaling_factor 2: identical to
        // plain RoPE while no sequence is longer than max_trained_positions.
        let mut v = hub_v15();
        v["rotary_scaling_factor"] = 2.0.into();
        assert_eq!(dims(&v, 2048).unwrap(), dims(&hub_v15(), 2048).unwrap());
        assert!(refusal(&v, 2049).contains("max_trained_positions 2048"));
    }

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
