//! Turning request text into the exact token ids the reference implementations use.
//!
//! - Single texts: the model's tokenizer.json with its special tokens, truncated at the
//!   model's limit (sentence-transformers' `max_seq_length` wins over tokenizer.json, which
//!   is what sentence-transformers itself does). Padding in tokenizer.json is switched off:
//!   the worker pads per batch.
//! - Cross-encoder pairs (BERT, XLM-R): the tokenizer's pair template with
//!   `longest_first` truncation and segment ids, as `CrossEncoder` tokenizes.
//! - Causal-LM rerankers: their family's judge prompt (`protocol::architectures::Judge`):
//!   Qwen3-Reranker's model card template, truncated as one body; mxbai-rerank-v2's, query
//!   and document tokenized apart and cut as ids as its package does (`JudgeTemplate`).
//! - Qwen3-Embedding queries: the model card's `Instruct: {task}\nQuery:{query}` prefix.
//! - A model's named prompts (`config_sentence_transformers.json`): `prompts.rs`.
//!
//! Bounded work per text: tokenizing costs ~100–250 bytes of heap per token (HF
//! `Encoding`s and pre-tokenizer splits), so a 16 MiB body of short words would take
//! gigabytes, although the model keeps only its first `max_tokens`. A text longer than
//! [`ModelTokenizer::chunk_bytes`] is first cut to a head that holds more tokens than the
//! model keeps ([`ModelTokenizer::head`]); the head's tokens are the text's first tokens,
//! so truncation gives the same ids and `truncate: false` still sees the text is too long.
//! The head is found by tokenizing pieces of `chunk_bytes` that end just before a run of
//! spaces — a boundary no supported pre-tokenizer merges across (BERT splits on
//! whitespace; Metaspace and byte-level BPE start a word at a space), so the tokens of the
//! pieces are the tokens of the whole — and counting their tokens, keeping none; the last
//! piece is then cut at the first such boundary after the token the head needs
//! ([`ModelTokenizer::trim`]), so a head holds about the model's limit, not a whole piece
//! (a piece of one-letter words is thousands of tokens for a model that keeps 64). One
//! approximation: a run of more than `chunk_bytes` bytes without a space (a base64 blob;
//! CJK text has tokens every few bytes, so its first piece already holds enough) is
//! split where the piece ends. Usage counts stay exact: they count the ids sent, which
//! truncation decides from the head alone. A cross-encoder pair is truncated
//! `longest_first`, which also depends on which text is the longer: that is settled by
//! counting further ([`ModelTokenizer::settle`]), and what is encoded stays a head of
//! each text ([`ModelTokenizer::pair_heads`]). Many texts are tokenized in batches of at most
//! [`GROUP_BYTES`], each turned into ids before the next, so a request's tokenizer memory
//! does not grow with its number of inputs.

mod late;
mod late_rules;
mod prompts;
mod static_query;
mod windows;

use std::path::Path;

pub use late::{LateDocument, SpanError};
pub use late_rules::ChunkRule;
use mlx_serve_protocol::architectures::JudgePrompt;
use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};
pub use prompts::{PromptError, Prompts};
pub use static_query::{QueryWeights, StaticQueryEncoder};
use tokenizers::{
    EncodeInput, Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};
pub use windows::{LongInput, WindowError};

/// A causal-LM judge's prompt (`protocol::architectures::JudgePrompt`) as token ids.
enum JudgeTemplate {
    /// Qwen3-Reranker: prefix and suffix ids around the body, which `body` truncates.
    Joint {
        prefix: Vec<u32>,
        suffix: Vec<u32>,
        body: Box<Tokenizer>,
        template: &'static str,
        default_instruction: &'static str,
    },
    /// mxbai-rerank-v2: query and document tokenized apart (`plain`, no special tokens)
    /// and cut as ids. `budget` is the package's `max_length`: the limit less the
    /// template's tokens (`predefined_length`), which its constructor applies when
    /// `max_length + predefined_length` exceeds the model's length.
    Apart {
        prefix: Vec<u32>,
        sep: Vec<u32>,
        /// `sep + task + suffix`: what follows the document.
        tail: Vec<u32>,
        budget: usize,
        query: &'static str,
        instructed_query: &'static str,
        document: &'static str,
    },
}

