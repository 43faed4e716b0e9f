//! Running the real `mlx-serve` CLI against a private home folder, for the lifecycle,
//! config, ctl and service tests.
//!
//! [`Home`] is a temp `MLX_SERVE_HOME` (and a temp `HOME`/`XDG_CONFIG_HOME`, so service
//! files never land in the real ones). Dropping it stops every server started from it —
//! `stop --all --force`, then SIGKILL for anything left — so a failing test leaves no
//! daemon behind.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{binary, link_model, model_source, signal};

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// Both streams, for assertion messages.
    pub fn text(&self) -> String {
        format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr)
    }
}

pub struct Home {
    pub dir: tempfile::TempDir,
    /// The user's home for service files (`~/Library/LaunchAgents`, `~/.config/systemd/user`).
    pub user_home: PathBuf,
}

impl Home {
    /// A home with these models (fixture names or "all-MiniLM-L6-v2") in its store.
    pub fn new(models: &[&str]) -> Home {
        let dir = tempfile::Builder::new().prefix("mlx-serve-cli").tempdir().unwrap();
        let store = dir.path().join("models");
        std::fs::create_dir_all(&store).unwrap();
        for m in models {
            link_model(&model_source(m), &store.join(m));
        }
        let user_home = dir.path().join("user");
        std::fs::create_dir_all(&user_home).unwrap();
        Home { dir, user_home }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_file(&self) -> PathBuf {
        self.path().join("config.yaml")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_file(), text).unwrap();
    }

    pub fn pid_file(&self, port: u16) -> PathBuf {
        self.path().join(format!("run/mlx-serve-{port}.pid"))
    }

    /// `mlx-serve ARGS` with this home and no `MLX_SERVE_*` from the test's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("mlx-serve"));
        for (k, _) in std::env::vars() {
            if k.starts_with("MLX_SERVE_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .env("MLX_SERVE_HOME", self.path())
            .env("MLX_SERVE_WORKER_BIN", binary("mlx-serve-worker"))
            .env("HOME", &self.user_home)
            .env("XDG_CONFIG_HOME", self.user_home.join(".config"))
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `mlx-serve ARGS` with extra environment; kills it after `timeout`.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd, timeout)
    }

    /// Runs `mlx-serve ARGS` (60 s limit).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[], Duration::from_secs(60))
    }

    /// Pids named by the PID files in `<home>/run`.
    pub fn recorded_pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(self.path().join("run")) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .collect()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let pids = self.recorded_pids();
        if pids.is_empty() {
            return;
        }
        let _ = self.run_env(&["stop", "--all", "--force", "--timeout", "10"], &[], Duration::from_secs(30));
        for pid in pids.into_iter().filter(|p| process_alive(*p)) {
            // The daemon leads its process group (setsid): take its workers too.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            signal(pid as u32, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// `mlx-serve ARGS` as a one-off command with its own home (`MLX_SERVE_HOME`; no config
/// file, models folder or HF token from the environment) and the built worker; with
/// `hub`, that endpoint (the fake hub) as `HF_ENDPOINT` and an HF cache under the home.
/// Run it with [`run`].
pub fn command(home: &Path, hub: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("mlx-serve"));
    cmd.args(args)
        .env("MLX_SERVE_HOME", home)
        .env("MLX_SERVE_WORKER_BIN", binary("mlx-serve-worker"))
        .env_remove("MLX_SERVE_CONFIG")
        .env_remove("MLX_SERVE_MODELS_DIR")
        .env_remove("HF_TOKEN")
        .stdin(Stdio::null());
    if let Some(endpoint) = hub {
        cmd.env("HF_ENDPOINT", endpoint).env("HF_HOME", home.join("hf"));
    }
    cmd
}

/// Runs a command to completion with a time limit, capturing both streams.
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn mlx-serve");
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20)); // polling interval of a condition wait (bounded by its deadline)
    };
    Output { code: status.code(), stdout: out_thread.join().unwrap(), stderr: err_thread.join().unwrap() }
}

/// What `mlx-serve start` printed about the daemon it started.
#[derive(Debug, Clone)]
pub struct Started {
    pub port: u16,
    pub pid: i32,
    /// The log file it named (`logs: PATH`).
    pub log: PathBuf,
    pub output: String,
}

/// Reads the port, pid and log file from `start`'s output ("running at http://H:PORT (pid
/// N)", "logs: PATH"): with `--port 0` this is how a caller learns the port the OS chose.
pub fn parse_started(out: &Output) -> Started {
    let url = out.stdout.split("running at http://").nth(1).unwrap_or_else(|| panic!("no URL in:\n{}", out.text()));
    let authority = url.split_whitespace().next().unwrap();
    let port = authority.rsplit(':').next().unwrap().parse().unwrap_or_else(|e| panic!("{e}: {}", out.text()));
    let pid = url.split("(pid ").nth(1).and_then(|p| p.split(')').next()).and_then(|p| p.parse().ok());
    let log = out.stdout.lines().find_map(|l| l.strip_prefix("logs: ")).map(PathBuf::from);
    Started {
        port,
        pid: pid.unwrap_or_else(|| panic!("no pid in:\n{}", out.text())),
        log: log.unwrap_or_else(|| panic!("no log path in:\n{}", out.text())),
        output: out.text(),
    }
}

/// A port number to try for a test that must name the port itself (config precedence,
/// port-named files): one the OS handed out a moment ago. Another process can take it
/// before the server binds it, so callers retry on "already in use" ([`retry_on_port_clash`]).
pub fn candidate_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `attempt` with fresh candidate ports until it does not fail on a port another
/// process took in between (the error text says "already in use"); 5 tries.
pub fn retry_on_port_clash<T>(mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..5 {
        match attempt() {
            Ok(v) => return v,
            Err(e) if e.contains("already in use") => last = e,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("five candidate ports were taken before the server bound them:\n{last}")
}

/// True while `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    crate::process::alive(pid as u32)
}

/// Waits until `pid` is gone; false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait (bounded by its deadline)
    }
    false
}
