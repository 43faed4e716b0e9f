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
//! - Models: `aliases.rs` (names users type), `pull.rs` (hub or folder → store),
//!   `quantize.rs` (via the worker binary), `metadata.rs` (mlx-serve.json), `downloads.rs`
//!   (the daemon's shared downloads), `models_cli.rs` + `progress.rs` (the CLI commands).
//! - `server.rs`: the daemon's main loop and graceful shutdown.
//!
//! The supervisor never links MLX; `mlx-serve-worker` does the compute.

mod aliases;
mod api;
mod batcher;
mod config;
mod downloads;
mod metadata;
mod metrics;
mod models_cli;
mod pool;
mod progress;
mod pull;
mod quantize;
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
    /// Download a model from Hugging Face (repo id or alias) or import a local folder.
    Pull(models_cli::PullArgs),
    /// List installed models with their type and size.
    List(models_cli::ListArgs),
    /// Show an installed model's details and metadata.
    Show(models_cli::ShowArgs),
    /// Remove an installed model.
    Remove(models_cli::RemoveArgs),
    /// Write an MLX-quantized copy of an installed model (NAME-4bit / NAME-8bit).
    Quantize(models_cli::QuantizeArgs),
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
        Command::Pull(args) => models_cli::pull_cmd(&load_config()?, args),
        Command::List(args) => models_cli::list_cmd(&load_config()?, args),
        Command::Show(args) => models_cli::show_cmd(&load_config()?, args),
        Command::Remove(args) => models_cli::remove_cmd(&load_config()?, args),
        Command::Quantize(args) => models_cli::quantize_cmd(&load_config()?, args),
    }
}
