//! Hands freed heap memory back to the OS once traffic pauses.
//!
//! glibc's malloc keeps what the process frees in its arenas for reuse, returning only the
//! top of each heap. After a burst of large answers (a 2,048-text request's ~15 MB of JSON,
//! token vectors, the tokenizer's encodings), tens of MiB the supervisor no longer uses can
//! stay resident for as long as it runs: `tests/slow_clients.rs` saw 28 MiB at rest, 69 MiB
//! with eight such answers held and 51 MiB after they were freed (33–39 MiB with this). `malloc_trim(0)` releases
//! every free page of every arena, so the trimmer calls it once whenever no request has been
//! in progress for [`QUIET`] after one ended or a connection closed (`api/activity.rs`
//! counts them). Under steady
//! traffic it never runs: the memory is being reused. macOS's allocator and other C
//! libraries than glibc give large frees back on their own, so elsewhere this does nothing.

use std::time::Duration;

use crate::api::activity;

/// How long the server must have had no request in progress before the heap is trimmed.
pub const QUIET: Duration = Duration::from_secs(1);

/// Starts the trimmer on the current tokio runtime, until the handle is aborted (nothing
/// where glibc is not the allocator).
pub fn spawn_trimmer() -> Option<tokio::task::JoinHandle<()>> {
    cfg!(all(target_os = "linux", target_env = "gnu")).then(|| tokio::spawn(trim_when_quiet()))
}

async fn trim_when_quiet() {
    // The end of the last request whose memory was trimmed after.
    let mut trimmed_after = None;
    let mut tick = tokio::time::interval(QUIET / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(ended) = activity::server().ended_at_ms() else { continue };
        let quiet = activity::now_ms().saturating_sub(ended) >= QUIET.as_millis() as u64;
        if quiet && trimmed_after != Some(ended) {
            trimmed_after = Some(ended);
            // It walks every arena, each under its lock: off the async threads.
            let before = resident_mib();
            let _ = tokio::task::spawn_blocking(trim).await;
            tracing::debug!("heap trimmed after traffic: resident {before:.1} -> {:.1} MiB", resident_mib());
        }
    }
}

/// The process's resident memory (Linux: /proc/self/statm), for the log; 0 where unknown.
fn resident_mib() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant of the C library.
    let page = unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) }.max(1) as u64;
    (pages * page) as f64 / (1 << 20) as f64
}

/// Returns every free page of the heap to the OS.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
