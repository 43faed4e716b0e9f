//! A batch as the network computes it: sequences packed back to back, no padding.
//!
//! A batch of `B` sequences with `T` tokens in all is `T` rows: sequence `i` is rows
//! `offsets[i]..offsets[i + 1]`. Embeddings, every linear layer, norms and activations run
//! once on `[T, hidden]`; only attention needs to know where a sequence starts and ends,
//! and pooling reads each sequence's own rows.
//!
//! Attention on the CPU backend (host kernels, `cpu_attention.rs`) reads each sequence's
//! rows in place. Through MLX ops (GPU backends; half precision on the CPU) attention needs
//! rectangles: [`AttentionBuckets`] sorts the sequences by length and cuts them into a few
//! buckets, each padded to its longest member, gathered into `[n, len]` rows, attended
//! with a key mask, and scattered back to the packed order. Only attention sees that
//! padding, and the cuts are chosen to keep it small (docs/worker.md, "Packed batches").

use anyhow::Result;
use mlx_rs::Array;

/// Row boundaries of the sequences of one packed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    /// `len() + 1` row offsets, starting at 0.
    pub offsets: Vec<i32>,
    /// Per sequence, how many of its first tokens any of its tokens may attend to; `None`:
    /// all of them. Only a PyLate query's expansion tokens are left out so (they attend to
    /// the text, the text not to them: `colbert_head.rs`).
    pub key_limits: Option<Vec<i32>>,
}

impl Packing {
    #[cfg(test)]
    pub fn from_lengths(lengths: impl IntoIterator<Item = i32>) -> Packing {
        let mut offsets = vec![0];
        for n in lengths {
            offsets.push(offsets.last().unwrap() + n);
        }
        Packing { offsets, key_limits: None }
    }

    /// The keys sequence `i` may attend to: its first `n` tokens.
    pub fn key_limit(&self, i: usize) -> Option<i32> {
        self.key_limits.as_ref().map(|k| k[i])
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Rows in all (real tokens).
    pub fn total(&self) -> i32 {
        *self.offsets.last().unwrap()
    }

    #[cfg(test)]
    pub fn length(&self, i: usize) -> i32 {
        self.offsets[i + 1] - self.offsets[i]
    }

    pub fn lengths(&self) -> impl Iterator<Item = i32> + '_ {
        self.offsets.windows(2).map(|w| w[1] - w[0])
    }

    /// Row of each sequence's first token (`[B]` int32).
    pub fn first_rows(&self) -> Array {
        let rows: Vec<i32> = self.offsets[..self.len()].to_vec();
        Array::from_slice(&rows, &[rows.len() as i32])
    }

    /// Row of each sequence's last token (`[B]` int32).
    pub fn last_rows(&self) -> Array {
        let rows: Vec<i32> = self.offsets[1..].iter().map(|&e| e - 1).collect();
        Array::from_slice(&rows, &[rows.len() as i32])
    }

    /// `[B, T]` float32 matrix whose row `i` holds `1 / length(i)` on sequence `i`'s rows and
    /// 0 elsewhere: `M · hidden` is the per-sequence mean, one GEMM on every backend.
    /// `[batch, total]` with row `i` holding `weight(length, j)` at sequence `i`'s `j`-th
    /// token and zeros elsewhere: a pooling that is a weighted sum of each sequence's rows
    /// is one GEMM with it.
    pub fn weight_matrix(&self, weight: impl Fn(usize, usize) -> f32) -> Array {
        let (b, t) = (self.len(), self.total() as usize);
        let mut m = vec![0f32; b * t];
        for i in 0..b {
            let (s, e) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
            for (j, slot) in m[i * t + s..i * t + e].iter_mut().enumerate() {
                *slot = weight(e - s, j);
            }
        }
        Array::from_slice(&m, &[b as i32, t as i32])
    }
}

/// Most buckets one batch is cut into: each costs a few more kernel launches per layer.
const MAX_BUCKETS: usize = 4;

