//! The control socket: how `mlx-serve ctl`, `status` and `stop` talk to a running daemon.
//!
//! A Unix socket at `<home>/run/mlx-serve-<port>.sock` (mode 0600 inside a 0700 folder:
//! only the owner can drive the server; there is no other authentication). The protocol
//! is JSON lines: one [`Request`] per line, one [`Response`] line back. The daemon side
//! is a tokio task next to the HTTP listener; the client side is blocking std I/O so the
//! CLI needs no runtime.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::UnixListener;

use crate::api::{inference, SharedState};
use crate::lifecycle;
use crate::pool::ModelEntry;

/// A line a client sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// The server's pid, address, version, uptime and loaded models.
    Status,
    /// One row per model the pool knows.
    Workers,
    /// Start the model's worker now (like `preload`).
    Load { model: String },
    /// Stop the model's worker (refused while it has work queued or in flight).
    Evict { model: String },
    /// Stop and start the model's worker (in-flight work finishes first).
    Restart { model: String },
    /// Stop the model's worker and forget its runner: its files are about to be removed
    /// (`mlx-serve remove`). Answers ok when the model was not in use.
    Forget { model: String },
}

/// The line the daemon answers with: `{"ok": true, "result": …}` or `{"ok": false, "error": …}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `status` reports about a daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    pub pid: u32,
    pub host: String,
    pub port: u16,
    pub url: String,
    pub version: String,
    pub uptime_seconds: u64,
    /// False while starting or shutting down (what `/ready` says).
    pub ready: bool,
    pub home: PathBuf,
    /// Models with a worker process (starting, ready, busy or restarting).
    pub loaded_models: Vec<String>,
}

/// One row of `ctl workers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRow {
    pub model: String,
    /// embedding | reranker
    pub kind: String,
    pub pid: Option<u32>,
    pub state: String,
    pub uptime_seconds: Option<u64>,
    pub restarts: u32,
    /// Inputs waiting in the model's queue.
    pub queued: usize,
    /// Batches sent to the worker and not yet answered.
    pub in_flight: usize,
    pub batches: u64,
    /// Resident memory of the worker process (bytes), when it answered a stats request.
    pub memory_bytes: Option<u64>,
    pub preload: bool,
    pub last_error: Option<String>,
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

/// Binds the control socket for the daemon listening on `addr` and serves it in a task.
pub fn serve(state: SharedState, addr: SocketAddr) -> Result<ControlSocket> {
    let path = lifecycle::control_socket_path(addr.port());
    lifecycle::ensure_run_dir()?;
    // A socket file left by a killed daemon: nothing answers on it (the port was free
    // or we would not be here), so it is safe to replace.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("cannot create control socket {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
    }
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle_connection(state.clone(), addr, stream));
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