/// `template` with `{instruction}`, `{query}` and `{document}` filled in one pass (a
/// placeholder inside a request's text stays text).
fn fill(template: &str, instruction: &str, query: &str, document: &str) -> String {
    let mut out = String::with_capacity(template.len() + instruction.len() + query.len() + document.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let slot = [("{instruction}", instruction), ("{query}", query), ("{document}", document)]
            .into_iter()
            .find(|(name, _)| rest.starts_with(name));
        match slot {
            Some((name, value)) => {
                out.push_str(value);
                rest = &rest[name.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One tokenized sequence, ready for a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// Segment ids; empty when all zero.
    pub type_ids: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("input {index} is longer than the model's limit of {limit} tokens (send `truncate: true` or shorten it)")]
    TooLong { index: usize, limit: usize },
    /// Only characters the tokenizer drops (NUL, zero-width spaces): like `""`.
    #[error("input {index} is empty after tokenization (it holds only characters the model's tokenizer drops, such as NUL or zero-width spaces)")]
    Empty { index: usize },
    /// A causal-LM judge that keeps at most `limit` tokens of the query (mxbai-rerank-v2).
    #[error(
        "`query` is longer than the {limit} tokens this model keeps of a query (send `truncate: true` or shorten it)"
    )]
    QueryTooLong { limit: usize },
    #[error("`query` is empty after tokenization (it holds only characters the model's tokenizer drops, such as NUL or zero-width spaces)")]
    EmptyQuery,
    #[error("tokenizer failed: {0}")]
    Failed(String),
    /// The model's tokenizer files cannot be loaded.
    #[error("{0}")]
    Load(String),
}

pub struct ModelTokenizer {
    /// Truncates at the model limit; no padding.
    tokenizer: Tokenizer,
    /// No truncation, no padding: counts the tokens of a long text's pieces.
    plain: Tokenizer,
    /// Special tokens the post-processor adds to a single text (`[CLS]`, `[SEP]`, …).
    added_single: usize,
    /// A causal-LM reranker's prompt (`ModelFacts::family`'s judge).
    judge: Option<JudgeTemplate>,
    pub max_tokens: usize,
    /// Segment ids (0 query, 1 document) reach the network (`ModelFacts::uses_segment_ids`).
    segment_ids: bool,
    /// The model's named prompts and default prompt (embedding models).
    pub prompts: Prompts,
    /// Texts longer than this are cut to a head first (module header); also the size of
    /// the pieces the head is measured in.
    chunk_bytes: usize,
}

/// Tokens a text's head holds beyond what any template around it can shift (a word
/// joined to the `: ` before it in the Qwen3-Reranker prompt), so the cut is never felt.
const HEAD_MARGIN: usize = 8;
/// The smallest piece: below it a text is tokenized as it is.
const MIN_CHUNK_BYTES: usize = 4 << 10;
/// Bytes per token the piece size allows for: text averages 3–5 bytes per token, CJK 2–3,
/// so the first piece of a long text nearly always holds enough tokens.
const CHUNK_BYTES_PER_TOKEN: usize = 8;

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

/// Where the piece of `text` starting at `start` ends: at most `max` bytes on, just
/// before the last space in that span that follows a letter or digit, or — when the span
/// has none — at a character boundary near `max` (the module header's approximation).
/// After a letter or digit, not after any non-space: normalizers turn newlines and other
/// spaces into plain ones and drop NUL, zero-width and combining characters, and a piece
/// that ends in any of those would end in a space once normalized.
fn piece_end(text: &str, start: usize, max: usize) -> usize {
    if text.len() - start <= max {
        return text.len();
    }
    let limit = start + max;
    let bytes = text.as_bytes();
    // A space is one ASCII byte, so each candidate is a character boundary.
    let after_word = |i: usize| text[start..i].chars().next_back().is_some_and(char::is_alphanumeric);
    if let Some(cut) = (start + 1..limit).rev().find(|&i| bytes[i] == b' ' && after_word(i)) {
        return cut;
    }
    (start + 1..=limit).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(limit)
}

/// The first boundary at or after `from` and before `end` where a piece may end (as in
/// [`piece_end`]: just before a space that follows a letter or digit).
fn cut_after(text: &str, from: usize, end: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    (from.max(1)..end).find(|&i| bytes[i] == b' ' && text[..i].chars().next_back().is_some_and(char::is_alphanumeric))
}

/// The start of a text, measured in pieces ([`ModelTokenizer::measure`]).
#[derive(Clone, Copy)]
struct Head<'t> {
    text: &'t str,
    /// Where the head ends in `text`.
    end: usize,
    /// Its tokens without special tokens; `None` for a short text taken whole, uncounted.
    count: Option<usize>,
}

