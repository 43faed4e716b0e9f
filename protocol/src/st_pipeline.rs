//! The sentence-transformers module pipeline of a model folder: `modules.json` in order,
//! each module's own config. What the worker computes after the transformer is exactly
//! this list — pooling, then any `Dense` layers, then `Normalize` — and a module we do not
//! compute is refused by name, never skipped (a skipped Dense changes every vector).
//!
//! Module types are matched by their class name's suffix: sentence-transformers 6 moved
//! them (`sentence_transformers.models.Pooling` →
//! `sentence_transformers.sentence_transformer.modules.pooling.Pooling`,
//! `sentence_transformers.models.Dense` → `sentence_transformers.base.modules.dense.Dense`).
//!
//! Pooling configs come in two spellings (sentence_transformers/sentence_transformer/
//! modules/pooling.py, 6.2): one `pooling_mode_*` boolean per mode (before 6), or
//! `"pooling_mode": "mean"` (or a list of modes, concatenated in order).

use std::path::Path;

use serde_json::Value;

use crate::json_file::{read_json, JsonError};
use crate::pylate::{self, Colbert};
use crate::splade::{self, Splade};
use crate::st_router::{self, StaticQuery};

/// How token states become one vector (sentence-transformers' `Pooling` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's state.
    Cls,
    /// Average over the sequence's tokens.
    Mean,
    /// Per-dimension maximum over the tokens.
    Max,
    /// Sum divided by √length.
    MeanSqrtLen,
    /// Token `i` (from 1) weighted by `i` (SGPT's position-weighted mean).
    WeightedMean,
    /// The last token's state (decoder embedders).
    LastToken,
}

impl PoolingMode {
    /// The mode of a `pooling_mode` value or a `pooling_mode_*` key's suffix.
    pub fn parse(name: &str) -> Option<PoolingMode> {
        Some(match name {
            "cls" | "cls_token" => PoolingMode::Cls,
            "mean" | "mean_tokens" => PoolingMode::Mean,
            "max" | "max_tokens" => PoolingMode::Max,
            "mean_sqrt_len_tokens" => PoolingMode::MeanSqrtLen,
            "weightedmean" | "weightedmean_tokens" => PoolingMode::WeightedMean,
            "lasttoken" | "last_token" => PoolingMode::LastToken,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PoolingMode::Cls => "cls",
            PoolingMode::Mean => "mean",
            PoolingMode::Max => "max",
            PoolingMode::MeanSqrtLen => "mean_sqrt_len_tokens",
            PoolingMode::WeightedMean => "weightedmean",
            PoolingMode::LastToken => "last_token",
        }
    }
}

/// The activation after a `Dense` module's linear layer (`activation_function`, a torch
/// class name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseActivation {
    Identity,
    Tanh,
    Relu,
    Gelu,
    Sigmoid,
    Silu,
}

impl DenseActivation {
    fn parse(class: &str) -> Option<DenseActivation> {
        Some(match class.rsplit('.').next().unwrap_or("") {
            "Identity" => DenseActivation::Identity,
            "Tanh" => DenseActivation::Tanh,
            "ReLU" => DenseActivation::Relu,
            "GELU" => DenseActivation::Gelu,
            "Sigmoid" => DenseActivation::Sigmoid,
            "SiLU" => DenseActivation::Silu,
            _ => return None,
        })
    }
}

/// A `Dense` module: `activation(x · Wᵀ + b)`, weights in `<path>/model.safetensors`
/// (`linear.weight` `[out, in]`, `linear.bias`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dense {
    /// The module's folder, relative to the model folder (`2_Dense`); empty for a Stanford
    /// ColBERT checkpoint's projection, `linear.weight` in the model's own weights
    /// (`stanford_colbert.rs`).
    pub path: String,
    pub in_features: u32,
    pub out_features: u32,
    pub bias: bool,
    pub activation: DenseActivation,
}

