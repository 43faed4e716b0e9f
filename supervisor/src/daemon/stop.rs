//! Stopping a daemon: SIGTERM (its graceful shutdown: finish accepted requests, stop
//! workers), wait, and with `--force` SIGKILL to its process group.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, Pid};

use super::pidfile::{probe, process_alive, read_pid, Probe};
use super::DaemonError;
use crate::paths::Paths;

/// What [`stop`] found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    NotRunning,
    /// The PID file named a process that is gone; it was removed.
    Stale {
        pid: i32,
    },
    /// It exited after SIGTERM.
    Stopped {
        pid: i32,
    },
    /// It had to be killed (`force`).
    Killed {
        pid: i32,
    },
}

/// Stops the daemon on `port`, waiting up to `timeout` after SIGTERM; with `force`, kills
/// it (and its workers) when it is still running then.
pub fn stop(paths: &Paths, port: u16, force: bool, timeout: Duration) -> Result<Stopped, DaemonError> {
    let pid = match probe(paths, port) {
        Probe::NotRunning => return Ok(Stopped::NotRunning),
        Probe::Stale { pid } => return Ok(Stopped::Stale { pid }),
        Probe::Running { pid, .. } => pid,
    };
    kill(Pid::from_raw(pid), Signal::SIGTERM)
        .map_err(|e| DaemonError::io(format!("cannot signal pid {pid}"), e.into()))?;
    if wait_for_exit(pid, timeout) {
        cleanup(paths, port, pid);
        return Ok(Stopped::Stopped { pid });
    }
    if !force {
        return Err(DaemonError::Failed(format!(
            "mlx-serve on port {port} (pid {pid}) is still running {} s after SIGTERM; \
             `mlx-serve stop --port {port} --force` kills it",
            timeout.as_secs()
        )));
    }
    // A daemon started by `mlx-serve start` leads its own process group (setsid), which
    // holds its workers too: kill them together. Otherwise kill the daemon alone.
    if getpgid(Some(Pid::from_raw(pid))).ok() == Some(Pid::from_raw(pid)) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    } else {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if !wait_for_exit(pid, Duration::from_secs(5)) {
        return Err(DaemonError::Failed(format!("mlx-serve on port {port} (pid {pid}) survived SIGKILL")));
    }
    cleanup(paths, port, pid);
    Ok(Stopped::Killed { pid })
}

/// Polls until `pid` is gone (it is not our child, so there is nothing to wait on).
fn wait_for_exit(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !process_alive(pid)
}

/// Removes what a killed daemon could not (its PID file and socket).
fn cleanup(paths: &Paths, port: u16, pid: i32) {
    if read_pid(&paths.pid_file(port)) == Some(pid) {
        let _ = std::fs::remove_file(paths.pid_file(port));
        let _ = std::fs::remove_file(paths.control_socket(port));
    }
}
