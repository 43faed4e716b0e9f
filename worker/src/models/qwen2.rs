//! Qwen2 decoder as an embedder (gte-Qwen2-style last-token embedders): RMSNorm, RoPE,
//! grouped-query attention with biased q/k/v projections (no q/k norm), SwiGLU-style gated
//! MLP, causal attention.
//!
//! Follows transformers 5.24's `modeling_qwen2.py`: `Qwen2Attention` (q/k/v with bias,
//! `o_proj` without; `head_dim` from config.json, else `hidden_size / num_attention_heads`;
//! rotate-half RoPE), `Qwen2MLP` (`down(act(gate(x)) * up(x))`, `hidden_act`), pre-norm
//! blocks and a final RMSNorm. Layers listed as `sliding_attention` (`use_sliding_window`
//! with `max_window_layers` below the layer count, or `layer_types`) are refused: a causal
//! sliding window is not implemented.
//!
//! As a reranker, a `Qwen2ForCausalLM` is mxbai-rerank-v2's judge
//! (`protocol::architectures::MXBAI_RERANK_V2`): `sigmoid(logit("1") - logit("0"))` at the
//! last position, the lm_head rows taken from the tied input embeddings (mxbai-rerank-base-v2
//! and -large-v2 tie them) or `lm_head.weight`. A reranker without a language-model head
//! (`Qwen2Model` declared a reranker) and sequence-classification heads are refused.

use anyhow::{anyhow, bail, Result};
use mlx_rs::fast::rms_norm;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;
use serde::Deserialize;

use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};

use super::attention::{attention, Heads, Mask};
use super::rope::{self, rope, RopeParameters};
use super::{
    check_positive, parse_config, residual_rms_norm, strip_prefix, Activation, Architecture, Inputs, Kernels, Load,
    Loaded, Network,
};
use crate::cpu_attention::HeadBlock;
use crate::heads::{Scorer, YesNo};
use crate::layers::{Embedding, Linear};
use crate::weights::Weights;

pub const ARCHITECTURE: Architecture = Architecture { family: "qwen2", check, sanitize, load };

fn check(facts: &ModelFacts) -> Result<()> {
    let config: Qwen2Config = parse_config(&facts.config)?;
    config.check()?;
    match facts.pooling {
        // SPLADE: refused by the engine's check (no Qwen2 masked-language-model head).
        Pooling::Embed(_) | Pooling::Splade | Pooling::Colbert => Ok(()),
        // The judge reads the language-model head's logits: only a causal LM has one.
        Pooling::YesNo if facts.architecture != "Qwen2ForCausalLM" => bail!(
            "{}: a Qwen2 reranker must be a Qwen2ForCausalLM (mxbai-rerank-v2); this architecture has no \
             language-model head to judge with",
            facts.architecture
        ),
        Pooling::YesNo => Ok(()),
        Pooling::CrossEncoder => {
            bail!("{}: Qwen2 sequence-classification heads are not implemented", facts.architecture)
        }
    }
}

fn load(l: &mut Load) -> Result<Loaded> {
    let config: Qwen2Config = parse_config(&l.facts.config)?;
    let net = Qwen2::load(&config, l.weights, l.kernels)?;
    let scorer = match (l.facts.pooling, l.facts.family.judge()) {
        (Pooling::YesNo, Some(judge)) => Some(Scorer::YesNo(YesNo::load(
            l.dir,
            judge,
            l.weights,
            (config.vocab_size, config.hidden_size),
            &net.embed_tokens,
            config.tie_word_embeddings,
        )?)),
        (Pooling::YesNo, None) => bail!("{}: no reranker recipe for this family", l.facts.architecture),
        _ => None,
    };
    Ok(Loaded { network: Box::new(net), scorer })
}

