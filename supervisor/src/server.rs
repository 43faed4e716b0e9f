//! Runs the daemon in the foreground: config → store → pool → HTTP listeners, then a
//! graceful shutdown on SIGTERM/SIGINT (stop accepting, finish accepted requests, stop
//! workers, exit 0).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::batcher::Limits;
use crate::config::Config;
use crate::pool::Pool;
use crate::runner::RunnerConfig;
use crate::store::Store;
use crate::worker::{default_socket_dir, default_worker_binary, WorkerOptions};

/// Sets up `tracing` from `logging.level` / `logging.format` (RUST_LOG wins when set).
pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.logging.level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if config.logging.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

async fn bind(host: &str, port: u16) -> Result<TcpListener> {
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))?;
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            bail!("port {port} on {host} is already in use (another mlx-serve? `mlx-serve status`)")
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

pub async fn run(config: Config) -> Result<()> {
    config.validate()?;
    let config = Arc::new(config);
    let models_dir = config.models_dir();
    std::fs::create_dir_all(&models_dir).with_context(|| format!("cannot create {}", models_dir.display()))?;
    let worker_bin = default_worker_binary();
    if !worker_bin.is_file() {
        bail!("worker binary {} not found (set MLX_SERVE_WORKER_BIN)", worker_bin.display());
    }
    let runner_cfg = RunnerConfig {
        limits: Limits { max_batch_size: config.batch.max_batch_size, max_batch_tokens: config.batch.max_batch_tokens },
        max_wait: Duration::from_millis(config.batch.max_wait_ms),
        max_queue: config.batch.max_queue_size,
        stop_grace: Duration::from_secs(5),
        worker: WorkerOptions {
            binary: worker_bin,
            compute_dtype: config.models.compute_dtype.clone(),
            cache_limit_mb: config.cache.worker_cache_limit_mb,
            start_timeout: Duration::from_secs(config.limits.worker_start_timeout_seconds),
            socket_dir: default_socket_dir(),
        },
    };
    let listener = bind(&config.server.host, config.server.port).await?;
    let metrics_listener = match (config.metrics.enabled, config.metrics.port) {
        (true, Some(port)) => Some(bind(&config.server.host, port).await?),
        _ => None,
    };
    let pool = Pool::new(Store::new(models_dir), config.clone(), runner_cfg);
    let state = AppState::new(pool.clone(), config.clone());

    // In the background: a preloaded alias or repo id may need a download first.
    for name in config.models.preload.clone() {
        tokio::spawn(api::preload(state.clone(), name));
    }

    if let Some(l) = metrics_listener {
        let app = api::metrics_router(state.clone());
        tokio::spawn(async move { axum::serve(l, app).await });
    }
    let addr = listener.local_addr()?;
    // Control socket first, then the PID file: a PID file means `ctl`/`status` can talk
    // to us. Both are removed when they drop at the end of `run`.
    let _control = crate::control::serve(state.clone(), addr)?;
    let _pid_file = crate::lifecycle::PidFile::create(addr.port())?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "mlx-serve listening on http://{addr}");
    state.ready.store(true, Ordering::SeqCst);
    let shutdown_state = state.clone();
    axum::serve(listener, api::router(state.clone()))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            shutdown_state.ready.store(false, Ordering::SeqCst);
        })
        .await?;
    let grace = Duration::from_secs(config.server.shutdown_timeout_seconds);
    if tokio::time::timeout(grace, pool.shutdown()).await.is_err() {
        tracing::warn!("workers did not stop within {grace:?}");
    }
    tracing::info!("stopped");
    Ok(())
}
