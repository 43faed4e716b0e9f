//! A model's own named prompts, as sentence-transformers keeps them in
//! `config_sentence_transformers.json`: `{"prompts": {"query": "...", ...},
//! "default_prompt_name": null | "name"}` (Qwen3-Embedding ships a `query` prompt there).
//!
//! Selection follows sentence-transformers 6.2 (`base/model.py`, `_resolve_prompt`, and
//! `prompt + text` in `encode`): an explicit raw `prompt` wins; otherwise `prompt_name`
//! must name one of the model's prompts (sentence-transformers raises for an unknown name;
//! we answer 400 listing the names); otherwise `default_prompt_name` applies when set. The
//! prompt text is prepended to each input before tokenization.
//!
//! Pooling that excludes the prompt's tokens (`include_prompt: false` in the pooling
//! config, as INSTRUCTOR-style models set it) would need the worker to mask them; such a
//! model is served without prompts rather than with a prompt pooled differently from
//! sentence-transformers ([`PromptError::Excluded`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// The prompts a model declares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prompts {
    pub prompts: BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
    /// False when the pooling module excludes prompt tokens.
    pub include_prompt: bool,
}

/// Why a prompt cannot be applied; the API answers 400 with these messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("prompt_name `{name}` is not one of this model's prompts ({})", list(.known))]
    Unknown { name: String, known: Vec<String> },
    #[error("this model's pooling excludes prompt tokens (include_prompt: false), which mlx-serve does not support; send the text without a prompt")]
    Excluded,
}

fn list(known: &[String]) -> String {
    if known.is_empty() {
        "it has none".into()
    } else {
        format!("it has: {}", known.join(", "))
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

impl Prompts {
    /// Reads `config_sentence_transformers.json` and the pooling config from a model
    /// folder. Missing files mean no prompts (the plain Hugging Face layout).
    pub fn load(dir: &Path) -> Prompts {
        let mut out = Prompts { include_prompt: true, ..Default::default() };
        if let Some(cfg) = read_json(&dir.join("config_sentence_transformers.json")) {
            if let Some(map) = cfg.get("prompts").and_then(Value::as_object) {
                for (name, text) in map {
                    if let Some(text) = text.as_str() {
                        out.prompts.insert(name.clone(), text.to_owned());
                    }
                }
            }
            out.default_prompt_name = cfg.get("default_prompt_name").and_then(Value::as_str).map(str::to_owned);
        }
        out.include_prompt = pooling_includes_prompt(dir);
        out
    }

    /// The names a client may pass as `prompt_name`.
    pub fn names(&self) -> Vec<String> {
        self.prompts.keys().cloned().collect()
    }

    /// The prompt text to prepend, or none. `prompt` is a raw prefix; `prompt_name` a
    /// name from the model's table; neither means the model's default prompt, if any.
    pub fn select(&self, prompt_name: Option<&str>, prompt: Option<&str>) -> Result<Option<String>, PromptError> {
        let text = match (prompt, prompt_name) {
            (Some(raw), _) => Some(raw.to_owned()),
            (None, Some(name)) => match self.prompts.get(name) {
                Some(text) => Some(text.clone()),
                None => return Err(PromptError::Unknown { name: name.to_owned(), known: self.names() }),
            },
            // sentence-transformers: `self.prompts.get(self.default_prompt_name)`.
            (None, None) => self.default_prompt_name.as_ref().and_then(|n| self.prompts.get(n)).cloned(),
        };
        match text {
            // An empty prompt (Qwen3-Embedding's `document`) changes nothing.
            Some(t) if t.is_empty() => Ok(None),
            Some(_) if !self.include_prompt => Err(PromptError::Excluded),
            other => Ok(other),
        }
    }
}

/// `include_prompt` of the sentence-transformers pooling module named in `modules.json`
/// (true when absent: that is the default in both the 5.x and 6.x layouts).
fn pooling_includes_prompt(dir: &Path) -> bool {
    let Some(Value::Array(modules)) = read_json(&dir.join("modules.json")) else { return true };
    modules
        .iter()
        .filter(|m| m.get("type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".Pooling")))
        .filter_map(|m| m.get("path").and_then(Value::as_str))
        .filter_map(|p| read_json(&dir.join(p).join("config.json")))
        .all(|cfg| cfg.get("include_prompt").and_then(Value::as_bool).unwrap_or(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen() -> Prompts {
        let mut p = Prompts { include_prompt: true, ..Default::default() };
        p.prompts.insert("query".into(), "Instruct: x\nQuery:".into());
        p.prompts.insert("document".into(), String::new());
        p
    }

    #[test]
    fn selection_follows_sentence_transformers() {
        let mut p = qwen();
        assert_eq!(p.select(None, None), Ok(None));
        assert_eq!(p.select(Some("query"), None), Ok(Some("Instruct: x\nQuery:".into())));
        assert_eq!(p.select(Some("document"), None), Ok(None));
        assert_eq!(p.select(Some("query"), Some("raw: ")), Ok(Some("raw: ".into())));
        let err = p.select(Some("passage"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "prompt_name `passage` is not one of this model's prompts (it has: document, query)"
        );
        p.default_prompt_name = Some("query".into());
        assert_eq!(p.select(None, None), Ok(Some("Instruct: x\nQuery:".into())));
        p.include_prompt = false;
        assert_eq!(p.select(None, None), Err(PromptError::Excluded));
        assert_eq!(p.select(Some("document"), None), Ok(None));
        let none = Prompts { include_prompt: true, ..Default::default() };
        assert!(none.select(Some("query"), None).unwrap_err().to_string().ends_with("(it has none)"));
    }

    #[test]
    fn loads_the_fixture() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-qwen3-embed");
        let p = Prompts::load(&dir);
        assert_eq!(p.names(), vec!["document".to_string(), "query".to_string()]);
        assert!(p.prompts["query"].starts_with("Instruct: Given a web search query"));
        assert_eq!(p.default_prompt_name, None);
        assert!(p.include_prompt);
        assert_eq!(Prompts::load(Path::new("/nonexistent")).prompts.len(), 0);
    }
}