/// config.json of a Qwen2 model (transformers' `Qwen2Config`; the fields mlx-serve reads,
/// with that class's defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2Config {
    pub hidden_size: i32,
    pub num_attention_heads: i32,
    /// `num_attention_heads` when absent or null.
    #[serde(default)]
    pub num_key_value_heads: Option<i32>,
    /// Not a Qwen2Config field, but `Qwen2Attention` reads it when present.
    #[serde(default)]
    pub head_dim: Option<i32>,
    pub intermediate_size: i32,
    pub num_hidden_layers: i32,
    pub vocab_size: i32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default = "default_window")]
    pub sliding_window: Option<i32>,
    #[serde(default = "default_max_window_layers")]
    pub max_window_layers: i32,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Not read by transformers' Qwen2Model (it always runs causal); a config that asks
    /// for bidirectional attention is refused rather than run causal.
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    #[serde(default)]
    pub is_causal: Option<bool>,
    #[serde(default)]
    pub rope_theta: Option<f32>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// transformers 5 moves `rope_theta` in here.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// The lm_head is the input embeddings (Qwen2Config's default: false).
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_act() -> String {
    "silu".into()
}
fn default_eps() -> f32 {
    1e-6
}
fn default_window() -> Option<i32> {
    Some(4096)
}
fn default_max_window_layers() -> i32 {
    28
}

impl Qwen2Config {
    pub fn kv_heads(&self) -> i32 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i32 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// RoPE base; only the default RoPE type (no scaling). Qwen2Config's default base is
    /// 10000.
    pub fn rope_theta(&self) -> Result<f32> {
        let blocks = [("rope_scaling", &self.rope_scaling), ("rope_parameters", &self.rope_parameters)];
        rope::theta(&blocks, self.rope_theta, 10000.0)
    }

    /// Whether any layer slides, as `Qwen2Config.__post_init__` derives the layer types.
    fn sliding_layers(&self) -> Result<Vec<usize>> {
        Ok(match &self.layer_types {
            Some(types) => {
                if types.len() != self.num_hidden_layers as usize {
                    bail!(
                        "config.json: layer_types has {} entries for num_hidden_layers {}",
                        types.len(),
                        self.num_hidden_layers
                    );
                }
                let mut sliding = Vec::new();
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "full_attention" => {}
                        "sliding_attention" => sliding.push(i),
                        other => bail!("config.json: layer_types entry {other:?} is not implemented"),
                    }
                }
                sliding
            }
            None if self.use_sliding_window && self.sliding_window.is_some() => {
                (self.max_window_layers.max(0) as usize..self.num_hidden_layers as usize).collect()
            }
            None => Vec::new(),
        })
    }

    fn check(&self) -> Result<()> {
        check_positive(&[
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("vocab_size", self.vocab_size),
        ])?;
        if self.num_attention_heads % self.kv_heads() != 0 {
            bail!(
                "config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            );
        }
        let sliding = self.sliding_layers()?;
        if let Some(first) = sliding.first() {
            bail!(
                "config.json: use_sliding_window / layer_types make layer {first} a sliding-window layer, which is \
                 not implemented (causal sliding window)"
            );
        }
        if self.use_bidirectional_attention == Some(true) {
            bail!("config.json: use_bidirectional_attention true is not implemented for qwen2 (Qwen2Model is causal)");
        }
        if self.is_causal == Some(false) {
            bail!("config.json: is_causal false is not implemented for qwen2 (Qwen2Model is causal)");
        }
        Activation::from_name(&self.hidden_act).map_err(|e| anyhow!("config.json: hidden_act: {e}"))?;
        self.rope_theta()?;
        Ok(())
    }
}

/// Checkpoint names → module names: the causal LM's `model.` prefix dropped (`lm_head`
/// stays as it is).
pub fn sanitize(name: &str) -> String {
    strip_prefix(name, &["model."]).to_owned()
}

struct Layer {
    input_norm: Array,
    /// q, k and v projections (with their biases) fused into one GEMM.
    qkv: Linear,
    o_proj: Linear,
    post_norm: Array,
    /// gate and up projections fused into one GEMM.
    gate_up: Linear,
    down: Linear,
}

pub struct Qwen2 {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: Array,
    hidden: i32,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    intermediate: i32,
    eps: f32,
    rope_theta: f32,
    act: Activation,
    kernels: Kernels,
}

