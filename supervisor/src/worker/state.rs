//! The life of one model's worker, as `ctl workers`, `/api/ps` and the
//! `mlx_serve_worker_state` metric show it. The runner moves it; see
//! `docs/architecture.md` ("Crash recovery") for the transitions.

/// Where a model's worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// No process (never started, or evicted).
    Stopped,
    Starting,
    Ready,
    Busy,
    /// Crashed; waiting out the back-off before the restart.
    Restarting,
    /// Stopping (evict or shutdown).
    Draining,
    /// The last start failed; the next request tries again.
    Failed,
}

impl WorkerState {
    pub const ALL: [WorkerState; 7] = [
        WorkerState::Stopped,
        WorkerState::Starting,
        WorkerState::Ready,
        WorkerState::Busy,
        WorkerState::Restarting,
        WorkerState::Draining,
        WorkerState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Stopped => "stopped",
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Busy => "busy",
            WorkerState::Restarting => "restarting",
            WorkerState::Draining => "draining",
            WorkerState::Failed => "failed",
        }
    }

    /// A process exists or is being started (it holds, or will hold, memory).
    pub fn is_loaded(self) -> bool {
        matches!(self, WorkerState::Starting | WorkerState::Ready | WorkerState::Busy | WorkerState::Restarting)
    }
}