/// What one more bucket costs, in units of padded attention work (`rows × len²`): the
/// gathers, mask and attention launches of a bucket are worth about this much attention
/// arithmetic at the hidden sizes served (docs/worker.md, "Packed batches").
const BUCKET_OVERHEAD: u64 = 32 * 1024;

/// Splits sequence lengths into at most [`MAX_BUCKETS`] groups of similar length that
/// minimise `Σ members × longest² + BUCKET_OVERHEAD` per bucket (exact, by dynamic
/// programming over the lengths sorted in descending order). Returns sequence indices per
/// bucket, each in batch order; longest bucket first.
pub fn plan_buckets(lengths: &[i32]) -> Vec<Vec<usize>> {
    let n = lengths.len();
    if n == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
    let len = |k: usize| lengths[order[k]].max(0) as u64;
    // cost of one bucket over sorted positions i..j: (j - i) × len(i)², plus its overhead.
    let bucket = |i: usize, j: usize| (j - i) as u64 * len(i) * len(i) + BUCKET_OVERHEAD;
    // best[k][j]: least cost of the first j sorted sequences in exactly k buckets.
    let k_max = MAX_BUCKETS.min(n);
    let mut best = vec![vec![u64::MAX; n + 1]; k_max + 1];
    let mut cut = vec![vec![0usize; n + 1]; k_max + 1];
    best[0][0] = 0;
    for k in 1..=k_max {
        for j in 1..=n {
            for i in (k - 1)..j {
                if best[k - 1][i] == u64::MAX {
                    continue;
                }
                let c = best[k - 1][i] + bucket(i, j);
                if c < best[k][j] {
                    best[k][j] = c;
                    cut[k][j] = i;
                }
            }
        }
    }
    let k_best = (1..=k_max).min_by_key(|&k| (best[k][n], k)).unwrap();
    let mut bounds = vec![n];
    let mut j = n;
    for k in (1..=k_best).rev() {
        j = cut[k][j];
        bounds.push(j);
    }
    bounds.reverse();
    bounds
        .windows(2)
        .map(|w| {
            let mut members: Vec<usize> = order[w[0]..w[1]].to_vec();
            members.sort_unstable();
            members
        })
        .collect()
}

/// One bucket of the MLX attention path: `rows` sequences padded to `len`.
pub struct Bucket {
    pub rows: i32,
    pub len: i32,
    /// Packed row for each of the `rows × len` padded slots (pad slots repeat the
    /// sequence's first row; their keys are masked and their outputs dropped). `None`
    /// when the bucket is already a rectangle in the packed rows: consecutive sequences of
    /// length `len` starting at row `start`.
    pub gather: Option<Array>,
    pub start: i32,
    /// `[rows, 1, 1, len]` bool, true on real keys; `None` when every member has `len`
    /// tokens (no padding).
    pub key_mask: Option<Array>,
}

/// The bucket plan of one batch for MLX attention.
pub struct AttentionBuckets {
    pub buckets: Vec<Bucket>,
    /// For every packed row, its row in the concatenated padded bucket outputs; `None`
    /// when that concatenation already is the packed order.
    pub scatter: Option<Array>,
}

/// Which rectangle shapes the buckets take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketShapes {
    /// Each bucket exactly as long as its longest member, one row per member.
    Exact,
    /// Lengths and row counts rounded up to [`ladder`] steps, so a stream of mixed batches
    /// reuses a bounded set of attention shapes: MLX's CUDA backend builds and caches one
    /// cuDNN attention graph per shape (tens of milliseconds each), which exact shapes
    /// rebuild for nearly every batch (docs/worker.md, "Packed batches").
    Ladder,
}

/// The smallest step of the ladder `8, 16, 24, 32, 48, 64, 96, 128, 192, 256, …` (powers of
/// two and one and a half times them) that holds `n`: under half again as long as `n` from
/// 16 up, and 12 shapes up to 512 tokens.
pub fn ladder(n: i32) -> i32 {
    let mut step = 8;
    loop {
        if n <= step {
            return step;
        }
        let half = step + step / 2;
        if step >= 16 && n <= half {
            return half;
        }
        step *= 2;
    }
}

