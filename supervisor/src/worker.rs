//! One worker process seen from the supervisor: spawn, handshake, framed I/O, stop.
//!
//! The supervisor listens on a fresh Unix socket (mode 0700 directory), starts
//! `mlx-serve-worker serve --socket S --model DIR`, and waits for the worker to connect,
//! say Hello (protocol version checked) and then Ready or LoadFailed. Afterwards a reader
//! task turns frames into [`WorkerEvent`]s and a writer task sends what the runner queues,
//! so a slow socket never blocks the runner.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use mlx_serve_protocol::{codec, ModelInfo, SupervisorMessage, WorkerMessage, PROTOCOL_VERSION};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How to start workers.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub binary: PathBuf,
    pub compute_dtype: String,
    pub cache_limit_mb: u64,
    pub start_timeout: Duration,
    /// Directory for the worker sockets (short path: Unix socket paths are limited to
    /// ~104 bytes).
    pub socket_dir: PathBuf,
}

/// What the reader task reports.
#[derive(Debug)]
pub enum WorkerEvent {
    Message(WorkerMessage),
    /// The connection ended (process exit, crash, broken frame), with what we know.
    Died(String),
}

/// A running, handshaken worker.
pub struct WorkerProcess {
    pub pid: u32,
    pub info: ModelInfo,
    child: Child,
    outbox: mpsc::UnboundedSender<Vec<u8>>,
    socket_path: PathBuf,
}

/// Locates `mlx-serve-worker`: `MLX_SERVE_WORKER_BIN`, else beside this executable.
pub fn default_worker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MLX_SERVE_WORKER_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("mlx-serve-worker")
}

/// A private directory for sockets: `$TMPDIR/mlx-serve-<uid>` (0700).
pub fn default_socket_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-serve-{}", nix::unistd::getuid()));
    let _ = std::fs::create_dir_all(&dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    dir
}

fn tail_text(tail: &Mutex<VecDeque<String>>) -> String {
    let t = tail.lock().unwrap();
    t.iter().cloned().collect::<Vec<_>>().join("\n")
}

async fn read_frame(mut rx: &Stream) -> Result<Option<WorkerMessage>, String> {
    let mut header = [0u8; codec::HEADER_LEN];
    match rx.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = codec::decode_header(&header).map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; len];
    rx.read_exact(&mut payload).await.map_err(|e| format!("connection cut inside a frame: {e}"))?;
    codec::decode_payload(&payload).map(Some).map_err(|e| e.to_string())
}

static NEXT_SOCKET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl WorkerProcess {
    /// Starts a worker for the model in `model_dir` and waits until it is Ready.
    /// Returns the process and the stream of its events.
    pub async fn start(
        model_name: &str,
        model_dir: &Path,
        opts: &WorkerOptions,
    ) -> Result<(WorkerProcess, mpsc::UnboundedReceiver<WorkerEvent>), String> {
        let n = NEXT_SOCKET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket_path = opts.socket_dir.join(format!("w{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket_path);
        let name = socket_path.as_path().to_fs_name::<GenericFilePath>().map_err(|e| e.to_string())?;
        let listener = ListenerOptions::new()
            .name(name)
            .create_tokio()
            .map_err(|e| format!("cannot listen on {}: {e}", socket_path.display()))?;

        let mut cmd = Command::new(&opts.binary);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&socket_path)
            .arg("--model")
            .arg(model_dir)
            .arg("--compute-dtype")
            .arg(&opts.compute_dtype)
            .arg("--cache-limit-mb")
            .arg(opts.cache_limit_mb.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start worker {}: {e}", opts.binary.display()))?;
        let pid = child.id().unwrap_or(0);

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = stderr_tail.clone();
            let model = model_name.to_owned();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "worker", model = %model, pid, "{line}");
                    let mut t = tail.lock().unwrap();
                    if t.len() == 20 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }

        let handshake = async {
            let stream = tokio::select! {
                s = listener.accept() => s.map_err(|e| format!("accept failed: {e}"))?,
                status = child.wait() => {
                    // Give the stderr reader a moment to collect the reason.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Err(format!("worker exited before connecting ({}): {}",
                        status.map(|s| s.to_string()).unwrap_or_default(), tail_text(&stderr_tail)));
                }
            };
            // `&Stream` reads and writes, so the reader and writer tasks share one Arc.
            let stream = Arc::new(stream);
            match read_frame(&stream).await? {
                Some(WorkerMessage::Hello { protocol_version, .. }) if protocol_version == PROTOCOL_VERSION => {}
                Some(WorkerMessage::Hello { protocol_version, worker_version, .. }) => {
                    return Err(format!(
                        "worker {worker_version} speaks protocol {protocol_version}, this supervisor speaks {PROTOCOL_VERSION}: install matching binaries"
                    ))
                }
                other => return Err(format!("worker did not say Hello: {other:?}")),
            }
            let ready = tokio::select! {
                msg = read_frame(&stream) => msg?,
                _ = child.wait() => None,
            };
            match ready {
                Some(WorkerMessage::Ready(info)) => Ok((info, stream)),
                Some(WorkerMessage::LoadFailed { reason }) => Err(reason),
                Some(other) => Err(format!("unexpected first message from worker: {other:?}")),
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(format!("worker died while loading: {}", tail_text(&stderr_tail)))
                }
            }
        };
        let (info, stream) = match tokio::time::timeout(opts.start_timeout, handshake).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let _ = child.start_kill();
                let _ = std::fs::remove_file(&socket_path);
                return Err(e);
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = std::fs::remove_file(&socket_path);
                return Err(format!("worker did not load the model within {:?}", opts.start_timeout));
            }
        };
        drop(listener);
        let _ = std::fs::remove_file(&socket_path);

        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(reader_task(stream.clone(), events_tx, stderr_tail.clone()));
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_task(stream, outbox_rx));
        Ok((WorkerProcess { pid, info, child, outbox, socket_path }, events_rx))
    }

    /// Queues a message for the worker. Fails only when the writer is gone (worker died;
    /// the reader reports that separately).
    pub fn send(&self, msg: &SupervisorMessage) -> Result<(), String> {
        let frame = codec::encode(msg).map_err(|e| e.to_string())?;
        self.outbox.send(frame).map_err(|_| "worker connection closed".to_owned())
    }

    /// Asks the worker to exit and waits up to `grace`, then kills it.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.send(&SupervisorMessage::Shutdown);
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }

    /// Kills the worker at once (used after it misbehaved).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn reader_task(
    stream: Arc<Stream>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let reason = loop {
        match read_frame(&stream).await {
            Ok(Some(msg)) => {
                if events.send(WorkerEvent::Message(msg)).is_err() {
                    return;
                }
            }
            Ok(None) => break "worker closed the connection".to_owned(),
            Err(e) => break e,
        }
    };
    // Let the stderr reader catch the last words (an MLX abort message, say).
    tokio::time::sleep(Duration::from_millis(30)).await;
    let last = tail_text(&tail);
    let _ = events.send(WorkerEvent::Died(if last.is_empty() { reason } else { format!("{reason}: {last}") }));
}

async fn writer_task(stream: Arc<Stream>, mut outbox: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut tx: &Stream = &stream;
    while let Some(frame) = outbox.recv().await {
        if tx.write_all(&frame).await.is_err() {
            return;
        }
    }
}
