//! The control socket's language: how `mlx-serve ctl`, `status`, `stop` and `remove` talk
//! to a running daemon, and the blocking client they use (`client.rs`).
//!
//! A Unix socket at `<home>/run/mlx-serve-<port>.sock` (mode 0600 inside a 0700 folder:
//! only the owner can drive the server; there is no other authentication). The protocol
//! is JSON lines: one [`Request`] per line, one [`Response`] line back. The daemon side is
//! `daemon/control_server.rs`.

mod client;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::{request, request_at};

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
    /// Stop the model's worker (refused while it has work queued or in flight, unless
    /// `force`: then that work is answered as unavailable).
    Evict {
        model: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// Stop and start the model's worker (in-flight work gets a grace period to finish,
    /// then is retried on the new worker).
    Restart { model: String },
    /// Stop the model's worker and forget its runner: its files are about to be removed
    /// (`mlx-serve remove`). Answers ok when the model was not in use.
    Forget { model: String },
    /// The embedding cache's entries, bytes, budget, hits, misses and evictions.
    #[serde(rename = "cache-stats")]
    CacheStats,
    /// Empty the embedding cache; answers the stats from before.
    #[serde(rename = "cache-clear")]
    CacheClear,
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
    /// Accelerator memory of the worker process as the driver or OS counts it (NVML on
    /// CUDA, the physical footprint on Metal); `None` on the CPU.
    #[serde(default)]
    pub device_memory_bytes: Option<u64>,
    pub preload: bool,
    pub last_error: Option<String>,
}

/// Why a control request got no result.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the mlx-serve control socket {}: {cause}", path.display())]
    Connect { path: PathBuf, cause: std::io::Error },
    #[error("no answer on {} within {timeout:?}: {cause}", path.display())]
    NoAnswer { path: PathBuf, timeout: Duration, cause: std::io::Error },
    #[error("control socket I/O: {0}")]
    Io(std::io::Error),
    #[error("the server closed the control socket without answering")]
    Closed,
    #[error("bad answer on the control socket: {0}")]
    BadAnswer(serde_json::Error),
    /// The daemon answered with an error (`{"ok": false, "error": …}`).
    #[error("{0}")]
    Refused(String),
}

/// The URL a local client uses for a server bound to `host`: a wildcard bind is reached
/// on loopback.
pub fn client_url(host: &str, port: u16) -> String {
    let ip = host.parse::<IpAddr>().ok();
    match ip {
        Some(ip) if ip.is_unspecified() && ip.is_ipv6() => format!("http://[::1]:{port}"),
        Some(ip) if ip.is_unspecified() => format!("http://127.0.0.1:{port}"),
        Some(IpAddr::V6(ip)) => format!("http://[{ip}]:{port}"),
        _ => format!("http://{host}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_reached_on_loopback() {
        assert_eq!(client_url("0.0.0.0", 8000), "http://127.0.0.1:8000");
        assert_eq!(client_url("::", 8000), "http://[::1]:8000");
        assert_eq!(client_url("::1", 1), "http://[::1]:1");
        assert_eq!(client_url("localhost", 2), "http://localhost:2");
    }

    #[test]
    fn requests_are_tagged_json_lines() {
        let line = serde_json::to_string(&Request::Load { model: "m".into() }).unwrap();
        assert_eq!(line, r#"{"cmd":"load","model":"m"}"#);
        assert!(matches!(serde_json::from_str(r#"{"cmd":"workers"}"#).unwrap(), Request::Workers));
    }
}
