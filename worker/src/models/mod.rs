//! The transformer networks, one file per architecture: its typed config (deserialized
//! from config.json, like mlx-lm's `ModelArgs`), the checks that refuse what it does not
//! compute, its checkpoint-name `sanitize`, its modules and forward pass, and its scoring
//! heads. Each file exports one [`Architecture`], listed in [`REGISTRY`] under the family
//! name of its row in `mlx_serve_protocol::architectures` (docs/adding-an-architecture.md).
//!
//! Every network takes a packed batch ([`Inputs`], see `packing.rs`) and returns the final
//! hidden states `[total_tokens, hidden]`, one row per real token; pooling and scoring
//! heads live in `pooling.rs` / `heads.rs`. Activations stay 2-D between layers so every
//! projection is one large GEMM over all the batch's tokens; attention (`attention.rs`)
//! is the only step that looks at sequence boundaries.

pub mod attention;
pub mod bert;
pub mod bge_m3;
pub mod distilbert;
pub mod gemma3_text;
pub mod modernbert;
pub mod mpnet;
pub mod new;
pub mod nomic_bert;
pub mod nomic_config;
pub mod nomic_mlp;
pub mod nomic_moe;
pub mod qwen2;
pub mod qwen3;
pub mod rope;
pub mod slices;
pub mod xlm_roberta;

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use mlx_rs::Array;
use mlx_serve_protocol::model_dir::ModelFacts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cpu_kernels::Gate;
use crate::heads::Scorer;
use crate::packing::{AttentionBuckets, Packing};
use crate::splade_head::MlmLayout;
use crate::weights::Weights;

/// Every architecture the worker computes, by family name.
pub const REGISTRY: &[Architecture] = &[
    bert::ARCHITECTURE,
    xlm_roberta::ARCHITECTURE,
    qwen3::ARCHITECTURE,
    nomic_bert::ARCHITECTURE,
    modernbert::ARCHITECTURE,
    mpnet::ARCHITECTURE,
    distilbert::ARCHITECTURE,
    new::ARCHITECTURE,
    gemma3_text::ARCHITECTURE,
    qwen2::ARCHITECTURE,
];

/// What one architecture file provides.
pub struct Architecture {
    /// The family's name in `mlx_serve_protocol::architectures`.
    pub family: &'static str,
    /// Refuses, naming the field, every config.json value this code would not honour
    /// (a position scheme, a RoPE scaling, an attention variant, a head). Runs at pull time
    /// (`mlx-serve-worker check`, before any weight is downloaded) and again at load.
    pub check: fn(&ModelFacts) -> Result<()>,
    /// Checkpoint tensor name → the name the architecture's `load` asks for.
    pub sanitize: fn(&str) -> String,
    /// Builds the network (and, for a reranker, its scoring head) from the weights.
    pub load: fn(&mut Load) -> Result<Loaded>,
}

/// The masked-language-model head of a SPLADE model's family (`splade_head.rs`), from the
/// family's file: where its tensors are and what it computes.
pub fn mlm_layout(facts: &ModelFacts) -> Result<MlmLayout> {
    match facts.family.as_str() {
        "bert" => bert::mlm_layout(facts),
        "distilbert" => distilbert::mlm_layout(facts),
        other => bail!(
            "SPLADE: the masked-language-model head of the {other} family is not implemented (bert, distilbert have one)"
        ),
    }
}

/// config.json's `tie_word_embeddings` (transformers' `PretrainedConfig` default: true).
pub fn tied_word_embeddings(config: &Value) -> bool {
    config.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true)
}

/// What `load` gets.
pub struct Load<'a> {
    pub facts: &'a ModelFacts,
    /// The model folder (a reranker's tokenizer.json, for its "yes"/"no" ids).
    pub dir: &'a Path,
    pub weights: &'a mut Weights,
    pub kernels: Kernels,
}

