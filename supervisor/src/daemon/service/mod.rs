//! `mlx-serve service …`: run the server under the OS service manager, as a launchd user
//! agent on macOS (`~/Library/LaunchAgents/com.mlx-serve.server.plist`, from the template
//! in `launchd/`) or a systemd user unit on Linux (`~/.config/systemd/user/mlx-serve.service`).
//! Both run `mlx-serve start --foreground`, so `status`, `stop` and `ctl` work on them.
//!
//! One manager or the other: `brew services` writes its own agent for the same binary
//! (label `homebrew.mxcl.mlx-serve`, systemd `homebrew.mlx-serve`; Homebrew's
//! `Library/Homebrew/service.rb`). Two agents would start two servers on one port, so
//! install/start/enable refuse while Homebrew's file exists.

mod launchd;
mod systemd;
mod units;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::Config;
use crate::daemon::pidfile;
use crate::paths::Paths;

pub use units::render;

/// Why a service action failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(String);

impl From<std::io::Error> for ServiceError {
    fn from(e: std::io::Error) -> Self {
        ServiceError(e.to_string())
    }
}

/// Returns a [`ServiceError`] with a formatted message.
macro_rules! fail {
    ($($arg:tt)*) => { return Err(ServiceError(format!($($arg)*))) };
}
use crate::console::{out, outln};
use fail;

pub const LAUNCHD_LABEL: &str = "com.mlx-serve.server";
pub const SYSTEMD_UNIT: &str = "mlx-serve.service";
const BREW_LAUNCHD_LABEL: &str = "homebrew.mxcl.mlx-serve";
const BREW_SYSTEMD_UNIT: &str = "homebrew.mlx-serve.service";
const PLIST_TEMPLATE: &str = include_str!("../../../../launchd/com.mlx-serve.server.plist");
/// Seconds the manager waits after SIGTERM beyond `server.shutdown_timeout_seconds`
/// before it kills (workers stopping, matches `mlx-serve stop`).
const STOP_MARGIN_SECONDS: u64 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    Launchd,
    Systemd,
}

impl Manager {
    /// This OS's manager.
    pub fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Write the agent/unit (and load/enable it when service.auto_start is true).
    Install,
    /// Stop, unload and remove it.
    Uninstall,
    Start,
    Stop,
    Status,
    /// Start at login.
    Enable,
    /// Do not start at login.
    Disable,
}

/// Where the manager's file goes.
pub fn service_file(manager: Manager, paths: &Paths) -> PathBuf {
    match manager {
        Manager::Launchd => paths.user_home().join("Library/LaunchAgents").join(format!("{LAUNCHD_LABEL}.plist")),
        Manager::Systemd => systemd_user_dir(paths).join(SYSTEMD_UNIT),
    }
}

/// `$XDG_CONFIG_HOME/systemd/user` (default `~/.config/systemd/user`), systemd.unit(5).
fn systemd_user_dir(paths: &Paths) -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| paths.user_home().join(".config"));
    config.join("systemd/user")
}

/// Homebrew's service file for mlx-serve, if `brew services` manages it.
fn brew_service_file(manager: Manager, paths: &Paths) -> Option<PathBuf> {
    let candidates = match manager {
        Manager::Launchd => vec![
            paths.user_home().join("Library/LaunchAgents").join(format!("{BREW_LAUNCHD_LABEL}.plist")),
            PathBuf::from("/Library/LaunchDaemons").join(format!("{BREW_LAUNCHD_LABEL}.plist")),
        ],
        Manager::Systemd => {
            vec![
                systemd_user_dir(paths).join(BREW_SYSTEMD_UNIT),
                PathBuf::from("/etc/systemd/system").join(BREW_SYSTEMD_UNIT),
            ]
        }
    };
    candidates.into_iter().find(|p| p.exists())
}

fn refuse_if_brew_manages(manager: Manager, paths: &Paths) -> Result<(), ServiceError> {
    if let Some(file) = brew_service_file(manager, paths) {
        fail!(
            "mlx-serve is already run by `brew services` ({}). Use one or the other:\n  \
             keep Homebrew's: `brew services start|stop|info mlx-serve`, or\n  \
             switch: `brew services stop mlx-serve` (removes that file), then `mlx-serve service install`",
            file.display()
        );
    }
    Ok(())
}

/// Looks `tool` up on PATH.
fn find_tool(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Runs a manager tool; returns (success, combined output).
fn run_tool(tool: &Path, args: &[&str]) -> Result<(bool, String), ServiceError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| ServiceError(format!("cannot run {}: {e}", tool.display())))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text.trim_end().to_owned()))
}

/// `mlx-serve service ACTION`.
pub fn command(action: Action, manager: Option<Manager>, print: bool, config: &Config) -> Result<(), ServiceError> {
    let manager = manager.unwrap_or_else(Manager::native);
    if print {
        out!("{}", render(manager, config)?);
        return Ok(());
    }
    if matches!(action, Action::Install | Action::Start | Action::Enable) {
        refuse_if_brew_manages(manager, &config.paths)?;
        let port = config.server.port;
        let running = if action == Action::Install { pidfile::running(&config.paths) } else { Vec::new() };
        if let Some((_, pid, _)) = running.into_iter().find(|(p, _, _)| *p == port) {
            outln!(
                "note: mlx-serve (pid {pid}) already serves port {port}; the service cannot bind it \
                 until that one stops (`mlx-serve stop --port {port}`)"
            );
        }
    }
    match manager {
        Manager::Launchd => launchd::launchd(action, config),
        Manager::Systemd => systemd::systemd(action, config),
    }
}

fn write_file(paths: &Paths, path: &Path, text: &str) -> Result<(), ServiceError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ServiceError(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::create_dir_all(paths.logs_dir())?;
    std::fs::write(path, text).map_err(|e| ServiceError(format!("cannot write {}: {e}", path.display())))
}

fn require_installed(path: &Path) -> Result<(), ServiceError> {
    if !path.exists() {
        fail!("the service is not installed ({} is missing): run `mlx-serve service install`", path.display());
    }
    Ok(())
}
fn remove_file(path: &Path) -> Result<(), ServiceError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            outln!("removed {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            outln!("not installed ({} does not exist)", path.display());
            Ok(())
        }
        Err(e) => Err(ServiceError(format!("cannot remove {}: {e}", path.display()))),
    }
}