impl Qwen2 {
    pub fn load(config: &Qwen2Config, w: &mut Weights, kernels: Kernels) -> Result<Qwen2> {
        config.check()?;
        let (hidden, heads, kv_heads, head_dim) =
            (config.hidden_size, config.num_attention_heads, config.kv_heads(), config.head_dim());
        let inter = config.intermediate_size;
        let embed_tokens = w.embedding("embed_tokens", config.vocab_size, hidden)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for i in 0..config.num_hidden_layers {
            let p = format!("layers.{i}");
            let q = w.linear(&format!("{p}.self_attn.q_proj"), hidden, heads * head_dim, true)?;
            let k = w.linear(&format!("{p}.self_attn.k_proj"), hidden, kv_heads * head_dim, true)?;
            let v = w.linear(&format!("{p}.self_attn.v_proj"), hidden, kv_heads * head_dim, true)?;
            let gate = w.linear(&format!("{p}.mlp.gate_proj"), hidden, inter, false)?;
            let up = w.linear(&format!("{p}.mlp.up_proj"), hidden, inter, false)?;
            layers.push(Layer {
                input_norm: w.take(&format!("{p}.input_layernorm.weight"), &[hidden])?,
                qkv: Linear::concat(vec![q, k, v])?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), heads * head_dim, hidden, false)?,
                post_norm: w.take(&format!("{p}.post_attention_layernorm.weight"), &[hidden])?,
                gate_up: Linear::concat(vec![gate, up])?,
                down: w.linear(&format!("{p}.mlp.down_proj"), inter, hidden, false)?,
            });
        }
        let norm = w.take("norm.weight", &[hidden])?;
        Ok(Qwen2 {
            embed_tokens,
            layers,
            norm,
            hidden,
            heads,
            kv_heads,
            head_dim,
            intermediate: inter,
            eps: config.rms_norm_eps,
            rope_theta: config.rope_theta()?,
            act: Activation::from_name(&config.hidden_act)?,
            kernels,
        })
    }

    /// RoPE at each token's own position of the q and k heads, the first
    /// `(heads + kv_heads) * head_dim` columns of the fused projection, rotated together
    /// (both have `head_dim`): `[total, (heads + kv_heads) * head_dim]`. One call on a block
    /// that starts at column 0, as nomic_bert and new do: rotating k alone, a view that
    /// starts `heads * head_dim` columns in, read the wrong memory on MLX's CUDA backend
    /// (wrong vectors in float32, an illegal memory access in float16; H100, MLX 0.32).
    fn rope_qk(&self, qkv: &Array, positions: &Array) -> Result<Array> {
        let (total, n) = (qkv.dim(0), self.heads + self.kv_heads);
        let qk = qkv.index((.., ..n * self.head_dim)).reshape(&[total, n, 1, self.head_dim])?;
        let qk = rope(self.kernels, &qk, self.rope_theta, 1.0, positions)?;
        Ok(qk.reshape(&[total, n * self.head_dim])?)
    }
}

