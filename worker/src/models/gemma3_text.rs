//! Gemma 3 text models as embedders: bidirectional (EmbeddingGemma-300m) or causal
//! (harrier-oss-v1-270m, last-token pooled). Embeddings scaled by `sqrt(hidden_size)`,
//! blocks with RMSNorm before and after both attention and MLP, grouped-query attention with
//! per-head q/k RMSNorm and RoPE, a GELU-tanh gated MLP, a final RMSNorm; full attention on
//! some layers and a sliding window on the others.
//!
//! Follows transformers 5.24's `modeling_gemma3.py` / `configuration_gemma3.py`:
//! - `Gemma3RMSNorm`: `x / rms(x) * (1 + weight)` (the stored weight is an offset from 1).
//! - `Gemma3TextScaledWordEmbedding`: `embed(ids) * hidden_size ** 0.5`, the scale cast to the
//!   weights' dtype.
//! - `Gemma3DecoderLayer`: `x += post_attention_norm(attn(input_norm(x)))`,
//!   `x += post_feedforward_norm(mlp(pre_feedforward_norm(x)))`.
//! - `Gemma3Attention`: q/k RMSNorm over `head_dim` before rotate-half RoPE, scores scaled by
//!   `query_pre_attn_scalar ** -0.5` (not `head_dim`'s).
//! - `Gemma3MLP`: `down(act(gate(x)) * up(x))`.
//! - Layer types: `layer_types`, else every `sliding_window_pattern`-th layer (from 1) full.
//!   RoPE bases per type: `rope_parameters[type]`, else `rope_theta` (full, default 1e6) and
//!   `rope_local_base_freq` (sliding, default 1e4).
//! - With `use_bidirectional_attention`, full layers see every token and a sliding layer's
//!   query sees keys with `abs(q - kv) < sliding_window // 2 + 1` (the config class halves
//!   config.json's value; `_bidirectional_window_overlay`): a window of radius
//!   `sliding_window // 2`. Without it attention is causal, and a sliding layer's query sees
//!   the `sliding_window` keys up to itself (masking_utils' `sliding_window_overlay`,
//!   `kv > q - sliding_window`).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use mlx_rs::fast::rms_norm;
use mlx_rs::{Array, Dtype};
use serde::Deserialize;

use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};

use super::attention::{attention, Heads, Mask};
use super::rope::{rope, RopeParameters};
use super::{
    check_positive, parse_config, residual_rms_norm, strip_prefix, Activation, Architecture, Inputs, Kernels, Load,
    Loaded, Network,
};
use crate::cpu_attention::HeadBlock;
use crate::cpu_kernels::rms_norm_f32;
use crate::layers::{Embedding, Linear};
use crate::weights::Weights;

pub const ARCHITECTURE: Architecture = Architecture { family: "gemma3_text", check, sanitize, load };

fn check(facts: &ModelFacts) -> Result<()> {
    let config: Gemma3TextConfig = parse_config(&facts.config)?;
    config.check()?;
    if !config.bidirectional() && facts.pooling == Pooling::CLS {
        bail!(
            "{}: CLS pooling of a causal Gemma 3 (use_bidirectional_attention is not true): its first token sees \
             only itself; a causal Gemma 3 embeds with last-token or mean pooling from its sentence-transformers files",
            facts.architecture
        );
    }
    if !matches!(facts.pooling, Pooling::Embed(_)) {
        bail!(
            "{}: a Gemma 3 reranker ({}) is not implemented; only embedding models",
            facts.architecture,
            facts.pooling.as_str()
        );
    }
    Ok(())
}

fn load(l: &mut Load) -> Result<Loaded> {
    let config: Gemma3TextConfig = parse_config(&l.facts.config)?;
    let net = Gemma3Text::load(&config, l.weights, l.kernels)?;
    Ok(Loaded { network: Box::new(net), scorer: None })
}

