//! The engine: loads one model and runs batches of token ids through it.
//!
//! Load: `model_dir::inspect` (kind, family, pooling, limits) → weights (dtype policy) →
//! the architecture → the head → one tiny warm-up batch, so every lazily loaded tensor is
//! read and every compiled kernel is built before `Ready` is sent.
//!
//! Dtype policy (DESIGN.md §4): on the CPU backend fp32 matmul goes through BLAS while
//! half-precision and quantized matmuls are far slower (notes/mlx-on-linux.md: 0.25–0.47 s
//! for 512×1024×1024), so compute in float32 and dequantize quantized layers at load. On a
//! GPU backend compute in the stored dtype and keep quantized layers for quantized matmul.
//! `--compute-dtype` overrides the float dtype.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use mlx_rs::{memory, Array, Dtype};
use mlx_serve_protocol::model_dir::{self, Family, Pooling};
use mlx_serve_protocol::{ModelInfo, ModelKind, TokenBatch, WorkerStats};

use crate::heads::{CrossEncoder, Head, YesNo};
use crate::models::bert::Bert;
use crate::models::qwen3::Qwen3;
use crate::models::xlm_roberta::XlmRoberta;
use crate::models::{Inputs, Network};
use crate::pooling;
use crate::weights::{dtype_name, LoadPolicy, Weights};

/// Default bound on MLX's buffer cache: enough to reuse a batch's buffers, small enough that
/// an idle worker does not hold on to its peak.
/// The cache is emptied after 2 s idle anyway (server.rs), so this only bounds memory under
/// load. Measured over HTTP on MiniLM, 32 × ~90-token batches: 64 MiB → 59 texts/s,
/// 256 → 68, 512 → 73 (fresh buffers page-fault; reused ones do not).
pub const DEFAULT_CACHE_LIMIT_MB: usize = 512;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct Options {
    /// Overrides the kind detected from the folder.
    pub kind: Option<ModelKind>,
    /// `None` = the backend's policy (see module docs).
    pub compute_dtype: Option<Dtype>,
    pub cache_limit_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { kind: None, compute_dtype: None, cache_limit_bytes: DEFAULT_CACHE_LIMIT_MB << 20 }
    }
}

/// The MLX device this build computes on.
pub fn device_name() -> &'static str {
    if cfg!(feature = "metal") {
        "gpu"
    } else {
        "cpu"
    }
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
    kind: ModelKind,
    info: ModelInfo,
    /// Rows of the embedding table: every token id must be below it.
    vocab: u32,
    /// Segment ids must be below it (0 or 1 → only zeros).
    type_vocab: u32,
    max_tokens: u32,
    stats: WorkerStats,
}

