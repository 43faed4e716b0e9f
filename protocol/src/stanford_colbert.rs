//! ColBERT checkpoints in the original Stanford format (colbert-ai, e.g. colbert-ir/colbertv2.0),
//! served as PyLate 1.6 serves the same folder (docs/hybrid-search.md, "Stanford-format
//! checkpoints").
//!
//! The format, as colbert-ai 0.2.22 writes it (`BaseColBERT.save`: the model's and the
//! tokenizer's `save_pretrained`, then `ColBERTConfig.save_for_checkpoint`): config.json with
//! `"architectures": ["HF_ColBERT"]` (`colbert/modeling/hf_colbert.py`), the weights with the
//! encoder under its `base_model_prefix` (`bert.*`) and the projection as `linear.weight`
//! (`nn.Linear(hidden_size, dim, bias=False)`), and `artifact.metadata`, the JSON of every
//! ColBERTConfig field (`colbert/infra/config/settings.py`) plus `meta`. No modules.json.
//!
//! PyLate (`pylate/models/colbert.py`, `ColBERT.__init__`) loads such a folder when config.json's
//! first architecture is `HF_ColBERT` and there are no sentence-transformers modules: the body
//! through transformers, a bias-free `Dense` from `linear.weight` (`Dense.from_stanford_weights`,
//! identity activation), and from the metadata the markers (`query_token_id` / `doc_token_id`),
//! `query_maxlen` / `doc_maxlen` as query_length / document_length and `attend_to_mask_tokens`
//! as attend_to_expansion_tokens; the rest are PyLate's defaults (query expansion, the
//! punctuation skiplist). Every other metadata key is refused here unless it changes nothing
//! for encoding (training, indexing, search and run settings), so a checkpoint whose metadata
//! asks for something PyLate does not compute is never served as if it did.

use std::path::Path;

use serde_json::Value;

use crate::json_file::read_json;
use crate::model_files::{self, ModelFilesError};
use crate::pylate::{self, Settings};
use crate::st_pipeline::{Dense, DenseActivation, Pipeline, PipelineError};

/// The file colbert-ai writes its ColBERTConfig to (`base_config.py`, `save_for_checkpoint`).
pub const METADATA: &str = "artifact.metadata";

/// Whether config.json is a Stanford checkpoint's (PyLate's test: `architectures[0]`).
pub fn is_stanford(config: &Value) -> bool {
    config.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str) == Some("HF_ColBERT")
}

/// ColBERTConfig fields that do not change how a text is encoded: run, resource, training,
/// indexing and search settings (colbert-ai 0.2.22 `settings.py`, and older names), and
/// `meta` (`save` adds it). `query_token` / `doc_token` are display names; the ids are
/// `query_token_id` / `doc_token_id`. `model_name` names the base model colbert-ai built
/// the classes from; config.json's `model_type` says the body here, as in PyLate.
const INERT_KEYS: &[&str] = &[
    "meta",
    "query_token",
    "doc_token",
    "model_name",
    // RunSettings
    "overwrite",
    "root",
    "experiment",
    "index_root",
    "name",
    "rank",
    "nranks",
    "amp",
    "gpus",
    "avoid_fork_if_possible",
    // ResourceSettings
    "checkpoint",
    "triples",
    "collection",
    "queries",
    "index_name",
    // TrainingSettings (relu is commented out of HF_ColBERT: it changes nothing)
    "bsize",
    "accumsteps",
    "lr",
    "maxsteps",
    "save_every",
    "resume",
    "warmup",
    "warmup_bert",
    "relu",
    "nway",
    "use_ib_negatives",
    "distillation_alpha",
    "ignore_scores",
    // IndexingSettings: applied when colbert-ai builds an index, not by `encode`
    "index_path",
    "index_bsize",
    "nbits",
    "kmeans_niters",
    "pool_factor",
    "clustering_mode",
    "protected_tokens",
    // SearchSettings
    "ncells",
    "centroid_score_threshold",
    "ndocs",
    "load_index_with_mmap",
    "nprobe",
    "ncandidates",
];

fn refused(what: String) -> PipelineError {
    PipelineError::Checkpoint(what)
}

