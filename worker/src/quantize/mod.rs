//! `mlx-serve-worker quantize`: an MLX-quantized copy of a model folder, and optionally its
//! quality measured against the original.
//!
//! Matrices become MLX affine quantization (per group of `group_size` inputs:
//! `w ≈ scale * q + bias`, `q` packed into uint32): `<name>.weight` (uint32),
//! `<name>.scales`, `<name>.biases` (the checkpoint's float dtype); a layer's own
//! `<name>.bias` stays. `plan.rs` decides per tensor (which matrices, how many bits, what
//! stays unquantized and why). config.json gets mlx-lm's `"quantization"` block: the base
//! `group_size`/`bits`/`mode` plus an entry per layer quantized otherwise (mlx_lm/utils.py,
//! `quantize_model`), which is how the loader (`weights.rs`) reads it back.
//!
//! With `--eval FILE` (a token set the supervisor made, `mlx_serve_protocol::quantization`)
//! `quality.rs` runs the original and the copy on it before the copy is moved into place.
//!
//! The copy is built in a temporary folder next to `dst` and renamed into place, so a
//! crash never leaves a half-written model where the supervisor would look for one.

pub mod plan;
pub mod quality;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use mlx_rs::{ops, Array, Dtype};
use mlx_serve_protocol::architectures::Judge;
use mlx_serve_protocol::model_dir;
use mlx_serve_protocol::model_files;
use mlx_serve_protocol::quantization::{EvalSet, KeptGroup, QuantizationDetails, QuantizeReport, QuantizedGroup};
use serde_json::Value;

use crate::heads::{judge_ids, YES_NO_IDS, YES_NO_ROWS};
use crate::weights::{check_safetensors, dtype_name, safetensors_files, QuantSpec};
use plan::{Decision, Override, Plan, Recipe};

/// What to make.
#[derive(Debug, Clone)]
pub struct Options {
    pub bits: i32,
    pub group_size: i32,
    /// `None`: [`Recipe::default_for`] the bits.
    pub recipe: Option<Recipe>,
    pub overrides: Vec<Override>,
    /// Token set to measure quality on.
    pub eval: Option<PathBuf>,
}

/// Copies everything but the network's weights: files of any weight format at the top
/// (`model_files::is_weight_file`) are replaced by the quantized safetensors, and pickle files
/// are never carried along. A sentence-transformers module's own safetensors (a `Dense`
/// module's `2_Dense/model.safetensors`) are copied as they are: the pipeline computes them
/// unquantized after pooling.
fn copy_tree(src: &Path, dst: &Path, top: bool) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let from = entry.path();
        let dropped_weights = model_files::is_weight_file(&name) && (top || !name.ends_with(".safetensors"));
        if name.starts_with('.') || dropped_weights || name == "onnx" || name == "openvino" {
            continue;
        }
        if from.is_dir() {
            copy_tree(&from, &dst.join(&name), false)?;
        } else {
            std::fs::copy(&from, dst.join(&name)).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::Float16 | Dtype::Float32 | Dtype::Bfloat16 | Dtype::Float64)
}

/// Every tensor of the checkpoint by name (MLX loads lazily: data is read when written).
fn load_all(src: &Path) -> Result<(BTreeMap<String, Array>, u64)> {
    let mut all = BTreeMap::new();
    let mut size = 0;
    for file in safetensors_files(src)? {
        check_safetensors(&file)?;
        size += file_size(&file);
        let tensors = Array::load_safetensors(&file).with_context(|| format!("loading {}", file.display()))?;
        all.extend(tensors);
    }
    Ok((all, size))
}

/// The quantized tensors and what was done, per [`Plan`].
struct Converted {
    tensors: Vec<(String, Array)>,
    details: QuantizationDetails,
    /// config.json's per-layer entries (layers quantized otherwise than the base).
    layer_entries: serde_json::Map<String, Value>,
}

