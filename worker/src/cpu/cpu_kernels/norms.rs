//! Norms on the host: the pre-norm residual step (`s = x + y` and `norm(s)` in one pass, for
//! blocks that add a sublayer's output to the residual stream and normalize the sum for the
//! next sublayer: ModernBERT's LayerNorm, Qwen's and Gemma's RMSNorm), and RMSNorm alone
//! (Gemma's sandwich norms, the per-head q/k norms of Qwen 3 and Gemma 3).
//!
//! MLX has no CPU kernel for `fast::layer_norm` / `fast::rms_norm`: it composes them from
//! single-threaded reductions and elementwise ops (perf of gte-modernbert-base's shape, 16
//! mixed passages on 2 cores: `SumReduce`, `Square`, `Subtract`, `Multiply` and the residual
//! `Add` together ~11% of samples, all on one core while the other idles; of
//! embeddinggemma-300m's, ~11% too; docs/cpu-backend.md).

use anyhow::Result;
use mlx_rs::{Array, Dtype};

use super::simd::simd_dispatch;
use super::{lanes_sq_dev, lanes_sum, par_rows, PARALLEL_MIN};

/// Which norm follows the residual sum, and its epsilon.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Norm {
    kind: NormKind,
    eps: f32,
}

/// Which norm follows the residual sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(s − mean) / √(var + eps) · w + b`, biased variance (torch's `nn.LayerNorm`).
    Layer,
    /// `s / √(mean(s²) + eps) · w` (T5-style RMSNorm as MLX's `fast::rms_norm`: Qwen, and
    /// Gemma with its `1 + w` weight).
    Rms,
}

simd_dispatch! {
    /// `s = x + y` and `o = norm(s)` (weight `w`, bias `b` for LayerNorm) of each
    /// `w.len()`-wide row.
    fn residual_norm_rows(x: &[f32], y: &[f32], w: &[f32], b: &[f32], norm: Norm, s: &mut [f32], o: &mut [f32]) {
        let Norm { kind, eps } = norm;
        let hidden = w.len();
        let rows = s.chunks_exact_mut(hidden).zip(o.chunks_exact_mut(hidden));
        for ((s, o), (x, y)) in rows.zip(x.chunks_exact(hidden).zip(y.chunks_exact(hidden))) {
            for ((s, &x), &y) in s.iter_mut().zip(x).zip(y) {
                *s = x + y;
            }
            let n = hidden as f32;
            let mean = if kind == NormKind::Layer { lanes_sum(s) / n } else { 0.0 };
            let var = lanes_sq_dev(s, mean) / n;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, &s), &w), &b) in o.iter_mut().zip(s.iter()).zip(w).zip(b) {
                *o = (s - mean) * inv * w + b;
            }
        }
    }
}

simd_dispatch! {
    /// `o = x / √(mean(x²) + eps) · w` of each `w.len()`-wide row.
    fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, o: &mut [f32]) {
        let width = w.len();
        for (o, x) in o.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
            let inv = 1.0 / (lanes_sq_dev(x, 0.0) / width as f32 + eps).sqrt();
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = x * inv * w;
            }
        }
    }
}

/// RMSNorm over the last axis (any leading shape) of a float32 array with weight `[d]`, as
/// MLX's `fast::rms_norm`; `None` when an input is not a contiguous float32 array of that
/// width (the caller then uses MLX).
pub fn rms_norm_f32(x: &Array, weight: &Array, eps: f32) -> Result<Option<Array>> {
    if x.dtype() != Dtype::Float32 || weight.dtype() != Dtype::Float32 || x.ndim() == 0 {
        return Ok(None);
    }
    x.eval()?;
    weight.eval()?;
    let (Ok(xs), Ok(ws)) = (x.try_as_slice::<f32>(), weight.try_as_slice::<f32>()) else { return Ok(None) };
    if ws.is_empty() || x.dim(-1) as usize != ws.len() {
        return Ok(None);
    }
    let mut out = vec![0f32; xs.len()];
    par_rows(&mut out, ws.len(), |first, o| {
        let at = first * ws.len();
        rms_norm_rows(&xs[at..at + o.len()], ws, eps, o)
    });
    Ok(Some(Array::from_slice(&out, x.shape())))
}

