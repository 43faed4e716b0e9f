//! A daemon run in-process for tests: [`run_with`] on a loopback port with the fake worker
//! (`worker/fake.rs`), a home folder of its own carried as [`Paths`] (no environment
//! variable, so tests run in parallel), fixture models linked into its store, and an
//! HTTP/1.1 client written by hand on std sockets (every byte the server sends is seen:
//! status, headers, body). No worker binary and no MLX are involved.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;

use crate::config::{parse_yaml, Config};
use crate::daemon::{run_with, DaemonError};
use crate::paths::Paths;
use crate::worker::fake::FakeLauncher;

/// A fixture model folder under `tests/fixtures/models`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(name)
}

/// An answer read off a socket.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// A running in-process daemon; stopped (gracefully) and its home removed on drop.
pub struct Daemon {
    pub port: u16,
    pub paths: Paths,
    pub fake: FakeLauncher,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), DaemonError>>>,
    runtime: tokio::runtime::Runtime,
}

impl Daemon {
    /// Starts a daemon whose store holds the fixtures `models`, configured by `yaml` (a
    /// config.yaml's text; empty for the defaults). Auto-download is off: nothing leaves
    /// the machine.
    pub fn start(models: &[&str], yaml: &str) -> Daemon {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let home = std::env::temp_dir().join(format!("mlx-serve-inproc-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(home.join("models")).unwrap();
        for m in models {
            link(&fixture(m), &home.join("models").join(m));
        }
        let mut config: Config = parse_yaml(yaml, Path::new("config.yaml")).expect("test config");
        config.models.auto_download = false;
        // No worker binary: the fake stands in for it.
        config.paths = Paths::under(&home, &home.join("no-worker-binary"));
        let paths = config.paths.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = FakeLauncher::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = runtime.spawn(run_with(config, listener, shutdown, Arc::new(fake.clone())));
        // The PID file is written once the daemon serves (a bounded wait for start-up).
        for _ in 0..500 {
            if paths.pid_file(port).exists() || task.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(paths.pid_file(port).exists(), "the in-process daemon did not start");
        Daemon { port, paths, fake, stop: Some(stop), task: Some(task), runtime }
    }

    /// One request on a new connection: `head` is the request line and header lines
    /// without the blank line; `Host` and `Content-Length` are added unless given.
    pub fn request(&self, head: &str, body: &[u8]) -> Answer {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let has = |name: &str| head.lines().any(|l| l.to_ascii_lowercase().starts_with(name));
        let mut msg = head.to_owned();
        if !has("host:") {
            msg.push_str("\r\nHost: 127.0.0.1");
        }
        if !has("content-length:") {
            msg.push_str(&format!("\r\nContent-Length: {}", body.len()));
        }
        msg.push_str("\r\nConnection: close\r\n\r\n");
        let mut bytes = msg.into_bytes();
        bytes.extend_from_slice(body);
        s.write_all(&bytes).expect("send request");
        read_answer(&mut s)
    }

    /// POSTs `body` as JSON with extra header lines; the status and the JSON answer.
    pub fn post_with(&self, path: &str, headers: &[&str], body: &Value) -> (u16, Value) {
        let mut head = format!("POST {path} HTTP/1.1\r\nContent-Type: application/json");
        for h in headers {
            head.push_str("\r\n");
            head.push_str(h);
        }
        let a = self.request(&head, &serde_json::to_vec(body).unwrap());
        (a.status, a.json())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with(path, &[], body)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let a = self.request(&format!("GET {path} HTTP/1.1"), b"");
        (a.status, a.json())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let done = self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await });
            if !std::thread::panicking() {
                done.expect("the daemon stops within 20 s").unwrap().unwrap();
            }
        }
        let _ = std::fs::remove_dir_all(self.paths.home());
    }
}

fn link(from: &Path, to: &Path) {
    std::os::unix::fs::symlink(from.canonicalize().unwrap(), to).unwrap();
}

/// Reads one response to its end (the request asked the server to close).
fn read_answer(s: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read answer");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut answer = Answer { status, head, body: String::new() };
    let mut body = raw[split + 4..].to_vec();
    if answer.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    answer.body = String::from_utf8_lossy(&body).into_owned();
    answer
}

/// The payload of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 4 + size..];
    }
    out
}