impl Network for Qwen2 {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let (q_width, kv_width) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let mut x = self.embed_tokens.lookup(&inputs.ids)?;
        // Pre-norm: each residual sum is normed for the sublayer after it in the same pass.
        let mut normed = match self.layers.first() {
            Some(l) => rms_norm(&x, Some(&l.input_norm), self.eps)?,
            None => x.clone(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let qkv = inputs.rows_in_slices(&[&normed], |r| layer.qkv.forward(&r[0]))?;
            let qk = self.rope_qk(&qkv, &inputs.positions)?;
            let heads = Heads {
                q: HeadBlock { array: &qk, col: 0, heads: self.heads as usize },
                k: HeadBlock { array: &qk, col: q_width as usize, heads: self.kv_heads as usize },
                // V straight from the fused projection: a column block, no copy.
                v: HeadBlock { array: &qkv, col: (q_width + kv_width) as usize, heads: self.kv_heads as usize },
                head_dim: self.head_dim,
            };
            let ctx = attention(self.kernels, &heads, inputs, scale, Mask::Causal, None)?;
            // The next layer's input norm, or after the last layer the final norm.
            let next = self.layers.get(i + 1).map_or(&self.norm, |l| &l.input_norm);
            (x, normed) = inputs.rows_in_slices(&[&ctx, &x], |rows| {
                let (ctx, x) = (&rows[0], &rows[1]);
                let (sum, r) =
                    residual_rms_norm(self.kernels, x, &layer.o_proj.forward(ctx)?, &layer.post_norm, self.eps)?;
                let gu = layer.gate_up.forward(&r)?;
                let h = self.act.gated(self.kernels, &gu, self.intermediate, true)?;
                residual_rms_norm(self.kernels, &sum, &layer.down.forward(&h)?, next, self.eps)
            })?;
            inputs.layer_done(&[&x, &normed])?;
        }
        if self.layers.is_empty() {
            return Ok(rms_norm(&x, Some(&self.norm), self.eps)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Alibaba-NLP/gte-Qwen2-1.5B-instruct's config.json, the fields this file reads.
    fn gte_qwen2_config() -> Value {
        json!({"architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 1536,
            "intermediate_size": 8960, "max_position_embeddings": 131072, "max_window_layers": 21,
            "model_type": "qwen2", "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": false,
            "use_sliding_window": false, "vocab_size": 151646})
    }

    fn refusal(field: &str, value: Value) -> String {
        let mut v = gte_qwen2_config();
        v[field] = value;
        parse_config::<Qwen2Config>(&v).unwrap().check().unwrap_err().to_string()
    }

    #[test]
    fn published_config_reads_as_transformers_does() {
        let c: Qwen2Config = parse_config(&gte_qwen2_config()).unwrap();
        c.check().unwrap();
        assert_eq!((c.head_dim(), c.kv_heads(), c.rope_theta().unwrap()), (128, 2, 1e6));
        let mut v = gte_qwen2_config();
        v.as_object_mut().unwrap().remove("rope_theta");
        assert_eq!(parse_config::<Qwen2Config>(&v).unwrap().rope_theta().unwrap(), 10000.0);
    }

    #[test]
    fn what_is_not_computed_is_refused_by_name() {
        for (field, value, says) in [
            ("use_sliding_window", json!(true), "use_sliding_window"),
            ("layer_types", json!(["full_attention"]), "layer_types"),
            ("rope_scaling", json!({"type": "yarn", "factor": 4.0}), "rope_scaling"),
            ("use_bidirectional_attention", json!(true), "use_bidirectional_attention"),
            ("is_causal", json!(false), "is_causal"),
            ("hidden_act", json!("mish"), "hidden_act"),
        ] {
            let e = refusal(field, value.clone());
            assert!(e.contains(says), "{field} = {value}: {e}");
        }
        // Sliding windows only from max_window_layers on: a window above every layer is none.
        let mut v = gte_qwen2_config();
        v["use_sliding_window"] = true.into();
        v["max_window_layers"] = 28.into();
        parse_config::<Qwen2Config>(&v).unwrap().check().unwrap();
    }

    /// A config.json in mxbai-rerank-base-v2's layout (Qwen2ForCausalLM at Qwen2.5-0.5B's
    /// sizes, tied embeddings; no sentence-transformers files beside it): a reranker judged as
    /// mxbai-rerank-v2, which `check` accepts; as a `Qwen2Model` it has no head to judge with.
    #[test]
    fn the_published_mxbai_config_is_an_mxbai_judge() {
        let config = json!({
            "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
            "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
            "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
            "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
            "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
        });
        let dir = std::env::temp_dir().join(format!("mlx-serve-qwen2-judge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let facts = mlx_serve_protocol::model_dir::inspect(&dir).unwrap();
        assert_eq!((facts.kind, facts.pooling), (mlx_serve_protocol::ModelKind::Reranker, Pooling::YesNo));
        assert_eq!(facts.family.judge().map(|j| (j.name, j.yes, j.no)), Some(("mxbai-rerank-v2", "1", "0")));
        check(&facts).unwrap();
        let mut as_model = facts.clone();
        as_model.architecture = "Qwen2Model".into();
        let e = check(&as_model).unwrap_err().to_string();
        assert!(e.contains("Qwen2Model") && e.contains("Qwen2ForCausalLM"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("model.layers.0.self_attn.q_proj.bias"), "layers.0.self_attn.q_proj.bias");
        assert_eq!(sanitize("lm_head.weight"), "lm_head.weight");
    }
}