/// config.json of a Gemma 3 text model (transformers' `Gemma3TextConfig`; the fields
/// mlx-serve reads, with that class's defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3TextConfig {
    pub hidden_size: i32,
    pub intermediate_size: i32,
    pub num_hidden_layers: i32,
    pub num_attention_heads: i32,
    #[serde(default = "default_kv_heads")]
    pub num_key_value_heads: i32,
    #[serde(default = "default_head_dim")]
    pub head_dim: i32,
    pub vocab_size: i32,
    #[serde(default = "default_activation")]
    pub hidden_activation: String,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_scalar")]
    pub query_pre_attn_scalar: f32,
    /// config.json's value (the config class halves it when bidirectional). `null` is
    /// refused when a layer slides.
    #[serde(default = "default_window")]
    pub sliding_window: Option<i32>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "default_pattern")]
    pub sliding_window_pattern: i32,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    /// Stored by `Gemma3Attention` but never applied by transformers' Gemma 3; refused
    /// rather than guessed.
    #[serde(default)]
    pub attn_logit_softcapping: Option<f32>,
    #[serde(default)]
    pub rope_theta: Option<f32>,
    #[serde(default)]
    pub rope_local_base_freq: Option<f32>,
    /// Applies to the full-attention layers (`convert_rope_params_to_dict`).
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// transformers 5: `{"full_attention": {...}, "sliding_attention": {...}}`.
    #[serde(default)]
    pub rope_parameters: Option<BTreeMap<String, RopeParameters>>,
}

fn default_kv_heads() -> i32 {
    4
}
fn default_head_dim() -> i32 {
    256
}
fn default_activation() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_eps() -> f32 {
    1e-6
}
fn default_scalar() -> f32 {
    256.0
}
fn default_window() -> Option<i32> {
    Some(4096)
}
fn default_pattern() -> i32 {
    6
}

const FULL: &str = "full_attention";
const SLIDING: &str = "sliding_attention";

impl Gemma3TextConfig {
    /// Whether each layer is a full-attention layer.
    pub fn full_layers(&self) -> Result<Vec<bool>> {
        match &self.layer_types {
            Some(types) => {
                if types.len() != self.num_hidden_layers as usize {
                    bail!(
                        "config.json: layer_types has {} entries for num_hidden_layers {}",
                        types.len(),
                        self.num_hidden_layers
                    );
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        FULL => Ok(true),
                        SLIDING => Ok(false),
                        other => bail!(
                            "config.json: layer_types entry {other:?} is not implemented (only {FULL:?} and {SLIDING:?})"
                        ),
                    })
                    .collect()
            }
            None => Ok((0..self.num_hidden_layers).map(|i| (i + 1) % self.sliding_window_pattern == 0).collect()),
        }
    }

    pub fn bidirectional(&self) -> bool {
        self.use_bidirectional_attention == Some(true)
    }

    /// The full and the sliding layers' masks.
    pub fn masks(&self) -> Result<(Mask, Mask)> {
        let window = match self.sliding_window {
            Some(w) if w > 0 => w as usize,
            Some(w) => bail!("config.json: sliding_window = {w} is out of range"),
            None => bail!("config.json: sliding_window is null but layers slide (layer_types)"),
        };
        Ok(if self.bidirectional() {
            (Mask::Full, Mask::Window(window / 2))
        } else {
            (Mask::Causal, Mask::CausalWindow(window))
        })
    }

    /// RoPE base of the full and of the sliding layers; only the default RoPE type.
    pub fn rope_thetas(&self) -> Result<(f32, f32)> {
        let refuse_scaling = |field: &str, rp: &RopeParameters| -> Result<()> {
            let ty = rp.rope_type.as_deref().or(rp.kind.as_deref()).unwrap_or("default");
            if ty != "default" {
                bail!("config.json: {field} has RoPE type {ty:?}; only default RoPE is implemented");
            }
            if let Some(f) = rp.partial_rotary_factor.filter(|&f| f != 1.0) {
                bail!("config.json: {field} has partial_rotary_factor {f}; RoPE over the whole head only");
            }
            Ok(())
        };
        if let Some(rp) = &self.rope_scaling {
            refuse_scaling("rope_scaling", rp)?;
        }
        if let Some(other) = self.rope_parameters.iter().flat_map(|p| p.keys()).find(|k| *k != FULL && *k != SLIDING) {
            bail!("config.json: rope_parameters.{other} is not a Gemma 3 layer type ({FULL}, {SLIDING})");
        }
        let theta = |kind: &str, top: Option<f32>, default: f32| -> Result<f32> {
            let own = self.rope_parameters.as_ref().and_then(|p| p.get(kind));
            if let Some(rp) = own {
                refuse_scaling(&format!("rope_parameters.{kind}"), rp)?;
            }
            let scaling = if kind == FULL { self.rope_scaling.as_ref().and_then(|rp| rp.rope_theta) } else { None };
            Ok(own.and_then(|rp| rp.rope_theta).or(scaling).or(top).unwrap_or(default))
        };
        Ok((theta(FULL, self.rope_theta, 1_000_000.0)?, theta(SLIDING, self.rope_local_base_freq, 10_000.0)?))
    }

    pub(crate) fn check(&self) -> Result<()> {
        check_positive(&[
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("sliding_window_pattern", self.sliding_window_pattern),
        ])?;
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            bail!(
                "config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.query_pre_attn_scalar.is_nan() || self.query_pre_attn_scalar <= 0.0 {
            bail!("config.json: query_pre_attn_scalar = {} is out of range", self.query_pre_attn_scalar);
        }
        if let Some(cap) = self.attn_logit_softcapping {
            bail!("config.json: attn_logit_softcapping {cap} is not implemented");
        }
        Activation::from_name(&self.hidden_activation).map_err(|e| anyhow!("config.json: hidden_activation: {e}"))?;
        if self.full_layers()?.contains(&false) {
            self.masks()?;
        }
        self.rope_thetas()?;
        Ok(())
    }
}

