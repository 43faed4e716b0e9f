//! Memory that tracks the work: how many freed MLX buffers the worker keeps between
//! batches, and giving memory back to the OS when it sits idle.
//!
//! GPU backends: MLX keeps freed buffers in a cache for reuse (a fresh buffer costs the
//! driver an allocation; a reused one does not). The useful size of that cache is one
//! batch's working set: the memory a batch allocates on top of the weights.
//! [`MemoryPolicy`] measures it on every batch (MLX's peak minus what was live before) and
//! sets the cache limit to a high-water mark of recent working sets (plus headroom) that
//! decays, so a burst of long batches does not pin its memory after traffic turns short.
//!
//! The CPU backend: MLX caches nothing and the C heap keeps what batches free
//! ([`keep_freed_heap`]). MLX reuses a cached buffer only within two pages of the size asked,
//! and served batches come in every size, so its cache held buffers no later batch could
//! use while every batch took new pages from the kernel; the heap reuses freed blocks of
//! any size (docs/cpu-backend.md, "Fresh pages per batch").
//!
//! `--cache-limit-mb N` (N > 0) fixes MLX's cache limit instead, on either backend.
//!
//! Idle release (after a quiet period, `server.rs`): MLX's cache is emptied (what holds a
//! load's memory afterwards), on CUDA the driver's pools are trimmed (MLX's frees land
//! there, `cuda_driver.rs`) and, on glibc, `malloc_trim(0)` hands back free heap pages that
//! smaller allocations leave below the top of an arena. docs/worker.md, "Memory", has the
//! measurements.

use mlx_rs::memory;

/// Each batch the high-water mark keeps this share of its previous value (the rest is
/// forgotten unless the batch needs it again): after ~45 smaller batches it is a tenth.
const DECAY: f64 = 0.95;

/// Cache limit per byte of working set. A batch's freed buffers can add up to a little more
/// than its peak live memory (buffers of sizes the cache could not reuse): all-MiniLM-L6-v2
/// at 32 × 128 tokens peaks at 96 MiB above the weights, and an unbounded cache holds
/// 102 MiB after it.
const HEADROOM: f64 = 1.25;

/// The limit is applied again only when it moves by more than this share (a setter call
/// is cheap, but it also evicts cached buffers when it shrinks).
const HYSTERESIS: f64 = 0.10;

pub struct MemoryPolicy {
    /// `Some(bytes)`: a fixed cache limit from `--cache-limit-mb`.
    fixed: Option<usize>,
    /// The CPU backend: no MLX cache unless fixed.
    host: bool,
    /// Decaying high-water mark of batch working sets, bytes.
    high_water: f64,
    /// The cache limit last given to MLX.
    applied: usize,
    /// MLX memory live before the current batch (weights and anything cached by design).
    active_before: usize,
    /// Highest MLX peak since start (the per-batch peak is reset to measure a batch).
    peak_since_start: usize,
}

impl MemoryPolicy {
    /// `fixed_bytes` 0 means automatic; `gpu`: the worker computes on a GPU backend.
    pub fn new(fixed_bytes: usize, gpu: bool) -> anyhow::Result<MemoryPolicy> {
        let fixed = (fixed_bytes > 0).then_some(fixed_bytes);
        // Automatic starts with no cache: on a GPU the first batch sizes it.
        let applied = fixed.unwrap_or(0);
        memory::set_cache_limit(applied)?;
        Ok(MemoryPolicy { fixed, host: !gpu, high_water: 0.0, applied, active_before: 0, peak_since_start: 0 })
    }

    /// The cache limit in force, bytes.
    pub fn cache_limit(&self) -> usize {
        self.applied
    }

    pub fn peak_since_start(&self) -> usize {
        self.peak_since_start.max(memory::peak_memory().unwrap_or(0))
    }

    /// Call before running a batch.
    pub fn before_batch(&mut self) {
        self.peak_since_start = self.peak_since_start();
        let _ = memory::reset_peak_memory();
        self.active_before = memory::active_memory().unwrap_or(0);
    }

    /// Call after a batch's results are evaluated: folds its working set into the
    /// high-water mark and moves the cache limit when it changed enough.
    pub fn after_batch(&mut self) {
        let peak = memory::peak_memory().unwrap_or(0);
        self.peak_since_start = self.peak_since_start.max(peak);
        let working_set = peak.saturating_sub(self.active_before) as f64;
        self.high_water = working_set.max(self.high_water * DECAY);
        // CUDA: what MLX frees past its cache limit goes to the driver's pool, which keeps it
        // until trimmed (`cuda_driver.rs`); hold the pool to one working set too.
        crate::cuda_driver::trim_pool_above((self.high_water * HEADROOM) as usize);
        if self.fixed.is_some() || self.host {
            return;
        }
        let want = (self.high_water * HEADROOM) as usize;
        let moved = (want as f64 - self.applied as f64).abs();
        let changed = moved > HYSTERESIS * self.applied as f64 || (self.applied == 0 && want > 0);
        if changed && memory::set_cache_limit(want).is_ok() {
            self.applied = want;
        }
    }

    /// Gives idle memory back: MLX's buffer cache, what CUDA's allocators keep reserved
    /// after MLX freed it (`cuda_driver.rs`), then the C heap's free pages.
    pub fn release_idle(&mut self) {
        let _ = memory::clear_cache();
        crate::cuda_driver::trim();
        trim_heap();
    }
}

/// Keeps freed heap memory for reuse while batches come, instead of giving it back to the OS
/// as soon as it is freed (glibc only; `release_idle` hands it back once the worker is idle).
/// Set for every worker process at start: on a GPU backend it governs host-side
/// allocations only, and what matters there is MLX's buffer cache ([`MemoryPolicy`]).
///
/// By default glibc serves blocks past its dynamic mmap threshold with fresh mappings,
/// trims a heap's top past its trim threshold, and unmaps a thread arena's 64 MiB heap once
/// it is free: every such block comes back as new pages, each faulted in and zeroed by the
/// kernel. Here blocks up to 32 MiB (glibc's largest threshold) stay in one heap (one arena:
/// MLX allocates on its own stream thread) that is never trimmed while batches come, so a
/// batch reuses what the one before it freed (docs/cpu-backend.md, "Fresh pages per batch").
pub fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters, under the allocator's own lock.
    // Called first thing in `main`, before MLX starts its threads (one arena then covers
    // them; OpenBLAS's pool threads, started as the library loads, do not allocate).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns free heap pages to the OS (glibc `malloc_trim`; other C libraries return large
/// frees on their own, and macOS's allocator does not need it).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
