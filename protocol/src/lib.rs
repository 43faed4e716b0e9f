//! What the mlx-serve supervisor and its workers say to each other.
//!
//! One worker process serves one model. The supervisor listens on a Unix socket, spawns
//! `mlx-serve-worker serve --socket PATH --model DIR`, and the worker connects back. The
//! conversation:
//!
//! 1. worker → [`WorkerMessage::Hello`] (protocol version, pid) as soon as it connects;
//!    a supervisor of another protocol version refuses it with a clear error.
//! 2. worker loads the model → [`WorkerMessage::Ready`] with the model's facts, or
//!    [`WorkerMessage::LoadFailed`] with the reason, then exits non-zero.
//! 3. supervisor → [`SupervisorMessage::Embed`] / [`SupervisorMessage::Score`] batches
//!    (several may be in flight; answers carry the request id), `Stats`, `Shutdown`.
//!
//! [`codec`] frames messages (length + version + bincode); it is the only place that
//! knows the wire encoding, so replacing bincode touches one file.

pub mod architectures;
pub mod codec;
mod json_file;
pub mod model_dir;
pub mod model_files;
pub mod pylate;
pub mod quantization;
pub mod splade;
pub mod st_pipeline;
pub mod st_router;
pub mod stanford_colbert;
pub mod torch_heads;

use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change to the messages below.
/// 2: `ModelInfo::packed` (the worker computes batches without padding),
///    `WorkerStats::mlx_cache_limit_bytes`.
/// 3: `WorkerStats::device_bytes` and `driver_reserved_bytes` (accelerator memory as the
///    system counts it).
/// 4: `ModelInfo::token_outputs`, `SupervisorMessage::EmbedTokens`,
///    `WorkerMessage::TokenEmbeddings` (bge-m3's sparse and ColBERT outputs).
/// 5: `forward_us` on `Embeddings`, `Scores` and `TokenEmbeddings` (the worker's own
///    forward time, for the supervisor's trace spans: docs/tracing.md).
/// 6: `ModelInfo::packed` gone: every worker computes batches packed (below), so the
///    supervisor sizes batches by their real tokens, with no padded alternative;
///    `ModelInfo::device` a [`Device`] and `pooling` a [`model_dir::Pooling`], not strings.
/// 7: `SupervisorMessage::EmbedPooled` (late chunking: rows pooled from token spans that
///    may cross sequences; docs/long-documents.md); `ModelKind::Classifier` and
///    `SupervisorMessage::Classify` (every label's logit, for TEI's `/predict`).
/// 8: `SupervisorMessage::Yielding` (a long batch lets a batch sent after it run at its
///    layer boundaries; docs/worker.md, "Yielding batches").
/// 9: `ModelInfo::tiny_batch_seconds` (the fixed cost of a forward pass, a floor for the
///    supervisor's pace: docs/scheduling.md).
pub const PROTOCOL_VERSION: u16 = 9;

/// What a model produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    /// Pooled, usually L2-normalized, sentence vectors.
    Embedding,
    /// One relevance score in [0, 1] per (query, document) pair.
    Reranker,
    /// A sequence classifier with several labels (`id2label`): every label's logit per
    /// text or pair.
    Classifier,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Embedding => "embedding",
            ModelKind::Reranker => "reranker",
            ModelKind::Classifier => "classifier",
        }
    }
}

/// Outputs an embedding model may give besides its pooled rows, from heads on every
/// token's final state (bge-m3's; `mlx-serve-worker`'s `models/bge_m3.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenOutputs {
    /// Lexical weights: per sequence, (token id, weight) pairs.
    pub sparse: bool,
    /// Multi-vector (ColBERT) rows: one normalized vector per token after the first.
    pub colbert: bool,
}

impl TokenOutputs {
    pub fn any(self) -> bool {
        self.sparse || self.colbert
    }
}

/// A batch of token sequences of different lengths, stored flat so that encoding a batch
/// is a few memcpys: sequence `i` is `tokens[offsets[i]..offsets[i+1]]`.
///
/// Every worker computes a batch packed: each position-wise layer runs on the batch's real
/// tokens only (`tokens.len()` rows), attention stays within each sequence, and no pad
/// token enters the network, so a batch costs its real tokens, whatever their lengths. (A
/// GPU worker pads keys inside attention to group sequences of similar length; attention
/// is a small share of the work, docs/worker.md.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenBatch {
    /// All token ids, concatenated.
    pub tokens: Vec<u32>,
    /// `len() + 1` boundaries into `tokens`, starting at 0.
    pub offsets: Vec<u32>,
    /// Segment (token type) ids parallel to `tokens`; empty when the model has none or all
    /// are zero (BERT pairs set 1 on the second segment).
    pub type_ids: Vec<u8>,
}

