//! The transformer networks, one file per architecture (config struct, modules, forward).
//!
//! Every network takes a right-padded batch ([`Inputs`]) and returns the final hidden
//! states flattened to `[batch * len, hidden]`; pooling and scoring heads live in
//! `pooling.rs` / `heads.rs`. Activations stay 2-D between layers so every projection is
//! one large GEMM (BLAS on the CPU backend); only attention reshapes to 4-D.

pub mod bert;
pub mod qwen3;
pub mod xlm_roberta;

use anyhow::{bail, Result};
use mlx_rs::Array;
use serde_json::Value;

/// A right-padded batch, ready for a forward pass.
pub struct Inputs {
    /// Token ids `[batch * len]` int32, padding included.
    pub ids: Array,
    /// Segment ids `[batch * len]` int32 (zeros when the batch has none).
    pub type_ids: Array,
    /// `[batch, len]` int32 position ids (architecture specific, computed on the host).
    pub positions: Option<Array>,
    /// Boolean key mask `[batch, 1, 1, len]`: true where the key is a real token.
    pub key_mask: Array,
    /// Real length of each sequence.
    pub lengths: Vec<i32>,
    pub batch: i32,
    pub len: i32,
}

/// A loaded transformer body.
pub trait Network {
    /// Final hidden states `[batch * len, hidden]` (rows of padding positions are garbage).
    fn forward(&self, inputs: &Inputs) -> Result<Array>;
    fn hidden_size(&self) -> i32;
    /// Position ids for one sequence right-padded to `len` with `pad`, when the network
    /// needs them from the host (XLM-R); `None` means 0..len, or RoPE from offset 0.
    fn position_ids(&self, _seq: &[u32], _len: usize) -> Option<Vec<i32>> {
        None
    }
    /// Token id used for padding (never attended to; XLM-R also keys positions on it).
    fn pad_id(&self) -> u32 {
        0
    }
}

/// Reads a required integer field of config.json.
pub fn cfg_i32(config: &Value, key: &str) -> Result<i32> {
    match config.get(key).and_then(Value::as_i64) {
        Some(v) if v > 0 && v <= i32::MAX as i64 => Ok(v as i32),
        Some(v) => bail!("config.json: {key} = {v} is out of range"),
        None => bail!("config.json has no {key}"),
    }
}

pub fn cfg_f32(config: &Value, key: &str, default: f32) -> f32 {
    config.get(key).and_then(Value::as_f64).map(|v| v as f32).unwrap_or(default)
}

/// Feed-forward activations by their transformers name (`hidden_act`).
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    /// Exact erf GELU (transformers `"gelu"`).
    Gelu,
    /// tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    pub fn from_config(config: &Value) -> Result<Activation> {
        let name = config.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => bail!("unsupported hidden_act {other:?} (supported: gelu, gelu_new, relu, silu)"),
        })
    }

    /// `act(x + bias)`. mlx-rs's activations are `compile`d (one fused kernel); on the CPU
    /// backend GELU and its bias run on the host instead.
    pub fn apply_biased(self, x: &Array, bias: Option<&Array>) -> Result<Array> {
        // CPU backend: MLX's compiled erf kernel is scalar on x86 (see cpu_kernels.rs).
        if matches!(self, Activation::Gelu) && !cfg!(feature = "metal") {
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
}

/// Splits fused projections `[batch * len, parts * heads * head_dim]` into per-part
/// `[batch, heads, len, head_dim]` views, the layout attention wants.
pub fn split_heads(x: &Array, batch: i32, len: i32, heads: &[i32], head_dim: i32) -> Result<Vec<Array>> {
    let mut out = Vec::with_capacity(heads.len());
    let mut start = 0;
    let mut bounds = Vec::new();
    for h in heads {
        start += h * head_dim;
        bounds.push(start);
    }
    bounds.pop();
    let parts = x.split_at_indices(&bounds, 1)?;
    for (p, h) in parts.iter().zip(heads) {
        out.push(p.reshape(&[batch, len, *h, head_dim])?.transpose_axes(&[0, 2, 1, 3])?);
    }
    Ok(out)
}

/// `[batch, heads, len, head_dim]` → `[batch * len, heads * head_dim]`.
pub fn merge_heads(x: &Array, batch: i32, len: i32) -> Result<Array> {
    let (heads, head_dim) = (x.dim(1), x.dim(3));
    Ok(x.transpose_axes(&[0, 2, 1, 3])?.reshape(&[batch * len, heads * head_dim])?)
}

/// Which keys attention may use.
pub enum AttnMask<'a> {
    /// Bidirectional over real tokens: `key_mask` is `[batch, 1, 1, len]` bool, `lengths`
    /// the same facts for the host kernel.
    Padding { lengths: &'a [i32], key_mask: &'a Array },
    /// Causal (right padding makes every key of a real query real).
    Causal,
}

/// Scaled dot-product attention over `[batch, heads, len, head_dim]`; `k`/`v` may have
/// fewer heads than `q` (grouped-query attention, query heads grouped per kv head).
///
/// CPU backend: two batched GEMMs around a host softmax (cpu_kernels.rs), because MLX's
/// CPU softmax `exp` is scalar and dominated the whole forward pass (~77 ms per MiniLM
/// layer at 32 × 128, against ~15 ms for both GEMMs). GPU: MLX's fused kernel.
pub fn attention(q: &Array, k: &Array, v: &Array, scale: f32, mask: AttnMask) -> Result<Array> {
    use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};
    if !cfg!(feature = "metal") && q.dtype() == mlx_rs::Dtype::Float32 {
        let (b, h, l, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
        let kv_heads = k.dim(1);
        let rep = h / kv_heads;
        // Stack the query heads of one kv head along rows: one GEMM per kv head, no K/V copies.
        let qg = if rep > 1 { q.reshape(&[b, kv_heads, rep * l, d])? } else { q.clone() };
        let scores = qg.matmul(k.transpose_axes(&[0, 1, 3, 2])?)?;
        let km = match mask {
            AttnMask::Padding { lengths, .. } => crate::cpu_kernels::KeyMask::Lengths(lengths),
            AttnMask::Causal => crate::cpu_kernels::KeyMask::Causal { q_len: l as usize },
        };
        if let Some(p) = crate::cpu_kernels::masked_softmax_f32(&scores, scale, km)? {
            let out = p.matmul(v)?;
            return Ok(if rep > 1 { out.reshape(&[b, h, l, d])? } else { out });
        }
    }
    Ok(match mask {
        AttnMask::Padding { key_mask, .. } => scaled_dot_product_attention(q, k, v, scale, key_mask, None)?,
        AttnMask::Causal => scaled_dot_product_attention(q, k, v, scale, ScaledDotProductAttentionMask::Causal, None)?,
    })
}

/// Gathers rows of an embedding table for int32 ids.
pub fn embed(table: &Array, ids: &Array) -> Result<Array> {
    Ok(table.take_axis(ids, 0)?)
}
