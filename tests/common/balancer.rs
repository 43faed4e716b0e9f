//! A real HAProxy (Debian's package) running deploy/haproxy/haproxy.cfg unchanged, in front
//! of test servers, for tests/load_balancer.rs.
//!
//! Its port is bound safely: the test binds 127.0.0.1:0 itself and hands the listening
//! socket to HAProxy as an inherited file descriptor (`bind "fd@N"`, HAProxy configuration
//! manual section 11), so no other process can take the port between choosing and binding.
//! Its log (`log stdout`, one `option httplog` line per request) and its runtime API (the
//! stats socket, `show stat`) are what the test reads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fixtures::repo_root;

/// The descriptor number HAProxy finds the listening socket at.
const LISTEN_FD: i32 = 200;

pub struct Balancer {
    pub port: u16,
    child: Child,
    stats: PathBuf,
    _dir: tempfile::TempDir,
    /// Every line HAProxy wrote (its request log on stdout, warnings on stderr).
    pub log: Arc<Mutex<Vec<String>>>,
}

/// One server's row of `show stat`.
#[derive(Debug, Clone)]
pub struct ServerStat {
    pub name: String,
    /// "UP", "DOWN", "UP 1/2" (going down), "DOWN 1/2" (going up), "no check", ...
    pub status: String,
    /// Requests in progress on it.
    pub current: u64,
}

/// The `haproxy` binary: on PATH, in Debian's /usr/sbin (not on a user's PATH), or
/// Homebrew's sbin.
pub fn haproxy() -> Option<PathBuf> {
    crate::manifests::on_path("haproxy").or_else(|| {
        ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy", "/opt/homebrew/sbin/haproxy"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

impl Balancer {
    /// Starts `haproxy` with `deploy/haproxy/haproxy.cfg` and `backends` (loopback ports)
    /// as its servers mac1, mac2, mac3.
    pub fn start(haproxy: &Path, backends: &[u16; 3]) -> Balancer {
        let dir = tempfile::Builder::new().prefix("mlx-serve-lb").tempdir().unwrap();
        let stats = dir.path().join("stats.sock");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let raw = listener.as_raw_fd();
        assert_ne!(raw, LISTEN_FD, "the listener already has the number HAProxy expects");
        let mut cmd = Command::new(haproxy);
        cmd.arg("-db")
            .arg("-f")
            .arg(repo_root().join("deploy/haproxy/haproxy.cfg"))
            .env("MLX_SERVE_LB_BIND", format!("fd@{LISTEN_FD}"))
            .env("MLX_SERVE_LB_STATS", &stats)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (i, p) in backends.iter().enumerate() {
            cmd.env(format!("MLX_SERVE_{}", i + 1), format!("127.0.0.1:{p}"));
        }
        // SAFETY: between fork and exec, only dup2 (async-signal-safe) on a descriptor this
        // process owns; the copy (without close-on-exec) is what HAProxy inherits.
        unsafe {
            cmd.pre_exec(move || {
                let fd = nix::unistd::dup2_raw(BorrowedFd::borrow_raw(raw), LISTEN_FD)?;
                std::mem::forget(fd);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start haproxy");
        drop(listener); // HAProxy holds the socket now
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let lb = Balancer { port, child, stats, _dir: dir, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while lb.try_servers().is_none() {
            assert!(Instant::now() < deadline, "haproxy did not start:\n{}", lb.log_text());
            std::thread::sleep(Duration::from_millis(50)); // polling for its stats socket
        }
        lb
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The backend's servers as HAProxy sees them now.
    pub fn servers(&self) -> Vec<ServerStat> {
        self.try_servers().unwrap_or_else(|| panic!("haproxy's stats socket does not answer:\n{}", self.log_text()))
    }

    fn try_servers(&self) -> Option<Vec<ServerStat>> {
        let mut s = UnixStream::connect(&self.stats).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        s.read_to_string(&mut csv).ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, status, scur) = (col("pxname")?, col("svname")?, col("status")?, col("scur")?);
        Some(
            lines
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f.len() > status && f[px] == "mlx_serve" && f[sv].starts_with("mac"))
                .map(|f| ServerStat {
                    name: f[sv].into(),
                    status: f[status].into(),
                    current: f[scur].parse().unwrap_or(0),
                })
                .collect(),
        )
    }

    pub fn server(&self, name: &str) -> ServerStat {
        self.servers().into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no server {name}"))
    }

    /// Waits until `pred` holds for server `name`; panics after `timeout`.
    pub fn wait_for(&self, name: &str, timeout: Duration, pred: impl Fn(&ServerStat) -> bool) -> ServerStat {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.server(name);
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "haproxy server {name} stayed {s:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(5)); // polling HAProxy's runtime API
        }
    }

    /// The request log lines (`option httplog`) parsed.
    pub fn requests(&self) -> Vec<LogLine> {
        self.log.lock().unwrap().iter().filter_map(|l| LogLine::parse(l)).collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `option httplog` line (HAProxy configuration manual 8.2.3):
/// `client [date] frontend backend/server Tq/Tw/Tc/Tr/Ta status bytes - - TERM
/// actconn/feconn/beconn/srv_conn/retries srv_queue/backend_queue {captured headers} "request"`.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub server: String,
    pub status: i64,
    /// The four-letter termination state ("----" for a normal end, "SD--", "SH--", ...).
    pub termination: String,
    /// Retries; HAProxy writes a leading '+' when the request was redispatched.
    pub retries: u32,
    pub redispatched: bool,
    /// The client's X-Request-Id.
    pub request_id: String,
    pub line: String,
}

impl LogLine {
    fn parse(line: &str) -> Option<LogLine> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 13 || !f[1].starts_with('[') || !f[3].contains('/') {
            return None;
        }
        let server = f[3].split_once('/')?.1.to_owned();
        let retries_field = f[10].rsplit('/').next()?;
        let request_id = f.iter().find(|w| w.starts_with('{'))?.trim_matches(|c| c == '{' || c == '}').to_owned();
        Some(LogLine {
            server,
            status: f[5].parse().ok()?,
            termination: f[9].to_owned(),
            retries: retries_field.trim_start_matches('+').parse().ok()?,
            redispatched: retries_field.starts_with('+'),
            request_id,
            line: line.to_owned(),
        })
    }
}
