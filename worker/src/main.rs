//! `mlx-serve-worker`: runs one model with MLX for the mlx-serve supervisor.
//!
//! The worker is pure compute: it receives token ids over a Unix socket and answers with
//! f32 rows or scores (see `mlx-serve-protocol`). No HTTP, no JSON API, no downloads.
//! Map: `server` (socket loop, idle release) → `engine` (load, dtype policy, run a batch;
//! `device` says whether MLX computes on a GPU, and whether that is CUDA) → `packing` (a
//! batch as packed rows, attention buckets) → `models/*` (one file per architecture; `models/attention` over packed sequences) → `pooling` / `heads`;
//! `memory` sizes MLX's buffer cache from the work and gives idle memory back; `weights`
//! loads safetensors; `quantize` writes MLX-quantized copies; `blas` checks the BLAS
//! binding; `cpu_kernels` / `cpu_attention` are host-side GELU, LayerNorm, softmax and
//! attention for the CPU backend (MLX's elementwise kernels are scalar on x86).
//! docs/worker.md describes the design and its measurements.

mod colbert_head;
mod cpu;
mod cuda_driver;
mod device;
mod device_memory;
mod embedding_head;
mod engine;
mod heads;
mod knobs;
mod layers;
mod memory;
mod models;
mod packing;
mod pooling;
mod quantize;
mod server;
mod splade_head;
mod weights;

use cpu::{blas, cpu_attention, cpu_kernels};

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use mlx_rs::Array;
use mlx_serve_protocol::{ModelKind, TokenBatch};

use engine::{Engine, Options};

#[derive(Parser)]
#[command(name = "mlx-serve-worker", version, about = "mlx-serve's MLX model worker (started by mlx-serve)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Embedding,
    Reranker,
    Classifier,
}

