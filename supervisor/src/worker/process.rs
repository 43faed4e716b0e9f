//! The real worker: an `mlx-serve-worker` process on a Unix socket.
//!
//! The supervisor listens on a fresh socket in a private (0700) folder, starts
//! `mlx-serve-worker serve --socket S --model DIR`, and waits for the worker to connect,
//! say Hello (protocol version checked) and then Ready or LoadFailed, all within
//! `limits.worker_start_timeout_seconds`. Afterwards `ipc.rs` moves the frames, a task
//! owns the child process (it reaps it and kills it on request), and the end of the
//! connection is reported as a [`Death`] with the process' exit status (`death.rs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use mlx_serve_protocol::{codec, ModelInfo, SupervisorMessage, WorkerMessage, PROTOCOL_VERSION};
use std::process::ExitStatus;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use tokio::sync::{mpsc, oneshot, watch};

use super::ipc::{read_frame, reader_task, writer_task, StderrTail};
use super::{Cause, Death, LinkClosed, StartError, Started, WorkerEvent, WorkerLauncher, WorkerLink};

/// How to start workers.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub binary: PathBuf,
    pub compute_dtype: String,
    pub cache_limit_mb: u64,
    pub start_timeout: Duration,
    /// Folder for the worker sockets (short path: Unix socket paths are limited to
    /// ~104 bytes).
    pub socket_dir: PathBuf,
}

/// Starts `mlx-serve-worker` processes.
pub struct ProcessLauncher {
    opts: WorkerOptions,
}

impl ProcessLauncher {
    pub fn new(opts: WorkerOptions) -> ProcessLauncher {
        ProcessLauncher { opts }
    }
}

impl WorkerLauncher for ProcessLauncher {
    fn start(&self, name: &str, dir: &Path) -> BoxFuture<'static, Result<Started, StartError>> {
        let (name, dir, opts) = (name.to_owned(), dir.to_owned(), self.opts.clone());
        async move { start(&name, &dir, &opts).await }.boxed()
    }
}

/// A running, handshaken worker process. The child itself belongs to the task `keep`
/// started; dropping this kills it.
struct WorkerProcess {
    pid: u32,
    info: ModelInfo,
    kill: Option<oneshot::Sender<()>>,
    exit: watch::Receiver<Option<ExitStatus>>,
    outbox: mpsc::UnboundedSender<Vec<u8>>,
    socket_path: PathBuf,
}

static NEXT_SOCKET: AtomicU64 = AtomicU64::new(0);

/// Starts a worker for the model in `model_dir` and waits until it is Ready.
async fn start(model_name: &str, model_dir: &Path, opts: &WorkerOptions) -> Result<Started, StartError> {
    let n = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
    let socket_path = opts.socket_dir.join(format!("w{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket_path);
    let name = socket_path.as_path().to_fs_name::<GenericFilePath>().map_err(|e| StartError::Spawn(e.to_string()))?;
    let listener = ListenerOptions::new()
        .name(name)
        .create_tokio()
        .map_err(|e| StartError::Spawn(format!("cannot listen on {}: {e}", socket_path.display())))?;

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
    let mut child =
        cmd.spawn().map_err(|e| StartError::Spawn(format!("cannot start worker {}: {e}", opts.binary.display())))?;
    let pid = child.id().unwrap_or(0);

    let tail = StderrTail::default();
    if let Some(stderr) = child.stderr.take() {
        let tail = tail.clone();
        let model = model_name.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "worker", model = %model, pid, "{line}");
                tail.push(line);
            }
        });
    }

    let handshake = handshake(&listener, &mut child, &tail);
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
            return Err(StartError::Timeout(opts.start_timeout));
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(&socket_path);
    Ok(connect(pid, info, child, stream, tail, socket_path))
}

/// A handshaken worker: its events (frames, then how it died), its outbox, and the task
/// that keeps the process.
fn connect(
    pid: u32,
    info: ModelInfo,
    child: Child,
    stream: Arc<Stream>,
    tail: StderrTail,
    socket_path: PathBuf,
) -> Started {
    let (kill, exit) = keep(child);
    let (events_tx, events) = mpsc::unbounded_channel();
    tokio::spawn(report_events(stream.clone(), events_tx, tail, exit.clone()));
    let (outbox, outbox_rx) = mpsc::unbounded_channel();
    tokio::spawn(writer_task(stream, outbox_rx));
    let link = WorkerProcess { pid, info, kill: Some(kill), exit, outbox, socket_path };
    Started { link: Box::new(link), events }
}

/// How long a worker that closed its connection may take to exit before its death is
/// reported without a status (it is then killed by the runner).
const EXIT_AFTER_HANGUP: Duration = Duration::from_secs(2);

/// Hands the child to a task that reaps it (so its exit status is known: `death.rs`
/// reads it) and kills it when told to, or when the link is dropped.
fn keep(mut child: Child) -> (oneshot::Sender<()>, watch::Receiver<Option<ExitStatus>>) {
    let (kill, kill_rx) = oneshot::channel::<()>();
    let (exit_tx, exit) = watch::channel(None);
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            // Told to, or the link was dropped.
            _ = kill_rx => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        exit_tx.send_replace(status.ok());
    });
    (kill, exit)
}

