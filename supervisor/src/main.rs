//! `mlx-serve`: a local embedding and reranking server on Apple's MLX.
//!
//! Map of this crate (data flows one way: HTTP → validate → tokenize → queue → batch →
//! IPC → worker → scatter → encode → HTTP):
//! - `api/`: HTTP surface, one file per API family; `api/inference.rs` is the shared path.
//! - `tokenize.rs`: model tokenizers, truncation, reranker prompt templates.
//! - `batcher.rs`: the per-model queue and batch planning.
//! - `runner.rs`: one actor per model: dispatch, scatter, crash retry, worker restarts.
//! - `worker.rs`: a worker process: spawn, handshake, framed socket I/O.
//! - `pool.rs`: runners by model; LRU and TTL eviction.
//! - `store.rs`: models on disk. `config.rs`: configuration. `metrics.rs`: Prometheus.
//! - `server.rs`: the daemon's main loop and graceful shutdown.
//!
//! The supervisor never links MLX; `mlx-serve-worker` does the compute.

mod api;
mod batcher;
mod config;
mod metrics;
mod pool;
mod runner;
mod server;
mod store;
mod tokenize;
mod worker;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(name = "mlx-serve", version, about = "Local embedding and reranking server on Apple's MLX")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Start(StartArgs),
}

#[derive(Args)]
struct StartArgs {
    /// Run in the foreground (what launchd, systemd and `brew services` run).
    #[arg(long)]
    foreground: bool,
    /// Address to bind (default 127.0.0.1: there is no authentication).
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    /// Model to load at start (repeatable).
    #[arg(long = "preload", value_name = "MODEL")]
    preload: Vec<String>,
}

fn load_config() -> Result<Config> {
    let (config, _path) = Config::load()?;
    Ok(config)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => {
            let mut config = load_config()?;
            if let Some(h) = args.host {
                config.server.host = h;
            }
            if let Some(p) = args.port {
                config.server.port = p;
            }
            if !args.preload.is_empty() {
                config.models.preload = args.preload;
            }
            server::init_logging(&config);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(server::run(config))
        }
    }
}