/// A refusal of PyLate's shared readers, said as this checkpoint's.
fn own(e: PipelineError) -> PipelineError {
    match e {
        PipelineError::Refused(m) => PipelineError::Checkpoint(m),
        other => other,
    }
}

/// The PyLate pipeline of the Stanford checkpoint in `dir` (config.json `config`, whose
/// encoder has `hidden_size` features).
pub fn read(dir: &Path, config: &Value, hidden_size: u32) -> Result<Pipeline, PipelineError> {
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("");
    if model_type != "bert" {
        return Err(refused(format!(
            "Stanford ColBERT (HF_ColBERT): model_type {model_type:?} is not supported (bert is)"
        )));
    }
    // PyLate falls back to its own defaults without the file; a pull that lost it would then
    // serve other markers and lengths than the checkpoint's, so it is required.
    let metadata = read_json(dir, METADATA)?
        .ok_or_else(|| refused(format!("Stanford ColBERT (HF_ColBERT): the checkpoint has no {METADATA}")))?;
    let empty = serde_json::Map::new();
    let map = metadata.as_object().unwrap_or(&empty);
    let what = |key: &str, v: &Value, why: &str| refused(format!("Stanford ColBERT: {METADATA} {key} {v} {why}"));
    for (key, v) in map {
        match (key.as_str(), v) {
            (k, _) if INERT_KEYS.contains(&k) => {}
            ("query_token_id" | "doc_token_id", Value::String(s)) if !s.is_empty() => {}
            ("query_maxlen" | "doc_maxlen" | "dim", _) => {}
            ("attend_to_mask_tokens", Value::Bool(_)) => {}
            // PyLate always skips punctuation (its default skiplist) and never reads this key:
            // only the value that agrees is served.
            ("mask_punctuation", Value::Bool(true)) => {}
            ("mask_punctuation", _) => {
                return Err(what(key, v, "is not supported: PyLate skips punctuation in documents (true is)"))
            }
            ("similarity", Value::String(s)) if s == "cosine" => {}
            ("similarity", _) => return Err(what(key, v, "is not supported: PyLate scores by cosine MaxSim")),
            ("interaction", Value::String(s)) if s == "colbert" => {}
            ("interaction", _) => return Err(what(key, v, "is not supported: PyLate scores by ColBERT's MaxSim")),
            ("reranker", Value::Bool(false)) => {}
            ("reranker", _) => return Err(what(key, v, "is not supported: a ColBERT encoder (false) is")),
            (_, Value::Null) if ["query_token_id", "doc_token_id", "attend_to_mask_tokens"].contains(&key.as_str()) => {
            }
            ("query_token_id" | "doc_token_id" | "attend_to_mask_tokens", _) => {
                return Err(what(key, v, "is not a token name / boolean"))
            }
            _ => return Err(refused(format!("Stanford ColBERT: {METADATA} key {key:?} is not supported"))),
        }
    }
    let marker = |key: &str, default: &str| map.get(key).and_then(Value::as_str).unwrap_or(default).to_owned();
    let settings = Settings {
        query_prefix: marker("query_token_id", "[unused0]"),
        document_prefix: marker("doc_token_id", "[unused1]"),
        query_length: pylate::length_of("query_maxlen", map.get("query_maxlen"), 32).map_err(own)?,
        document_length: pylate::length_of("doc_maxlen", map.get("doc_maxlen"), 180).map_err(own)?,
        do_query_expansion: true,
        attend_to_expansion_tokens: map.get("attend_to_mask_tokens").and_then(Value::as_bool).unwrap_or(false),
        skiplist_words: pylate::punctuation(),
    };
    let colbert = pylate::resolve(dir, settings).map_err(own)?;
    let declared = match map.get("dim") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|&n| (1..=u32::MAX as u64).contains(&n))
                .ok_or_else(|| what("dim", v, "is not a dimension"))? as u32,
        ),
    };
    let out_features = projection(dir, hidden_size, declared)?;
    let dense = Dense {
        path: String::new(),
        in_features: hidden_size,
        out_features,
        bias: false,
        activation: DenseActivation::Identity,
    };
    Ok(Pipeline {
        pooling: None,
        splade: None,
        colbert: Some(colbert),
        include_prompt: true,
        dense: vec![dense],
        normalize: true,
        static_query: None,
    })
}