impl<'t> Head<'t> {
    fn is_whole(&self) -> bool {
        self.end == self.text.len()
    }

    fn as_str(&self) -> &'t str {
        &self.text[..self.end]
    }
}

/// Text bytes tokenized in one batch: every `Encoding` of a batch lives until the batch
/// is done, and costs 100–250 bytes of heap per token (a truncated one keeps what it cut
/// as `overflowing`), so batches are cut to bound that.
const GROUP_BYTES: usize = 64 << 10;

/// Consecutive runs of `items` of at most [`GROUP_BYTES`] (by `size`; one item when it is
/// larger), each with the index of its first item.
fn groups<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<(usize, &[T])> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && bytes + n > GROUP_BYTES {
            out.push((start, &items[start..i]));
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < items.len() {
        out.push((start, &items[start..]));
    }
    out
}

/// Encodes `inputs` one after the other on this thread. Not `encode_batch_fast`: that
/// spreads a batch over rayon's pool, one thread per core, whose idle threads spin
/// (`sched_yield`) after every batch, so each request woke every core; requests are
/// already tokenized in parallel, one heavy job per core (`api/inference.rs`,
/// `off_thread`), so the pool only added wake-ups (docs/host-cpu.md).
fn encode_each<'s>(
    tokenizer: &Tokenizer,
    inputs: Vec<EncodeInput<'s>>,
    special: bool,
) -> Result<Vec<Encoding>, TokenizeError> {
    inputs.into_iter().map(|input| tokenizer.encode_fast(input, special).map_err(fail)).collect()
}

impl ModelTokenizer {
    pub fn load(dir: &Path, facts: &ModelFacts) -> Result<Self, TokenizeError> {
        Self::load_inner(dir, facts).map_err(TokenizeError::Load)
    }

    fn load_inner(dir: &Path, facts: &ModelFacts) -> Result<Self, String> {
        let path = dir.join("tokenizer.json");
        let mut base = Tokenizer::from_file(&path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        base.with_padding(None);
        base.with_truncation(None).map_err(|e| e.to_string())?;
        let max_tokens = facts.max_tokens as usize;
        let added_single = base.get_post_processor().map_or(0, |p| p.added_tokens(false));
        let mut tokenizer = base.clone();
        tokenizer.with_truncation(Some(truncation(max_tokens))).map_err(|e| e.to_string())?;
        let judge = if facts.pooling == Pooling::YesNo {
            let judge = facts.family.judge().ok_or_else(|| format!("{} has no reranker recipe", facts.architecture))?;
            let ids = |text: &str| -> Result<Vec<u32>, String> {
                Ok(base.encode_fast(text, false).map_err(|e| e.to_string())?.get_ids().to_vec())
            };
            let room = |template: usize| {
                max_tokens
                    .checked_sub(template)
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("max_tokens {max_tokens} leaves no room for the reranker prompt"))
            };
            Some(match &judge.prompt {
                JudgePrompt::Joint { prefix, body: template, suffix, default_instruction } => {
                    let (prefix, suffix) = (ids(prefix)?, ids(suffix)?);
                    let mut body = base.clone();
                    body.with_truncation(Some(truncation(room(prefix.len() + suffix.len())?)))
                        .map_err(|e| e.to_string())?;
                    JudgeTemplate::Joint { prefix, suffix, body: Box::new(body), template, default_instruction }
                }
                JudgePrompt::Apart { prefix, query, instructed_query, document, sep, task, suffix } => {
                    let (prefix, sep) = (ids(prefix)?, ids(sep)?);
                    // After the document: sep, the task prompt, the assistant opening.
                    let tail: Vec<u32> = [sep.clone(), ids(task)?, ids(suffix)?].concat();
                    let budget = room(prefix.len() + tail.len())?;
                    // The package's `max_length * 3 // 4` for the query must leave the
                    // document its separator and a token.
                    if budget * 3 / 4 + sep.len() >= budget {
                        return Err(format!("max_tokens {max_tokens} leaves no room for the reranker prompt"));
                    }
                    JudgeTemplate::Apart { prefix, sep, tail, budget, query, instructed_query, document }
                }
            })
        } else {
            None
        };
        let chunk_bytes = (max_tokens * CHUNK_BYTES_PER_TOKEN).max(MIN_CHUNK_BYTES);
        Ok(ModelTokenizer {
            tokenizer,
            plain: base,
            added_single,
            judge,
            max_tokens,
            segment_ids: facts.uses_segment_ids(),
            prompts: Prompts::load(dir),
            chunk_bytes,
        })
    }

