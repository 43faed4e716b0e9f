//! DistilBERT encoder (msmarco-distilbert-base-v4, multi-qa-distilbert-cos-v1,
//! msmarco-distilbert-base-tas-b): BERT's post-LayerNorm blocks under other names, word +
//! position embeddings without a segment table, and its own classification head.
//!
//! Follows transformers 5.24's `modeling_distilbert.py`:
//! - `Embeddings`: `LayerNorm(word + position[0..n])`, eps 1e-12 fixed in the module (as
//!   every LayerNorm of the model; the config has no eps).
//! - `TransformerBlock`: `x = sa_layer_norm(out_lin(attn(x)) + x)`,
//!   `x = output_layer_norm(lin2(act(lin1(x))) + x)`; attention scaled by `head_dim^-0.5`.
//! - `DistilBertForSequenceClassification`: first token → `pre_classifier` → ReLU →
//!   `classifier`.
//! - `sinusoidal_pos_embds`: fixed sinusoid tables written at initialisation; not
//!   implemented (no published embedder uses them), so refused.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mlx_rs::{ops, Array};
use serde::Deserialize;

use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};

use super::bert::{legacy_norm_names, Norm, PostNormLayer};
use super::{
    check_positive, parse_config, strip_prefix, tied_word_embeddings, Activation, Architecture, Inputs, Kernels, Load,
    Loaded, Network,
};
use crate::heads::{check_single_label, Scorer, ScoringHead};
use crate::layers::{Embedding, Linear};
use crate::packing::Packing;
use crate::pooling;
use crate::splade_head::MlmLayout;
use crate::weights::Weights;

pub const ARCHITECTURE: Architecture = Architecture { family: "distilbert", check, sanitize, load };

fn check(facts: &ModelFacts) -> Result<()> {
    let config: DistilBertConfig = parse_config(&facts.config)?;
    config.check()?;
    if facts.pooling == Pooling::CrossEncoder {
        check_single_label(config.num_labels())?;
    }
    Ok(())
}

fn load(l: &mut Load) -> Result<Loaded> {
    let config: DistilBertConfig = parse_config(&l.facts.config)?;
    let net = DistilBert::load(&config, l.weights, l.kernels)?;
    let scorer = match l.facts.pooling {
        Pooling::CrossEncoder => Some(Scorer::Family(Box::new(ClassifierHead::load(&config, l.weights)?))),
        _ => None,
    };
    Ok(Loaded { network: Box::new(net), scorer })
}

/// `DistilBertForMaskedLM`'s head (transformers 5.24 `modeling_distilbert.py`):
/// `vocab_transform`, `activation`, `vocab_layer_norm` (eps 1e-12), then `vocab_projector`
/// with its own bias, its weight tied to the word embeddings.
pub fn mlm_layout(facts: &ModelFacts) -> Result<MlmLayout> {
    let config: DistilBertConfig = parse_config(&facts.config)?;
    Ok(MlmLayout {
        transform: "vocab_transform",
        act: Activation::from_name(&config.activation)?,
        norm: "vocab_layer_norm",
        eps: LAYER_NORM_EPS,
        decoder: "vocab_projector",
        bias: &["vocab_projector.bias"],
        word_embeddings: "embeddings.word_embeddings",
        tied: tied_word_embeddings(&facts.config),
        hidden: config.dim,
        vocab: config.vocab_size,
    })
}

/// Every LayerNorm's eps (`nn.LayerNorm(..., eps=1e-12)` in modeling_distilbert.py).
const LAYER_NORM_EPS: f32 = 1e-12;

/// config.json of a DistilBERT model (transformers' `DistilBertConfig`; fields mlx-serve
/// reads, with that class's defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct DistilBertConfig {
    #[serde(default = "default_dim")]
    pub dim: i32,
    #[serde(default = "default_heads")]
    pub n_heads: i32,
    #[serde(default = "default_layers")]
    pub n_layers: i32,
    #[serde(default = "default_hidden_dim")]
    pub hidden_dim: i32,
    #[serde(default = "default_vocab")]
    pub vocab_size: i32,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: i32,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    #[serde(default = "default_activation")]
    pub activation: String,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn default_dim() -> i32 {
    768
}
fn default_heads() -> i32 {
    12
}
fn default_layers() -> i32 {
    6
}
fn default_hidden_dim() -> i32 {
    4 * 768
}
fn default_vocab() -> i32 {
    30522
}
fn default_max_positions() -> i32 {
    512
}
fn default_activation() -> String {
    "gelu".into()
}

