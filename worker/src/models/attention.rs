//! Scaled dot-product attention over a packed batch: every sequence attends over its own
//! tokens only.
//!
//! - Host kernels (CPU backend, float32): `cpu_attention::packed_attention` reads each
//!   sequence's rows in place; nothing is padded.
//! - MLX (GPU backends; half precision on the CPU): the batch's sequences are cut into a few
//!   buckets of similar length (`packing::AttentionBuckets`); each bucket is gathered into
//!   `[rows, heads, len, head_dim]`, attended with MLX's fused kernel and a key mask (or the
//!   causal mask; or, for a window or a relative bias, an additive mask built on the host,
//!   in query tiles of `QUERY_TILE` rows over the keys each tile's rows see, so neither the
//!   mask nor a window's work grows with the square of the length), and the outputs are
//!   scattered back to the packed rows.
//! - A yielding batch on host kernels: its (sequence, query tile, head) tasks in groups of
//!   about a row slice's work, with a checkpoint before each (docs/worker.md, "Yielding
//!   batches"), so a batch waiting behind it waits for a group, not for the attention of
//!   all its sequences, nor of one 8k-token window.
//!
//! `k`/`v` may have fewer heads than `q` (grouped-query attention): MLX's kernel and the
//! host kernel both read kv head `h / group` for query head `h`, so K/V are never tiled.

use anyhow::Result;
use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array};

use super::{slices, Inputs, Kernels};
use crate::cpu_attention::{packed_attention, HeadBlock, Scoring, Split, QUERY_TILE};
pub use crate::cpu_attention::{Mask, RelativeBias};
use crate::packing::{AttentionBuckets, Bucket, BucketShapes};

/// Query, key and value heads as column blocks of `[total, width]` arrays (the fused
/// projection itself, or per-part arrays).
pub struct Heads<'a> {
    pub q: HeadBlock<'a>,
    pub k: HeadBlock<'a>,
    pub v: HeadBlock<'a>,
    pub head_dim: i32,
}

/// Attention of every sequence over its own tokens, each query seeing the keys `mask`
/// allows, with `bias` added to the scores; returns `[total, q.heads * head_dim]`.
pub fn attention(
    kernels: Kernels,
    heads: &Heads,
    inputs: &Inputs,
    scale: f32,
    mask: Mask,
    bias: Option<&RelativeBias>,
) -> Result<Array> {
    attention_in_tiles(kernels, heads, inputs, scale, mask, bias, QUERY_TILE)
}

/// How much attention work (query rows × keys, summed over heads: [`Split::groups`]) a
/// yielding batch does between two checkpoints: about a row slice's time (`slices.rs`).
/// A unit (one query row against one key, one head) is `2 · head_dim` multiply-adds (its
/// score and its share of the values); a row of the projections and the feed-forward block
/// about `12w²` at width `w` (four `w × w` products and two of `w × 4w`), so a slice of `r`
/// rows is `r · 6w² / head_dim` units of multiply-adds. Attention does about half as many a
/// second (measured on MiniLM, 2 cores: 19M units in 52–110 ms, a 2,048-row slice's
/// feed-forward block in ~95 ms), so a group holds half that.
fn group_work(width: usize, head_dim: usize) -> usize {
    let rows = slices::slice_rows(width as i32) as usize;
    rows * 3 * width * width / head_dim.max(1)
}

