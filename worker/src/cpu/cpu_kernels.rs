//! Host-side elementwise kernels for the CPU backend.
//!
//! MLX's CPU backend JIT-compiles elementwise chains with `g++ -O3` and no `-march`, and its
//! x86 SIMD layer is scalar (`simd<float, 1>`); `erf` then calls libm's `fmaf` per element.
//! Profiling all-MiniLM-L6-v2 at 32 × 128 tokens put the exact-GELU kernel at ~40% of the
//! forward pass, more than the BLAS GEMMs (perf: `__fmaf_fma3` 21%, `simd::exp` 10%,
//! `simd::erf` 5%). This file computes it on the host instead: a branch-free rational erf
//! that the Rust compiler vectorizes, split across the cores. Only the CPU backend in float32
//! uses it; on a GPU (chosen at run time, engine.rs) the MLX kernel is the fast path.
//!
//! Each kernel body is compiled for SSE2/NEON, AVX2 and AVX-512 and picked at run time
//! (`simd.rs`); `tests.rs` checks every level against a scalar reference, and
//! `mlx-serve-worker bench-kernels` (`bench.rs`) times them side by side. Results go back to
//! MLX through `Array::from_slice`, one copy: MLX's CPU allocator cannot adopt a foreign
//! buffer (`mlx_array_new_data_managed` copies too, checked with MLX 0.32.2).

pub mod bench;
mod gated;
mod norms;
mod rope;
mod simd;
#[cfg(test)]
mod tests;

use anyhow::Result;
use mlx_rs::{Array, Dtype};

pub use gated::{gated_f32, Gate};
pub use norms::{residual_layer_norm_f32, residual_rms_norm_f32, rms_norm_f32};
pub use rope::rope_f32;
use simd::simd_dispatch;
pub use simd::{available as simd_levels, Level as SimdLevel};

/// erf(x) for f32, Eigen's / XLA's rational approximation (`generic_fast_erf_float`):
/// clamp to [-4, 4] (erf is ±1 in f32 beyond), odd degree-13 numerator over even degree-8
/// denominator; max error a few ulp. Branch-free, so loops over it vectorize.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// Exact (erf) GELU, `x · ½ · (1 + erf(x / √2))`, transformers' `"gelu"`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

simd_dispatch! {
    fn gelu_rows(out: &mut [f32], src: &[f32], bias: &[f32]) {
        for (o, x) in out.chunks_exact_mut(bias.len()).zip(src.chunks_exact(bias.len())) {
            for ((o, &x), &b) in o.iter_mut().zip(x).zip(bias) {
                *o = gelu(x + b);
            }
        }
    }
}

