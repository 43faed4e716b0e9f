//! A worker process as the runner sees it: something that starts (spawn → handshake →
//! Ready), then takes [`SupervisorMessage`]s and reports [`WorkerEvent`]s until it stops,
//! is killed, or dies.
//!
//! The runner depends only on the two traits here, so its tests drive it with a fake
//! worker that hangs, answers slowly or dies at a chosen moment (`fake.rs`, tests only) —
//! the way ollama's scheduler tests inject a fake runner. The real one is `process.rs`
//! (spawn `mlx-serve-worker`, handshake over a Unix socket) with its framing in `ipc.rs`.
//! The conversation itself is described in `protocol/src/lib.rs` and
//! `docs/architecture.md` ("The worker protocol"). How a worker died, and whether that
//! implicates its inputs, is `death.rs`.

mod death;
#[cfg(test)]
pub mod fake;
mod ipc;
mod process;
mod state;

use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mlx_serve_protocol::{ModelInfo, SupervisorMessage, WorkerMessage};
use tokio::sync::mpsc;

pub use death::{Cause, Death};
pub use process::{ProcessLauncher, WorkerOptions};
pub use state::WorkerState;

/// What a worker reports after the handshake.
#[derive(Debug)]
pub enum WorkerEvent {
    Message(WorkerMessage),
    /// The connection ended (process exit, crash, broken frame), with how the process
    /// ended when it could be learnt.
    Died(Death),
}

/// Why a worker did not become ready. The messages are what `ctl load` and the failed
/// requests report, so they say what to do where they can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The process or its socket could not be created.
    #[error("{0}")]
    Spawn(String),
    /// It exited, hung up or spoke another protocol before saying Ready.
    #[error("{0}")]
    Handshake(String),
    /// It said `LoadFailed` (corrupt weights, unsupported architecture, …).
    #[error("{0}")]
    LoadFailed(String),
    #[error("worker did not load the model within {0:?}")]
    Timeout(Duration),
}

/// A message could not be queued: the worker connection is gone (its reader reports the
/// death separately as [`WorkerEvent::Died`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("worker connection closed")]
pub struct LinkClosed;

/// A started, handshaken worker and the stream of its events.
pub struct Started {
    pub link: Box<dyn WorkerLink>,
    pub events: mpsc::UnboundedReceiver<WorkerEvent>,
}

/// Starts workers. One per daemon (the real one), or a fake in tests.
pub trait WorkerLauncher: Send + Sync + 'static {
    /// Starts a worker for the model `name` in `dir` and resolves once it is Ready.
    fn start(&self, name: &str, dir: &Path) -> BoxFuture<'static, Result<Started, StartError>>;
}

/// The supervisor's end of one running worker.
pub trait WorkerLink: Send + Sync {
    fn pid(&self) -> u32;
    /// What the worker said about its model in Ready.
    fn info(&self) -> &ModelInfo;
    /// True when the process is stopped by a signal (SIGSTOP, SIGTSTP): not computing,
    /// so a batch that takes too long is not its input's doing.
    fn is_stopped(&self) -> bool;
    /// Queues a message; never blocks (a writer task drains the queue).
    fn send(&self, msg: &SupervisorMessage) -> Result<(), LinkClosed>;
    /// Asks the worker to exit, waits up to `grace`, then kills it.
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()>;
    /// Kills the worker at once (after it misbehaved or died).
    fn kill(self: Box<Self>) -> BoxFuture<'static, ()>;
}
