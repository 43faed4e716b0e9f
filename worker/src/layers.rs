//! The two kinds of weight matrices a network holds, each dense or MLX-quantized:
//! [`Linear`] layers (`y = x Wᵀ + b`) and [`Embedding`] tables (rows gathered by id).
//!
//! Quantized ones are what a GPU keeps: MLX affine quantization (per group of `group_size`
//! inputs, `w ≈ scale · q + bias`, `q` packed into uint32), computed by `quantized_matmul`
//! and, for tables, by gathering the packed rows with their scales and dequantizing only
//! those (mlx.nn.QuantizedEmbedding does the same). `weights.rs` decides at load which
//! form a layer takes (the CPU backend dequantizes: docs/worker.md, "Backends").

use anyhow::{bail, Result};
use mlx_rs::{ops, Array};

use crate::weights::QuantSpec;

/// A dense or MLX-quantized linear layer, `y = x Wᵀ + b`.
pub enum Linear {
    Dense {
        w_t: Array,
        bias: Option<Array>,
    },
    Quantized {
        w: Array,
        scales: Array,
        biases: Array,
        bias: Option<Array>,
        spec: QuantSpec,
    },
    /// Layers fused by [`Linear::concat`] that could not share one GEMM (stored
    /// differently): each runs on the input and the outputs are concatenated.
    Parts(Vec<Linear>),
}

/// How a quantized layer multiplies: MLX's quantized matmul, except on MLX's CUDA backend,
/// where each product dequantizes the layer's weights (a transient dense copy of one layer)
/// and runs a dense matmul; the weights stay quantized in memory either way. Measured on an
/// NVIDIA H200 with MLX 0.32 (docs/gpu-results.md): the CUDA quantized-matmul kernel is
/// compiled (NVRTC) on first use for each row-count class, about 50 s each, and a batch of
/// 11 tokens after the warm-up hung inside it; dequantize-then-matmul ran MiniLM 8-bit at
/// the quantized kernel's speed (batches of 256 passages: 32.4 vs 36.1 ms). Metal's quantized
/// kernels are prebuilt and are what mlx-lm runs. `MLX_SERVE_QUANTIZED_MATMUL=kernel` or
/// `=dequantize` overrides the choice (`knobs.rs`).
fn dequantize_first() -> bool {
    static D: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *D.get_or_init(|| crate::knobs::dequantize_first().unwrap_or_else(crate::device::on_cuda))
}

/// `x · wᵀ` of a quantized weight through MLX's quantized matmul, or (`dequantize`) with
/// the weight dequantized for this product and a dense matmul.
fn quantized_product(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    spec: QuantSpec,
    dequantize: bool,
) -> Result<Array> {
    Ok(if dequantize {
        let full = ops::dequantize(w, scales, biases, spec.group_size, spec.bits)?.as_dtype(x.dtype())?;
        x.matmul(full.t())?
    } else {
        ops::quantized_matmul(x, w, scales, biases, true, spec.group_size, spec.bits)?
    })
}

