//! Late chunking's input (docs/long-documents.md): a document's token ids in one or more
//! macro-windows with special tokens, and each chunk's character span mapped to the rows
//! of its tokens through the tokenizer's offsets. The worker pools each chunk's rows
//! (`SupervisorMessage::EmbedPooled`).
//!
//! Spans are half-open `[start, end)` in Unicode code points (Python `str` indices),
//! ascending and not overlapping (`late_rules.rs` makes them from a separator or from
//! sentences). A token belongs to the chunk that holds its first non-whitespace
//! character (its first character when it is all whitespace), so adjacent
//! spans split the tokens between them without sharing one; special tokens (`[CLS]`,
//! `[SEP]`, a trailing end-of-text) belong to no chunk but are computed with the document,
//! as context.
//!
//! **Macro-windows.** A document longer than the model's window is tokenized whole without
//! special tokens and cut as chunked embedding cuts it (`windows.rs`): windows of the
//! model's limit less its special tokens, each starting `overlap` tokens before the end of
//! the one before, each wrapped in the special tokens. A token lying in two windows takes
//! its state from the one where it is farthest from an edge — the larger of its distances
//! to the window's first and last content token — ties to the earlier window, so an
//! overlap is split at its middle and every token has at least half the overlap of
//! context on each side. A document within the window is one window, the ids a whole
//! input gets.

use tokenizers::{Encoding, Token};

use super::late_rules::ChunkRule;
use super::{fail, ModelTokenizer, Tokens};

/// A document ready for the worker: its windows, and per chunk its span and its rows
/// (half-open ranges counted across the windows laid end to end).
#[derive(Debug, Clone, PartialEq)]
pub struct LateDocument {
    pub windows: Vec<Tokens>,
    pub spans: Vec<(usize, usize)>,
    pub chunks: Vec<Vec<(u32, u32)>>,
}

/// Why a document's chunks cannot be computed; the message names the chunk.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpanError {
    #[error("chunk {index}: span [{start}, {end}) is empty or outside the document ({len} characters)")]
    OutOfRange { index: usize, start: usize, end: usize, len: usize },
    #[error("chunk {index}: spans must be in ascending order and must not overlap")]
    Unsorted { index: usize },
    #[error(
        "chunk {index}: span [{start}, {end}) holds no token (a token belongs to the chunk with its first non-whitespace character)"
    )]
    NoTokens { index: usize, start: usize, end: usize },
    #[error("the document has more than {limit} tokens (limits.max_tokens_per_request)")]
    TooMany { limit: usize },
    #[error("overlap_tokens {overlap} leaves no room: model windows hold {window} tokens besides the special tokens, so the overlap must be less")]
    Overlap { overlap: usize, window: usize },
    #[error("no chunks: the document holds no text to chunk")]
    NoChunks,
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
}

impl ModelTokenizer {
    /// The overlap of late chunking's macro-windows when the request names none: a quarter
    /// of a window.
    pub fn default_late_overlap(&self) -> usize {
        self.window_tokens() / 4
    }

