//! Attention over a packed batch, computed on the host for the CPU backend.
//!
//! MLX's CPU path for attention copies Q, K and V into `[batch, heads, len, head_dim]`,
//! runs a batched matmul, a scalar-`exp` softmax, another batched matmul and copies the
//! result back (the copies alone were ~7% of a MiniLM forward pass in perf). Here each
//! (sequence, head) pair is two BLAS calls on strided views of the projection outputs
//! (`lda` = the projection's width, so nothing is copied), with the softmax of
//! cpu_kernels.rs in between while the score tile is still in cache. Sequences are packed
//! (`packing.rs`): a sequence's queries and keys are its own rows, so no pad token exists
//! and none is computed. Long sequences are cut into tiles of [`QUERY_TILE`] query rows,
//! each scoring only the keys its rows can see: memory per thread is a tile × its keys, and
//! a windowed layer costs its window, not the sequence's square.
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

/// Query rows per task: a task's score tile is at most `QUERY_TILE` × its key span, so
/// attention memory grows with the sequence's length, not its square (an 8k-token sequence:
/// 16 MiB per thread instead of 256 MiB), and a window or causal mask computes only the keys
/// its tile's rows can see.
pub const QUERY_TILE: usize = 512;

/// One task: query rows `rows` of sequence `seq`, head `head`, over the keys `keys` (the
/// union of what the rows' mask allows; per row the rest of the span is zeroed).
#[derive(Clone, Copy)]
struct Task {
    seq: usize,
    head: usize,
    rows: (usize, usize),
    keys: (usize, usize),
}

impl Task {
    fn cost(&self) -> usize {
        (self.rows.1 - self.rows.0) * (self.keys.1 - self.keys.0)
    }
}

/// The keys row `i` of an `n`-token sequence scores: its mask's, cut at the sequence's key
/// limit, never empty (a window past the limit keeps its first key).
fn row_keys(mask: Mask, i: usize, n: usize, limit: usize) -> (usize, usize) {
    let (lo, hi) = mask.keys(i, n);
    (lo, hi.min(limit).max(lo + 1))
}

/// How the work is cut: query tiles of `tile` rows ([`QUERY_TILE`]; tests use small ones)
/// and, for a yielding batch (docs/worker.md, "Yielding batches"), groups of tasks.
#[derive(Clone, Copy)]
pub struct Split<'a> {
    pub tile: usize,
    /// `(work, pause)`: the tasks run in groups of at most `work` (query rows × keys,
    /// summed over heads; at least one task a group), in sequence order, `pause` called
    /// before each; an error from it abandons the attention. Each task computes the same
    /// bits in any group, so the result is bitwise the ungrouped one.
    pub groups: Option<(usize, &'a dyn Fn() -> Result<()>)>,
}

/// Every (sequence, query tile, head) task, in that order.
fn plan(offsets: &[i32], heads: usize, mask: Mask, key_limits: Option<&[i32]>, tile: usize) -> Vec<Task> {
    let mut tasks = Vec::new();
    for seq in 0..offsets.len() - 1 {
        let n = (offsets[seq + 1] - offsets[seq]) as usize;
        let limit = key_limits.map_or(n, |k| (k[seq].max(1) as usize).min(n));
        for first in (0..n).step_by(tile.max(1)) {
            let last = (first + tile.max(1)).min(n);
            // Both ends of a row's keys grow with the row (every mask), so the tile's span
            // runs from its first row's first key to its last row's last.
            let keys = (row_keys(mask, first, n, limit).0, row_keys(mask, last - 1, n, limit).1);
            tasks.extend((0..heads).map(|head| Task { seq, head, rows: (first, last), keys }));
        }
    }
    tasks
}

/// The planned tasks cut into consecutive groups of at most `work` each (a task more than
/// that is a group alone), each group's tasks the most work first: handed out one at a
/// time, so with mixed lengths no thread idles behind the one holding the long sequences.
fn groups(mut tasks: Vec<Task>, work: usize) -> Vec<Vec<Task>> {
    let mut groups: Vec<Vec<Task>> = Vec::new();
    let mut spent = 0;
    for task in tasks.drain(..) {
        match groups.last_mut() {
            Some(group) if spent + task.cost() <= work => group.push(task),
            _ => {
                spent = 0;
                groups.push(vec![task]);
            }
        }
        spent += task.cost();
    }
    for group in &mut groups {
        group.sort_by_key(|t| std::cmp::Reverse(t.cost()));
    }
    groups
}