/// [`attention`] in query tiles of `tile` rows on either path (tests use small ones).
fn attention_in_tiles(
    kernels: Kernels,
    heads: &Heads,
    inputs: &Inputs,
    scale: f32,
    mask: Mask,
    bias: Option<&RelativeBias>,
    tile: usize,
) -> Result<Array> {
    if kernels == Kernels::Host {
        let offsets = &inputs.packing.offsets;
        let head_dim = heads.head_dim as usize;
        let scoring = Scoring { scale, mask, bias, key_limits: inputs.packing.key_limits.as_deref() };
        let reached = || inputs.checkpoint.map_or(Ok(()), |c| c.reached());
        let work = group_work(heads.q.heads * head_dim, head_dim);
        let split = Split { tile, groups: inputs.checkpoint.map(|_| (work, &reached as &dyn Fn() -> Result<()>)) };
        if let Some(out) = packed_attention(heads.q, heads.k, heads.v, offsets, head_dim, scoring, split)? {
            return Ok(out);
        }
    }
    let planned;
    let buckets = match &inputs.buckets {
        Some(b) => b,
        None => {
            planned = AttentionBuckets::new(&inputs.packing, BucketShapes::Exact)?;
            &planned
        }
    };
    let mut outs = Vec::with_capacity(buckets.buckets.len());
    for bucket in &buckets.buckets {
        let q = bucket_heads(&heads.q, bucket, heads.head_dim)?;
        let k = bucket_heads(&heads.k, bucket, heads.head_dim)?;
        let v = bucket_heads(&heads.v, bucket, heads.head_dim)?;
        // Right padding inside a bucket: under the causal mask a real query sees only real
        // keys; otherwise the key mask hides the pad slots. Pad queries (and the filler
        // rows of a rounded bucket) are dropped below.
        let o = match (mask, bias, &bucket.key_mask) {
            (Mask::Causal, None, _) => {
                scaled_dot_product_attention(&q, &k, &v, scale, ScaledDotProductAttentionMask::Causal, None)?
            }
            (Mask::Full, None, Some(m)) => {
                scaled_dot_product_attention(&q, &k, &v, scale, ScaledDotProductAttentionMask::Array(m), None)?
            }
            (Mask::Full, None, None) => scaled_dot_product_attention(&q, &k, &v, scale, None, None)?,
            // A mask built here: in query tiles, each over the keys its rows can see, so
            // the mask (and a window's work) grows with the length, not its square.
            _ => {
                let len = bucket.len as usize;
                let mut tiles = Vec::new();
                for first in (0..len).step_by(tile) {
                    let rows = (first, (first + tile).min(len));
                    let keys = (mask.keys(rows.0, len).0, mask.keys(rows.1 - 1, len).1);
                    let built = additive_mask(bucket, mask, bias, heads.q.heads, rows, keys)?.as_dtype(q.dtype())?;
                    let (r, c) = (rows.0 as i32..rows.1 as i32, keys.0 as i32..keys.1 as i32);
                    let (qt, kt, vt) = (q.index((.., .., r)), k.index((.., .., c.clone())), v.index((.., .., c)));
                    let m = ScaledDotProductAttentionMask::Array(&built);
                    tiles.push(scaled_dot_product_attention(&qt, &kt, &vt, scale, m, None)?);
                }
                if tiles.len() == 1 {
                    tiles.pop().unwrap()
                } else {
                    ops::concatenate(&tiles, 2)?
                }
            }
        };
        let width = heads.q.heads as i32 * heads.head_dim;
        outs.push(o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[bucket.rows * bucket.len, width])?);
    }
    let all = if outs.len() == 1 { outs.pop().unwrap() } else { ops::concatenate(&outs, 0)? };
    Ok(match &buckets.scatter {
        Some(rows) => all.take_axis(rows, 0)?,
        None => all,
    })
}

/// `[rows, heads or 1, queries, keys]` float for the query rows `queries.0..queries.1` and
/// key slots `keys.0..keys.1` of a bucket: the bias where query `i` may see key `j` (the
/// mask allows it and `j` is a real token), −∞ elsewhere. Pad queries' rows are dropped
/// after attention.
fn additive_mask(
    bucket: &Bucket,
    mask: Mask,
    bias: Option<&RelativeBias>,
    heads: usize,
    queries: (usize, usize),
    keys: (usize, usize),
) -> Result<Array> {
    let len = bucket.len as usize;
    let planes = if bias.is_some() { heads } else { 1 };
    let (nq, nk) = (queries.1 - queries.0, keys.1 - keys.0);
    let mut plane = vec![f32::NEG_INFINITY; planes * nq * nk];
    for h in 0..planes {
        for i in queries.0..queries.1 {
            let (lo, hi) = mask.keys(i, len);
            let row = (h * nq + i - queries.0) * nk;
            for j in lo.max(keys.0)..hi.min(keys.1) {
                plane[row + j - keys.0] = bias.map_or(0.0, |b| b.at(h, j as i64 - i as i64));
            }
        }
    }
    let m = Array::from_slice(&plane, &[1, planes as i32, nq as i32, nk as i32]);
    Ok(match &bucket.key_mask {
        // Pad keys of shorter members: −∞ where the key mask is false.
        Some(key_mask) => {
            let key_mask = key_mask.index((.., .., .., keys.0 as i32..keys.1 as i32));
            ops::select(&key_mask, &m, Array::from_f32(f32::NEG_INFINITY))?
        }
        None => m,
    })
}

