//! Facts about a model folder in Hugging Face layout, read from its small JSON files.
//!
//! Both binaries need them: the supervisor to list, route and tokenize before any worker
//! exists, the worker to build the right network. Keeping the rules here means they agree.
//!
//! Files read (all optional except config.json):
//! - `config.json`: `model_type` (its family: `architectures.rs`), `architectures`, sizes,
//!   `max_position_embeddings` (or their GPT-2 / DistilBERT spellings, [`config_u32`]).
//! - `modules.json` and its modules' configs (sentence-transformers): pooling, Dense
//!   layers, Normalize (`st_pipeline.rs`).
//! - `sentence_bert_config.json`: `max_seq_length`, which wins over the tokenizer's limit
//!   (that is what sentence-transformers truncates at).
//! - `tokenizer_config.json`: `model_max_length` when the above is absent.
//! - `artifact.metadata`: a Stanford-format ColBERT checkpoint's settings (`HF_ColBERT`
//!   without modules.json: `stanford_colbert.rs`).
//! - `mlx-serve.json`: our metadata; its `type` overrides the detected kind.

use std::path::Path;

use serde_json::Value;

use crate::architectures::Positions;
pub use crate::architectures::{Body, Family};
use crate::json_file::{get_u32, read_json, JsonError};
pub use crate::pylate::Colbert;
pub use crate::splade::Splade;
use crate::st_pipeline::{self, PipelineError};
pub use crate::st_pipeline::{Dense, DenseActivation, PoolingMode};
pub use crate::st_router::{Route, StaticQuery};
use crate::stanford_colbert;
use crate::ModelKind;

/// How token states become one vector (embeddings) or how a pair is scored (rerankers).
/// Written as its name ([`Pooling::as_str`]) wherever it is shown or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Pooling {
    /// A sentence-transformers pooling mode.
    Embed(PoolingMode),
    /// `*ForSequenceClassification` head: a reranker's sigmoid of the single logit, or a
    /// classifier's logit per label.
    CrossEncoder,
    /// Causal LM judged by P("yes") vs "no" at the last position, with its family's
    /// judge (`Family::judge`: Qwen3-Reranker, mxbai-rerank-v2).
    YesNo,
    /// A SPLADE sparse encoder: MLM logits pooled into one weight per vocabulary id
    /// ([`ModelFacts::splade`] says how); it has no dense vector.
    Splade,
    /// A PyLate ColBERT model: one projected, normalized vector per token
    /// ([`ModelFacts::colbert`] says how queries and documents are encoded); no dense vector.
    Colbert,
}