    /// Smaller pieces, for tests of the cut.
    #[cfg(test)]
    fn with_chunk_bytes(mut self, n: usize) -> Self {
        self.chunk_bytes = n;
        self
    }

    /// The head of `text` that holds more tokens than the model keeps, or all of it (see
    /// the module header). Tokenizing the head gives the text's first tokens.
    pub fn head<'t>(&self, text: &'t str) -> Result<&'t str, TokenizeError> {
        Ok(self.measure(text)?.as_str())
    }

    /// [`ModelTokenizer::head`], with its token count when it was counted.
    fn measure<'t>(&self, text: &'t str) -> Result<Head<'t>, TokenizeError> {
        if text.len() <= self.chunk_bytes {
            return Ok(Head { text, end: text.len(), count: None });
        }
        let mut head = Head { text, end: 0, count: Some(0) };
        let keep = self.max_tokens + HEAD_MARGIN + 1;
        // Where the last piece starts, and the tokens before it.
        let mut last = (0, 0);
        while !head.is_whole() && head.count.unwrap_or(0) < keep {
            last = (head.end, head.count.unwrap_or(0));
            self.grow(&mut head)?;
        }
        if head.count.unwrap_or(0) >= keep {
            self.trim(&mut head, last, keep)?;
        }
        Ok(head)
    }

    /// Cuts the head's last piece (from byte `start`, after `before` tokens) at the first
    /// boundary a piece may end at ([`piece_end`]) after the head's `keep`-th token. A pair
    /// of long texts is encoded from such heads, and for a truncated pair the tokenizer
    /// merges the two sides' overflows pairwise: its work and memory grow with the product
    /// of the sides' lengths (two heads of a 4 KiB piece of one-letter words each, for a
    /// model of 64 tokens: 175 MiB). Left as it is when there is no such boundary.
    fn trim(&self, head: &mut Head<'_>, (start, before): (usize, usize), keep: usize) -> Result<(), TokenizeError> {
        let piece = self.plain.encode(&head.text[start..head.end], false).map_err(fail)?;
        let Some(&(_, token_end)) = piece.get_offsets().get(keep - before - 1) else { return Ok(()) };
        let Some(cut) = cut_after(head.text, start + token_end, head.end) else { return Ok(()) };
        let n = self.plain.encode_fast(&head.text[start..cut], false).map_err(fail)?.len();
        if before + n >= keep {
            head.end = cut;
            head.count = Some(before + n);
        }
        Ok(())
    }

    /// Adds the next piece of the text to `head`.
    fn grow(&self, head: &mut Head<'_>) -> Result<(), TokenizeError> {
        let end = piece_end(head.text, head.end, self.chunk_bytes);
        let n = self.plain.encode_fast(&head.text[head.end..end], false).map_err(fail)?.len();
        head.count = Some(head.count.unwrap_or(0) + n);
        head.end = end;
        Ok(())
    }

    /// The tokens in `head`, counted now if they were not.
    fn count(&self, head: &mut Head<'_>) -> Result<usize, TokenizeError> {
        match head.count {
            Some(n) => Ok(n),
            None => {
                let n = self.plain.encode_fast(head.as_str(), false).map_err(fail)?.len();
                head.count = Some(n);
                Ok(n)
            }
        }
    }

    /// Grows the heads of a (query, document) pair until the longer head is the longer
    /// text's: `longest_first` truncation keeps the shorter sequence whole when it fits
    /// and gives the longer one the odd token otherwise, so which is longer must not
    /// change by cutting. Afterwards at least one head is its whole text, and the heads'
    /// counts are equal only when both are. Counting costs at most the shorter text; the
    /// settled heads are for comparing only (two long texts of about the same length end
    /// up whole): [`ModelTokenizer::pair_heads`] cuts what is encoded.
    fn settle<'t>(&self, a: &mut Head<'t>, b: &mut Head<'t>) -> Result<(), TokenizeError> {
        if a.is_whole() && b.is_whole() {
            return Ok(());
        }
        loop {
            let (na, nb) = (self.count(a)?, self.count(b)?);
            let grow = match na.cmp(&nb) {
                std::cmp::Ordering::Less if !a.is_whole() => &mut *a,
                std::cmp::Ordering::Greater if !b.is_whole() => &mut *b,
                std::cmp::Ordering::Equal if !a.is_whole() => &mut *a,
                std::cmp::Ordering::Equal if !b.is_whole() => &mut *b,
                _ => return Ok(()),
            };
            self.grow(grow)?;
        }
    }

    /// The heads of a (query, document) pair to encode: the short heads `query` and `doc`
    /// ([`ModelTokenizer::measure`]), the one that is truly the longer grown by a piece or
    /// two until it is the longer head too (`query_longer`, from
    /// [`ModelTokenizer::settle`]). Both stay within a piece or so of the model's limit,
    /// so `longest_first` truncation makes the same decision as on the whole texts (the
    /// shorter is whole whenever its exact length matters) without the tokenizer ever
    /// holding a long text: a truncated pair keeps what it cut as `overflowing`, and
    /// merging the two sides' overflows is quadratic in their lengths.
    fn pair_heads<'t>(
        &self,
        mut query: Head<'t>,
        mut doc: Head<'t>,
        query_longer: bool,
    ) -> Result<(&'t str, &'t str), TokenizeError> {
        if query_longer {
            while !query.is_whole() && self.count(&mut query)? <= self.count(&mut doc)? {
                self.grow(&mut query)?;
            }
        } else {
            while !doc.is_whole() && self.count(&mut doc)? < self.count(&mut query)? {
                self.grow(&mut doc)?;
            }
        }
        Ok((query.as_str(), doc.as_str()))
    }

    fn check(&self, enc: &Encoding, index: usize, truncate: bool) -> Result<(), TokenizeError> {
        if !truncate && !enc.get_overflowing().is_empty() {
            return Err(TokenizeError::TooLong { index, limit: self.max_tokens });
        }
        Ok(())
    }

    /// Texts as the model's own tokenizer encodes them (with special tokens). A text with
    /// no token of its own (only characters the tokenizer drops) is refused like `""`.
    pub fn encode_texts(&self, texts: &[&str], truncate: bool) -> Result<Vec<Tokens>, TokenizeError> {
        let heads: Vec<&str> = texts.iter().map(|t| self.head(t)).collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(heads.len());
        for (first, group) in groups(&heads, |t| t.len()) {
            let encodings = if group.len() == 1 {
                vec![self.tokenizer.encode_fast(group[0], true).map_err(fail)?]
            } else {
                let inputs: Vec<EncodeInput> = group.iter().map(|t| EncodeInput::from(*t)).collect();
                encode_each(&self.tokenizer, inputs, true)?
            };
            for (k, enc) in encodings.iter().enumerate() {
                self.check(enc, first + k, truncate)?;
                if enc.len() <= self.added_single {
                    return Err(TokenizeError::Empty { index: first + k });
                }
                out.push(to_tokens(enc, false));
            }
        }
        Ok(out)
    }

    /// Texts with their token strings, for `/v1/tokenize`.
    pub fn tokenize_with_pieces(&self, text: &str, truncate: bool) -> Result<(Vec<u32>, Vec<String>), TokenizeError> {
        let enc = self.tokenizer.encode(self.head(text)?, true).map_err(fail)?;
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
        let mut query = self.measure(query)?;
        if self.count(&mut query)? == 0 {
            return Err(TokenizeError::EmptyQuery);
        }
        let mut heads: Vec<Head> = documents.iter().map(|d| self.measure(d)).collect::<Result<_, _>>()?;
        // An empty document is refused as an empty embeddings input is: it has no text to score.
        for (index, head) in heads.iter_mut().enumerate() {
            if self.count(head)? == 0 {
                return Err(TokenizeError::Empty { index });
            }
        }
        let mut out = Vec::with_capacity(heads.len());
        match &self.judge {
            Some(JudgeTemplate::Joint { prefix, suffix, body, template, default_instruction }) => {
                let query = query.as_str();
                let documents: Vec<&str> = heads.iter().map(Head::as_str).collect();
                let instruction = self.head(instruction.unwrap_or(default_instruction))?;
                let extra = instruction.len() + query.len();
                for (first, group) in groups(&documents, |d| d.len() + extra) {
                    let bodies: Vec<EncodeInput> =
                        group.iter().map(|d| EncodeInput::from(fill(template, instruction, query, d))).collect();
                    for (k, enc) in encode_each(body, bodies, true)?.iter().enumerate() {
                        self.check(enc, first + k, truncate)?;
                        out.push(Tokens { ids: [prefix, enc.get_ids(), suffix].concat(), type_ids: Vec::new() });
                    }
                }
                return Ok(out);
            }
            Some(JudgeTemplate::Apart {
                prefix,
                sep,
                tail,
                budget,
                query: plain_query,
                instructed_query,
                document,
            }) => {
                // The query and each document are heads of at most a piece or so beyond
                // the limit, so encoding them whole and cutting the ids is bounded.
                // The package adds the instruction line for a non-empty one (`if instruction`).
                let query_text = match instruction.filter(|i| !i.is_empty()) {
                    Some(instruction) => fill(instructed_query, self.head(instruction)?, query.as_str(), ""),
                    None => fill(plain_query, "", query.as_str(), ""),
                };
                let mut query_ids = self.plain.encode_fast(query_text, false).map_err(fail)?.get_ids().to_vec();
                let query_limit = budget * 3 / 4;
                if query_ids.len() > query_limit {
                    if !truncate {
                        return Err(TokenizeError::QueryTooLong { limit: query_limit });
                    }
                    query_ids.truncate(query_limit);
                }
                let doc_limit = budget - query_ids.len() - sep.len();
                let documents: Vec<&str> = heads.iter().map(Head::as_str).collect();
                for (first, group) in groups(&documents, |d| d.len()) {
                    let texts: Vec<EncodeInput> =
                        group.iter().map(|d| EncodeInput::from(fill(document, "", "", d))).collect();
                    for (k, enc) in encode_each(&self.plain, texts, false)?.iter().enumerate() {
                        let doc_ids = enc.get_ids();
                        if doc_ids.len() > doc_limit && !truncate {
                            return Err(TokenizeError::TooLong { index: first + k, limit: self.max_tokens });
                        }
                        let doc_ids = &doc_ids[..doc_ids.len().min(doc_limit)];
                        out.push(Tokens {
                            ids: [prefix, &query_ids, sep, doc_ids, tail].concat(),
                            type_ids: Vec::new(),
                        });
                    }
                }
                return Ok(out);
            }
            None => {}
        }
        // Which text of each pair is the longer, by counting: the query's head grows
        // across documents, so the query is counted at most once in all.
        let mut counted = query;
        let mut pairs = Vec::with_capacity(heads.len());
        for &doc in &heads {
            let mut counted_doc = doc;
            self.settle(&mut counted, &mut counted_doc)?;
            let query_longer = self.count(&mut counted)? > self.count(&mut counted_doc)?;
            pairs.push(self.pair_heads(query, doc, query_longer)?);
        }
        let with_types = self.segment_ids;
        for (first, group) in groups(&pairs, |(q, d)| q.len() + d.len()) {
            let inputs: Vec<EncodeInput> = group.iter().map(|&(q, d)| EncodeInput::from((q, d))).collect();
            for (k, enc) in encode_each(&self.tokenizer, inputs, true)?.iter().enumerate() {
                self.check(enc, first + k, truncate)?;
                out.push(to_tokens(enc, with_types));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! The cut to a head must not change a single id: every fixture tokenizer (WordPiece,
    //! Unigram + Metaspace, byte-level BPE; single texts, cross-encoder pairs, the
    //! Qwen3-Reranker and mxbai-rerank-v2 prompts) and the real all-MiniLM-L6-v2 encode
    //! random texts the same cut in tiny pieces as whole.
    use super::*;
    use proptest::prelude::*;

    /// A fixture model, or the real all-MiniLM-L6-v2 that `scripts/setup` fetches.
    fn fixture(name: &str) -> std::path::PathBuf {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        match name {
            "all-MiniLM-L6-v2" => root.join(".deps").join(name),
            _ => root.join("tests/fixtures/models").join(name),
        }
    }

    /// The tokenizer whole, and the same cutting texts in pieces of `chunk` bytes.
    fn pair(name: &str, chunk: usize) -> (ModelTokenizer, ModelTokenizer) {
        let dir = fixture(name);
        let facts = mlx_serve_protocol::model_dir::inspect(&dir).unwrap();
        let whole = ModelTokenizer::load(&dir, &facts).unwrap().with_chunk_bytes(usize::MAX);
        let cut = ModelTokenizer::load(&dir, &facts).unwrap().with_chunk_bytes(chunk);
        (whole, cut)
    }

    /// Words (letters, digits, punctuation, accents and combining marks, CJK, emoji,
    /// characters tokenizers drop) joined by separators of every kind of whitespace. Every
    /// third part ends in a letter and a space, so no stretch without a cut point is
    /// longer than ~130 bytes, less than the pieces.
    fn text() -> impl Strategy<Value = String> {
        let word = prop::collection::vec(
            prop_oneof![
                4 => prop::char::range('a', 'z'),
                1 => prop::char::range('A', 'Z'),
                1 => prop::char::range('0', '9'),
                1 => prop::sample::select(vec!['.', ',', '!', '\'', '-', '<', '>', '|', 'é', 'ß', '\u{301}', '中', '文', '😀', '\0', '\u{200b}']),
            ],
            1..8,
        )
        .prop_map(|cs| cs.into_iter().collect::<String>());
        let sep =
            prop::sample::select(vec![" ", " ", "  ", " \n", "\n ", "\t", "\n", " \u{a0}", "   ", "\u{3000}", ""]);
        prop::collection::vec((word, sep), 1..120).prop_map(|parts| {
            parts
                .into_iter()
                .enumerate()
                .map(|(i, (w, s))| if i % 3 == 2 { format!("{w}x {s}") } else { format!("{w}{s}") })
                .collect::<String>()
        })
    }

    fn same_texts(whole: &ModelTokenizer, cut: &ModelTokenizer, text: &str) {
        for truncate in [true, false] {
            let a = whole.encode_texts(&[text], truncate).map_err(|e| e.to_string());
            let b = cut.encode_texts(&[text], truncate).map_err(|e| e.to_string());
            assert_eq!(a, b, "truncate {truncate}: {text:?}");
        }
        let a = whole.tokenize_with_pieces(text, true).map_err(|e| e.to_string());
        let b = cut.tokenize_with_pieces(text, true).map_err(|e| e.to_string());
        assert_eq!(a, b, "{text:?}");
    }

    fn same_pairs(whole: &ModelTokenizer, cut: &ModelTokenizer, query: &str, doc: &str) {
        for truncate in [true, false] {
            let a = whole.encode_pairs(query, &[doc, "short"], Some(query), truncate).map_err(|e| e.to_string());
            let b = cut.encode_pairs(query, &[doc, "short"], Some(query), truncate).map_err(|e| e.to_string());
            assert_eq!(a, b, "truncate {truncate}: {query:?} / {doc:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn a_head_encodes_like_the_whole_text(text in text(), chunk in 140usize..300) {
            for name in ["tiny-bert-embed", "tiny-xlmr-embed", "tiny-qwen3-embed", "all-MiniLM-L6-v2"] {
                let (whole, cut) = pair(name, chunk);
                same_texts(&whole, &cut, &text);
            }
        }

        #[test]
        fn pair_heads_encode_like_whole_pairs(query in text(), doc in text(), chunk in 140usize..300) {
            for name in ["tiny-bert-rerank", "tiny-xlmr-rerank", "tiny-qwen3-rerank", "tiny-qwen2-mxbai-rerank"] {
                let (whole, cut) = pair(name, chunk);
                same_pairs(&whole, &cut, &query, &doc);
            }
        }
    }

    #[test]
    fn a_huge_text_is_read_only_to_its_head() {
        let (_, tok) = pair("tiny-bert-embed", 4096);
        let text = "word ".repeat(2_000_000);
        let head = tok.head(&text).unwrap();
        assert!(head.len() <= 2 * 4096, "{}", head.len());
        let ids = tok.encode_texts(&[&text], true).unwrap();
        assert_eq!(ids[0].ids.len(), tok.max_tokens);
        assert!(matches!(tok.encode_texts(&[&text], false), Err(TokenizeError::TooLong { .. })));
    }

    #[test]
    fn a_pair_of_huge_texts_is_encoded_from_heads() {
        // Equal lengths (settling counts both texts to the end) and one word apart either way.
        let (whole, cut) = pair("tiny-bert-rerank", 4096);
        for (q, d) in [(5000, 5000), (5001, 5000), (5000, 5001)] {
            same_pairs(&whole, &cut, &"q ".repeat(q), &"d ".repeat(d));
        }
        // Whole, these two would be merged overflow by overflow: millions of encodings.
        let big = "w ".repeat(1_000_000);
        let ids = cut.encode_pairs(&big, &[&big], None, true).unwrap();
        assert_eq!(ids[0].ids.len(), cut.max_tokens);
    }

    /// mxbai-rerank-v2's pairs are the ids mixedbread-ai's package builds
    /// (`MxbaiRerankV2.prepare_inputs`, recorded by tests/fixtures/make_qwen2_mxbai.py): the
    /// template, the query cut at 3/4 of the budget, the document at what is left, the
    /// instruction line. Past the cuts, `truncate: false` is refused.
    #[test]
    fn mxbai_pairs_are_the_packages_ids() {
        let name = "tiny-qwen2-mxbai-rerank";
        let (tok, _) = pair(name, 4096);
        let path = fixture(name).join("../../reference").join(format!("{name}.json"));
        let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (mut cut_docs, mut cut_queries) = (0, 0);
        for case in reference["cases"].as_array().unwrap() {
            let query = case["query"].as_str().unwrap();
            let docs: Vec<&str> = case["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
            let instruction = case["instruction"].as_str();
            let want: Vec<Vec<u32>> = serde_json::from_value(case["pairs_input_ids"].clone()).unwrap();
            let got: Vec<Vec<u32>> =
                tok.encode_pairs(query, &docs, instruction, true).unwrap().into_iter().map(|t| t.ids).collect();
            assert_eq!(got, want, "{}", case["name"]);
            match tok.encode_pairs(query, &docs, instruction, false) {
                Ok(_) => {}
                Err(TokenizeError::QueryTooLong { .. }) => cut_queries += 1,
                Err(TokenizeError::TooLong { index, .. }) => {
                    assert_eq!(want[index].len(), tok.max_tokens, "{}", case["name"]);
                    cut_docs += 1;
                }
                Err(e) => panic!("{}: {e}", case["name"]),
            }
        }
        assert!(cut_docs >= 1 && cut_queries >= 2, "{cut_docs} documents and {cut_queries} queries cut");
    }

    #[test]
    fn placeholders_are_filled_once() {
        let t = "instruction: {instruction}\nquery: {query} {x} {";
        assert_eq!(fill(t, "{query}", "{document}", "d"), "instruction: {query}\nquery: {document} {x} {");
    }

    #[test]
    fn text_without_tokens_is_empty() {
        let (tok, _) = pair("tiny-bert-embed", 4096);
        for t in ["\0", "\u{200b}\u{200b}", "\0 \0"] {
            assert!(matches!(tok.encode_texts(&["ok", t], true), Err(TokenizeError::Empty { index: 1 })), "{t:?}");
        }
        let (rr, _) = pair("tiny-bert-rerank", 4096);
        assert!(matches!(rr.encode_pairs("\0", &["doc"], None, true), Err(TokenizeError::EmptyQuery)));
        assert!(matches!(rr.encode_pairs("q", &["doc", ""], None, true), Err(TokenizeError::Empty { index: 1 })));
        assert!(matches!(rr.encode_pairs("q", &["\u{200b}"], None, true), Err(TokenizeError::Empty { index: 0 })));
    }
}
