//! Eviction: giving unified memory back by stopping idle workers.
//!
//! - Before a worker starts, at most `cache.max_embedding_models` /
//!   `cache.max_reranker_models` of its type stay loaded: the least recently used idle
//!   ones are stopped first, preloaded ones last ([`make_room`]).
//! - A sweeper stops workers idle longer than `cache.ttl_seconds`; preloaded ones stay
//!   ([`sweep`]).
//! - With `cache.max_workers_memory_mb` set, the same sweeper stops the least recently used
//!   idle workers while the loaded ones together hold more memory than that, each counted
//!   by what it holds on its accelerator (driver's figure) or else its resident memory
//!   ([`sweep_memory`]): model counts alone do not bound memory when one model's batches
//!   grow it (docs/worker.md, "Memory").
//! - A worker with work queued or in flight is never evicted: it is skipped here, and the
//!   runner refuses an evict while it has work (`RunnerError::Busy`).

use std::time::Duration;

use mlx_serve_protocol::ModelKind;
use tokio::time::Instant;

use super::handle::RunnerHandle;

/// The order in which loaded runners are evicted: least recently used first, preloaded
/// ones after all others.
pub fn eviction_order(runners: &mut [RunnerHandle]) {
    runners.sort_by_key(|r| (r.is_preloaded(), r.last_used()));
}

/// Stops idle workers of `kind` until one more (`starting`) fits under `limit`. Returns
/// how many could not be stopped because they were busy (the limit is then exceeded).
pub async fn make_room(runners: Vec<RunnerHandle>, kind: ModelKind, starting: &str, limit: usize) -> usize {
    let limit = limit.max(1);
    let mut loaded: Vec<RunnerHandle> =
        runners.into_iter().filter(|r| r.kind == kind && r.name != starting && r.is_loaded()).collect();
    if loaded.len() < limit {
        return 0;
    }
    eviction_order(&mut loaded);
    let mut excess = loaded.len() + 1 - limit;
    for r in loaded {
        if excess == 0 {
            break;
        }
        if !r.is_idle() {
            continue;
        }
        if r.evict().await.is_ok() {
            tracing::info!(model = %r.name, reason = "lru", "evicted worker");
            excess -= 1;
        }
    }
    if excess > 0 {
        tracing::warn!(model = starting, "over the {} model limit: the other workers are busy", kind.as_str());
    }
    excess
}

/// One TTL sweep: stops the workers idle for `ttl` or longer (preloaded ones stay).
pub async fn sweep(runners: Vec<RunnerHandle>, ttl: Duration) {
    for r in runners {
        let idle_for = Instant::now().saturating_duration_since(r.last_used());
        if r.is_preloaded() || !r.is_loaded() || !r.is_idle() || idle_for < ttl {
            continue;
        }
        if r.evict().await.is_ok() {
            tracing::info!(model = %r.name, reason = "ttl", idle_seconds = idle_for.as_secs(), "evicted worker");
        }
    }
}

/// One memory sweep: while the loaded workers hold more than `budget` bytes together, stops
/// idle ones in eviction order. Returns the bytes still held.
pub async fn sweep_memory(runners: Vec<RunnerHandle>, budget: u64) -> u64 {
    let mut loaded = Vec::new();
    for r in runners.into_iter().filter(|r| r.is_loaded()) {
        let stats = r.stats_within(super::handle::STATS_WAIT).await;
        let bytes = stats.map(|s| s.device_bytes.unwrap_or(s.rss_bytes)).unwrap_or(0);
        loaded.push((r, bytes));
    }
    let mut held: u64 = loaded.iter().map(|(_, bytes)| bytes).sum();
    loaded.sort_by_key(|(r, _)| (r.is_preloaded(), r.last_used()));
    for (r, bytes) in loaded {
        if held <= budget {
            break;
        }
        if r.is_idle() && r.evict().await.is_ok() {
            tracing::info!(model = %r.name, reason = "memory", bytes, budget, "evicted worker");
            held -= bytes;
        }
    }
    held
}

/// How often the memory sweep runs when `cache.max_workers_memory_mb` is set.
pub const MEMORY_SWEEP_PERIOD: Duration = Duration::from_secs(2);

/// How often the sweeper looks: a quarter of the TTL, between 250 ms and 10 s.
pub fn sweep_period(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(10))
}
