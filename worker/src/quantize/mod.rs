//! `mlx-serve-worker quantize`: an MLX-quantized copy of a model folder.
//!
//! Linear-layer weights become MLX affine quantization (per group of `group_size` inputs:
//! `w ≈ scale * q + bias`, `q` packed into uint32): `<layer>.weight` (uint32),
//! `<layer>.scales`, `<layer>.biases`; the layer's own `<layer>.bias` is kept. Embedding
//! tables, norms and one-row classifier outputs stay as they are: they are small, and
//! quantizing a single-logit output would cost accuracy for nothing. config.json gets
//! mlx-lm's `"quantization": {"group_size": G, "bits": B}` block, which is how the loader
//! (`weights.rs`) recognises the format.
//!
//! The copy is built in a temporary folder next to `dst` and renamed into place, so a
//! crash never leaves a half-written model where the supervisor would look for one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mlx_rs::{ops, Array};
use serde::Serialize;
use serde_json::Value;

use mlx_serve_protocol::model_files;

use crate::weights::{check_safetensors, safetensors_files, QuantSpec};

/// What the command prints (one JSON line).
#[derive(Debug, Serialize)]
pub struct Report {
    pub original_size: u64,
    pub quantized_size: u64,
    pub bits: i32,
    pub group_size: i32,
    pub quantized_tensors: usize,
    pub kept_tensors: usize,
}

/// Copies everything but weights: files of any weight format (`model_files::is_weight_file`)
/// are replaced by the quantized safetensors, and pickle files are never carried along.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let from = entry.path();
        if name.starts_with('.') || model_files::is_weight_file(&name) || name == "onnx" || name == "openvino" {
            continue;
        }
        if from.is_dir() {
            copy_tree(&from, &dst.join(&name))?;
        } else {
            std::fs::copy(&from, dst.join(&name)).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}

/// Whether tensor `name` of `shape` is a linear weight this command quantizes.
fn quantizable(name: &str, shape: &[i32], spec: QuantSpec) -> bool {
    let lower = name.to_ascii_lowercase();
    name.ends_with(".weight")
        && shape.len() == 2
        && !lower.contains("embed")
        && !lower.contains("norm")
        && shape[1] % spec.group_size == 0
        && shape[0] >= 32
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub fn run(src: &Path, dst: &Path, bits: i32, group_size: i32) -> Result<Report> {
    let spec = QuantSpec { group_size, bits };
    spec.check()?;
    if dst.exists() {
        bail!("{} already exists; remove it or choose another destination", dst.display());
    }
    let config_path = src.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let mut config: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    if config.get("quantization").is_some_and(|q| !q.is_null()) {
        bail!("{} is already quantized", src.display());
    }
    let files = safetensors_files(src)?;

    let parent = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp: PathBuf = parent.join(format!(
        ".{}.tmp-{}",
        dst.file_name().and_then(|n| n.to_str()).unwrap_or("quantized"),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let result = (|| -> Result<Report> {
        copy_tree(src, &tmp)?;
        let mut out: Vec<(String, Array)> = Vec::new();
        let (mut quantized, mut kept, mut original) = (0, 0, 0);
        for file in &files {
            check_safetensors(file)?;
            original += file_size(file);
            let tensors = Array::load_safetensors(file).with_context(|| format!("loading {}", file.display()))?;
            let mut names: Vec<_> = tensors.keys().cloned().collect();
            names.sort();
            for name in names {
                let t = &tensors[&name];
                if quantizable(&name, t.shape(), spec) {
                    let (w, scales, biases) = ops::quantize(t, group_size, bits)?;
                    let stem = name.strip_suffix(".weight").unwrap();
                    out.push((name.clone(), w));
                    out.push((format!("{stem}.scales"), scales));
                    out.push((format!("{stem}.biases"), biases));
                    quantized += 1;
                } else {
                    out.push((name.clone(), t.clone()));
                    kept += 1;
                }
            }
        }
        let target = tmp.join("model.safetensors");
        let metadata = HashMap::from([("format".to_string(), "mlx".to_string())]);
        Array::save_safetensors(out.iter().map(|(n, a)| (n.as_str(), a)), &metadata, &target)
            .with_context(|| format!("writing {}", target.display()))?;
        config["quantization"] = serde_json::json!({ "group_size": group_size, "bits": bits });
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)? + "\n")?;
        Ok(Report {
            original_size: original,
            quantized_size: file_size(&target),
            bits,
            group_size,
            quantized_tensors: quantized,
            kept_tensors: kept,
        })
    })();
    match result {
        Ok(report) => {
            std::fs::rename(&tmp, dst).with_context(|| format!("moving {} into place", dst.display()))?;
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}