/// What `load` returns.
pub struct Loaded {
    pub network: Box<dyn Network>,
    /// The reranker's scoring head; `None` for an embedding model (the engine pools).
    pub scorer: Option<Scorer>,
}

/// The registered architecture of `facts`' family.
pub fn architecture(facts: &ModelFacts) -> Result<&'static Architecture> {
    let family = facts.family.as_str();
    REGISTRY
        .iter()
        .find(|a| a.family == family)
        .ok_or_else(|| anyhow!("family {family} has no implementation in this worker (a version mismatch?)"))
}

/// Which code computes the elementwise steps and attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// CPU backend in float32: host kernels (`cpu_kernels.rs`, `cpu_attention.rs`) on
    /// host memory, because MLX's CPU elementwise kernels are scalar on x86.
    Host,
    /// MLX ops only: every GPU backend (Metal, CUDA), and half precision on the CPU. No
    /// host code touches an array on this path.
    Mlx,
}

/// A packed batch, ready for a forward pass.
pub struct Inputs<'a> {
    /// Token ids `[total]` int32.
    pub ids: Array,
    /// Segment ids `[total]` int32 (zeros when the batch has none).
    pub type_ids: Array,
    /// Position ids `[total]` int32, per sequence ([`Network::position_ids`]).
    pub positions: Array,
    pub packing: Packing,
    /// The attention bucket plan for [`Kernels::Mlx`]; `None` on host kernels.
    pub buckets: Option<AttentionBuckets>,
    /// Set for a yielding batch only: where its forward pass lets another batch run.
    pub checkpoint: Option<&'a dyn Checkpoint>,
    /// The network's kernels: on host kernels the row-independent steps run in row slices
    /// (`slices.rs`).
    pub kernels: Kernels,
}

/// Where a yielding batch's forward pass lets a batch that waits behind it run
/// (docs/worker.md, "Yielding batches"): the server's, which computes that batch whole.
pub trait Checkpoint {
    /// Called between two transformer layers, with the layer's output evaluated, and
    /// before each row slice and attention group inside a layer (`slices.rs`,
    /// `attention.rs`). An error abandons the yielding
    /// batch (the worker is about to exit).
    fn reached(&self) -> Result<()>;
}

impl Inputs<'_> {
    /// After each transformer layer, with the state the next layer reads. A yielding batch
    /// evaluates it (on MLX kernels the layers would otherwise stay a lazy graph, computed
    /// all at once at the end, so no batch could run between them; host kernels have most
    /// of it evaluated already) and passes the checkpoint. Other batches pay nothing.
    pub fn layer_done(&self, state: &[&Array]) -> Result<()> {
        self.pause_at(state)
    }

    /// A yielding batch evaluates `computed` (what the work after this point reads) and
    /// passes its checkpoint; other batches pay nothing. Between layers ([`Self::layer_done`])
    /// and before each row slice (`slices.rs`).
    pub fn pause_at(&self, computed: &[&Array]) -> Result<()> {
        let Some(checkpoint) = self.checkpoint else { return Ok(()) };
        mlx_rs::transforms::eval(computed.iter().copied())?;
        checkpoint.reached()
    }
}

/// A loaded transformer body.
pub trait Network {
    /// Final hidden states `[total, hidden]`. Calls [`Inputs::layer_done`] after each
    /// transformer layer.
    fn forward(&self, inputs: &Inputs) -> Result<Array>;
    fn hidden_size(&self) -> i32;
    /// Appends the position ids of one sequence (alone, unpadded) to `out`: `0..len` unless
    /// the architecture says otherwise.
    fn position_ids(&self, seq: &[u32], out: &mut Vec<i32>) {
        out.extend(0..seq.len() as i32);
    }
    /// Which kernels this network was loaded for.
    fn kernels(&self) -> Kernels;
}

