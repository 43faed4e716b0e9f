//! BERT encoder (all-MiniLM, bge-*-en, e5, gte-base): word + position + token-type
//! embeddings, post-LayerNorm transformer blocks, exact GELU by default.
//!
//! Follows transformers' `modeling_bert.py` (BertEmbeddings, BertSelfAttention,
//! BertSelfOutput/BertOutput as `LayerNorm(x + dense(h))`). XLM-RoBERTa is the same network
//! with other position ids, so `xlm_roberta.rs` reuses [`Bert`] through [`Bert::load`].

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mlx_rs::fast::layer_norm;
use mlx_rs::Array;
use serde::Deserialize;

use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};
use mlx_serve_protocol::ModelKind;

use super::attention::{attention, Heads, Mask, RelativeBias};
use super::{
    check_positive, parse_config, strip_prefix, tied_word_embeddings, Activation, Architecture, Inputs, Kernels, Load,
    Loaded, Network,
};
use crate::cpu_attention::HeadBlock;
use crate::cpu_kernels::add_layer_norm_f32;
use crate::heads::{check_single_label, CrossEncoder, Scorer};
use crate::layers::{Embedding, Linear};
use crate::splade_head::MlmLayout;
use crate::weights::Weights;

pub const ARCHITECTURE: Architecture = Architecture { family: "bert", check, sanitize, load };

fn check(facts: &ModelFacts) -> Result<()> {
    let config: BertConfig = parse_config(&facts.config)?;
    config.check()?;
    // A classifier keeps every label (TEI's /predict); a reranker scores with one.
    if facts.pooling == Pooling::CrossEncoder && facts.kind == ModelKind::Reranker {
        check_single_label(config.num_labels())?;
    }
    Ok(())
}

fn load(l: &mut Load) -> Result<Loaded> {
    let config: BertConfig = parse_config(&l.facts.config)?;
    let net = Bert::load(&config, l.weights, l.kernels)?;
    let scorer = match l.facts.pooling {
        Pooling::CrossEncoder => {
            Some(Scorer::CrossEncoder(CrossEncoder::load_bert(config.num_labels(), l.weights, net.hidden_size())?))
        }
        _ => None,
    };
    Ok(Loaded { network: Box::new(net), scorer })
}

/// `BertForMaskedLM`'s head (transformers 5.24 `modeling_bert.py`, `BertLMPredictionHead`):
/// `cls.predictions.transform` (dense, `hidden_act`, LayerNorm with `layer_norm_eps`), then
/// `cls.predictions.decoder`. `_tied_weights_keys` ties the decoder's weight to the word
/// embeddings and its bias to `cls.predictions.bias`; with `tie_word_embeddings` false
/// neither is tied, and the decoder's own `cls.predictions.decoder.bias` is the one used.
pub fn mlm_layout(facts: &ModelFacts) -> Result<MlmLayout> {
    let config: BertConfig = parse_config(&facts.config)?;
    let tied = tied_word_embeddings(&facts.config);
    Ok(MlmLayout {
        transform: "cls.predictions.transform.dense",
        act: Activation::from_name(&config.hidden_act)?,
        norm: "cls.predictions.transform.LayerNorm",
        eps: config.layer_norm_eps,
        decoder: "cls.predictions.decoder",
        bias: if tied {
            &["cls.predictions.bias", "cls.predictions.decoder.bias"]
        } else {
            &["cls.predictions.decoder.bias"]
        },
        word_embeddings: "embeddings.word_embeddings",
        tied,
        hidden: config.hidden_size,
        vocab: config.vocab_size,
    })
}

/// config.json of a BERT model (transformers' `BertConfig`; fields mlx-serve reads).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub hidden_size: i32,
    pub num_attention_heads: i32,
    pub num_hidden_layers: i32,
    pub intermediate_size: i32,
    pub vocab_size: i32,
    pub max_position_embeddings: i32,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: i32,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Only `"absolute"` is implemented.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// Labels of a `*ForSequenceClassification` head (transformers' `num_labels` is its
    /// length; one label when absent).
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn default_type_vocab_size() -> i32 {
    2
}
fn default_layer_norm_eps() -> f32 {
    1e-12
}
fn default_hidden_act() -> String {
    "gelu".into()
}