/// The rows of one bucket from a head block, as `[rows, heads, len, head_dim]`.
fn bucket_heads(block: &HeadBlock, bucket: &Bucket, head_dim: i32) -> Result<Array> {
    let a = block.array;
    let (col, width) = (block.col as i32, block.heads as i32 * head_dim);
    let cols = if col == 0 && a.dim(1) == width { a.clone() } else { a.index((.., col..col + width)) };
    let n = bucket.rows * bucket.len;
    let rows = match &bucket.gather {
        Some(g) => cols.take_axis(g, 0)?,
        None if bucket.start == 0 && n == a.dim(0) => cols,
        None => cols.index(bucket.start..bucket.start + n),
    };
    Ok(rows.reshape(&[bucket.rows, bucket.len, block.heads as i32, head_dim])?.transpose_axes(&[0, 2, 1, 3])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::Packing;

    fn values(rows: i32, cols: i32, seed: u32) -> Array {
        crate::cpu_attention::tests::values(rows as usize, cols as usize, seed)
    }

    fn run(
        kernels: Kernels,
        shapes: Option<BucketShapes>,
        lengths: &[i32],
        mask: Mask,
        bias: Option<&RelativeBias>,
    ) -> Vec<f32> {
        run_limited(kernels, shapes, lengths, None, mask, bias)
    }

    fn run_limited(
        kernels: Kernels,
        shapes: Option<BucketShapes>,
        lengths: &[i32],
        key_limits: Option<&[i32]>,
        mask: Mask,
        bias: Option<&RelativeBias>,
    ) -> Vec<f32> {
        run_tiled(kernels, shapes, lengths, key_limits, mask, bias, QUERY_TILE)
    }

    fn run_tiled(
        kernels: Kernels,
        shapes: Option<BucketShapes>,
        lengths: &[i32],
        key_limits: Option<&[i32]>,
        mask: Mask,
        bias: Option<&RelativeBias>,
        tile: usize,
    ) -> Vec<f32> {
        let mut packing = Packing::from_lengths(lengths.iter().copied());
        packing.key_limits = key_limits.map(<[i32]>::to_vec);
        let (heads, kv_heads, head_dim) = (4usize, 2usize, 8i32);
        let total = packing.total();
        let q = values(total, heads as i32 * head_dim, 1);
        let kv = values(total, 2 * kv_heads as i32 * head_dim, 2);
        let h = Heads {
            q: HeadBlock { array: &q, col: 0, heads },
            k: HeadBlock { array: &kv, col: 0, heads: kv_heads },
            v: HeadBlock { array: &kv, col: kv_heads * head_dim as usize, heads: kv_heads },
            head_dim,
        };
        let zeros = Array::from_slice(&vec![0i32; total as usize], &[total]);
        let buckets = shapes.map(|s| AttentionBuckets::new(&packing, s).unwrap());
        let inputs = Inputs {
            ids: zeros.clone(),
            type_ids: zeros.clone(),
            positions: zeros,
            packing,
            buckets,
            checkpoint: None,
            kernels,
        };
        let out = attention_in_tiles(kernels, &h, &inputs, 0.35, mask, bias, tile).unwrap();
        assert_eq!(out.shape(), &[total, heads as i32 * head_dim]);
        out.as_slice::<f32>().to_vec()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
    }

    /// The MLX path agrees with the host kernels whether its buckets are exact rectangles or
    /// rounded up to the ladder (pad slots and filler rows never reach a real row), for
    /// bidirectional and causal grouped-query attention, windows and relative biases.
    #[test]
    fn bucket_shapes_do_not_change_the_result() {
        let lengths = [3, 17, 9, 17, 1, 40, 12, 5, 33];
        let bias = RelativeBias {
            values: (0..4 * 11).map(|i| ((i * 13) % 7) as f32 * 0.4 - 1.2).collect(),
            max_offset: 5,
            heads: 4,
        };
        for (mask, bias) in [
            (Mask::Full, None),
            (Mask::Causal, None),
            (Mask::Window(3), None),
            (Mask::Full, Some(&bias)),
            (Mask::Window(6), Some(&bias)),
            (Mask::Causal, Some(&bias)),
            (Mask::CausalWindow(4), None),
            (Mask::CausalWindow(1), Some(&bias)),
        ] {
            let host = run(Kernels::Host, None, &lengths, mask, bias);
            for shapes in [BucketShapes::Exact, BucketShapes::Ladder] {
                // Query tiles of 7 rows cut every bucket longer than 7 (a built mask's).
                for tile in [QUERY_TILE, 7] {
                    let mlx = run_tiled(Kernels::Mlx, Some(shapes), &lengths, None, mask, bias, tile);
                    let worst = max_diff(&host, &mlx);
                    assert!(worst < 1e-5, "{mask:?} bias {} {shapes:?} tile {tile}: max diff {worst}", bias.is_some());
                }
            }
        }
    }

    /// Key limits (a PyLate query's expansion tokens, `colbert_head.rs`): both paths agree,
    /// and the tokens inside the limit compute what the sequence cut to the limit computes
    /// (they see nothing past it), while the tokens past it still get outputs.
    #[test]
    fn key_limits_hide_the_keys_past_them() {
        let (lengths, limits) = ([16, 5, 16], [9, 5, 4]);
        let host = run_limited(Kernels::Host, None, &lengths, Some(&limits), Mask::Full, None);
        for shapes in [BucketShapes::Exact, BucketShapes::Ladder] {
            let mlx = run_limited(Kernels::Mlx, Some(shapes), &lengths, Some(&limits), Mask::Full, None);
            assert!(max_diff(&host, &mlx) < 1e-5, "{shapes:?}: max diff {}", max_diff(&host, &mlx));
        }
        // Sequence 0 alone, limited to 9 keys, against it cut to 9 tokens (same q/k/v rows).
        let width = 4 * 8;
        let limited = run_limited(Kernels::Host, None, &[16], Some(&[9]), Mask::Full, None);
        let cut = run(Kernels::Host, None, &[9], Mask::Full, None);
        assert!(max_diff(&limited[..9 * width], &cut) < 1e-6);
        let full = run(Kernels::Host, None, &[16], Mask::Full, None);
        assert!(max_diff(&limited[9 * width..], &full[9 * width..]) > 1e-3, "past the limit, fewer keys");
    }

    /// A window as wide as the longest sequence is full (or causal) attention, and a bias that is the
    /// same at every offset changes nothing (softmax is shift-invariant): each path is
    /// checked against what attention must compute, not only against the other.
    #[test]
    fn windows_and_biases_reduce_to_plain_attention() {
        let lengths = [3, 17, 9];
        let flat = RelativeBias { values: vec![0.7; 4 * 3], max_offset: 1, heads: 4 };
        for kernels in [Kernels::Host, Kernels::Mlx] {
            let shapes = (kernels == Kernels::Mlx).then_some(BucketShapes::Exact);
            let full = run(kernels, shapes, &lengths, Mask::Full, None);
            assert!(max_diff(&full, &run(kernels, shapes, &lengths, Mask::Window(17), None)) < 1e-6);
            assert!(max_diff(&full, &run(kernels, shapes, &lengths, Mask::Full, Some(&flat))) < 1e-5);
            let narrow = run(kernels, shapes, &lengths, Mask::Window(1), None);
            assert!(max_diff(&full, &narrow) > 1e-3, "{kernels:?}: a narrow window must change the result");
            // A causal window as wide as the longest sequence is causal attention; a window of
            // one key is each query's own value.
            let causal = run(kernels, shapes, &lengths, Mask::Causal, None);
            assert!(max_diff(&causal, &run(kernels, shapes, &lengths, Mask::CausalWindow(17), None)) < 1e-6);
            let own = run(kernels, shapes, &lengths, Mask::CausalWindow(1), None);
            assert!(max_diff(&causal, &own) > 1e-3, "{kernels:?}: a narrow causal window must change the result");
            let short = run(kernels, shapes, &lengths, Mask::CausalWindow(3), None);
            assert!(max_diff(&causal, &short) > 1e-3 && max_diff(&own, &short) > 1e-3);
        }
    }
}
