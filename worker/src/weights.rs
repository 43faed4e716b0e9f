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
use serde_json::Value;

use crate::layers::{Embedding, Linear};

/// MLX affine quantization parameters of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct QuantSpec {
    pub group_size: i32,
    pub bits: i32,
}

impl QuantSpec {
    /// What MLX's affine `quantize` accepts (mlx/ops.cpp, `quantize`).
    pub fn check(&self) -> Result<()> {
        if ![2, 3, 4, 5, 6, 8].contains(&self.bits) || ![32, 64, 128].contains(&self.group_size) {
            bail!(
                "unsupported quantization: {} bits, group size {} (supported: 2, 3, 4, 5, 6 or 8 bits, group 32/64/128)",
                self.bits,
                self.group_size
            );
        }
        Ok(())
    }
}

/// config.json's `"quantization"` block, in mlx-lm's format (mlx_lm/utils.py, `load_model`
/// and `quantize_model`): the default `group_size` and `bits`, plus one entry per layer
/// quantized otherwise, keyed by its checkpoint path: `{"group_size": G, "bits": B}`, or
/// `false` for a layer left unquantized.
#[derive(Debug, Clone, Deserialize)]
pub struct QuantConfig {
    pub group_size: i32,
    pub bits: i32,
    /// Only `"affine"` (absent in older files).
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(flatten)]
    pub layers: HashMap<String, Value>,
}

impl QuantConfig {
    pub fn default_spec(&self) -> QuantSpec {
        QuantSpec { group_size: self.group_size, bits: self.bits }
    }

    /// Per-layer specs by sanitized layer name (`None`: stored unquantized), every spec
    /// checked.
    fn layer_specs(&self, sanitize: fn(&str) -> String) -> Result<HashMap<String, Option<QuantSpec>>> {
        if let Some(mode) = self.mode.as_deref().filter(|m| *m != "affine") {
            bail!("unsupported quantization mode {mode:?} (only MLX affine quantization)");
        }
        self.default_spec().check()?;
        let mut out = HashMap::new();
        for (path, v) in &self.layers {
            let spec = match v {
                Value::Bool(false) => None,
                Value::Object(_) => {
                    let spec = QuantSpec::deserialize(v).map_err(|e| anyhow!("quantization entry {path:?}: {e}"))?;
                    spec.check()?;
                    Some(spec)
                }
                // Other scalar keys (e.g. a future option) are not layers.
                _ => continue,
            };
            let name = sanitize(&format!("{path}.weight"));
            out.insert(name.strip_suffix(".weight").unwrap_or(&name).to_owned(), spec);
        }
        Ok(out)
    }
}

/// The part of config.json every architecture shares: how its layers are stored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StorageConfig {
    /// Present for an MLX-quantized checkpoint.
    #[serde(default)]
    pub quantization: Option<QuantConfig>,
}

/// How linear layers are materialised (the engine's dtype policy).
#[derive(Debug, Clone, Copy)]
pub struct LoadPolicy {
    /// Floating-point weights are cast to this dtype.
    pub compute: Dtype,
    /// Dequantize quantized linears at load (CPU: quantized matmul is far slower than BLAS).
    pub dequantize: bool,
}

