//! Rotary position embedding on the host (rotate-half layout, `models/rope.rs` says which
//! families and why), for float32 on the CPU backend.
//!
//! MLX's CPU RoPE computes `sincos` for every element (each head again) in a single-threaded
//! compiled kernel, with a libm `fmaf` call per element and a copy around it: perf of
//! embeddinggemma-300m's shape (16 mixed passages, 2 cores) put `sincos`, `fmaf`, the
//! multiplies and the copies at ~7% of samples. Here the angles' cosines and sines are
//! computed once per position in the batch, as transformers computes them (float32
//! `inv_freq = 1 / theta^(2i/d)`, float32 `position × inv_freq`, float32 cos and sin), and
//! every head of every token is rotated in one vectorized pass split across the cores.

use anyhow::Result;
use mlx_rs::{Array, Dtype};

use super::par_rows;
use super::simd::simd_dispatch;

simd_dispatch! {
    /// Each `head_dim`-wide head of the row `x` rotated into `o`: for `i < half`,
    /// `o_i = x_i cos_i − x_{i+half} sin_i`, `o_{i+half} = x_{i+half} cos_i + x_i sin_i`.
    fn rope_row(x: &[f32], o: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = head_dim / 2;
        for (xh, oh) in x.chunks_exact(head_dim).zip(o.chunks_exact_mut(head_dim)) {
            let (x1, x2) = xh.split_at(half);
            let (o1, o2) = oh.split_at_mut(half);
            for ((((o1, o2), &a), &b), (&c, &s)) in o1.iter_mut().zip(o2.iter_mut()).zip(x1).zip(x2).zip(cos.iter().zip(sin)) {
                *o1 = a * c - b * s;
                *o2 = b * c + a * s;
            }
        }
    }
}

/// RoPE of a float32 `x` laid out `[total, heads, 1, head_dim]` at `positions` (`[total]`
/// int32), angle `scale × position × theta^(-2i / head_dim)`; `None` when an input is not a
/// contiguous array of that layout (the caller then uses MLX).
pub fn rope_f32(x: &Array, theta: f32, scale: f32, positions: &Array) -> Result<Option<Array>> {
    if x.dtype() != Dtype::Float32 || x.ndim() != 4 || positions.dtype() != Dtype::Int32 {
        return Ok(None);
    }
    let (total, head_dim) = (x.dim(0) as usize, x.dim(3) as usize);
    if head_dim % 2 != 0 || head_dim == 0 || positions.size() != total || total == 0 {
        return Ok(None);
    }
    x.eval()?;
    positions.eval()?;
    let (Ok(xs), Ok(pos)) = (x.try_as_slice::<f32>(), positions.try_as_slice::<i32>()) else { return Ok(None) };
    let width = xs.len() / total;
    let half = head_dim / 2;
    // One cos/sin row per position value in the batch (sequences restart at 0).
    let Some(&max_pos) = pos.iter().max() else { return Ok(None) };
    if pos.iter().any(|&p| p < 0) {
        return Ok(None);
    }
    let inv: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    let rows = max_pos as usize + 1;
    let (mut cos, mut sin) = (vec![0f32; rows * half], vec![0f32; rows * half]);
    for p in 0..rows {
        let at = scale * p as f32;
        for i in 0..half {
            let angle = at * inv[i];
            cos[p * half + i] = angle.cos();
            sin[p * half + i] = angle.sin();
        }
    }
    let mut out = vec![0f32; xs.len()];
    par_rows(&mut out, width, |first, o| {
        for (r, orow) in o.chunks_exact_mut(width).enumerate() {
            let t = first + r;
            let p = pos[t] as usize * half;
            rope_row(&xs[t * width..(t + 1) * width], orow, head_dim, &cos[p..p + half], &sin[p..p + half]);
        }
    });
    Ok(Some(Array::from_slice(&out, x.shape())))
}

#[cfg(test)]
mod tests {
    use super::super::simd::available;
    use super::*;

    /// Against MLX's RoPE kernel at positions across a batch, for the head sizes and scales
    /// the families use, and every SIMD level of the row kernel against float64.
    #[test]
    fn rope_matches_mlx_and_float64() {
        for (head_dim, theta, scale) in
            [(64, 10000.0f32, 1.0f32), (128, 1e6, 1.0), (32, 160000.0, 0.917), (16, 1e4, 1.0)]
        {
            let (total, heads) = (300usize, 3usize);
            let v: Vec<f32> = (0..total * heads * head_dim).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
            let x = Array::from_slice(&v, &[total as i32, heads as i32, 1, head_dim as i32]);
            let pos: Vec<i32> = (0..total as i32).map(|i| i % 123 + (i / 123) * 5).collect();
            let positions = Array::from_slice(&pos, &[total as i32]);
            let mlx = mlx_rs::fast::rope_dynamic(&x, head_dim as i32, false, theta, scale, &positions, None).unwrap();
            let host = rope_f32(&x, theta, scale, &positions).unwrap().unwrap();
            let worst = mlx.subtract(&host).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>();
            assert!(worst < 1e-4, "head_dim {head_dim} theta {theta} scale {scale}: max diff {worst}");
        }
        let (head_dim, half) = (24usize, 12usize);
        let x: Vec<f32> = (0..2 * head_dim).map(|i| (i as f32 * 0.3).sin()).collect();
        let (c, s): (Vec<f32>, Vec<f32>) = (0..half).map(|i| ((i as f32 * 0.7).cos(), (i as f32 * 0.7).sin())).unzip();
        for level in available() {
            let mut o = vec![0f32; 2 * head_dim];
            rope_row::at(level, &x, &mut o, head_dim, &c, &s);
            for h in 0..2 {
                for i in 0..half {
                    let (a, b) = (x[h * head_dim + i] as f64, x[h * head_dim + half + i] as f64);
                    let (cc, ss) = (c[i] as f64, s[i] as f64);
                    assert!((o[h * head_dim + i] as f64 - (a * cc - b * ss)).abs() < 1e-6, "{level:?}");
                    assert!((o[h * head_dim + half + i] as f64 - (b * cc + a * ss)).abs() < 1e-6, "{level:?}");
                }
            }
        }
    }
}
