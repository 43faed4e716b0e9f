//! What every handler shares: the pool, the downloads in flight, the config, and whether
//! the server is ready (false while starting and once shutdown began).

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use super::{ApiKeyCheck, InflightBudget, OriginPolicy};
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
    /// `server.api_key`, when set.
    pub(super) api_key: Option<ApiKeyCheck>,
    /// `limits.max_inflight_request_bytes`.
    pub(super) inflight: InflightBudget,
    /// `server.allowed_hosts`, `server.allowed_origins`.
    pub(super) origins: OriginPolicy,
}

impl AppState {
    pub fn new(pool: Pool, downloads: Arc<Downloads>, config: Arc<Config>, ready: Arc<AtomicBool>) -> Arc<AppState> {
        let api_key = config.server.api_key.as_ref().map(|k| ApiKeyCheck::new(&k.0, config.metrics.require_api_key));
        let inflight = InflightBudget::new(config.limits.max_inflight_request_bytes);
        let origins = OriginPolicy::new(&config.server.allowed_hosts, &config.server.allowed_origins);
        Arc::new(AppState {
            pool,
            downloads,
            config,
            started: Instant::now(),
            ready,
            next_request_id: AtomicU64::new(1),
            api_key,
            inflight,
            origins,
        })
    }

    /// Model names → pool entries, with auto-download.
    pub fn resolver(&self) -> Resolver<'_> {
        Resolver::new(&self.pool, &self.downloads, &self.config)
    }
}

pub type SharedState = Arc<AppState>;
