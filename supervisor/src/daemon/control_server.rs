//! The daemon's side of the control socket (`control/` describes the language): a task
//! next to the HTTP listener that answers `status`, `workers`, `load`, `evict`,
//! `restart`, `forget`, `cache-stats` and `cache-clear`. Model names resolve through `resolve/` exactly as in HTTP
//! requests.
//!
//! A connection is bounded like an HTTP one: a request line longer than
//! [`MAX_LINE_BYTES`] or not finished within [`LINE_TIMEOUT`] gets an error answer and
//! the connection is closed, so a stuck or hostile client holds neither memory nor a task.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::DaemonError;
use crate::config::Config;
use crate::control::{client_url, Request, Response, ServerStatus, WorkerRow};
use crate::resolve::{ResolveError, Resolver};
use crate::runner::{ModelEntry, Pool, RunnerError};
use crate::store::downloads::Downloads;

/// The longest request line accepted (requests are a command and a model name).
pub const MAX_LINE_BYTES: usize = 64 << 10;
/// How long a client has to send each request line once connected or answered.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the control socket serves from.
pub struct ControlState {
    pub pool: Pool,
    pub downloads: Arc<Downloads>,
    pub config: Arc<Config>,
    pub addr: SocketAddr,
    pub started: Instant,
    pub ready: Arc<AtomicBool>,
}

/// Why a control request failed; its message is what the client prints.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Runner(#[from] RunnerError),
}

/// Removes the socket file when the daemon stops.
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket for the daemon and serves it in a task.
pub fn serve(state: ControlState) -> Result<ControlSocket, DaemonError> {
    let path = state.config.paths.control_socket(state.addr.port());
    state.config.paths.ensure_run_dir().map_err(|e| DaemonError::io("cannot use the run folder", e))?;
    // A socket file left by a killed daemon: nothing answers on it (the port was free
    // or we would not be here), so it is safe to replace.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| DaemonError::io(format!("cannot create control socket {}", path.display()), e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| DaemonError::io(format!("cannot chmod {}", path.display()), e))?;
    }
    let state = Arc::new(state);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle_connection(state.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(ControlSocket { path })
}

