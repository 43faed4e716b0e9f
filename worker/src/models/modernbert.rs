//! ModernBERT encoder (gte-modernbert-base, granite-embedding-english-r2,
//! gte-reranker-modernbert-base): token embeddings + LayerNorm, pre-norm blocks with RoPE
//! and GeGLU, global attention on some layers and a local window on the others, a final
//! LayerNorm; no biases unless the config asks for them.
//!
//! Follows transformers 5.24's `modeling_modernbert.py`:
//! - `ModernBertEncoderLayer`: `x += Wo(attn(attn_norm(x)))`, `x += mlp(mlp_norm(x))`;
//!   layer 0 has no attention norm (`nn.Identity`).
//! - `ModernBertMLP`: `Wi` gives `[input | gate]`, `Wo(act(input) * gate)`.
//! - `ModernBertAttention`: one `Wqkv` (q, k, v blocks of `heads × head_dim`), rotate-half
//!   RoPE with the theta of the layer's type.
//! - Layer types: `layer_types`, else every `global_attn_every_n_layers`-th layer from 0 is
//!   global (`ModernBertConfig.__post_init__`). A local layer's query sees the keys within
//!   `sliding_window = local_attention // 2` positions on either side
//!   (`ModernBertConfig.sliding_window`; masking_utils'
//!   `sliding_window_bidirectional_overlay`: `abs(q - kv) <= sliding_window`).
//! - RoPE thetas (`convert_rope_params_to_dict`): `rope_scaling`'s, else
//!   `rope_parameters[layer type]`'s, else `global_rope_theta` / `local_rope_theta`,
//!   else 160000 / 10000.
//! - `ModernBertForSequenceClassification`: CLS or mean (`classifier_pooling`) of the final
//!   states → `head.dense` → `classifier_activation` → `head.norm` → `classifier`.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mlx_rs::fast::layer_norm;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array};
use serde::Deserialize;

use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};

use super::attention::{attention, Heads, Mask};
use super::rope::{rope, RopeParameters};
use super::{
    check_positive, parse_config, strip_prefix, Activation, Architecture, Inputs, Kernels, Load, Loaded, Network,
};
use crate::cpu_attention::HeadBlock;
use crate::cpu_kernels::residual_layer_norm_f32;
use crate::heads::{check_single_label, Scorer, ScoringHead};
use crate::layers::{Embedding, Linear};
use crate::packing::Packing;
use crate::pooling;
use crate::weights::Weights;

pub const ARCHITECTURE: Architecture = Architecture { family: "modernbert", check, sanitize, load };

fn check(facts: &ModelFacts) -> Result<()> {
    let config: ModernBertConfig = parse_config(&facts.config)?;
    config.check()?;
    if facts.pooling == Pooling::CrossEncoder {
        config.check_head()?;
    }
    // A PyLate query's expansion tokens attend to its text only (`attend_to_expansion_tokens`
    // false); in a local layer, one more than the window's radius past the last text token
    // sees no key at all, which transformers' SDPA answers with a zero row and this worker does
    // not compute. A query has at least 3 text tokens ([CLS], the marker, [SEP]), so expansion
    // up to `radius + 3` tokens is always in reach (GTE-ModernColBERT-v1: radius 64, 32 tokens).
    if let Some(c) = facts.colbert.as_ref().filter(|c| c.do_query_expansion && !c.attend_to_expansion_tokens) {
        let radius = config.window_radius();
        if c.query_length as usize > radius + 3 {
            bail!(
                "PyLate ColBERT: query_length {} is beyond the reach of ModernBERT's local attention \
                 (local_attention {}, keys within {radius}): expansion tokens past {} would see no text token; \
                 not supported",
                c.query_length,
                config.local_attention,
                radius + 3
            );
        }
    }
    Ok(())
}

