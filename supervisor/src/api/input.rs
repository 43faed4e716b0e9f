//! The input unions requests carry, as types: OpenAI's `input` (text, texts, token ids,
//! token-id lists) and the plain text-or-texts of TEI, Ollama and `/v1/tokenize`; and TEI's
//! `truncation_direction` option, shared by its embed and rerank shapes.
//!
//! Each parses by hand (through a JSON value) so a wrong shape gets a message that says
//! what is accepted, instead of serde's "did not match any variant"; the schema the
//! OpenAPI document shows comes from the same enum (`untagged`: one of the variants).

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use utoipa::ToSchema;

use super::inference::Inputs;
use super::ApiError;

/// OpenAI `input`: a string, a list of strings, a list of token ids, or a list of
/// token-id lists (OpenAI API reference, "Create embeddings").
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    TokenIds(Vec<i64>),
    TokenIdLists(Vec<Vec<i64>>),
}

const EMBEDDING_INPUT: &str =
    "`input` must be a string, a list of strings, a list of token ids, or a list of token-id lists";

fn token(v: &Value) -> Result<i64, String> {
    v.as_i64().ok_or_else(|| format!("token ids must be integers, got {v}"))
}

impl EmbeddingInput {
    fn from_value(value: Value) -> Result<Self, String> {
        match value {
            Value::String(s) => Ok(EmbeddingInput::Text(s)),
            Value::Array(items) => match items.first() {
                None => Err("`input` must not be an empty list".into()),
                Some(Value::String(_)) => strings(items, EMBEDDING_INPUT).map(EmbeddingInput::Texts),
                Some(Value::Number(_)) => {
                    items.iter().map(token).collect::<Result<_, _>>().map(EmbeddingInput::TokenIds)
                }
                Some(Value::Array(_)) => items
                    .into_iter()
                    .map(|v| match v {
                        Value::Array(ids) => ids.iter().map(token).collect::<Result<Vec<_>, _>>(),
                        _ => Err(EMBEDDING_INPUT.to_owned()),
                    })
                    .collect::<Result<_, _>>()
                    .map(EmbeddingInput::TokenIdLists),
                Some(_) => Err(EMBEDDING_INPUT.into()),
            },
            _ => Err(EMBEDDING_INPUT.into()),
        }
    }
}

impl From<EmbeddingInput> for Inputs {
    fn from(input: EmbeddingInput) -> Inputs {
        match input {
            EmbeddingInput::Text(s) => Inputs::Texts(vec![s]),
            EmbeddingInput::Texts(t) => Inputs::Texts(t),
            EmbeddingInput::TokenIds(ids) => Inputs::Ids(vec![ids]),
            EmbeddingInput::TokenIdLists(lists) => Inputs::Ids(lists),
        }
    }
}

impl<'de> Deserialize<'de> for EmbeddingInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EmbeddingInput::from_value(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A string or a non-empty list of strings (TEI `inputs`, Ollama `input`, tokenize).
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum TextInput {
    Text(String),
    Texts(Vec<String>),
}

const TEXT_INPUT: &str = "must be a string or a non-empty list of strings";

fn strings(items: Vec<Value>, what: &str) -> Result<Vec<String>, String> {
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            _ => Err(what.to_owned()),
        })
        .collect()
}

impl TextInput {
    pub fn into_texts(self) -> Vec<String> {
        match self {
            TextInput::Text(s) => vec![s],
            TextInput::Texts(t) => t,
        }
    }
}

impl<'de> Deserialize<'de> for TextInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(TextInput::Text(s)),
            Value::Array(items) if !items.is_empty() => {
                strings(items, TEXT_INPUT).map(TextInput::Texts).map_err(serde::de::Error::custom)
            }
            _ => Err(serde::de::Error::custom(TEXT_INPUT)),
        }
    }
}

/// TEI's `truncation_direction` (`Right`/`right`, `Left`/`left`, TEI `TruncationDirection`):
/// we truncate on the right only.
pub fn check_truncation_direction(direction: Option<&str>) -> Result<(), ApiError> {
    match direction {
        None | Some("Right" | "right") => Ok(()),
        Some("Left" | "left") => Err(ApiError::invalid_param(
            "truncation_direction",
            "truncation_direction `left` is not supported; inputs are truncated on the right",
        )),
        Some(other) => Err(ApiError::invalid_param(
            "truncation_direction",
            format!("truncation_direction must be `right` or `left`, got {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embedding_input_classifies_the_union() {
        let p = |v: Value| serde_json::from_value::<EmbeddingInput>(v).map_err(|e| e.to_string());
        assert_eq!(p(json!("a")), Ok(EmbeddingInput::Text("a".into())));
        assert_eq!(p(json!(["a", "b"])), Ok(EmbeddingInput::Texts(vec!["a".into(), "b".into()])));
        assert_eq!(p(json!([1, 2])), Ok(EmbeddingInput::TokenIds(vec![1, 2])));
        assert_eq!(p(json!([[1], [2, 3]])), Ok(EmbeddingInput::TokenIdLists(vec![vec![1], vec![2, 3]])));
        assert!(p(json!([])).unwrap_err().contains("empty"));
        assert!(p(json!(["a", 1])).unwrap_err().contains("a list of strings"));
        assert!(p(json!([1.5])).unwrap_err().contains("integers"));
        assert!(p(json!({"a": 1})).unwrap_err().contains("must be a string"));
    }

    #[test]
    fn text_input_is_a_string_or_strings() {
        let p = |v: Value| serde_json::from_value::<TextInput>(v).map_err(|e| e.to_string());
        assert_eq!(p(json!("a")).unwrap().into_texts(), vec!["a"]);
        assert_eq!(p(json!(["a", "b"])).unwrap().into_texts(), vec!["a", "b"]);
        assert!(p(json!([])).is_err() && p(json!([1])).is_err() && p(json!(1)).is_err());
    }
}