/// Checkpoint names → module names: `Gemma3ForCausalLM`'s `model.` prefix dropped.
pub fn sanitize(name: &str) -> String {
    strip_prefix(name, &["model."]).to_owned()
}

/// `Gemma3RMSNorm`'s weight as MLX's `rms_norm` takes it: `1 + w`, in float32 (see [`norm`]).
fn norm_weight(w: &mut Weights, name: &str, dim: i32) -> Result<Array> {
    let stored = w.take(name, &[dim])?;
    Ok(stored.as_dtype(Dtype::Float32)?.add(Array::from_f32(1.0))?)
}

/// `Gemma3RMSNorm`: normalized and scaled in float32, then cast back to the input's dtype
/// (`(x.float() * (1 + w.float())).type_as(x)`, unlike Llama's norm), so half precision
/// rounds once per norm, as transformers does.
/// With host kernels (float32 on the CPU) one vectorized pass (`cpu_kernels::rms_norm_f32`).
fn norm(kernels: Kernels, x: &Array, weight: &Array, eps: f32) -> Result<Array> {
    if x.dtype() == Dtype::Float32 {
        if kernels == Kernels::Host {
            if let Some(y) = rms_norm_f32(x, weight, eps)? {
                return Ok(y);
            }
        }
        return Ok(rms_norm(x, Some(weight), eps)?);
    }
    Ok(rms_norm(&x.as_dtype(Dtype::Float32)?, Some(weight), eps)?.as_dtype(x.dtype())?)
}

struct Layer {
    input_norm: Array,
    /// q, k and v projections fused into one GEMM.
    qkv: Linear,
    q_norm: Array,
    k_norm: Array,
    o_proj: Linear,
    post_attn_norm: Array,
    pre_ff_norm: Array,
    /// gate and up projections fused into one GEMM.
    gate_up: Linear,
    down: Linear,
    post_ff_norm: Array,
    full: bool,
}

