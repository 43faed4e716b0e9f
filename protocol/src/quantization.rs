//! Quantization as both binaries see it: the quality-check set the supervisor tokenizes and
//! hands to `mlx-serve-worker quantize --eval FILE`, and the report the worker prints (one
//! JSON line), which the supervisor stores in `mlx-serve.json` and `mlx-serve show` prints.
//!
//! The worker owns the meaning of these numbers (worker/src/quantize/);
//! docs/quantization.md explains them to users.

use serde::{Deserialize, Serialize};

/// One token sequence of the quality check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// Segment ids (BERT cross-encoder pairs); empty when all zero.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub type_ids: Vec<u8>,
}

/// What the quality check runs through the full-precision and the quantized model.
/// Embedding models use `texts`, `queries` and `documents`; rerankers use `pair_groups`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalSet {
    /// Varied texts (languages, lengths, code, numbers): cosine to the full model.
    #[serde(default)]
    pub texts: Vec<Sequence>,
    /// A small retrieval task: every query ranks every document by cosine.
    #[serde(default)]
    pub queries: Vec<Sequence>,
    #[serde(default)]
    pub documents: Vec<Sequence>,
    /// Rerankers: per query, its (query, document) pairs, ranked by score.
    #[serde(default)]
    pub pair_groups: Vec<Vec<Sequence>>,
}

/// The quantized model against the full-precision one on an [`EvalSet`]. Both run with
/// float32 activations, so the numbers measure the weights' quantization alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Sequences compared (embedding vectors or scored pairs).
    pub sequences: usize,
    /// Embeddings: mean and worst cosine of each vector to the full model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_cosine: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cosine: Option<f64>,
    /// Rerankers: mean and largest |score − full model's score|.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_score_diff: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_score_diff: Option<f64>,
    /// Ranking queries and documents per query.
    pub queries: usize,
    pub documents: usize,
    /// Share of the full model's top 10 documents that the quantized model also ranks in
    /// its top 10, averaged over queries.
    pub recall_at_10: f64,
    /// nDCG@10 of the quantized ranking, with the full model's top 10 as graded relevance
    /// (10 for its first document down to 1 for its tenth), averaged over queries.
    pub ndcg_at_10: f64,
}

/// Tensors quantized alike.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantizedGroup {
    pub bits: u8,
    pub group_size: u32,
    /// Checkpoint tensor names (the `.weight` of each layer or table).
    pub tensors: Vec<String>,
}

/// Tensors stored unquantized, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeptGroup {
    pub why: String,
    pub tensors: Vec<String>,
}

/// Exactly what a quantization did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantizationDetails {
    /// `mlx-affine`: per group of `group_size` inputs, `w ≈ scale · q + bias`, `q` an
    /// unsigned `bits`-bit integer (MLX's `quantize`).
    pub method: String,
    /// `uniform` or `mixed` (docs/quantization.md).
    pub recipe: String,
    /// What the recipe did for this model and why, one line.
    #[serde(default)]
    pub note: String,
    /// The recipe's base bits and group size (most tensors).
    pub bits: u8,
    pub group_size: u32,
    /// dtype of the scales and biases (the checkpoint's float dtype).
    pub scales_dtype: String,
    pub quantized: Vec<QuantizedGroup>,
    pub kept: Vec<KeptGroup>,
}

/// The JSON line `mlx-serve-worker quantize` prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantizeReport {
    /// Bytes of safetensors weights before and after.
    pub original_size: u64,
    pub quantized_size: u64,
    pub details: QuantizationDetails,
    /// Present when the command was given an evaluation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
}
