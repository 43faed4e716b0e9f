//! Sentence pooling of final hidden states, as sentence-transformers' `Pooling` module does
//! it (sentence_transformers/sentence_transformer/modules/pooling.py, 6.2), for packed
//! batches (`packing.rs`).
//!
//! Each sequence's own rows only: CLS reads its first row, last-token its last row, max
//! takes each column's maximum over its rows, and the weighted sums (mean, mean / √length,
//! position-weighted mean) are one `[B, T] · [T, hidden]` GEMM with a weight matrix, the
//! same on every backend.

use anyhow::Result;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array};
use mlx_serve_protocol::model_dir::PoolingMode;

use crate::packing::Packing;

/// The CLS (first-token) row of each sequence, `[batch, hidden]`.
pub fn cls(hidden: &Array, packing: &Packing) -> Result<Array> {
    Ok(hidden.take_axis(packing.first_rows(), 0)?)
}

/// The last token's row of each sequence, `[batch, hidden]`.
pub fn last_token(hidden: &Array, packing: &Packing) -> Result<Array> {
    Ok(hidden.take_axis(packing.last_rows(), 0)?)
}

/// `Σ_j weight(len, j) · row_j` per sequence, `[batch, hidden]`.
fn weighted(hidden: &Array, packing: &Packing, weight: impl Fn(usize, usize) -> f32) -> Result<Array> {
    let m = packing.weight_matrix(weight).as_dtype(hidden.dtype())?;
    Ok(m.matmul(hidden)?)
}

/// Mean over the tokens of each sequence, `[batch, hidden]`.
pub fn mean(hidden: &Array, packing: &Packing) -> Result<Array> {
    weighted(hidden, packing, |len, _| 1.0 / len as f32)
}

/// Per-column maximum over each sequence's rows, `[batch, hidden]`.
pub fn max(hidden: &Array, packing: &Packing) -> Result<Array> {
    let rows: Vec<Array> = (0..packing.len())
        .map(|i| {
            let (s, e) = (packing.offsets[i], packing.offsets[i + 1]);
            hidden.index(s..e).max_axis(0, true)
        })
        .collect::<Result<_, _>>()?;
    Ok(ops::concatenate(&rows, 0)?)
}

/// Pools `[total, hidden]` states into `[batch, hidden]`.
pub fn pool(hidden: &Array, mode: PoolingMode, packing: &Packing) -> Result<Array> {
    match mode {
        PoolingMode::Cls => cls(hidden, packing),
        PoolingMode::Mean => mean(hidden, packing),
        PoolingMode::Max => max(hidden, packing),
        // sum / sqrt(length) (pooling.py: `mean_sum / torch.sqrt(mean_mask)`).
        PoolingMode::MeanSqrtLen => weighted(hidden, packing, |len, _| 1.0 / (len as f32).sqrt()),
        // Token j (from 0) weighs j + 1; the weights of a sequence of n sum to n(n+1)/2.
        PoolingMode::WeightedMean => weighted(hidden, packing, |len, j| (j + 1) as f32 / (len * (len + 1) / 2) as f32),
        PoolingMode::LastToken => last_token(hidden, packing),
    }
}

/// Pools each group of row ranges of `hidden` (`[total, hidden]`) into one row,
/// `[groups, hidden]`: late chunking's spans (`EmbedPooled`), which may cross the
/// sequences of a packed batch. `mode` must be token-wise (`span_pooling` in the protocol
/// maps CLS and last-token to mean); positions of a weighted mean count from the group's
/// first row.
pub fn pool_ranges(hidden: &Array, mode: PoolingMode, groups: &[Vec<(u32, u32)>]) -> Result<Array> {
    let weight: fn(usize, usize) -> f32 = match mode {
        PoolingMode::Mean => |len, _| 1.0 / len as f32,
        PoolingMode::MeanSqrtLen => |len, _| 1.0 / (len as f32).sqrt(),
        PoolingMode::WeightedMean => |len, j| (j + 1) as f32 / (len * (len + 1) / 2) as f32,
        PoolingMode::Max => {
            let rows: Vec<Array> = groups
                .iter()
                .map(|g| {
                    let parts: Vec<Array> = g.iter().map(|&(s, e)| hidden.index(s as i32..e as i32)).collect();
                    ops::concatenate(&parts, 0)?.max_axis(0, true)
                })
                .collect::<Result<_, _>>()?;
            return Ok(ops::concatenate(&rows, 0)?);
        }
        PoolingMode::Cls | PoolingMode::LastToken => {
            anyhow::bail!("{} pooling has no meaning on a span", mode.as_str())
        }
    };
    let total = hidden.dim(0) as usize;
    let mut m = vec![0f32; groups.len() * total];
    for (i, g) in groups.iter().enumerate() {
        let len: usize = g.iter().map(|&(s, e)| (e - s) as usize).sum();
        let mut j = 0;
        for &(s, e) in g {
            for r in s as usize..e as usize {
                m[i * total + r] = weight(len, j);
                j += 1;
            }
        }
    }
    let m = Array::from_slice(&m, &[groups.len() as i32, total as i32]).as_dtype(hidden.dtype())?;
    Ok(m.matmul(hidden)?)
}