impl DistilBertConfig {
    fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(1, BTreeMap::len)
    }

    pub(crate) fn check(&self) -> Result<()> {
        check_positive(&[
            ("dim", self.dim),
            ("n_heads", self.n_heads),
            ("n_layers", self.n_layers),
            ("hidden_dim", self.hidden_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        if self.dim % self.n_heads != 0 {
            bail!("config.json: dim {} is not a multiple of n_heads {}", self.dim, self.n_heads);
        }
        if self.sinusoidal_pos_embds {
            bail!("config.json: sinusoidal_pos_embds is not implemented (only learned position embeddings)");
        }
        Activation::from_name(&self.activation).map_err(|e| anyhow::anyhow!("config.json: activation: {e}"))?;
        Ok(())
    }
}

/// Checkpoint names → module names: a task head's `distilbert.` prefix dropped
/// (`pre_classifier.*` and `classifier.*` stay), legacy LayerNorm names renamed.
pub fn sanitize(name: &str) -> String {
    legacy_norm_names(strip_prefix(name, &["distilbert."]))
}

/// The DistilBERT body (embeddings + transformer), without heads.
pub struct DistilBert {
    word: Embedding,
    position: Embedding,
    emb_norm: Norm,
    layers: Vec<PostNormLayer>,
    hidden: i32,
    heads: i32,
    head_dim: i32,
    act: Activation,
    kernels: Kernels,
}

impl DistilBert {
    pub fn load(config: &DistilBertConfig, w: &mut Weights, kernels: Kernels) -> Result<DistilBert> {
        config.check()?;
        let (hidden, heads, inter) = (config.dim, config.n_heads, config.hidden_dim);
        let eps = LAYER_NORM_EPS;
        let word = w.embedding("embeddings.word_embeddings", config.vocab_size, hidden)?;
        let position = w.embedding("embeddings.position_embeddings", config.max_position_embeddings, hidden)?;
        let emb_norm = Norm::load(w, "embeddings.LayerNorm", hidden, eps)?;
        let mut layers = Vec::with_capacity(config.n_layers as usize);
        for i in 0..config.n_layers {
            let names = [
                "attention.q_lin",
                "attention.k_lin",
                "attention.v_lin",
                "attention.out_lin",
                "sa_layer_norm",
                "ffn.lin1",
                "ffn.lin2",
                "output_layer_norm",
            ];
            layers.push(PostNormLayer::load(w, &format!("transformer.layer.{i}"), names, hidden, inter, eps)?);
        }
        Ok(DistilBert {
            word,
            position,
            emb_norm,
            layers,
            hidden,
            heads,
            head_dim: hidden / heads,
            act: Activation::from_name(&config.activation)?,
            kernels,
        })
    }
}

impl Network for DistilBert {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let x = self.word.lookup(&inputs.ids)?.add(self.position.lookup(&inputs.positions)?)?;
        let mut x = self.emb_norm.apply(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, inputs, self.act, self.heads as usize, self.head_dim, None)?;
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

/// `DistilBertForSequenceClassification`'s head, scored with sigmoid (sentence-transformers'
/// CrossEncoder default for one label).
struct ClassifierHead {
    pre_classifier: Linear,
    classifier: Linear,
}

impl ClassifierHead {
    fn load(config: &DistilBertConfig, w: &mut Weights) -> Result<ClassifierHead> {
        check_single_label(config.num_labels())?;
        Ok(ClassifierHead {
            pre_classifier: w.linear("pre_classifier", config.dim, config.dim, true)?,
            classifier: w.linear("classifier", config.dim, 1, true)?,
        })
    }
}

impl ScoringHead for ClassifierHead {
    fn score(&self, hidden: &Array, packing: &Packing) -> Result<Array> {
        let first = pooling::cls(hidden, packing)?;
        let h = mlx_rs::nn::relu(self.pre_classifier.forward(&first)?)?;
        let logits = self.classifier.forward(&h)?;
        Ok(ops::sigmoid(&logits.reshape(&[packing.len() as i32])?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_follow_the_config_class() {
        let c: DistilBertConfig = parse_config(&json!({"model_type": "distilbert"})).unwrap();
        c.check().unwrap();
        assert_eq!((c.dim, c.n_heads, c.n_layers, c.hidden_dim, c.activation.as_str()), (768, 12, 6, 3072, "gelu"));
    }

    #[test]
    fn what_is_not_computed_is_refused_by_name() {
        let refusal = |field: &str, value: serde_json::Value| {
            let mut v = json!({"model_type": "distilbert", "dim": 64, "n_heads": 4});
            v[field] = value;
            parse_config::<DistilBertConfig>(&v).unwrap().check().unwrap_err().to_string()
        };
        assert!(refusal("sinusoidal_pos_embds", json!(true)).contains("sinusoidal_pos_embds"));
        let e = refusal("activation", json!("mish"));
        assert!(e.contains("activation") && e.contains("mish"), "{e}");
        assert!(refusal("n_heads", json!(5)).contains("n_heads 5"));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(
            sanitize("distilbert.transformer.layer.0.attention.q_lin.weight"),
            "transformer.layer.0.attention.q_lin.weight"
        );
        assert_eq!(sanitize("pre_classifier.weight"), "pre_classifier.weight");
        assert_eq!(sanitize("classifier.bias"), "classifier.bias");
    }
}
