//! `mlx-serve start`, `stop`, `status`: the server's lifecycle seen from the command line.
//! Arguments and output are here; the work is in `daemon/` (background start, PID files,
//! stop).

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use super::format::human_duration;
use crate::config::{ApiKey, Config, Effective};
use crate::console::{errln, outln};
use crate::control::ServerStatus;
use crate::daemon::pidfile::{self, probe, Probe};
use crate::daemon::{self, Stopped};
use crate::paths::Paths;

/// Extra time `stop` allows beyond `server.shutdown_timeout_seconds` (workers stopping).
const STOP_MARGIN: Duration = Duration::from_secs(15);

#[derive(Args)]
pub struct StartArgs {
    /// Run in the foreground (what launchd, systemd and `brew services` run). Without it
    /// the server is started in the background and this command returns once it is ready.
    #[arg(long)]
    pub foreground: bool,
    /// Address to bind (default 127.0.0.1). Another address exposes the server to the
    /// network: set an API key too.
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (default 8000).
    #[arg(long)]
    pub port: Option<u16>,
    /// Model to load at start (repeatable); replaces models.preload.
    #[arg(long = "preload", value_name = "MODEL")]
    pub preload: Vec<String>,
    /// Require `Authorization: Bearer KEY` on every route but /health and /ready
    /// (server.api_key). Other local users can read a flag in `ps`: prefer the config
    /// file or MLX_SERVE_API_KEY.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
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

    /// Environment for the re-executed daemon: the API key travels there rather than on
    /// its command line, where `ps` would show it for as long as the daemon runs.
    fn forward_env(&self) -> Vec<(OsString, OsString)> {
        self.api_key.iter().map(|k| ("MLX_SERVE_API_KEY".into(), k.into())).collect()
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
        if let Some(key) = &self.api_key {
            effective.set_from_cli("server.api_key", "--api-key", |c| c.server.api_key = Some(ApiKey(key.clone())));
        }
        effective.config.validate()?;
        Ok(effective)
    }
}

pub fn start_cmd(args: StartArgs) -> Result<()> {
    let effective = args.effective()?;
    if !args.foreground {
        let started = daemon::start_background(&effective.config, &args.forward(), &args.forward_env())?;
        if let Some(pid) = started.removed_stale {
            errln!("removed a stale PID file (pid {pid} is no longer an mlx-serve server)");
        }
        outln!("mlx-serve {} is running at {} (pid {})", env!("CARGO_PKG_VERSION"), started.url, started.pid);
        outln!("logs: {}", started.log_path.display());
        outln!("stop it with: mlx-serve stop --port {}", started.port);
        return Ok(());
    }
    daemon::init_logging(&effective.config);
    let file_state = if effective.file_exists { "" } else { " (not found: defaults)" };
    tracing::info!("config file {}{file_state}", effective.path.display());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    Ok(rt.block_on(daemon::serve(effective.config))?)
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
    let config = Config::load()?;
    let timeout = args
        .timeout
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(config.server.shutdown_timeout_seconds) + STOP_MARGIN);
    let ports = if args.all {
        let ports = pidfile::ports_with_pid_files(&config.paths);
        if ports.is_empty() {
            outln!("no mlx-serve is running (home {})", config.paths.home().display());
        }
        ports
    } else {
        vec![pidfile::target_port(args.port, &config).unwrap_or(args.port.unwrap_or(config.server.port))]
    };
    let mut failed = Vec::new();
    for port in ports {
        match daemon::stop(&config.paths, port, args.force, timeout) {
            Ok(Stopped::NotRunning) => outln!("mlx-serve is not running on port {port}"),
            Ok(Stopped::Stale { pid }) => {
                outln!("mlx-serve is not running on port {port} (removed a stale PID file for pid {pid})")
            }
            Ok(Stopped::Stopped { pid }) => outln!("stopped mlx-serve on port {port} (pid {pid})"),
            Ok(Stopped::Killed { pid }) => {
                outln!("killed mlx-serve on port {port} (pid {pid}) after {} s", timeout.as_secs())
            }
            Err(e) => {
                errln!("{e}");
                failed.push(port);
            }
        }
    }
    if !failed.is_empty() {
        bail!("could not stop mlx-serve on port(s) {failed:?}");
    }
    Ok(())
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

/// `mlx-serve status`: exit code 3 when nothing runs (LSB init-script convention).
pub fn status_cmd(args: StatusArgs) -> Result<()> {
    let (port, json) = (args.port, args.json);
    let paths = Paths::from_env();
    let servers: Vec<(u16, i32, Option<ServerStatus>)> = match port {
        Some(p) => match probe(&paths, p) {
            Probe::Running { pid, status } => vec![(p, pid, status)],
            _ => Vec::new(),
        },
        None => pidfile::running(&paths),
    };
    if json {
        let list: Vec<serde_json::Value> = servers
            .iter()
            .map(|(port, pid, status)| match status {
                Some(s) => serde_json::to_value(s).unwrap_or_default(),
                None => serde_json::json!({"pid": pid, "port": port, "responding": false}),
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?);
    } else if servers.is_empty() {
        match port {
            Some(p) => outln!("mlx-serve is not running on port {p}"),
            None => outln!("mlx-serve is not running (home {})", paths.home().display()),
        }
    } else {
        for (port, pid, status) in &servers {
            match status {
                Some(s) => {
                    outln!("mlx-serve {} running at {}", s.version, s.url);
                    outln!("  pid      {}", s.pid);
                    outln!("  port     {}", s.port);
                    outln!("  uptime   {}", human_duration(s.uptime_seconds));
                    outln!("  ready    {}", if s.ready { "yes" } else { "no" });
                    let models = if s.loaded_models.is_empty() {
                        "(none loaded)".to_owned()
                    } else {
                        s.loaded_models.join(", ")
                    };
                    outln!("  models   {models}");
                    outln!("  home     {}", s.home.display());
                }
                None => {
                    outln!("mlx-serve on port {port} (pid {pid}) is running but did not answer on its control socket")
                }
            }
        }
    }
    if servers.is_empty() {
        std::process::exit(3);
    }
    Ok(())
}