impl BertConfig {
    pub fn num_labels(&self) -> usize {
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
        match self.position_embedding_type.as_deref() {
            None | Some("absolute") => {}
            // jina-embeddings-v2 (BERT with ALiBi), jina-embeddings-v3 (XLM-R with rotary).
            Some(t @ ("alibi" | "rotary")) => bail!(
                "config.json: position_embedding_type {t:?} is not implemented (only \"absolute\"): \
                 the jina-embeddings-v2/v3 variants of this architecture need custom code mlx-serve does not run"
            ),
            Some(t) => bail!("config.json: position_embedding_type {t:?} is not implemented (only \"absolute\")"),
        }
        Ok(())
    }
}

/// Checkpoint names → module names: a task head's `bert.` prefix dropped; old TF-converted
/// checkpoints' LayerNorm `gamma`/`beta` renamed to `weight`/`bias` (transformers does the
/// same in `_fix_state_dict_key_on_load`).
pub fn sanitize(name: &str) -> String {
    legacy_norm_names(strip_prefix(name, &["bert."]))
}

/// `….gamma` → `….weight`, `….beta` → `….bias`.
pub fn legacy_norm_names(name: &str) -> String {
    if let Some(stem) = name.strip_suffix(".gamma") {
        return format!("{stem}.weight");
    }
    if let Some(stem) = name.strip_suffix(".beta") {
        return format!("{stem}.bias");
    }
    name.to_owned()
}

/// LayerNorm parameters (shared with the other post-norm encoders).
pub(super) struct Norm {
    weight: Array,
    bias: Array,
    eps: f32,
}

