//! `mlx-serve-worker bench-kernels`: each host kernel at each instruction-set level this
//! CPU has, one thread, at all-MiniLM-L6-v2's shapes for a 32 × 128-token batch, timed
//! side by side in one run (levels alternate; best of the rounds, since other work on a
//! shared machine only ever makes a run slower). Times are the thread's CPU time, so a
//! loaded machine (time slices lost to other processes) changes them far less than wall
//! time. Prints one JSON line per kernel and level.

use super::simd::{available, Level};
use super::{add_layer_norm_rows, gelu_rows, softmax_inplace_impl, softmax_row};

/// Deterministic values in [-4, 4).
fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 8000) as f32 / 1000.0 - 4.0).collect()
}

/// CPU seconds this thread has run.
fn thread_cpu() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec; CLOCK_THREAD_CPUTIME_ID always exists on
    // Linux and macOS.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Best CPU seconds of `rounds` calls of `f`, after one warm-up call.
fn best(rounds: u32, mut f: impl FnMut()) -> f64 {
    f();
    (0..rounds)
        .map(|_| {
            let t = thread_cpu();
            f();
            thread_cpu() - t
        })
        .fold(f64::INFINITY, f64::min)
}

pub fn run(rounds: u32) {
    const TOKENS: usize = 32 * 128;
    const HIDDEN: usize = 384;
    const FFN: usize = 1536;
    const SCORE_ROWS: usize = 32 * 12 * 128; // (sequence, head, query) rows of 128 keys
    let ffn_in = values(TOKENS * FFN);
    let ffn_bias = values(FFN);
    let mut ffn_out = vec![0f32; TOKENS * FFN];
    let (x, r, hb, w, b) =
        (values(TOKENS * HIDDEN), values(TOKENS * HIDDEN), values(HIDDEN), values(HIDDEN), values(HIDDEN));
    let mut ln_out = vec![0f32; TOKENS * HIDDEN];
    let scores = values(SCORE_ROWS * 128);
    let mut probs = vec![0f32; SCORE_ROWS * 128];
    let levels = available();
    let kernels: [(&str, usize); 4] = [
        ("gelu 4096x1536", TOKENS * FFN),
        ("add_layer_norm 4096x384", TOKENS * HIDDEN),
        ("softmax 49152x128", SCORE_ROWS * 128),
        ("softmax_inplace 49152x128", SCORE_ROWS * 128),
    ];
    let mut times = vec![[f64::INFINITY; 4]; levels.len()];
    // Alternate levels round by round so each sees the same machine load.
    for _ in 0..rounds {
        for (li, &level) in levels.iter().enumerate() {
            let t = &mut times[li];
            t[0] = t[0].min(best(1, || gelu_rows::at(level, &mut ffn_out, &ffn_in, &ffn_bias)));
            t[1] = t[1].min(best(1, || add_layer_norm_rows::at(level, &x, &hb, &r, &w, &b, 1e-12, &mut ln_out)));
            t[2] = t[2].min(best(1, || {
                for (o, x) in probs.chunks_exact_mut(128).zip(scores.chunks_exact(128)) {
                    softmax_row::at(level, x, o, 0.176_776_7);
                }
            }));
            // In place on the previous output (still 128 finite values per row).
            t[3] = t[3].min(best(1, || {
                for row in probs.chunks_exact_mut(128) {
                    softmax_inplace_impl::at(level, row, 0.176_776_7);
                }
            }));
        }
    }
    let base = levels.iter().position(|&l| l == Level::Avx2).unwrap_or(0);
    for (k, (name, elems)) in kernels.iter().enumerate() {
        for (li, level) in levels.iter().enumerate() {
            let s = times[li][k];
            println!(
                "{}",
                serde_json::json!({
                    "kernel": name,
                    "level": level.name(),
                    "best_cpu_ms": s * 1e3,
                    "ns_per_element": s * 1e9 / *elems as f64,
                    "speedup_vs": levels[base].name(),
                    "speedup": times[base][k] / s,
                })
            );
        }
    }
}
