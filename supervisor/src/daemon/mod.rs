//! The daemon: everything about running the server as a process.
//!
//! - This file: [`run`] — config → store → pool → HTTP listeners → graceful shutdown
//!   (stop accepting, finish accepted requests, stop workers) — callable in-process with
//!   any listener and shutdown future; [`serve`] is what `start --foreground` runs.
//! - `http.rs`: the HTTP accept loop (header read timeout, connection cap, graceful
//!   shutdown); `write_timeout.rs`: its sockets' write timeout.
//! - `heap.rs`: gives freed heap memory back to the OS when traffic pauses.
//! - `control_server.rs`: the control socket (`ctl`, `status`, `stop`, `remove`).
//! - `logging.rs`: the log and the trace exporter's `tracing` subscriber.
//! - `pidfile.rs`: `<home>/run/mlx-serve-<port>.pid`, and finding running daemons.
//! - `background.rs`: `start` without `--foreground` (re-exec detached, wait for ready).
//! - `stop.rs`: SIGTERM, wait, SIGKILL with `--force`.
//! - `service/`: launchd agent / systemd user unit.

mod background;
mod control_server;
mod heap;
mod http;
mod logging;
mod open_files;
pub mod pidfile;
#[cfg(test)]
mod request_fuzz;
pub mod service;
mod stop;
#[cfg(test)]
mod tests;
mod write_timeout;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::{Config, ConfigError};
use crate::control::ControlError;
use crate::resolve;
use crate::runner::disk_cache::DiskCache;
use crate::runner::{Pool, PoolConfig, RunnerConfig};
use crate::store::downloads::Downloads;
use crate::store::Store;
use crate::worker::{ProcessLauncher, WorkerLauncher, WorkerOptions};

pub use background::{start_background, BackgroundStart};
pub use logging::init_logging;
pub use stop::{stop, Stopped};

/// Why the daemon (or a command about it) failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("{0}")]
    Failed(String),
}

impl DaemonError {
    pub fn io(what: impl Into<String>, cause: std::io::Error) -> DaemonError {
        DaemonError::Io { what: what.into(), cause }
    }
}

/// Opens the embedding cache's disk tier when `embedding_cache.disk_mb` is set (a file
/// another daemon holds is an error: docs/cache.md).
fn open_disk_cache(config: &Config) -> Result<Option<Arc<DiskCache>>, DaemonError> {
    let mb = config.embedding_cache.disk_mb;
    if mb == 0 {
        return Ok(None);
    }
    let path = config.embedding_cache_file();
    DiskCache::open(&path, mb.saturating_mul(1 << 20)).map(Some).map_err(|e| DaemonError::Failed(e.to_string()))
}

/// The least time workers get to stop once the HTTP side has drained.
const WORKER_STOP_GRACE: Duration = Duration::from_secs(5);

/// Says loudly when the server is reachable from other machines without an API key.
fn warn_if_exposed(config: &Config, addr: SocketAddr) {
    if config.server.api_key.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "listening on {} without an API key: anyone who can reach this address can use, pull and delete \
             models; set server.api_key (or MLX_SERVE_API_KEY, --api-key), or bind 127.0.0.1",
            addr.ip()
        );
    }
}

/// Binds `host:port`, saying clearly when the port is taken.
pub async fn bind(host: &str, port: u16) -> Result<TcpListener, DaemonError> {
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| DaemonError::io(format!("cannot resolve {host}"), e))?
        .next()
        .ok_or_else(|| DaemonError::Failed(format!("no address for {host}")))?;
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(DaemonError::Failed(format!(
            "port {port} on {host} is already in use (another mlx-serve? `mlx-serve status`)"
        ))),
        Err(e) => Err(DaemonError::io(format!("cannot listen on {addr}"), e)),
    }
}

/// SIGHUP (a closed terminal, `kill -HUP`, service managers asking for a reload) would end
/// the process at once by default. Nothing is reloaded (the config is read at start); the
/// daemon says so and keeps serving.
fn ignore_hangups() -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| DaemonError::io("cannot handle SIGHUP", e))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP: nothing to reload (the config is read at start: restart to apply changes); still serving"
            );
        }
    });
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed here, before the daemon says
/// it listens: a signal sent as soon as it does (a test, a service manager) starts the
/// graceful drain instead of killing the process with the default action.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| DaemonError::io("cannot handle SIGTERM", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| DaemonError::io("cannot handle SIGINT", e))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// `mlx-serve start --foreground`: binds the configured port and runs until SIGTERM/SIGINT.
pub async fn serve(config: Config) -> Result<(), DaemonError> {
    config.validate()?;
    ignore_hangups()?;
    if let Some((before, after)) = open_files::raise() {
        tracing::debug!(before, after, "open-file limit");
    }
    let shutdown = shutdown_signal()?;
    let listener = bind(&config.server.host, config.server.port).await?;
    run(config, listener, shutdown).await
}