impl Linear {
    /// Applies the layer to `x` of shape `[.., in]`.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        Ok(match self {
            // addmm folds the bias into the GEMM (BLAS beta = 1) instead of a separate pass.
            Linear::Dense { w_t, bias: Some(b) } if x.ndim() == 2 => ops::addmm(b, x, w_t, 1.0, 1.0)?,
            Linear::Dense { w_t, bias } => {
                let y = x.matmul(w_t)?;
                match bias {
                    Some(b) => y.add(b)?,
                    None => y,
                }
            }
            Linear::Quantized { w, scales, biases, bias, spec } => {
                let y = quantized_product(x, w, scales, biases, *spec, dequantize_first())?;
                match bias {
                    Some(b) => y.add(b)?,
                    None => y,
                }
            }
            Linear::Parts(parts) => {
                let ys: Vec<Array> = parts.iter().map(|p| p.forward(x)).collect::<Result<_>>()?;
                ops::concatenate(&ys, -1)?
            }
        })
    }

    /// `x Wᵀ` and the bias still to add, for callers that fuse the bias into their next
    /// host kernel: `addmm` first copies the broadcast bias into the output, ~8% of a wide
    /// GEMM's time on the CPU backend. Quantized layers return their full result.
    pub fn forward_unbiased(&self, x: &Array) -> Result<(Array, Option<&Array>)> {
        match self {
            Linear::Dense { w_t, bias } => Ok((x.matmul(w_t)?, bias.as_ref())),
            Linear::Quantized { .. } | Linear::Parts(_) => Ok((self.forward(x)?, None)),
        }
    }

    /// Stacks layers that read the same input into one wider layer (fused Q/K/V, gate/up):
    /// one large GEMM is faster than several small ones. Neighbours stored alike are fused;
    /// a mixed recipe may store them differently (V at 8 bits, Q/K at 4), and then the
    /// result runs each run of alike parts and concatenates their outputs.
    pub fn concat(parts: Vec<Linear>) -> Result<Linear> {
        let has_bias = |l: &Linear| l.bias().is_some();
        if parts.iter().any(has_bias) && !parts.iter().all(has_bias) {
            bail!("cannot fuse linear layers with and without bias");
        }
        let mut runs: Vec<Vec<Linear>> = Vec::new();
        for p in parts {
            match runs.last_mut() {
                Some(run) if run[0].storage() == p.storage() => run.push(p),
                _ => runs.push(vec![p]),
            }
        }
        let mut fused: Vec<Linear> = runs.into_iter().map(Linear::fuse).collect::<Result<_>>()?;
        Ok(if fused.len() == 1 { fused.pop().unwrap() } else { Linear::Parts(fused) })
    }

    fn bias(&self) -> Option<&Array> {
        match self {
            Linear::Dense { bias, .. } | Linear::Quantized { bias, .. } => bias.as_ref(),
            Linear::Parts(_) => None,
        }
    }

    /// `None` for dense, the quantization otherwise: layers fuse only with their own kind.
    fn storage(&self) -> Option<Option<QuantSpec>> {
        match self {
            Linear::Dense { .. } => Some(None),
            Linear::Quantized { spec, .. } => Some(Some(*spec)),
            Linear::Parts(_) => None,
        }
    }

    /// Fuses layers stored alike (all dense, or all quantized the same way).
    fn fuse(mut parts: Vec<Linear>) -> Result<Linear> {
        if parts.len() == 1 {
            return Ok(parts.pop().unwrap());
        }
        let biases: Vec<Array> = parts.iter().filter_map(|p| p.bias().cloned()).collect();
        let bias = if biases.is_empty() { None } else { Some(ops::concatenate(&biases, 0)?) };
        let (mut ws, mut ss, mut bs) = (Vec::new(), Vec::new(), Vec::new());
        let mut spec0 = None;
        for p in parts {
            match p {
                Linear::Dense { w_t, .. } => ws.push(w_t),
                Linear::Quantized { w, scales, biases, spec, .. } => {
                    spec0 = Some(spec);
                    ws.push(w);
                    ss.push(scales);
                    bs.push(biases);
                }
                Linear::Parts(_) => bail!("cannot fuse already split layers"),
            }
        }
        Ok(match spec0 {
            None => {
                let w_t = ops::concatenate(&ws, 1)?;
                w_t.eval()?;
                Linear::Dense { w_t, bias }
            }
            Some(spec) => Linear::Quantized {
                w: ops::concatenate(&ws, 0)?,
                scales: ops::concatenate(&ss, 0)?,
                biases: ops::concatenate(&bs, 0)?,
                bias,
                spec,
            },
        })
    }
}

/// An embedding table `[rows, dim]`, dense or MLX-quantized.
pub enum Embedding {
    Dense(Array),
    Quantized { w: Array, scales: Array, biases: Array, spec: QuantSpec },
}

impl Embedding {
    /// The rows of int32 `ids` (`[n]`), `[n, dim]`; a quantized table dequantizes only
    /// the rows it gathers, into the scales' dtype.
    pub fn lookup(&self, ids: &Array) -> Result<Array> {
        Ok(match self {
            Embedding::Dense(table) => table.take_axis(ids, 0)?,
            Embedding::Quantized { w, scales, biases, spec } => {
                let (w, s, b) = (w.take_axis(ids, 0)?, scales.take_axis(ids, 0)?, biases.take_axis(ids, 0)?);
                ops::dequantize(&w, &s, &b, spec.group_size, spec.bits)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dequantize-then-matmul gives what MLX's quantized matmul gives.
    #[test]
    fn quantized_products_agree() {
        let (out, inp) = (96, 128);
        let v: Vec<f32> = (0..out * inp).map(|i| ((i * 53 % 197) as f32 / 98.0) - 1.0).collect();
        let dense = Array::from_slice(&v, &[out, inp]);
        let (w, scales, biases) = ops::quantize(&dense, 64, 8).unwrap();
        let spec = QuantSpec { group_size: 64, bits: 8 };
        let xv: Vec<f32> = (0..11 * inp).map(|i| ((i * 31 % 89) as f32 / 44.0) - 1.0).collect();
        let x = Array::from_slice(&xv, &[11, inp]);
        let a = quantized_product(&x, &w, &scales, &biases, spec, false).unwrap();
        let b = quantized_product(&x, &w, &scales, &biases, spec, true).unwrap();
        let worst = a.subtract(&b).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>();
        assert!(worst < 1e-3, "max diff {worst}");
    }
}
