//! Model weights: every `*.safetensors` of a model folder, checked before MLX sees them.
//!
//! Which files are weights, the pickle refusal and the header checks are the shared rules of
//! `mlx_serve_protocol::model_files`; every file's header is checked there before MLX
//! opens it (MLX reads tensor data lazily, so a truncated file would otherwise fail in the
//! middle of a forward pass).
//!
//! Checkpoint names are mapped once at load by the architecture's own `sanitize` (in its
//! `models/*.rs` file), so architecture code asks for
//! `encoder.layer.0.attention.self.query.weight` whichever head the checkpoint was saved
//! with. [`Weights::take`] checks shapes against what config.json implies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use mlx_rs::{ops, Array, Dtype};
use mlx_serve_protocol::model_files;
use serde::Deserialize;

/// MLX affine quantization parameters (mlx-lm's `"quantization"` block in config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct QuantSpec {
    pub group_size: i32,
    pub bits: i32,
}

/// The part of config.json every architecture shares: how its linear layers are stored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StorageConfig {
    /// `"quantization": {"group_size": G, "bits": B}` for an MLX-quantized checkpoint.
    #[serde(default)]
    pub quantization: Option<QuantSpec>,
}

impl QuantSpec {

    pub fn check(&self) -> Result<()> {
        if ![2, 3, 4, 6, 8].contains(&self.bits) || ![32, 64, 128].contains(&self.group_size) {
            bail!("unsupported quantization: {} bits, group size {} (supported: 4 or 8 bits, group 32/64/128)",
                self.bits, self.group_size);
        }
        Ok(())
    }
}

/// How linear layers are materialised (the engine's dtype policy).
#[derive(Debug, Clone, Copy)]
pub struct LoadPolicy {
    /// Floating-point weights are cast to this dtype.
    pub compute: Dtype,
    /// Dequantize quantized linears at load (CPU: quantized matmul is far slower than BLAS).
    pub dequantize: bool,
}

/// A dense or MLX-quantized linear layer, `y = x Wᵀ + b`.
pub enum Linear {
    Dense { w_t: Array, bias: Option<Array> },
    Quantized { w: Array, scales: Array, biases: Array, bias: Option<Array>, spec: QuantSpec },
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
                let y = ops::quantized_matmul(x, w, scales, biases, true, spec.group_size, spec.bits)?;
                match bias {
                    Some(b) => y.add(b)?,
                    None => y,
                }
            }
        })
    }

    /// `x Wᵀ` and the bias still to add, for callers that fuse the bias into their next
    /// host kernel: `addmm` first copies the broadcast bias into the output, ~8% of a wide
    /// GEMM's time on the CPU backend. Quantized layers return their full result.
    pub fn forward_unbiased(&self, x: &Array) -> Result<(Array, Option<&Array>)> {
        match self {
            Linear::Dense { w_t, bias } => Ok((x.matmul(w_t)?, bias.as_ref())),
            Linear::Quantized { .. } => Ok((self.forward(x)?, None)),
        }
    }

    /// Stacks layers that read the same input into one wider layer (fused Q/K/V, gate/up):
    /// one large GEMM is faster than several small ones.
    pub fn concat(parts: Vec<Linear>) -> Result<Linear> {
        let bias_of = |l: &Linear| match l {
            Linear::Dense { bias, .. } | Linear::Quantized { bias, .. } => bias.clone(),
        };
        let biases: Vec<Option<Array>> = parts.iter().map(bias_of).collect();
        let bias = if biases.iter().all(Option::is_some) {
            let b: Vec<Array> = biases.into_iter().flatten().collect();
            Some(ops::concatenate(&b, 0)?)
        } else if biases.iter().all(Option::is_none) {
            None
        } else {
            bail!("cannot fuse linear layers with and without bias")
        };
        if parts.iter().all(|p| matches!(p, Linear::Dense { .. })) {
            let ws: Vec<Array> = parts
                .iter()
                .map(|p| match p {
                    Linear::Dense { w_t, .. } => w_t.clone(),
                    _ => unreachable!(),
                })
                .collect();
            let w_t = ops::concatenate(&ws, 1)?;
            w_t.eval()?;
            return Ok(Linear::Dense { w_t, bias });
        }
        let mut ws = Vec::new();
        let mut ss = Vec::new();
        let mut bs = Vec::new();
        let mut spec0 = None;
        for p in &parts {
            match p {
                Linear::Quantized { w, scales, biases, spec, .. } if spec0.is_none() || spec0 == Some(*spec) => {
                    spec0 = Some(*spec);
                    ws.push(w.clone());
                    ss.push(scales.clone());
                    bs.push(biases.clone());
                }
                _ => bail!("cannot fuse dense and quantized (or differently quantized) linear layers"),
            }
        }
        Ok(Linear::Quantized {
            w: ops::concatenate(&ws, 0)?,
            scales: ops::concatenate(&ss, 0)?,
            biases: ops::concatenate(&bs, 0)?,
            bias,
            spec: spec0.unwrap(),
        })
    }
}

