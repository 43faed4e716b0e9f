//! Rotary position embedding (RoPE) at each token's own position, in the rotate-half
//! layout of transformers' `apply_rotary_pos_emb` (GPT-NeoX style: dimension `i` pairs with
//! `i + head_dim / 2`; MLX's non-"traditional" layout), over the whole head: the angle of
//! pair `i` at position `p` is `scale × p × theta^(-2i / head_dim)` (`scale` 1 but for a
//! scaling that reduces to it, as gte's fixed NTK does). Families with another layout, a
//! partial rotary dimension or another scaling refuse it in their `check`.

use anyhow::{bail, Result};
use mlx_rs::fast::rope_dynamic;
use mlx_rs::Array;
use serde::Deserialize;

use super::Kernels;

/// A `rope_scaling` / `rope_parameters` block of config.json.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    /// Older spelling of `rope_type`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f32>,
    /// transformers 5 moves `partial_rotary_factor` in here too.
    #[serde(default)]
    pub partial_rotary_factor: Option<f32>,
}

/// The RoPE base from a config's `rope_scaling` / `rope_parameters` blocks (transformers 5
/// moves `rope_theta` into `rope_parameters`), else its top-level `rope_theta` (Hub
/// checkpoints, transformers 4.x), else the config class's `default`. Refuses what [`rope`]
/// does not compute: a RoPE type other than the default (a scaling), a partial rotary factor.
/// `blocks` are named by their config.json key.
pub fn theta(blocks: &[(&str, &Option<RopeParameters>)], top_level: Option<f32>, default: f32) -> Result<f32> {
    let mut found = None;
    for (key, rp) in blocks {
        let Some(rp) = rp else { continue };
        let ty = rp.rope_type.as_deref().or(rp.kind.as_deref()).unwrap_or("default");
        if ty != "default" {
            bail!("config.json: {key} has RoPE type {ty:?}, which is not implemented (only default RoPE, unscaled)");
        }
        if let Some(f) = rp.partial_rotary_factor.filter(|&f| f != 1.0) {
            bail!("config.json: {key} has partial_rotary_factor {f}, which is not implemented (RoPE over the whole head only)");
        }
        found = found.or(rp.rope_theta);
    }
    Ok(found.or(top_level).unwrap_or(default))
}

/// RoPE of `x` laid out `[total, heads, 1, head_dim]` at `positions` (`[total]` int32).
///
/// MLX's RoPE counts positions along axis -2 from an offset that may be a vector with one
/// entry per index of axis 0 (`mlx/fast.cpp`, `rope`: "a scalar or vector with x.shape(0)
/// elements"; mlx-lm's batched decoding relies on it on Metal and CUDA). Laying the tokens
/// out as `[total, heads, 1, head_dim]` makes every token its own axis-0 index, so the
/// offsets vector *is* the position ids.
///
/// Heads narrower than 32: MLX's CUDA RoPE kernel asks for a thread block more than 64 deep
/// (CUDA's limit on a block's z) when `head_dim / 2 < 16` and a batch holds over 64 tokens
/// (block shape from `get_block_dims_common` in mlx/backend/common/utils.cpp, MLX 0.32), and
/// the launch fails. Such heads (test-sized models; released models use 64 or more) take
/// [`rope_by_ops`], the same rotation in plain MLX ops.
///
/// With host kernels (float32 on the CPU backend) it runs on the host
/// (`cpu_kernels::rope_f32`: one cos/sin per position, every head in one pass).
pub fn rope(kernels: Kernels, x: &Array, theta: f32, scale: f32, positions: &Array) -> Result<Array> {
    if kernels == Kernels::Host {
        if let Some(y) = crate::cpu_kernels::rope_f32(x, theta, scale, positions)? {
            return Ok(y);
        }
    }
    let head_dim = x.dim(-1);
    Ok(if head_dim >= 32 {
        rope_dynamic(x, head_dim, false, theta, scale, positions, None)?
    } else {
        rope_by_ops(x, theta, scale, positions)?
    })
}