impl Engine {
    pub fn load(dir: &Path, opts: &Options) -> Result<Engine> {
        let start = Instant::now();
        #[cfg(feature = "metal")]
        mlx_rs::Device::set_default(&mlx_rs::Device::gpu());
        memory::set_cache_limit(opts.cache_limit_bytes)?;

        let mut facts = model_dir::inspect(dir).map_err(|e| anyhow!(e))?;
        if let Some(kind) = opts.kind {
            if kind != facts.kind {
                facts.kind = kind;
                facts.pooling = match (kind, facts.family) {
                    (ModelKind::Reranker, Family::Qwen3) => Pooling::YesNo,
                    (ModelKind::Reranker, _) => Pooling::CrossEncoder,
                    (ModelKind::Embedding, Family::Qwen3) => Pooling::LastToken,
                    (ModelKind::Embedding, _) => Pooling::Cls,
                };
                facts.normalize = kind == ModelKind::Embedding;
            }
        }
        let config = &facts.config;

        let gpu = cfg!(feature = "metal");
        let mut w = Weights::load(dir, config, LoadPolicy { compute: Dtype::Float32, dequantize: !gpu })?;
        let compute = match opts.compute_dtype {
            Some(d) => d,
            None if gpu => w.stored_float_dtype().unwrap_or(Dtype::Float32),
            None => Dtype::Float32,
        };
        w.set_policy(LoadPolicy { compute, dequantize: !gpu });

        let (network, head): (Box<dyn Network>, Head) = match facts.family {
            Family::Bert => {
                let net = Bert::load(config, &mut w)?;
                let head = match facts.pooling {
                    Pooling::CrossEncoder => Head::CrossEncoder(CrossEncoder::load_bert(config, &mut w, net.hidden_size())?),
                    p => Head::Pool { pooling: p, normalize: facts.normalize },
                };
                (Box::new(net), head)
            }
            Family::XlmRoberta => {
                let net = XlmRoberta::load(config, &mut w)?;
                let head = match facts.pooling {
                    Pooling::CrossEncoder => Head::CrossEncoder(CrossEncoder::load_xlmr(config, &mut w, net.hidden_size())?),
                    p => Head::Pool { pooling: p, normalize: facts.normalize },
                };
                (Box::new(net), head)
            }
            Family::Qwen3 => {
                let net = Qwen3::load(config, &mut w)?;
                let head = match facts.pooling {
                    Pooling::YesNo => Head::YesNo(YesNo::load(dir, &mut w, &net)?),
                    Pooling::CrossEncoder => bail!("Qwen3 sequence-classification heads are not supported"),
                    p => Head::Pool { pooling: p, normalize: facts.normalize },
                };
                (Box::new(net), head)
            }
        };
        if matches!(head, Head::Pool { .. }) != (facts.kind == ModelKind::Embedding) {
            bail!("{} cannot serve as {}", facts.architecture, facts.kind.as_str());
        }
        let type_vocab = config.get("type_vocab_size").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        let hidden = network.hidden_size();
        let stored_dtype = w.stored_dtype();
        drop(w); // unused tensors (MLM heads, position_ids buffers) are released here

        let info = ModelInfo {
            kind: facts.kind,
            architecture: facts.architecture.clone(),
            family: facts.family.as_str().into(),
            hidden_size: hidden as u32,
            output_dim: if facts.kind == ModelKind::Embedding { hidden as u32 } else { 0 },
            max_tokens: facts.max_tokens,
            vocab_size: facts.vocab_size,
            pooling: facts.pooling.as_str().into(),
            normalize: facts.normalize,
            stored_dtype,
            compute_dtype: dtype_name(compute).into(),
            device: device_name().into(),
            blas: crate::blas::sgemm_provider(),
            load_seconds: 0.0,
        };
        let mut engine = Engine {
            network,
            head,
            kind: facts.kind,
            info,
            vocab: facts.vocab_size,
            type_vocab,
            max_tokens: facts.max_tokens,
            stats: WorkerStats::default(),
        };
        // Warm-up: reads every weight from disk and builds compiled kernels now, not on the
        // first request; a broken checkpoint fails here, before Ready.
        let mut warm = TokenBatch::new();
        warm.push(&[0, 0], &[]);
        engine.run(&warm)?;
        engine.stats = WorkerStats::default();
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
                return Err(format!("sequence {i} has {} tokens; this model accepts at most {}", seq.len(), self.max_tokens));
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

    /// Pads the batch on the right to its longest sequence.
    fn prepare(&self, batch: &TokenBatch) -> Result<Inputs> {
        let b = batch.len();
        let l = batch.max_len();
        let pad = self.network.pad_id();
        let mut ids = vec![pad as i32; b * l];
        let mut types = vec![0i32; b * l];
        let mut mask = vec![false; b * l];
        let mut positions: Option<Vec<i32>> = None;
        let mut lengths = Vec::with_capacity(b);
        for i in 0..b {
            let seq = batch.sequence(i);
            let row = i * l;
            for (j, &t) in seq.iter().enumerate() {
                ids[row + j] = t as i32;
            }
            for (j, &t) in batch.sequence_type_ids(i).iter().enumerate() {
                types[row + j] = t as i32;
            }
            mask[row..row + seq.len()].fill(true);
            if let Some(p) = self.network.position_ids(seq, l) {
                positions.get_or_insert_with(|| Vec::with_capacity(b * l)).extend(p);
            }
            lengths.push(seq.len() as i32);
        }
        let (bi, li) = (b as i32, l as i32);
        Ok(Inputs {
            ids: Array::from_slice(&ids, &[bi * li]),
            type_ids: Array::from_slice(&types, &[bi * li]),
            positions: positions.map(|p| Array::from_slice(&p, &[bi, li])),
            key_mask: Array::from_slice(&mask, &[bi, 1, 1, li]),
            lengths,
            batch: bi,
            len: li,
        })
    }

    /// Runs the network and the head; returns `[batch, dim]` rows or `[batch]` scores (f32).
    fn run(&mut self, batch: &TokenBatch) -> Result<Array> {
        let inputs = self.prepare(batch)?;
        let hidden = self.network.forward(&inputs)?;
        let (lengths, len) = (&inputs.lengths, inputs.len);
        let out = match &self.head {
            Head::Pool { pooling, normalize } => {
                let pooled = pooling::pool(&hidden, *pooling, lengths, len)?.as_dtype(Dtype::Float32)?;
                if *normalize {
                    pooling::l2_normalize(&pooled)?
                } else {
                    pooled
                }
            }
            Head::CrossEncoder(h) => h.score(&hidden, lengths, len)?.as_dtype(Dtype::Float32)?,
            Head::YesNo(h) => h.score(&hidden.as_dtype(Dtype::Float32)?, lengths, len)?,
        };
        out.eval()?;
        self.stats.batches += 1;
        self.stats.sequences += batch.len() as u64;
        self.stats.tokens += batch.tokens.len() as u64;
        self.stats.padded_tokens += (inputs.batch * inputs.len) as u64;
        Ok(out)
    }

    /// Embedding rows, row-major `[batch, dim]`.
    pub fn embed(&mut self, batch: &TokenBatch) -> Result<(u32, Vec<f32>)> {
        if self.kind != ModelKind::Embedding {
            bail!("this worker serves a reranker; it cannot embed");
        }
        let out = self.run(batch)?;
        let dim = out.dim(1) as u32;
        Ok((dim, to_vec_f32(&out)?))
    }

    /// One relevance score per sequence.
    pub fn score(&mut self, batch: &TokenBatch) -> Result<Vec<f32>> {
        if self.kind != ModelKind::Reranker {
            bail!("this worker serves an embedding model; it cannot score pairs");
        }
        let out = self.run(batch)?;
        to_vec_f32(&out)
    }

    /// Counters plus MLX and process memory.
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            mlx_active_bytes: memory::active_memory().unwrap_or(0) as u64,
            mlx_peak_bytes: memory::peak_memory().unwrap_or(0) as u64,
            mlx_cache_bytes: memory::cache_memory().unwrap_or(0) as u64,
            rss_bytes: rss_bytes(),
            ..self.stats.clone()
        }
    }
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