/// Runs the daemon on `listener` with real worker processes until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let binary = config.paths.worker_binary().to_owned();
    if !binary.is_file() {
        return Err(DaemonError::Failed(format!(
            "worker binary {} not found (set MLX_SERVE_WORKER_BIN)",
            binary.display()
        )));
    }
    let launcher = ProcessLauncher::new(WorkerOptions {
        binary,
        compute_dtype: config.models.compute_dtype.clone(),
        cache_limit_mb: config.cache.worker_cache_limit_mb,
        start_timeout: Duration::from_secs(config.limits.worker_start_timeout_seconds),
        socket_dir: config
            .paths
            .ensure_run_dir()
            .map_err(|e| DaemonError::Failed(format!("worker socket folder: {e}")))?,
    });
    run_with(config, listener, shutdown, Arc::new(launcher)).await
}

/// [`run`] with any way of starting workers.
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    launcher: Arc<dyn WorkerLauncher>,
) -> Result<(), DaemonError> {
    config.validate()?;
    let config = Arc::new(config);
    let models_dir = config.models_dir();
    std::fs::create_dir_all(&models_dir)
        .map_err(|e| DaemonError::io(format!("cannot create {}", models_dir.display()), e))?;
    let runner_cfg = RunnerConfig::from_config(&config, launcher);
    let metrics_listener = match (config.metrics.enabled, config.metrics.port) {
        (true, Some(port)) => Some(bind(&config.server.host, port).await?),
        _ => None,
    };
    let store = Store::new(models_dir);
    let pool_cfg = PoolConfig {
        cache: config.cache.clone(),
        preload: config.models.preload.clone(),
        vector_cache_bytes: (config.embedding_cache.memory_mb as usize).saturating_mul(1 << 20),
        vector_disk: open_disk_cache(&config)?,
    };
    let pool = Pool::new(store.clone(), pool_cfg, runner_cfg);
    let downloads = Arc::new(Downloads::new(store));
    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState::new(pool.clone(), downloads.clone(), config.clone(), ready.clone());

    // In the background: a preloaded alias or repo id may need a download first.
    for name in config.models.preload.clone() {
        tokio::spawn(resolve::preload(pool.clone(), downloads.clone(), config.clone(), name));
    }
    let limits = http::ConnectionLimits {
        header_read_timeout: Duration::from_secs(config.server.header_read_timeout_seconds),
        max_connections: config.server.max_connections,
        drain: Duration::from_secs(config.server.shutdown_timeout_seconds),
        write_timeout: Duration::from_secs(config.server.write_timeout_seconds),
    };
    if let Some(l) = metrics_listener {
        let app = api::metrics_router(state.clone());
        tokio::spawn(http::serve(l, app, limits, std::future::pending()));
    }
    let addr = listener.local_addr().map_err(|e| DaemonError::io("cannot read the listening address", e))?;
    warn_if_exposed(&config, addr);
    // Control socket first, then the PID file: a PID file means `ctl`/`status` can talk
    // to us. Both are removed when they drop at the end of `run`.
    let control = control_server::ControlState {
        pool: pool.clone(),
        downloads,
        config: config.clone(),
        addr,
        started: Instant::now(),
        ready: ready.clone(),
    };
    let _control = control_server::serve(control)?;
    let _pid_file = pidfile::PidFile::create(&config.paths, addr.port())?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "mlx-serve listening on http://{addr}");
    ready.store(true, Ordering::SeqCst);
    let trimmer = heap::spawn_trimmer();
    let stopping = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let stopping_at = stopping.clone();
    http::serve(listener, api::router(state), limits, async move {
        shutdown.await;
        *stopping_at.lock().unwrap() = Some(Instant::now());
        ready.store(false, Ordering::SeqCst);
    })
    .await;
    if let Some(t) = trimmer {
        t.abort();
    }
    // Workers get what is left of server.shutdown_timeout_seconds, and at least
    // WORKER_STOP_GRACE, so `mlx-serve stop` (which waits the timeout plus a margin)
    // sees the daemon gone.
    let began = stopping.lock().unwrap().unwrap_or_else(Instant::now);
    let grace = limits.drain.saturating_sub(began.elapsed()).max(WORKER_STOP_GRACE);
    if tokio::time::timeout(grace, pool.shutdown()).await.is_err() {
        tracing::warn!("workers did not stop within {grace:?}");
    }
    // The spans of the last requests are still queued for export.
    let _ = tokio::task::spawn_blocking(crate::telemetry::flush).await;
    tracing::info!("stopped");
    Ok(())
}