    /// `text`'s windows (each repeating `overlap` tokens of the one before when it needs
    /// more than one) and the rows of the chunks `rule` picks. `max_tokens` bounds the
    /// document's tokens (the request's budget).
    pub fn late_chunks(
        &self,
        text: &str,
        rule: &ChunkRule,
        overlap: usize,
        max_tokens: usize,
    ) -> Result<LateDocument, SpanError> {
        let window = self.window_tokens();
        if overlap >= window {
            return Err(SpanError::Overlap { overlap, window });
        }
        // Count first keeping ids only: the offsets of a huge text are not held to refuse it.
        match self.content_ids(text, max_tokens) {
            None => return Err(SpanError::TooMany { limit: max_tokens }),
            Some(Err(e)) => return Err(SpanError::Tokenize(e.to_string())),
            Some(Ok(_)) => {}
        }
        let enc = self.plain.encode(text, false).map_err(|e| SpanError::Tokenize(fail(e).to_string()))?;
        // Byte offset of each code point, and of the end.
        let bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).chain(std::iter::once(text.len())).collect();
        let chars = bytes.len() - 1;
        // Where each token starts: its first non-whitespace character (byte-level BPE
        // tokens such as GPT-2's and Qwen's `Ġword` carry the space before the word).
        let starts: Vec<usize> = enc
            .get_offsets()
            .iter()
            .map(|&(b0, b1)| {
                let lead = text.get(b0..b1).map_or(0, |t| t.len() - t.trim_start().len());
                let b = if b0 + lead < b1 { b0 + lead } else { b0 };
                bytes.partition_point(|&x| x < b)
            })
            .collect();
        let spans = rule.spans(text, &starts);
        if spans.is_empty() {
            return Err(SpanError::NoChunks);
        }
        let mut prev_end = 0;
        for (index, &(start, end)) in spans.iter().enumerate() {
            if start >= end || end > chars {
                return Err(SpanError::OutOfRange { index, start, end, len: chars });
            }
            if start < prev_end {
                return Err(SpanError::Unsorted { index });
            }
            prev_end = end;
        }
        // Each chunk's tokens: a range of the document's content tokens.
        let mut ranges: Vec<Option<(usize, usize)>> = vec![None; spans.len()];
        let mut k = 0;
        for (t, (&start, &special)) in starts.iter().zip(enc.get_special_tokens_mask()).enumerate() {
            if special == 1 {
                continue;
            }
            while k < spans.len() && start >= spans[k].1 {
                k += 1;
            }
            if k == spans.len() {
                break;
            }
            if start >= spans[k].0 {
                ranges[k].get_or_insert((t, t + 1)).1 = t + 1;
            }
        }
        let ranges: Vec<(usize, usize)> = ranges
            .into_iter()
            .enumerate()
            .map(|(index, r)| r.ok_or(SpanError::NoTokens { index, start: spans[index].0, end: spans[index].1 }))
            .collect::<Result<_, _>>()?;
        let ids = enc.get_ids();
        let cuts = cut(ids.len(), window, overlap);
        let (mut windows, mut first_row) = (Vec::with_capacity(cuts.len()), Vec::with_capacity(cuts.len()));
        let mut rows = 0;
        for &(s, e) in &cuts {
            let part =
                Encoding::from_tokens(ids[s..e].iter().map(|&id| Token::new(id, String::new(), (0, 0))).collect(), 0);
            let wrapped =
                self.plain.post_process(part, None, true).map_err(|e| SpanError::Tokenize(fail(e).to_string()))?;
            let prefix = wrapped.get_special_tokens_mask().iter().take_while(|&&m| m == 1).count();
            first_row.push(rows + prefix);
            rows += wrapped.get_ids().len();
            windows.push(Tokens { ids: wrapped.get_ids().to_vec(), type_ids: Vec::new() });
        }
        let row_of = |t: usize| {
            let w = owner(&cuts, t);
            (first_row[w] + t - cuts[w].0) as u32
        };
        let chunks = ranges
            .iter()
            .map(|&(a, b)| {
                let mut out: Vec<(u32, u32)> = Vec::new();
                for t in a..b {
                    let r = row_of(t);
                    match out.last_mut() {
                        Some(last) if last.1 == r => last.1 = r + 1,
                        _ => out.push((r, r + 1)),
                    }
                }
                out
            })
            .collect();
        Ok(LateDocument { windows, spans, chunks })
    }
}

/// The windows of `n` content tokens: `[start, end)`, `window` long (the last shorter),
/// each starting `overlap` before the end of the one before; one when `n` fits.
fn cut(n: usize, window: usize, overlap: usize) -> Vec<(usize, usize)> {
    let mut out = vec![(0, n.min(window))];
    while out.last().unwrap().1 < n {
        let start = out.last().unwrap().1 - overlap;
        out.push((start, (start + window).min(n)));
    }
    out
}