/// Reads one request line within the bounds above: `Ok(None)` at the end of the stream,
/// `Err` with what to tell the client before closing.
async fn read_line(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Result<Option<String>, String> {
    let mut buf = Vec::new();
    let limited = (&mut *reader).take(MAX_LINE_BYTES as u64 + 1);
    tokio::pin!(limited);
    match tokio::time::timeout(LINE_TIMEOUT, limited.read_until(b'\n', &mut buf)).await {
        Err(_) => Err(format!("no complete request line within {} s", LINE_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("cannot read the request: {e}")),
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) if buf.len() > MAX_LINE_BYTES => Err(format!("request line longer than {MAX_LINE_BYTES} bytes")),
        Ok(Ok(_)) => String::from_utf8(buf).map(Some).map_err(|_| "the request is not UTF-8".to_owned()),
    }
}

/// Reads and drops what a refused client is still sending, for a second at most: closing
/// a Unix socket with unread data resets the connection, and the client would lose the
/// answer it has not read yet (an HTTP server's lingering close).
async fn linger(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) {
    let mut sink = [0u8; 16 << 10];
    let drain = async {
        let mut total = 0usize;
        while total < (16 << 20) {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

async fn handle_connection(state: Arc<ControlState>, stream: tokio::net::UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let line = match read_line(&mut reader).await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(why) => {
                tracing::warn!(target: "control", "closing a control connection: {why}");
                let response = Response { ok: false, result: None, error: Some(why) };
                let mut out = serde_json::to_vec(&response).unwrap_or_default();
                out.push(b'\n');
                let _ = tokio::time::timeout(LINE_TIMEOUT, write.write_all(&out)).await;
                let _ = write.shutdown().await;
                linger(&mut reader).await;
                return;
            }
        };
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                if matches!(request, Request::Status | Request::Workers) {
                    tracing::debug!(target: "control", request = %line.trim(), "control request");
                } else {
                    tracing::info!(target: "control", request = %line.trim(), "control request");
                }
                match handle(&state, request).await {
                    Ok(result) => Response { ok: true, result: Some(result), error: None },
                    Err(e) => Response { ok: false, result: None, error: Some(e.to_string()) },
                }
            }
            Err(e) => Response { ok: false, result: None, error: Some(format!("bad control request: {e}")) },
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        // A client that does not read its answer is dropped like one that does not write.
        if !matches!(tokio::time::timeout(LINE_TIMEOUT, write.write_all(&out)).await, Ok(Ok(()))) {
            return;
        }
    }
}

async fn handle(state: &ControlState, request: Request) -> Result<serde_json::Value, Failure> {
    let resolver = Resolver::new(&state.pool, &state.downloads, &state.config);
    match request {
        Request::Status => {
            let loaded_models =
                state.pool.entries().iter().filter(|e| e.runner.is_loaded()).map(|e| e.name.clone()).collect();
            let host = state.addr.ip().to_string();
            let status = ServerStatus {
                pid: std::process::id(),
                url: client_url(&host, state.addr.port()),
                host,
                port: state.addr.port(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                uptime_seconds: state.started.elapsed().as_secs(),
                ready: state.ready.load(Ordering::SeqCst),
                home: state.config.paths.home().to_owned(),
                loaded_models,
            };
            Ok(to_json(&status))
        }
        Request::Workers => {
            let mut rows = Vec::new();
            for e in state.pool.entries() {
                rows.push(worker_row(&e).await);
            }
            Ok(to_json(&rows))
        }
        Request::Load { model } => {
            let entry = resolver.entry(&model, None).await?;
            let start = Instant::now();
            entry.runner.load().await?;
            Ok(serde_json::json!({
                "model": entry.name,
                "pid": entry.runner.status().pid,
                "seconds": start.elapsed().as_secs_f64(),
            }))
        }
        Request::Evict { model, force } => {
            let entry = resolver.known_entry(&model)?;
            if force {
                entry.runner.force_evict().await?;
            } else {
                entry.runner.evict().await?;
            }
            tracing::info!(model = %entry.name, reason = "ctl", force, "evicted worker");
            Ok(serde_json::json!({"model": entry.name}))
        }
        Request::Forget { model } => {
            state.pool.forget(&model).await;
            Ok(serde_json::json!({"model": model}))
        }
        Request::CacheStats => Ok(to_json(&state.pool.vectors().stats())),
        Request::CacheClear => {
            // Clearing the disk tier waits for its writer thread: off the runtime's threads.
            let vectors = state.pool.vectors().clone();
            let before = tokio::task::spawn_blocking(move || vectors.clear()).await.unwrap_or_default();
            let (disk_entries, disk_bytes) = before.disk.as_ref().map_or((0, 0), |d| (d.entries, d.bytes));
            tracing::info!(
                entries = before.entries,
                bytes = before.bytes,
                disk_entries,
                disk_bytes,
                "embedding cache cleared"
            );
            Ok(to_json(&before))
        }
        Request::Restart { model } => {
            let entry = resolver.known_entry(&model)?;
            let old_pid = entry.runner.status().pid;
            entry.runner.restart().await?;
            let pid = entry.runner.status().pid;
            Ok(serde_json::json!({"model": entry.name, "old_pid": old_pid, "pid": pid}))
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

async fn worker_row(e: &ModelEntry) -> WorkerRow {
    let stats = e.runner.stats_within(Duration::from_secs(1)).await;
    let s = e.runner.status();
    WorkerRow {
        model: e.name.clone(),
        kind: e.facts.kind.as_str().to_owned(),
        pid: s.pid,
        state: s.state.as_str().to_owned(),
        uptime_seconds: s.started_at.map(|t| t.elapsed().as_secs()),
        restarts: s.restarts,
        queued: e.runner.queued(),
        in_flight: s.in_flight,
        batches: s.batches,
        memory_bytes: stats.as_ref().map(|w| w.rss_bytes),
        device_memory_bytes: stats.and_then(|w| w.device_bytes),
        preload: e.runner.is_preloaded(),
        last_error: s.last_error,
    }
}
