//! What every handler shares: the pool, the downloads in flight, the config, and whether
//! the server is ready (false while starting and once shutdown began).

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::resolve::Resolver;
use crate::runner::Pool;
use crate::store::downloads::Downloads;

/// Shared by every handler.
pub struct AppState {
    pub pool: Pool,
    /// Model downloads in flight (`/api/pull`, auto-download).
    pub downloads: Arc<Downloads>,
    pub config: Arc<Config>,
    pub started: Instant,
    /// False until the daemon serves and once shutdown began (`/ready` answers 503 so
    /// load balancers drain us). Shared with the control socket.
    pub ready: Arc<AtomicBool>,
    pub(super) next_request_id: AtomicU64,
}

impl AppState {
    pub fn new(pool: Pool, downloads: Arc<Downloads>, config: Arc<Config>, ready: Arc<AtomicBool>) -> Arc<AppState> {
        Arc::new(AppState { pool, downloads, config, started: Instant::now(), ready, next_request_id: AtomicU64::new(1) })
    }

    /// Model names → pool entries, with auto-download.
    pub fn resolver(&self) -> Resolver<'_> {
        Resolver::new(&self.pool, &self.downloads, &self.config)
    }
}

pub type SharedState = Arc<AppState>;
