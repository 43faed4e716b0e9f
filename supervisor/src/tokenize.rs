//! Turning request text into the exact token ids the reference implementations use.
//!
//! - Single texts: the model's tokenizer.json with its special tokens, truncated at the
//!   model's limit (sentence-transformers' `max_seq_length` wins over tokenizer.json, which
//!   is what sentence-transformers itself does). Padding in tokenizer.json is switched off:
//!   the worker pads per batch.
//! - Cross-encoder pairs (BERT, XLM-R): the tokenizer's pair template with
//!   `longest_first` truncation and segment ids, as `CrossEncoder` tokenizes.
//! - Qwen3-Reranker: the prompt template from the Qwen3-Reranker model card (below).
//! - Qwen3-Embedding queries: the model card's `Instruct: {task}\nQuery:{query}` prefix.
//! - A model's named prompts (`config_sentence_transformers.json`): `prompts.rs`.

mod prompts;

use std::path::Path;

use mlx_serve_protocol::model_dir::{Family, ModelFacts, Pooling};
pub use prompts::{PromptError, Prompts};
use tokenizers::{
    EncodeInput, Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// Qwen3-Reranker prompt, from the Qwen/Qwen3-Reranker-0.6B model card ("Transformers
/// Usage"): the system turn and the assistant opening (with an empty think block) wrap
/// `<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}`; the body is truncated
/// to `max_length - len(prefix) - len(suffix)` tokens.
pub const QWEN3_RERANK_PREFIX: &str = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n";
pub const QWEN3_RERANK_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
pub const QWEN3_RERANK_DEFAULT_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";

/// Qwen3-Embedding query format, from the Qwen/Qwen3-Embedding-0.6B model card.
pub fn qwen3_embedding_query(task: &str, query: &str) -> String {
    format!("Instruct: {task}\nQuery:{query}")
}

fn qwen3_rerank_body(instruction: &str, query: &str, doc: &str) -> String {
    format!("<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}")
}

/// One tokenized sequence, ready for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// Segment ids; empty when all zero.
    pub type_ids: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("input {index} is longer than the model's limit of {limit} tokens (send `truncate: true` or shorten it)")]
    TooLong { index: usize, limit: usize },
    #[error("tokenizer failed: {0}")]
    Failed(String),
    /// The model's tokenizer files cannot be loaded.
    #[error("{0}")]
    Load(String),
}

pub struct ModelTokenizer {
    /// Truncates at the model limit; no padding.
    tokenizer: Tokenizer,
    /// Qwen3-Reranker: prefix and suffix ids and a tokenizer truncating the body.
    rerank_template: Option<(Vec<u32>, Vec<u32>, Tokenizer)>,
    pub max_tokens: usize,
    pub family: Family,
    /// The model's named prompts and default prompt (embedding models).
    pub prompts: Prompts,
}

fn truncation(max_length: usize) -> TruncationParams {
    TruncationParams {
        direction: TruncationDirection::Right,
        max_length,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
    }
}

fn fail(e: impl std::fmt::Display) -> TokenizeError {
    TokenizeError::Failed(e.to_string())
}

fn to_tokens(enc: &Encoding, with_types: bool) -> Tokens {
    let type_ids = if with_types && enc.get_type_ids().iter().any(|&t| t != 0) {
        enc.get_type_ids().iter().map(|&t| t as u8).collect()
    } else {
        Vec::new()
    };
    Tokens { ids: enc.get_ids().to_vec(), type_ids }
}

impl ModelTokenizer {
    pub fn load(dir: &Path, facts: &ModelFacts) -> Result<Self, TokenizeError> {
        Self::load_inner(dir, facts).map_err(TokenizeError::Load)
    }