async fn handle_connection(state: SharedState, addr: SocketAddr, stream: tokio::net::UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = AsyncBufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                if matches!(request, Request::Status | Request::Workers) {
                    tracing::debug!(target: "control", request = %line.trim(), "control request");
                } else {
                    tracing::info!(target: "control", request = %line.trim(), "control request");
                }
                match handle(&state, addr, request).await {
                    Ok(result) => Response { ok: true, result: Some(result), error: None },
                    Err(e) => Response { ok: false, result: None, error: Some(e) },
                }
            }
            Err(e) => Response { ok: false, result: None, error: Some(format!("bad control request: {e}")) },
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn handle(state: &SharedState, addr: SocketAddr, request: Request) -> Result<serde_json::Value, String> {
    match request {
        Request::Status => {
            let loaded_models = state.pool.entries().iter().filter(|e| e.runner.is_loaded()).map(|e| e.name.clone()).collect();
            let host = addr.ip().to_string();
            let status = ServerStatus {
                pid: std::process::id(),
                url: lifecycle::client_url(&host, addr.port()),
                host,
                port: addr.port(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                uptime_seconds: state.started.elapsed().as_secs(),
                ready: state.ready.load(Ordering::SeqCst),
                home: crate::config::home_dir(),
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
            let entry = inference::resolve(state, &model, None).await.map_err(|e| e.message)?;
            let start = Instant::now();
            entry.runner.load().await?;
            Ok(serde_json::json!({
                "model": entry.name,
                "pid": entry.runner.status.lock().unwrap().pid,
                "seconds": start.elapsed().as_secs_f64(),
            }))
        }
        Request::Evict { model } => {
            let entry = known_entry(state, &model).await?;
            entry.runner.evict().await?;
            tracing::info!(model = %entry.name, reason = "ctl", "evicted worker");
            Ok(serde_json::json!({"model": entry.name}))
        }
        Request::Forget { model } => {
            state.pool.forget(&model).await;
            Ok(serde_json::json!({"model": model}))
        }
        Request::Restart { model } => {
            let entry = known_entry(state, &model).await?;
            let old_pid = entry.runner.status.lock().unwrap().pid;
            entry.runner.restart().await?;
            let pid = entry.runner.status.lock().unwrap().pid;
            Ok(serde_json::json!({"model": entry.name, "old_pid": old_pid, "pid": pid}))
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// A model the pool already runs (by store name or repo id); never downloads.
async fn known_entry(state: &SharedState, model: &str) -> Result<std::sync::Arc<ModelEntry>, String> {
    let entries = state.pool.entries();
    if let Some(e) = entries.iter().find(|e| e.name == model) {
        return Ok(e.clone());
    }
    let installed = state.pool.store().find(model);
    match installed.and_then(|dir| entries.into_iter().find(|e| e.dir == dir)) {
        Some(e) => Ok(e),
        None => Err(format!("model {model} is not loaded (see `mlx-serve ctl workers`)")),
    }
}

async fn worker_row(e: &ModelEntry) -> WorkerRow {
    let loaded = e.runner.is_loaded();
    let memory_bytes = if loaded {
        tokio::time::timeout(Duration::from_secs(1), e.runner.stats()).await.ok().flatten().map(|s| s.rss_bytes)
    } else {
        None
    };
    let s = e.runner.status.lock().unwrap().clone();
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
        memory_bytes: memory_bytes.or(s.worker_stats.filter(|_| loaded).map(|w| w.rss_bytes)),
        preload: e.runner.is_preloaded(),
        last_error: s.last_error,
    }
}

/// Sends one request to the daemon on `port` and returns its result (blocking).
pub fn request(port: u16, request: &Request, timeout: Duration) -> Result<serde_json::Value> {
    request_at(&lifecycle::control_socket_path(port), request, timeout)
}

/// Sends one request over the socket at `path`.
pub fn request_at(path: &Path, request: &Request, timeout: Duration) -> Result<serde_json::Value> {
    let mut stream = StdUnixStream::connect(path)
        .with_context(|| format!("cannot reach the mlx-serve control socket {}", path.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| format!("no answer on {} within {timeout:?}", path.display()))?;
    if answer.is_empty() {
        bail!("the server closed the control socket without answering");
    }
    let response: Response = serde_json::from_str(&answer).context("bad answer on the control socket")?;
    match (response.ok, response.result, response.error) {
        (true, Some(result), _) => Ok(result),
        (_, _, Some(error)) => bail!("{error}"),
        _ => bail!("empty answer on the control socket"),
    }
}

/// `mlx-serve ctl …` on the daemon at `port`: prints a table or a message, or with
/// `json` the daemon's answer as it is.
pub fn ctl_command(port: u16, request: Request, json: bool, timeout: Duration) -> Result<()> {
    let result = self::request(port, &request, timeout)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    match request {
        Request::Workers => {
            let rows: Vec<WorkerRow> = serde_json::from_value(result)?;
            print!("{}", workers_table(&rows));
        }
        Request::Status => println!("{}", serde_json::to_string_pretty(&result)?),
        Request::Load { .. } => println!(
            "loaded {} (worker pid {}) in {:.1} s",
            result["model"].as_str().unwrap_or_default(),
            result["pid"],
            result["seconds"].as_f64().unwrap_or_default()
        ),
        Request::Evict { .. } => println!("evicted {}", result["model"].as_str().unwrap_or_default()),
        Request::Forget { .. } => println!("stopped {}", result["model"].as_str().unwrap_or_default()),
        Request::Restart { .. } => println!(
            "restarted {} (worker pid {} → {})",
            result["model"].as_str().unwrap_or_default(),
            result["old_pid"],
            result["pid"]
        ),
    }
    Ok(())
}

fn workers_table(rows: &[WorkerRow]) -> String {
    let header = ["MODEL", "TYPE", "PID", "STATE", "UPTIME", "RESTARTS", "QUEUE", "BATCHES", "MEMORY"];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let dash = || "-".to_owned();
        table.push(vec![
            if r.preload { format!("{} (preload)", r.model) } else { r.model.clone() },
            r.kind.clone(),
            r.pid.map(|p| p.to_string()).unwrap_or_else(dash),
            r.state.clone(),
            r.uptime_seconds.map(lifecycle::human_duration).unwrap_or_else(dash),
            r.restarts.to_string(),
            r.queued.to_string(),
            r.batches.to_string(),
            r.memory_bytes.map(lifecycle::human_bytes).unwrap_or_else(dash),
        ]);
    }
    let widths: Vec<usize> = (0..header.len()).map(|c| table.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no models used yet: `mlx-serve ctl load MODEL` starts one)\n");
    }
    out
}