impl TokenBatch {
    pub fn new() -> Self {
        TokenBatch { tokens: Vec::new(), offsets: vec![0], type_ids: Vec::new() }
    }

    /// Appends one sequence. `type_ids` must be empty or as long as `ids`.
    pub fn push(&mut self, ids: &[u32], type_ids: &[u8]) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        if !type_ids.is_empty() && self.type_ids.len() < self.tokens.len() {
            self.type_ids.resize(self.tokens.len(), 0);
        }
        self.tokens.extend_from_slice(ids);
        if !type_ids.is_empty() {
            debug_assert_eq!(type_ids.len(), ids.len());
            self.type_ids.extend_from_slice(type_ids);
        } else if !self.type_ids.is_empty() {
            self.type_ids.resize(self.tokens.len(), 0);
        }
        self.offsets.push(self.tokens.len() as u32);
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token ids of sequence `i`.
    pub fn sequence(&self, i: usize) -> &[u32] {
        &self.tokens[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Segment ids of sequence `i` (empty when the batch carries none).
    pub fn sequence_type_ids(&self, i: usize) -> &[u8] {
        if self.type_ids.is_empty() {
            &[]
        } else {
            &self.type_ids[self.offsets[i] as usize..self.offsets[i + 1] as usize]
        }
    }

    /// Length of the longest sequence.
    pub fn max_len(&self) -> usize {
        self.offsets.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }

    /// Checks the invariants a decoder cannot trust the sender to keep.
    pub fn validate(&self) -> Result<(), InvalidBatch> {
        if self.offsets.first() != Some(&0) {
            return Err(InvalidBatch::OffsetsStart);
        }
        if self.offsets.windows(2).any(|w| w[1] < w[0]) {
            return Err(InvalidBatch::OffsetsDecrease);
        }
        if *self.offsets.last().unwrap() as usize != self.tokens.len() {
            return Err(InvalidBatch::OffsetsMissTokens);
        }
        if !self.type_ids.is_empty() && self.type_ids.len() != self.tokens.len() {
            return Err(InvalidBatch::TypeIdsNotParallel);
        }
        if self.offsets.windows(2).any(|w| w[1] == w[0]) {
            return Err(InvalidBatch::EmptySequence);
        }
        Ok(())
    }
}

/// Why a received [`TokenBatch`] breaks its invariants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBatch {
    #[error("batch offsets must start at 0")]
    OffsetsStart,
    #[error("batch offsets must not decrease")]
    OffsetsDecrease,
    #[error("batch offsets do not cover the tokens")]
    OffsetsMissTokens,
    #[error("type_ids must be empty or parallel to tokens")]
    TypeIdsNotParallel,
    #[error("empty sequence in batch")]
    EmptySequence,
}

impl From<InvalidBatch> for String {
    /// The message, for callers that answer with text (the worker's `Error` frame).
    fn from(e: InvalidBatch) -> String {
        e.to_string()
    }
}

/// Facts about the loaded model, sent once in [`WorkerMessage::Ready`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub kind: ModelKind,
    /// HF architecture name from config.json, e.g. `BertModel`, `Qwen3ForCausalLM`.
    pub architecture: String,
    /// Our implementation that runs it: `bert`, `xlm_roberta`, `qwen3`.
    pub family: String,
    pub hidden_size: u32,
    /// Length of an embedding row (0 for rerankers).
    pub output_dim: u32,
    /// Most tokens one sequence may have (position table size).
    pub max_tokens: u32,
    pub vocab_size: u32,
    /// The pooling mode (embeddings) or the scoring head (rerankers).
    pub pooling: model_dir::Pooling,
    pub normalize: bool,
    /// dtype of the weights on disk (`float32`, `bfloat16`, `q4`, ...).
    pub stored_dtype: String,
    /// dtype the forward pass runs in.
    pub compute_dtype: String,
    /// The MLX device the worker computes on.
    pub device: Device,
    /// Which library answered `cblas_sgemm` (Linux CPU backend), for the operator.
    pub blas: String,
    pub load_seconds: f64,
    /// How long a two-token batch took once warm: what every forward pass costs whatever
    /// its size (reading every weight once). The supervisor's pace never takes a batch's
    /// fixed cost for less (`batch/pace.rs`).
    pub tiny_batch_seconds: f64,
    /// The per-token outputs the model has heads for (none for most models).
    pub token_outputs: TokenOutputs,
}

