//! Every kernel at every instruction-set level this CPU has, against a scalar reference
//! (f64 where the math allows), on lengths with SIMD tails (not multiples of 4, 8 or 16);
//! and the levels against each other, which must agree bit for bit (simd.rs says why).

use super::simd::{available, Level};
use super::*;

/// Lengths around the vector widths and MiniLM's hidden size, most with tails.
const LENGTHS: [usize; 12] = [1, 3, 7, 8, 15, 17, 31, 33, 127, 129, 383, 385];

/// Deterministic values in [lo, hi).
fn values(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            lo + (hi - lo) * (s >> 8) as f32 / (1u32 << 24) as f32
        })
        .collect()
}

/// Runs `f` at every level and checks the outputs are identical; returns them.
fn same_at_every_level(f: impl Fn(Level) -> Vec<f32>) -> Vec<f32> {
    let levels = available();
    let first = f(levels[0]);
    for &l in &levels[1..] {
        let got = f(l);
        assert!(got.iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits()), "{l:?} differs from {:?}", levels[0]);
    }
    first
}

fn assert_close(got: &[f32], want: &[f64], abs: f64, rel: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= abs + rel * w.abs(), "{what}[{i}] = {g}, want {w}");
    }
}

#[test]
fn levels_are_detected() {
    let levels = available();
    assert_eq!(levels[0], Level::Baseline);
    assert!(levels.contains(&simd::level()));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
        assert!(levels.contains(&Level::Avx512), "{levels:?}");
    }
}

#[test]
fn gelu_rows_matches_scalar() {
    for (case, &n) in LENGTHS.iter().enumerate() {
        let rows = 1 + case % 3;
        let x = values(rows * n, case as u32, -6.0, 6.0);
        let bias = values(n, 100 + case as u32, -0.5, 0.5);
        let got = same_at_every_level(|l| {
            let mut out = vec![f32::NAN; x.len()];
            gelu_rows::at(l, &mut out, &x, &bias);
            out
        });
        // Scalar: one element at a time, through black_box so nothing is vectorized.
        let want: Vec<f64> =
            x.iter().enumerate().map(|(i, &v)| gelu(std::hint::black_box(v + bias[i % n])) as f64).collect();
        assert_close(&got, &want, 0.0, 0.0, &format!("gelu n={n}"));
    }
}

#[test]
fn softmax_matches_f64() {
    for (case, &n) in LENGTHS.iter().enumerate() {
        let x = values(n, case as u32, -20.0, 20.0);
        let scale = 0.176_776_7; // 1/sqrt(32), MiniLM's head dim
        let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let e: Vec<f64> = x.iter().map(|&v| ((v as f64 - m) * scale as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        let want: Vec<f64> = e.iter().map(|v| v / sum).collect();
        let got = same_at_every_level(|l| {
            let mut out = vec![f32::NAN; n];
            softmax_row::at(l, &x, &mut out, scale);
            out
        });
        assert_close(&got, &want, 1e-9, 2e-6, &format!("softmax_row n={n}"));
        let inplace = same_at_every_level(|l| {
            let mut v = x.clone();
            softmax_inplace_impl::at(l, &mut v, scale);
            v
        });
        assert_eq!(inplace, got, "in-place and out-of-place softmax differ at n={n}");
    }
}

#[test]
fn add_layer_norm_matches_f64() {
    for (case, &n) in LENGTHS.iter().enumerate() {
        let rows = 1 + case % 3;
        let seed = 10 * case as u32;
        let (x, r) = (values(rows * n, seed, -3.0, 3.0), values(rows * n, seed + 1, -3.0, 3.0));
        let (xb, w, b) =
            (values(n, seed + 2, -1.0, 1.0), values(n, seed + 3, 0.5, 1.5), values(n, seed + 4, -1.0, 1.0));
        let eps = 1e-12;
        let got = same_at_every_level(|l| {
            let mut out = vec![f32::NAN; x.len()];
            add_layer_norm_rows::at(l, &x, &xb, &r, &w, &b, eps, &mut out);
            out
        });
        let mut want = Vec::with_capacity(x.len());
        for row in 0..rows {
            let s: Vec<f64> = (0..n).map(|i| x[row * n + i] as f64 + xb[i] as f64 + r[row * n + i] as f64).collect();
            let mean = s.iter().sum::<f64>() / n as f64;
            let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
            want.extend(
                s.iter().enumerate().map(|(i, v)| (v - mean) / (var + eps as f64).sqrt() * w[i] as f64 + b[i] as f64),
            );
        }
        // n = 1: the row is its own mean, so the output is the bias exactly.
        assert_close(&got, &want, 2e-5, 2e-5, &format!("add_layer_norm n={n}"));
    }
}

#[test]
fn exp_is_accurate_on_softmax_inputs() {
    for i in 0..2000 {
        let x = -(i as f32) * 0.043;
        let (got, want) = (exp_neg(x) as f64, (x as f64).exp());
        assert!((got - want).abs() <= 3e-7 * want + 1e-38, "exp({x}) = {got}, want {want}");
    }
}

#[test]
fn erf_matches_reference_values() {
    // erf values from the standard tables (Abramowitz & Stegun 7.1).
    for (x, want) in [
        (0.0f32, 0.0f64),
        (0.5, 0.520_499_877_8),
        (1.0, 0.842_700_792_9),
        (2.0, 0.995_322_265_0),
        (-1.5, -0.966_105_146_5),
        (5.0, 1.0),
    ] {
        assert!((erf(x) as f64 - want).abs() < 1e-6, "erf({x}) = {}", erf(x));
    }
}