impl Pooling {
    pub const CLS: Pooling = Pooling::Embed(PoolingMode::Cls);
    pub const MEAN: Pooling = Pooling::Embed(PoolingMode::Mean);
    pub const LAST_TOKEN: Pooling = Pooling::Embed(PoolingMode::LastToken);

    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Embed(mode) => mode.as_str(),
            Pooling::CrossEncoder => "cross_encoder",
            Pooling::YesNo => "yes_no",
            Pooling::Splade => "splade",
            Pooling::Colbert => "colbert",
        }
    }

    /// The pooling named `name` ([`Pooling::as_str`], or a sentence-transformers mode name).
    pub fn parse(name: &str) -> Option<Pooling> {
        match name {
            "cross_encoder" => Some(Pooling::CrossEncoder),
            "yes_no" => Some(Pooling::YesNo),
            "splade" => Some(Pooling::Splade),
            "colbert" => Some(Pooling::Colbert),
            mode => PoolingMode::parse(mode).map(Pooling::Embed),
        }
    }

    /// An embedding's pooling when no sentence-transformers module says otherwise: a
    /// decoder's last token (it alone has seen the whole text), an encoder's CLS.
    pub fn default_for(body: Body) -> Pooling {
        match body {
            Body::Decoder => Pooling::LAST_TOKEN,
            Body::Encoder => Pooling::CLS,
        }
    }

    /// How a reranker of this body scores a pair.
    pub fn scoring_for(body: Body) -> Pooling {
        match body {
            Body::Decoder => Pooling::YesNo,
            Body::Encoder => Pooling::CrossEncoder,
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
    /// sentence-transformers `Dense` modules after pooling, in order.
    pub dense: Vec<Dense>,
    pub normalize: bool,
    /// Most tokens of one sequence, special tokens included.
    pub max_tokens: u32,
    pub hidden_size: u32,
    /// Length of an embedding: the last Dense module's output, else `hidden_size`.
    pub output_dim: u32,
    pub vocab_size: u32,
    /// Rows of the token-type (segment) table; segment ids are sent only when it has two.
    pub type_vocab_size: u32,
    /// How a SPLADE model ([`Pooling::Splade`]) pools its MLM logits.
    pub splade: Option<Splade>,
    /// How a PyLate ColBERT model ([`Pooling::Colbert`]) encodes queries and documents;
    /// `dense` are its per-token projections.
    pub colbert: Option<Colbert>,
    /// An inference-free sparse encoder's query side (opensearch's, `st_router.rs`): a
    /// static weight per token id; `splade` is its document side.
    pub static_query: Option<StaticQuery>,
    /// A classification head's labels in id order (config.json's `id2label`; `LABEL_0`
    /// when absent, transformers' name for a single-logit head).
    pub labels: Vec<String>,
    /// The full config.json, for the architecture code.
    pub config: Value,
}

impl ModelFacts {
    /// Whether the tokenizer's segment ids (0 for the query, 1 for the document of a pair)
    /// reach the network: only when the model has a token-type table with a row for each.
    pub fn uses_segment_ids(&self) -> bool {
        self.type_vocab_size >= 2
    }
}

/// Upper bound on `max_tokens` when the files give no tighter one (Qwen3 configs declare
/// 32k–40k positions; a single sequence that long is never what an embedding user wants
/// by default, and the limit is a config value in the supervisor anyway).
pub const DEFAULT_MAX_TOKENS_CAP: u32 = 8192;

/// Why a folder is not a model we run.
#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    #[error("no config.json: not a model in Hugging Face layout")]
    NoConfig,
    #[error(transparent)]
    File(#[from] JsonError),
    #[error("unsupported architecture: model_type {model_type:?} ({architecture}); supported: {supported}")]
    Architecture { model_type: String, architecture: String, supported: String },
    #[error("{architecture}: {source}")]
    Pipeline {
        architecture: String,
        #[source]
        source: PipelineError,
    },
    #[error("mlx-serve.json: unknown type {0:?}")]
    DeclaredType(String),
    #[error("{0} has no sequence-classification head to rerank with")]
    NoScoringHead(String),
    #[error("{0} has no encoder sequence-classification head to classify with")]
    NoClassificationHead(String),
    #[error("config.json: id2label {0}")]
    Labels(String),
    #[error(
        "config.json: auto_map {entry} names custom code ({class}) that mlx-serve has not implemented; it is never run"
    )]
    CustomCode { entry: String, class: String },
    #[error("{architecture}: SPLADE needs a masked-language model (`*ForMaskedLM`, its logits over the vocabulary)")]
    NotMaskedLm { architecture: String },
    #[error("{architecture}: SpladePooling's embedding_dimension {dimension} is not config.json's vocab_size {vocab}")]
    SpladeDimension { architecture: String, dimension: u32, vocab: u32 },
    #[error("{architecture}: PyLate's query/document length {length} is more than the model's {positions} positions")]
    ColbertLength { architecture: String, length: u32, positions: u32 },
    #[error("{architecture}: Dense module {path} takes {takes} inputs but gets {gets}")]
    DenseShape { architecture: String, path: String, takes: u32, gets: u32 },
}

/// A size from config.json under its transformers name, or under the names a config
/// class's `attribute_map` maps it to: GPT-2's (`n_embd`, `n_positions`; custom-code configs
/// derived from GPT2Config, nomic-embed-text's `nomic_bert`, are saved that way) and
/// DistilBERT's (`dim`, `n_heads`, `n_layers`: `DistilBertConfig.attribute_map`).
pub fn config_u32(config: &Value, key: &str) -> Option<u32> {
    let aliases: &[&str] = match key {
        "hidden_size" => &["n_embd", "dim"],
        "max_position_embeddings" => &["n_positions"],
        "num_attention_heads" => &["n_head", "n_heads"],
        "num_hidden_layers" => &["n_layer", "n_layers"],
        _ => &[],
    };
    get_u32(config, key).or_else(|| aliases.iter().find_map(|a| get_u32(config, a)))
}