/// The kind of MLX device a worker computes on: the CPU backend, or a GPU backend (Metal
/// on Apple Silicon, CUDA on Linux), which get different batch bounds. Written `cpu` /
/// `gpu` wherever it is shown (JSON, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Gpu,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Memory and work counters of one worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// MLX memory held by live arrays.
    pub mlx_active_bytes: u64,
    /// Highest `mlx_active_bytes` since start.
    pub mlx_peak_bytes: u64,
    /// MLX's buffer cache (freed arrays kept for reuse); bounded by the cache limit.
    pub mlx_cache_bytes: u64,
    /// The cache limit in force: fixed by `--cache-limit-mb`, or sized from the working set
    /// of recent batches.
    pub mlx_cache_limit_bytes: u64,
    /// Resident set size of the worker process.
    pub rss_bytes: u64,
    /// Accelerator memory of the worker process as the system counts it (NVML on CUDA, the
    /// physical footprint on Metal); `None` on the CPU or where the system does not say.
    pub device_bytes: Option<u64>,
    /// Device memory CUDA's allocators keep reserved for the worker outside MLX's counters
    /// (the default memory pool and the graph allocator); 0 elsewhere.
    pub driver_reserved_bytes: u64,
    pub batches: u64,
    pub sequences: u64,
    /// Real (unpadded) tokens processed.
    pub tokens: u64,
    /// Rows the position-wise layers computed, padding included (`padded_tokens - tokens`
    /// is wasted work; equal to `tokens` for a packed worker).
    pub padded_tokens: u64,
}

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SupervisorMessage {
    /// Pooled embedding rows for every sequence.
    Embed {
        id: u64,
        batch: TokenBatch,
    },
    /// One relevance score per sequence; each sequence is an already templated pair.
    Score {
        id: u64,
        batch: TokenBatch,
    },
    /// Every label's logit for every sequence (a text or an already templated pair),
    /// answered as `Embeddings` with `dim` = the number of labels. Only a classifier
    /// answers it.
    Classify {
        id: u64,
        batch: TokenBatch,
    },
    /// Pooled rows plus the per-token outputs asked for, from one forward pass. Sent only
    /// when a request asks for them; a model without the heads answers `Unsupported`.
    EmbedTokens {
        id: u64,
        batch: TokenBatch,
        outputs: TokenOutputs,
    },
    /// One row per entry of `pools`, in their order, answered as `Embeddings`: late
    /// chunking (docs/long-documents.md). A sequence without a pool is computed (it gives
    /// context, e.g. a document's macro-window) but yields no row of its own.
    EmbedPooled {
        id: u64,
        batch: TokenBatch,
        pools: Vec<Pool>,
    },
    Stats {
        id: u64,
    },
    /// Finish what was received, answer it, then exit 0.
    Shutdown,
    /// The batch inside (one of the batch messages above) yields: after each transformer
    /// layer the worker looks for a batch sent after it, and if one is waiting computes
    /// that one whole and answers it before going on, so answers may come back out of the
    /// order sent. The batch computed in between never yields itself (one level deep), and
    /// the yielding batch's `forward_us` leaves its time out (docs/worker.md, "Yielding
    /// batches"). Last, so that the other variants keep their encoding.
    Yielding(Box<SupervisorMessage>),
}

impl SupervisorMessage {
    /// The message itself, or the batch inside a [`SupervisorMessage::Yielding`].
    pub fn unwrapped(&self) -> &SupervisorMessage {
        match self {
            SupervisorMessage::Yielding(inner) => inner.unwrapped(),
            other => other,
        }
    }
}

/// How one row of an [`SupervisorMessage::EmbedPooled`] answer is pooled. Either way the
/// pooled state then goes through the rest of the model's pipeline (Dense, Normalize).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pool {
    /// Sequence `i` of the batch with the model's own pooling: an ordinary input.
    Sequence(u32),
    /// The batch's token rows in these half-open `[start, end)` ranges (indices into
    /// `TokenBatch::tokens`, ascending, not overlapping; they may lie in several
    /// sequences), pooled with [`span_pooling`] of the model's mode.
    Rows(Vec<(u32, u32)>),
}

/// The pooling a token span gets under a model whose pooling is `mode`: the mode itself
/// where it is token-wise (mean, max, √length, position-weighted mean, positions counted
/// from the span's first token); mean for CLS and last-token pooling, which have no
/// meaning on a span (Jina's late chunking pools spans by mean: Günther et al., "Late
/// Chunking", arXiv:2409.04701).
pub fn span_pooling(mode: model_dir::PoolingMode) -> model_dir::PoolingMode {
    use model_dir::PoolingMode as M;
    match mode {
        M::Cls | M::LastToken => M::Mean,
        token_wise => token_wise,
    }
}

/// Why a request failed inside the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request itself is wrong (e.g. token id outside the vocabulary).
    InvalidInput,
    /// The model cannot do this (e.g. Score sent to an embedding model).
    Unsupported,
    /// MLX or the worker failed.
    Internal,
}