/// What follows the transformer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    /// The `Pooling` module's mode; `None` for a SPLADE model (`splade` says how it pools).
    pub pooling: Option<PoolingMode>,
    /// A SPLADE sparse encoder's `SpladePooling` over MLM logits (`splade.rs`).
    pub splade: Option<Splade>,
    /// A PyLate ColBERT model's query/document settings (`pylate.rs`); its `dense` project
    /// every token, and each token vector is normalized.
    pub colbert: Option<Colbert>,
    /// An inference-free sparse encoder's query side (`st_router.rs`); `splade` is its
    /// document side.
    pub static_query: Option<StaticQuery>,
    /// False when the pooling excludes the prompt's tokens.
    pub include_prompt: bool,
    pub dense: Vec<Dense>,
    /// A `Normalize` module ends the pipeline.
    pub normalize: bool,
}

/// Why a pipeline cannot be computed as written.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    File(#[from] JsonError),
    #[error("sentence-transformers module {0}")]
    Refused(String),
    /// A checkpoint that has no sentence-transformers modules, refused for its own files
    /// (a Stanford ColBERT checkpoint's `artifact.metadata`).
    #[error("{0}")]
    Checkpoint(String),
}

fn refused(what: String) -> PipelineError {
    PipelineError::Refused(what)
}

/// Whether `modules.json` is a PyLate ColBERT model's: PyLate saves its own
/// `pylate.models.Dense.Dense` after the transformer, and `model_type` "ColBERT" in
/// config_sentence_transformers.json (`ColBERT._get_model_type`).
fn is_pylate(dir: &Path, list: &[Value]) -> Result<bool, PipelineError> {
    if list.iter().filter_map(|m| m.get("type").and_then(Value::as_str)).any(|t| t.starts_with("pylate.")) {
        return Ok(true);
    }
    let cfg = read_json(dir, "config_sentence_transformers.json")?;
    Ok(cfg.and_then(|c| c.get("model_type").and_then(Value::as_str).map(|t| t == "ColBERT")).unwrap_or(false))
}

/// A Dense module of a PyLate model; a refusal says whose.
fn pylate_dense(dir: &Path, path: &str) -> Result<Dense, PipelineError> {
    read_dense(dir, path).map_err(|e| match e {
        PipelineError::Refused(m) => refused(format!("{m} (PyLate ColBERT)")),
        other => other,
    })
}

/// A PyLate model's modules: the Transformer, then one or more Dense projections of every
/// token (PyLate's own, or sentence-transformers' which `ColBERT.__init__` converts to its
/// own, computing the same); nothing else.
fn read_pylate(dir: &Path, list: &[Value]) -> Result<Pipeline, PipelineError> {
    let mut dense = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        let path = m.get("path").and_then(Value::as_str).unwrap_or("");
        let class = ty.rsplit('.').next().unwrap_or("");
        let plain = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) && !path.starts_with('.');
        match (i, ty) {
            (0, _) if ty.starts_with("sentence_transformers.") && class == "Transformer" && path.is_empty() => {}
            (1.., "pylate.models.Dense.Dense") if plain && !path.is_empty() => dense.push(pylate_dense(dir, path)?),
            (1.., _) if ty.starts_with("sentence_transformers.") && class == "Dense" && plain && !path.is_empty() => {
                dense.push(pylate_dense(dir, path)?)
            }
            _ => {
                return Err(refused(format!(
                    "{ty:?} ({path}) in a PyLate ColBERT model is not supported (a Transformer, then Dense \
                     projections are)"
                )))
            }
        }
    }
    if dense.is_empty() {
        return Err(refused("PyLate ColBERT: no Dense projection after the Transformer".into()));
    }
    let colbert = pylate::read(dir)?;
    Ok(Pipeline {
        pooling: None,
        splade: None,
        colbert: Some(colbert),
        static_query: None,
        include_prompt: true,
        dense,
        normalize: true,
    })
}