/// Row-wise L2 normalization, `x / max(‖x‖, 1e-12)` like torch's `F.normalize`.
pub fn l2_normalize(x: &Array) -> Result<Array> {
    let norm = x.square()?.sum_axis(-1, true)?.sqrt()?;
    Ok(x.divide(ops::maximum(&norm, Array::from_f32(1e-12))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group of ranges pools as the sequence made of exactly those rows.
    #[test]
    fn ranges_pool_as_the_rows_they_cover() {
        let rows: Vec<f32> = (0..10 * 3).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
        let hidden = Array::from_slice(&rows, &[10, 3]);
        let groups = vec![vec![(1, 3), (5, 7)], vec![(9, 10)]];
        for mode in [PoolingMode::Mean, PoolingMode::Max, PoolingMode::MeanSqrtLen, PoolingMode::WeightedMean] {
            let got = pool_ranges(&hidden, mode, &groups).unwrap();
            for (i, g) in groups.iter().enumerate() {
                let picked: Vec<f32> =
                    g.iter().flat_map(|&(s, e)| rows[s as usize * 3..e as usize * 3].to_vec()).collect();
                let n = picked.len() as i32 / 3;
                let alone = pool(&Array::from_slice(&picked, &[n, 3]), mode, &Packing::from_lengths([n])).unwrap();
                let (a, b) = (got.as_slice::<f32>()[i * 3..(i + 1) * 3].to_vec(), alone.as_slice::<f32>().to_vec());
                assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5), "{mode:?} group {i}: {a:?} vs {b:?}");
            }
        }
        assert!(pool_ranges(&hidden, PoolingMode::Cls, &groups).is_err());
    }

    /// Every mode against a direct per-sequence computation on a mixed-length batch.
    #[test]
    fn every_mode_pools_each_sequence_alone() {
        let lengths = [3, 1, 4];
        let packing = Packing::from_lengths(lengths);
        let hidden_dim = 2;
        let rows: Vec<f32> = (0..8 * hidden_dim).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let hidden = Array::from_slice(&rows, &[8, hidden_dim as i32]);
        let seq = |i: usize| -> Vec<&[f32]> {
            let s: usize = lengths[..i].iter().sum::<i32>() as usize;
            (s..s + lengths[i] as usize).map(|r| &rows[r * hidden_dim..(r + 1) * hidden_dim]).collect()
        };
        for mode in [
            PoolingMode::Cls,
            PoolingMode::Mean,
            PoolingMode::Max,
            PoolingMode::MeanSqrtLen,
            PoolingMode::WeightedMean,
            PoolingMode::LastToken,
        ] {
            let got = pool(&hidden, mode, &packing).unwrap();
            assert_eq!(got.shape(), &[3, hidden_dim as i32]);
            let got = got.as_slice::<f32>().to_vec();
            for i in 0..3 {
                let toks = seq(i);
                let n = toks.len() as f32;
                for c in 0..hidden_dim {
                    let col: Vec<f32> = toks.iter().map(|t| t[c]).collect();
                    let want = match mode {
                        PoolingMode::Cls => col[0],
                        PoolingMode::LastToken => *col.last().unwrap(),
                        PoolingMode::Mean => col.iter().sum::<f32>() / n,
                        PoolingMode::Max => col.iter().copied().fold(f32::MIN, f32::max),
                        PoolingMode::MeanSqrtLen => col.iter().sum::<f32>() / n.sqrt(),
                        PoolingMode::WeightedMean => {
                            col.iter().enumerate().map(|(j, v)| (j + 1) as f32 * v).sum::<f32>()
                                / (1..=toks.len()).sum::<usize>() as f32
                        }
                    };
                    let v = got[i * hidden_dim + c];
                    assert!((v - want).abs() < 1e-5, "{mode:?} seq {i} col {c}: {v} vs {want}");
                }
            }
        }
    }
}