/// The projection's output size: `linear.weight`'s rows once the weights are in the folder
/// (they must agree with the metadata's `dim`, and there must be no `linear.bias`, which
/// PyLate would not load), else the metadata's `dim` (colbert-ai's default, 128, when absent;
/// `pull` checks again once the weights are there).
fn projection(dir: &Path, hidden: u32, declared: Option<u32>) -> Result<u32, PipelineError> {
    let files = match model_files::weight_files(dir) {
        Ok(files) => files,
        Err(ModelFilesError::NoWeights(_)) => return Ok(declared.unwrap_or(128)),
        Err(e) => return Err(refused(format!("Stanford ColBERT: {e}"))),
    };
    let mut shape = None;
    for f in files {
        let header = model_files::read_header(&f).map_err(|e| refused(format!("Stanford ColBERT: {e}")))?;
        for t in header.tensors {
            match t.name.as_str() {
                "linear.bias" => {
                    return Err(refused(
                        "Stanford ColBERT: the checkpoint has linear.bias; HF_ColBERT's projection has none and \
                         PyLate would not load it"
                            .into(),
                    ))
                }
                "linear.weight" => shape = Some(t.shape),
                _ => {}
            }
        }
    }
    let Some(shape) = shape else {
        return Err(refused("Stanford ColBERT: the weights have no linear.weight (the projection)".into()));
    };
    let rows = match shape.as_slice() {
        [rows, cols] if *cols == hidden as u64 && *rows > 0 && *rows <= u32::MAX as u64 => *rows as u32,
        _ => {
            return Err(refused(format!("Stanford ColBERT: linear.weight {shape:?} is not [dim, {hidden}]")));
        }
    };
    match declared {
        Some(dim) if dim != rows => {
            Err(refused(format!("Stanford ColBERT: {METADATA} dim {dim} is not linear.weight's {rows} rows")))
        }
        _ => Ok(rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_dir::{self, Pooling};

    fn fixture(name: &str) -> (std::path::PathBuf, Value) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let text = std::fs::read_to_string(root.join(format!("reference/{name}.json"))).unwrap();
        (root.join("models").join(name), serde_json::from_str(&text).unwrap())
    }

    /// What PyLate itself derived from the metadata (tests/fixtures/make_stanford_colbert.py):
    /// lengths, expansion, the markers and skiplist as ids, and the projection from
    /// `linear.weight`.
    #[test]
    fn settings_are_what_pylate_derives_from_the_metadata() {
        for name in ["tiny-bert-stanford", "tiny-bert-stanford-attend"] {
            let (dir, r) = fixture(name);
            let facts = model_dir::inspect(&dir).unwrap();
            assert_eq!(facts.pooling, Pooling::Colbert, "{name}");
            let c = facts.colbert.unwrap();
            let s = &r["settings"];
            assert_eq!(c.query_length as u64, s["query_length"].as_u64().unwrap(), "{name}");
            assert_eq!(c.document_length as u64, s["document_length"].as_u64().unwrap(), "{name}");
            assert_eq!(c.do_query_expansion, s["do_query_expansion"].as_bool().unwrap(), "{name}");
            assert_eq!(c.attend_to_expansion_tokens, s["attend_to_expansion_tokens"].as_bool().unwrap(), "{name}");
            assert_eq!(c.query_prefix_id as u64, r["query_input_ids"][0][1].as_u64().unwrap(), "{name}");
            assert_eq!(c.document_prefix_id as u64, r["document_input_ids"][0][1].as_u64().unwrap(), "{name}");
            let mut want: Vec<u32> =
                r["skiplist_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            want.sort_unstable();
            want.dedup();
            assert_eq!(c.skiplist_ids, want, "{name}");
            let dim = r["metadata"]["dim"].as_u64().unwrap() as u32;
            assert_eq!(facts.output_dim, dim, "{name}");
            let d = &facts.dense[0];
            assert_eq!((d.path.as_str(), d.in_features, d.out_features, d.bias), ("", 64, dim, false), "{name}");
        }
    }
}
