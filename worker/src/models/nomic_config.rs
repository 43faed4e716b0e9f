//! config.json of a NomicBERT model (`nomic_bert.rs`), in either spelling: transformers'
//! `NomicBertConfig` or the Hub's custom-code config (a GPT2Config: `n_embd`, ...), resolved
//! into the network's sizes and options ([`Dims`]), with every value the code does not compute
//! refused by field.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer};

use super::nomic_moe::{MoeConfig, MoeDims};
use super::rope::{self, RopeParameters};
use super::{check_positive, Activation};

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
    #[serde(flatten)]
    pub moe: MoeConfig,
    /// An MLX-quantized checkpoint's block (weights.rs).
    #[serde(default)]
    pub quantization: Option<serde_json::Value>,

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

/// The dense blocks' MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(act(gate(x)) * up(x))`.
    Gated,
    /// `fc2(act(fc1(x)))`.
    Plain,
}

/// The network's sizes and options, from either spelling, once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub hidden: i32,
    pub heads: i32,
    pub head_dim: i32,
    pub layers: i32,
    /// Width of the MLP (of each expert, in a mixture-of-experts block).
    pub inner: i32,
    pub mlp: MlpKind,
    /// Mixture-of-experts blocks, if any.
    pub moe: Option<MoeDims>,
    /// Rows of the word table (the custom code pads the vocabulary).
    pub vocab_rows: i32,
    pub type_vocab: i32,
    pub eps: f32,
    /// Activation of the gate, or of the plain MLP and the experts.
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
        let moe = self.moe.dims()?;
        if moe.is_some() {
            if self.n_embd.is_none() {
                bail!("config.json: moe_every_n_layers outside the Hub's custom-code config (n_embd, ...) is not implemented");
            }
            // The experts are stored as two packed blocks (experts.mlp.w1/w2) that the
            // quantizer does not quantize (docs/quantization.md).
            if self.quantization.as_ref().is_some_and(|q| !q.is_null()) {
                bail!(
                    "config.json: quantization of a mixture-of-experts model (moe_every_n_layers) is not implemented"
                );
            }
        }
        let dims = if self.n_embd.is_some() { self.custom_dims(max_tokens)? } else { self.transformers_dims()? };
        Dims { moe, ..dims }.checked()
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
            mlp: MlpKind::Gated,
            moe: None,
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
        let (mlp, act) = match self.activation_function.as_deref().unwrap_or("gelu_new") {
            "swiglu" => (MlpKind::Gated, Activation::Silu),
            // The custom code passes F.gelu (exact) as the gate's activation.
            "geglu" => (MlpKind::Gated, Activation::Gelu),
            // nomic-embed-text-v2-moe: the plain Mlp and the experts with F.gelu
            // (contrastors layers/block.py).
            "gelu" => (MlpKind::Plain, Activation::Gelu),
            other => bail!(
                "config.json: activation_function {other:?} is not implemented (only the gated \"swiglu\" and \"geglu\" MLPs \
                 and the plain \"gelu\" one)"
            ),
        };
        let inner = match mlp {
            // NomciBertGatedMLP: n_inner (else 8/3 of the width), rounded up to a multiple of 256.
            MlpKind::Gated => (self.n_inner.unwrap_or(8 * hidden / 3) + 255) / 256 * 256,
            // Mlp: n_inner (else 4 times the width), as it is.
            MlpKind::Plain => self.n_inner.unwrap_or(4 * hidden),
        };
        let multiple = self.pad_vocab_size_multiple.unwrap_or(1).max(1);
        let vocab = self.vocab_size.unwrap_or(50257);
        Ok(Dims {
            hidden,
            heads,
            head_dim: hidden / heads,
            layers: self.n_layer.unwrap_or(12),
            inner,
            mlp,
            moe: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::parse_config;
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
            ("moe_every_n_layers", json!(1)),
            ("num_experts", json!(8)),
            ("rotary_emb_fraction", json!(0.5)),
            ("rotary_emb_interleaved", json!(true)),
            ("rotary_emb_scale_base", json!(512)),
            ("prenorm", json!(true)),
            ("parallel_block", json!(true)),
            ("use_rms_norm", json!(true)),
            ("causal", json!(true)),
            ("num_heads_kv", json!(4)),
            ("activation_function", json!("gelu_new")),
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
        let err = refusal(&json!({"hidden_size": 64, "num_experts": 8, "moe_every_n_layers": 2, "moe_top_k": 2}), 512);
        assert!(err.contains("moe_every_n_layers"), "{err}");
        // transformers' spelling: a RoPE scaling type.
        let err =
            refusal(&json!({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000.0}}), 512);
        assert!(err.contains("rope_parameters") && err.contains("dynamic"), "{err}");
    }

    /// nomic-embed-text-v2-moe's fields (tests/fixtures/published) over v1.5's.
    fn hub_v2_moe() -> serde_json::Value {
        let mut v = hub_v15();
        for (k, x) in [
            ("activation_function", json!("gelu")),
            ("mlp_fc1_bias", json!(true)),
            ("mlp_fc2_bias", json!(true)),
            ("qkv_proj_bias", json!(true)),
            ("moe_every_n_layers", json!(2)),
            ("num_experts", json!(8)),
            ("moe_top_k", json!(2)),
            ("moe_normalize_expert_weights", json!(false)),
            ("num_shared_experts", json!(0)),
            ("expert_choice_router", json!(false)),
            ("ffn_div", json!(1)),
            ("moe_impl", json!("megablocks")),
            ("vocab_size", json!(250048)),
        ] {
            v[k] = x;
        }
        v
    }

    #[test]
    fn v2_moe_reads_as_plain_gelu_blocks_and_experts() {
        let d = dims(&hub_v2_moe(), 512).unwrap();
        assert_eq!(
            (d.mlp, d.act, d.inner, d.qkv_bias, d.fc1_bias),
            (MlpKind::Plain, Activation::Gelu, 3072, true, true)
        );
        assert_eq!(d.moe, Some(MoeDims { every_n: 2, experts: 8, top_k: 2 }));
        assert_eq!(d.vocab_rows, 250048);
        let mut v = hub_v2_moe();
        v["moe_normalize_expert_weights"] = json!(2);
        assert!(refusal(&v, 512).contains("moe_normalize_expert_weights"));
        v = hub_v2_moe();
        v["quantization"] = json!({"group_size": 64, "bits": 8});
        assert!(refusal(&v, 512).contains("quantization"));
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
}
