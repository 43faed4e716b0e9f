//! MPNet encoder (all-mpnet-base-v2, multi-qa-mpnet-base-dot-v1/-cos-v1): word + position
//! embeddings (no segment table), BERT's post-LayerNorm blocks, and one relative position
//! bias shared by every layer's attention scores.
//!
//! Follows transformers 5.24's `modeling_mpnet.py`:
//! - `MPNetEmbeddings`: positions by `create_position_ids_from_input_ids` with
//!   `padding_idx = 1` fixed in the module (RoBERTa's scheme, `xlm_roberta::position_ids`),
//!   whatever `pad_token_id` says.
//! - `MPNetSelfAttention`: `softmax(q·k / sqrt(head_dim) + position_bias)`; `q`, `k`, `v`, `o`
//!   projections; `MPNetAttention`: `LayerNorm(o + x)`; intermediate/output as BERT's.
//! - `MPNetEncoder.compute_position_bias`: head `h`'s bias for query `i` and key `j` is
//!   `relative_attention_bias[bucket(j - i), h]`, with `relative_position_bucket`'s default
//!   `num_buckets = 32, max_distance = 128` (the encoder does not pass the config's
//!   `relative_attention_num_buckets`, so any other value is refused).
//! - `MPNetForSequenceClassification`: `MPNetClassificationHead` (`classifier.dense`, tanh,
//!   `classifier.out_proj` on the first token), the same head as XLM-R's.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mlx_rs::{Array, Dtype};
use serde::Deserialize;

use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};

use super::attention::RelativeBias;
use super::bert::{legacy_norm_names, Norm, PostNormLayer};
use super::{
    check_positive, parse_config, strip_prefix, xlm_roberta, Activation, Architecture, Inputs, Kernels, Load, Loaded,
    Network,
};
use crate::heads::{check_single_label, CrossEncoder, Scorer};
use crate::layers::Embedding;
use crate::weights::Weights;

pub const ARCHITECTURE: Architecture = Architecture { family: "mpnet", check, sanitize, load };

fn check(facts: &ModelFacts) -> Result<()> {
    let config: MpnetConfig = parse_config(&facts.config)?;
    config.check()?;
    if facts.pooling == Pooling::CrossEncoder {
        check_single_label(config.num_labels())?;
    }
    Ok(())
}

fn load(l: &mut Load) -> Result<Loaded> {
    let config: MpnetConfig = parse_config(&l.facts.config)?;
    let net = Mpnet::load(&config, l.weights, l.kernels)?;
    let scorer = match l.facts.pooling {
        // MPNetClassificationHead has XLM-R's layout and function.
        Pooling::CrossEncoder => {
            Some(Scorer::CrossEncoder(CrossEncoder::load_xlmr(config.num_labels(), l.weights, net.hidden)?))
        }
        _ => None,
    };
    Ok(Loaded { network: Box::new(net), scorer })
}

/// The position-table slot of padding (`MPNetEmbeddings.padding_idx`).
const PADDING_IDX: u32 = 1;
/// `relative_position_bucket`'s defaults, which `compute_position_bias` uses.
const NUM_BUCKETS: i32 = 32;
const MAX_DISTANCE: usize = 128;

/// config.json of an MPNet model (transformers' `MPNetConfig`; fields mlx-serve reads, with
/// that class's defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct MpnetConfig {
    pub hidden_size: i32,
    pub num_attention_heads: i32,
    pub num_hidden_layers: i32,
    pub intermediate_size: i32,
    pub vocab_size: i32,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: i32,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: i32,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn default_max_positions() -> i32 {
    512
}
fn default_layer_norm_eps() -> f32 {
    1e-12
}
fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_buckets() -> i32 {
    NUM_BUCKETS
}

