//! The engine: loads one model and runs batches of token ids through it.
//!
//! Load: `model_dir::inspect` (kind, family, pooling, limits) → the architecture's typed
//! config → weights (dtype policy) → the network → the head → one tiny warm-up batch, so
//! every lazily loaded tensor is read and every compiled kernel is built before `Ready`.
//!
//! Device and dtype policy (docs/worker.md, "Backends"), decided at run time from MLX's
//! default device, not from how the binary was compiled:
//! - GPU (Metal, CUDA): compute in half precision (the checkpoint's float16 or bfloat16;
//!   float16 for a float32 checkpoint), keep quantized layers quantized (quantized
//!   matmul), MLX ops only.
//! - CPU: fp32 matmul goes through BLAS while half-precision and quantized matmuls are far
//!   slower there, so compute in float32, dequantize quantized layers at load, and run the
//!   elementwise steps and attention in host kernels.
//!
//! `--compute-dtype` overrides the float dtype; any dtype but float32 runs MLX ops only.
//!
//! Batches run packed (`packing.rs`): no pad token enters the network.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use mlx_rs::{Array, Dtype};
use mlx_serve_protocol::model_dir::{self, ModelFacts, Pooling};
use mlx_serve_protocol::{Device, ModelInfo, ModelKind, Pool, TokenBatch, TokenOutputs, WorkerMessage, WorkerStats};

use crate::colbert_head::ColbertHead;
use crate::device::on_gpu;
use crate::embedding_head::EmbeddingHead;
use crate::heads::Scorer;
use crate::memory::MemoryPolicy;
use crate::models::bge_m3::M3Heads;
use crate::models::{self, parse_config, Checkpoint, Inputs, Kernels, Load, Network};
use crate::packing::{AttentionBuckets, BucketShapes, Packing};
use crate::splade_head::SpladeHead;
use crate::weights::{dtype_name, LoadPolicy, StorageConfig, Weights};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Overrides the kind detected from the folder.
    pub kind: Option<ModelKind>,
    /// `None` = the device's policy (see module docs).
    pub compute_dtype: Option<Dtype>,
    /// Fixed bound on MLX's buffer cache; 0 = sized from the batches run (`memory.rs`).
    pub cache_limit_bytes: usize,
    /// Keep quantized layers quantized on the CPU backend too (the GPU path, for tests).
    pub keep_quantized: bool,
}

/// Attention shapes: on a GPU rounded to a ladder (bounded per-shape kernel builds), on the
/// CPU exact (nothing is built per shape there). `MLX_SERVE_ATTENTION_SHAPES=exact|ladder`
/// overrides it, to measure one against the other (`knobs.rs`, bench/gpu/diag.py).
fn bucket_shapes(gpu: bool) -> Result<BucketShapes> {
    Ok(if crate::knobs::attention_ladder()?.unwrap_or(gpu) { BucketShapes::Ladder } else { BucketShapes::Exact })
}

pub fn parse_dtype(s: &str) -> Result<Option<Dtype>> {
    Ok(match s {
        "auto" => None,
        "float32" | "f32" => Some(Dtype::Float32),
        "float16" | "f16" => Some(Dtype::Float16),
        "bfloat16" | "bf16" => Some(Dtype::Bfloat16),
        other => bail!("unknown compute dtype {other:?} (auto, float32, float16, bfloat16)"),
    })
}

/// One loaded model.
pub struct Engine {
    network: Box<dyn Network>,
    head: Head,
    /// Per-token heads (bge-m3's sparse and ColBERT), run only when a request asks.
    token_heads: Option<M3Heads>,
    kind: ModelKind,
    info: ModelInfo,
    /// Rows of the embedding table: every token id must be below it.
    vocab: u32,
    /// Segment ids must be below it (0 or 1 → only zeros).
    type_vocab: u32,
    max_tokens: u32,
    /// In cells: a batch computed inside a yielding one (`server.rs`) runs while the
    /// yielding one holds `&self`.
    memory: RefCell<MemoryPolicy>,
    /// Attention rectangle shapes of the MLX path.
    shapes: BucketShapes,
    stats: RefCell<WorkerStats>,
    /// Batches being computed: 1, or 2 while one runs inside a yielding one.
    nesting: Cell<u32>,
}

