//! `mlx-serve ctl workers|load|evict|restart`: one request on a running daemon's control
//! socket, printed as a table or a message (or the daemon's JSON with `--json`).

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::format::{human_bytes, human_duration};
use crate::config::Config;
use crate::console::{out, outln};
use crate::control::{self, Request, WorkerRow};
use crate::daemon::pidfile;
use crate::paths::Paths;

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
    Evict {
        model: String,
        /// Stop it even with work queued or in flight (a worker that hangs); that work is
        /// answered 503.
        #[arg(long)]
        force: bool,
    },
    /// Restart a model's worker (in-flight work gets a few seconds to finish, then is
    /// retried on the new worker).
    Restart { model: String },
}

pub fn ctl_cmd(args: CtlArgs) -> Result<()> {
    let config = Config::load()?;
    let port = pidfile::target_port(args.port, &config)?;
    let load_timeout = Duration::from_secs(config.limits.worker_start_timeout_seconds + 30);
    let (request, timeout) = match args.command {
        CtlCommand::Workers => (Request::Workers, Duration::from_secs(15)),
        CtlCommand::Load { model } => (Request::Load { model }, load_timeout),
        CtlCommand::Evict { model, force } => (Request::Evict { model, force }, Duration::from_secs(60)),
        CtlCommand::Restart { model } => (Request::Restart { model }, load_timeout),
    };
    ctl_command(&config.paths, port, request, args.json, timeout)
}

/// `mlx-serve ctl …` on the daemon at `port`: prints a table or a message, or with
/// `json` the daemon's answer as it is.
fn ctl_command(paths: &Paths, port: u16, request: Request, json: bool, timeout: Duration) -> Result<()> {
    let result = control::request(paths, port, &request, timeout)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    match request {
        Request::Workers => {
            let rows: Vec<WorkerRow> = serde_json::from_value(result)?;
            out!("{}", workers_table(&rows));
        }
        Request::Status => outln!("{}", serde_json::to_string_pretty(&result)?),
        Request::Load { .. } => outln!(
            "loaded {} (worker pid {}) in {:.1} s",
            result["model"].as_str().unwrap_or_default(),
            result["pid"],
            result["seconds"].as_f64().unwrap_or_default()
        ),
        Request::Evict { .. } => outln!("evicted {}", result["model"].as_str().unwrap_or_default()),
        Request::Forget { .. } => outln!("stopped {}", result["model"].as_str().unwrap_or_default()),
        Request::CacheStats | Request::CacheClear => outln!("{}", serde_json::to_string_pretty(&result)?),
        Request::Restart { .. } => outln!(
            "restarted {} (worker pid {} → {})",
            result["model"].as_str().unwrap_or_default(),
            result["old_pid"],
            result["pid"]
        ),
    }
    Ok(())
}

fn workers_table(rows: &[WorkerRow]) -> String {
    let header = ["MODEL", "TYPE", "PID", "STATE", "UPTIME", "RESTARTS", "QUEUE", "BATCHES", "MEMORY", "GPU-MEMORY"];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let dash = || "-".to_owned();
        table.push(vec![
            if r.preload { format!("{} (preload)", r.model) } else { r.model.clone() },
            r.kind.clone(),
            r.pid.map(|p| p.to_string()).unwrap_or_else(dash),
            r.state.clone(),
            r.uptime_seconds.map(human_duration).unwrap_or_else(dash),
            r.restarts.to_string(),
            r.queued.to_string(),
            r.batches.to_string(),
            r.memory_bytes.map(human_bytes).unwrap_or_else(dash),
            r.device_memory_bytes.map(human_bytes).unwrap_or_else(dash),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| table.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no models used yet: `mlx-serve ctl load MODEL` starts one)\n");
    }
    out
}
