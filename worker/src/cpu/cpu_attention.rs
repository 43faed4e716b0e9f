//! Attention over a packed batch, computed on the host for the CPU backend.
//!
//! MLX's CPU path for attention copies Q, K and V into `[batch, heads, len, head_dim]`,
//! runs a batched matmul, a scalar-`exp` softmax, another batched matmul and copies the
//! result back (the copies alone were ~7% of a MiniLM forward pass in perf). Here each
//! (sequence, head) pair is two BLAS calls on strided views of the projection outputs
//! (`lda` = the projection's width, so nothing is copied), with the softmax of
//! cpu_kernels.rs in between while the score tile is still in cache. Sequences are packed
//! (`packing.rs`): a sequence's queries and keys are its own rows, so no pad token exists
//! and none is computed.
//!
//! Grouped-query attention reads the kv head `h / (heads / kv_heads)` for query head `h`;
//! which keys row `i` sees is the [`Mask`]'s (every key, `0..=i` for decoders, or a window
//! around `i`), and a [`RelativeBias`] is added to the scores (MPNet).

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use mlx_rs::{Array, Dtype};

use crate::blas::OneBlasThread;
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

/// Heads stored as column blocks of a 2-D `[rows, width]` float32 array: head `h` of row
/// `r` is `width`-strided at columns `col + h * head_dim ..`.
#[derive(Clone, Copy)]
pub struct HeadBlock<'a> {
    pub array: &'a Array,
    pub col: usize,
    pub heads: usize,
}

/// A checked, host-readable [`HeadBlock`].
struct HostBlock<'a> {
    data: &'a [f32],
    width: usize,
    col: usize,
}

impl<'a> HeadBlock<'a> {
    fn host(&self, rows: usize, head_dim: usize) -> Result<Option<HostBlock<'a>>> {
        let a = self.array;
        if a.dtype() != Dtype::Float32 || a.ndim() != 2 || a.dim(0) as usize != rows {
            return Ok(None);
        }
        let width = a.dim(1) as usize;
        if self.col + self.heads * head_dim > width {
            return Ok(None);
        }
        a.eval()?;
        Ok(a.try_as_slice::<f32>().ok().map(|data| HostBlock { data, width, col: self.col }))
    }
}

/// Which keys of its own sequence a query at position `i` attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every key (encoders).
    Full,
    /// Keys `0..=i` (decoders).
    Causal,
    /// Keys `j` with `|i - j| <= radius` (ModernBERT's local layers, Gemma3's sliding
    /// window).
    Window(usize),
    /// Keys `j` with `i - width < j <= i`: a causal sliding window of `width` keys, the
    /// query's own included (transformers' `sliding_window_overlay` over a causal mask,
    /// `kv > q - sliding_window`: a causal Gemma 3's sliding layers).
    CausalWindow(usize),
}

impl Mask {
    /// The keys `lo..hi` that query `i` of an `n`-token sequence sees.
    pub fn keys(self, i: usize, n: usize) -> (usize, usize) {
        match self {
            Mask::Full => (0, n),
            Mask::Causal => (0, i + 1),
            Mask::Window(r) => (i.saturating_sub(r), (i + r + 1).min(n)),
            Mask::CausalWindow(w) => ((i + 1).saturating_sub(w), i + 1),
        }
    }
}

/// An additive score bias that depends on the head and the key's offset from the query
/// (`j - i`) alone: MPNet's relative position buckets.
#[derive(Debug, Clone)]
pub struct RelativeBias {
    /// `[heads, 2 * max_offset + 1]`: head `h`'s bias at offset `d` is at
    /// `h * (2 * max_offset + 1) + d + max_offset`; offsets past `±max_offset` take the
    /// edge value.
    pub values: Vec<f32>,
    pub max_offset: usize,
    pub heads: usize,
}

impl RelativeBias {
    /// Head `h`'s bias at offset `d = j - i`.
    pub fn at(&self, h: usize, d: i64) -> f32 {
        let m = self.max_offset as i64;
        let width = 2 * self.max_offset + 1;
        self.values[h * width + (d.clamp(-m, m) + m) as usize]
    }
}

/// How scores become weights: `softmax(scale · q·k + bias)` over the keys `mask` allows.
#[derive(Clone, Copy)]
pub struct Scoring<'a> {
    pub scale: f32,
    pub mask: Mask,
    pub bias: Option<&'a RelativeBias>,
    /// Per sequence, the keys beyond which none is seen (`Packing::key_limits`).
    pub key_limits: Option<&'a [i32]>,
}