/// `(x + y, LayerNorm(x + y))` for float32 `[rows, hidden]` arrays, weight `[hidden]` and an
/// optional bias; `None` when an input is not a contiguous float32 array of those shapes
/// (the caller then uses MLX).
pub fn residual_layer_norm_f32(
    x: &Array,
    y: &Array,
    weight: &Array,
    bias: Option<&Array>,
    eps: f32,
) -> Result<Option<(Array, Array)>> {
    residual_norm_f32(x, y, weight, bias, eps, NormKind::Layer)
}

/// `(x + y, RmsNorm(x + y))`, as [`residual_layer_norm_f32`].
pub fn residual_rms_norm_f32(x: &Array, y: &Array, weight: &Array, eps: f32) -> Result<Option<(Array, Array)>> {
    residual_norm_f32(x, y, weight, None, eps, NormKind::Rms)
}

fn residual_norm_f32(
    x: &Array,
    y: &Array,
    weight: &Array,
    bias: Option<&Array>,
    eps: f32,
    kind: NormKind,
) -> Result<Option<(Array, Array)>> {
    let inputs = [Some(x), Some(y), Some(weight), bias];
    if inputs.iter().flatten().any(|a| a.dtype() != Dtype::Float32) || x.ndim() != 2 || x.shape() != y.shape() {
        return Ok(None);
    }
    for a in inputs.iter().flatten() {
        a.eval()?;
    }
    let hidden = x.dim(1) as usize;
    let (Ok(xs), Ok(ys), Ok(ws)) = (x.try_as_slice::<f32>(), y.try_as_slice::<f32>(), weight.try_as_slice::<f32>())
    else {
        return Ok(None);
    };
    let zeros;
    let bs = match bias {
        Some(b) => match b.try_as_slice::<f32>() {
            Ok(s) => s,
            Err(_) => return Ok(None),
        },
        None => {
            zeros = vec![0f32; hidden];
            &zeros[..]
        }
    };
    if ws.len() != hidden || bs.len() != hidden || hidden == 0 {
        return Ok(None);
    }
    let (mut sum, mut normed) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
    let rows = |first: usize, s: &mut [f32], o: &mut [f32]| {
        let span = first * hidden..first * hidden + s.len();
        residual_norm_rows(&xs[span.clone()], &ys[span], ws, bs, Norm { kind, eps }, s, o)
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    if threads <= 1 || sum.len() < PARALLEL_MIN {
        rows(0, &mut sum, &mut normed);
    } else {
        // Two outputs split alike (`par_rows` splits one).
        let per = (xs.len() / hidden).div_ceil(threads) * hidden;
        std::thread::scope(|scope| {
            for (k, (s, o)) in sum.chunks_mut(per).zip(normed.chunks_mut(per)).enumerate() {
                let rows = &rows;
                scope.spawn(move || rows(k * per / hidden, s, o));
            }
        });
    }
    Ok(Some((Array::from_slice(&sum, x.shape()), Array::from_slice(&normed, x.shape()))))
}

#[cfg(test)]
mod tests {
    use super::super::simd::available;
    use super::*;

    /// Every SIMD level against float64 on widths with tails, and the array entry point on a
    /// batch large enough to be split across threads, with and without a bias.
    #[test]
    fn residual_layer_norm_matches_f64() {
        let value = |i: usize, k: f32| ((i as f32 * k).sin() * 3.0) + 0.5;
        for hidden in [1usize, 7, 16, 37, 64, 768] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * hidden).map(|i| value(i, 0.37)).collect();
            let y: Vec<f32> = (0..rows * hidden).map(|i| value(i, 1.13)).collect();
            let w: Vec<f32> = (0..hidden).map(|i| 0.5 + value(i, 0.7).abs() / 4.0).collect();
            let b: Vec<f32> = (0..hidden).map(|i| value(i, 2.9) / 10.0).collect();
            let eps = 1e-5f32;
            let mut want_s = vec![0f64; rows * hidden];
            let mut want_o = vec![0f64; rows * hidden];
            for r in 0..rows {
                let row = r * hidden..(r + 1) * hidden;
                for i in row.clone() {
                    want_s[i] = x[i] as f64 + y[i] as f64;
                }
                let mean = want_s[row.clone()].iter().sum::<f64>() / hidden as f64;
                let var = want_s[row.clone()].iter().map(|v| (v - mean).powi(2)).sum::<f64>() / hidden as f64;
                for (j, i) in row.enumerate() {
                    want_o[i] = (want_s[i] - mean) / (var + eps as f64).sqrt() * w[j] as f64 + b[j] as f64;
                }
            }
            for level in available() {
                let (mut s, mut o) = (vec![0f32; rows * hidden], vec![0f32; rows * hidden]);
                residual_norm_rows::at(level, &x, &y, &w, &b, Norm { kind: NormKind::Layer, eps }, &mut s, &mut o);
                for i in 0..rows * hidden {
                    assert!((s[i] as f64 - want_s[i]).abs() < 1e-6, "{level:?} hidden {hidden} sum {i}");
                    assert!(
                        (o[i] as f64 - want_o[i]).abs() < 2e-5,
                        "{level:?} hidden {hidden} norm {i}: {} vs {}",
                        o[i],
                        want_o[i]
                    );
                }
            }
        }
        // The array entry point, split across threads (rows × hidden ≥ PARALLEL_MIN).
        let (rows, hidden) = (300usize, 256usize);
        let x: Vec<f32> = (0..rows * hidden).map(|i| value(i, 0.37)).collect();
        let y: Vec<f32> = (0..rows * hidden).map(|i| value(i, 1.13)).collect();
        let w: Vec<f32> = (0..hidden).map(|i| 0.5 + value(i, 0.7).abs() / 4.0).collect();
        let shape = [rows as i32, hidden as i32];
        let (xa, ya, wa) =
            (Array::from_slice(&x, &shape), Array::from_slice(&y, &shape), Array::from_slice(&w, &[hidden as i32]));
        let (s, o) = residual_layer_norm_f32(&xa, &ya, &wa, None, 1e-5).unwrap().unwrap();
        let sum = xa.add(&ya).unwrap();
        let mlx = mlx_rs::fast::layer_norm(&sum, &wa, None, 1e-5).unwrap();
        let diff = |a: &Array, b: &Array| {
            a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max)
        };
        assert_eq!(diff(&s, &sum), 0.0);
        assert!(diff(&o, &mlx) < 1e-4, "{}", diff(&o, &mlx));
        // RMSNorm against MLX's `fast::rms_norm`, and against float64 per level.
        let (s, o) = residual_rms_norm_f32(&xa, &ya, &wa, 1e-6).unwrap().unwrap();
        let mlx = mlx_rs::fast::rms_norm(&sum, Some(&wa), 1e-6).unwrap();
        assert_eq!(diff(&s, &sum), 0.0);
        assert!(diff(&o, &mlx) < 1e-4, "rms: {}", diff(&o, &mlx));
        let plain = rms_norm_f32(&sum, &wa, 1e-6).unwrap().unwrap();
        assert!(diff(&plain, &mlx) < 1e-4, "rms alone: {}", diff(&plain, &mlx));
        let zeros = vec![0f32; hidden];
        for level in available() {
            let (mut s, mut o) = (vec![0f32; rows * hidden], vec![0f32; rows * hidden]);
            residual_norm_rows::at(level, &x, &y, &w, &zeros, Norm { kind: NormKind::Rms, eps: 1e-6 }, &mut s, &mut o);
            for r in 0..rows {
                let row = r * hidden..(r + 1) * hidden;
                let ms = row.clone().map(|i| (x[i] as f64 + y[i] as f64).powi(2)).sum::<f64>() / hidden as f64;
                for (j, i) in row.enumerate() {
                    let want = (x[i] as f64 + y[i] as f64) / (ms + 1e-6).sqrt() * w[j] as f64;
                    assert!((o[i] as f64 - want).abs() < 2e-5, "{level:?} rms {i}: {} vs {want}", o[i]);
                }
            }
        }
    }
}