impl Norm {
    pub(super) fn load(w: &mut Weights, prefix: &str, dim: i32, eps: f32) -> Result<Norm> {
        Ok(Norm {
            weight: w.take(&format!("{prefix}.weight"), &[dim])?,
            bias: w.take(&format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    pub(super) fn apply(&self, x: &Array) -> Result<Array> {
        Ok(layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }

    /// `LayerNorm(x + x_bias + residual)`; one fused pass on the host with host kernels
    /// (cpu_kernels.rs).
    pub(super) fn add_apply(
        &self,
        kernels: Kernels,
        x: &Array,
        x_bias: Option<&Array>,
        residual: &Array,
    ) -> Result<Array> {
        if kernels == Kernels::Host {
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

/// A post-norm encoder layer: `x = Norm(x + O·attention(x))`, then
/// `Norm(x + W2·act(W1·x))`. BERT's; DistilBERT's and MPNet's are the same blocks under
/// other checkpoint names (and MPNet adds a relative bias to the scores).
pub struct PostNormLayer {
    /// Query, key and value projections fused into one `[hidden, 3 * hidden]` GEMM.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    output: Linear,
    out_norm: Norm,
}

impl PostNormLayer {
    /// The layer under `prefix`, its parts' names after it in this order: query, key,
    /// value, attention output, its norm, intermediate, output, its norm.
    pub fn load(w: &mut Weights, prefix: &str, names: [&str; 8], hidden: i32, inter: i32, eps: f32) -> Result<Self> {
        let [q, k, v, o, attn_norm, intermediate, output, out_norm] = names.map(|n| format!("{prefix}.{n}"));
        let (q, k, v) = (
            w.linear(&q, hidden, hidden, true)?,
            w.linear(&k, hidden, hidden, true)?,
            w.linear(&v, hidden, hidden, true)?,
        );
        Ok(PostNormLayer {
            qkv: Linear::concat(vec![q, k, v])?,
            attn_out: w.linear(&o, hidden, hidden, true)?,
            attn_norm: Norm::load(w, &attn_norm, hidden, eps)?,
            intermediate: w.linear(&intermediate, hidden, inter, true)?,
            output: w.linear(&output, inter, hidden, true)?,
            out_norm: Norm::load(w, &out_norm, hidden, eps)?,
        })
    }

    /// The layer's output for the hidden states `x` of a packed batch.
    pub fn forward(
        &self,
        x: &Array,
        inputs: &Inputs,
        act: Activation,
        heads: usize,
        head_dim: i32,
        bias: Option<&RelativeBias>,
    ) -> Result<Array> {
        let kernels = inputs.kernels;
        let qkv = inputs.rows_in_slices(&[x], |r| self.qkv.forward(&r[0]))?;
        let width = heads * head_dim as usize;
        let parts = Heads {
            q: HeadBlock { array: &qkv, col: 0, heads },
            k: HeadBlock { array: &qkv, col: width, heads },
            v: HeadBlock { array: &qkv, col: 2 * width, heads },
            head_dim,
        };
        let scale = 1.0 / (head_dim as f32).sqrt();
        let ctx = attention(kernels, &parts, inputs, scale, Mask::Full, bias)?;
        inputs.rows_in_slices(&[&ctx, x], |r| {
            let (ctx, x) = (&r[0], &r[1]);
            // Biases of these three go into the next host kernel (Linear::forward_unbiased).
            let (attn, attn_bias) = self.attn_out.forward_unbiased(ctx)?;
            let x = self.attn_norm.add_apply(kernels, &attn, attn_bias, x)?;
            let (inter, inter_bias) = self.intermediate.forward_unbiased(&x)?;
            let h = act.apply_biased(kernels, &inter, inter_bias)?;
            let (out, out_bias) = self.output.forward_unbiased(&h)?;
            self.out_norm.add_apply(kernels, &out, out_bias, &x)
        })
    }
}

/// The BERT body (embeddings + encoder), without pooler or heads.
pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Option<Embedding>,
    emb_norm: Norm,
    layers: Vec<PostNormLayer>,
    hidden: i32,
    heads: i32,
    head_dim: i32,
    act: Activation,
    kernels: Kernels,
}

impl Bert {
    pub fn load(config: &BertConfig, w: &mut Weights, kernels: Kernels) -> Result<Bert> {
        config.check()?;
        let (hidden, heads, inter) = (config.hidden_size, config.num_attention_heads, config.intermediate_size);
        let eps = config.layer_norm_eps;
        let act = Activation::from_name(&config.hidden_act)?;

        let word = w.embedding("embeddings.word_embeddings", config.vocab_size, hidden)?;
        let position = w.embedding("embeddings.position_embeddings", config.max_position_embeddings, hidden)?;
        let token_type = if config.type_vocab_size > 0 {
            w.embedding_opt("embeddings.token_type_embeddings", config.type_vocab_size, hidden)?
        } else {
            None
        };
        let emb_norm = Norm::load(w, "embeddings.LayerNorm", hidden, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for i in 0..config.num_hidden_layers {
            let names = [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "attention.output.LayerNorm",
                "intermediate.dense",
                "output.dense",
                "output.LayerNorm",
            ];
            layers.push(PostNormLayer::load(w, &format!("encoder.layer.{i}"), names, hidden, inter, eps)?);
        }
        Ok(Bert { word, position, token_type, emb_norm, layers, hidden, heads, head_dim: hidden / heads, act, kernels })
    }
}

impl Network for Bert {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let mut x = self.word.lookup(&inputs.ids)?;
        x = x.add(self.position.lookup(&inputs.positions)?)?;
        if let Some(tt) = &self.token_type {
            x = x.add(tt.lookup(&inputs.type_ids)?)?;
        }
        x = self.emb_norm.apply(&x)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("bert.encoder.layer.0.output.dense.weight"), "encoder.layer.0.output.dense.weight");
        assert_eq!(sanitize("bert.embeddings.LayerNorm.gamma"), "embeddings.LayerNorm.weight");
        assert_eq!(sanitize("bert.pooler.dense.bias"), "pooler.dense.bias");
        assert_eq!(sanitize("classifier.bias"), "classifier.bias");
    }

    #[test]
    fn config_defaults_and_checks() {
        let v = serde_json::json!({"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64});
        let c: BertConfig = super::super::parse_config(&v).unwrap();
        assert_eq!((c.type_vocab_size, c.layer_norm_eps, c.hidden_act.as_str(), c.num_labels()), (2, 1e-12, "gelu", 1));
        c.check().unwrap();
        let mut bad = v.clone();
        bad["num_attention_heads"] = 5.into();
        let c: BertConfig = super::super::parse_config(&bad).unwrap();
        assert!(c.check().unwrap_err().to_string().contains("multiple"));
        let mut missing = v;
        missing.as_object_mut().unwrap().remove("hidden_size");
        let err = super::super::parse_config::<BertConfig>(&missing).unwrap_err().to_string();
        assert!(err.contains("hidden_size"), "{err}");
    }
}