/// The Gemma 3 text body (scaled embeddings, blocks, final norm).
pub struct Gemma3Text {
    embed_tokens: Embedding,
    embed_scale: f32,
    layers: Vec<Layer>,
    norm: Array,
    hidden: i32,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    intermediate: i32,
    eps: f32,
    scale: f32,
    act: Activation,
    full_theta: f32,
    sliding_theta: f32,
    full_mask: Mask,
    sliding_mask: Mask,
    kernels: Kernels,
}

impl Gemma3Text {
    pub fn load(config: &Gemma3TextConfig, w: &mut Weights, kernels: Kernels) -> Result<Gemma3Text> {
        config.check()?;
        let (hidden, heads, kv_heads, head_dim) =
            (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim);
        let inter = config.intermediate_size;
        let bias = config.attention_bias;
        let (full_theta, sliding_theta) = config.rope_thetas()?;
        let full = config.full_layers()?;
        let full_mask = if config.bidirectional() { Mask::Full } else { Mask::Causal };
        let (full_mask, sliding_mask) = if full.contains(&false) { config.masks()? } else { (full_mask, full_mask) };
        let embed_tokens = w.embedding("embed_tokens", config.vocab_size, hidden)?;
        let mut layers = Vec::with_capacity(full.len());
        for (i, full) in full.into_iter().enumerate() {
            let p = format!("layers.{i}");
            let q = w.linear(&format!("{p}.self_attn.q_proj"), hidden, heads * head_dim, bias)?;
            let k = w.linear(&format!("{p}.self_attn.k_proj"), hidden, kv_heads * head_dim, bias)?;
            let v = w.linear(&format!("{p}.self_attn.v_proj"), hidden, kv_heads * head_dim, bias)?;
            let gate = w.linear(&format!("{p}.mlp.gate_proj"), hidden, inter, false)?;
            let up = w.linear(&format!("{p}.mlp.up_proj"), hidden, inter, false)?;
            layers.push(Layer {
                input_norm: norm_weight(w, &format!("{p}.input_layernorm.weight"), hidden)?,
                qkv: Linear::concat(vec![q, k, v])?,
                q_norm: norm_weight(w, &format!("{p}.self_attn.q_norm.weight"), head_dim)?,
                k_norm: norm_weight(w, &format!("{p}.self_attn.k_norm.weight"), head_dim)?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), heads * head_dim, hidden, bias)?,
                post_attn_norm: norm_weight(w, &format!("{p}.post_attention_layernorm.weight"), hidden)?,
                pre_ff_norm: norm_weight(w, &format!("{p}.pre_feedforward_layernorm.weight"), hidden)?,
                gate_up: Linear::concat(vec![gate, up])?,
                down: w.linear(&format!("{p}.mlp.down_proj"), inter, hidden, false)?,
                post_ff_norm: norm_weight(w, &format!("{p}.post_feedforward_layernorm.weight"), hidden)?,
                full,
            });
        }
        let norm = norm_weight(w, "norm.weight", hidden)?;
        Ok(Gemma3Text {
            embed_tokens,
            embed_scale: (hidden as f32).sqrt(),
            layers,
            norm,
            hidden,
            heads,
            kv_heads,
            head_dim,
            intermediate: inter,
            eps: config.rms_norm_eps,
            scale: 1.0 / config.query_pre_attn_scalar.sqrt(),
            act: Activation::from_name(&config.hidden_activation)?,
            full_theta,
            sliding_theta,
            full_mask,
            sliding_mask,
            kernels,
        })
    }

    /// Per-head RMSNorm, then RoPE at each token's own position, of `[total, heads *
    /// head_dim]` columns; returns `[total, heads * head_dim]`.
    fn norm_rope(&self, x: &Array, weight: &Array, heads: i32, theta: f32, positions: &Array) -> Result<Array> {
        let total = x.dim(0);
        let x = x.reshape(&[total, heads, 1, self.head_dim])?;
        let x = norm(self.kernels, &x, weight, self.eps)?;
        let x = rope(self.kernels, &x, theta, 1.0, positions)?;
        Ok(x.reshape(&[total, heads * self.head_dim])?)
    }
}

