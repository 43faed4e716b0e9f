//! Late chunking's input (docs/long-documents.md): a document's token ids with special
//! tokens, and each chunk's character span mapped to the range of its tokens through the
//! tokenizer's offsets. The worker pools each range (`SupervisorMessage::EmbedPooled`).
//!
//! Spans are half-open `[start, end)` in Unicode code points (Python `str` indices),
//! ascending and not overlapping. A token belongs to the chunk that holds its first
//! character, so adjacent spans split the tokens between them without sharing one; special
//! tokens (`[CLS]`, `[SEP]`, a trailing end-of-text) belong to no chunk but are computed
//! with the document, as context. Only a document within the model's window is taken:
//! macro-windows for longer ones are not built yet.

use super::{fail, ModelTokenizer, Tokens};

/// A document ready for the worker, and its chunks as token ranges into `tokens.ids`.
#[derive(Debug, Clone, PartialEq)]
pub struct LateDocument {
    pub tokens: Tokens,
    pub chunks: Vec<(u32, u32)>,
}

/// Why a document's chunks cannot be computed; the message names the chunk.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpanError {
    #[error("chunk {index}: span [{start}, {end}) is empty or outside the document ({len} characters)")]
    OutOfRange { index: usize, start: usize, end: usize, len: usize },
    #[error("chunk {index}: spans must be in ascending order and must not overlap")]
    Unsorted { index: usize },
    #[error(
        "chunk {index}: span [{start}, {end}) holds no token (a token belongs to the chunk with its first character)"
    )]
    NoTokens { index: usize, start: usize, end: usize },
    #[error("the document has {tokens} tokens, more than the model's window of {limit}; late chunking over macro-windows is not supported yet")]
    TooLong { tokens: usize, limit: usize },
    #[error("no chunks: send at least one span")]
    NoChunks,
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
}

impl ModelTokenizer {
    /// `text` tokenized whole with special tokens, and `spans`' token ranges.
    pub fn late_chunks(&self, text: &str, spans: &[(usize, usize)]) -> Result<LateDocument, SpanError> {
        if spans.is_empty() {
            return Err(SpanError::NoChunks);
        }
        // Byte offset of each code point, and of the end.
        let bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).chain(std::iter::once(text.len())).collect();
        let chars = bytes.len() - 1;
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
        let enc = self.plain.encode(text, true).map_err(|e| SpanError::Tokenize(fail(e).to_string()))?;
        if enc.get_ids().len() > self.max_tokens {
            return Err(SpanError::TooLong { tokens: enc.get_ids().len(), limit: self.max_tokens });
        }
        let mut ranges: Vec<Option<(u32, u32)>> = vec![None; spans.len()];
        let mut k = 0;
        for (t, (&(start, _), &special)) in enc.get_offsets().iter().zip(enc.get_special_tokens_mask()).enumerate() {
            if special == 1 {
                continue;
            }
            while k < spans.len() && start >= bytes[spans[k].1] {
                k += 1;
            }
            if k == spans.len() {
                break;
            }
            if start >= bytes[spans[k].0] {
                let r = ranges[k].get_or_insert((t as u32, t as u32 + 1));
                r.1 = t as u32 + 1;
            }
        }
        let chunks = ranges
            .into_iter()
            .enumerate()
            .map(|(index, r)| r.ok_or(SpanError::NoTokens { index, start: spans[index].0, end: spans[index].1 }))
            .collect::<Result<_, _>>()?;
        Ok(LateDocument { tokens: Tokens { ids: enc.get_ids().to_vec(), type_ids: Vec::new() }, chunks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> ModelTokenizer {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps/all-MiniLM-L6-v2");
        let facts = mlx_serve_protocol::model_dir::inspect(&dir).unwrap();
        ModelTokenizer::load(&dir, &facts).unwrap()
    }

    /// Each chunk's tokens are the ones the tokenizer gives its own text, in place, and
    /// the document is what a whole input gets ([CLS] … [SEP]).
    #[test]
    fn spans_map_to_their_tokens_through_the_offsets() {
        let tok = minilm();
        let text = "Café au lait. The json module encodes JSON.";
        let split = text.chars().position(|c| c == 'T').unwrap();
        let chars = text.chars().count();
        let doc = tok.late_chunks(text, &[(0, split), (split, chars)]).unwrap();
        assert_eq!(doc.tokens, tok.encode_texts(&[text], true).unwrap()[0]);
        let first: String = text.chars().take(split).collect();
        let second: String = text.chars().skip(split).collect();
        for (part, &(s, e)) in [first, second].iter().zip(&doc.chunks) {
            let own = tok.plain.encode_fast(part.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(&doc.tokens.ids[s as usize..e as usize], own.as_slice(), "{part}");
        }
        assert_eq!(doc.chunks[0].0, 1, "[CLS] is in no chunk");
        assert_eq!(doc.chunks[1].1 as usize, doc.tokens.ids.len() - 1, "nor [SEP]");
    }

    #[test]
    fn bad_spans_are_refused_naming_the_chunk() {
        let tok = minilm();
        let text = "one two  three";
        let err = |spans: &[(usize, usize)]| tok.late_chunks(text, spans).unwrap_err();
        assert_eq!(err(&[]), SpanError::NoChunks);
        assert!(matches!(err(&[(0, 3), (2, 5)]), SpanError::Unsorted { index: 1 }));
        assert!(matches!(err(&[(4, 7), (0, 3)]), SpanError::Unsorted { index: 1 }));
        assert!(matches!(err(&[(0, 15)]), SpanError::OutOfRange { index: 0, .. }));
        assert!(matches!(err(&[(3, 3)]), SpanError::OutOfRange { index: 0, .. }));
        assert!(matches!(err(&[(0, 3), (7, 9)]), SpanError::NoTokens { index: 1, .. }), "two spaces hold no token");
        let long = "word ".repeat(400);
        assert!(matches!(tok.late_chunks(&long, &[(0, 10)]), Err(SpanError::TooLong { limit: 256, .. })));
    }
}
