//! A real `mlx-serve` daemon for end-to-end tests: its own home folder (MLX_SERVE_HOME) with
//! chosen models linked into `models/`, an optional config.yaml, port 0 (the OS picks a
//! free port; we read the bound address from the "listening on" log line), real workers
//! running MLX. Worker processes are found in the OS process table (common/process.rs),
//! not through the server, so tests see what really runs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixtures::{minilm_dir, model_dir, repo_root};

/// `target/release/<name>`, or `$MLX_SERVE_BIN_DIR/<name>`.
pub fn binary(name: &str) -> PathBuf {
    let dir =
        std::env::var_os("MLX_SERVE_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/release"));
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --release` first (scripts/test does)", path.display());
    path
}

/// Where a test model comes from.
pub fn model_source(name: &str) -> PathBuf {
    if name == "all-MiniLM-L6-v2" {
        minilm_dir().expect("all-MiniLM-L6-v2")
    } else {
        model_dir(name)
    }
}

#[derive(Default)]
pub struct ServerOptions {
    /// Model names linked into the store (fixture names or "all-MiniLM-L6-v2").
    pub models: Vec<&'static str>,
    /// config.yaml contents.
    pub config: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Extra arguments after `start --foreground --port 0`.
    pub args: Vec<String>,
    /// Run `<bin_dir>/mlx-serve` (an installed copy) and let it find its worker beside
    /// itself, instead of the build tree's binaries.
    pub bin_dir: Option<PathBuf>,
    /// Start the daemon with this soft limit on open files (as launchd's 256 on macOS).
    pub open_files_soft_limit: Option<u64>,
}

pub struct Server {
    pub port: u16,
    /// The address the server reported it listens on (`127.0.0.1:PORT`, `[::1]:PORT`).
    pub addr: SocketAddr,
    pub home: tempfile::TempDir,
    child: Option<Child>,
    /// Every line the server wrote to stderr.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(opts: ServerOptions) -> Server {
        Server::try_start(opts).unwrap_or_else(|log| panic!("mlx-serve did not start:\n{log}"))
    }

    /// Starts the server; `Err(log)` when it exits or stays silent for 30 s instead of
    /// listening (for tests that must give it a port of their own and retry on a clash).
    pub fn try_start(opts: ServerOptions) -> Result<Server, String> {
        let home = tempfile::Builder::new().prefix("mlx-serve-test").tempdir().unwrap();
        let models = home.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        for m in &opts.models {
            link_model(&model_source(m), &models.join(m));
        }
        if let Some(cfg) = &opts.config {
            std::fs::write(home.path().join("config.yaml"), cfg).unwrap();
        }
        let mut cmd = match &opts.bin_dir {
            Some(dir) => {
                let mut cmd = Command::new(dir.join("mlx-serve"));
                cmd.env_remove("MLX_SERVE_WORKER_BIN");
                cmd
            }
            None => {
                let mut cmd = Command::new(binary("mlx-serve"));
                cmd.env("MLX_SERVE_WORKER_BIN", binary("mlx-serve-worker"));
                cmd
            }
        };
        cmd.args(["start", "--foreground", "--port", "0"])
            .args(&opts.args)
            .env("MLX_SERVE_HOME", home.path())
            .env_remove("MLX_SERVE_CONFIG")
            .env("RUST_LOG", "info")
            // Hermetic: a bare name nothing local knows is searched for on the Hub; no test
            // reaches the real one (a closed loopback port refuses at once). Tests with a
            // fake hub set HF_ENDPOINT in `env`, which comes after.
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            // float32 as the fixtures (common/worker_process.rs, PINNED_DTYPE); `env` may
            // ask for another.
            .env("MLX_SERVE_COMPUTE_DTYPE", crate::worker_process::PINNED_DTYPE)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(soft) = opts.open_files_soft_limit {
            use nix::sys::resource::{getrlimit, setrlimit, Resource};
            use std::os::unix::process::CommandExt;
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(std::io::Error::from));
            }
        }
        let mut child = cmd.spawn().expect("start mlx-serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split(|c: char| c.is_whitespace() || c == '"').next().unwrap_or("");
                    if let Ok(addr) = addr.parse::<SocketAddr>() {
                        let _ = port_tx.send(addr);
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        // The reader thread drops the sender when stderr closes (the server exited), so a
        // failed start is seen at once; 30 s covers a slow start on a loaded machine.
        let addr = match port_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let text = log.lock().unwrap().join("\n");
                return Err(text);
            }
        };
        Ok(Server { port: addr.port(), addr, home, child: Some(child), log })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// POSTs JSON; returns status and parsed body (Null when not JSON).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        respond(ureq::post(&self.url(path)).timeout(Duration::from_secs(120)).send_json(body))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        respond(ureq::get(&self.url(path)).timeout(Duration::from_secs(60)).call())
    }

    pub fn get_text(&self, path: &str) -> (u16, String) {
        match ureq::get(&self.url(path)).timeout(Duration::from_secs(60)).call() {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(self) -> Option<i32> {
        signal(self.pid(), nix::sys::signal::Signal::SIGTERM);
        self.wait_exit()
    }

    /// Waits (30 s at most) for the server to exit by itself; returns the exit code.
    pub fn wait_exit(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("mlx-serve did not exit within 30 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pids of this server's worker processes (children named mlx-serve-worker).
    pub fn worker_pids(&self) -> Vec<u32> {
        // Serving workers only: a pull also runs `mlx-serve-worker check` (and `quantize`)
        // for a moment.
        child_pids(self.pid(), "mlx-serve-worker")
            .into_iter()
            .filter(|&pid| crate::process::command_line(pid).get(1).is_some_and(|a| a == "serve"))
            .collect()
    }

    /// The worker process serving `model` (its command line names the model's folder).
    pub fn worker_pid_of(&self, model: &str) -> Option<u32> {
        let folder = format!("/models/{model}");
        self.worker_pids()
            .into_iter()
            .find(|&pid| crate::process::command_line(pid).iter().any(|a| a.ends_with(&folder)))
    }

    /// Runs `mlx-serve ARGS` against this server's home (60 s limit).
    pub fn cli(&self, args: &[&str]) -> crate::cli::Output {
        let mut cmd = Command::new(binary("mlx-serve"));
        for (k, _) in std::env::vars() {
            if k.starts_with("MLX_SERVE_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args).env("MLX_SERVE_HOME", self.home.path()).env("RUST_BACKTRACE", "0");
        crate::cli::run(cmd, Duration::from_secs(60))
    }

    /// `mlx-serve ctl workers --json`: the server's own view of its workers.
    pub fn ctl_workers(&self) -> Vec<Value> {
        let out = self.cli(&["ctl", "workers", "--json", "--port", &self.port.to_string()]);
        assert!(out.ok(), "{}", out.text());
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.text()))
    }

    /// The `ctl workers --json` row of `model` (Null when the server does not know it yet).
    pub fn worker_row(&self, model: &str) -> Value {
        self.ctl_workers().into_iter().find(|r| r["model"] == model).unwrap_or(Value::Null)
    }

    /// `model`'s row from `ctl workers --json`: (state, queued inputs, batches in flight).
    pub fn queue_state(&self, model: &str) -> (String, u64, u64) {
        let row = self.worker_row(model);
        (
            row["state"].as_str().unwrap_or("").to_owned(),
            row["queued"].as_u64().unwrap_or(0),
            row["in_flight"].as_u64().unwrap_or(0),
        )
    }

    /// The sum of the /metrics samples `name` whose labels include every `labels` pair.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = self.get_text("/metrics");
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Names of the models with a worker, from `/api/ps`, sorted.
    pub fn loaded_models(&self) -> Vec<String> {
        let (_, ps) = self.get("/api/ps");
        let mut v: Vec<String> =
            ps["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect();
        v.sort();
        v
    }

    /// Polls `cond` every 20 ms until it holds; panics with `what` and the log after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Listed before the kill: once the server is gone they are init's children.
            let workers = child_pids(child.id(), "mlx-serve-worker");
            signal(child.id(), nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            // Workers notice the closed socket and exit; make sure.
            for pid in workers {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn respond(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match r {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.into_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
        Err(e) => panic!("request failed: {e}"),
    }
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Live children of `parent` whose binary is `name` (the OS process table, any platform).
pub fn child_pids(parent: u32, name: &str) -> Vec<u32> {
    crate::process::children(parent, name)
}

/// Links (or copies, where links fail) a model folder into a store.
pub fn link_model(src: &Path, dst: &Path) {
    #[cfg(unix)]
    std::os::unix::fs::symlink(src, dst).unwrap_or_else(|e| panic!("link {} → {}: {e}", src.display(), dst.display()));
}

/// Python from the test venv (scripts/setup), with the real openai and ollama clients.
pub fn python() -> PathBuf {
    std::env::var_os("MLX_SERVE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".deps/venv/bin/python"))
}

/// The test venv's Python with `PYTHONOPTIMIZE` unset, so a developer's setting does not
/// change how the scripts run (their checks hold under `-O` too: tests/clients/check.py).
pub fn python_command() -> Command {
    let mut cmd = Command::new(python());
    cmd.env_remove("PYTHONOPTIMIZE");
    cmd
}

/// Runs a Python client script from tests/clients/ against the server; panics with its
/// output unless it exits 0.
pub fn run_client(script: &str, server: &Server, args: &[&str]) -> String {
    let out = python_command()
        .arg(repo_root().join("tests/clients").join(script))
        .arg(server.url(""))
        .args(args)
        .output()
        .expect("run python client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.log_text());
    stdout
}
