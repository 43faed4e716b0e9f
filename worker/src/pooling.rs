//! Sentence pooling of final hidden states, as sentence-transformers' `Pooling` and
//! `Normalize` modules do it, for right-padded batches.
//!
//! Padding never reaches a result: CLS reads row 0, last-token reads the row at each
//! sequence's own `length - 1` (not the padded end), and mean averages only real rows.

use anyhow::{bail, Result};
use mlx_rs::{ops, Array};
use mlx_serve_protocol::model_dir::Pooling;

/// Flat row index (into `[batch * len, hidden]`) of position `pos(length)` in each sequence.
fn row_indices(lengths: &[i32], len: i32, pos: impl Fn(i32) -> i32) -> Array {
    let idx: Vec<i32> = lengths.iter().enumerate().map(|(b, &n)| b as i32 * len + pos(n)).collect();
    Array::from_slice(&idx, &[idx.len() as i32])
}

/// The CLS (first-token) row of each sequence, `[batch, hidden]`.
pub fn cls(hidden: &Array, lengths: &[i32], len: i32) -> Result<Array> {
    Ok(hidden.take_axis(row_indices(lengths, len, |_| 0), 0)?)
}

/// The last real token's row of each sequence, `[batch, hidden]`.
pub fn last_token(hidden: &Array, lengths: &[i32], len: i32) -> Result<Array> {
    Ok(hidden.take_axis(row_indices(lengths, len, |n| n - 1), 0)?)
}

/// Mean over the real tokens of each sequence, `[batch, hidden]`.
pub fn mean(hidden: &Array, lengths: &[i32], len: i32) -> Result<Array> {
    let b = lengths.len() as i32;
    let h = hidden.dim(-1);
    let mut mask = vec![0f32; (b * len) as usize];
    for (i, &n) in lengths.iter().enumerate() {
        mask[i * len as usize..i * len as usize + n as usize].fill(1.0);
    }
    let mask = Array::from_slice(&mask, &[b, len, 1]).as_dtype(hidden.dtype())?;
    let summed = hidden.reshape(&[b, len, h])?.multiply(&mask)?.sum_axis(1, false)?;
    let counts: Vec<f32> = lengths.iter().map(|&n| n as f32).collect();
    let counts = Array::from_slice(&counts, &[b, 1]).as_dtype(hidden.dtype())?;
    Ok(summed.divide(&counts)?)
}

/// Pools `[batch * len, hidden]` states into `[batch, hidden]`.
pub fn pool(hidden: &Array, pooling: Pooling, lengths: &[i32], len: i32) -> Result<Array> {
    match pooling {
        Pooling::Cls => cls(hidden, lengths, len),
        Pooling::Mean => mean(hidden, lengths, len),
        Pooling::LastToken => last_token(hidden, lengths, len),
        other => bail!("{} is a scoring head, not an embedding pooling", other.as_str()),
    }
}

/// Row-wise L2 normalization, `x / max(‖x‖, 1e-12)` like torch's `F.normalize`.
pub fn l2_normalize(x: &Array) -> Result<Array> {
    let norm = x.square()?.sum_axis(-1, true)?.sqrt()?;
    Ok(x.divide(ops::maximum(&norm, Array::from_f32(1e-12))?)?)
}