/// `(x + y, RmsNorm(x + y))`: a pre-norm block's residual sum and the norm of it that the
/// next sublayer reads (Qwen 2/3); one pass on the host with host kernels
/// (`cpu_kernels::residual_rms_norm_f32`), MLX's add and `rms_norm` otherwise.
pub fn residual_rms_norm(kernels: Kernels, x: &Array, y: &Array, weight: &Array, eps: f32) -> Result<(Array, Array)> {
    if kernels == Kernels::Host {
        if let Some(pair) = crate::cpu_kernels::residual_rms_norm_f32(x, y, weight, eps)? {
            return Ok(pair);
        }
    }
    let sum = x.add(y)?;
    let normed = mlx_rs::fast::rms_norm(&sum, Some(weight), eps)?;
    Ok((sum, normed))
}

/// Deserializes an architecture's config struct from config.json.
pub fn parse_config<T: DeserializeOwned>(config: &Value) -> Result<T> {
    T::deserialize(config).map_err(|e| anyhow!("config.json: {e}"))
}

/// Fails unless every named size is positive (config.json values that index tensors).
pub fn check_positive(sizes: &[(&str, i32)]) -> Result<()> {
    for (name, v) in sizes {
        if *v <= 0 {
            bail!("config.json: {name} = {v} is out of range");
        }
    }
    Ok(())
}

/// Strips the first matching prefix (a task head's base-model prefix such as `bert.`).
pub fn strip_prefix<'a>(name: &'a str, prefixes: &[&str]) -> &'a str {
    prefixes.iter().find_map(|p| name.strip_prefix(p)).unwrap_or(name)
}

/// Feed-forward activations by their transformers name (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf GELU (transformers `"gelu"`).
    Gelu,
    /// tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    pub fn from_name(name: &str) -> Result<Activation> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => bail!("unsupported hidden_act {other:?} (supported: gelu, gelu_new, relu, silu)"),
        })
    }

    /// `act(x + bias)`. mlx-rs's activations are `compile`d (one fused kernel); with host
    /// kernels, exact GELU and its bias run on the host instead.
    pub fn apply_biased(self, kernels: Kernels, x: &Array, bias: Option<&Array>) -> Result<Array> {
        // MLX's compiled erf kernel is scalar on x86 (see cpu_kernels.rs).
        if kernels == Kernels::Host && matches!(self, Activation::Gelu) {
            if let Some(y) = crate::cpu_kernels::gelu_f32(x, bias)? {
                return Ok(y);
            }
        }
        let biased;
        let x = match bias {
            Some(b) => {
                biased = x.add(b)?;
                &biased
            }
            None => x,
        };
        Ok(match self {
            Activation::Gelu => mlx_rs::nn::gelu(x)?,
            Activation::GeluTanh => mlx_rs::nn::gelu_approximate(x)?,
            Activation::Relu => mlx_rs::nn::relu(x)?,
            Activation::Silu => mlx_rs::nn::silu(x)?,
        })
    }

    /// A gated feed-forward's `act(gate) · up`, where `fused` (`[rows, 2 · inner]`, one
    /// projection) holds the gate half first when `gate_first`, else the up half first. With
    /// host kernels one pass on the host (`cpu_kernels/gated.rs`), else MLX's.
    pub fn gated(self, kernels: Kernels, fused: &Array, inner: i32, gate_first: bool) -> Result<Array> {
        if kernels == Kernels::Host {
            let gate = match self {
                Activation::Gelu => Gate::Gelu,
                Activation::GeluTanh => Gate::GeluTanh,
                Activation::Relu => Gate::Relu,
                Activation::Silu => Gate::Silu,
            };
            if let Some(h) = crate::cpu_kernels::gated_f32(fused, inner as usize, gate_first, gate)? {
                return Ok(h);
            }
        }
        let halves = fused.split_at_indices(&[inner], 1)?;
        let (gate, up) = if gate_first { (&halves[0], &halves[1]) } else { (&halves[1], &halves[0]) };
        Ok(self.apply_biased(Kernels::Mlx, gate, None)?.multiply(up)?)
    }
}
