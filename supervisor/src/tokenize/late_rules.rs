//! How late chunking's chunks are chosen (docs/long-documents.md): character spans sent by
//! the caller, a separator, or sentences packed up to N tokens. Every rule gives half-open
//! `[start, end)` spans in Unicode code points (Python `str` indices), ascending and not
//! overlapping, which `late.rs` maps to tokens.
//!
//! - **Separator**: the text between occurrences of the separator, each piece trimmed of
//!   whitespace; pieces left empty are skipped (a doubled separator, a trailing one).
//! - **Sentences up to N tokens**: a sentence ends after `.`, `!` or `?` followed by
//!   whitespace, and at every line break; sentences are trimmed of whitespace and empty ones
//!   skipped. Consecutive sentences are packed into one chunk while its tokens stay at most
//!   N; a sentence of more than N tokens is cut into pieces of N tokens at token
//!   boundaries. A token counts in the sentence that holds its first non-whitespace
//!   character.

/// Which chunks a late-chunking request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkRule {
    Spans(Vec<(usize, usize)>),
    Separator(String),
    Sentences { max_tokens: usize },
}

impl ChunkRule {
    /// The spans of `text`, given the code-point index where each of
    /// its tokens starts (ascending).
    pub fn spans(&self, text: &str, token_starts: &[usize]) -> Vec<(usize, usize)> {
        match self {
            ChunkRule::Spans(s) => s.clone(),
            ChunkRule::Separator(sep) => separated(text, sep),
            ChunkRule::Sentences { max_tokens } => {
                let chars: Vec<char> = text.chars().collect();
                let spans = packed(&sentences(text), token_starts, *max_tokens);
                spans.into_iter().filter_map(|(s, e)| trimmed(&chars, s, e)).collect()
            }
        }
    }
}

/// `[start, end)` of `text[start..end]` trimmed of whitespace, in code points; None when
/// nothing is left.
fn trimmed(chars: &[char], start: usize, end: usize) -> Option<(usize, usize)> {
    let s = (start..end).find(|&i| !chars[i].is_whitespace())?;
    let e = (s..end).rev().find(|&i| !chars[i].is_whitespace())? + 1;
    Some((s, e))
}

fn separated(text: &str, sep: &str) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let sep: Vec<char> = sep.chars().collect();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i + sep.len() <= chars.len() {
        if !sep.is_empty() && chars[i..i + sep.len()] == sep[..] {
            out.extend(trimmed(&chars, start, i));
            i += sep.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.extend(trimmed(&chars, start, chars.len()));
    out
}

/// The text's sentences, trimmed, as spans.
fn sentences(text: &str) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..chars.len() {
        let c = chars[i];
        let after_stop = matches!(c, '.' | '!' | '?') && chars.get(i + 1).is_some_and(|n| n.is_whitespace());
        if c == '\n' || after_stop {
            out.extend(trimmed(&chars, start, i + 1));
            start = i + 1;
        }
    }
    out.extend(trimmed(&chars, start, chars.len()));
    out
}

/// Sentences packed into chunks of at most `max` tokens; a longer sentence cut at token
/// starts into pieces of `max` tokens.
fn packed(sentences: &[(usize, usize)], token_starts: &[usize], max: usize) -> Vec<(usize, usize)> {
    let max = max.max(1);
    // The tokens starting in [s, e): their indices into `token_starts`.
    let tokens_in = |s: usize, e: usize| {
        let a = token_starts.partition_point(|&t| t < s);
        let b = token_starts.partition_point(|&t| t < e);
        (a, b)
    };
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut open: Option<(usize, usize, usize)> = None; // (start, end, tokens)
    for &(s, e) in sentences {
        let (a, b) = tokens_in(s, e);
        let n = b - a;
        if n > max {
            out.extend(open.take().map(|(s, e, _)| (s, e)));
            // Pieces of `max` tokens: each from its first token's start to the next's.
            let mut k = a;
            while k < b {
                let from = if k == a { s } else { token_starts[k] };
                let to = if k + max >= b { e } else { token_starts[k + max] };
                out.push((from, to));
                k += max;
            }
            continue;
        }
        open = match open {
            Some((os, _, ot)) if ot + n <= max => Some((os, e, ot + n)),
            other => {
                out.extend(other.map(|(s, e, _)| (s, e)));
                Some((s, e, n))
            }
        };
    }
    out.extend(open.map(|(s, e, _)| (s, e)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str, spans: &[(usize, usize)]) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        spans.iter().map(|&(s, e)| chars[s..e].iter().collect()).collect()
    }

    #[test]
    fn a_separator_splits_and_trims_skipping_empty_pieces() {
        let text = "Café one.\n\n\n\nTwo  \n\n three\n\n";
        let spans = ChunkRule::Separator("\n\n".into()).spans(text, &[]);
        assert_eq!(texts(text, &spans), ["Café one.", "Two", "three"]);
        assert_eq!(spans[0], (0, 9), "code points, not bytes");
        assert_eq!(separated("no separator here", "|"), [(0, 17)]);
    }

    #[test]
    fn sentences_end_at_stops_before_whitespace_and_at_line_breaks() {
        let text = "Dr. Who? Version 3.11 is out! A list:\n- item one\nLast";
        assert_eq!(
            texts(text, &sentences(text)),
            ["Dr.", "Who?", "Version 3.11 is out!", "A list:", "- item one", "Last"]
        );
    }

    /// Tokens are words here: each sentence's tokens start at its words.
    #[test]
    fn sentences_are_packed_up_to_n_tokens_and_long_ones_cut() {
        let text = "One two. Three four. Five. Six seven eight nine ten.";
        let starts: Vec<usize> =
            std::iter::once(0).chain(text.char_indices().filter(|&(_, c)| c == ' ').map(|(i, _)| i + 1)).collect();
        let spans = ChunkRule::Sentences { max_tokens: 4 }.spans(text, &starts);
        assert_eq!(texts(text, &spans), ["One two. Three four.", "Five.", "Six seven eight nine", "ten."]);
        let one = ChunkRule::Sentences { max_tokens: 100 }.spans(text, &starts);
        assert_eq!(texts(text, &one), [text]);
    }
}