simd_dispatch! {
    /// Out-of-place softmax of one row: what `softmax_inplace` is tested and benched against
    /// (tests and `bench-kernels` call it per SIMD level, so the dispatcher itself is unused).
    #[allow(dead_code)]
    fn softmax_row(x: &[f32], o: &mut [f32], scale: f32) {
        let m = lanes_max(x);
        let inv = 1.0 / exp_sum_into(x, o, m, scale);
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

simd_dispatch! {
    fn softmax_inplace_impl(x: &mut [f32], scale: f32) {
        let m = lanes_max(x);
        let mut acc = [0f32; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                c[i] = exp_neg((c[i] - m) * scale);
                acc[i] += c[i];
            }
        }
        let mut sum = tree(acc, |a, b| a + b);
        for v in chunks.into_remainder() {
            *v = exp_neg((*v - m) * scale);
            sum += *v;
        }
        let inv = 1.0 / sum;
        x.iter_mut().for_each(|v| *v *= inv);
    }
}

/// `o = e^((x - m)·scale)`, returning the sum of `o` (one pass: exp and a lane-wise sum).
#[inline(always)]
fn exp_sum_into(x: &[f32], o: &mut [f32], m: f32, scale: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (mut oc, mut xc) = (o.chunks_exact_mut(LANES), x.chunks_exact(LANES));
    for (o, x) in (&mut oc).zip(&mut xc) {
        for i in 0..LANES {
            o[i] = exp_neg((x[i] - m) * scale);
            acc[i] += o[i];
        }
    }
    let mut sum = tree(acc, |a, b| a + b);
    for (o, &x) in oc.into_remainder().iter_mut().zip(xc.remainder()) {
        *o = exp_neg((x - m) * scale);
        sum += *o;
    }
    sum
}

/// softmax(scale · x) of one row, in place.
pub fn softmax_inplace(x: &mut [f32], scale: f32) {
    softmax_inplace_impl(x, scale)
}

simd_dispatch! {
    /// `LayerNorm(x + xb + r)` of each `w.len()`-wide row of `x` and `r` into `o`.
    fn add_layer_norm_rows(x: &[f32], xb: &[f32], r: &[f32], w: &[f32], b: &[f32], eps: f32, o: &mut [f32]) {
        let hidden = w.len();
        for ((o, x), r) in o.chunks_exact_mut(hidden).zip(x.chunks_exact(hidden)).zip(r.chunks_exact(hidden)) {
            for (((o, &x), &xb), &r) in o.iter_mut().zip(x).zip(xb).zip(r) {
                *o = x + xb + r;
            }
            let n = o.len() as f32;
            let mean = lanes_sum(o) / n;
            let var = lanes_sq_dev(o, mean) / n;
            let inv = 1.0 / (var + eps).sqrt();
            for ((o, &w), &b) in o.iter_mut().zip(w).zip(b) {
                *o = (*o - mean) * inv * w + b;
            }
        }
    }
}

/// `LayerNorm(x + x_bias + residual)` over the last axis of `[rows, hidden]` float32 arrays
/// (BERT's post-LN residual blocks; `x_bias` is the preceding linear layer's bias), one
/// pass per row instead of MLX's adds + composed LayerNorm (reductions and elementwise ops,
/// scalar on x86). Biased variance, as torch computes it. `None` when an input is not a
/// contiguous float32 array of the expected shape.
pub fn add_layer_norm_f32(
    x: &Array,
    x_bias: Option<&Array>,
    residual: &Array,
    weight: &Array,
    bias: &Array,
    eps: f32,
) -> Result<Option<Array>> {
    let zero_bias;
    let x_bias = match x_bias {
        Some(b) => b,
        None => {
            zero_bias = Array::zeros::<f32>(&[x.dim(-1)])?;
            &zero_bias
        }
    };
    let all_f32 = [x, x_bias, residual, weight, bias].iter().all(|a| a.dtype() == Dtype::Float32);
    if !all_f32 || x.ndim() != 2 || x.shape() != residual.shape() {
        return Ok(None);
    }
    let hidden = x.dim(1) as usize;
    for a in [x, x_bias, residual, weight, bias] {
        a.eval()?;
    }
    let (Ok(xs), Ok(xbs), Ok(rs), Ok(ws), Ok(bs)) = (
        x.try_as_slice::<f32>(),
        x_bias.try_as_slice::<f32>(),
        residual.try_as_slice::<f32>(),
        weight.try_as_slice::<f32>(),
        bias.try_as_slice::<f32>(),
    ) else {
        return Ok(None);
    };
    if ws.len() != hidden || bs.len() != hidden || xbs.len() != hidden {
        return Ok(None);
    }
    let mut out = vec![0f32; xs.len()];
    par_rows(&mut out, hidden, |first, o| {
        let span = first * hidden..first * hidden + o.len();
        add_layer_norm_rows(&xs[span.clone()], xbs, &rs[span], ws, bs, eps, o)
    });
    Ok(Some(Array::from_slice(&out, x.shape())))
}

/// Below this many output elements threads cost more than they save.
const PARALLEL_MIN: usize = 1 << 16;

/// The host kernels' row split: `f(first_row, rows_of_out)` over `out` (`width` floats a
/// row) cut into one block of whole rows per core, or whole when it is small.
pub(crate) fn par_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    if threads <= 1 || out.len() < PARALLEL_MIN || width == 0 {
        f(0, out);
        return;
    }
    let per = (out.len() / width).div_ceil(threads);
    std::thread::scope(|s| {
        for (k, o) in out.chunks_mut(per * width).enumerate() {
            let f = &f;
            s.spawn(move || f(k * per, o));
        }
    });
}

