//! Runners: one actor per model that owns its queue and its worker, and the pool that
//! holds them.
//!
//! - `handle.rs`: [`RunnerHandle`], how requests, the pool and the control socket talk to
//!   a runner; the job and error types.
//! - `actor.rs` (+ `actor/lifecycle.rs`): the runner task — events in, batches out,
//!   scatter answers back, start / evict / restart / crash / shutdown of its worker.
//! - `jobs.rs`: the requests being answered and the scatter of rows into them.
//! - `recovery.rs`: crash verdicts (retry, or convict an input in flight during two
//!   crashes) and restart back-off, as pure functions.
//! - `pool.rs`: runners by model, created on first use; `eviction.rs`: TTL and LRU.
//!
//! The runner reaches its worker only through `worker::WorkerLauncher` / `WorkerLink`, so
//! `tests.rs` drives it with a fake worker that hangs, answers slowly or dies on cue.

mod actor;
mod eviction;
mod handle;
mod jobs;
mod pool;
mod recovery;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use crate::batch::Limits;
use crate::worker::WorkerLauncher;

pub use actor::spawn_runner;
pub use handle::{JobError, JobOutput, JobResult, PoolRequest, RunnerError, RunnerHandle, RunnerStatus};
pub use pool::{EntryError, ModelEntry, Pool, PoolConfig};

/// Settings every runner of a daemon shares.
#[derive(Clone)]
pub struct RunnerConfig {
    pub limits: Limits,
    /// `batch.max_wait_ms`: how long a batch may wait to fill while the worker is busy.
    pub max_wait: Duration,
    /// `batch.max_queue_size`: inputs queued per model before requests get 429.
    pub max_queue: usize,
    /// How long a worker may take to exit when asked before it is killed.
    pub stop_grace: Duration,
    pub launcher: Arc<dyn WorkerLauncher>,
}
