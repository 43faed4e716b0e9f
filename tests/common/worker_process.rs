//! A real `mlx-serve-worker` process, driven the way the supervisor drives it: the test
//! binds the Unix socket, spawns the worker, and speaks the framed protocol. Every read has
//! a timeout, so a worker that hangs fails the test instead of stalling it.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mlx_serve_protocol::{codec, ModelInfo, SupervisorMessage, TokenBatch, WorkerMessage};

/// The worker binary: env `MLX_SERVE_WORKER_BIN`, else `target/release/mlx-serve-worker`.
pub fn worker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MLX_SERVE_WORKER_BIN") {
        return p.into();
    }
    let p = crate::fixtures::repo_root().join("target/release/mlx-serve-worker");
    assert!(p.exists(), "{} missing: run `cargo build --release -p mlx-serve-worker` first", p.display());
    p
}

/// A private temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "mlx-serve-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The dtype workers and servers of the suite compute in unless a test asks for another:
/// the fixtures' tolerances are float32's, and on Metal (or CUDA) `auto` means half
/// precision. Tests of half precision pass `--compute-dtype` (worker) or set
/// `MLX_SERVE_COMPUTE_DTYPE` (server) themselves.
pub const PINNED_DTYPE: &str = "float32";

/// How long a model may take to load (tiny models: well under a second; MiniLM: ~1 s).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one batch may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Worker {
    child: Child,
    pub conn: UnixStream,
    dir: TempDir,
    next_id: u64,
}

/// What the worker said after Hello.
pub enum Started {
    Ready(Box<Worker>, ModelInfo),
    LoadFailed { reason: String, status: Option<ExitStatus>, stderr: String },
}

impl Worker {
    /// Spawns `mlx-serve-worker serve` for `model` and waits for Ready or LoadFailed. It
    /// computes in float32 unless `extra` names a `--compute-dtype`: the reference fixtures
    /// are float32, and a GPU worker's default is half precision ([`PINNED_DTYPE`]).
    pub fn start(model: &Path, extra: &[&str]) -> Result<Started> {
        let pinned: &[&str] = if extra.contains(&"--compute-dtype") { &[] } else { &["--compute-dtype", PINNED_DTYPE] };
        let dir = TempDir::new("worker")?;
        let sock = dir.path().join("w.sock");
        let listener = UnixListener::bind(&sock)?;
        listener.set_nonblocking(true)?;
        let stderr = std::fs::File::create(dir.path().join("stderr.txt"))?;
        let mut child = Command::new(worker_bin())
            .arg("serve")
            .arg("--socket")
            .arg(&sock)
            .arg("--model")
            .arg(model)
            .args(pinned)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawning the worker")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(st) = child.try_wait()? {
                        bail!("worker exited before connecting ({st}): {}", read_stderr(dir.path()));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        bail!("worker did not connect within 20 s");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(LOAD_TIMEOUT))?;
        let mut w = Worker { child, conn, dir, next_id: 1 };
        match w.recv()? {
            WorkerMessage::Hello { protocol_version, .. } => {
                assert_eq!(protocol_version, mlx_serve_protocol::PROTOCOL_VERSION)
            }
            other => bail!("expected Hello, got {other:?}"),
        }
        match w.recv()? {
            WorkerMessage::Ready(info) => {
                w.conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
                Ok(Started::Ready(Box::new(w), info))
            }
            WorkerMessage::LoadFailed { reason } => {
                let status = w.wait_exit(Duration::from_secs(20));
                let stderr = w.stderr();
                Ok(Started::LoadFailed { reason, status, stderr })
            }
            other => bail!("expected Ready or LoadFailed, got {other:?}"),
        }
    }

    /// Starts a worker that must load.
    pub fn ready(model: &Path, extra: &[&str]) -> Result<(Worker, ModelInfo)> {
        match Worker::start(model, extra)? {
            Started::Ready(w, info) => Ok((*w, info)),
            Started::LoadFailed { reason, .. } => bail!("{} failed to load: {reason}", model.display()),
        }
    }

    pub fn send(&mut self, msg: &SupervisorMessage) -> Result<()> {
        codec::write(&mut self.conn, msg)?;
        Ok(())
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.conn.write_all(bytes)?;
        Ok(())
    }

    pub fn recv(&mut self) -> Result<WorkerMessage> {
        match codec::read::<WorkerMessage, _>(&mut self.conn) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => bail!("worker closed the socket; stderr: {}", self.stderr()),
            Err(e) => bail!("reading from the worker: {e}; stderr: {}", self.stderr()),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends Embed and returns the worker's answer (Embeddings or Error).
    pub fn embed_raw(&mut self, batch: TokenBatch) -> Result<WorkerMessage> {
        let id = self.id();
        self.send(&SupervisorMessage::Embed { id, batch })?;
        let m = self.recv()?;
        check_id(&m, id)?;
        Ok(m)
    }

    pub fn score_raw(&mut self, batch: TokenBatch) -> Result<WorkerMessage> {
        let id = self.id();
        self.send(&SupervisorMessage::Score { id, batch })?;
        let m = self.recv()?;
        check_id(&m, id)?;
        Ok(m)
    }

    /// Embedding rows of a batch.
    pub fn embed(&mut self, batch: TokenBatch) -> Result<Vec<Vec<f32>>> {
        match self.embed_raw(batch)? {
            WorkerMessage::Embeddings { dim, data, .. } => Ok(data.chunks(dim as usize).map(|c| c.to_vec()).collect()),
            other => bail!("expected Embeddings, got {other:?}"),
        }
    }

    pub fn score(&mut self, batch: TokenBatch) -> Result<Vec<f32>> {
        match self.score_raw(batch)? {
            WorkerMessage::Scores { scores, .. } => Ok(scores),
            other => bail!("expected Scores, got {other:?}"),
        }
    }

    pub fn stats(&mut self) -> Result<mlx_serve_protocol::WorkerStats> {
        let id = self.id();
        self.send(&SupervisorMessage::Stats { id })?;
        match self.recv()? {
            WorkerMessage::Stats { stats, id: got } if got == id => Ok(stats),
            other => bail!("expected Stats, got {other:?}"),
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&self) -> String {
        read_stderr(self.dir.path())
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Resident set size of process `pid` in bytes (the OS process table: common/process.rs).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    crate::process::rss_bytes(pid).with_context(|| format!("no process {pid}"))
}

fn read_stderr(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default()
}

fn check_id(m: &WorkerMessage, id: u64) -> Result<()> {
    let got = match m {
        WorkerMessage::Embeddings { id, .. } | WorkerMessage::Scores { id, .. } | WorkerMessage::Error { id, .. } => {
            *id
        }
        other => bail!("unexpected answer {other:?}"),
    };
    anyhow::ensure!(got == id, "answer for request {got}, expected {id}");
    Ok(())
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