/// [`rope`] in plain MLX ops: for `i < head_dim / 2`, angle `scale × position × theta^(-2i /
/// head_dim)`, `out_i = x_i cos − x_{i+half} sin` and `out_{i+half} = x_{i+half} cos + x_i
/// sin`. Angles in float32, as MLX's kernel does.
pub fn rope_by_ops(x: &Array, theta: f32, scale: f32, positions: &Array) -> Result<Array> {
    let (total, head_dim) = (x.dim(0), x.dim(-1));
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| scale * theta.powf(-2.0 * i as f32 / head_dim as f32)).collect();
    let inv_freq = Array::from_slice(&inv_freq, &[1, 1, 1, half]);
    let angles = positions.as_dtype(mlx_rs::Dtype::Float32)?.reshape(&[total, 1, 1, 1])?.multiply(&inv_freq)?;
    let (cos, sin) = (angles.cos()?.as_dtype(x.dtype())?, angles.sin()?.as_dtype(x.dtype())?);
    let parts = x.split_at_indices(&[half], -1)?;
    let (x1, x2) = (&parts[0], &parts[1]);
    let first = x1.multiply(&cos)?.subtract(&x2.multiply(&sin)?)?;
    let second = x2.multiply(&cos)?.add(&x1.multiply(&sin)?)?;
    Ok(mlx_rs::ops::concatenate(&[first, second], -1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain-ops RoPE matches MLX's kernel (on the CPU backend, where the kernel works for
    /// every head size) at positions across a batch.
    #[test]
    fn rope_by_ops_matches_the_kernel() {
        for (head_dim, scale) in [(8, 1.0), (16, 1.0), (64, 1.0), (16, 0.5), (64, 0.917)] {
            let (total, heads) = (70, 3);
            let v: Vec<f32> = (0..total * heads * head_dim).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
            let x = Array::from_slice(&v, &[total, heads, 1, head_dim]);
            let pos: Vec<i32> = (0..total).map(|i| i % 23 + (i / 23) * 5).collect();
            let positions = Array::from_slice(&pos, &[total]);
            let kernel = rope_dynamic(&x, head_dim, false, 1e6, scale, &positions, None).unwrap();
            let ops = rope_by_ops(&x, 1e6, scale, &positions).unwrap();
            let worst = kernel.subtract(&ops).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>();
            assert!(worst < 1e-5, "head_dim {head_dim}, scale {scale}: max diff {worst}");
        }
    }

    /// Both paths with gte's fixed NTK arguments (new.rs `NewConfig::rope`: base θF, scale
    /// F^(-2/d)) against new-impl's rotation written out in f64: `inv_freq_i = (θF)^(-2i/d) /
    /// F^(2/d)`, `out_i = x_i cos − x_{i+d/2} sin`, `out_{i+d/2} = x_{i+d/2} cos + x_i sin`.
    #[test]
    fn ntk_arguments_give_new_impl_rotation_on_both_paths() {
        for (head_dim, theta, factor) in [(16, 160000.0f64, 2.0f64), (32, 20000.0, 8.0), (64, 20000.0, 8.0)] {
            let (total, half) = (40, head_dim / 2);
            let v: Vec<f32> = (0..total * head_dim).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
            let x = Array::from_slice(&v, &[total as i32, 1, 1, head_dim as i32]);
            let pos: Vec<i32> = (0..total as i32).map(|i| i * 13 % 500).collect();
            let positions = Array::from_slice(&pos, &[total as i32]);
            let (base, scale) = ((theta * factor) as f32, factor.powf(-2.0 / head_dim as f64) as f32);
            let mut want = vec![0f32; v.len()];
            for (t, &p) in pos.iter().enumerate() {
                for i in 0..half {
                    let inv =
                        (theta * factor).powf(-2.0 * i as f64 / head_dim as f64) / factor.powf(2.0 / head_dim as f64);
                    let (sin, cos) = (p as f64 * inv).sin_cos();
                    let (a, b) = (v[t * head_dim + i] as f64, v[t * head_dim + i + half] as f64);
                    want[t * head_dim + i] = (a * cos - b * sin) as f32;
                    want[t * head_dim + i + half] = (b * cos + a * sin) as f32;
                }
            }
            let want = Array::from_slice(&want, &[total as i32, 1, 1, head_dim as i32]);
            let kernel = rope_dynamic(&x, head_dim as i32, false, base, scale, &positions, None).unwrap();
            let ops = rope_by_ops(&x, base, scale, &positions).unwrap();
            for (path, got) in [("kernel", kernel), ("ops", ops)] {
                let worst = got.subtract(&want).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>();
                assert!(worst < 2e-4, "{path}, head_dim {head_dim}, factor {factor}: max diff {worst}");
            }
        }
    }
}