/// A batch being computed. The memory policy measures the outermost batch only: one
/// computed inside a yielding batch would reset the peak the outer one is measured by (the
/// outer's working set then includes the inner's, an overestimate on the safe side).
struct Computing<'a> {
    engine: &'a Engine,
}

impl Computing<'_> {
    /// The batch's results are evaluated: measure it and count it.
    fn done(self, batch: &TokenBatch) {
        if self.engine.nesting.get() == 1 {
            self.engine.memory.borrow_mut().after_batch();
        }
        self.engine.count(batch);
    }
}

impl Drop for Computing<'_> {
    fn drop(&mut self) {
        self.engine.nesting.set(self.engine.nesting.get() - 1);
    }
}

/// The facts of the folder with `--kind` applied.
fn facts_for(dir: &Path, kind: Option<ModelKind>) -> Result<ModelFacts> {
    let mut facts = model_dir::inspect(dir)?;
    if let Some(kind) = kind.filter(|&k| k != facts.kind) {
        facts.kind = kind;
        let body = facts.family.body();
        facts.pooling = match kind {
            ModelKind::Reranker => Pooling::scoring_for(body),
            ModelKind::Classifier => Pooling::CrossEncoder,
            ModelKind::Embedding => Pooling::default_for(body),
        };
        facts.dense.clear();
        facts.splade = None;
        facts.normalize = kind == ModelKind::Embedding;
        facts.output_dim = if kind == ModelKind::Embedding { facts.hidden_size } else { 0 };
    }
    Ok(facts)
}

/// Checks that this worker computes the model in `dir` exactly as its files describe,
/// reading only its JSON files: the facts, then the architecture's own refusals.
/// `mlx-serve-worker check` runs this at pull time, before any weight is downloaded.
pub fn check(dir: &Path, kind: Option<ModelKind>) -> Result<ModelFacts> {
    let facts = facts_for(dir, kind)?;
    let arch = models::architecture(&facts)?;
    (arch.check)(&facts)?;
    if facts.splade.is_some() {
        // A SPLADE model needs its family's masked-language-model head.
        models::mlm_layout(&facts)?;
    }
    Ok(facts)
}

/// What turns final hidden states into a batch answer.
enum Head {
    Embed(EmbeddingHead),
    Score(Scorer),
    /// A classifier: every label's logit.
    Classify(Scorer),
    /// A SPLADE model: one weight per vocabulary id, no dense vector.
    Sparse(SpladeHead),
    /// A PyLate ColBERT model: one vector per token, no dense vector.
    MultiVector(ColbertHead),
}

