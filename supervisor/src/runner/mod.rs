//! Runners: one actor per model that owns its queue and its worker, and the pool that
//! holds them.
//!
//! - `handle.rs`: [`RunnerHandle`], how requests, the pool and the control socket talk to
//!   a runner; the job and error types.
//! - `actor.rs` (+ `actor/dispatch.rs`, `actor/lifecycle.rs`): the runner task — events
//!   in, batches out, answers scattered back, the watchdog, start / evict / restart /
//!   death / shutdown of its worker.
//! - `jobs.rs`: the requests being answered and the scatter of rows into them.
//! - `recovery.rs`: what a worker's death does to the inputs it held (retry, suspect,
//!   convict, give up), when a batch means the worker hangs, restart back-off; pure
//!   functions.
//! - `cpu_gate.rs`: heavy tokenization and CPU workers' forwards take turns on the cores.
//! - `pool.rs`: runners by model, created on first use; `eviction.rs`: TTL and LRU.
//! - `vector_cache.rs`: the embedding cache (vectors by model and text, LRU under a byte
//!   budget), held by the pool so that forgetting a model drops its vectors;
//!   `disk_cache.rs`: its optional disk tier (one redb file, a writer thread);
//!   `cached_vector.rs`: what both tiers hold.
//!
//! The runner reaches its worker only through `worker::WorkerLauncher` / `WorkerLink`, so
//! `tests/` drives it with a fake worker that hangs, answers slowly, crashes or is killed
//! on cue, on a paused clock.

mod actor;
pub mod cached_vector;
pub mod cpu_gate;
pub mod disk_cache;
mod eviction;
mod handle;
mod jobs;
mod pool;
mod recovery;
#[cfg(test)]
mod tests;
pub mod vector_cache;

use std::sync::Arc;
use std::time::Duration;

use crate::batch::Limits;
use crate::config::Config;
use crate::worker::WorkerLauncher;

pub use actor::spawn_runner;
pub use handle::{
    JobClass, JobError, JobOutput, JobResult, JobTicket, PoolRequest, RunnerError, RunnerHandle, RunnerStatus,
    TokenRows,
};
pub use pool::{EntryError, ModelEntry, Pool, PoolConfig};

/// Settings every runner of a daemon shares.
#[derive(Clone)]
pub struct RunnerConfig {
    /// Batch bounds for a worker on the CPU (`batch.max_batch_size`, `max_batch_tokens`).
    pub limits: Limits,
    /// Batch bounds for a worker on a GPU (`batch.gpu_max_batch_size`, `gpu_max_batch_tokens`),
    /// chosen when the worker reports its device at Ready.
    pub gpu_limits: Limits,
    /// `batch.max_wait_ms`: how long the next batch may wait to fill while the worker is
    /// busy, before its speed is known (`batch/policy.rs`).
    pub max_wait: Duration,
    /// `scheduling.priority_aging_ms`: an input's priority rises one step per this long
    /// waited (`batch/order.rs`).
    pub aging: Duration,
    /// `scheduling.max_batch_ms`: batches are sized from the worker's observed pace to take
    /// at most this long (zero: the token budget alone).
    pub max_batch_time: Duration,
    /// `scheduling.bulk_max_batch_ms`: the same while all queued work is worse than
    /// `default_priority` (zero: `max_batch_time`).
    pub bulk_max_batch_time: Duration,
    /// `scheduling.default_priority`: work worse than this is bulk.
    pub default_priority: i32,
    /// `batch.max_queue_size`: inputs queued per model before requests get 429.
    pub max_queue: usize,
    /// How long a worker may take to exit when asked before it is killed, and how long a
    /// requested restart waits for in-flight work.
    pub stop_grace: Duration,
    /// `limits.hung_worker_seconds`: the watchdog's floor (zero: no watchdog).
    pub hung_after: Duration,
    pub launcher: Arc<dyn WorkerLauncher>,
    /// Where CPU workers' batches take turns with heavy tokenization: the daemon's one
    /// (`CpuGate::global`), or a test's own.
    pub cpu_gate: &'static cpu_gate::CpuGate,
}

impl RunnerConfig {
    /// The runner settings of `config`, starting workers with `launcher`.
    pub fn from_config(config: &Config, launcher: Arc<dyn WorkerLauncher>) -> RunnerConfig {
        RunnerConfig {
            limits: Limits {
                max_batch_size: config.batch.max_batch_size,
                max_batch_tokens: config.batch.max_batch_tokens,
            },
            gpu_limits: Limits {
                max_batch_size: config.batch.gpu_max_batch_size,
                max_batch_tokens: config.batch.gpu_max_batch_tokens,
            },
            max_wait: Duration::from_millis(config.batch.max_wait_ms),
            aging: Duration::from_millis(config.scheduling.priority_aging_ms),
            max_batch_time: Duration::from_millis(config.scheduling.max_batch_ms),
            bulk_max_batch_time: Duration::from_millis(config.scheduling.bulk_max_batch_ms),
            default_priority: config.scheduling.default_priority,
            max_queue: config.batch.max_queue_size,
            stop_grace: Duration::from_secs(5),
            hung_after: Duration::from_secs(config.limits.hung_worker_seconds),
            launcher,
            cpu_gate: cpu_gate::CpuGate::global(),
        }
    }
}
