//! Facts about a model folder in Hugging Face layout, read from its small JSON files.
//!
//! Both binaries need them: the supervisor to list, route and tokenize before any worker
//! exists, the worker to build the right network. Keeping the rules here means they agree.
//!
//! Files read (all optional except config.json):
//! - `config.json`: `model_type`, `architectures`, sizes, `max_position_embeddings`.
//! - `modules.json` + `<pooling dir>/config.json` (sentence-transformers): pooling mode;
//!   a `...Normalize` module means L2-normalized output. Module types are matched by class
//!   name: sentence-transformers 6 moved them (`sentence_transformers.models.Pooling` →
//!   `sentence_transformers.sentence_transformer.modules.pooling.Pooling`).
//! - `sentence_bert_config.json`: `max_seq_length`, which wins over the tokenizer's limit
//!   (that is what sentence-transformers truncates at).
//! - `tokenizer_config.json`: `model_max_length` when the above is absent.
//! - `mlx-serve.json`: our metadata; its `type` overrides the detected kind.

use std::path::Path;

use serde_json::Value;

use crate::ModelKind;

/// The network implementations the worker has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    XlmRoberta,
    Qwen3,
}

impl Family {
    /// The family of a config.json `model_type`, when the worker runs it.
    pub fn of_model_type(model_type: &str) -> Option<Family> {
        match model_type {
            "bert" => Some(Family::Bert),
            "xlm-roberta" | "roberta" => Some(Family::XlmRoberta),
            "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }

    /// The `model_type`s [`Family::of_model_type`] knows, for messages.
    pub const SUPPORTED_MODEL_TYPES: &'static str = "bert, xlm-roberta, qwen3";

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::XlmRoberta => "xlm_roberta",
            Family::Qwen3 => "qwen3",
        }
    }
}

/// How token states become one vector (embeddings) or how a pair is scored (rerankers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Cls,
    Mean,
    LastToken,
    /// `*ForSequenceClassification` head, sigmoid of the single logit.
    CrossEncoder,
    /// Causal LM judged by P("yes") vs "no" at the last position (Qwen3-Reranker).
    YesNo,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::LastToken => "last_token",
            Pooling::CrossEncoder => "cross_encoder",
            Pooling::YesNo => "yes_no",
        }
    }
}

/// What the JSON files of a model folder say.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    pub kind: ModelKind,
    pub family: Family,
    /// `architectures[0]` from config.json (or the model_type when absent).
    pub architecture: String,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Most tokens of one sequence, special tokens included.
    pub max_tokens: u32,
    pub hidden_size: u32,
    pub vocab_size: u32,
    /// The full config.json, for the architecture code.
    pub config: Value,
}

/// Upper bound on `max_tokens` when the files give no tighter one (Qwen3 configs declare
/// 32k–40k positions; a single sequence that long is never what an embedding user wants
/// by default, and the limit is a config value in the supervisor anyway).
pub const DEFAULT_MAX_TOKENS_CAP: u32 = 8192;