/// All tensors of a model folder, by sanitized name.
pub struct Weights {
    tensors: HashMap<String, Array>,
    quant: Option<QuantSpec>,
    policy: LoadPolicy,
    /// dtype of the floating-point tensors on disk.
    stored: Option<Dtype>,
}

/// The safetensors files of the model in `dir` (rules: `mlx_serve_protocol::model_files`).
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(model_files::weight_files(dir)?)
}

/// Checks a safetensors header against the file (see `model_files::read_header`); returns
/// the tensor count.
pub fn check_safetensors(path: &Path) -> Result<usize> {
    Ok(model_files::read_header(path)?.tensors.len())
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::Float16 | Dtype::Float32 | Dtype::Bfloat16 | Dtype::Float64)
}

pub fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::Float16 => "float16",
        Dtype::Float32 => "float32",
        Dtype::Bfloat16 => "bfloat16",
        Dtype::Float64 => "float64",
        _ => "other",
    }
}

impl Weights {
    /// Loads (lazily, through MLX) every tensor of the model in `dir`, renaming each with
    /// the architecture's `sanitize`.
    pub fn load(dir: &Path, storage: &StorageConfig, sanitize: fn(&str) -> String, policy: LoadPolicy) -> Result<Weights> {
        let quant = storage.quantization;
        if let Some(q) = quant {
            q.check()?;
        }
        let mut tensors = HashMap::new();
        let mut stored = None;
        for file in safetensors_files(dir)? {
            check_safetensors(&file)?;
            let loaded = Array::load_safetensors(&file)
                .map_err(|e| anyhow!("cannot load {}: {e}", file.display()))?;
            for (name, t) in loaded {
                if stored.is_none() && is_float(t.dtype()) && name.ends_with("weight") {
                    stored = Some(t.dtype());
                }
                tensors.insert(sanitize(&name), t);
            }
        }
        Ok(Weights { tensors, quant, policy, stored })
    }

    /// `float32`, `bfloat16`, ... or `q4`/`q8` for quantized checkpoints.
    pub fn stored_dtype(&self) -> String {
        match self.quant {
            Some(q) => format!("q{}", q.bits),
            None => self.stored.map(dtype_name).unwrap_or("unknown").to_owned(),
        }
    }

    /// dtype of the floating-point weights on disk (scales' dtype for quantized files).
    pub fn stored_float_dtype(&self) -> Option<Dtype> {
        self.stored
    }

