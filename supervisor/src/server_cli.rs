//! The CLI commands that run and drive the server: `start`, `stop`, `status`, `ctl`,
//! `config`, `service`. Arguments are parsed here; the work is in `lifecycle.rs`,
//! `control.rs`, `service.rs` and `config.rs`.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::{Effective, EXAMPLE};
use crate::control::{self, Request};
use crate::{lifecycle, server, service};

#[derive(Args)]
pub struct StartArgs {
    /// Run in the foreground (what launchd, systemd and `brew services` run). Without it
    /// the server is started in the background and this command returns once it is ready.
    #[arg(long)]
    pub foreground: bool,
    /// Address to bind (default 127.0.0.1: there is no authentication).
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (default 8000).
    #[arg(long)]
    pub port: Option<u16>,
    /// Model to load at start (repeatable); replaces models.preload.
    #[arg(long = "preload", value_name = "MODEL")]
    pub preload: Vec<String>,
}

impl StartArgs {
    /// The flags again, for the re-executed daemon.
    fn forward(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        if let Some(h) = &self.host {
            out.extend(["--host".into(), h.into()]);
        }
        if let Some(p) = self.port {
            out.extend(["--port".into(), p.to_string().into()]);
        }
        for m in &self.preload {
            out.extend(["--preload".into(), m.into()]);
        }
        out
    }

    /// Defaults < file < environment < these flags.
    fn effective(&self) -> Result<Effective> {
        let mut effective = Effective::load()?;
        if let Some(h) = &self.host {
            effective.set_from_cli("server.host", "--host", |c| c.server.host = h.clone());
        }
        if let Some(p) = self.port {
            effective.set_from_cli("server.port", "--port", |c| c.server.port = p);
        }
        if !self.preload.is_empty() {
            effective.set_from_cli("models.preload", "--preload", |c| c.models.preload = self.preload.clone());
        }
        effective.config.validate()?;
        Ok(effective)
    }
}

pub fn start_cmd(args: StartArgs) -> Result<()> {
    let effective = args.effective()?;
    if !args.foreground {
        return lifecycle::start_background(&effective.config, &args.forward());
    }
    server::init_logging(&effective.config);
    let file_state = if effective.file_exists { "" } else { " (not found: defaults)" };
    tracing::info!("config file {}{file_state}", effective.path.display());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(server::run(effective.config))
}

#[derive(Args)]
pub struct StopArgs {
    /// The server's port (default: the configured port, or the only running server).
    #[arg(long)]
    pub port: Option<u16>,
    /// Stop every server started from this home (MLX_SERVE_HOME).
    #[arg(long, conflicts_with = "port")]
    pub all: bool,
    /// SIGKILL the server (and its workers) if it has not stopped after the timeout.
    #[arg(long)]
    pub force: bool,
    /// Seconds to wait after SIGTERM (default: server.shutdown_timeout_seconds + 15).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

pub fn stop_cmd(args: StopArgs) -> Result<()> {
    let effective = Effective::load()?;
    lifecycle::stop_command(&effective.config, args.port, args.all, args.force, args.timeout)
}

#[derive(Args)]
pub struct StatusArgs {
    /// Only the server on this port (default: every server started from this home).
    #[arg(long)]
    pub port: Option<u16>,
    /// Machine-readable output (a JSON array).
    #[arg(long)]
    pub json: bool,
}

pub fn status_cmd(args: StatusArgs) -> Result<()> {
    lifecycle::status_command(args.port, args.json)
}

#[derive(Args)]
pub struct CtlArgs {
    #[command(subcommand)]
    pub command: CtlCommand,
    /// The server's port (default: the configured port, or the only running server).
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// Print the daemon's answer as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum CtlCommand {
    /// Table of workers: model, pid, state, uptime, restarts, queue depth, batches, memory.
    Workers,
    /// Start a model's worker now (waits until it is ready).
    Load { model: String },
    /// Stop a model's worker to free its memory (refused while it has work).
    Evict { model: String },
    /// Restart a model's worker (in-flight work finishes first).
    Restart { model: String },
}

pub fn ctl_cmd(args: CtlArgs) -> Result<()> {
    let effective = Effective::load()?;
    let config = &effective.config;
    let port = lifecycle::target_port(args.port, config)?;
    let load_timeout = Duration::from_secs(config.limits.worker_start_timeout_seconds + 30);
    let (request, timeout) = match args.command {
        CtlCommand::Workers => (Request::Workers, Duration::from_secs(15)),
        CtlCommand::Load { model } => (Request::Load { model }, load_timeout),
        CtlCommand::Evict { model } => (Request::Evict { model }, Duration::from_secs(60)),
        CtlCommand::Restart { model } => (Request::Restart { model }, load_timeout),
    };
    control::ctl_command(port, request, args.json, timeout)
}

#[derive(Args)]
pub struct ConfigArgs {
    /// Print the config file's path and exit.
    #[arg(long)]
    pub path: bool,
    /// Print a commented example config (every key at its default).
    #[arg(long, conflicts_with = "path")]
    pub example: bool,
    /// The effective config as JSON: `{path, file_exists, values: [{key, value, source, detail}]}`.
    #[arg(long, conflicts_with_all = ["path", "example"])]
    pub json: bool,
}

pub fn config_cmd(args: ConfigArgs) -> Result<()> {
    if args.example {
        return print_out(EXAMPLE);
    }
    if args.path {
        println!("{}", crate::config::config_path().display());
        return Ok(());
    }
    let effective = Effective::load()?;
    if args.json {
        let out = serde_json::json!({
            "path": effective.path,
            "file_exists": effective.file_exists,
            "values": effective.entries(),
        });
        print_out(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
    } else {
        print_out(&effective.render())?;
    }
    // Values that parse but make no sense stop the server; say so here too.
    effective.config.validate()?;
    Ok(())
}

/// Writes to stdout; a closed pipe (`mlx-serve config | head`) is not an error.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[derive(Args)]
pub struct ServiceArgs {
    pub action: service::Action,
    /// Service manager (default: launchd on macOS, systemd elsewhere).
    #[arg(long, value_enum)]
    pub manager: Option<service::Manager>,
    /// Print the agent/unit file instead of acting.
    #[arg(long)]
    pub print: bool,
}

pub fn service_cmd(args: ServiceArgs) -> Result<()> {
    let effective = Effective::load()?;
    service::command(args.action, args.manager, args.print, &effective.config)
}