/// Worker → supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerMessage {
    Hello {
        protocol_version: u16,
        worker_version: String,
        pid: u32,
    },
    Ready(ModelInfo),
    LoadFailed {
        reason: String,
    },
    /// Row-major `rows × dim` float32.
    Embeddings {
        id: u64,
        dim: u32,
        data: Vec<f32>,
        /// Microseconds the worker spent computing the batch (the forward pass and reading
        /// its outputs back), measured by the worker; the wire and queueing are not in it.
        forward_us: u64,
    },
    Scores {
        id: u64,
        scores: Vec<f32>,
        /// As in `Embeddings`.
        forward_us: u64,
    },
    /// The answer to `EmbedTokens`: the pooled rows as in `Embeddings`, and what was asked.
    TokenEmbeddings {
        id: u64,
        dim: u32,
        data: Vec<f32>,
        /// Per sequence, (token id, weight) ascending by id; empty unless sparse was asked.
        sparse: Vec<Vec<(u32, f32)>>,
        /// Width of a ColBERT row (0 unless asked).
        colbert_dim: u32,
        /// Per sequence, its ColBERT rows, row-major `tokens - 1 × colbert_dim`; empty
        /// unless asked.
        colbert: Vec<Vec<f32>>,
        /// As in `Embeddings`.
        forward_us: u64,
    },
    Stats {
        id: u64,
        stats: WorkerStats,
    },
    Error {
        id: u64,
        kind: ErrorKind,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_batch_roundtrip_and_validate() {
        let mut b = TokenBatch::new();
        b.push(&[1, 2, 3], &[]);
        b.push(&[4, 5], &[0, 1]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.sequence(0), &[1, 2, 3]);
        assert_eq!(b.sequence_type_ids(0), &[0, 0, 0]);
        assert_eq!(b.sequence_type_ids(1), &[0, 1]);
        assert_eq!(b.max_len(), 3);
        assert!(b.validate().is_ok());
        let bad = TokenBatch { tokens: vec![1], offsets: vec![0, 2], type_ids: vec![] };
        assert_eq!(bad.validate(), Err(InvalidBatch::OffsetsMissTokens));
        let empty = TokenBatch { tokens: vec![1], offsets: vec![0, 0, 1], type_ids: vec![] };
        assert_eq!(empty.validate(), Err(InvalidBatch::EmptySequence));
    }

    #[test]
    fn a_yielding_batch_wraps_one_and_the_others_keep_their_encoding() {
        let mut batch = TokenBatch::new();
        batch.push(&[101, 7, 102], &[]);
        let plain = SupervisorMessage::Embed { id: 3, batch };
        let wrapped = SupervisorMessage::Yielding(Box::new(plain.clone()));
        let mut frame = std::io::Cursor::new(Vec::new());
        codec::write(&mut frame, &wrapped).unwrap();
        codec::write(&mut frame, &plain).unwrap();
        frame.set_position(0);
        assert_eq!(codec::read::<SupervisorMessage, _>(&mut frame).unwrap(), Some(wrapped.clone()));
        assert_eq!(codec::read::<SupervisorMessage, _>(&mut frame).unwrap(), Some(plain.clone()));
        // Variant indices of the older messages did not move: Embed is still variant 0,
        // Shutdown 6, and the wrapper comes after them (bincode writes the index first).
        let payload = |m: &SupervisorMessage| codec::encode(m).unwrap()[codec::HEADER_LEN..].to_vec();
        assert_eq!(payload(&plain)[0], 0);
        assert_eq!(payload(&SupervisorMessage::Shutdown), vec![6]);
        assert_eq!(payload(&wrapped)[..2], [7, 0]);
    }

    #[test]
    fn device_and_pooling_are_written_by_name_and_read_back() {
        use model_dir::{Pooling, PoolingMode};
        assert_eq!(serde_json::to_string(&Device::Gpu).unwrap(), "\"gpu\"");
        let all = [Pooling::CLS, Pooling::Embed(PoolingMode::WeightedMean), Pooling::CrossEncoder, Pooling::YesNo];
        for p in all {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            assert_eq!(serde_json::from_value::<Pooling>(p.as_str().into()).unwrap(), p);
            let mut frame = std::io::Cursor::new(Vec::new());
            codec::write(&mut frame, &(p, Device::Cpu)).unwrap();
            frame.set_position(0);
            assert_eq!(codec::read::<(Pooling, Device), _>(&mut frame).unwrap(), Some((p, Device::Cpu)));
        }
        assert!(serde_json::from_value::<Pooling>("median".into()).is_err(), "an unknown name is refused");
    }
}