/// The pipeline of the folder, or `None` when it has no `modules.json`.
pub fn read(dir: &Path) -> Result<Option<Pipeline>, PipelineError> {
    let Some(modules) = read_json(dir, "modules.json")? else { return Ok(None) };
    let list = modules.as_array().ok_or_else(|| refused("list: modules.json is not a JSON list".into()))?;
    if is_pylate(dir, list)? {
        return read_pylate(dir, list).map(Some);
    }
    if let [only] = list.as_slice() {
        let ty = only.get("type").and_then(Value::as_str).unwrap_or("");
        let path = only.get("path").and_then(Value::as_str).unwrap_or("");
        if ty.starts_with("sentence_transformers.") && ty.ends_with(".Router") && path.is_empty() {
            let router = st_router::read(dir)?;
            return Ok(Some(Pipeline {
                pooling: None,
                splade: Some(router.splade),
                colbert: None,
                static_query: Some(router.query),
                include_prompt: true,
                dense: Vec::new(),
                normalize: false,
            }));
        }
    }
    let mut pooling = None;
    let mut dense = Vec::new();
    let mut normalize = false;
    let mut splade = None;
    // The first module gives MLM logits (a SPLADE model), not hidden states.
    let mut mlm = false;
    for (i, m) in list.iter().enumerate() {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        let path = m.get("path").and_then(Value::as_str).unwrap_or("").to_owned();
        let class = ty.rsplit('.').next().unwrap_or("");
        // sentence-transformers imports a type outside its own package from the repo's
        // Python files (trust_remote_code): custom code whatever the class is called
        // (jina-embeddings-v3's `custom_st.Transformer` picks LoRA adapters per task).
        if !ty.starts_with("sentence_transformers.") {
            return Err(refused(format!(
                "{ty:?} ({path}) is custom code, not a sentence_transformers module; it is never run"
            )));
        }
        if normalize {
            return Err(refused(format!("{class} ({path}) after Normalize is not supported")));
        }
        // A module folder is one plain name inside the model folder (never `..`).
        let plain = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) && !path.starts_with('.');
        if !plain {
            return Err(refused(format!("{class}: path {path:?} is not a folder name")));
        }
        match (i, class) {
            (0, "Transformer" | "MLMTransformer") if path.is_empty() => {
                mlm = class == "MLMTransformer" || splade::transformer_task_is_fill_mask(dir)?;
            }
            (0, "Transformer" | "MLMTransformer") => {
                return Err(refused(format!("{class} in the subfolder {path:?} is not supported")));
            }
            // A Router is served alone (opensearch's inference-free models: `st_router.rs`).
            (_, "Router" | "SparseStaticEmbedding") => {
                return Err(refused(format!(
                    "{class} ({path}) is supported only as a Router alone in modules.json, at the root"
                )));
            }
            (_, "SpladePooling") if !mlm => {
                return Err(refused(format!(
                    "SpladePooling ({path}) after a Transformer that gives hidden states, not MLM logits"
                )));
            }
            (_, "SpladePooling") if splade.is_none() && pooling.is_none() => {
                splade = Some(splade::read_pooling(dir, &path)?)
            }
            (_, _) if mlm && splade.is_none() => {
                return Err(refused(format!(
                    "{ty:?} ({path}) after a masked-language-model Transformer (only SpladePooling is supported)"
                )));
            }
            (0, _) => return Err(refused(format!("{ty:?} as the first module is not supported (a Transformer is)"))),
            (_, "Pooling") if pooling.is_none() => pooling = Some(read_pooling(dir, &path)?),
            (_, "Dense") if pooling.is_some() => dense.push(read_dense(dir, &path)?),
            (_, "Normalize") if pooling.is_some() => normalize = true,
            _ => return Err(refused(format!("{ty:?} ({path}) is not supported here"))),
        }
    }
    if splade.is_some() {
        if !dense.is_empty() || normalize || pooling.is_some() {
            return Err(refused("after SpladePooling: no further modules are supported".into()));
        }
        return Ok(Some(Pipeline {
            pooling: None,
            splade,
            colbert: None,
            static_query: None,
            include_prompt: true,
            dense,
            normalize,
        }));
    }
    let Some((pooling, include_prompt)) = pooling else {
        return Err(refused("Pooling: modules.json has none".into()));
    };
    Ok(Some(Pipeline {
        pooling: Some(pooling),
        splade: None,
        colbert: None,
        static_query: None,
        include_prompt,
        dense,
        normalize,
    }))
}

