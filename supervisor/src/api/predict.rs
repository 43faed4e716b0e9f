//! `POST /predict`: sequence classification in TEI's shape (TEI `router/src/http/types.rs`
//! `PredictRequest`, `PredictInput`, `Prediction`; `router/src/http/server.rs` `predict`;
//! `core/src/infer.rs` `Infer::predict`):
//!
//! - `inputs`: a string, a pair `[a, b]`, or a batch `[[a], [a, b], ...]`;
//!   `truncate`, `truncation_direction` (`right` only), `raw_scores`.
//! - The answer: per input, every label as `{score, label}` sorted by score descending
//!   (a single input: the bare list; a batch: a list per input). Scores are the softmax of
//!   the logits, or for a one-label head their sigmoid, as TEI computes them; `raw_scores`
//!   gives the logits.
//! - Extension `model` (TEI serves one model): default the only installed classifier.
//! - `parameters` (the Hugging Face Inference API's text-classification task, what
//!   `huggingface_hub.InferenceClient.text_classification` posts to the base URL):
//!   `function_to_apply` (`softmax`, `sigmoid`, `none`) and `top_k`; the answer is then that
//!   API's shape, a list of predictions per input.

use axum::response::Response;
use axum::Json;
use mlx_serve_protocol::ModelKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::default_model::model_or_only;
use super::inference::{self, ClassifyInput};
use super::input::check_truncation_direction;
use super::{with_log, ApiError, RequestLog, SharedState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// A string, a pair `[a, b]`, or a batch of single strings and pairs `[[a], [a, b]]`.
    #[schema(value_type = Object)]
    pub inputs: Option<Value>,
    /// Extension: which model; default the only installed classifier.
    pub model: Option<String>,
    /// Default `limits.truncate` (TEI: `--auto-truncate`).
    pub truncate: Option<bool>,
    /// `right` (default); `left` is refused.
    pub truncation_direction: Option<String>,
    /// Logits instead of softmax (one label: sigmoid) scores.
    pub raw_scores: Option<bool>,
    /// Hugging Face Inference API text-classification parameters; answers in that API's shape.
    pub parameters: Option<ClassificationParameters>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassificationParameters {
    /// `softmax`, `sigmoid` or `none` (the logits); default as TEI (softmax, sigmoid for one label).
    pub function_to_apply: Option<String>,
    /// Keep the `top_k` most probable labels.
    #[schema(minimum = 1)]
    pub top_k: Option<i64>,
}

/// One label's score (TEI `Prediction`).
#[derive(Serialize, ToSchema)]
pub struct Prediction {
    pub score: f32,
    pub label: String,
}

/// TEI `PredictResponse`: one input's predictions, or one list per input of a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictResponse {
    Single(Vec<Prediction>),
    Batch(Vec<Vec<Prediction>>),
}

/// How logits become scores.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Transform {
    Softmax,
    Sigmoid,
    None,
}

/// Reads TEI's `PredictInput`: whether it was a batch, and its inputs.
fn parse_inputs(v: Value) -> Result<(bool, Vec<ClassifyInput>), ApiError> {
    let shape = "`inputs` must be a string, a pair of strings [a, b], or a batch [[a], [a, b], ...]";
    let bad = || ApiError::invalid_param("inputs", shape);
    let sequence = |items: &[Value]| -> Result<ClassifyInput, ApiError> {
        match items {
            [Value::String(a)] => Ok(ClassifyInput::Text(a.clone())),
            [Value::String(a), Value::String(b)] => Ok(ClassifyInput::Pair(a.clone(), b.clone())),
            _ => Err(bad()),
        }
    };
    match v {
        Value::String(s) => Ok((false, vec![ClassifyInput::Text(s)])),
        Value::Array(items) if items.first().is_some_and(Value::is_string) => Ok((false, vec![sequence(&items)?])),
        Value::Array(items) if !items.is_empty() => {
            let batch = items
                .iter()
                .map(|item| item.as_array().ok_or_else(bad).and_then(|a| sequence(a)))
                .collect::<Result<_, _>>()?;
            Ok((true, batch))
        }
        Value::Array(_) => Err(ApiError::invalid_param("inputs", "`inputs` must not be empty")),
        _ => Err(bad()),
    }
}

/// Scores from one input's logits: TEI's softmax over several labels, sigmoid of one
/// (`core/src/infer.rs`), or as `function_to_apply` asks.
fn transform(logits: &[f32], how: Transform) -> Vec<f32> {
    match how {
        Transform::None => logits.to_vec(),
        Transform::Sigmoid => logits.iter().map(|&x| (1.0 / (1.0 + (-(x as f64)).exp())) as f32).collect(),
        Transform::Softmax => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.iter().map(|e| (e / sum) as f32).collect()
        }
    }
}

