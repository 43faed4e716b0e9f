//! How a worker died, and whether that is evidence against the inputs it was computing.
//!
//! The supervisor is the worker's parent: it reaps the process and so learns how it ended
//! (exit code or signal), and it keeps the last lines the worker wrote to stderr. That
//! tells a crash an input can cause from a kill that has nothing to do with the input:
//!
//! - Evidence (counts toward convicting a poison input, `runner/recovery.rs`): a fault
//!   signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS, SIGTRAP), an abort (SIGABRT: MLX's
//!   failed checks and uncaught C++ exceptions end in `std::terminate`), an exit with an
//!   error code (a Rust panic outside the batch guard exits 101, an error from `main` 1),
//!   and a batch that ran far longer than it should while the worker was running (hung on
//!   its input, found by the runner's watchdog).
//! - Not evidence: a kill from outside — SIGKILL (an operator's `kill -9`, Linux's OOM
//!   killer, macOS' jetsam), SIGTERM, SIGINT, SIGHUP, SIGQUIT… — a worker the watchdog
//!   found stopped (SIGSTOP/SIGTSTP from someone else), and the worker's own orderly exits
//!   (0 after Shutdown or end of stream, 3 when the supervisor's stream was broken).
//!
//! When the status cannot be had, the death counts as evidence, as every death did before:
//! wrongly convicting an input costs one request; wrongly acquitting a poison input costs
//! restarts until the retry bound fails it.

use std::fmt;

/// What the runner learns when a worker's connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    pub cause: Cause,
    /// The connection's end and the worker's last stderr lines, for the log (never for
    /// clients: it can hold paths and backtraces).
    pub detail: String,
}

/// How the worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Killed by this signal number.
    Signal(i32),
    /// Exited by itself with this code.
    Exited(i32),
    /// The runner's watchdog killed it: a batch ran far longer than the model's observed
    /// time for its size. `stopped`: the process was stopped (SIGSTOP), not computing.
    Hung { stopped: bool },
    /// The exit status could not be learnt.
    Unknown,
}

/// Exit codes of `mlx-serve-worker` that say it ended in order (`worker/src/server.rs`):
/// 0 after Shutdown or the end of the supervisor's stream, 3 when that stream was broken.
const ORDERLY_EXITS: [i32; 2] = [0, 3];

/// Signals an input can cause: faults and aborts (see signal(7)).
fn is_crash_signal(signal: i32) -> bool {
    use nix::sys::signal::Signal::*;
    [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS, SIGTRAP].iter().any(|s| *s as i32 == signal)
}

impl Cause {
    /// From a reaped process' status.
    pub fn from_status(status: std::process::ExitStatus) -> Cause {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Cause::Exited(code),
            (None, Some(signal)) => Cause::Signal(signal),
            (None, None) => Cause::Unknown,
        }
    }

    /// True when the death may have been caused by what the worker was computing.
    pub fn implicates_input(&self) -> bool {
        match *self {
            Cause::Signal(s) => is_crash_signal(s),
            Cause::Exited(code) => !ORDERLY_EXITS.contains(&code),
            Cause::Hung { stopped } => !stopped,
            Cause::Unknown => true,
        }
    }
}

impl fmt::Display for Cause {
    /// Short and free of internals: this is what a convicted input's error says.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cause::Signal(s) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by {}", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            Cause::Exited(code) => write!(f, "exited with code {code}"),
            Cause::Hung { stopped: false } => f.write_str("hung on a batch"),
            Cause::Hung { stopped: true } => f.write_str("stopped (SIGSTOP) during a batch"),
            Cause::Unknown => f.write_str("connection lost"),
        }
    }
}

impl Death {
    pub fn new(cause: Cause, detail: impl Into<String>) -> Death {
        Death { cause, detail: detail.into() }
    }
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.cause)
        } else {
            write!(f, "{}: {}", self.cause, self.detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn faults_and_aborts_implicate_the_input() {
        for sig in [Signal::SIGSEGV, Signal::SIGABRT, Signal::SIGBUS, Signal::SIGILL, Signal::SIGFPE] {
            assert!(Cause::Signal(sig as i32).implicates_input(), "{sig}");
        }
        assert!(Cause::Exited(101).implicates_input(), "a panic");
        assert!(Cause::Exited(1).implicates_input(), "an error from main");
        assert!(Cause::Hung { stopped: false }.implicates_input());
        assert!(Cause::Unknown.implicates_input());
    }

    #[test]
    fn kills_and_orderly_exits_do_not() {
        for sig in [Signal::SIGKILL, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT] {
            assert!(!Cause::Signal(sig as i32).implicates_input(), "{sig}");
        }
        assert!(!Cause::Exited(0).implicates_input());
        assert!(!Cause::Exited(3).implicates_input());
        assert!(!Cause::Hung { stopped: true }.implicates_input());
    }

    #[test]
    fn read_from_a_wait_status() {
        // Raw wait statuses (wait(2)): a signal in the low 7 bits, an exit code in bits 8–15.
        assert_eq!(Cause::from_status(ExitStatus::from_raw(9)), Cause::Signal(9));
        assert_eq!(Cause::from_status(ExitStatus::from_raw(6 | 0x80)), Cause::Signal(6), "core dumped");
        assert_eq!(Cause::from_status(ExitStatus::from_raw(101 << 8)), Cause::Exited(101));
        assert_eq!(Cause::Signal(9).to_string(), "killed by SIGKILL");
        assert_eq!(Death::new(Cause::Signal(6), "abort").to_string(), "killed by SIGABRT: abort");
    }
}
