//! `mlx-serve-worker`: runs one model with MLX for the mlx-serve supervisor.
//!
//! The worker is pure compute: it receives token ids over a Unix socket and answers with
//! f32 rows or scores (see `mlx-serve-protocol`). No HTTP, no JSON API, no downloads.
//! Map: `server` (socket loop) → `engine` (load, dtype policy, run a batch) →
//! `models/*` (one file per architecture) → `pooling` / `heads`; `weights` loads
//! safetensors; `quantize` writes MLX-quantized copies; `blas` checks the BLAS binding.

mod blas;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mlx_rs::Array;

#[derive(Parser)]
#[command(name = "mlx-serve-worker", version, about = "mlx-serve's MLX model worker (started by mlx-serve)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a safetensors file and print its tensors and a checksum computed with MLX.
    Inspect { file: PathBuf },
    /// Measure fp32 matmul throughput (GFLOP/s) of n×n×n products.
    BenchMatmul {
        #[arg(long, default_value_t = 1024)]
        n: i32,
        #[arg(long, default_value_t = 20)]
        iters: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { file } => inspect(&file),
        Command::BenchMatmul { n, iters } => bench_matmul(n, iters),
    }
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