impl Gemma3Text {
    /// `(x + y, norm(x + y))` with the Gemma norm's `weight`: one host pass in float32 with
    /// host kernels (`residual_rms_norm`); otherwise [`norm`]'s float32 round trip.
    fn add_norm(&self, x: &Array, y: &Array, weight: &Array) -> Result<(Array, Array)> {
        if self.kernels == Kernels::Host {
            return residual_rms_norm(self.kernels, x, y, weight, self.eps);
        }
        let sum = x.add(y)?;
        let normed = norm(self.kernels, &sum, weight, self.eps)?;
        Ok((sum, normed))
    }
}

impl Network for Gemma3Text {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let (q_width, kv_width) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let table = self.embed_tokens.lookup(&inputs.ids)?;
        // The scale in the table's dtype, as transformers casts it.
        let mut x = table.multiply(Array::from_f32(self.embed_scale).as_dtype(table.dtype())?)?;
        // Pre-norm: each residual sum is normed for the sublayer after it in the same pass.
        let mut r = match self.layers.first() {
            Some(l) => norm(self.kernels, &x, &l.input_norm, self.eps)?,
            None => x.clone(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let qkv = inputs.rows_in_slices(&[&r], |rows| layer.qkv.forward(&rows[0]))?;
            let parts = qkv.split_at_indices(&[q_width, q_width + kv_width], 1)?;
            let theta = if layer.full { self.full_theta } else { self.sliding_theta };
            let q = self.norm_rope(&parts[0], &layer.q_norm, self.heads, theta, &inputs.positions)?;
            let k = self.norm_rope(&parts[1], &layer.k_norm, self.kv_heads, theta, &inputs.positions)?;
            let heads = Heads {
                q: HeadBlock { array: &q, col: 0, heads: self.heads as usize },
                k: HeadBlock { array: &k, col: 0, heads: self.kv_heads as usize },
                // V straight from the fused projection: a column block, no copy.
                v: HeadBlock { array: &qkv, col: (q_width + kv_width) as usize, heads: self.kv_heads as usize },
                head_dim: self.head_dim,
            };
            let mask = if layer.full { self.full_mask } else { self.sliding_mask };
            let ctx = attention(self.kernels, &heads, inputs, self.scale, mask, None)?;
            // The next layer's input norm, or after the last layer the final norm.
            let next = self.layers.get(i + 1).map_or(&self.norm, |l| &l.input_norm);
            (x, r) = inputs.rows_in_slices(&[&ctx, &x], |rows| {
                let (ctx, x) = (&rows[0], &rows[1]);
                let a = layer.o_proj.forward(ctx)?;
                let (sum, ff_in) =
                    self.add_norm(x, &norm(self.kernels, &a, &layer.post_attn_norm, self.eps)?, &layer.pre_ff_norm)?;
                let gu = layer.gate_up.forward(&ff_in)?;
                let h = self.act.gated(self.kernels, &gu, self.intermediate, true)?;
                let m = layer.down.forward(&h)?;
                self.add_norm(&sum, &norm(self.kernels, &m, &layer.post_ff_norm, self.eps)?, next)
            })?;
            inputs.layer_done(&[&x, &r])?;
        }
        if self.layers.is_empty() {
            return norm(self.kernels, &x, &self.norm, self.eps);
        }
        Ok(r)
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

    /// EmbeddingGemma-300m's config.json (google/embeddinggemma-300m, transformers 4.57 layout),
    /// for the tests: the published sizes and flags.
    fn embeddinggemma_config() -> Value {
        serde_json::json!({
            "_sliding_window_pattern": 6, "architectures": ["Gemma3TextModel"], "attention_bias": false,
            "attention_dropout": 0.0, "attn_logit_softcapping": null, "bos_token_id": 2, "eos_token_id": 1,
            "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 768, "intermediate_size": 1152,
            "layer_types": (0..24).map(|i| if (i + 1) % 6 == 0 { FULL } else { SLIDING }).collect::<Vec<_>>(),
            "max_position_embeddings": 2048, "model_type": "gemma3_text", "num_attention_heads": 3,
            "num_hidden_layers": 24, "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_scaling": null, "rope_theta": 1000000.0,
            "sliding_window": 512, "use_bidirectional_attention": true, "use_cache": true, "vocab_size": 262144
        })
    }

    fn config(v: &Value) -> Gemma3TextConfig {
        parse_config(v).unwrap()
    }

    fn refusal(field: &str, value: Value) -> String {
        let mut v = embeddinggemma_config();
        v[field] = value;
        config(&v).check().unwrap_err().to_string()
    }

    #[test]
    fn embeddinggemma_reads_as_transformers_does() {
        let c = config(&embeddinggemma_config());
        c.check().unwrap();
        let full = c.full_layers().unwrap();
        assert_eq!(full.iter().filter(|f| **f).count(), 4);
        assert!(full[5] && full[23] && !full[0]);
        // 512 in config.json: keys with |q - kv| < 512 // 2 + 1, i.e. within 256.
        assert_eq!(c.masks().unwrap(), (Mask::Full, Mask::Window(256)));
        // Causal (harrier-oss-v1-270m): the 512 keys up to the query.
        let mut v = embeddinggemma_config();
        v["use_bidirectional_attention"] = false.into();
        assert_eq!(config(&v).masks().unwrap(), (Mask::Causal, Mask::CausalWindow(512)));
        v.as_object_mut().unwrap().remove("use_bidirectional_attention");
        assert_eq!(config(&v).masks().unwrap(), (Mask::Causal, Mask::CausalWindow(512)));
        assert_eq!(c.rope_thetas().unwrap(), (1e6, 1e4));
        assert_eq!(c.query_pre_attn_scalar, 256.0);
    }

    #[test]
    fn layer_pattern_and_rope_layouts() {
        let mut v = embeddinggemma_config();
        v.as_object_mut().unwrap().remove("layer_types");
        v["num_hidden_layers"] = 7.into();
        v["sliding_window_pattern"] = 3.into();
        assert_eq!(config(&v).full_layers().unwrap(), [false, false, true, false, false, true, false]);
        v["rope_parameters"] = json!({"full_attention": {"rope_type": "default", "rope_theta": 5e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 2e3}});
        assert_eq!(config(&v).rope_thetas().unwrap(), (5e5, 2e3));
    }

    #[test]
    fn what_is_not_computed_is_refused_by_name() {
        for (field, value, says) in [
            ("sliding_window", json!(0), "sliding_window"),
            ("rope_scaling", json!({"rope_type": "linear", "factor": 8.0}), "rope_scaling"),
            ("rope_parameters", json!({"full_attention": {"rope_type": "yarn"}}), "rope_parameters.full_attention"),
            ("rope_parameters", json!({"chunked_attention": {"rope_type": "default"}}), "chunked_attention"),
            ("attn_logit_softcapping", json!(50.0), "attn_logit_softcapping"),
            ("sliding_window", Value::Null, "sliding_window"),
            ("layer_types", json!(["full_attention"]), "layer_types"),
            ("hidden_activation", json!("mish"), "hidden_activation"),
            ("num_key_value_heads", json!(2), "num_key_value_heads"),
            ("query_pre_attn_scalar", json!(0), "query_pre_attn_scalar"),
        ] {
            let e = refusal(field, value.clone());
            assert!(e.contains(says), "{field} = {value}: {e}");
        }
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("model.layers.0.self_attn.q_proj.weight"), "layers.0.self_attn.q_proj.weight");
        assert_eq!(sanitize("embed_tokens.weight"), "embed_tokens.weight");
    }
}
