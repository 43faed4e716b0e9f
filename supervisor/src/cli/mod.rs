//! The command line: clap definitions and one function per command. The top of the crate:
//! it may use every layer below, and it is the one place errors become `anyhow` reports.
//!
//! - `server.rs`: `start`, `stop`, `status`; `ctl.rs`: `ctl …`; `cache.rs`: `cache …`;
//!   `config.rs`: `config`;
//!   `service.rs`: `service …` (arguments; the work is in `daemon/`).
//! - `models.rs`: `pull`, `list`, `show`, `remove`, `quantize` (on the store directly),
//!   with `progress.rs` for bars and lines.

mod cache;
mod config;
mod ctl;
mod format;
mod models;
mod progress;
mod server;
mod service;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(name = "mlx-serve", version, about = "Local embedding and reranking server on Apple's MLX")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (in the background unless --foreground).
    Start(server::StartArgs),
    /// Stop a server started from this home (SIGTERM, then SIGKILL with --force).
    Stop(server::StopArgs),
    /// Show running servers: pid, port, uptime, version, loaded models.
    Status(server::StatusArgs),
    /// Drive a running server's workers over its control socket.
    Ctl(ctl::CtlArgs),
    /// A running server's embedding cache: stats, clear.
    Cache(cache::CacheArgs),
    /// Print the effective config and where each value came from.
    Config(config::ConfigArgs),
    /// Run the server under launchd (macOS) or systemd (Linux).
    Service(service::ServiceArgs),
    /// Download a model from Hugging Face (repo id or alias) or import a local folder.
    Pull(models::PullArgs),
    /// List installed models with their type and size.
    List(models::ListArgs),
    /// Show an installed model's details and metadata.
    Show(models::ShowArgs),
    /// Remove an installed model.
    Remove(models::RemoveArgs),
    /// Write an MLX-quantized copy of an installed model (NAME-4bit / NAME-8bit).
    Quantize(models::QuantizeArgs),
}

/// Parses the process arguments, runs the command, and reports an error as one line on
/// stderr (`error: what failed: why`), whatever `RUST_BACKTRACE` says: returning the error
/// from `main` would print its Debug form, with a stack trace when the variable is set.
pub fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs one parsed command. Output goes through `console`, so a closed pipe never
/// panics; another write failure makes the command fail at the end.
pub fn run(cli: Cli) -> Result<()> {
    run_command(cli)?;
    match crate::console::failure() {
        Some(e) => anyhow::bail!(e),
        None => Ok(()),
    }
}

fn run_command(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Start(args) => server::start_cmd(args),
        Command::Stop(args) => server::stop_cmd(args),
        Command::Status(args) => server::status_cmd(args),
        Command::Ctl(args) => ctl::ctl_cmd(args),
        Command::Cache(args) => cache::cache_cmd(args),
        Command::Config(args) => config::config_cmd(args),
        Command::Service(args) => service::service_cmd(args),
        Command::Pull(args) => models::pull_cmd(&Config::load()?, args),
        Command::List(args) => models::list_cmd(&Config::load()?, args),
        Command::Show(args) => models::show_cmd(&Config::load()?, args),
        Command::Remove(args) => models::remove_cmd(&Config::load()?, args),
        Command::Quantize(args) => models::quantize_cmd(&Config::load()?, args),
    }
}