impl Engine {
    pub fn load(dir: &Path, opts: &Options) -> Result<Engine> {
        let start = Instant::now();
        let gpu = on_gpu();
        let memory = MemoryPolicy::new(opts.cache_limit_bytes, gpu)?;
        let facts = check(dir, opts.kind)?;
        let arch = models::architecture(&facts)?;
        let dequantize = !gpu && !opts.keep_quantized;
        let storage: StorageConfig = parse_config(&facts.config)?;
        let mut w = Weights::load(dir, &storage, arch.sanitize, LoadPolicy { compute: Dtype::Float32, dequantize })?;
        let compute = match opts.compute_dtype {
            Some(d) => d,
            // Half precision on a GPU, as sentence-transformers and TEI run there: the
            // checkpoint's own half dtype, float16 for a float32 one.
            None if gpu => w.stored_float_dtype().filter(|&d| d != Dtype::Float32).unwrap_or(Dtype::Float16),
            None => Dtype::Float32,
        };
        let policy = LoadPolicy { compute, dequantize };
        w.set_policy(policy);
        let kernels = if !gpu && compute == Dtype::Float32 { Kernels::Host } else { Kernels::Mlx };

        // Before the body: a tied MLM decoder shares the word embeddings the body takes.
        let splade = match facts.splade {
            Some(spec) => Some(SpladeHead::load(&models::mlm_layout(&facts)?, spec, &mut w)?),
            None => None,
        };
        let loaded = (arch.load)(&mut Load { facts: &facts, dir, weights: &mut w, kernels })?;
        let network = loaded.network;
        let head = match (facts.kind, loaded.scorer, splade) {
            (ModelKind::Embedding, None, Some(splade)) => Head::Sparse(splade),
            (ModelKind::Embedding, None, None) if facts.colbert.is_some() => {
                Head::MultiVector(ColbertHead::load(&facts, dir, policy, &mut w)?)
            }
            (ModelKind::Embedding, None, None) => Head::Embed(EmbeddingHead::load(&facts, dir, policy, &mut w)?),
            (ModelKind::Reranker, Some(scorer), None) => Head::Score(scorer),
            (ModelKind::Classifier, Some(scorer), None) => Head::Classify(scorer),
            (kind, _, _) => bail!("{} cannot serve as {}", facts.architecture, kind.as_str()),
        };
        let type_vocab = facts.type_vocab_size;
        let hidden = network.hidden_size();
        let token_heads = match facts.kind {
            ModelKind::Embedding => M3Heads::load(&facts, dir, hidden, compute)?,
            ModelKind::Reranker | ModelKind::Classifier => None,
        };
        let stored_dtype = w.stored_dtype();
        drop(w); // unused tensors (MLM heads, position_ids buffers) are released here

        let info = ModelInfo {
            kind: facts.kind,
            architecture: facts.architecture.clone(),
            family: facts.family.as_str().into(),
            hidden_size: hidden as u32,
            output_dim: facts.output_dim,
            max_tokens: facts.max_tokens,
            vocab_size: facts.vocab_size,
            pooling: facts.pooling,
            normalize: facts.normalize,
            stored_dtype,
            compute_dtype: dtype_name(compute).into(),
            device: if gpu { Device::Gpu } else { Device::Cpu },
            blas: crate::blas::describe(),
            load_seconds: 0.0,
            tiny_batch_seconds: 0.0,
            token_outputs: match &head {
                Head::Sparse(_) => TokenOutputs { sparse: true, colbert: false },
                Head::MultiVector(_) => TokenOutputs { sparse: false, colbert: true },
                _ => token_heads.as_ref().map(M3Heads::outputs).unwrap_or_default(),
            },
        };
        let mut engine = Engine {
            network,
            head,
            token_heads,
            kind: facts.kind,
            info,
            vocab: facts.vocab_size,
            type_vocab,
            max_tokens: facts.max_tokens,
            memory: RefCell::new(memory),
            shapes: bucket_shapes(gpu)?,
            stats: RefCell::default(),
            nesting: Cell::new(0),
        };
        // Warm-up: reads every weight from disk and builds compiled kernels now, not on the
        // first request; a broken checkpoint fails here, before Ready.
        let warm_up = warm_up_batches(gpu, facts.max_tokens);
        for warm in &warm_up {
            engine.run(warm, None)?;
        }
        // The smallest batch again, now that the weights are in memory: the fixed cost of a
        // forward pass, which the supervisor sizes batches by.
        let tiny = Instant::now();
        engine.run(&warm_up[0], None)?;
        engine.info.tiny_batch_seconds = tiny.elapsed().as_secs_f64();
        engine.stats = RefCell::default();
        engine.info.load_seconds = start.elapsed().as_secs_f64();
        Ok(engine)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Checks a batch against this model's limits: ids inside the vocabulary, lengths within
    /// `max_tokens`, segment ids inside the token-type table. An invalid id would otherwise
    /// read outside the embedding table.
    pub fn validate(&self, batch: &TokenBatch) -> Result<(), String> {
        batch.validate()?;
        if batch.is_empty() {
            return Err("empty batch".into());
        }
        for i in 0..batch.len() {
            let seq = batch.sequence(i);
            if seq.len() > self.max_tokens as usize {
                return Err(format!(
                    "sequence {i} has {} tokens; this model accepts at most {}",
                    seq.len(),
                    self.max_tokens
                ));
            }
            if let Some(&bad) = seq.iter().find(|&&t| t >= self.vocab) {
                return Err(format!("sequence {i}: token id {bad} is outside the vocabulary (size {})", self.vocab));
            }
        }
        let limit = self.type_vocab.max(1);
        if let Some(&bad) = batch.type_ids.iter().find(|&&t| t as u32 >= limit) {
            return Err(format!("token type id {bad} is out of range (this model has {limit} segment type(s))"));
        }
        Ok(())
    }

    /// The batch as the network takes it: ids, segment ids and per-sequence positions of
    /// all tokens back to back, plus the attention plan MLX kernels need.
    fn prepare<'c>(&self, batch: &TokenBatch, checkpoint: Option<&'c dyn Checkpoint>) -> Result<Inputs<'c>> {
        let total = batch.tokens.len();
        let ids: Vec<i32> = batch.tokens.iter().map(|&t| t as i32).collect();
        let types: Vec<i32> =
            if batch.type_ids.is_empty() { vec![0; total] } else { batch.type_ids.iter().map(|&t| t as i32).collect() };
        let mut positions = Vec::with_capacity(total);
        for i in 0..batch.len() {
            self.network.position_ids(batch.sequence(i), &mut positions);
        }
        let key_limits = match &self.head {
            Head::MultiVector(h) => h.key_limits(batch),
            _ => None,
        };
        let packing = Packing { offsets: batch.offsets.iter().map(|&o| o as i32).collect(), key_limits };
        let buckets = match self.network.kernels() {
            Kernels::Mlx => Some(AttentionBuckets::new(&packing, self.shapes)?),
            Kernels::Host => None,
        };
        let n = total as i32;
        Ok(Inputs {
            ids: Array::from_slice(&ids, &[n]),
            type_ids: Array::from_slice(&types, &[n]),
            positions: Array::from_slice(&positions, &[n]),
            packing,
            buckets,
            checkpoint,
            kernels: self.network.kernels(),
        })
    }

    /// Starts computing a batch (see [`Computing`]).
    fn begin(&self) -> Computing<'_> {
        if self.nesting.get() == 0 {
            self.memory.borrow_mut().before_batch();
        }
        self.nesting.set(self.nesting.get() + 1);
        Computing { engine: self }
    }

    /// Runs the network and the head; returns `[batch, dim]` rows or `[batch]` scores (f32).
    /// `checkpoint`: the batch yields at its layer boundaries (`Inputs::layer_done`).
    fn run(&self, batch: &TokenBatch, checkpoint: Option<&dyn Checkpoint>) -> Result<Array> {
        Ok(self.run_with(batch, TokenOutputs::default(), checkpoint)?.0)
    }

    /// [`run`](Self::run), plus from the same forward pass the per-token outputs `want`
    /// asks for: token weights `[total]` and ColBERT rows `[total - batch, colbert_dim]`.
    fn run_with(
        &self,
        batch: &TokenBatch,
        want: TokenOutputs,
        checkpoint: Option<&dyn Checkpoint>,
    ) -> Result<(Array, Option<Array>, Option<Array>)> {
        let computing = self.begin();
        let inputs = self.prepare(batch, checkpoint)?;
        let hidden = self.network.forward(&inputs)?;
        let packing = &inputs.packing;
        let out = match &self.head {
            Head::Embed(h) => h.apply(&hidden, packing)?,
            Head::Score(h) => h.score(&hidden, packing)?,
            Head::Classify(h) => h.logits(&hidden, packing)?,
            Head::Sparse(h) => h.pooled(&hidden, packing)?,
            // Every token projected (the warm-up's pass); `embed_tokens` picks the kept ones.
            Head::MultiVector(h) => h.project(&hidden)?,
        };
        let (weights, colbert) = match &self.token_heads {
            Some(m3) => (
                if want.sparse { m3.token_weights(&hidden)? } else { None },
                if want.colbert { m3.colbert(&hidden, packing)? } else { None },
            ),
            None => (None, None),
        };
        mlx_rs::transforms::eval(std::iter::once(&out).chain(weights.iter()).chain(colbert.iter()))?;
        drop((hidden, inputs));
        computing.done(batch);
        Ok((out, weights, colbert))
    }

    /// A computed batch in the stats. Packed: the position-wise layers computed exactly the
    /// real tokens, so padded tokens are the real ones.
    fn count(&self, batch: &TokenBatch) {
        let tokens = batch.tokens.len() as u64;
        let mut stats = self.stats.borrow_mut();
        stats.batches += 1;
        stats.sequences += batch.len() as u64;
        stats.tokens += tokens;
        stats.padded_tokens += tokens;
    }

    /// Gives idle memory back to the OS (MLX cache, C heap).
    pub fn release_idle_memory(&self) {
        self.memory.borrow_mut().release_idle();
    }

    /// Embedding rows, row-major `[batch, dim]`.
    pub fn embed(&self, batch: &TokenBatch, checkpoint: Option<&dyn Checkpoint>) -> Result<(u32, Vec<f32>)> {
        if self.kind != ModelKind::Embedding {
            bail!("this worker serves a reranker; it cannot embed");
        }
        if matches!(self.head, Head::Sparse(_)) {
            bail!("this worker serves a SPLADE model: it gives sparse weights only, no dense vector");
        }
        if matches!(self.head, Head::MultiVector(_)) {
            bail!("this worker serves a PyLate ColBERT model: it gives token vectors only, no dense vector");
        }
        let out = self.run(batch, checkpoint)?;
        let dim = out.dim(1) as u32;
        Ok((dim, to_vec_f32(&out)?))
    }

    /// Embedding rows and the per-token outputs `want` asks for, as the answer to request `id`.
    pub fn embed_tokens(
        &self,
        id: u64,
        batch: &TokenBatch,
        want: TokenOutputs,
        checkpoint: Option<&dyn Checkpoint>,
    ) -> Result<WorkerMessage> {
        if self.kind != ModelKind::Embedding {
            bail!("this worker serves a reranker; it cannot embed");
        }
        if let Head::MultiVector(head) = &self.head {
            if want.sparse {
                bail!("this worker serves a PyLate ColBERT model: it has no sparse weights");
            }
            let computing = self.begin();
            let inputs = self.prepare(batch, checkpoint)?;
            let hidden = self.network.forward(&inputs)?;
            let colbert = head.vectors(&hidden, batch)?;
            let colbert_dim = head.dim() as u32;
            drop((hidden, inputs));
            computing.done(batch);
            return Ok(WorkerMessage::TokenEmbeddings {
                id,
                dim: 0,
                data: Vec::new(),
                sparse: Vec::new(),
                colbert_dim,
                colbert,
                forward_us: 0,
            });
        }
        let (out, weights, colbert) = self.run_with(batch, want, checkpoint)?;
        if let Head::Sparse(splade) = &self.head {
            let vocab = out.dim(1) as usize;
            let sparse = if want.sparse { splade.sparse(&to_vec_f32(&out)?, vocab) } else { Vec::new() };
            return Ok(WorkerMessage::TokenEmbeddings {
                id,
                dim: 0,
                data: Vec::new(),
                sparse,
                colbert_dim: 0,
                colbert: Vec::new(),
                forward_us: 0,
            });
        }
        let heads = self.token_heads.as_ref().ok_or_else(|| anyhow!("this model has no per-token heads"))?;
        let sparse = match weights {
            Some(w) => heads.lexical(&batch.tokens, &batch.offsets, &to_vec_f32(&w)?),
            None => Vec::new(),
        };
        let (colbert_dim, colbert) = match colbert {
            Some(c) => {
                let dim = heads.colbert_dim() as usize;
                let flat = to_vec_f32(&c)?;
                let mut rows = Vec::with_capacity(batch.len());
                let mut at = 0;
                for w in batch.offsets.windows(2) {
                    let n = (w[1] - w[0]) as usize - 1;
                    rows.push(flat[at * dim..(at + n) * dim].to_vec());
                    at += n;
                }
                (dim as u32, rows)
            }
            None => (0, Vec::new()),
        };
        Ok(WorkerMessage::TokenEmbeddings {
            id,
            dim: out.dim(1) as u32,
            data: to_vec_f32(&out)?,
            sparse,
            colbert_dim,
            colbert,
            // The server stamps the measured time (server.rs).
            forward_us: 0,
        })
    }

    /// One row per pool (late chunking, `EmbedPooled`), row-major `[pools, dim]`.
    pub fn embed_pooled(
        &self,
        batch: &TokenBatch,
        pools: &[Pool],
        checkpoint: Option<&dyn Checkpoint>,
    ) -> Result<(u32, Vec<f32>)> {
        let Head::Embed(head) = &self.head else {
            bail!("this worker's model has no dense embedding to pool (a reranker, classifier or SPLADE model)");
        };
        let computing = self.begin();
        let inputs = self.prepare(batch, checkpoint)?;
        let hidden = self.network.forward(&inputs)?;
        let out = head.apply_pools(&hidden, &inputs.packing, pools)?;
        mlx_rs::transforms::eval(std::iter::once(&out))?;
        drop((hidden, inputs));
        computing.done(batch);
        Ok((out.dim(1) as u32, to_vec_f32(&out)?))
    }

    /// One relevance score per sequence.
    pub fn score(&self, batch: &TokenBatch, checkpoint: Option<&dyn Checkpoint>) -> Result<Vec<f32>> {
        if self.kind != ModelKind::Reranker {
            bail!("this worker serves a {} model; it cannot score pairs", self.kind.as_str());
        }
        let out = self.run(batch, checkpoint)?;
        to_vec_f32(&out)
    }

    /// Every label's logit per sequence: `(labels, row-major [batch, labels])`.
    pub fn classify(&self, batch: &TokenBatch, checkpoint: Option<&dyn Checkpoint>) -> Result<(u32, Vec<f32>)> {
        if self.kind != ModelKind::Classifier {
            bail!("this worker serves a {} model; it cannot classify", self.kind.as_str());
        }
        let out = self.run(batch, checkpoint)?;
        Ok((out.dim(1) as u32, to_vec_f32(&out)?))
    }

    /// Counters plus MLX and process memory.
    pub fn stats(&self) -> WorkerStats {
        let memory = self.memory.borrow();
        WorkerStats {
            mlx_active_bytes: mlx_rs::memory::active_memory().unwrap_or(0) as u64,
            mlx_peak_bytes: memory.peak_since_start() as u64,
            mlx_cache_bytes: mlx_rs::memory::cache_memory().unwrap_or(0) as u64,
            mlx_cache_limit_bytes: memory.cache_limit() as u64,
            rss_bytes: rss_bytes(),
            device_bytes: crate::device_memory::process_device_bytes(),
            driver_reserved_bytes: crate::cuda_driver::reserved_bytes().unwrap_or(0),
            ..self.stats.borrow().clone()
        }
    }
}