/// config.json's `id2label` as a list in id order: ids must be 0..n (transformers writes
/// them as strings); `["LABEL_0"]` when absent (a single-logit head).
fn labels(config: &Value) -> Result<Vec<String>, ModelDirError> {
    let Some(map) = config.get("id2label").and_then(Value::as_object) else {
        return Ok(vec!["LABEL_0".to_owned()]);
    };
    let mut labels = vec![None; map.len()];
    for (id, label) in map {
        let i = id.parse::<usize>().ok().filter(|&i| i < labels.len());
        let (Some(i), Some(label)) = (i, label.as_str()) else {
            return Err(ModelDirError::Labels(format!(
                "entry {id:?} is not an id below {} with a string label",
                map.len()
            )));
        };
        labels[i] = Some(label.to_owned());
    }
    // Each id once below n, so every slot is filled.
    Ok(labels.into_iter().map(|l| l.unwrap_or_default()).collect())
}

/// Reads the facts of the model in `dir`.
pub fn inspect(dir: &Path) -> Result<ModelFacts, ModelDirError> {
    let config = read_json(dir, "config.json")?.ok_or(ModelDirError::NoConfig)?;
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("");
    let architectures: Vec<String> = config
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let architecture = architectures.first().cloned().unwrap_or_else(|| model_type.to_owned());
    let family = Family::of_model_type(model_type).ok_or_else(|| ModelDirError::Architecture {
        model_type: model_type.to_owned(),
        architecture: architecture.clone(),
        supported: Family::supported_model_types(),
    })?;
    let hidden_size = config_u32(&config, "hidden_size").unwrap_or(0);
    // A Stanford ColBERT checkpoint has no modules.json; PyLate reads it as a ColBERT model.
    let stanford = stanford_colbert::is_stanford(&config) && read_json(dir, "modules.json")?.is_none();
    let pipeline =
        if stanford { stanford_colbert::read(dir, &config, hidden_size).map(Some) } else { st_pipeline::read(dir) }
            .map_err(|source| ModelDirError::Pipeline { architecture: architecture.clone(), source })?;

    let metadata = read_json(dir, "mlx-serve.json")?;
    let declared = metadata.as_ref().and_then(|m| m.get("type")).and_then(Value::as_str);
    let is_classifier = architectures.iter().any(|a| a.ends_with("ForSequenceClassification"));
    let labels = labels(&config)?;
    let kind = match declared {
        Some("embedding") => ModelKind::Embedding,
        Some("reranker") => ModelKind::Reranker,
        Some("classifier") => ModelKind::Classifier,
        Some(other) => return Err(ModelDirError::DeclaredType(other.to_owned())),
        // A head with several labels classifies (TEI's `/predict`); one logit ranks.
        None if is_classifier && labels.len() > 1 => ModelKind::Classifier,
        // A causal LM without sentence-transformers pooling is a judge (its family's: docs/models.md,
        // "Causal LMs as rerankers").
        None if is_classifier
            || (family.body() == Body::Decoder
                && pipeline.is_none()
                && architectures.iter().any(|a| a.ends_with("ForCausalLM"))) =>
        {
            ModelKind::Reranker
        }
        None => ModelKind::Embedding,
    };

    // trust_remote_code models: only custom code the family's file reimplements.
    let entry = match kind {
        ModelKind::Embedding => "AutoModel",
        ModelKind::Reranker | ModelKind::Classifier => "AutoModelForSequenceClassification",
    };
    if let Some(class) = config.get("auto_map").and_then(|m| m.get(entry)).and_then(Value::as_str) {
        if !family.reimplements(class) {
            return Err(ModelDirError::CustomCode { entry: entry.to_owned(), class: class.to_owned() });
        }
    }

    let vocab_size = get_u32(&config, "vocab_size").unwrap_or(0);
    let splade = match (kind, pipeline.as_ref().and_then(|p| p.splade)) {
        (ModelKind::Embedding, Some(s)) => {
            if !architecture.ends_with("ForMaskedLM") {
                return Err(ModelDirError::NotMaskedLm { architecture });
            }
            if let Some(dimension) = s.dimension.filter(|&d| d != vocab_size) {
                return Err(ModelDirError::SpladeDimension { architecture, dimension, vocab: vocab_size });
            }
            Some(s)
        }
        _ => None,
    };
    let colbert = match kind {
        ModelKind::Embedding => pipeline.as_ref().and_then(|p| p.colbert.clone()),
        _ => None,
    };
    let static_query = match kind {
        ModelKind::Embedding => pipeline.as_ref().and_then(|p| p.static_query.clone()),
        _ => None,
    };
    let (pooling, dense, normalize) = match kind {
        ModelKind::Reranker => {
            let scoring = Pooling::scoring_for(family.body());
            if scoring == Pooling::CrossEncoder && !is_classifier {
                return Err(ModelDirError::NoScoringHead(architecture));
            }
            (scoring, Vec::new(), false)
        }
        ModelKind::Classifier => {
            if family.body() != Body::Encoder || !is_classifier {
                return Err(ModelDirError::NoClassificationHead(architecture));
            }
            (Pooling::CrossEncoder, Vec::new(), false)
        }
        ModelKind::Embedding => match pipeline {
            Some(p) => match (p.pooling, &p.colbert) {
                (Some(mode), _) => (Pooling::Embed(mode), p.dense, p.normalize),
                (None, Some(_)) => (Pooling::Colbert, p.dense, true),
                (None, None) => (Pooling::Splade, Vec::new(), false),
            },
            // No sentence-transformers files: the architecture's default, normalized (what
            // every embedding API returns).
            None => (Pooling::default_for(family.body()), Vec::new(), true),
        },
    };
    let mut width = hidden_size;
    for d in &dense {
        if d.in_features != width {
            return Err(ModelDirError::DenseShape {
                architecture,
                path: d.path.clone(),
                takes: d.in_features,
                gets: width,
            });
        }
        width = d.out_features;
    }

    // Position table size; XLM-R reserves padding_idx + 1 slots before the first position.
    let positions = config_u32(&config, "max_position_embeddings").unwrap_or(512);
    let usable = match family.spec().positions {
        Positions::AfterPadding => positions.saturating_sub(get_u32(&config, "pad_token_id").unwrap_or(1) + 1),
        Positions::FromZero => positions,
    };
    let st_limit = read_json(dir, "sentence_bert_config.json")?.and_then(|c| get_u32(&c, "max_seq_length"));
    let tok_limit = read_json(dir, "tokenizer_config.json")?
        .and_then(|c| get_u32(&c, "model_max_length"))
        .filter(|&n| n < 1_000_000);
    let mut max_tokens = st_limit.or(tok_limit).unwrap_or(usable).min(usable).clamp(1, DEFAULT_MAX_TOKENS_CAP);
    if let Some(c) = &colbert {
        // PyLate cuts to its own lengths, whatever max_seq_length says.
        let longest = c.query_length.max(c.document_length);
        if longest > usable {
            return Err(ModelDirError::ColbertLength { architecture, length: longest, positions: usable });
        }
        max_tokens = usable.min(DEFAULT_MAX_TOKENS_CAP).max(longest);
    }

    Ok(ModelFacts {
        kind,
        family,
        architecture,
        pooling,
        dense,
        normalize,
        max_tokens,
        hidden_size,
        // A SPLADE model's sparse vector has one dimension per vocabulary id.
        output_dim: match kind {
            ModelKind::Embedding if splade.is_some() => vocab_size,
            ModelKind::Embedding => width,
            _ => 0,
        },
        vocab_size,
        splade,
        colbert,
        static_query,
        type_vocab_size: get_u32(&config, "type_vocab_size").unwrap_or(family.spec().type_vocab_default),
        labels,
        config,
    })
}