    /// Sets the dtype policy for the tensors taken from now on.
    pub fn set_policy(&mut self, policy: LoadPolicy) {
        self.policy = policy;
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes a tensor as stored (no cast, no shape check).
    pub fn take_raw(&mut self, name: &str) -> Result<Array> {
        self.tensors.remove(name).ok_or_else(|| {
            let mut some: Vec<&String> = self.tensors.keys().collect();
            some.sort();
            some.truncate(6);
            anyhow!("weights have no tensor {name:?} (the checkpoint does not match config.json; some names present: {some:?})")
        })
    }

    /// Removes a floating-point tensor, checks its shape and casts it to the compute dtype.
    pub fn take(&mut self, name: &str, shape: &[i32]) -> Result<Array> {
        let t = self.take_raw(name)?;
        if t.shape() != shape {
            bail!("tensor {name} has shape {:?} but config.json implies {shape:?}", t.shape());
        }
        self.cast(t)
    }

    /// Like [`take`](Self::take) but `None` when the tensor is absent.
    pub fn take_opt(&mut self, name: &str, shape: &[i32]) -> Result<Option<Array>> {
        if self.has(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    fn cast(&self, t: Array) -> Result<Array> {
        let t = if is_float(t.dtype()) && t.dtype() != self.policy.compute {
            t.as_dtype(self.policy.compute)?
        } else {
            t
        };
        Ok(t)
    }

    /// The linear layer `prefix` (`prefix.weight` [out, in], optional `prefix.bias`), dense
    /// or quantized (`prefix.scales` present), materialised per the load policy.
    pub fn linear(&mut self, prefix: &str, in_dim: i32, out_dim: i32, bias: bool) -> Result<Linear> {
        let bias = if bias {
            Some(self.take(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            self.take_opt(&format!("{prefix}.bias"), &[out_dim])?
        };
        let scales_name = format!("{prefix}.scales");
        if !self.has(&scales_name) {
            let w = self.take(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
            return Ok(Linear::Dense { w_t: w.t(), bias });
        }
        let spec = self.quant.ok_or_else(|| {
            anyhow!("{prefix} is quantized ({scales_name} present) but config.json has no \"quantization\" block")
        })?;
        let (w, scales, biases) = self.take_quantized(prefix, in_dim, out_dim, spec)?;
        if self.policy.dequantize {
            let dense = ops::dequantize(&w, &scales, &biases, spec.group_size, spec.bits)?.as_dtype(self.policy.compute)?;
            dense.eval()?;
            Ok(Linear::Dense { w_t: dense.t(), bias })
        } else {
            let scales = self.cast(scales)?;
            let biases = self.cast(biases)?;
            Ok(Linear::Quantized { w, scales, biases, bias, spec })
        }
    }

    /// Rows `rows` of the [vocab, hidden] matrix `name` (dense or quantized), in compute dtype.
    pub fn rows(&mut self, name_prefix: &str, vocab: i32, hidden: i32, rows: &[i32]) -> Result<Array> {
        let idx = Array::from_slice(rows, &[rows.len() as i32]);
        if self.has(&format!("{name_prefix}.scales")) {
            let spec = self.quant.ok_or_else(|| anyhow!("{name_prefix} is quantized but config.json has no quantization"))?;
            let (w, s, b) = self.take_quantized(name_prefix, hidden, vocab, spec)?;
            let pick = |a: &Array| a.take_axis(&idx, 0);
            let dense = ops::dequantize(pick(&w)?, pick(&s)?, &pick(&b)?, spec.group_size, spec.bits)?;
            return Ok(dense.as_dtype(self.policy.compute)?);
        }
        let w = self.take_raw(&format!("{name_prefix}.weight"))?;
        if w.shape() != [vocab, hidden] {
            bail!("tensor {name_prefix}.weight has shape {:?} but config.json implies {:?}", w.shape(), [vocab, hidden]);
        }
        let r = w.take_axis(&idx, 0)?;
        self.cast(r)
    }

    fn take_quantized(&mut self, prefix: &str, in_dim: i32, out_dim: i32, spec: QuantSpec) -> Result<(Array, Array, Array)> {
        let w = self.take_raw(&format!("{prefix}.weight"))?;
        let scales = self.take_raw(&format!("{prefix}.scales"))?;
        let biases = self.take_raw(&format!("{prefix}.biases"))?;
        let packed = in_dim * spec.bits / 32;
        let groups = in_dim / spec.group_size;
        if w.dtype() != Dtype::Uint32 || w.shape() != [out_dim, packed] {
            bail!(
                "quantized tensor {prefix}.weight is {:?} {:?}, expected uint32 [{out_dim}, {packed}] for {} bits",
                w.dtype(),
                w.shape(),
                spec.bits
            );
        }
        if scales.shape() != [out_dim, groups] || biases.shape() != [out_dim, groups] {
            bail!(
                "quantized tensor {prefix}: scales {:?} / biases {:?}, expected [{out_dim}, {groups}] for group size {}",
                scales.shape(),
                biases.shape(),
                spec.group_size
            );
        }
        Ok((w, scales, biases))
    }
}