/// Token counts of the warm-up batches. The CPU runs the first only (it reads every weight
/// and fails a broken checkpoint before Ready). A GPU runs all: kernels and graphs MLX
/// builds per shape the first time one runs (cuDNN attention graphs, matmul plans,
/// quantized-matmul variants by row count) are built here for a spread of batch sizes, one
/// in each row-count class of MLX's quantized matmul (≤ 16, 32, 64, 128 rows, more;
/// `dispatch_tile` in mlx/backend/cuda/quantized/qmm/qmm_sm90.cu, MLX 0.32), so no first
/// request waits.
const WARM_UP_TOKENS: [u32; 5] = [2, 24, 48, 96, 200];

/// The warm-up batches ([`WARM_UP_TOKENS`]), each split into sequences of at most
/// `max_tokens` token-id-0 tokens.
fn warm_up_batches(gpu: bool, max_tokens: u32) -> Vec<TokenBatch> {
    let totals: &[u32] = if gpu { &WARM_UP_TOKENS } else { &WARM_UP_TOKENS[..1] };
    let longest = max_tokens.max(2);
    totals
        .iter()
        .map(|&total| {
            let mut batch = TokenBatch::new();
            let mut left = total;
            while left > 0 {
                let n = left.min(longest);
                batch.push(&vec![0; n as usize], &[]);
                left -= n;
            }
            batch
        })
        .collect()
}

