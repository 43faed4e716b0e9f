//! PyLate ColBERT models (lightonai/pylate 1.6, `pylate/models/colbert.py`): a transformer,
//! then PyLate's `Dense` projection of every token (`pylate.models.Dense.Dense`), one
//! L2-normalized vector per token. Queries and documents are encoded differently, as
//! `ColBERT.tokenize` and `ColBERT.encode` do (docs/hybrid-search.md, "ColBERT models"):
//!
//! - the marker token (`query_prefix` / `document_prefix`, e.g. "[Q] " added to the
//!   vocabulary, or `[unused0]`) goes right after the first token ([CLS]), once the text
//!   is tokenized and cut to `query_length - 1` / `document_length - 1` tokens, its
//!   closing [SEP] kept (`insert_prefix_token`);
//! - with `do_query_expansion` a query is padded with [MASK] to `query_length`; those
//!   tokens attend to the text but the text does not attend to them unless
//!   `attend_to_expansion_tokens`; every query token's vector is kept;
//! - a document keeps every token's vector but those whose id is in the skiplist
//!   (`skiplist_words` → `convert_tokens_to_ids`: a word that is no token maps to the
//!   unknown token's id), [CLS], the marker and [SEP] included.
//!
//! The settings come from config_sentence_transformers.json (`ColBERT._load_sbert_model`),
//! PyLate's defaults where a key is absent. Anything else in that file is refused by name.

use std::path::Path;

use serde_json::Value;

use crate::json_file::read_json;
use crate::st_pipeline::PipelineError;

/// How a PyLate model encodes queries and documents; token ids resolved from tokenizer.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Colbert {
    pub query_prefix_id: u32,
    pub document_prefix_id: u32,
    /// Tokens of an encoded query (cut to it; padded to it with expansion).
    pub query_length: u32,
    /// Most tokens of an encoded document.
    pub document_length: u32,
    pub do_query_expansion: bool,
    pub attend_to_expansion_tokens: bool,
    /// The [MASK] token's id: query expansion pads with it.
    pub mask_id: u32,
    /// Ids whose vectors a document leaves out, ascending.
    pub skiplist_ids: Vec<u32>,
}

fn refused(what: String) -> PipelineError {
    PipelineError::Refused(what)
}

/// Keys of config_sentence_transformers.json this reader honours (or that change nothing).
const KNOWN_KEYS: [&str; 13] = [
    "__version__",
    "model_type",
    "prompts",
    "default_prompt_name",
    "similarity_fn_name",
    "query_prefix",
    "document_prefix",
    "query_length",
    "document_length",
    "do_query_expansion",
    "attend_to_expansion_tokens",
    "skiplist_words",
    "model_card_data",
];

/// The punctuation PyLate skips by default (`list(string.punctuation)`).
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// The settings of the PyLate model in `dir`.
pub fn read(dir: &Path) -> Result<Colbert, PipelineError> {
    let cfg = read_json(dir, "config_sentence_transformers.json")?.unwrap_or(Value::Null);
    let empty = serde_json::Map::new();
    let map = cfg.as_object().unwrap_or(&empty);
    if let Some(key) = map.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(refused(format!("PyLate ColBERT: config_sentence_transformers.json key {key:?} is not supported")));
    }
    match map.get("similarity_fn_name") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "MaxSim" => {}
        Some(other) => {
            return Err(refused(format!("PyLate ColBERT: similarity_fn_name {other} is not supported (MaxSim is)")))
        }
    }
    // PyLate saves `{"query": "", "document": ""}`; a prompt with text would be put in
    // front of every input by `encode`, which is not served.
    if let Some(prompts) = map.get("prompts").and_then(Value::as_object) {
        if let Some((name, _)) = prompts.iter().find(|(_, p)| p.as_str() != Some("")) {
            return Err(refused(format!("PyLate ColBERT: prompt {name:?} with text is not supported")));
        }
    }
    let flag = |key: &str, default: bool| -> Result<bool, PipelineError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(refused(format!("PyLate ColBERT: {key} {other} is not a boolean"))),
        }
    };
    let length = |key: &str, default: u32| -> Result<u32, PipelineError> { length_of(key, map.get(key), default) };
    let text = |key: &str, default: &str| -> Result<String, PipelineError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(default.to_owned()),
            Some(Value::String(s)) if s.is_empty() => {
                Err(refused(format!("PyLate ColBERT: an empty {key} (no marker token) is not supported")))
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(refused(format!("PyLate ColBERT: {key} {other} is not a string"))),
        }
    };
    let skiplist_words: Vec<String> = match map.get("skiplist_words") {
        None | Some(Value::Null) => punctuation(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|w| w.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| refused("PyLate ColBERT: skiplist_words is not a list of strings".into()))?,
        Some(other) => return Err(refused(format!("PyLate ColBERT: skiplist_words {other} is not a list"))),
    };
    resolve(
        dir,
        Settings {
            query_prefix: text("query_prefix", "[Q] ")?,
            document_prefix: text("document_prefix", "[D] ")?,
            query_length: length("query_length", 32)?,
            document_length: length("document_length", 180)?,
            do_query_expansion: flag("do_query_expansion", true)?,
            attend_to_expansion_tokens: flag("attend_to_expansion_tokens", false)?,
            skiplist_words,
        },
    )
}

