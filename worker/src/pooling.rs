//! Sentence pooling of final hidden states, as sentence-transformers' `Pooling` and
//! `Normalize` modules do it, for packed batches (`packing.rs`).
//!
//! Each sequence's own rows only: CLS reads its first row, last-token its last row, and
//! mean averages its rows (one `[B, T] · [T, hidden]` GEMM with a 1/length matrix, the same
//! on every backend).

use anyhow::{bail, Result};
use mlx_rs::{ops, Array};
use mlx_serve_protocol::model_dir::Pooling;

use crate::packing::Packing;

/// The CLS (first-token) row of each sequence, `[batch, hidden]`.
pub fn cls(hidden: &Array, packing: &Packing) -> Result<Array> {
    Ok(hidden.take_axis(packing.first_rows(), 0)?)
}

/// The last token's row of each sequence, `[batch, hidden]`.
pub fn last_token(hidden: &Array, packing: &Packing) -> Result<Array> {
    Ok(hidden.take_axis(packing.last_rows(), 0)?)
}

/// Mean over the tokens of each sequence, `[batch, hidden]`.
pub fn mean(hidden: &Array, packing: &Packing) -> Result<Array> {
    let m = packing.mean_matrix().as_dtype(hidden.dtype())?;
    Ok(m.matmul(hidden)?)
}

/// Pools `[total, hidden]` states into `[batch, hidden]`.
pub fn pool(hidden: &Array, pooling: Pooling, packing: &Packing) -> Result<Array> {
    match pooling {
        Pooling::Cls => cls(hidden, packing),
        Pooling::Mean => mean(hidden, packing),
        Pooling::LastToken => last_token(hidden, packing),
        other => bail!("{} is a scoring head, not an embedding pooling", other.as_str()),
    }
}

/// Row-wise L2 normalization, `x / max(‖x‖, 1e-12)` like torch's `F.normalize`.
pub fn l2_normalize(x: &Array) -> Result<Array> {
    let norm = x.square()?.sum_axis(-1, true)?.sqrt()?;
    Ok(x.divide(ops::maximum(&norm, Array::from_f32(1e-12))?)?)
}