impl MpnetConfig {
    fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(1, BTreeMap::len)
    }

    pub(crate) fn check(&self) -> Result<()> {
        check_positive(&[
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.relative_attention_num_buckets != NUM_BUCKETS {
            bail!(
                "config.json: relative_attention_num_buckets {} is not implemented (transformers' MPNetEncoder \
                 buckets relative positions into {NUM_BUCKETS} whatever the config says)",
                self.relative_attention_num_buckets
            );
        }
        if let Some(p) = self.pad_token_id.filter(|p| *p != PADDING_IDX) {
            bail!(
                "config.json: pad_token_id {p} is not implemented (MPNet's position table reserves slot \
                 {PADDING_IDX} for padding whatever pad_token_id says)"
            );
        }
        Activation::from_name(&self.hidden_act).map_err(|e| anyhow::anyhow!("config.json: hidden_act: {e}"))?;
        Ok(())
    }
}

/// Checkpoint names → module names: a task head's `mpnet.` prefix dropped, legacy LayerNorm
/// names renamed as for BERT.
pub fn sanitize(name: &str) -> String {
    legacy_norm_names(strip_prefix(name, &["mpnet."]))
}

/// transformers' `MPNetEncoder.relative_position_bucket` for `relative_position = j - i`,
/// in float32 like torch (the log-spaced buckets truncate a float32 quotient).
pub fn relative_bucket(relative_position: i64) -> usize {
    let half = NUM_BUCKETS as i64 / 2;
    let n = -relative_position;
    let mut ret = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    ret += if n < max_exact {
        n
    } else {
        let log_ratio = ((n as f32) / max_exact as f32).ln() / ((MAX_DISTANCE as f64 / max_exact as f64).ln() as f32);
        let large = max_exact + (log_ratio * (half - max_exact) as f32) as i64;
        large.min(half - 1)
    };
    ret as usize
}

/// The bias of every head at every offset up to `±MAX_DISTANCE` (the buckets are constant
/// beyond), from the `[buckets, heads]` table.
fn relative_bias(table: &Array, heads: usize) -> Result<RelativeBias> {
    let table = table.as_dtype(Dtype::Float32)?;
    table.eval()?;
    let t = table.as_slice::<f32>();
    let width = 2 * MAX_DISTANCE + 1;
    let mut values = vec![0f32; heads * width];
    for h in 0..heads {
        for (k, d) in (-(MAX_DISTANCE as i64)..=MAX_DISTANCE as i64).enumerate() {
            values[h * width + k] = t[relative_bucket(d) * heads + h];
        }
    }
    Ok(RelativeBias { values, max_offset: MAX_DISTANCE, heads })
}

/// The MPNet body (embeddings + encoder), without pooler or heads.
pub struct Mpnet {
    word: Embedding,
    position: Embedding,
    emb_norm: Norm,
    layers: Vec<PostNormLayer>,
    bias: RelativeBias,
    hidden: i32,
    heads: i32,
    head_dim: i32,
    act: Activation,
    kernels: Kernels,
}

impl Mpnet {
    pub fn load(config: &MpnetConfig, w: &mut Weights, kernels: Kernels) -> Result<Mpnet> {
        config.check()?;
        let (hidden, heads, inter) = (config.hidden_size, config.num_attention_heads, config.intermediate_size);
        let eps = config.layer_norm_eps;
        let word = w.embedding("embeddings.word_embeddings", config.vocab_size, hidden)?;
        let position = w.embedding("embeddings.position_embeddings", config.max_position_embeddings, hidden)?;
        let emb_norm = Norm::load(w, "embeddings.LayerNorm", hidden, eps)?;
        let table = w.take("encoder.relative_attention_bias.weight", &[NUM_BUCKETS, heads])?;
        let bias = relative_bias(&table, heads as usize)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for i in 0..config.num_hidden_layers {
            let names = [
                "attention.attn.q",
                "attention.attn.k",
                "attention.attn.v",
                "attention.attn.o",
                "attention.LayerNorm",
                "intermediate.dense",
                "output.dense",
                "output.LayerNorm",
            ];
            layers.push(PostNormLayer::load(w, &format!("encoder.layer.{i}"), names, hidden, inter, eps)?);
        }
        Ok(Mpnet {
            word,
            position,
            emb_norm,
            layers,
            bias,
            hidden,
            heads,
            head_dim: hidden / heads,
            act: Activation::from_name(&config.hidden_act)?,
            kernels,
        })
    }
}

impl Network for Mpnet {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let x = self.word.lookup(&inputs.ids)?.add(self.position.lookup(&inputs.positions)?)?;
        let mut x = self.emb_norm.apply(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, inputs, self.act, self.heads as usize, self.head_dim, Some(&self.bias))?;
            inputs.layer_done(&[&x])?;
        }
        Ok(x)
    }

    fn hidden_size(&self) -> i32 {
        self.hidden
    }

    fn position_ids(&self, seq: &[u32], out: &mut Vec<i32>) {
        xlm_roberta::position_ids(seq, PADDING_IDX, out)
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
        json!({"model_type": "mpnet", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 66})
    }

    fn refusal(field: &str, value: Value) -> String {
        let mut v = base();
        v[field] = value;
        parse_config::<MpnetConfig>(&v).unwrap().check().unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_config_class() {
        let c: MpnetConfig = parse_config(&base()).unwrap();
        c.check().unwrap();
        assert_eq!((c.layer_norm_eps, c.hidden_act.as_str(), c.relative_attention_num_buckets), (1e-12, "gelu", 32));
    }

    #[test]
    fn what_is_not_computed_is_refused_by_name() {
        let e = refusal("relative_attention_num_buckets", json!(64));
        assert!(e.contains("relative_attention_num_buckets 64"), "{e}");
        let e = refusal("pad_token_id", json!(0));
        assert!(e.contains("pad_token_id 0"), "{e}");
        let e = refusal("hidden_act", json!("mish"));
        assert!(e.contains("hidden_act") && e.contains("mish"), "{e}");
        let mut v = base();
        v["pad_token_id"] = 1.into();
        parse_config::<MpnetConfig>(&v).unwrap().check().unwrap();
    }

    /// Buckets as transformers 5.24 computes them (`relative_position_bucket` printed for
    /// these offsets): exact up to 7 either side, then log-spaced, saturating at 15 / 31.
    #[test]
    fn buckets_match_transformers() {
        let offsets = [-300, -130, -128, -64, -33, -32, -16, -8, -7, -1, 0, 1, 7, 8, 16, 31, 32, 64, 127, 128, 500];
        let want = [15, 15, 15, 14, 12, 12, 10, 8, 7, 1, 0, 17, 23, 24, 26, 27, 28, 30, 31, 31, 31];
        let got: Vec<usize> = offsets.iter().map(|d| relative_bucket(*d)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(
            sanitize("mpnet.encoder.layer.0.attention.attn.q.weight"),
            "encoder.layer.0.attention.attn.q.weight"
        );
        assert_eq!(sanitize("mpnet.encoder.relative_attention_bias.weight"), "encoder.relative_attention_bias.weight");
        assert_eq!(sanitize("classifier.out_proj.bias"), "classifier.out_proj.bias");
    }
}