fn read_pooling(dir: &Path, path: &str) -> Result<(PoolingMode, bool), PipelineError> {
    let Some(c) = read_json(dir, &format!("{path}/config.json"))? else {
        return Err(refused(format!("Pooling ({path}) has no config.json")));
    };
    let include_prompt = c.get("include_prompt").and_then(Value::as_bool).unwrap_or(true);
    let modes: Vec<String> = match c.get("pooling_mode") {
        Some(Value::String(m)) => vec![m.clone()],
        Some(Value::Array(list)) => list.iter().map(|m| m.as_str().unwrap_or("?").to_owned()).collect(),
        Some(other) => return Err(refused(format!("Pooling: pooling_mode {other} is not a mode name"))),
        None => c
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| k.starts_with("pooling_mode_") && v.as_bool() == Some(true))
            .map(|(k, _)| k["pooling_mode_".len()..].to_owned())
            .collect(),
    };
    match modes.as_slice() {
        [one] => match PoolingMode::parse(one) {
            Some(mode) => Ok((mode, include_prompt)),
            None => Err(refused(format!("Pooling: mode {one:?} is not supported"))),
        },
        [] => Err(refused(format!("Pooling ({path}): no pooling mode is set"))),
        many => Err(refused(format!("Pooling: several modes at once ({}) are not supported", many.join(" + ")))),
    }
}