/// One input's predictions sorted by score, descending (ties: label order).
fn predictions(scores: &[f32], labels: &[String], top_k: Option<usize>) -> Vec<Prediction> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(top_k.unwrap_or(usize::MAX));
    let label = |i: usize| labels.get(i).cloned().unwrap_or_else(|| format!("LABEL_{i}"));
    order.into_iter().map(|i| Prediction { score: scores[i], label: label(i) }).collect()
}

/// `/predict`'s work; the route (`tei.rs`) renders its errors in TEI's shape.
pub async fn predict_request(state: &SharedState, req: PredictRequest) -> Result<Response, ApiError> {
    check_truncation_direction(req.truncation_direction.as_deref())?;
    let (batch, inputs) =
        parse_inputs(req.inputs.ok_or_else(|| ApiError::invalid_param("inputs", "`inputs` is required"))?)?;
    let params = req.parameters.as_ref();
    let asked = match params.and_then(|p| p.function_to_apply.as_deref()) {
        None => None,
        Some("softmax") => Some(Transform::Softmax),
        Some("sigmoid") => Some(Transform::Sigmoid),
        Some("none") => Some(Transform::None),
        Some(other) => {
            let msg = format!("`parameters.function_to_apply` must be softmax, sigmoid or none, got {other:?}");
            return Err(ApiError::invalid_param("parameters", msg));
        }
    };
    if asked.is_some() && req.raw_scores.is_some() {
        let msg = "send `raw_scores` or `parameters.function_to_apply`, not both";
        return Err(ApiError::invalid_param("raw_scores", msg));
    }
    let top_k = match params.and_then(|p| p.top_k) {
        Some(k) if k < 1 => return Err(ApiError::invalid_param("parameters", "`parameters.top_k` must be at least 1")),
        k => k.map(|k| k as usize),
    };
    let model = model_or_only(state, req.model, ModelKind::Classifier)?;
    let n = inputs.len();
    let out = inference::classify(state, &model, inputs, req.truncate).await?;
    let how = match (asked, req.raw_scores.unwrap_or(false)) {
        (Some(how), _) => how,
        (None, true) => Transform::None,
        (None, false) if out.labels > 1 => Transform::Softmax,
        (None, false) => Transform::Sigmoid,
    };
    let labels = &out.entry.facts.labels;
    let mut rows: Vec<Vec<Prediction>> =
        out.logits.chunks_exact(out.labels.max(1)).map(|l| predictions(&transform(l, how), labels, top_k)).collect();
    let log = RequestLog { model: out.entry.name.clone(), inputs: n, tokens: out.tokens };
    // The Inference API answers a list per input; TEI a bare list for one input.
    let body = match (params.is_some(), batch) {
        (false, false) => PredictResponse::Single(rows.pop().unwrap_or_default()),
        _ => PredictResponse::Batch(rows),
    };
    Ok(with_log(Json(body), log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_read_as_tei_reads_them() {
        let read = |v: Value| parse_inputs(v).map(|(b, i)| (b, i.len()));
        assert_eq!(read(Value::from("a")).unwrap(), (false, 1));
        assert_eq!(read(serde_json::json!(["a", "b"])).unwrap(), (false, 1), "a pair is one input");
        assert_eq!(read(serde_json::json!([["a"], ["a", "b"], ["c"]])).unwrap(), (true, 3));
        assert!(read(serde_json::json!(["a", "b", "c"])).is_err(), "three strings are neither a pair nor a batch");
        assert!(read(serde_json::json!([["a", "b", "c"]])).is_err());
        assert!(read(serde_json::json!([])).is_err());
        assert!(read(serde_json::json!(3)).is_err());
    }

    #[test]
    fn scores_are_teis_softmax_or_sigmoid_sorted_descending() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let p = predictions(&transform(&[1.0, 3.0, 2.0], Transform::Softmax), &labels, None);
        let sum: f32 = p.iter().map(|p| p.score).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert_eq!(p.iter().map(|p| p.label.as_str()).collect::<Vec<_>>(), ["b", "c", "a"]);
        let e = [1f64.exp(), 3f64.exp(), 2f64.exp()];
        assert!((p[0].score as f64 - e[1] / e.iter().sum::<f64>()).abs() < 1e-7);
        let one = transform(&[0.0], Transform::Sigmoid);
        assert_eq!(one, vec![0.5]);
        assert_eq!(predictions(&[0.1, 0.7, 0.2], &labels, Some(1)).len(), 1);
    }
}