/// Copies a float32 result to the host (made row-contiguous first if it is a view).
fn to_vec_f32(a: &Array) -> Result<Vec<f32>> {
    if let Ok(s) = a.try_as_slice::<f32>() {
        return Ok(s.to_vec());
    }
    let c = a.contiguous()?;
    Ok(c.try_as_slice::<f32>().map_err(|e| anyhow!("reading the result: {e:?}"))?.to_vec())
}

/// Resident set size: /proc/self/statm on Linux (pages), peak RSS from getrusage elsewhere.
pub fn rss_bytes() -> u64 {
    #[cfg(target_os = "linux")]
    {
        if let Ok(s) = std::fs::read_to_string("/proc/self/statm") {
            if let Some(pages) = s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()) {
                // SAFETY: sysconf has no preconditions.
                let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
                return pages * page;
            }
        }
        0
    }
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: getrusage writes into the zeroed struct we own.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
            ru.ru_maxrss as u64 // bytes on macOS
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_covers_each_row_class_within_the_model_limit() {
        let gpu = warm_up_batches(true, 64);
        let totals: Vec<usize> = gpu.iter().map(|b| b.tokens.len()).collect();
        assert_eq!(totals, vec![2, 24, 48, 96, 200]);
        assert!(gpu.iter().all(|b| b.max_len() <= 64));
        assert_eq!(gpu[4].len(), 4, "200 tokens as 64 + 64 + 64 + 8");
        let cpu = warm_up_batches(false, 512);
        assert_eq!((cpu.len(), cpu[0].tokens.len()), (1, 2));
    }
}