/// PyLate's settings as words, before the tokenizer turns them into ids: what
/// config_sentence_transformers.json says, or what PyLate derives from a Stanford
/// checkpoint's `artifact.metadata` (`stanford_colbert.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub query_prefix: String,
    pub document_prefix: String,
    pub query_length: u32,
    pub document_length: u32,
    pub do_query_expansion: bool,
    pub attend_to_expansion_tokens: bool,
    pub skiplist_words: Vec<String>,
}

/// PyLate's default skiplist, one word per character of [`PUNCTUATION`].
pub fn punctuation() -> Vec<String> {
    PUNCTUATION.chars().map(String::from).collect()
}

/// A query or document length named `key` (absent or null: `default`).
pub fn length_of(key: &str, value: Option<&Value>, default: u32) -> Result<u32, PipelineError> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|&n| (3..=100_000).contains(&n))
            .map(|n| n as u32)
            .ok_or_else(|| refused(format!("PyLate ColBERT: {key} {v} is not a length from 3 tokens"))),
    }
}

/// The settings `s` with their tokens looked up in the tokenizer of the model in `dir`, as
/// `ColBERT.__init__` does (`convert_tokens_to_ids`).
pub fn resolve(dir: &Path, s: Settings) -> Result<Colbert, PipelineError> {
    // "If we do not do query expansion, we do not attend to the expansion tokens".
    let attend_to_expansion_tokens = s.do_query_expansion && s.attend_to_expansion_tokens;
    let vocab = Vocab::read(dir)?;
    let marker = |key: &str, t: &str| -> Result<u32, PipelineError> {
        // PyLate adds a missing marker to the vocabulary at load, with a new, untrained
        // embedding row: a saved model always has it.
        vocab.id(t).ok_or_else(|| refused(format!("PyLate ColBERT: {key} {t:?} is not a token of tokenizer.json")))
    };
    let unk = vocab.special("unk_token");
    let mut skiplist_ids = Vec::new();
    for w in &s.skiplist_words {
        match vocab.id(w).or(unk) {
            Some(id) => skiplist_ids.push(id),
            None => {
                return Err(refused(format!(
                    "PyLate ColBERT: skiplist word {w:?} is no token and the tokenizer has no unknown token"
                )))
            }
        }
    }
    skiplist_ids.sort_unstable();
    skiplist_ids.dedup();
    // PyLate pads an expanded query with [MASK]; a model without one pads with its EOS
    // token (a decoder), which is not served.
    let mask_id = match vocab.special("mask_token") {
        Some(id) => id,
        None if !s.do_query_expansion => 0,
        None => return Err(refused("PyLate ColBERT: query expansion without a [MASK] token is not supported".into())),
    };
    Ok(Colbert {
        query_prefix_id: marker("query_prefix", &s.query_prefix)?,
        document_prefix_id: marker("document_prefix", &s.document_prefix)?,
        query_length: s.query_length,
        document_length: s.document_length,
        do_query_expansion: s.do_query_expansion,
        attend_to_expansion_tokens,
        mask_id,
        skiplist_ids,
    })
}

/// Token → id as the fast tokenizer's `convert_tokens_to_ids` looks it up: added tokens,
/// then the model's vocabulary.
struct Vocab {
    tokenizer: Value,
    special: Value,
}

impl Vocab {
    fn read(dir: &Path) -> Result<Vocab, PipelineError> {
        let tokenizer = read_json(dir, "tokenizer.json")?
            .ok_or_else(|| refused("PyLate ColBERT: the model has no tokenizer.json".into()))?;
        let mut special = read_json(dir, "special_tokens_map.json")?.unwrap_or(Value::Null);
        if special.is_null() {
            special = read_json(dir, "tokenizer_config.json")?.unwrap_or(Value::Null);
        }
        Ok(Vocab { tokenizer, special })
    }

    fn id(&self, token: &str) -> Option<u32> {
        let added = self.tokenizer["added_tokens"].as_array().into_iter().flatten();
        let found = added.into_iter().find(|t| t["content"].as_str() == Some(token)).and_then(|t| t["id"].as_u64());
        let vocab = &self.tokenizer["model"]["vocab"];
        found
            .or_else(|| vocab.get(token).and_then(Value::as_u64))
            // A Unigram vocabulary is a list of [piece, score].
            .or_else(|| {
                vocab.as_array()?.iter().position(|p| p.get(0).and_then(Value::as_str) == Some(token)).map(|i| i as u64)
            })
            .map(|id| id as u32)
    }

    /// The id of a special token named in special_tokens_map.json (a string, or an object
    /// with `content`).
    fn special(&self, key: &str) -> Option<u32> {
        let v = self.special.get(key)?;
        let content = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
        self.id(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> (std::path::PathBuf, Value) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let text = std::fs::read_to_string(root.join(format!("reference/{name}.json"))).unwrap();
        (root.join("models").join(name), serde_json::from_str(&text).unwrap())
    }

    /// The settings and ids PyLate itself resolved (tests/fixtures/make_pylate.py): the
    /// markers, and the skiplist as `convert_tokens_to_ids` maps it (a word that is no
    /// token to [UNK]'s id).
    #[test]
    fn settings_and_ids_are_pylates() {
        for name in ["tiny-bert-pylate", "tiny-bert-pylate-noexp"] {
            let (dir, r) = fixture(name);
            let c = read(&dir).unwrap();
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
        }
    }
}