fn read_json(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map(Some).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn get_u32(v: &Value, key: &str) -> Option<u32> {
    v.get(key).and_then(Value::as_u64).map(|n| n.min(u32::MAX as u64) as u32)
}

/// Reads the facts of the model in `dir`.
pub fn inspect(dir: &Path) -> Result<ModelFacts, String> {
    let config = read_json(&dir.join("config.json"))?.ok_or_else(|| format!("{} has no config.json", dir.display()))?;
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("");
    let architectures: Vec<String> = config
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let architecture = architectures.first().cloned().unwrap_or_else(|| model_type.to_owned());
    let family = Family::of_model_type(model_type).ok_or_else(|| {
        format!(
            "unsupported architecture: model_type {model_type:?} ({architecture}); supported: {}",
            Family::SUPPORTED_MODEL_TYPES
        )
    })?;

    let modules = read_json(&dir.join("modules.json"))?;
    let module_path = |suffix: &str| -> Option<String> {
        modules.as_ref()?.as_array()?.iter().find_map(|m| {
            let ty = m.get("type")?.as_str()?;
            ty.ends_with(suffix).then(|| m.get("path").and_then(Value::as_str).unwrap_or("").to_owned())
        })
    };

    let metadata = read_json(&dir.join("mlx-serve.json"))?;
    let declared = metadata.as_ref().and_then(|m| m.get("type")).and_then(Value::as_str);
    let is_classifier = architectures.iter().any(|a| a.ends_with("ForSequenceClassification"));
    let kind = match declared {
        Some("embedding") => ModelKind::Embedding,
        Some("reranker") => ModelKind::Reranker,
        Some(other) => return Err(format!("mlx-serve.json: unknown type {other:?}")),
        // A causal LM without sentence-transformers pooling is a Qwen3-Reranker-style judge.
        None if is_classifier
            || (family == Family::Qwen3
                && modules.is_none()
                && architectures.iter().any(|a| a.ends_with("ForCausalLM"))) =>
        {
            ModelKind::Reranker
        }
        None => ModelKind::Embedding,
    };

    let (pooling, normalize) = match kind {
        ModelKind::Reranker if family == Family::Qwen3 => (Pooling::YesNo, false),
        ModelKind::Reranker => {
            if !is_classifier {
                return Err(format!("{architecture} has no sequence-classification head to rerank with"));
            }
            (Pooling::CrossEncoder, false)
        }
        ModelKind::Embedding => {
            let from_st = match module_path(".Pooling") {
                Some(p) => read_json(&dir.join(p).join("config.json"))?.map(|c| {
                    let on = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
                    // sentence-transformers >= 6 writes {"pooling_mode": "mean"}; older
                    // versions one boolean flag per mode.
                    let mode = c.get("pooling_mode").and_then(Value::as_str).unwrap_or("");
                    if mode == "lasttoken" || mode == "last_token" {
                        Pooling::LastToken
                    } else if mode == "cls" {
                        Pooling::Cls
                    } else if mode == "mean" {
                        Pooling::Mean
                    } else if on("pooling_mode_lasttoken") {
                        Pooling::LastToken
                    } else if on("pooling_mode_cls_token") {
                        Pooling::Cls
                    } else if on("pooling_mode_mean_tokens") {
                        Pooling::Mean
                    } else {
                        // max / weighted-mean pooling are not implemented; mean is the nearest.
                        Pooling::Mean
                    }
                }),
                None => None,
            };
            let default = if family == Family::Qwen3 { Pooling::LastToken } else { Pooling::Cls };
            let normalize = match modules {
                Some(_) => module_path(".Normalize").is_some(),
                None => true,
            };
            (from_st.unwrap_or(default), normalize)
        }
    };

    // Position table size; XLM-R reserves padding_idx + 1 slots before the first position.
    let positions = get_u32(&config, "max_position_embeddings").unwrap_or(512);
    let usable = match family {
        Family::XlmRoberta => positions.saturating_sub(get_u32(&config, "pad_token_id").unwrap_or(1) + 1),
        _ => positions,
    };
    let st_limit = read_json(&dir.join("sentence_bert_config.json"))?.and_then(|c| get_u32(&c, "max_seq_length"));
    let tok_limit = read_json(&dir.join("tokenizer_config.json"))?
        .and_then(|c| get_u32(&c, "model_max_length"))
        .filter(|&n| n < 1_000_000);
    let max_tokens = st_limit.or(tok_limit).unwrap_or(usable).min(usable).clamp(1, DEFAULT_MAX_TOKENS_CAP);

    Ok(ModelFacts {
        kind,
        family,
        architecture,
        pooling,
        normalize,
        max_tokens,
        hidden_size: get_u32(&config, "hidden_size").unwrap_or(0),
        vocab_size: get_u32(&config, "vocab_size").unwrap_or(0),
        config,
    })
}