/// Attention of every sequence of a packed batch (`offsets`: row boundaries) over its own
/// rows, cut as `split` says; returns `[rows, q.heads * head_dim]`. `None` when an operand is not a contiguous float32 2-D
/// array of the batch's rows (the caller then uses MLX).
pub fn packed_attention(
    q: HeadBlock,
    k: HeadBlock,
    v: HeadBlock,
    offsets: &[i32],
    head_dim: usize,
    scoring: Scoring,
    split: Split,
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

    let planned = plan(offsets, heads, mask, key_limits, split.tile);
    let max_tile = planned.iter().map(Task::cost).max().unwrap_or(0);
    let (work, pause) = match split.groups {
        Some((work, pause)) => (work, Some(pause)),
        None => (usize::MAX, None),
    };
    for tasks in groups(planned, work) {
        if let Some(pause) = pause {
            pause()?;
        }
        run_tasks(&tasks, max_tile, |&Task { seq: s, head: h, rows: (r0, r1), keys: (k0, k1) }, scores| {
            let first = offsets[s] as usize;
            let n = offsets[s + 1] as usize - first;
            let limit = key_limits.map_or(n, |k| (k[s].max(1) as usize).min(n));
            let (m, span) = (r1 - r0, k1 - k0);
            let kv = h / group;
            let qp = qh.data[(first + r0) * qh.width + qh.col + h * head_dim..].as_ptr();
            let kp = kh.data[(first + k0) * kh.width + kh.col + kv * head_dim..].as_ptr();
            let vp = vh.data[(first + k0) * vh.width + vh.col + kv * head_dim..].as_ptr();
            let o = out_ptr;
            // SAFETY: each pointer starts a block of rows × head_dim columns inside its
            // operand (rows first+r0..first+r1 and first+k0..first+k1 lie in the sequence's
            // rows ≤ rows; columns col + head·head_dim + head_dim ≤ width, checked in `host`),
            // `scores` holds m × span ≤ max_tile floats, and the destination block (rows
            // first+r0..first+r1, columns h·head_dim..) is written by this task alone.
            unsafe {
                cblas_sgemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    TRANS,
                    m as i32,
                    span as i32,
                    head_dim as i32,
                    1.0,
                    qp,
                    qh.width as i32,
                    kp,
                    kh.width as i32,
                    0.0,
                    scores.as_mut_ptr(),
                    span as i32,
                );
                for (r, row) in scores[..m * span].chunks_exact_mut(span).enumerate() {
                    let i = r0 + r;
                    let (lo, hi) = row_keys(mask, i, n, limit);
                    let (lo, hi) = (lo - k0, hi - k0);
                    if let Some(b) = bias {
                        // softmax(scale·s + b) = softmax(scale·(s + b / scale)).
                        for (j, s) in row.iter_mut().enumerate().take(hi).skip(lo) {
                            *s += b.at(h, (k0 + j) as i64 - i as i64) / scale;
                        }
                    }
                    softmax_inplace(&mut row[lo..hi], scale);
                    row[..lo].fill(0.0);
                    row[hi..].fill(0.0);
                }
                let dst = o.0.add((first + r0) * out_width + h * head_dim);
                cblas_sgemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    NO_TRANS,
                    m as i32,
                    head_dim as i32,
                    span as i32,
                    1.0,
                    scores.as_ptr(),
                    span as i32,
                    vp,
                    vh.width as i32,
                    0.0,
                    dst,
                    out_width as i32,
                );
            }
        });
    }
    Ok(Some(Array::from_slice(&out, &[rows as i32, out_width as i32])))
}

