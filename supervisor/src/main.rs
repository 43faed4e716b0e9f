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
//! - Running it: `server_cli.rs` (start/stop/status/ctl/config/service arguments),
//!   `lifecycle.rs` (PID files, background start, stop, status), `control.rs` (the
//!   `ctl` socket), `service.rs` (launchd agent / systemd unit).
//!
//! The supervisor never links MLX; `mlx-serve-worker` does the compute.

mod aliases;
mod api;
mod batcher;
mod config;
mod control;
mod downloads;
mod lifecycle;
mod metadata;
mod metrics;
mod models_cli;
mod pool;
mod progress;
mod pull;
mod quantize;
mod runner;
mod server;
mod server_cli;
mod service;
mod store;
mod tokenize;
mod worker;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(name = "mlx-serve", version, about = "Local embedding and reranking server on Apple's MLX")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (in the background unless --foreground).
    Start(server_cli::StartArgs),
    /// Stop a server started from this home (SIGTERM, then SIGKILL with --force).
    Stop(server_cli::StopArgs),
    /// Show running servers: pid, port, uptime, version, loaded models.
    Status(server_cli::StatusArgs),
    /// Drive a running server's workers over its control socket.
    Ctl(server_cli::CtlArgs),
    /// Print the effective config and where each value came from.
    Config(server_cli::ConfigArgs),
    /// Run the server under launchd (macOS) or systemd (Linux).
    Service(server_cli::ServiceArgs),
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

fn load_config() -> Result<Config> {
    let (config, _path) = Config::load()?;
    Ok(config)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => server_cli::start_cmd(args),
        Command::Stop(args) => server_cli::stop_cmd(args),
        Command::Status(args) => server_cli::status_cmd(args),
        Command::Ctl(args) => server_cli::ctl_cmd(args),
        Command::Config(args) => server_cli::config_cmd(args),
        Command::Service(args) => server_cli::service_cmd(args),
        Command::Pull(args) => models_cli::pull_cmd(&load_config()?, args),
        Command::List(args) => models_cli::list_cmd(&load_config()?, args),
        Command::Show(args) => models_cli::show_cmd(&load_config()?, args),
        Command::Remove(args) => models_cli::remove_cmd(&load_config()?, args),
        Command::Quantize(args) => models_cli::quantize_cmd(&load_config()?, args),
    }
}