fn convert(src: &Path, tensors: &BTreeMap<String, Array>, plan: &Plan, judge: Option<&Judge>) -> Result<Converted> {
    let mut out: Vec<(String, Array)> = Vec::new();
    let mut quantized: BTreeMap<(i32, i32), Vec<String>> = BTreeMap::new();
    let mut kept: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut layer_entries = serde_json::Map::new();
    let mut scales_dtype = None;
    for (name, t) in tensors {
        match plan.decide(name, t.shape(), is_float(t.dtype())) {
            Decision::Quantize(spec) => {
                let (w, scales, biases) = ops::quantize(t, spec.group_size, spec.bits)
                    .with_context(|| format!("quantizing {name} ({:?}) to {} bits", t.shape(), spec.bits))?;
                scales_dtype.get_or_insert(scales.dtype());
                let stem = name.strip_suffix(".weight").unwrap_or(name);
                out.push((format!("{stem}.weight"), w));
                out.push((format!("{stem}.scales"), scales));
                out.push((format!("{stem}.biases"), biases));
                if spec != plan.base {
                    layer_entries
                        .insert(stem.to_owned(), serde_json::json!({"group_size": spec.group_size, "bits": spec.bits}));
                }
                quantized.entry((spec.bits, spec.group_size)).or_default().push(name.clone());
            }
            Decision::Keep(why) => {
                out.push((name.clone(), t.clone()));
                kept.entry(why).or_default().push(name.clone());
            }
            Decision::Drop => {}
        }
    }
    if plan.yes_no {
        // The rows the reranker scores with: of the untied lm_head when there is one, else
        // of the (tied) input embeddings, taken before quantization.
        let judge = judge.ok_or_else(|| anyhow!("a causal-LM reranker without a judge"))?;
        let ids = judge_ids(src, judge)?;
        let table = ["lm_head.weight", "model.embed_tokens.weight", "embed_tokens.weight"]
            .iter()
            .find_map(|n| tensors.get(*n).map(|t| (*n, t)));
        let Some((table_name, table)) = table else {
            bail!("causal-LM reranker without lm_head or embed_tokens weights")
        };
        let rows = table.take_axis(Array::from_slice(&ids, &[2]), 0)?;
        out.push((YES_NO_ROWS.to_owned(), rows));
        out.push((YES_NO_IDS.to_owned(), Array::from_slice(&ids, &[2])));
        let why = format!(
            "the rows of {:?} and {:?} of {table_name}: all a {} reranker's score reads, kept exact{}",
            judge.yes,
            judge.no,
            judge.name,
            if table_name == "lm_head.weight" { "; the rest of the untied lm_head is not stored" } else { "" }
        );
        kept.entry(why).or_default().push(YES_NO_ROWS.to_owned());
    }
    let float = tensors.values().map(|t| t.dtype()).find(|d| is_float(*d)).unwrap_or(Dtype::Float32);
    let details = QuantizationDetails {
        method: "mlx-affine".into(),
        recipe: plan.recipe.as_str().into(),
        note: plan.note(),
        bits: plan.base.bits as u8,
        group_size: plan.base.group_size as u32,
        scales_dtype: dtype_name(scales_dtype.unwrap_or(float)).into(),
        quantized: quantized
            .into_iter()
            .rev()
            .map(|((bits, group_size), tensors)| QuantizedGroup {
                bits: bits as u8,
                group_size: group_size as u32,
                tensors,
            })
            .collect(),
        kept: kept.into_iter().map(|(why, tensors)| KeptGroup { why, tensors }).collect(),
    };
    Ok(Converted { tensors: out, details, layer_entries })
}

pub fn run(src: &Path, dst: &Path, opts: &Options) -> Result<QuantizeReport> {
    let base = QuantSpec { group_size: opts.group_size, bits: opts.bits };
    base.check()?;
    if dst.exists() {
        bail!("{} already exists; remove it or choose another destination", dst.display());
    }
    let config_path = src.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let mut config: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    if config.get("quantization").is_some_and(|q| !q.is_null()) {
        bail!("{} is already quantized", src.display());
    }
    let facts = model_dir::inspect(src).map_err(|e| anyhow!(e))?;
    if facts.pooling == model_dir::Pooling::Splade {
        // Its decoder is the word-embedding table over the whole vocabulary: quantizing that
        // table changes every sparse weight, and the quality check measures dense vectors.
        bail!(
            "quantizing a SPLADE model is not supported: its masked-language-model head reads the word \
             embeddings as its decoder, and no quantization plan covers it; serve it unquantized"
        );
    }
    if facts.pooling == model_dir::Pooling::Colbert {
        // Its quality check would measure dense vectors; a ColBERT model gives token vectors.
        bail!(
            "quantizing a PyLate ColBERT model is not supported: the quantization quality check measures \
             pooled vectors and this model gives one vector per token; serve it unquantized"
        );
    }
    if model_dir::config_u32(&facts.config, "num_experts").is_some_and(|n| n > 0) {
        // nomic-embed-text-v2-moe's experts are two packed [experts * ffn, hidden] blocks per
        // block, w2 applied untransposed; no plan here quantizes them (docs/quantization.md).
        bail!(
            "quantizing a mixture-of-experts model (num_experts) is not supported: its experts are stored as packed \
             blocks (experts.mlp.w1/w2) that no quantization plan covers; serve it unquantized"
        );
    }
    let eval: Option<EvalSet> = match &opts.eval {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("{}: not an evaluation set", p.display()))?)
        }
        None => None,
    };
    let recipe = opts.recipe.unwrap_or_else(|| Recipe::default_for(opts.bits));

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
    let result = (|| -> Result<QuantizeReport> {
        copy_tree(src, &tmp, true)?;
        let (tensors, original_size) = load_all(src)?;
        let plan = Plan::new(
            &facts,
            base,
            recipe,
            opts.overrides.clone(),
            tensors.iter().map(|(n, t)| (n.as_str(), t.shape())),
        );
        let judge = facts.family.judge().filter(|_| facts.pooling == model_dir::Pooling::YesNo);
        let converted = convert(src, &tensors, &plan, judge)?;
        drop(tensors);
        let target = tmp.join("model.safetensors");
        let metadata = HashMap::from([("format".to_string(), "mlx".to_string())]);
        Array::save_safetensors(converted.tensors.iter().map(|(n, a)| (n.as_str(), a)), &metadata, &target)
            .with_context(|| format!("writing {}", target.display()))?;
        drop(converted.tensors);
        let mut block = serde_json::json!({ "group_size": base.group_size, "bits": base.bits, "mode": "affine" });
        block.as_object_mut().unwrap().extend(converted.layer_entries);
        config["quantization"] = block;
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)? + "\n")?;
        let quality = match &eval {
            Some(set) => Some(quality::measure(src, &tmp, set).context("measuring the quantized model's quality")?),
            None => None,
        };
        Ok(QuantizeReport { original_size, quantized_size: file_size(&target), details: converted.details, quality })
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
