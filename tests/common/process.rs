//! The operating system's process table, the same way on Linux and macOS: `sysinfo` reads
//! `/proc` on Linux (as these helpers did by hand before) and libproc on macOS, where there
//! is no `/proc`. Tests use it to see worker processes from outside the server, so what
//! they check does not depend on the server's own report of its workers.

use std::path::PathBuf;

use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};

/// A fresh snapshot: processes only (no Linux threads), with `cmd`/`exe` when asked.
fn snapshot(which: ProcessesToUpdate<'_>, cmd: bool) -> System {
    let mut kind = ProcessRefreshKind::nothing().without_tasks();
    if cmd {
        kind = kind.with_cmd(UpdateKind::Always).with_exe(UpdateKind::Always);
    }
    let mut sys = System::new().expect("process table");
    sys.refresh_processes_specifics(which, true, kind);
    sys
}

/// The kernel keeps a short process name (15 bytes on Linux, 16 on macOS): a name matches
/// when it is a prefix of the full binary name.
fn name_matches(short: &std::ffi::OsStr, full: &str) -> bool {
    let short = short.to_string_lossy();
    !short.is_empty() && full.starts_with(short.as_ref())
}

/// Live (not zombie) children of `parent` whose binary is `name`.
pub fn children(parent: u32, name: &str) -> Vec<u32> {
    let sys = snapshot(ProcessesToUpdate::All, false);
    let mut pids: Vec<u32> = sys
        .processes()
        .values()
        .filter(|p| p.parent() == Some(Pid::from_u32(parent)))
        .filter(|p| p.status() != ProcessStatus::Zombie && name_matches(p.name(), name))
        .map(|p| p.pid().as_u32())
        .collect();
    pids.sort_unstable();
    pids
}

/// True while `pid` exists and is not a zombie (an exited child its parent has not reaped).
pub fn alive(pid: u32) -> bool {
    let sys = snapshot(ProcessesToUpdate::Some(&[Pid::from_u32(pid)]), false);
    sys.process(Pid::from_u32(pid)).is_some_and(|p| p.status() != ProcessStatus::Zombie)
}

pub fn parent_of(pid: u32) -> Option<u32> {
    let sys = snapshot(ProcessesToUpdate::Some(&[Pid::from_u32(pid)]), false);
    sys.process(Pid::from_u32(pid))?.parent().map(Pid::as_u32)
}

/// The executable a process runs (`/proc/<pid>/exe` on Linux).
pub fn exe_of(pid: u32) -> Option<PathBuf> {
    let sys = snapshot(ProcessesToUpdate::Some(&[Pid::from_u32(pid)]), true);
    sys.process(Pid::from_u32(pid))?.exe().map(PathBuf::from)
}

/// Resident memory of a process in bytes (on Linux the `VmRSS` of `/proc/<pid>/status`, read
/// from `statm`; on macOS the task's resident size).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let mut sys = System::new().expect("process table");
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[Pid::from_u32(pid)]),
        true,
        ProcessRefreshKind::nothing().without_tasks().with_memory(),
    );
    sys.process(Pid::from_u32(pid)).map(|p| p.memory())
}

/// A process's arguments, the program first.
pub fn command_line(pid: u32) -> Vec<String> {
    let sys = snapshot(ProcessesToUpdate::Some(&[Pid::from_u32(pid)]), true);
    sys.process(Pid::from_u32(pid))
        .map(|p| p.cmd().iter().map(|a| a.to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// A process stopped with SIGSTOP, continued (SIGCONT) when dropped, also when a test fails
/// half-way. Tests freeze a worker to keep a request in flight for as long as they need,
/// instead of hoping that a sleep is long enough.
pub struct Frozen(pub u32);

impl Frozen {
    pub fn new(pid: u32) -> Frozen {
        crate::server::signal(pid, nix::sys::signal::Signal::SIGSTOP);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        crate::server::signal(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}