    fn load_inner(dir: &Path, facts: &ModelFacts) -> Result<Self, String> {
        let path = dir.join("tokenizer.json");
        let mut base = Tokenizer::from_file(&path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        base.with_padding(None);
        let max_tokens = facts.max_tokens as usize;
        let mut tokenizer = base.clone();
        tokenizer.with_truncation(Some(truncation(max_tokens))).map_err(|e| e.to_string())?;
        let rerank_template = if facts.pooling == Pooling::YesNo {
            let ids = |text: &str| -> Result<Vec<u32>, String> {
                Ok(base.encode_fast(text, false).map_err(|e| e.to_string())?.get_ids().to_vec())
            };
            let (prefix, suffix) = (ids(QWEN3_RERANK_PREFIX)?, ids(QWEN3_RERANK_SUFFIX)?);
            let body_limit = max_tokens
                .checked_sub(prefix.len() + suffix.len())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("max_tokens {max_tokens} leaves no room for the reranker prompt"))?;
            let mut body = base.clone();
            body.with_truncation(Some(truncation(body_limit))).map_err(|e| e.to_string())?;
            Some((prefix, suffix, body))
        } else {
            None
        };
        Ok(ModelTokenizer { tokenizer, rerank_template, max_tokens, family: facts.family, prompts: Prompts::load(dir) })
    }

    fn check(&self, enc: &Encoding, index: usize, truncate: bool) -> Result<(), TokenizeError> {
        if !truncate && !enc.get_overflowing().is_empty() {
            return Err(TokenizeError::TooLong { index, limit: self.max_tokens });
        }
        Ok(())
    }

    /// Texts as the model's own tokenizer encodes them (with special tokens).
    pub fn encode_texts(&self, texts: &[&str], truncate: bool) -> Result<Vec<Tokens>, TokenizeError> {
        let encodings = if texts.len() == 1 {
            vec![self.tokenizer.encode_fast(texts[0], true).map_err(fail)?]
        } else {
            let inputs: Vec<EncodeInput> = texts.iter().map(|t| EncodeInput::from(*t)).collect();
            self.tokenizer.encode_batch_fast(inputs, true).map_err(fail)?
        };
        encodings
            .iter()
            .enumerate()
            .map(|(i, enc)| {
                self.check(enc, i, truncate)?;
                Ok(to_tokens(enc, false))
            })
            .collect()
    }

    /// Texts with their token strings, for `/v1/tokenize`.
    pub fn tokenize_with_pieces(&self, text: &str, truncate: bool) -> Result<(Vec<u32>, Vec<String>), TokenizeError> {
        let enc = self.tokenizer.encode(text, true).map_err(fail)?;
        self.check(&enc, 0, truncate)?;
        Ok((enc.get_ids().to_vec(), enc.get_tokens().to_vec()))
    }

    /// (query, document) pairs as the reranker expects them.
    pub fn encode_pairs(
        &self,
        query: &str,
        documents: &[&str],
        instruction: Option<&str>,
        truncate: bool,
    ) -> Result<Vec<Tokens>, TokenizeError> {
        if let Some((prefix, suffix, body_tok)) = &self.rerank_template {
            let instruction = instruction.unwrap_or(QWEN3_RERANK_DEFAULT_INSTRUCTION);
            let bodies: Vec<EncodeInput> =
                documents.iter().map(|d| EncodeInput::from(qwen3_rerank_body(instruction, query, d))).collect();
            let encodings = body_tok.encode_batch_fast(bodies, true).map_err(fail)?;
            return encodings
                .iter()
                .enumerate()
                .map(|(i, enc)| {
                    self.check(enc, i, truncate)?;
                    let mut ids = Vec::with_capacity(prefix.len() + enc.len() + suffix.len());
                    ids.extend_from_slice(prefix);
                    ids.extend_from_slice(enc.get_ids());
                    ids.extend_from_slice(suffix);
                    Ok(Tokens { ids, type_ids: Vec::new() })
                })
                .collect();
        }
        let inputs: Vec<EncodeInput> =
            documents.iter().map(|d| EncodeInput::from((query.to_owned(), (*d).to_owned()))).collect();
        let encodings = self.tokenizer.encode_batch_fast(inputs, true).map_err(fail)?;
        let with_types = self.family == Family::Bert;
        encodings
            .iter()
            .enumerate()
            .map(|(i, enc)| {
                self.check(enc, i, truncate)?;
                Ok(to_tokens(enc, with_types))
            })
            .collect()
    }
}