impl KindArg {
    fn kind(self) -> ModelKind {
        match self {
            KindArg::Embedding => ModelKind::Embedding,
            KindArg::Reranker => ModelKind::Reranker,
            KindArg::Classifier => ModelKind::Classifier,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve one model to the supervisor listening on SOCKET (started by mlx-serve).
    Serve {
        /// Filesystem path of the supervisor's Unix socket.
        #[arg(long)]
        socket: PathBuf,
        /// Model folder (Hugging Face layout, safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Overrides the kind detected from the model folder.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// auto (float32 on CPU; on GPU the checkpoint's half dtype, float16 for float32
        /// ones), float32, float16 or bfloat16.
        #[arg(long, default_value = "auto")]
        compute_dtype: String,
        /// Bound on MLX's buffer cache (freed buffers kept for reuse), in MiB; 0 = sized
        /// automatically from the working set of recent batches.
        #[arg(long, default_value_t = 0)]
        cache_limit_mb: usize,
        /// Keep quantized layers quantized (quantized matmul) on the CPU backend too, as a
        /// GPU does; slower there, for checking that path (docs/worker.md, "Backends").
        #[arg(long)]
        keep_quantized: bool,
    },
    /// Whether this worker computes the model in MODEL exactly as its files describe,
    /// from its JSON files alone (no weights needed): prints one JSON line,
    /// `{"ok": true, "family": ..., "pooling": ..., "output_dim": ..., "max_tokens": ...}` or
    /// `{"ok": false, "reason": ...}`. `mlx-serve pull` asks this before downloading weights.
    Check {
        #[arg(long)]
        model: PathBuf,
        /// As for `serve`.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
    },
    /// Write an MLX-quantized copy of a model folder (every matrix: linear layers and
    /// embedding tables; docs/quantization.md); prints one JSON report line.
    Quantize {
        #[arg(long)]
        src: PathBuf,
        #[arg(long)]
        dst: PathBuf,
        #[arg(long, value_parser = ["4", "8"])]
        bits: String,
        #[arg(long, default_value = "64", value_parser = ["32", "64", "128"])]
        group_size: String,
        /// uniform: every matrix at --bits; mixed: more bits where the error hurts most
        /// (quantize/plan.rs). Default: mixed for 4 bits, uniform for 8.
        #[arg(long, value_parser = ["uniform", "mixed"])]
        recipe: Option<String>,
        /// PATTERN=BITS: tensors whose checkpoint name contains PATTERN get BITS (2-8; 0
        /// keeps them unquantized), ahead of the recipe. Repeatable; the first match wins.
        #[arg(long = "bits-for", value_name = "PATTERN=BITS")]
        bits_for: Vec<String>,
        /// Token set (JSON, mlx_serve_protocol::quantization::EvalSet) to measure the copy
        /// against the original on; the report then carries the numbers.
        #[arg(long)]
        eval: Option<PathBuf>,
    },
    /// Measure the forward pass (with pooling/head) in tokens per second.
    BenchForward {
        #[arg(long)]
        model: PathBuf,
        /// Sequences per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Tokens per sequence (with --mixed: the longest).
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Lengths drawn uniformly from 8..=seq, in random order (fixed seed), instead of
        /// every sequence `seq` tokens long.
        #[arg(long)]
        mixed: bool,
        /// Token ids to run instead of generated ones: a JSON list of lists (one batch),
        /// e.g. what a reference tokenizer produced for the texts it encodes.
        #[arg(long, conflicts_with = "mixed")]
        ids: Option<PathBuf>,
        /// Run VARY different --mixed batches (as traffic brings them) instead of one batch
        /// again and again: once cold (first sight of each batch's shapes), then warm.
        #[arg(long, default_value_t = 0, conflicts_with = "ids")]
        vary: u32,
        /// Keep quantized layers quantized on the CPU backend too (as `serve`).
        #[arg(long)]
        keep_quantized: bool,
        #[arg(long, default_value_t = 10)]
        iters: u32,
        #[arg(long, default_value = "auto")]
        compute_dtype: String,
        /// As for `serve`: 0 = sized from the working set.
        #[arg(long, default_value_t = 0)]
        cache_limit_mb: usize,
    },
    /// Time each host kernel (GELU, LayerNorm, softmax) at each SIMD level this CPU has,
    /// one thread, at MiniLM's shapes; one JSON line per kernel and level.
    BenchKernels {
        #[arg(long, default_value_t = 10)]
        rounds: u32,
    },
    /// Load a safetensors file and print its tensors and a checksum computed with MLX.
    Inspect { file: PathBuf },
    /// Measure fp32 matmul throughput (GFLOP/s) of n×n×n products, or of a linear layer
    /// `[m, k] · [n, k]ᵀ + bias` (what the models run) with --m/--k.
    BenchMatmul {
        #[arg(long, default_value_t = 1024)]
        n: i32,
        #[arg(long)]
        m: Option<i32>,
        #[arg(long)]
        k: Option<i32>,
        #[arg(long, default_value_t = 20)]
        iters: u32,
    },
}

/// libmlx settings the worker changes from MLX's defaults, only where the user has not set
/// them (names are libmlx's own, MLX 0.32):
/// - MLX's CUDA backend keeps one compiled attention graph per input shape (256 by default)
///   and, past that, fails the operation with "Cache thrashing is happening". Mixed-length
///   traffic makes many shapes, so the worker keeps more of them and turns the failure into
///   what it is: a slowdown (`MLX_CUDA_SDPA_CACHE_SIZE`, `MLX_ENABLE_CACHE_THRASHING_CHECK`).
/// - It also keeps up to 400 instantiated CUDA graphs, one per sequence of kernels, and
///   mixed lengths make a new sequence per batch shape: on an H200 the MiniLM worker held
///   956 MiB after idle release with 400 and 714 MiB with 32, at no lower throughput
///   (6.7k and 7.3k texts/s, docs/gpu-results.md, "Memory after traffic")
///   (`MLX_CUDA_GRAPH_CACHE_SIZE`).
/// - float32 matmuls on a GPU run as TF32 (10-bit mantissa) unless `MLX_ENABLE_TF32=0`: off,
///   so `compute_dtype: float32` computes in float32 (the GPU default is half precision
///   anyway; who asks for float32 asks for its accuracy).
///
/// No effect on the CPU backend.
fn mlx_gpu_defaults() {
    for (name, value) in [
        ("MLX_CUDA_SDPA_CACHE_SIZE", "2048"),
        ("MLX_CUDA_GRAPH_CACHE_SIZE", "32"),
        ("MLX_ENABLE_CACHE_THRASHING_CHECK", "0"),
        ("MLX_ENABLE_TF32", "0"),
    ] {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
}

fn main() -> Result<()> {
    blas::reexec_with_better_openblas_core();
    memory::keep_freed_heap();
    mlx_gpu_defaults(); // before MLX reads its environment
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { socket, model, kind, compute_dtype, cache_limit_mb, keep_quantized } => {
            let opts = Options {
                kind: kind.map(KindArg::kind),
                compute_dtype: engine::parse_dtype(&compute_dtype)?,
                cache_limit_bytes: cache_limit_mb.checked_mul(1 << 20).context("--cache-limit-mb is too large")?,
                keep_quantized,
            };
            let code = server::run(&socket, &model, &opts)?;
            std::process::exit(code);
        }
        Command::Check { model, kind } => {
            let verdict = match engine::check(&model, kind.map(KindArg::kind)) {
                Ok(facts) => serde_json::json!({
                    "ok": true,
                    "family": facts.family.as_str(),
                    "kind": facts.kind.as_str(),
                    "pooling": facts.pooling.as_str(),
                    "output_dim": facts.output_dim,
                    "max_tokens": facts.max_tokens,
                }),
                Err(e) => serde_json::json!({"ok": false, "reason": format!("{e:#}")}),
            };
            println!("{verdict}");
            Ok(())
        }
        Command::Quantize { src, dst, bits, group_size, recipe, bits_for, eval } => {
            let opts = quantize::Options {
                bits: bits.parse()?,
                group_size: group_size.parse()?,
                recipe: recipe.as_deref().map(quantize::plan::Recipe::parse).transpose()?,
                overrides: bits_for.iter().map(|s| quantize::plan::Override::parse(s)).collect::<Result<_>>()?,
                eval,
            };
            let report = quantize::run(&src, &dst, &opts)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::BenchForward {
            model,
            batch,
            seq,
            mixed,
            ids,
            vary,
            keep_quantized,
            iters,
            compute_dtype,
            cache_limit_mb,
        } => {
            let opts = Options {
                compute_dtype: engine::parse_dtype(&compute_dtype)?,
                cache_limit_bytes: cache_limit_mb.checked_mul(1 << 20).context("--cache-limit-mb is too large")?,
                keep_quantized,
                ..Options::default()
            };
            bench_forward(&model, BenchShape { batch, seq, mixed: mixed || vary > 0, ids, vary }, iters, &opts)
        }
        Command::BenchKernels { rounds } => {
            cpu_kernels::bench::run(rounds);
            Ok(())
        }
        Command::Inspect { file } => inspect(&file),
        Command::BenchMatmul { n, m: None, k: None, iters } => bench_matmul(n, iters),
        Command::BenchMatmul { n, m, k, iters } => bench_linear(m.unwrap_or(n), k.unwrap_or(n), n, iters),
    }
}

/// What `bench-forward` runs.
struct BenchShape {
    batch: usize,
    seq: usize,
    mixed: bool,
    ids: Option<PathBuf>,
    vary: u32,
}

/// Times full batches (forward + pooling/head + copy-out).
fn bench_forward(model: &Path, shape: BenchShape, iters: u32, opts: &Options) -> Result<()> {
    blas::report();
    let mut engine = Engine::load(model, opts)?;
    let info = engine.info().clone();
    let BenchShape { batch, seq, mixed, ids, vary } = shape;
    let mut batches = Vec::new();
    if let Some(path) = ids {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let seqs: Vec<Vec<u32>> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a JSON list of token-id lists", path.display()))?;
        let mut tokens = TokenBatch::new();
        for s in &seqs {
            tokens.push(s, &[]);
        }
        engine.validate(&tokens).map_err(anyhow::Error::msg)?;
        batches.push(tokens);
    } else {
        if seq > info.max_tokens as usize || seq < 8 || batch == 0 {
            bail!("--seq must be in 8..={} and --batch > 0", info.max_tokens);
        }
        // Deterministic ids from the upper part of the vocabulary (ordinary tokens, no
        // specials), xorshift32; lengths (and with --vary, batch sizes from batch/2 up)
        // from the same generator.
        let lo = info.vocab_size / 4;
        let span = info.vocab_size - lo;
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for _ in 0..vary.max(1) {
            let rows = if vary > 0 { batch.div_ceil(2) + next() as usize % (batch / 2 + 1) } else { batch };
            let mut tokens = TokenBatch::new();
            for _ in 0..rows.min(batch) {
                let n = if mixed { 8 + next() as usize % (seq - 7) } else { seq };
                let ids: Vec<u32> = (0..n).map(|_| lo + next() % span).collect();
                tokens.push(&ids, &[]);
            }
            batches.push(tokens);
        }
    }
    let once = |engine: &mut Engine, tokens: &TokenBatch| -> Result<()> {
        match engine.kind() {
            ModelKind::Embedding => engine.embed(tokens, None).map(|_| ()),
            ModelKind::Reranker => engine.score(tokens, None).map(|_| ()),
            ModelKind::Classifier => engine.classify(tokens, None).map(|_| ()),
        }
    };
    let real: usize = batches.iter().map(|b| b.tokens.len()).sum();
    let sequences: usize = batches.iter().map(TokenBatch::len).sum();
    // --vary: the first pass meets every batch's shapes for the first time.
    let mut cold = None;
    if vary > 0 {
        let t = Instant::now();
        for b in &batches {
            once(&mut engine, b)?;
        }
        cold = Some(t.elapsed().as_secs_f64() / batches.len() as f64);
    } else {
        for _ in 0..2 {
            once(&mut engine, &batches[0])?;
        }
    }
    // Mean and best per pass: on a shared machine the best is the steadier number.
    let (mut total, mut best) = (0f64, f64::INFINITY);
    for _ in 0..iters {
        let t = Instant::now();
        for b in &batches {
            once(&mut engine, b)?;
        }
        let s = t.elapsed().as_secs_f64() / batches.len() as f64;
        total += s;
        best = best.min(s);
    }
    let secs = total / iters as f64;
    let per_batch = |n: usize| n as f64 / batches.len() as f64;
    let stats = engine.stats();
    println!(
        "{}",
        serde_json::json!({
            "model": model.display().to_string(),
            "architecture": info.architecture,
            "compute_dtype": info.compute_dtype,
            "device": info.device,
            "batches": batches.len(),
            "batch": per_batch(sequences),
            "seq": batches.iter().map(TokenBatch::max_len).max(),
            "tokens": per_batch(real),
            "padded_tokens": per_batch(batches.iter().map(|b| b.len() * b.max_len()).sum()),
            "computed_tokens_per_batch": stats.padded_tokens / stats.batches.max(1),
            "mlx_cache_limit_mib": stats.mlx_cache_limit_bytes >> 20,
            "mlx_peak_mib": stats.mlx_peak_bytes >> 20,
            "mlx_cache_mib": stats.mlx_cache_bytes >> 20,
            "device_mib": stats.device_bytes.map(|b| b >> 20),
            "driver_reserved_mib": stats.driver_reserved_bytes >> 20,
            "iters": iters,
            "cold_ms_per_batch": cold.map(|c| c * 1e3),
            "cold_sequences_per_second": cold.map(|c| per_batch(sequences) / c),
            "ms_per_batch": secs * 1e3,
            "tokens_per_second": per_batch(real) / secs,
            "sequences_per_second": per_batch(sequences) / secs,
            "best_ms_per_batch": best * 1e3,
            "best_tokens_per_second": per_batch(real) / best,
        })
    );
    Ok(())
}

fn inspect(file: &std::path::Path) -> Result<()> {
    let start = Instant::now();
    let tensors = Array::load_safetensors(file).with_context(|| format!("loading {}", file.display()))?;
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    let mut params = 0usize;
    let mut checksum = 0f64;
    for name in &names {
        let t = &tensors[name];
        params += t.size();
        let s = t.as_dtype(mlx_rs::Dtype::Float32)?.sum(None)?;
        checksum += s.item_cast::<f32>() as f64;
        println!("{name}: {:?} {:?}", t.shape(), t.dtype());
    }
    println!("{} tensors, {params} parameters, sum {checksum:.6}, {:.3}s", names.len(), start.elapsed().as_secs_f64());
    Ok(())
}

fn bench_linear(m: i32, k: i32, n: i32, iters: u32) -> Result<()> {
    blas::report();
    let x = mlx_rs::random::normal::<f32>(&[m, k], None, None, None)?;
    let w = mlx_rs::random::normal::<f32>(&[n, k], None, None, None)?;
    let b = mlx_rs::random::normal::<f32>(&[n], None, None, None)?;
    mlx_rs::transforms::eval([&x, &w, &b])?;
    let lin = layers::Linear::Dense { w_t: w.t(), bias: Some(b) };
    let mut best = f64::INFINITY;
    for i in 0..iters + 3 {
        let t = Instant::now();
        lin.forward(&x)?.eval()?;
        if i >= 3 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    let gflops = 2.0 * m as f64 * k as f64 * n as f64 / best / 1e9;
    println!(
        "mlx-serve-worker linear [{m}, {k}] x [{n}, {k}]^T + bias: best {:.2} ms, {gflops:.1} GFLOP/s",
        best * 1e3
    );
    Ok(())
}

fn bench_matmul(n: i32, iters: u32) -> Result<()> {
    blas::report();
    let a = mlx_rs::random::normal::<f32>(&[n, n], None, None, None)?;
    let b = mlx_rs::random::normal::<f32>(&[n, n], None, None, None)?;
    mlx_rs::transforms::eval([&a, &b])?;
    for _ in 0..3 {
        a.matmul(&b)?.eval()?;
    }
    let start = Instant::now();
    for _ in 0..iters {
        a.matmul(&b)?.eval()?;
    }
    let secs = start.elapsed().as_secs_f64() / iters as f64;
    let gflops = 2.0 * (n as f64).powi(3) / secs / 1e9;
    println!("mlx-serve-worker fp32 matmul {n}x{n}x{n}: {:.2} ms, {gflops:.1} GFLOP/s", secs * 1e3);
    Ok(())
}
