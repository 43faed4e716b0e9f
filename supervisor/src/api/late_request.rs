//! Late chunking's request fields (docs/long-documents.md): which chunks to cut (character
//! `spans`, a `separator`, or sentences up to `max_chunk_tokens`) and the macro-windows'
//! `overlap_tokens`, the same on the `late_chunking` extension of `POST /v1/embeddings`
//! and on `POST /v1/late_chunking`.

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiError;
use crate::tokenize::ChunkRule;

/// How to chunk each document: exactly one of `spans`, `separator`, `max_chunk_tokens`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LateChunking {
    /// Half-open character spans `[start, end)` in Unicode code points (Python `str`
    /// indices), ascending, not overlapping: `[[0, 120], [120, 300]]` for one input, or
    /// one such list per input when `input` is a list.
    #[schema(value_type = Option<Vec<Vec<serde_json::Value>>>)]
    pub spans: Option<Value>,
    /// Chunks are the text between occurrences of this string, trimmed of whitespace;
    /// empty pieces are skipped.
    pub separator: Option<String>,
    /// Chunks are sentences (ending after `.`, `!`, `?` before whitespace, and at line
    /// breaks) packed up to this many tokens; a longer sentence is cut at token boundaries.
    #[schema(minimum = 1)]
    pub max_chunk_tokens: Option<i64>,
    /// Tokens each macro-window repeats of the one before, for a document longer than the
    /// model's window; default a quarter of the window.
    #[schema(minimum = 0)]
    pub overlap_tokens: Option<i64>,
}

impl LateChunking {
    /// One rule per input (`inputs` of them; `single`: `input` was a string, not a list).
    /// `param` names the field in errors.
    pub fn rules(&self, inputs: usize, single: bool, param: &str) -> Result<Vec<ChunkRule>, ApiError> {
        let bad = |m: String| ApiError::invalid_param(param, m).with_code("invalid_late_chunking");
        let chosen = [self.spans.is_some(), self.separator.is_some(), self.max_chunk_tokens.is_some()];
        if chosen.iter().filter(|&&c| c).count() != 1 {
            return Err(bad(format!(
                "`{param}` needs exactly one of `spans`, `separator`, `max_chunk_tokens` to choose the chunks"
            )));
        }
        if let Some(sep) = &self.separator {
            if sep.is_empty() {
                return Err(bad("`separator` must not be empty".into()));
            }
            return Ok(vec![ChunkRule::Separator(sep.clone()); inputs]);
        }
        if let Some(n) = self.max_chunk_tokens {
            if n < 1 {
                return Err(bad("`max_chunk_tokens` must be a positive integer".into()));
            }
            return Ok(vec![ChunkRule::Sentences { max_tokens: n as usize }; inputs]);
        }
        let spans = self.spans.as_ref().expect("one was chosen");
        let shape = "`spans` must be a list of [start, end] pairs of non-negative integers (one list per input when \
                     `input` is a list)";
        let pair = |v: &Value| -> Result<(usize, usize), ApiError> {
            match v.as_array().map(Vec::as_slice) {
                Some([s, e]) => match (s.as_u64(), e.as_u64()) {
                    (Some(s), Some(e)) => Ok((s as usize, e as usize)),
                    _ => Err(bad(shape.into())),
                },
                _ => Err(bad(shape.into())),
            }
        };
        let list = |v: &Value| -> Result<Vec<(usize, usize)>, ApiError> {
            v.as_array().ok_or_else(|| bad(shape.into()))?.iter().map(pair).collect()
        };
        let items = spans.as_array().ok_or_else(|| bad(shape.into()))?;
        // [[s, e], ...] (one document) or [[[s, e], ...], ...] (one list per input).
        let nested = items.first().and_then(Value::as_array).and_then(|p| p.first()).is_some_and(Value::is_array);
        let per_input = if nested {
            items.iter().map(list).collect::<Result<Vec<_>, _>>()?
        } else if single || inputs == 1 {
            vec![list(spans)?]
        } else {
            return Err(bad(format!("`input` has {inputs} texts: send `spans` as one list of spans per input")));
        };
        if per_input.len() != inputs {
            return Err(bad(format!("`spans` has {} lists for {inputs} inputs", per_input.len())));
        }
        Ok(per_input.into_iter().map(ChunkRule::Spans).collect())
    }

    /// The requested overlap, checked non-negative.
    pub fn overlap(&self, param: &str) -> Result<Option<usize>, ApiError> {
        match self.overlap_tokens {
            Some(n) if n < 0 => Err(ApiError::invalid_param(param, "`overlap_tokens` must be a non-negative integer")),
            other => Ok(other.map(|n| n as usize)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> LateChunking {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn exactly_one_rule_and_spans_per_input() {
        let flat = parse(json!({"spans": [[0, 3], [4, 9]]}));
        assert_eq!(flat.rules(1, true, "late_chunking").unwrap(), [ChunkRule::Spans(vec![(0, 3), (4, 9)])]);
        let nested = parse(json!({"spans": [[[0, 3]], [[1, 2], [2, 5]]]}));
        let rules = nested.rules(2, false, "late_chunking").unwrap();
        assert_eq!(rules[1], ChunkRule::Spans(vec![(1, 2), (2, 5)]));
        let msg = |l: LateChunking, n: usize| l.rules(n, n == 1, "late_chunking").unwrap_err().message;
        assert!(msg(flat, 2).contains("one list of spans per input"));
        assert!(msg(nested, 3).contains("2 lists for 3 inputs"));
        assert!(msg(parse(json!({})), 1).contains("exactly one of"));
        assert!(msg(parse(json!({"separator": "\n", "max_chunk_tokens": 5})), 1).contains("exactly one of"));
        assert!(msg(parse(json!({"spans": [[0, -1]]})), 1).contains("non-negative integers"));
        assert!(msg(parse(json!({"spans": [[0, 1, 2]]})), 1).contains("[start, end] pairs"));
        assert!(msg(parse(json!({"separator": ""})), 1).contains("must not be empty"));
        assert!(msg(parse(json!({"max_chunk_tokens": 0})), 1).contains("positive"));
        assert_eq!(
            parse(json!({"max_chunk_tokens": 64})).rules(2, false, "x").unwrap(),
            vec![ChunkRule::Sentences { max_tokens: 64 }; 2]
        );
        assert!(serde_json::from_value::<LateChunking>(json!({"span": [[0, 1]]})).is_err(), "unknown keys refused");
    }
}