fn load(l: &mut Load) -> Result<Loaded> {
    let config: ModernBertConfig = parse_config(&l.facts.config)?;
    let net = ModernBert::load(&config, l.weights, l.kernels)?;
    let scorer = match l.facts.pooling {
        Pooling::CrossEncoder => Some(Scorer::Family(Box::new(ClassifierHead::load(&config, l.weights)?))),
        _ => None,
    };
    Ok(Loaded { network: Box::new(net), scorer })
}

/// config.json of a ModernBERT model (transformers' `ModernBertConfig`; fields mlx-serve
/// reads, with that class's defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct ModernBertConfig {
    pub hidden_size: i32,
    pub num_attention_heads: i32,
    pub num_hidden_layers: i32,
    pub intermediate_size: i32,
    pub vocab_size: i32,
    /// Not a ModernBertConfig field, but the rotary embedding reads it when present.
    #[serde(default)]
    pub head_dim: Option<i32>,
    #[serde(default = "default_activation")]
    pub hidden_activation: String,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f32,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// The local window's total width.
    #[serde(default = "default_local_attention")]
    pub local_attention: i32,
    /// The half-width; when config.json sets it, it replaces `local_attention / 2` (the
    /// config class's property setter).
    #[serde(default)]
    pub sliding_window: Option<i32>,
    #[serde(default = "default_every_n")]
    pub global_attn_every_n_layers: i32,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub global_rope_theta: Option<f32>,
    #[serde(default)]
    pub local_rope_theta: Option<f32>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// transformers 5: `{"full_attention": {...}, "sliding_attention": {...}}`.
    #[serde(default)]
    pub rope_parameters: Option<BTreeMap<String, RopeParameters>>,
    #[serde(default = "default_classifier_pooling")]
    pub classifier_pooling: String,
    #[serde(default = "default_activation")]
    pub classifier_activation: String,
    #[serde(default)]
    pub classifier_bias: bool,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn default_activation() -> String {
    "gelu".into()
}
fn default_norm_eps() -> f32 {
    1e-5
}
fn default_local_attention() -> i32 {
    128
}
fn default_every_n() -> i32 {
    3
}
fn default_classifier_pooling() -> String {
    "cls".into()
}

const GLOBAL: &str = "full_attention";
const LOCAL: &str = "sliding_attention";

