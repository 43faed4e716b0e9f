//! PID files: how a daemon says it runs, and how commands find running daemons.
//!
//! `<home>/run/mlx-serve-<port>.pid` holds the daemon's pid, written once it listens and
//! its control socket answers, removed when it exits. A PID file whose process is gone,
//! or whose process does not answer on the control socket, is stale and removed by
//! whoever finds it. The foreground mode (what launchd, systemd and `brew services` run)
//! writes the same file, so `status`/`stop` see service-run servers too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::DaemonError;
use crate::config::Config;
use crate::control::{self, Request, ServerStatus};
use crate::paths::Paths;

/// How long a status probe waits for the control socket.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The daemon's PID file; removed on drop if it still names this process.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes `<home>/run/mlx-serve-<port>.pid`. The daemon calls it after binding the
    /// port, so any older file for this port is stale and is replaced.
    pub fn create(paths: &Paths, port: u16) -> Result<PidFile, DaemonError> {
        paths
            .ensure_run_dir()
            .map_err(|e| DaemonError::io(format!("cannot create {}", paths.run_dir().display()), e))?;
        let path = paths.pid_file(port);
        let tmp = path.with_extension(format!("pid.{}", std::process::id()));
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| DaemonError::io(format!("cannot write PID file {}", path.display()), e))?;
        Ok(PidFile { path })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read_pid(&self.path) == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok().filter(|p| *p > 0)
}

/// True while `pid` exists and is not a zombie (an exited child nobody reaped yet).
pub fn process_alive(pid: i32) -> bool {
    let exists = match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    };
    exists && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    // Linux only; elsewhere launchd reaps orphans promptly.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).is_some_and(|s| s == "Z")
}

/// What a PID file says about a port.
pub enum Probe {
    /// No PID file.
    NotRunning,
    /// The PID file named a process that is gone, or one that is not our server; the
    /// file has been removed.
    Stale { pid: i32 },
    /// Our daemon; `status` is None when it is alive but did not answer in time.
    Running { pid: i32, status: Option<ServerStatus> },
}

/// Checks the server recorded for `port`, removing a stale PID file.
pub fn probe(paths: &Paths, port: u16) -> Probe {
    let path = paths.pid_file(port);
    if !path.exists() {
        return Probe::NotRunning;
    }
    let pid = read_pid(&path).unwrap_or(0);
    let socket = paths.control_socket(port);
    if pid > 0 && process_alive(pid) {
        match control::request_at(&socket, &Request::Status, PROBE_TIMEOUT) {
            Ok(v) => {
                let status: Option<ServerStatus> = serde_json::from_value(v).ok();
                if status.as_ref().is_none_or(|s| s.pid as i32 == pid) {
                    return Probe::Running { pid, status };
                }
            }
            // Alive with its socket present: a busy or wedged daemon, not a stranger.
            Err(_) if socket.exists() => return Probe::Running { pid, status: None },
            // Alive without a socket: the pid was reused by another program.
            Err(_) => {}
        }
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&socket);
    Probe::Stale { pid }
}

/// Ports with a PID file in `<home>/run`, ascending.
pub fn ports_with_pid_files(paths: &Paths) -> Vec<u16> {
    let mut ports: Vec<u16> = std::fs::read_dir(paths.run_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("mlx-serve-")?.strip_suffix(".pid")?.parse().ok()
        })
        .collect();
    ports.sort_unstable();
    ports
}

/// Running servers (stale PID files are cleaned on the way).
pub fn running(paths: &Paths) -> Vec<(u16, i32, Option<ServerStatus>)> {
    ports_with_pid_files(paths)
        .into_iter()
        .filter_map(|port| match probe(paths, port) {
            Probe::Running { pid, status } => Some((port, pid, status)),
            _ => None,
        })
        .collect()
}

/// The server a command without `--port` means: the configured port if a server runs
/// there, else the only running server.
pub fn target_port(flag: Option<u16>, config: &Config) -> Result<u16, DaemonError> {
    if let Some(port) = flag {
        return Ok(port);
    }
    let live = running(&config.paths);
    if live.iter().any(|(port, _, _)| *port == config.server.port) {
        return Ok(config.server.port);
    }
    match live.as_slice() {
        [] => Err(DaemonError::Failed(format!(
            "mlx-serve is not running (home {}); start it with `mlx-serve start`",
            config.paths.home().display()
        ))),
        [(port, _, _)] => Ok(*port),
        many => {
            let ports: Vec<String> = many.iter().map(|(p, _, _)| p.to_string()).collect();
            Err(DaemonError::Failed(format!(
                "several mlx-serve servers are running (ports {}); choose one with --port",
                ports.join(", ")
            )))
        }
    }
}

/// The port whose PID file names `pid` (for `--port 0`).
pub fn port_of_pid(paths: &Paths, pid: i32) -> Option<u16> {
    ports_with_pid_files(paths).into_iter().find(|p| read_pid(&paths.pid_file(*p)) == Some(pid))
}