fn read_dense(dir: &Path, path: &str) -> Result<Dense, PipelineError> {
    let Some(c) = read_json(dir, &format!("{path}/config.json"))? else {
        return Err(refused(format!("Dense ({path}) has no config.json")));
    };
    let size = |key: &str| -> Result<u32, PipelineError> {
        c.get(key)
            .and_then(Value::as_u64)
            .filter(|&n| n > 0 && n <= u32::MAX as u64)
            .map(|n| n as u32)
            .ok_or_else(|| refused(format!("Dense ({path}): {key} is missing or out of range")))
    };
    // Variants that change what the module computes (base/modules/dense.py, 6.2): a residual
    // connection, or a Dense applied to another feature than the pooled sentence vector
    // (token embeddings: a multi-vector model).
    if c.get("use_residual").and_then(Value::as_bool) == Some(true) {
        return Err(refused(format!("Dense ({path}): use_residual true is not supported")));
    }
    for key in ["module_input_name", "module_output_name"] {
        match c.get(key).and_then(Value::as_str) {
            None | Some("sentence_embedding") => {}
            Some(other) => return Err(refused(format!("Dense ({path}): {key} {other:?} is not supported"))),
        }
    }
    // sentence-transformers' default is Tanh when the key is absent (Dense.__init__).
    let class = c.get("activation_function").and_then(Value::as_str).unwrap_or("torch.nn.modules.activation.Tanh");
    let activation = DenseActivation::parse(class)
        .ok_or_else(|| refused(format!("Dense ({path}): activation_function {class:?} is not supported")))?;
    Ok(Dense {
        path: path.to_owned(),
        in_features: size("in_features")?,
        out_features: size("out_features")?,
        bias: c.get("bias").and_then(Value::as_bool).unwrap_or(true),
        activation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(modules: Value, files: &[(&str, Value)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.json"), modules.to_string()).unwrap();
        for (path, v) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v.to_string()).unwrap();
        }
        dir
    }

    fn module(ty: &str, path: &str) -> Value {
        serde_json::json!({"type": ty, "path": path})
    }

    #[test]
    fn labse_style_pipeline_with_dense_and_both_spellings() {
        let dir = folder(
            serde_json::json!([
                module("sentence_transformers.models.Transformer", ""),
                module("sentence_transformers.models.Pooling", "1_Pooling"),
                module("sentence_transformers.base.modules.dense.Dense", "2_Dense"),
                module("sentence_transformers.models.Normalize", "3_Normalize"),
            ]),
            &[
                (
                    "1_Pooling/config.json",
                    serde_json::json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}),
                ),
                (
                    "2_Dense/config.json",
                    serde_json::json!({"in_features": 8, "out_features": 4, "bias": true,
                    "activation_function": "torch.nn.modules.activation.Tanh"}),
                ),
            ],
        );
        let p = read(dir.path()).unwrap().unwrap();
        assert_eq!(p.pooling, Some(PoolingMode::Cls));
        assert!(p.normalize && p.include_prompt);
        assert_eq!(p.dense.len(), 1);
        assert_eq!(
            (p.dense[0].in_features, p.dense[0].out_features, p.dense[0].activation),
            (8, 4, DenseActivation::Tanh)
        );
    }

    #[test]
    fn every_pooling_mode_in_both_spellings() {
        for (key, mode) in [
            ("cls_token", PoolingMode::Cls),
            ("mean_tokens", PoolingMode::Mean),
            ("max_tokens", PoolingMode::Max),
            ("mean_sqrt_len_tokens", PoolingMode::MeanSqrtLen),
            ("weightedmean_tokens", PoolingMode::WeightedMean),
            ("lasttoken", PoolingMode::LastToken),
        ] {
            let mods = serde_json::json!([
                module("sentence_transformers.models.Transformer", ""),
                module("sentence_transformers.models.Pooling", "1_Pooling"),
            ]);
            let old = folder(
                mods.clone(),
                &[("1_Pooling/config.json", serde_json::json!({format!("pooling_mode_{key}"): true}))],
            );
            assert_eq!(read(old.path()).unwrap().unwrap().pooling, Some(mode), "{key}");
            let new = folder(mods, &[("1_Pooling/config.json", serde_json::json!({"pooling_mode": mode.as_str()}))]);
            assert_eq!(read(new.path()).unwrap().unwrap().pooling, Some(mode), "{key}");
        }
    }

    #[test]
    fn what_is_not_computed_is_refused_by_name() {
        let t = module("sentence_transformers.models.Transformer", "");
        let p = module("sentence_transformers.models.Pooling", "1_Pooling");
        let pool = ("1_Pooling/config.json", serde_json::json!({"pooling_mode": "mean"}));
        for (mods, files, needle) in [
            (
                serde_json::json!([t, p, module("sentence_transformers.models.LayerNorm", "2_LayerNorm")]),
                vec![pool.clone()],
                "LayerNorm",
            ),
            (
                serde_json::json!([t, p]),
                vec![("1_Pooling/config.json", serde_json::json!({"pooling_mode": ["cls", "mean"]}))],
                "several modes",
            ),
            (
                serde_json::json!([t, p, module("sentence_transformers.models.Dense", "2_Dense")]),
                vec![
                    pool.clone(),
                    (
                        "2_Dense/config.json",
                        serde_json::json!({"in_features": 4, "out_features": 4, "activation_function": "my.Custom"}),
                    ),
                ],
                "my.Custom",
            ),
            (
                serde_json::json!([t, module("sentence_transformers.models.Normalize", "n"), p]),
                vec![pool.clone()],
                "Normalize",
            ),
            (serde_json::json!([t]), vec![], "Pooling"),
            (
                serde_json::json!([t, p, module("sentence_transformers.models.Dense", "2_Dense")]),
                vec![
                    pool.clone(),
                    (
                        "2_Dense/config.json",
                        serde_json::json!({"in_features": 4, "out_features": 4, "use_residual": true}),
                    ),
                ],
                "use_residual",
            ),
            (
                serde_json::json!([t, p, module("sentence_transformers.models.Dense", "2_Dense")]),
                vec![
                    pool.clone(),
                    (
                        "2_Dense/config.json",
                        serde_json::json!({"in_features": 4, "out_features": 4, "module_input_name": "token_embeddings"}),
                    ),
                ],
                "token_embeddings",
            ),
            (
                serde_json::json!([module("sentence_transformers.models.Transformer", "0_Transformer"), p]),
                vec![pool.clone()],
                "subfolder",
            ),
            // jina-embeddings-v3's modules.json: its own Transformer class, named like ours.
            (serde_json::json!([module("custom_st.Transformer", ""), p]), vec![pool.clone()], "custom_st.Transformer"),
            (serde_json::json!([t, module("my_pooling.Pooling", "1_Pooling")]), vec![pool], "custom code"),
        ] {
            let dir = folder(mods, &files);
            let err = read(dir.path()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should name {needle}");
        }
    }
}
