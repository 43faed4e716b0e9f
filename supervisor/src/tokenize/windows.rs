//! Chunked embedding's input: a text longer than the model's window split into windows on
//! token boundaries, each wrapped in the model's special tokens as a whole input would be
//! (docs/long-documents.md).
//!
//! The text is tokenized once without special tokens, cut into windows of the model's
//! limit less its special tokens, each window starting `overlap` tokens before the end of
//! the one before (Hugging Face tokenizers' truncation `stride`, `Encoding::truncate`: what
//! `return_overflowing_tokens=True, stride=N` gives in `transformers`), and every window
//! goes through the tokenizer's post-processor (`[CLS] … [SEP]`, `<s> … </s>`, a trailing
//! EOS). A text within the window is one window, the ids plain encoding gives.
//!
//! Bounded: the text is tokenized in pieces (as `tokenize.rs` measures a head) keeping
//! only ids, 4 bytes a token, not the 100–250 bytes of a whole text's `Encoding`, and a
//! text with more tokens than the request may hold is refused as soon as that is seen.

use tokenizers::{Encoding, Token, TruncationDirection};

use super::{fail, piece_end, ModelTokenizer, TokenizeError, Tokens};

/// What becomes of an embedding input longer than the model's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongInput {
    /// 400 (`truncate: false`).
    Refuse,
    /// Its first window only.
    Truncate,
    /// Every window, pooled back to one vector; each window repeats `overlap` tokens.
    Chunk { overlap: usize },
}

impl LongInput {
    pub fn truncate(truncate: bool) -> LongInput {
        if truncate {
            LongInput::Truncate
        } else {
            LongInput::Refuse
        }
    }
}

/// Why a text cannot be chunked.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("overlap_tokens {overlap} leaves no room: model windows hold {window} tokens besides the special tokens, so the overlap must be less")]
    Overlap { overlap: usize, window: usize },
    #[error("input {index} has more tokens than a whole request may hold (limits.max_tokens_per_request: {limit})")]
    TooMany { index: usize, limit: usize },
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
}

impl ModelTokenizer {
    /// Tokens a window holds besides the special tokens the model adds.
    pub fn window_tokens(&self) -> usize {
        self.max_tokens.saturating_sub(self.added_single)
    }

    /// Checks an overlap against the window (it must leave each window a new token).
    pub fn check_overlap(&self, overlap: usize) -> Result<(), WindowError> {
        let window = self.window_tokens();
        if overlap >= window {
            return Err(WindowError::Overlap { overlap, window });
        }
        Ok(())
    }

    /// Each text's windows, in order, with special tokens. `max_tokens` bounds one text's
    /// tokens (the request's budget); `index_of` maps a text's position here to the
    /// request's, for errors.
    pub fn encode_windows(
        &self,
        texts: &[&str],
        overlap: usize,
        max_tokens: usize,
        index_of: impl Fn(usize) -> usize,
    ) -> Result<Vec<Vec<Tokens>>, WindowError> {
        self.check_overlap(overlap)?;
        let window = self.window_tokens();
        let mut out = Vec::with_capacity(texts.len());
        for (k, text) in texts.iter().enumerate() {
            let ids = self
                .content_ids(text, max_tokens)
                .ok_or(WindowError::TooMany { index: index_of(k), limit: max_tokens })??;
            if ids.is_empty() {
                return Err(TokenizeError::Empty { index: index_of(k) }.into());
            }
            let mut whole =
                Encoding::from_tokens(ids.into_iter().map(|id| Token::new(id, String::new(), (0, 0))).collect(), 0);
            whole.truncate(window, overlap, TruncationDirection::Right);
            let rest = whole.take_overflowing();
            let mut windows = Vec::with_capacity(1 + rest.len());
            for part in std::iter::once(whole).chain(rest) {
                let wrapped = self.plain.post_process(part, None, true).map_err(fail)?;
                windows.push(Tokens { ids: wrapped.get_ids().to_vec(), type_ids: Vec::new() });
            }
            out.push(windows);
        }
        Ok(out)
    }