/// Exact GELU of `x + bias` (bias over the last axis, zeros when absent) for a float32
/// `[rows, features]` array, computed on the host; `None` when an input is not a
/// contiguous float32 array of matching shape (the caller then uses MLX's kernel).
pub fn gelu_f32(x: &Array, bias: Option<&Array>) -> Result<Option<Array>> {
    if x.dtype() != Dtype::Float32 || x.ndim() != 2 || bias.is_some_and(|b| b.dtype() != Dtype::Float32) {
        return Ok(None);
    }
    let features = x.dim(1) as usize;
    x.eval()?;
    let Ok(src) = x.try_as_slice::<f32>() else { return Ok(None) };
    let zeros;
    let bias: &[f32] = match bias {
        Some(b) => {
            b.eval()?;
            match b.try_as_slice::<f32>() {
                Ok(s) if s.len() == features => s,
                _ => return Ok(None),
            }
        }
        None => {
            zeros = vec![0f32; features];
            &zeros
        }
    };
    let mut out = vec![0f32; src.len()];
    par_rows(&mut out, features, |first, o| {
        let at = first * features;
        gelu_rows(o, &src[at..at + o.len()], bias)
    });
    Ok(Some(Array::from_slice(&out, x.shape())))
}

/// e^x for x ≤ 0 (softmax after subtracting the row max), Cephes `expf`: x = n·ln2 + r,
/// degree-6 polynomial for e^r, 2^n through the exponent bits. ~1 ulp; branch-free (the
/// rounding uses the 1.5·2²³ trick instead of `round`, which SSE2 cannot vectorize).
/// 2^n comes from the integer bits of that sum (`t`'s low mantissa bits hold n), not from
/// `n as i32`: Rust's saturating float-to-int cast does not vectorize, and put the exp loop
/// on one lane at a time.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.max(-87.0);
    let t = x * LOG2E + ROUND; // bits: 0x4B40_0000 + n, for n in [-126, 0]
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes 5.0000001201e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    // (bits + 127) << 23 keeps the low 9 bits of n + 127 (in [1, 127]) as the exponent
    // field: exactly 2^n.
    y * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// max(a, b) for non-NaN inputs as one vector instruction (`f32::max`'s NaN rule costs a
/// compare and a blend per vector).
#[inline(always)]
fn max_fast(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// Independent accumulators in the reductions below: a plain `fold` over f32 is a serial
/// dependency chain (float addition is not reassociated); 16 lanes fill one AVX-512
/// register, two AVX2 or four SSE/NEON registers, so every level vectorizes them.
const LANES: usize = 16;

/// Folds the lanes pairwise (8 + 8, 4 + 4, …): four dependent steps instead of a chain of
/// 15, in an order fixed for every level.
#[inline(always)]
fn tree(mut acc: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] = f(acc[i], acc[i + width]);
        }
        width /= 2;
    }
    acc[0]
}

/// Max of `x` (−∞ when empty).
#[inline(always)]
fn lanes_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = max_fast(acc[i], c[i]);
        }
    }
    rest.iter().fold(tree(acc, max_fast), |a, &b| max_fast(a, b))
}

/// Sum of `x`.
#[inline(always)]
fn lanes_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    tree(acc, |a, b| a + b) + rest.iter().sum::<f32>()
}

/// Sum of `(x - mean)²`.
#[inline(always)]
fn lanes_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    tree(acc, |a, b| a + b) + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}