impl ModernBertConfig {
    fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(1, BTreeMap::len)
    }

    fn head_dim(&self) -> i32 {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Whether each layer attends globally.
    pub fn global_layers(&self) -> Result<Vec<bool>> {
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
                        GLOBAL => Ok(true),
                        LOCAL => Ok(false),
                        other => bail!(
                            "config.json: layer_types entry {other:?} is not implemented (only {GLOBAL:?} and {LOCAL:?})"
                        ),
                    })
                    .collect()
            }
            None => Ok((0..self.num_hidden_layers).map(|i| i % self.global_attn_every_n_layers == 0).collect()),
        }
    }

    /// The local layers' window: keys within this many positions of the query.
    pub fn window_radius(&self) -> usize {
        self.sliding_window.unwrap_or(self.local_attention / 2) as usize
    }

    /// RoPE base of the global and of the local layers; only the default RoPE type is
    /// implemented.
    pub fn rope_thetas(&self) -> Result<(f32, f32)> {
        let refuse_scaling = |field: &str, rp: &RopeParameters| -> Result<()> {
            let ty = rp.rope_type.as_deref().or(rp.kind.as_deref()).unwrap_or("default");
            if ty != "default" {
                bail!("config.json: {field} has RoPE type {ty:?}; only default RoPE is implemented");
            }
            Ok(())
        };
        if let Some(rp) = &self.rope_scaling {
            refuse_scaling("rope_scaling", rp)?;
        }
        let theta = |kind: &str, top: Option<f32>, default: f32| -> Result<f32> {
            let own = self.rope_parameters.as_ref().and_then(|p| p.get(kind));
            if let Some(rp) = own {
                refuse_scaling(&format!("rope_parameters.{kind}"), rp)?;
            }
            Ok(self
                .rope_scaling
                .as_ref()
                .and_then(|rp| rp.rope_theta)
                .or(own.and_then(|rp| rp.rope_theta))
                .or(top)
                .unwrap_or(default))
        };
        if let Some(other) = self.rope_parameters.iter().flat_map(|p| p.keys()).find(|k| *k != GLOBAL && *k != LOCAL) {
            bail!("config.json: rope_parameters.{other} is not a ModernBERT layer type ({GLOBAL}, {LOCAL})");
        }
        Ok((theta(GLOBAL, self.global_rope_theta, 160_000.0)?, theta(LOCAL, self.local_rope_theta, 10_000.0)?))
    }

    pub(crate) fn check(&self) -> Result<()> {
        check_positive(&[
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("global_attn_every_n_layers", self.global_attn_every_n_layers),
        ])?;
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if let Some(d) = self.head_dim.filter(|d| *d != self.head_dim()) {
            bail!(
                "config.json: head_dim {d} differs from hidden_size / num_attention_heads = {} \
                 (transformers would rotate {d} dimensions of each {}-wide head; not implemented)",
                self.head_dim(),
                self.head_dim()
            );
        }
        if self.local_attention < 0 {
            bail!("config.json: local_attention = {} is out of range", self.local_attention);
        }
        if let Some(w) = self.sliding_window.filter(|w| *w < 0) {
            bail!("config.json: sliding_window = {w} is out of range");
        }
        Activation::from_name(&self.hidden_activation)
            .map_err(|e| anyhow::anyhow!("config.json: hidden_activation: {e}"))?;
        self.global_layers()?;
        self.rope_thetas()?;
        Ok(())
    }

    /// The sequence-classification head: one label, CLS or mean pooling.
    fn check_head(&self) -> Result<()> {
        check_single_label(self.num_labels())?;
        HeadPooling::parse(&self.classifier_pooling)?;
        Activation::from_name(&self.classifier_activation)
            .map_err(|e| anyhow::anyhow!("config.json: classifier_activation: {e}"))?;
        Ok(())
    }
}

/// Checkpoint names → module names: a task head's `model.` prefix dropped (`head.*` and
/// `classifier.*` stay).
pub fn sanitize(name: &str) -> String {
    strip_prefix(name, &["model."]).to_owned()
}

/// LayerNorm, with a bias only when `norm_bias` is set.
struct Norm {
    weight: Array,
    bias: Option<Array>,
    eps: f32,
}

impl Norm {
    fn load(w: &mut Weights, prefix: &str, dim: i32, bias: bool, eps: f32) -> Result<Norm> {
        let weight = w.take(&format!("{prefix}.weight"), &[dim])?;
        let bias = if bias { Some(w.take(&format!("{prefix}.bias"), &[dim])?) } else { None };
        Ok(Norm { weight, bias, eps })
    }

    fn apply(&self, x: &Array) -> Result<Array> {
        Ok(layer_norm(x, &self.weight, self.bias.as_ref(), self.eps)?)
    }

    /// The residual sum `x + y` and its norm; one pass on the host with host kernels
    /// (`cpu_kernels::residual_layer_norm_f32`).
    fn add_apply(&self, kernels: Kernels, x: &Array, y: &Array) -> Result<(Array, Array)> {
        if kernels == Kernels::Host {
            if let Some(pair) = residual_layer_norm_f32(x, y, &self.weight, self.bias.as_ref(), self.eps)? {
                return Ok(pair);
            }
        }
        let sum = x.add(y)?;
        let normed = self.apply(&sum)?;
        Ok((sum, normed))
    }
}

struct Layer {
    /// `None` in layer 0.
    attn_norm: Option<Norm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: Norm,
    /// `[hidden → 2 × intermediate]`: the input half, then the gate half.
    wi: Linear,
    mlp_out: Linear,
    global: bool,
}