/// Output pointer shared by the worker threads; each (sequence, head) task writes a
/// disjoint block of rows × `head_dim` columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint regions (see `packed_attention`), and the scope joins every
// thread before the buffer is used again.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Attention of every sequence of a packed batch (`offsets`: row boundaries) over its own
/// rows; returns `[rows, q.heads * head_dim]`. `None` when an operand is not a contiguous
/// float32 2-D array of the batch's rows (the caller then uses MLX).
pub fn packed_attention(
    q: HeadBlock,
    k: HeadBlock,
    v: HeadBlock,
    offsets: &[i32],
    head_dim: usize,
    scoring: Scoring,
) -> Result<Option<Array>> {
    let Scoring { scale, mask, bias, key_limits } = scoring;
    let rows = *offsets.last().unwrap_or(&0) as usize;
    let (heads, kv_heads) = (q.heads, k.heads);
    if rows == 0 || kv_heads == 0 || v.heads != kv_heads || heads % kv_heads != 0 {
        return Ok(None);
    }
    if bias.is_some_and(|b| b.heads != heads) {
        return Ok(None);
    }
    let (Some(qh), Some(kh), Some(vh)) = (q.host(rows, head_dim)?, k.host(rows, head_dim)?, v.host(rows, head_dim)?)
    else {
        return Ok(None);
    };
    let group = heads / kv_heads;
    let out_width = heads * head_dim;
    let mut out = vec![0f32; rows * out_width];
    let out_ptr = OutPtr(out.as_mut_ptr());

    // Longest sequences first and handed out one at a time: with mixed lengths a static
    // split would leave threads idle behind the one holding the long sequences.
    let seqs = offsets.len() - 1;
    let mut tasks: Vec<(usize, usize)> = (0..seqs).flat_map(|s| (0..heads).map(move |h| (s, h))).collect();
    tasks.sort_by_key(|&(s, _)| std::cmp::Reverse(offsets[s + 1] - offsets[s]));
    let max_len = offsets.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0);
    let next = AtomicUsize::new(0);
    let work = || {
        let mut scores = vec![0f32; max_len * max_len];
        loop {
            let t = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(s, h)) = tasks.get(t) else { return };
            let first = offsets[s] as usize;
            let n = offsets[s + 1] as usize - first;
            let kv = h / group;
            let qp = qh.data[first * qh.width + qh.col + h * head_dim..].as_ptr();
            let kp = kh.data[first * kh.width + kh.col + kv * head_dim..].as_ptr();
            let vp = vh.data[first * vh.width + vh.col + kv * head_dim..].as_ptr();
            let o = out_ptr;
            // SAFETY: each pointer starts a block of n rows × head_dim columns inside its
            // operand (rows first..first+n ≤ rows, columns col + head·head_dim + head_dim ≤
            // width, checked in `host`), `scores` holds n × n ≤ max_len² floats, and the
            // destination block (rows first..first+n, columns h·head_dim..) is written by
            // this task alone.
            unsafe {
                cblas_sgemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    TRANS,
                    n as i32,
                    n as i32,
                    head_dim as i32,
                    1.0,
                    qp,
                    qh.width as i32,
                    kp,
                    kh.width as i32,
                    0.0,
                    scores.as_mut_ptr(),
                    n as i32,
                );
                let limit = key_limits.map_or(n, |k| (k[s].max(1) as usize).min(n));
                for (i, row) in scores[..n * n].chunks_exact_mut(n).enumerate() {
                    let (lo, hi) = mask.keys(i, n);
                    // Never an empty row: a window past the limit keeps its first key.
                    let hi = hi.min(limit).max(lo + 1);
                    if let Some(b) = bias {
                        // softmax(scale·s + b) = softmax(scale·(s + b / scale)).
                        for (j, s) in row.iter_mut().enumerate().take(hi).skip(lo) {
                            *s += b.at(h, j as i64 - i as i64) / scale;
                        }
                    }
                    softmax_inplace(&mut row[lo..hi], scale);
                    row[..lo].fill(0.0);
                    row[hi..].fill(0.0);
                }
                let dst = o.0.add(first * out_width + h * head_dim);
                cblas_sgemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    NO_TRANS,
                    n as i32,
                    head_dim as i32,
                    n as i32,
                    1.0,
                    scores.as_ptr(),
                    n as i32,
                    vp,
                    vh.width as i32,
                    0.0,
                    dst,
                    out_width as i32,
                );
            }
        }
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8).min(tasks.len());
    if threads <= 1 {
        work();
    } else {
        // Every core runs its own tasks' GEMMs; one split over the pool as well makes the
        // callers wait on each other (blas.rs).
        let _one = OneBlasThread::hold();
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(work);
            }
            work();
        });
    }
    Ok(Some(Array::from_slice(&out, &[rows as i32, out_width as i32])))
}