    /// The ids of `text` without special tokens, tokenized in pieces (`piece_end`, the
    /// module header of `tokenize.rs`: the pieces' tokens are the whole text's), so only
    /// the ids of the whole text are held at once; `None` past `max_tokens` ids.
    pub(super) fn content_ids(&self, text: &str, max_tokens: usize) -> Option<Result<Vec<u32>, TokenizeError>> {
        let mut ids = Vec::new();
        let mut start = 0;
        while start < text.len() {
            let end = piece_end(text, start, self.chunk_bytes);
            match self.plain.encode_fast(&text[start..end], false) {
                Ok(piece) => ids.extend_from_slice(piece.get_ids()),
                Err(e) => return Some(Err(fail(e))),
            }
            if ids.len() > max_tokens {
                return None;
            }
            start = end;
        }
        Some(Ok(ids))
    }
}

#[cfg(test)]
mod tests {
    //! Windows against the tokenizer itself: a short text is its plain encoding; a long
    //! one's windows, special tokens removed and overlaps dropped, are the text's tokens.
    use super::*;

    fn tokenizer(name: &str) -> ModelTokenizer {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = match name {
            "all-MiniLM-L6-v2" => root.join(".deps").join(name),
            _ => root.join("tests/fixtures/models").join(name),
        };
        let facts = mlx_serve_protocol::model_dir::inspect(&dir).unwrap();
        ModelTokenizer::load(&dir, &facts).unwrap()
    }

    /// Special tokens before and after a single text's own tokens, from a short text's encoding.
    fn specials_before(tok: &ModelTokenizer) -> usize {
        let enc = tok.plain.encode_fast("x", true).unwrap();
        enc.get_special_tokens_mask().iter().take_while(|&&m| m == 1).count()
    }

    fn specials_after(tok: &ModelTokenizer) -> usize {
        tok.added_single - specials_before(tok)
    }

    #[test]
    fn windows_cover_the_text_with_the_overlap() {
        for (name, chunk) in
            [("tiny-bert-embed", 150), ("tiny-xlmr-embed", 4096), ("tiny-qwen3-embed", 170), ("all-MiniLM-L6-v2", 4096)]
        {
            // Small pieces for some: the windows must not depend on where pieces end.
            let tok = tokenizer(name).with_chunk_bytes(chunk);
            let short = "a short text";
            let plain = tok.encode_texts(&[short], true).unwrap();
            assert_eq!(tok.encode_windows(&[short], 3, 1 << 20, |k| k).unwrap()[0], plain, "{name}");

            let text: String = (0..3 * tok.max_tokens).map(|i| format!("word{} ", i % 97)).collect();
            let content = tok.plain.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
            let whole_first = tok.encode_texts(&[text.as_str()], true).unwrap().remove(0);
            for overlap in [0, 5] {
                let windows = tok.encode_windows(&[text.as_str()], overlap, 1 << 20, |k| k).unwrap().remove(0);
                assert!(windows.len() > 2, "{name}");
                assert_eq!(windows[0], whole_first, "{name}: the first window is the truncated input");
                let mut joined: Vec<u32> = Vec::new();
                for (i, w) in windows.iter().enumerate() {
                    assert!(w.ids.len() <= tok.max_tokens, "{name}");
                    // The window's own tokens: its ids without the special tokens around them.
                    let inner = &w.ids[specials_before(&tok)..w.ids.len() - specials_after(&tok)];
                    if i > 0 {
                        assert_eq!(&joined[joined.len() - overlap..], &inner[..overlap], "{name}: overlap");
                    }
                    joined.extend_from_slice(if i == 0 { inner } else { &inner[overlap..] });
                }
                assert_eq!(joined, content, "{name}: windows cover the text once");
            }
        }
    }

    #[test]
    fn bad_overlap_and_too_long_texts_are_refused() {
        let tok = tokenizer("tiny-bert-embed");
        let w = tok.window_tokens();
        assert!(matches!(tok.encode_windows(&["x"], w, 1 << 20, |k| k), Err(WindowError::Overlap { .. })));
        let text = "word ".repeat(10 * tok.max_tokens);
        let err = tok.encode_windows(&["ok", &text], 0, 4 * tok.max_tokens, |k| k + 10).unwrap_err();
        assert!(matches!(err, WindowError::TooMany { index: 11, .. }), "{err}");
    }
}
