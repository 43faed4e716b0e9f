//! Encoder self-attention computed on the host for the CPU backend, straight from the fused
//! Q/K/V projection.
//!
//! MLX's CPU path for attention copies Q, K and V into `[batch, heads, len, head_dim]`,
//! runs a batched matmul, a scalar-`exp` softmax, another batched matmul and copies the
//! result back (copies alone were ~7% of a MiniLM forward pass in perf). Here each
//! (sequence, head) pair is two BLAS calls on strided views of the projection output
//! (`lda` = the projection width, so no copies), with the softmax of cpu_kernels.rs in
//! between, while the 64 KiB score tile is still in cache. Padding costs nothing: only a
//! sequence's real queries and keys enter the GEMMs; padded query rows come out as zeros
//! (they are never read by pooling).

use anyhow::Result;
use mlx_rs::{Array, Dtype};

use crate::cpu_kernels::softmax_inplace;

// CBLAS (OpenBLAS here; Accelerate on macOS; MLX's bundled reference BLAS otherwise).
const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

extern "C" {
    fn cblas_sgemm(
        layout: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
}

/// Output pointer shared by the worker threads; each (sequence, head) task writes a
/// disjoint set of `head_dim`-wide column blocks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint regions (see `attention_from_qkv`), and the scope joins
// every thread before the buffer is used again.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Bidirectional attention over real tokens for a right-padded batch.
///
/// `qkv` is `[batch * len, 3 * heads * head_dim]` float32 (all query heads, then key heads,
/// then value heads, as the fused projection produces it); returns `[batch * len,
/// heads * head_dim]`. `None` when `qkv` is not a contiguous float32 array.
pub fn attention_from_qkv(qkv: &Array, lengths: &[i32], len: usize, heads: usize, head_dim: usize, scale: f32) -> Result<Option<Array>> {
    if qkv.dtype() != Dtype::Float32 || qkv.ndim() != 2 {
        return Ok(None);
    }
    qkv.eval()?;
    let Ok(src) = qkv.try_as_slice::<f32>() else { return Ok(None) };
    let width = 3 * heads * head_dim;
    let out_width = heads * head_dim;
    let batch = lengths.len();
    if src.len() != batch * len * width {
        return Ok(None);
    }
    let mut out = vec![0f32; batch * len * out_width];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let tasks = batch * heads;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8).min(tasks);
    let run = |first: usize, last: usize| {
        let mut scores = vec![0f32; len * len];
        for task in first..last {
            let (b, h) = (task / heads, task % heads);
            let n = (lengths[b].max(1) as usize).min(len);
            let base = b * len * width;
            let q = src[base + h * head_dim..].as_ptr();
            let k = src[base + (heads + h) * head_dim..].as_ptr();
            let v = src[base + (2 * heads + h) * head_dim..].as_ptr();
            let o = out_ptr;
            // SAFETY: pointers and leading dimensions describe n × head_dim blocks inside
            // `src` (n ≤ len rows of `width` floats from `base`), an n × n block of
            // `scores`, and rows b*len..b*len+n, columns h*head_dim.. of `out`, which no
            // other task touches.
            unsafe {
                cblas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, n as i32, n as i32, head_dim as i32, 1.0, q, width as i32, k, width as i32, 0.0, scores.as_mut_ptr(), n as i32);
                for row in scores[..n * n].chunks_exact_mut(n) {
                    softmax_inplace(row, scale);
                }
                let dst = o.0.add(b * len * out_width + h * head_dim);
                cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, n as i32, head_dim as i32, n as i32, 1.0, scores.as_ptr(), n as i32, v, width as i32, 0.0, dst, out_width as i32);
            }
        }
    };
    if threads <= 1 {
        run(0, tasks);
    } else {
        let per = tasks.div_ceil(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let run = &run;
                s.spawn(move || run(t * per, ((t + 1) * per).min(tasks)));
            }
        });
    }
    Ok(Some(Array::from_slice(&out, &[(batch * len) as i32, out_width as i32])))
}
