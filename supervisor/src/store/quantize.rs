//! `quantize`: an MLX-quantized copy of a stored model, `NAME-4bit` / `NAME-8bit`.
//!
//! The supervisor never links MLX, so the work is done by `mlx-serve-worker quantize
//! --src DIR --dst DIR --bits B --group-size G` (worker/src/quantize.rs), which prints one
//! JSON line with the sizes. The worker writes into a `.quantizing-*` folder of the store;
//! metadata is added there and the folder is renamed into place, so a failed or killed
//! quantization leaves no half model.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::metadata::{self, ModelMetadata, Quantization};
use super::staging::{install, Staging};
use super::{Store, StoreError};

/// Bits and group size (MLX affine quantization supports 32, 64 and 128 per group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub bits: u8,
    pub group_size: u32,
}

impl Spec {
    pub fn new(bits: u8, group_size: u32) -> Result<Spec, StoreError> {
        if !matches!(bits, 4 | 8) {
            return Err(StoreError::Invalid(format!("bits must be 4 or 8, not {bits}")));
        }
        if !matches!(group_size, 32 | 64 | 128) {
            return Err(StoreError::Invalid(format!("group size must be 32, 64 or 128, not {group_size}")));
        }
        Ok(Spec { bits, group_size })
    }

    /// Parses `4bit`, `8bit`, `4` or `8` (the `--quantize` values).
    pub fn parse_bits(s: &str) -> Result<u8, StoreError> {
        match s.trim().trim_end_matches("bit").trim_end_matches('-') {
            "4" => Ok(4),
            "8" => Ok(8),
            _ => Err(StoreError::Invalid(format!("quantization must be 4bit or 8bit, not {s:?}"))),
        }
    }

    /// `NAME-4bit`.
    pub fn variant_name(&self, name: &str) -> String {
        format!("{name}-{}bit", self.bits)
    }
}

/// The JSON line `mlx-serve-worker quantize` prints.
#[derive(Debug, Deserialize)]
struct WorkerReport {
    original_size: u64,
    quantized_size: u64,
}

/// Quantizes the model folder `src` into the store as `name`, with metadata `base` (its
/// source fields set by the caller) plus the quantization and sizes. Returns the installed
/// folder and its metadata.
pub async fn into_store(
    store: &Store,
    worker_bin: &Path,
    src: &Path,
    name: &str,
    spec: Spec,
    base: &ModelMetadata,
) -> Result<(PathBuf, ModelMetadata), StoreError> {
    let failed = StoreError::Failed;
    if !worker_bin.is_file() {
        return Err(failed(format!(
            "quantization needs the worker binary, {} was not found (set MLX_SERVE_WORKER_BIN)",
            worker_bin.display()
        )));
    }
    let staging = Staging::create(store, &format!(".quantizing-{name}-"))?;
    let dst = staging.path.join(name);
    let out = tokio::process::Command::new(worker_bin)
        .arg("quantize")
        .arg("--src")
        .arg(src)
        .arg("--dst")
        .arg(&dst)
        .args(["--bits", &spec.bits.to_string(), "--group-size", &spec.group_size.to_string()])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| failed(format!("cannot run {}: {e}", worker_bin.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(failed(format!("quantization failed ({}): {}", out.status, stderr.trim())));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: WorkerReport = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| failed(format!("the worker printed no report: {stdout}")))?;
    let meta = ModelMetadata {
        quantization: Some(Quantization { bits: spec.bits, group_size: spec.group_size }),
        original_size: report.original_size,
        quantized_size: Some(report.quantized_size),
        created: metadata::now_rfc3339(),
        ..base.clone()
    };
    meta.write(&dst).map_err(|e| failed(format!("cannot write metadata: {e}")))?;
    let path = install(store, &dst, name)?;
    Ok((path, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(Spec::parse_bits("4bit"), Ok(4));
        assert_eq!(Spec::parse_bits("8"), Ok(8));
        assert!(Spec::parse_bits("3bit").is_err());
        assert!(Spec::new(4, 48).is_err());
        assert_eq!(Spec::new(8, 64).unwrap().variant_name("m"), "m-8bit");
    }
}