/// Runs `one` on every task, handed out one at a time to up to eight threads (each with a
/// score buffer of `max_tile` floats), and returns when all are done.
fn run_tasks(tasks: &[Task], max_tile: usize, one: impl Fn(&Task, &mut [f32]) + Sync) {
    let next = AtomicUsize::new(0);
    let work = || {
        let mut scores = vec![0f32; max_tile];
        while let Some(task) = tasks.get(next.fetch_add(1, Ordering::Relaxed)) {
            one(task, &mut scores);
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic `[rows, cols]` float32 values in -1..1 (the attention tests' operands).
    pub(crate) fn values(rows: usize, cols: usize, seed: u32) -> Array {
        let mut state = seed.max(1);
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        Array::from_slice(&v, &[rows as i32, cols as i32])
    }

    /// Query tiles compute what one tile per sequence computes, for every mask, a relative
    /// bias and key limits, with tiles that do and do not divide the lengths; and a window's
    /// tiles score only the keys in reach (the plan's spans shrink).
    #[test]
    fn query_tiles_change_nothing_but_the_work() {
        let offsets = [0, 3, 40, 49, 86, 87, 120];
        let rows = *offsets.last().unwrap() as usize;
        let (heads, kv_heads, head_dim) = (4usize, 2usize, 8usize);
        let q = values(rows, heads * head_dim, 1);
        let kv = values(rows, 2 * kv_heads * head_dim, 2);
        let bias = RelativeBias {
            values: (0..4 * 11).map(|i| ((i * 13) % 7) as f32 * 0.4 - 1.2).collect(),
            max_offset: 5,
            heads: 4,
        };
        let limits = [3, 20, 9, 37, 1, 30];
        for mask in [Mask::Full, Mask::Causal, Mask::Window(4), Mask::CausalWindow(6)] {
            for (b, l) in
                [(None, None), (Some(&bias), None), (None, Some(&limits[..])), (Some(&bias), Some(&limits[..]))]
            {
                let scoring = Scoring { scale: 0.35, mask, bias: b, key_limits: l };
                let run = |tile| {
                    let (qb, kb, vb) = (
                        HeadBlock { array: &q, col: 0, heads },
                        HeadBlock { array: &kv, col: 0, heads: kv_heads },
                        HeadBlock { array: &kv, col: kv_heads * head_dim, heads: kv_heads },
                    );
                    let out = packed_attention(qb, kb, vb, &offsets, head_dim, scoring, Split { tile, groups: None })
                        .unwrap()
                        .unwrap();
                    out.as_slice::<f32>().to_vec()
                };
                let whole = run(usize::MAX);
                for tile in [1, 3, 8, 37] {
                    let tiled = run(tile);
                    let worst = whole.iter().zip(&tiled).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(worst < 1e-6, "{mask:?} bias {} limits {} tile {tile}: {worst}", b.is_some(), l.is_some());
                }
            }
        }
        // A window of 4 around 8-row tiles: each tile spans at most 8 + 2·4 keys.
        let tasks = plan(&offsets, 1, Mask::Window(4), None, 8);
        assert!(tasks.iter().all(|t| t.keys.1 - t.keys.0 <= 16));
        let whole = plan(&offsets, 1, Mask::Full, None, 8);
        assert_eq!(whole.iter().map(|t| t.keys.1 - t.keys.0).max(), Some(37));
    }
    /// A yielding batch's groups (`Split::groups`): the output is bitwise the ungrouped
    /// one, the pause comes before each group, one long sequence is cut inside (by query
    /// tiles and heads), no group holds more than its work unless it is one task, and
    /// a pause's error abandons the attention.
    #[test]
    fn groups_pause_between_tasks_and_change_no_bit() {
        let offsets = [0, 5, 300, 310];
        let rows = *offsets.last().unwrap() as usize;
        let (heads, head_dim) = (3usize, 8usize);
        let q = values(rows, heads * head_dim, 3);
        let kv = values(rows, 2 * heads * head_dim, 4);
        let scoring = Scoring { scale: 0.3, mask: Mask::Full, bias: None, key_limits: None };
        let run = |split: Split| {
            let (qb, kb, vb) = (
                HeadBlock { array: &q, col: 0, heads },
                HeadBlock { array: &kv, col: 0, heads },
                HeadBlock { array: &kv, col: heads * head_dim, heads },
            );
            packed_attention(qb, kb, vb, &offsets, head_dim, scoring, split)
                .map(|o| o.unwrap().as_slice::<f32>().to_vec())
        };
        let whole = run(Split { tile: 32, groups: None }).unwrap();
        for work in [1, 5_000, 20_000, 100_000, usize::MAX] {
            let pauses = std::cell::Cell::new(0);
            let pause = || {
                pauses.set(pauses.get() + 1);
                Ok(())
            };
            let grouped = run(Split { tile: 32, groups: Some((work, &pause)) }).unwrap();
            assert!(whole == grouped, "work {work}: the bits changed");
            let planned = groups(plan(&offsets, heads, Mask::Full, None, 32), work);
            assert_eq!(pauses.get(), planned.len(), "work {work}: a pause before each group");
            for g in &planned {
                let cost: usize = g.iter().map(Task::cost).sum();
                assert!(g.len() == 1 || cost <= work, "work {work}: a group of {cost}");
            }
        }
        // The 295-row sequence is 10 tiles × 3 heads, nine of 32 × 295: at 20,000 a group
        // holds two of those, so its attention alone is cut into more than ten pieces.
        let planned = groups(plan(&offsets, heads, Mask::Full, None, 32), 20_000);
        assert!(planned.iter().filter(|g| g.iter().all(|t| t.seq == 1)).count() > 10, "{}", planned.len());
        let failing = || Err(anyhow::anyhow!("the worker is exiting"));
        assert!(run(Split { tile: 32, groups: Some((20_000, &failing)) }).is_err());
    }
}