/// All tensors of a model folder, by sanitized name.
pub struct Weights {
    tensors: HashMap<String, Array>,
    /// The default quantization and the layers quantized otherwise (or not at all).
    quant: Option<(QuantSpec, HashMap<String, Option<QuantSpec>>)>,
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
    pub fn load(
        dir: &Path,
        storage: &StorageConfig,
        sanitize: fn(&str) -> String,
        policy: LoadPolicy,
    ) -> Result<Weights> {
        let quant = match &storage.quantization {
            Some(q) => Some((q.default_spec(), q.layer_specs(sanitize)?)),
            None => None,
        };
        let mut tensors = HashMap::new();
        let mut stored = None;
        for file in safetensors_files(dir)? {
            check_safetensors(&file)?;
            let loaded = Array::load_safetensors(&file).map_err(|e| anyhow!("cannot load {}: {e}", file.display()))?;
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
        match &self.quant {
            Some((q, _)) => format!("q{}", q.bits),
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

    /// Like [`take`](Self::take) but leaves the tensor for its owner to take later (MLX
    /// arrays share their buffer): a tied MLM decoder reads the word embeddings this way.
    pub fn shared(&mut self, name: &str, shape: &[i32]) -> Result<Array> {
        let t = self.take_raw(name)?;
        self.tensors.insert(name.to_owned(), t.clone());
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
        let t =
            if is_float(t.dtype()) && t.dtype() != self.policy.compute { t.as_dtype(self.policy.compute)? } else { t };
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
        if !self.has(&format!("{prefix}.scales")) {
            let w = self.take(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
            return Ok(Linear::Dense { w_t: w.t(), bias });
        }
        let (w, scales, biases, spec) = self.take_quantized(prefix, in_dim, out_dim)?;
        if self.policy.dequantize {
            let dense = self.dequantized(&w, &scales, &biases, spec)?;
            Ok(Linear::Dense { w_t: dense.t(), bias })
        } else {
            let scales = self.cast(scales)?;
            let biases = self.cast(biases)?;
            Ok(Linear::Quantized { w, scales, biases, bias, spec })
        }
    }

    /// The embedding table `prefix` (`prefix.weight` [rows, dim]), dense or quantized,
    /// materialised per the load policy like a linear layer.
    pub fn embedding(&mut self, prefix: &str, rows: i32, dim: i32) -> Result<Embedding> {
        if !self.has(&format!("{prefix}.scales")) {
            return Ok(Embedding::Dense(self.take(&format!("{prefix}.weight"), &[rows, dim])?));
        }
        let (w, scales, biases, spec) = self.take_quantized(prefix, dim, rows)?;
        if self.policy.dequantize {
            return Ok(Embedding::Dense(self.dequantized(&w, &scales, &biases, spec)?));
        }
        Ok(Embedding::Quantized { w, scales: self.cast(scales)?, biases: self.cast(biases)?, spec })
    }

    /// Like [`embedding`](Self::embedding) but `None` when the table is absent.
    pub fn embedding_opt(&mut self, prefix: &str, rows: i32, dim: i32) -> Result<Option<Embedding>> {
        if self.has(&format!("{prefix}.weight")) {
            self.embedding(prefix, rows, dim).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Rows `rows` of the [vocab, hidden] matrix `prefix` (dense or quantized) in compute
    /// dtype, without materialising the rest of it (a reranker's two lm_head rows).
    pub fn rows(&mut self, prefix: &str, vocab: i32, hidden: i32, rows: &[i32]) -> Result<Array> {
        let idx = Array::from_slice(rows, &[rows.len() as i32]);
        if self.has(&format!("{prefix}.scales")) {
            let (w, s, b, spec) = self.take_quantized(prefix, hidden, vocab)?;
            let pick = |a: &Array| a.take_axis(&idx, 0);
            let dense = ops::dequantize(pick(&w)?, pick(&s)?, &pick(&b)?, spec.group_size, spec.bits)?;
            return Ok(dense.as_dtype(self.policy.compute)?);
        }
        let w = self.take_raw(&format!("{prefix}.weight"))?;
        if w.shape() != [vocab, hidden] {
            bail!("tensor {prefix}.weight has shape {:?} but config.json implies {:?}", w.shape(), [vocab, hidden]);
        }
        let r = w.take_axis(&idx, 0)?;
        self.cast(r)
    }

    /// A quantized matrix dequantized into the compute dtype and evaluated (the packed
    /// arrays are freed once nothing else holds them).
    fn dequantized(&self, w: &Array, scales: &Array, biases: &Array, spec: QuantSpec) -> Result<Array> {
        let dense = ops::dequantize(w, scales, biases, spec.group_size, spec.bits)?.as_dtype(self.policy.compute)?;
        dense.eval()?;
        Ok(dense)
    }

    /// The packed weight, scales and biases of the quantized matrix `prefix` ([out, in]
    /// before packing) and how it was quantized (its own entry in config.json's
    /// quantization block, else the default); shapes checked against that.
    fn take_quantized(&mut self, prefix: &str, in_dim: i32, out_dim: i32) -> Result<(Array, Array, Array, QuantSpec)> {
        let (default, layers) = self.quant.as_ref().ok_or_else(|| {
            anyhow!("{prefix} is quantized ({prefix}.scales present) but config.json has no \"quantization\" block")
        })?;
        let spec = match layers.get(prefix) {
            Some(Some(spec)) => *spec,
            Some(None) => bail!("{prefix} is quantized but config.json's quantization block says it is not"),
            None => *default,
        };
        let w = self.take_raw(&format!("{prefix}.weight"))?;
        let scales = self.take_raw(&format!("{prefix}.scales"))?;
        let biases = self.take_raw(&format!("{prefix}.biases"))?;
        let packed = in_dim * spec.bits / 32;
        let groups = in_dim / spec.group_size;
        if w.dtype() != Dtype::Uint32 || w.shape() != [out_dim, packed] || in_dim % spec.group_size != 0 {
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
        Ok((w, scales, biases, spec))
    }
}