impl From<Pooling> for &'static str {
    fn from(p: Pooling) -> &'static str {
        p.as_str()
    }
}

impl TryFrom<String> for Pooling {
    type Error = String;

    fn try_from(name: String) -> Result<Pooling, String> {
        Pooling::parse(&name).ok_or_else(|| format!("unknown pooling {name:?}"))
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_gpt2_spelling() {
        let hub = serde_json::json!({"model_type": "nomic_bert", "n_embd": 768, "n_positions": 8192, "n_layer": 12});
        assert_eq!(config_u32(&hub, "hidden_size"), Some(768));
        assert_eq!(config_u32(&hub, "max_position_embeddings"), Some(8192));
        assert_eq!(config_u32(&hub, "num_hidden_layers"), Some(12));
        let both = serde_json::json!({"hidden_size": 64, "n_embd": 768});
        assert_eq!(config_u32(&both, "hidden_size"), Some(64), "the transformers name wins");
        assert_eq!(config_u32(&hub, "vocab_size"), None);
        let distilbert = serde_json::json!({"model_type": "distilbert", "dim": 768, "n_heads": 12, "n_layers": 6});
        assert_eq!(config_u32(&distilbert, "hidden_size"), Some(768));
        assert_eq!(config_u32(&distilbert, "num_attention_heads"), Some(12));
        assert_eq!(config_u32(&distilbert, "num_hidden_layers"), Some(6));
    }
}