/// The window token `t` takes its state from: of those holding it, where it is farthest
/// from an edge; ties to the earlier.
fn owner(cuts: &[(usize, usize)], t: usize) -> usize {
    let first = cuts.partition_point(|&(_, e)| e <= t);
    let mut best = (first, 0);
    for (w, &(s, e)) in cuts.iter().enumerate().skip(first) {
        if s > t {
            break;
        }
        let d = (t - s).min(e - 1 - t);
        if w == first || d > best.1 {
            best = (w, d);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> ModelTokenizer {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps/all-MiniLM-L6-v2");
        let facts = mlx_serve_protocol::model_dir::inspect(&dir).unwrap();
        ModelTokenizer::load(&dir, &facts).unwrap()
    }

    fn spans(s: &[(usize, usize)]) -> ChunkRule {
        ChunkRule::Spans(s.to_vec())
    }

    /// Each chunk's tokens are the ones the tokenizer gives its own text, in place, and
    /// the document is what a whole input gets ([CLS] … [SEP]).
    #[test]
    fn spans_map_to_their_tokens_through_the_offsets() {
        let tok = minilm();
        let text = "Café au lait. The json module encodes JSON.";
        let split = text.chars().position(|c| c == 'T').unwrap();
        let chars = text.chars().count();
        let doc = tok.late_chunks(text, &spans(&[(0, split), (split, chars)]), 0, 10_000).unwrap();
        assert_eq!(doc.windows, tok.encode_texts(&[text], true).unwrap());
        let first: String = text.chars().take(split).collect();
        let second: String = text.chars().skip(split).collect();
        for (part, rows) in [first, second].iter().zip(&doc.chunks) {
            let [(s, e)] = rows[..] else { panic!("one range per chunk in one window: {rows:?}") };
            let own = tok.plain.encode_fast(part.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(&doc.windows[0].ids[s as usize..e as usize], own.as_slice(), "{part}");
        }
        assert_eq!(doc.chunks[0][0].0, 1, "[CLS] is in no chunk");
        assert_eq!(doc.chunks[1][0].1 as usize, doc.windows[0].ids.len() - 1, "nor [SEP]");
    }

    /// Qwen's byte-level BPE puts the space before a word in its token (`Ġt`): the
    /// token still belongs to the span that starts at the word, so trimmed spans lose none.
    #[test]
    fn a_token_with_its_leading_space_belongs_to_the_span_of_its_word() {
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-qwen3-embed");
        let facts = mlx_serve_protocol::model_dir::inspect(&dir).unwrap();
        let tok = ModelTokenizer::load(&dir, &facts).unwrap();
        let text = "One two. Three four.";
        let enc = tok.plain.encode(text, false).unwrap();
        let pieces: Vec<&str> = enc.get_offsets().iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(&pieces[9..], ["ree", " f", "our", "."], "the fixture's tokens keep the space before a word");
        // "four." starts at its `f`; its first token is " f".
        let doc = tok.late_chunks(text, &spans(&[(0, 8), (15, 20)]), 0, 10_000).unwrap();
        let rows: Vec<u32> = doc.chunks.iter().map(|c| c.iter().map(|&(s, e)| e - s).sum()).collect();
        assert_eq!(rows, [7, 3], "\" f\", \"our\", \".\" in the second chunk: {:?}", doc.chunks);
    }

    #[test]
    fn bad_spans_are_refused_naming_the_chunk() {
        let tok = minilm();
        let text = "one two  three";
        let err = |s: &[(usize, usize)]| tok.late_chunks(text, &spans(s), 0, 10_000).unwrap_err();
        assert_eq!(err(&[]), SpanError::NoChunks);
        assert!(matches!(err(&[(0, 3), (2, 5)]), SpanError::Unsorted { index: 1 }));
        assert!(matches!(err(&[(4, 7), (0, 3)]), SpanError::Unsorted { index: 1 }));
        assert!(matches!(err(&[(0, 15)]), SpanError::OutOfRange { index: 0, .. }));
        assert!(matches!(err(&[(3, 3)]), SpanError::OutOfRange { index: 0, .. }));
        assert!(matches!(err(&[(0, 3), (7, 9)]), SpanError::NoTokens { index: 1, .. }), "two spaces hold no token");
        let long = "word ".repeat(400);
        assert_eq!(tok.late_chunks(&long, &spans(&[(0, 10)]), 0, 300), Err(SpanError::TooMany { limit: 300 }));
        assert!(matches!(tok.late_chunks(text, &spans(&[(0, 3)]), 254, 10_000), Err(SpanError::Overlap { .. })));
    }

    #[test]
    fn windows_overlap_and_split_each_overlap_at_its_middle() {
        assert_eq!(cut(10, 10, 3), [(0, 10)]);
        assert_eq!(cut(20, 8, 2), [(0, 8), (6, 14), (12, 20)]);
        let c = cut(20, 8, 4);
        assert_eq!(c, [(0, 8), (4, 12), (8, 16), (12, 20)]);
        // Token 5 is 5 from window 0's start and 2 from its end; 1 and 6 in window 1.
        let owners: Vec<usize> = (0..20).map(|t| owner(&c, t)).collect();
        assert_eq!(owners, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3]);
    }

    /// A document of several windows: each window is [CLS] + its tokens + [SEP], and every
    /// content token sits in exactly one chunk row, taken from its owning window.
    #[test]
    fn a_long_document_becomes_overlapping_windows() {
        let tok = minilm();
        let text = (0..300).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let chars = text.chars().count();
        let content = tok.plain.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
        let doc = tok.late_chunks(&text, &spans(&[(0, chars)]), 32, 100_000).unwrap();
        assert!(doc.windows.len() >= 3, "{} content tokens", content.len());
        assert!(doc.windows.iter().all(|w| w.ids.len() <= 256 && w.ids[0] == 101 && *w.ids.last().unwrap() == 102));
        let all: Vec<u32> = doc.windows.iter().flat_map(|w| w.ids.clone()).collect();
        let picked: Vec<u32> = doc.chunks[0].iter().flat_map(|&(s, e)| all[s as usize..e as usize].to_vec()).collect();
        assert_eq!(picked, content, "every token once, in order");
        assert_eq!(doc.chunks[0].len(), doc.windows.len(), "one range per window");
    }
}