/// The exit status, once the process has been reaped, waiting at most `within`.
async fn exit_status(exit: &watch::Receiver<Option<ExitStatus>>, within: Duration) -> Option<ExitStatus> {
    let mut exit = exit.clone();
    let status = tokio::time::timeout(within, exit.wait_for(Option::is_some)).await.ok()?.ok()?;
    *status
}

/// Forwards the worker's frames as events; when the connection ends, reports the death
/// with how the process ended and its last stderr lines.
async fn report_events(
    stream: Arc<Stream>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    tail: StderrTail,
    exit: watch::Receiver<Option<ExitStatus>>,
) {
    let Some(reason) = reader_task(stream, &events).await else { return };
    let cause = match exit_status(&exit, EXIT_AFTER_HANGUP).await {
        Some(status) => Cause::from_status(status),
        None => Cause::Unknown,
    };
    // Let the stderr reader catch the last words (an MLX abort message, say). Not a
    // synchronisation: a reason without them is still correct, just less helpful.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let last = tail.text();
    let detail = if last.is_empty() { reason } else { format!("{reason}: {last}") };
    let _ = events.send(WorkerEvent::Died(Death::new(cause, detail)));
}

/// Whether process `pid` is stopped by a signal: state `T` (or `t`, traced) in
/// /proc/PID/stat on Linux (proc(5)), in `ps -o stat=` elsewhere.
fn process_stopped(pid: u32) -> bool {
    let state = if cfg!(target_os = "linux") {
        // "pid (comm) S …": comm may hold spaces and parentheses; the state follows the last ')'.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
    } else {
        std::process::Command::new("ps")
            .args(["-o", "stat=", "-p", &pid.to_string()])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim_start().chars().next())
    };
    matches!(state, Some('T' | 't'))
}

/// Accept → Hello (version checked) → Ready or LoadFailed. A worker that exits first is
/// reported with its last stderr lines.
async fn handshake(
    listener: &interprocess::local_socket::tokio::Listener,
    child: &mut Child,
    tail: &StderrTail,
) -> Result<(ModelInfo, Arc<Stream>), StartError> {
    // The stderr reader runs in its own task; give it a moment to collect the reason. Not
    // a synchronisation: without those lines the error is still right, only shorter.
    let settle = || tokio::time::sleep(Duration::from_millis(50));
    let stream = tokio::select! {
        s = listener.accept() => s.map_err(|e| StartError::Spawn(format!("accept failed: {e}")))?,
        status = child.wait() => {
            settle().await;
            return Err(StartError::Handshake(format!("worker exited before connecting ({}): {}",
                status.map(|s| s.to_string()).unwrap_or_default(), tail.text())));
        }
    };
    // `&Stream` reads and writes, so the reader and writer tasks share one Arc.
    let stream = Arc::new(stream);
    let refuse = StartError::Handshake;
    match read_frame(&stream).await.map_err(|e| refuse(e.to_string()))? {
        Some(WorkerMessage::Hello { protocol_version, .. }) if protocol_version == PROTOCOL_VERSION => {}
        Some(WorkerMessage::Hello { protocol_version, worker_version, .. }) => {
            return Err(refuse(format!(
                "worker {worker_version} speaks protocol {protocol_version}, this supervisor speaks {PROTOCOL_VERSION}: install matching binaries"
            )))
        }
        other => return Err(refuse(format!("worker did not say Hello: {other:?}"))),
    }
    let ready = tokio::select! {
        msg = read_frame(&stream) => msg.map_err(|e| refuse(e.to_string()))?,
        _ = child.wait() => None,
    };
    match ready {
        Some(WorkerMessage::Ready(info)) => Ok((info, stream)),
        Some(WorkerMessage::LoadFailed { reason }) => Err(StartError::LoadFailed(reason)),
        Some(other) => Err(refuse(format!("unexpected first message from worker: {other:?}"))),
        None => {
            settle().await;
            Err(refuse(format!("worker died while loading: {}", tail.text())))
        }
    }
}

impl WorkerLink for WorkerProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn is_stopped(&self) -> bool {
        process_stopped(self.pid)
    }

    fn send(&self, msg: &SupervisorMessage) -> Result<(), LinkClosed> {
        // Encoding our own messages cannot fail short of a bug; it is reported as a closed
        // link, the one failure the runner knows.
        let frame = codec::encode(msg).map_err(|_| LinkClosed)?;
        self.outbox.send(frame).map_err(|_| LinkClosed)
    }

    fn stop(mut self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        async move {
            let _ = self.send(&SupervisorMessage::Shutdown);
            if exit_status(&self.exit, grace).await.is_none() {
                if let Some(kill) = self.kill.take() {
                    let _ = kill.send(());
                }
                // SIGKILL cannot be caught; the wait only bounds a process stuck in the kernel.
                exit_status(&self.exit, grace).await;
            }
            let _ = std::fs::remove_file(&self.socket_path);
        }
        .boxed()
    }

    fn kill(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        async move {
            if let Some(kill) = self.kill.take() {
                let _ = kill.send(());
            }
            exit_status(&self.exit, Duration::from_secs(5)).await;
        }
        .boxed()
    }
}
