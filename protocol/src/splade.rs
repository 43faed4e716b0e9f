//! SPLADE sparse encoders, as sentence-transformers' `SparseEncoder` runs them
//! (sentence_transformers/sparse_encoder/, 6.2): a masked-language model's logits over the
//! vocabulary per token (`MLMTransformer`, or a `Transformer` with `transformer_task`
//! "fill-mask"), then `SpladePooling` (`modules/splade_pooling.py`):
//!
//! - `relu(logits)`, then `log1p`; with `activation_function` "log1p_relu" (opensearch's
//!   v3 models) a second `log1p`;
//! - per sequence the maximum (`pooling_strategy` "max", SPLADE v2 and later) or the sum
//!   ("sum", the original SPLADE) over its tokens;
//! - then, when the model's `max_active_dims` is set (config_sentence_transformers.json,
//!   `SparseEncoder._parse_model_config`), only that many largest weights are kept
//!   (`util.select_max_active_dims`).
//!
//! The result is one weight per vocabulary id; ids whose weight is 0 are not returned.
//! Anything else in these files is refused by name (see [`read_pooling`]).

use std::path::Path;

use serde_json::Value;

use crate::json_file::read_json;
use crate::st_pipeline::PipelineError;

/// How the per-token weights of one sequence become one weight per vocabulary id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpladeStrategy {
    Max,
    Sum,
}

/// What is applied to the logits before pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpladeActivation {
    /// `log1p(relu(x))`.
    Relu,
    /// `log1p(log1p(relu(x)))`.
    Log1pRelu,
}

/// A SPLADE head: what `SpladePooling` and the model's `max_active_dims` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Splade {
    pub strategy: SpladeStrategy,
    pub activation: SpladeActivation,
    /// Keep only this many largest weights per text.
    pub max_active_dims: Option<u32>,
    /// `embedding_dimension` (or its old name `word_embedding_dimension`) when the config
    /// sets it: must be the vocabulary size (checked against config.json by the caller).
    pub dimension: Option<u32>,
}

fn refused(what: String) -> PipelineError {
    PipelineError::Refused(what)
}

/// The `SpladePooling` module in `path`, with the folder's `max_active_dims`.
pub fn read_pooling(dir: &Path, path: &str) -> Result<Splade, PipelineError> {
    let c = read_json(dir, &format!("{path}/config.json"))?.unwrap_or(Value::Object(Default::default()));
    let Some(map) = c.as_object() else {
        return Err(refused(format!("SpladePooling ({path}): config.json is not an object")));
    };
    let mut splade = Splade {
        strategy: SpladeStrategy::Max,
        activation: SpladeActivation::Relu,
        max_active_dims: None,
        dimension: None,
    };
    for (key, v) in map {
        match key.as_str() {
            "pooling_strategy" => {
                splade.strategy = match v.as_str() {
                    Some("max") => SpladeStrategy::Max,
                    Some("sum") => SpladeStrategy::Sum,
                    _ => {
                        return Err(refused(format!("SpladePooling: pooling_strategy {v} is not supported (max, sum)")))
                    }
                }
            }
            "activation_function" => {
                splade.activation = match v.as_str() {
                    Some("relu") => SpladeActivation::Relu,
                    Some("log1p_relu") => SpladeActivation::Log1pRelu,
                    _ => {
                        return Err(refused(format!(
                            "SpladePooling: activation_function {v} is not supported (relu, log1p_relu)"
                        )))
                    }
                }
            }
            "embedding_dimension" | "word_embedding_dimension" => {
                splade.dimension = match v {
                    Value::Null => None,
                    v => Some(
                        v.as_u64()
                            .filter(|&n| n > 0 && n <= u32::MAX as u64)
                            .ok_or_else(|| refused(format!("SpladePooling: {key} {v} is not a positive integer")))?
                            as u32,
                    ),
                }
            }
            // Splits the pooling over the sequence to bound memory; the result is the same.
            "chunk_size" => {}
            other => return Err(refused(format!("SpladePooling: config key {other:?} is not supported"))),
        }
    }
    splade.max_active_dims = max_active_dims(dir)?;
    Ok(splade)
}

/// `max_active_dims` of config_sentence_transformers.json, when set.
fn max_active_dims(dir: &Path) -> Result<Option<u32>, PipelineError> {
    let Some(c) = read_json(dir, "config_sentence_transformers.json")? else { return Ok(None) };
    match c.get("max_active_dims") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().filter(|&n| n > 0 && n <= u32::MAX as u64).map(|n| Some(n as u32)).ok_or_else(|| {
            refused(format!("config_sentence_transformers.json: max_active_dims {v} is not a positive integer"))
        }),
    }
}

/// Whether the first module computes MLM logits: `MLMTransformer`, or a `Transformer` whose
/// sentence_bert_config.json says `transformer_task` "fill-mask" (sentence-transformers 6's
/// save of a SPLADE model).
pub fn transformer_task_is_fill_mask(dir: &Path) -> Result<bool, PipelineError> {
    let task = read_json(dir, "sentence_bert_config.json")?
        .and_then(|c| c.get("transformer_task").and_then(Value::as_str).map(str::to_owned));
    // Other tasks are the dense pipeline's business (as before SPLADE was read here).
    Ok(task.as_deref() == Some("fill-mask"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(pooling: Value, st: Option<Value>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("1_SpladePooling")).unwrap();
        std::fs::write(dir.path().join("1_SpladePooling/config.json"), pooling.to_string()).unwrap();
        if let Some(st) = st {
            std::fs::write(dir.path().join("config_sentence_transformers.json"), st.to_string()).unwrap();
        }
        dir
    }

    #[test]
    fn hub_configs_are_read() {
        // naver/splade-v3's 1_SpladePooling/config.json.
        let d = folder(
            serde_json::json!({"pooling_strategy": "max", "activation_function": "relu", "word_embedding_dimension": 30522}),
            None,
        );
        let s = read_pooling(d.path(), "1_SpladePooling").unwrap();
        assert_eq!(
            s,
            Splade {
                strategy: SpladeStrategy::Max,
                activation: SpladeActivation::Relu,
                max_active_dims: None,
                dimension: Some(30522)
            }
        );
        let d = folder(
            serde_json::json!({"pooling_strategy": "sum", "activation_function": "log1p_relu", "embedding_dimension": null}),
            Some(serde_json::json!({"max_active_dims": 64})),
        );
        let s = read_pooling(d.path(), "1_SpladePooling").unwrap();
        assert_eq!(
            (s.strategy, s.activation, s.max_active_dims),
            (SpladeStrategy::Sum, SpladeActivation::Log1pRelu, Some(64))
        );
    }

    #[test]
    fn what_is_not_computed_is_refused_by_name() {
        for (pooling, st, needle) in [
            (serde_json::json!({"pooling_strategy": "mean"}), None, "pooling_strategy"),
            (serde_json::json!({"activation_function": "gelu"}), None, "activation_function"),
            (serde_json::json!({"temperature": 2}), None, "temperature"),
            (serde_json::json!({"embedding_dimension": -1}), None, "embedding_dimension"),
            (serde_json::json!({}), Some(serde_json::json!({"max_active_dims": 0})), "max_active_dims"),
        ] {
            let d = folder(pooling, st);
            let err = read_pooling(d.path(), "1_SpladePooling").unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should name {needle}");
        }
    }
}