/// The ModernBERT body (embeddings, blocks, final norm), without heads.
pub struct ModernBert {
    embed: Embedding,
    emb_norm: Norm,
    layers: Vec<Layer>,
    final_norm: Norm,
    hidden: i32,
    heads: i32,
    head_dim: i32,
    intermediate: i32,
    act: Activation,
    global_theta: f32,
    local_theta: f32,
    radius: usize,
    kernels: Kernels,
}

impl ModernBert {
    pub fn load(config: &ModernBertConfig, w: &mut Weights, kernels: Kernels) -> Result<ModernBert> {
        config.check()?;
        let (hidden, heads, inter) = (config.hidden_size, config.num_attention_heads, config.intermediate_size);
        let (eps, nb) = (config.norm_eps, config.norm_bias);
        let (global_theta, local_theta) = config.rope_thetas()?;
        let global = config.global_layers()?;
        let embed = w.embedding("embeddings.tok_embeddings", config.vocab_size, hidden)?;
        let emb_norm = Norm::load(w, "embeddings.norm", hidden, nb, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for (i, global) in global.into_iter().enumerate() {
            let p = format!("layers.{i}");
            layers.push(Layer {
                attn_norm: if i == 0 { None } else { Some(Norm::load(w, &format!("{p}.attn_norm"), hidden, nb, eps)?) },
                wqkv: w.linear(&format!("{p}.attn.Wqkv"), hidden, 3 * hidden, config.attention_bias)?,
                wo: w.linear(&format!("{p}.attn.Wo"), hidden, hidden, config.attention_bias)?,
                mlp_norm: Norm::load(w, &format!("{p}.mlp_norm"), hidden, nb, eps)?,
                wi: w.linear(&format!("{p}.mlp.Wi"), hidden, 2 * inter, config.mlp_bias)?,
                mlp_out: w.linear(&format!("{p}.mlp.Wo"), inter, hidden, config.mlp_bias)?,
                global,
            });
        }
        let final_norm = Norm::load(w, "final_norm", hidden, nb, eps)?;
        Ok(ModernBert {
            embed,
            emb_norm,
            layers,
            final_norm,
            hidden,
            heads,
            head_dim: hidden / heads,
            intermediate: inter,
            act: Activation::from_name(&config.hidden_activation)?,
            global_theta,
            local_theta,
            radius: config.window_radius(),
            kernels,
        })
    }
}

impl Network for ModernBert {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let (hidden, heads) = (self.hidden, self.heads);
        let mut x = self.emb_norm.apply(&self.embed.lookup(&inputs.ids)?)?;
        // Pre-norm: each residual sum is normed for the sublayer after it in the same pass.
        let mut normed = match self.layers.first().and_then(|l| l.attn_norm.as_ref()) {
            Some(n) => n.apply(&x)?,
            None => x.clone(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let qkv = inputs.rows_in_slices(&[&normed], |r| layer.wqkv.forward(&r[0]))?;
            let total = qkv.dim(0);
            // Q and K rotated together: `[total, 2 × heads, 1, head_dim]` (see qwen3.rs).
            let theta = if layer.global { self.global_theta } else { self.local_theta };
            let qk = qkv.index((.., ..2 * hidden)).reshape(&[total, 2 * heads, 1, self.head_dim])?;
            let qk = rope(self.kernels, &qk, theta, 1.0, &inputs.positions)?.reshape(&[total, 2 * hidden])?;
            let parts = Heads {
                q: HeadBlock { array: &qk, col: 0, heads: heads as usize },
                k: HeadBlock { array: &qk, col: hidden as usize, heads: heads as usize },
                v: HeadBlock { array: &qkv, col: 2 * hidden as usize, heads: heads as usize },
                head_dim: self.head_dim,
            };
            let mask = if layer.global { Mask::Full } else { Mask::Window(self.radius) };
            let ctx = attention(self.kernels, &parts, inputs, scale, mask, None)?;
            (x, normed) = inputs.rows_in_slices(&[&ctx, &x], |rows| {
                let (ctx, x) = (&rows[0], &rows[1]);
                let (sum, mlp_in) = layer.mlp_norm.add_apply(self.kernels, x, &layer.wo.forward(ctx)?)?;
                let wi = layer.wi.forward(&mlp_in)?;
                let h = self.act.gated(self.kernels, &wi, self.intermediate, true)?;
                let out = layer.mlp_out.forward(&h)?;
                // The next layer's attention norm, or after the last layer the final norm.
                Ok(match self.layers.get(i + 1).map(|l| l.attn_norm.as_ref()) {
                    Some(Some(n)) => n.add_apply(self.kernels, &sum, &out)?,
                    Some(None) => {
                        let s = sum.add(&out)?;
                        (s.clone(), s)
                    }
                    None => self.final_norm.add_apply(self.kernels, &sum, &out)?,
                })
            })?;
            inputs.layer_done(&[&x, &normed])?;
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

/// `classifier_pooling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadPooling {
    Cls,
    Mean,
}

impl HeadPooling {
    fn parse(s: &str) -> Result<HeadPooling> {
        match s {
            "cls" => Ok(HeadPooling::Cls),
            "mean" => Ok(HeadPooling::Mean),
            other => bail!("config.json: classifier_pooling {other:?} is not implemented (\"cls\" or \"mean\")"),
        }
    }
}

/// `ModernBertForSequenceClassification`'s head, scored with sigmoid (sentence-transformers'
/// CrossEncoder default for one label).
struct ClassifierHead {
    pooling: HeadPooling,
    dense: Linear,
    act: Activation,
    norm: Norm,
    classifier: Linear,
}

impl ClassifierHead {
    fn load(config: &ModernBertConfig, w: &mut Weights) -> Result<ClassifierHead> {
        config.check_head()?;
        let hidden = config.hidden_size;
        Ok(ClassifierHead {
            pooling: HeadPooling::parse(&config.classifier_pooling)?,
            dense: w.linear("head.dense", hidden, hidden, config.classifier_bias)?,
            act: Activation::from_name(&config.classifier_activation)?,
            norm: Norm::load(w, "head.norm", hidden, config.norm_bias, config.norm_eps)?,
            // nn.Linear's default: always a bias.
            classifier: w.linear("classifier", hidden, 1, true)?,
        })
    }
}

impl ScoringHead for ClassifierHead {
    fn score(&self, hidden: &Array, packing: &Packing) -> Result<Array> {
        let pooled = match self.pooling {
            HeadPooling::Cls => pooling::cls(hidden, packing)?,
            HeadPooling::Mean => pooling::mean(hidden, packing)?,
        };
        let h = self.act.apply_biased(Kernels::Mlx, &self.dense.forward(&pooled)?, None)?;
        let logits = self.classifier.forward(&self.norm.apply(&h)?)?;
        Ok(ops::sigmoid(&logits.reshape(&[packing.len() as i32])?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn base() -> Value {
        json!({"model_type": "modernbert", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 4,
            "intermediate_size": 96, "vocab_size": 100})
    }

    fn config(v: &Value) -> ModernBertConfig {
        parse_config(v).unwrap()
    }

    /// The check's error for `base()` with `field` set to `value`.
    fn refusal(field: &str, value: Value) -> String {
        let mut v = base();
        v[field] = value;
        config(&v).check().unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_config_class() {
        let c = config(&base());
        c.check().unwrap();
        // Every third layer from 0 is global; window 128 / 2; thetas 160000 / 10000.
        assert_eq!(c.global_layers().unwrap(), [true, false, false, true]);
        assert_eq!(c.window_radius(), 64);
        assert_eq!(c.rope_thetas().unwrap(), (160_000.0, 10_000.0));
        assert_eq!((c.norm_eps, c.norm_bias, c.classifier_pooling.as_str(), c.num_labels()), (1e-5, false, "cls", 1));
    }

    #[test]
    fn both_config_layouts_are_read() {
        // gte-modernbert-base / granite-embedding-english-r2 (transformers 4.48).
        let mut v = base();
        v["global_attn_every_n_layers"] = 2.into();
        v["global_rope_theta"] = 80_000.0.into();
        v["local_attention"] = 13.into();
        let c = config(&v);
        assert_eq!(c.global_layers().unwrap(), [true, false, true, false]);
        assert_eq!((c.window_radius(), c.rope_thetas().unwrap()), (6, (80_000.0, 10_000.0)));
        // transformers 5: per-type rope parameters and explicit layer types win.
        v["layer_types"] = json!(["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]);
        v["rope_parameters"] = json!({"full_attention": {"rope_type": "default", "rope_theta": 5e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 2e3}});
        let c = config(&v);
        assert_eq!(c.global_layers().unwrap(), [false, true, false, false]);
        assert_eq!(c.rope_thetas().unwrap(), (5e5, 2e3));
        // A `sliding_window` in config.json sets the half-width (ModernBertConfig's setter).
        v["sliding_window"] = 5.into();
        assert_eq!(config(&v).window_radius(), 5);
    }

    #[test]
    fn what_is_not_computed_is_refused_by_name() {
        let e = refusal("rope_scaling", json!({"rope_type": "yarn", "factor": 4.0}));
        assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
        let e = refusal("rope_parameters", json!({"full_attention": {"rope_type": "linear", "factor": 2.0}}));
        assert!(e.contains("rope_parameters.full_attention") && e.contains("linear"), "{e}");
        let e = refusal("rope_parameters", json!({"chunked_attention": {"rope_type": "default"}}));
        assert!(e.contains("rope_parameters.chunked_attention"), "{e}");
        let e = refusal("layer_types", json!(["full_attention", "chunked_attention", "full_attention", "x"]));
        assert!(e.contains("layer_types") && e.contains("chunked_attention"), "{e}");
        let e = refusal("layer_types", json!(["full_attention"]));
        assert!(e.contains("layer_types has 1 entries"), "{e}");
        let e = refusal("head_dim", json!(8));
        assert!(e.contains("head_dim 8"), "{e}");
        let e = refusal("hidden_activation", json!("mish"));
        assert!(e.contains("hidden_activation") && e.contains("mish"), "{e}");
        let e = refusal("global_attn_every_n_layers", json!(0));
        assert!(e.contains("global_attn_every_n_layers"), "{e}");
        let e = refusal("local_attention", json!(-2));
        assert!(e.contains("local_attention"), "{e}");
        // A matching head_dim is fine.
        let mut v = base();
        v["head_dim"] = 16.into();
        config(&v).check().unwrap();
    }

    #[test]
    fn classification_heads_are_checked() {
        let mut v = base();
        config(&v).check_head().unwrap();
        v["classifier_pooling"] = "mean".into();
        config(&v).check_head().unwrap();
        v["classifier_pooling"] = "max".into();
        let e = config(&v).check_head().unwrap_err().to_string();
        assert!(e.contains("classifier_pooling") && e.contains("max"), "{e}");
        let mut v = base();
        v["id2label"] = json!({"0": "no", "1": "yes"});
        assert!(config(&v).check_head().unwrap_err().to_string().contains("2 labels"));
        let mut v = base();
        v["classifier_activation"] = "mish".into();
        assert!(config(&v).check_head().unwrap_err().to_string().contains("classifier_activation"));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("model.layers.0.attn.Wqkv.weight"), "layers.0.attn.Wqkv.weight");
        assert_eq!(sanitize("model.embeddings.tok_embeddings.weight"), "embeddings.tok_embeddings.weight");
        assert_eq!(sanitize("head.dense.weight"), "head.dense.weight");
        assert_eq!(sanitize("classifier.bias"), "classifier.bias");
    }
}
