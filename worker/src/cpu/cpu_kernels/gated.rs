//! Gated feed-forward activations on the host: `act(gate) · up` over the fused projection
//! of a SwiGLU / GeGLU block (nomic-bert, GTE `new`, ModernBERT, Gemma 3, Qwen 2/3).
//!
//! MLX computes the same with a compiled elementwise kernel that runs on one thread, with
//! a scalar `exp` and a libm `fmaf` call per element: perf of nomic-embed-text-v1.5's shape
//! (16 mixed passages, 2 cores) put it at ~18% of the forward pass, and OpenBLAS' idle pool
//! thread spinning on the other core beside it at ~20% (docs/cpu-backend.md). Here it is one
//! vectorized pass over both halves, split across the cores, reading the projection output
//! in place (no split copy).

use anyhow::Result;
use mlx_rs::{Array, Dtype};

use super::simd::simd_dispatch;
use super::{exp_neg, gelu, par_rows};

/// The activation applied to the gate half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Exact erf GELU (transformers `"gelu"`).
    Gelu,
    /// tanh-approximated GELU (`"gelu_pytorch_tanh"`, `"gelu_new"`).
    GeluTanh,
    Relu,
    /// x · sigmoid(x) (`"silu"`, `"swish"`).
    Silu,
}

/// x · sigmoid(x), branch-free: sigmoid from e^(−|x|) ≤ 1, so `exp_neg` never overflows.
#[inline(always)]
fn silu(x: f32) -> f32 {
    let e = exp_neg(-x.abs());
    let r = 1.0 / (1.0 + e);
    x * if x >= 0.0 { r } else { e * r }
}

/// ½x(1 + tanh(√(2/π)(x + 0.044715x³))), PyTorch's `gelu(approximate="tanh")`; tanh(u) =
/// sign(u)·(1 − e)/(1 + e) with e = e^(−2|u|).
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    let u = K * (x + 0.044_715 * x * x * x);
    let e = exp_neg(-2.0 * u.abs());
    let t = (1.0 - e) / (1.0 + e);
    0.5 * x * (1.0 + if u >= 0.0 { t } else { -t })
}

simd_dispatch! {
    /// `out[r] = act(src[r][gate_at..][..inner]) · src[r][up_at..][..inner]` for every row
    /// `r` of `src` (`2 · inner` wide).
    fn glu_rows(out: &mut [f32], src: &[f32], inner: usize, gate_at: usize, up_at: usize, gate: Gate) {
        for (o, row) in out.chunks_exact_mut(inner).zip(src.chunks_exact(2 * inner)) {
            let (g, u) = (&row[gate_at..gate_at + inner], &row[up_at..up_at + inner]);
            let pairs = o.iter_mut().zip(g).zip(u);
            match gate {
                Gate::Gelu => pairs.for_each(|((o, &g), &u)| *o = gelu(g) * u),
                Gate::GeluTanh => pairs.for_each(|((o, &g), &u)| *o = gelu_tanh(g) * u),
                Gate::Relu => pairs.for_each(|((o, &g), &u)| *o = g.max(0.0) * u),
                Gate::Silu => pairs.for_each(|((o, &g), &u)| *o = silu(g) * u),
            }
        }
    }
}

/// `act(gate) · up` for a float32 `[rows, 2 · inner]` array holding both halves (the gate
/// first when `gate_first`), as `[rows, inner]`; `None` when `fused` is not a contiguous
/// float32 2-D array of that width (the caller then uses MLX's kernels).
pub fn gated_f32(fused: &Array, inner: usize, gate_first: bool, gate: Gate) -> Result<Option<Array>> {
    if fused.dtype() != Dtype::Float32 || fused.ndim() != 2 || fused.dim(1) as usize != 2 * inner || inner == 0 {
        return Ok(None);
    }
    fused.eval()?;
    let Ok(src) = fused.try_as_slice::<f32>() else { return Ok(None) };
    let (gate_at, up_at) = if gate_first { (0, inner) } else { (inner, 0) };
    let rows = src.len() / (2 * inner);
    let mut out = vec![0f32; rows * inner];
    par_rows(&mut out, inner, |first, o| {
        let at = first * 2 * inner;
        glu_rows(o, &src[at..at + 2 * o.len()], inner, gate_at, up_at, gate)
    });
    Ok(Some(Array::from_slice(&out, &[rows as i32, inner as i32])))
}

#[cfg(test)]
mod tests {
    use super::super::simd::available;
    use super::*;

    fn reference(gate: Gate, g: f64) -> f64 {
        match gate {
            Gate::Gelu => 0.5 * g * (1.0 + libm_erf(g / std::f64::consts::SQRT_2)),
            Gate::GeluTanh => {
                let u = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
                0.5 * g * (1.0 + u.tanh())
            }
            Gate::Relu => g.max(0.0),
            Gate::Silu => g / (1.0 + (-g).exp()),
        }
    }

    /// erf in f64 (Abramowitz–Stegun 7.1.26 is too coarse; this is the series / continued
    /// fraction split used by Cephes, good to ~1e-15 — far below f32's resolution).
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 2.0 {
            // Maclaurin series: 2/√π Σ (−1)^n x^(2n+1) / (n! (2n+1)).
            let (mut term, mut sum, x2) = (x, x, x * x);
            for n in 1..60 {
                term *= -x2 / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc continued fraction (Lentz), x ≥ 2.
            let a = x.abs();
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            let erfc = (-a * a).exp() / (f * std::f64::consts::PI.sqrt());
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn gated_activations_match_a_float64_reference_at_every_level() {
        for gate in [Gate::Gelu, Gate::GeluTanh, Gate::Relu, Gate::Silu] {
            for inner in [1usize, 7, 16, 33, 129] {
                let rows = 3;
                let src: Vec<f32> = (0..rows * 2 * inner).map(|i| ((i * 7919) % 2001) as f32 / 100.0 - 10.0).collect();
                for gate_first in [true, false] {
                    let (ga, ua) = if gate_first { (0, inner) } else { (inner, 0) };
                    let mut first: Option<Vec<f32>> = None;
                    for level in available() {
                        let mut out = vec![0f32; rows * inner];
                        glu_rows::at(level, &mut out, &src, inner, ga, ua, gate);
                        for r in 0..rows {
                            for c in 0..inner {
                                let (g, u) = (src[r * 2 * inner + ga + c] as f64, src[r * 2 * inner + ua + c] as f64);
                                let want = reference(gate, g) * u;
                                let got = out[r * inner + c] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-5 + 2e-6 * want.abs(),
                                    "{gate:?} {level:?} g={g} u={u}: {got} vs {want}"
                                );
                            }
                        }
                        match &first {
                            None => first = Some(out),
                            Some(f) => {
                                assert!(f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{level:?}")
                            }
                        }
                    }
                }
            }
        }
    }
}