/// [`ladder`] for row counts: 1, 2, 4 and 8 exactly, then the ladder.
fn ladder_rows(n: i32) -> i32 {
    if n <= 8 {
        (n.max(1) as u32).next_power_of_two() as i32
    } else {
        ladder(n)
    }
}

impl AttentionBuckets {
    pub fn new(packing: &Packing, shapes: BucketShapes) -> Result<AttentionBuckets> {
        let lengths: Vec<i32> = packing.lengths().collect();
        let plan = plan_buckets(&lengths);
        let mut buckets = Vec::with_capacity(plan.len());
        let mut scatter = vec![0i32; packing.total() as usize];
        let mut base = 0i32;
        let mut in_order = true;
        let mut next_row = 0i32;
        for members in &plan {
            let longest = members.iter().map(|&i| lengths[i]).max().unwrap_or(1).max(1);
            let (len, rows) = match shapes {
                BucketShapes::Exact => (longest, members.len() as i32),
                BucketShapes::Ladder => (ladder(longest), ladder_rows(members.len() as i32)),
            };
            let keys = |i: usize| packing.key_limit(i).map_or(lengths[i], |k| k.min(lengths[i]));
            let padded = rows != members.len() as i32 || members.iter().any(|&i| keys(i) != len);
            let consecutive = members.windows(2).all(|w| w[1] == w[0] + 1);
            let start = packing.offsets[members[0]];
            let mut gather = Vec::new();
            let mut mask = Vec::new();
            for (slot, &i) in members.iter().enumerate() {
                let (first, n) = (packing.offsets[i], lengths[i]);
                for j in 0..len {
                    gather.push(if j < n { first + j } else { first });
                    mask.push(j < keys(i));
                }
                for j in 0..n {
                    scatter[(first + j) as usize] = base + slot as i32 * len + j;
                }
            }
            // Filler rows (row count rounded up): copies of the first member's first token
            // that see only that key (no all-masked softmax row); their outputs are dropped.
            for _ in members.len() as i32..rows {
                for j in 0..len {
                    gather.push(start);
                    mask.push(j == 0);
                }
            }
            in_order &= !padded && consecutive && start == next_row;
            next_row = start + rows * len;
            let total = rows * len;
            buckets.push(Bucket {
                rows,
                len,
                gather: (padded || !consecutive).then(|| Array::from_slice(&gather, &[total])),
                start,
                key_mask: padded.then(|| Array::from_slice(&mask, &[rows, 1, 1, len])),
            });
            base += total;
        }
        let scatter = (!in_order).then(|| Array::from_slice(&scatter, &[packing.total()]));
        Ok(AttentionBuckets { buckets, scatter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(lengths: &[i32], plan: &[Vec<usize>]) -> u64 {
        plan.iter()
            .map(|m| {
                let l = m.iter().map(|&i| lengths[i]).max().unwrap() as u64;
                m.len() as u64 * l * l
            })
            .sum()
    }

    #[test]
    fn equal_lengths_make_one_bucket() {
        assert_eq!(plan_buckets(&[128; 32]), vec![(0..32).collect::<Vec<_>>()]);
        assert_eq!(plan_buckets(&[7]), vec![vec![0]]);
        assert!(plan_buckets(&[]).is_empty());
    }

    #[test]
    fn mixed_lengths_are_cut_where_padding_is_expensive() {
        // 16 long and 16 short sequences, interleaved: two buckets, no padding.
        let lengths: Vec<i32> = (0..32).map(|i| if i % 2 == 0 { 512 } else { 16 }).collect();
        let plan = plan_buckets(&lengths);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0], (0..32).step_by(2).collect::<Vec<_>>());
        assert_eq!(work(&lengths, &plan), 16 * 512 * 512 + 16 * 16 * 16);
        // Every sequence appears exactly once, whatever the lengths.
        let lengths: Vec<i32> = (0..57).map(|i| 8 + (i * 37) % 120).collect();
        let plan = plan_buckets(&lengths);
        assert!(plan.len() <= MAX_BUCKETS);
        let mut all: Vec<usize> = plan.concat();
        all.sort_unstable();
        assert_eq!(all, (0..57).collect::<Vec<_>>());
        let padded_one = 57 * 127u64 * 127;
        assert!(work(&lengths, &plan) < padded_one * 6 / 10, "{plan:?}");
    }

    #[test]
    fn close_lengths_are_not_split() {
        // Splitting 30 vs 31 tokens would save less than a bucket costs.
        assert_eq!(plan_buckets(&[31, 30, 31, 30]).len(), 1);
    }

    #[test]
    fn packing_rows() {
        let p = Packing::from_lengths([3, 1, 2]);
        assert_eq!(p.offsets, vec![0, 3, 4, 6]);
        assert_eq!((p.len(), p.total(), p.length(2)), (3, 6, 2));
        let m = p.weight_matrix(|len, _| 1.0 / len as f32);
        assert_eq!(m.shape(), &[3, 6]);
        let v = m.as_slice::<f32>();
        assert_eq!(&v[..6], &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0, 0.0]);
        assert_eq!(&v[6..12], &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(p.last_rows().as_slice::<i32>(), &[2, 3, 5]);
    }

    #[test]
    fn ladder_steps() {
        let steps: Vec<i32> = [1, 8, 9, 16, 17, 24, 25, 33, 49, 65, 97, 129, 200, 257, 385, 512].map(ladder).to_vec();
        assert_eq!(steps, vec![8, 8, 16, 16, 24, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 512]);
        // Never half again as long as the length, past the first steps.
        assert!((16..=4096).all(|n| ladder(n) >= n && ladder(n) * 2 <= n * 3), "ladder overshoots");
        assert_eq!([1, 3, 5, 8, 9, 31, 33].map(ladder_rows), [1, 4, 8, 8, 16, 32, 48]);
    }

    #[test]
    fn ladder_buckets_round_shapes_and_keep_every_row() {
        let p = Packing::from_lengths([2, 9, 3, 9, 30]);
        let b = AttentionBuckets::new(&p, BucketShapes::Ladder).unwrap();
        for bucket in &b.buckets {
            assert_eq!((bucket.len, bucket.rows), (ladder(bucket.len), ladder_rows(bucket.rows)));
            let mask = bucket.key_mask.as_ref().expect("rounded buckets are masked");
            // Every row, filler rows too, sees at least one key.
            let m = mask.as_slice::<bool>();
            assert!(m.chunks(bucket.len as usize).all(|row| row.iter().any(|&k| k)));
        }
        assert!(b.scatter.is_some());
    }

    #[test]
    fn buckets_gather_and_scatter_every_row_once() {
        let p = Packing::from_lengths([2, 9, 3, 9]);
        let b = AttentionBuckets::new(&p, BucketShapes::Exact).unwrap();
        let scatter = b.scatter.as_ref().expect("mixed batch needs a scatter").as_slice::<i32>().to_vec();
        let mut slots: Vec<i32> = Vec::new();
        let mut base = 0;
        for bucket in &b.buckets {
            let gather: Vec<i32> = match &bucket.gather {
                Some(g) => g.as_slice::<i32>().to_vec(),
                None => (bucket.start..bucket.start + bucket.rows * bucket.len).collect(),
            };
            for (slot, &row) in gather.iter().enumerate() {
                if scatter[row as usize] == base + slot as i32 {
                    slots.push(row);
                }
            }
            base += bucket.rows * bucket.len;
        }
        slots.sort_unstable();
        assert_eq!(slots, (0..p.total()).collect::<Vec<_>>());

        // A rectangle in packed order needs neither gather nor scatter.
        let b = AttentionBuckets::new(&Packing::from_lengths([5, 5, 5]), BucketShapes::Exact).unwrap();
        assert!(b.scatter.is_none() && b.buckets.len() == 1 && b.buckets[0].gather.is_none());
        assert!(b.buckets[0].key_mask.is_none());
    }
}
