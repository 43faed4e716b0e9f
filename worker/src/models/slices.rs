//! Row slices: the grain of a yielding batch's checkpoints finer than a transformer layer.
//!
//! Every step of a layer but attention reads each token's row alone (the projections, the
//! feed-forward block, residuals and norms), so on host kernels (the CPU backend in
//! float32, where a layer of a long batch takes tenths of a second: ~0.8 s for a
//! late-chunked 10k-token MiniLM document on 2 cores) such a step runs in slices of
//! [`slice_rows`] rows: 2,048 at widths of 384 and up, ~100 ms of MiniLM's compute on that
//! CPU (~4x that at width 768), more rows for narrower models. A yielding batch (docs/worker.md, "Yielding batches") passes
//! its checkpoint before each slice, so the batch waiting behind it runs after a slice, not
//! after a whole layer.
//!
//! Every batch is cut the same way, yielding or not: OpenBLAS's sgemm does not give a row
//! the same bits whatever the other rows of the call (measured: cutting a 3,072-row GEMM in
//! two at row 512 changes about half the rows in their last bits), so a yielding batch cut
//! into slices that a plain one is not would not answer bitwise as the plain one does
//! (tests/preemption.rs). A batch of one slice or less (every query batch) is one call, as
//! before; a larger one is cut too, joined by one memcpy per slice (docs/worker.md,
//! "Yielding batches", has the measurement). On MLX's
//! kernels (GPUs, half precision on the CPU) nothing is sliced: a layer there is
//! milliseconds on a GPU.

use anyhow::Result;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array};

use super::{Inputs, Kernels};

/// Rows of a slice at width 384 (MiniLM): ~100 ms of its feed-forward block on 2 CPU cores.
pub const SLICE_ROWS_AT_384: i32 = 2048;

impl Inputs<'_> {
    /// `f` over the rows of `parts` (arrays of the batch's rows, `[total, ..]`), whose rows it
    /// must compute independently: on host kernels in slices of [`slice_rows`] rows (of the
    /// first part's width), a yielding batch passing its checkpoint before each, the results
    /// joined in row order; otherwise one call on all the rows.
    pub fn rows_in_slices<T: Rows>(&self, parts: &[&Array], f: impl Fn(&[Array]) -> Result<T>) -> Result<T> {
        let total = parts.first().map_or(0, |a| a.dim(0));
        let rows = match parts.first() {
            Some(a) if self.kernels == Kernels::Host && a.ndim() == 2 => slice_rows(a.dim(1)),
            _ => total.max(1),
        };
        if total <= rows {
            self.pause_at(parts)?;
            return f(&parts.iter().map(|a| (*a).clone()).collect::<Vec<_>>());
        }
        let mut done = Vec::new();
        for first in (0..total).step_by(rows as usize) {
            let slice: Vec<Array> = parts.iter().map(|a| a.index(first..(first + rows).min(total))).collect();
            // The slice's inputs are computed before the checkpoint, its work after.
            self.pause_at(&slice.iter().collect::<Vec<_>>())?;
            let y = f(&slice)?;
            if self.checkpoint.is_some() {
                mlx_rs::transforms::eval(y.arrays())?;
            }
            done.push(y);
        }
        T::join(done)
    }
}

/// The rows of a slice of a step whose input is `width` wide: [`SLICE_ROWS_AT_384`] at
/// widths of 384 and up, more below (the work per row grows with the square of the width).
/// Not fewer for wider models, although their slices take longer (~4x at width 768): a
/// call packs its weight matrix once (OpenBLAS), so each slice pays that again, a share of
/// the slice's time that grows as its rows get fewer (not measurable at 2,048 rows on
/// MiniLM, docs/worker.md); and every batch of up to 2,048 tokens, which is every batch
/// the time bound cuts for the base-size families on the CPU (docs/models.md), stays one
/// call, bit for bit as before.
pub fn slice_rows(width: i32) -> i32 {
    let scale = 384.0 / width.max(1) as f64;
    ((SLICE_ROWS_AT_384 as f64 * scale * scale) as i32).max(SLICE_ROWS_AT_384)
}

/// What a sliced step returns: one array of rows, or two (a residual sum and its norm).
pub trait Rows: Sized {
    fn arrays(&self) -> Vec<&Array>;
    /// The slices' results, in row order, as one.
    fn join(slices: Vec<Self>) -> Result<Self>;
}

impl Rows for Array {
    fn arrays(&self) -> Vec<&Array> {
        vec![self]
    }

    fn join(mut slices: Vec<Array>) -> Result<Array> {
        if slices.len() == 1 {
            return Ok(slices.pop().unwrap());
        }
        // Float32 rows on the host: one memcpy per slice (MLX's CPU concatenate copies
        // element by element).
        let width = slices[0].dim(1);
        let mut rows = 0;
        let mut out: Vec<f32> = Vec::new();
        for s in &slices {
            match s.try_as_slice::<f32>() {
                Ok(data) if s.ndim() == 2 && s.dim(1) == width => {
                    out.extend_from_slice(data);
                    rows += s.dim(0);
                }
                _ => return Ok(ops::concatenate(&slices, 0)?),
            }
        }
        Ok(Array::from_slice(&out, &[rows, width]))
    }
}

impl Rows for (Array, Array) {
    fn arrays(&self) -> Vec<&Array> {
        vec![&self.0, &self.1]
    }

    fn join(slices: Vec<(Array, Array)>) -> Result<(Array, Array)> {
        let (a, b): (Vec<Array>, Vec<Array>) = slices.into_iter().unzip();
        Ok((Array::join(a)?, Array::join(b)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_grow_below_width_384_and_stay_at_2048_rows_above() {
        assert_eq!(slice_rows(96), 2048 * 16);
        assert_eq!(slice_rows(384), 2048);
        assert_eq!(slice_rows(768), 2048);
        assert_eq!(slice_rows(4096), 2048);
    }
}
