//! The server's lifecycle seen from the CLI: PID files, `start` in the background,
//! `stop` and `status`.
//!
//! Layout under `<home>/run/` (0700): `mlx-serve-<port>.pid` (the daemon's pid, written by
//! the daemon once it listens, removed when it exits) and `mlx-serve-<port>.sock` (its
//! control socket, `control.rs`). A PID file whose process is gone, or whose process does
//! not answer on the control socket, is stale and removed by whoever finds it.
//!
//! `start` re-executes this binary as `start --foreground` in a new session (setsid, so
//! closing the terminal does not send it SIGHUP), stdio to `<home>/logs/mlx-serve-<port>.log`,
//! then waits for its PID file and for `GET /ready`. The foreground mode is what launchd,
//! systemd and `brew services` run; it writes the same PID file, so `status`/`stop` see
//! service-run servers too.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, Pid};

use crate::config::{home_dir, Config};
use crate::control::{self, Request, ServerStatus};

/// How long `start` waits for the daemon to answer `/ready`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a status probe waits for the control socket.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Extra time `stop` allows beyond `server.shutdown_timeout_seconds` (workers stopping).
const STOP_MARGIN: Duration = Duration::from_secs(15);

/// `<home>/run`.
pub fn run_dir() -> PathBuf {
    home_dir().join("run")
}

/// `<home>/logs`.
pub fn logs_dir() -> PathBuf {
    home_dir().join("logs")
}

/// Creates `<home>/run` with mode 0700 (it holds the control sockets).
pub fn ensure_run_dir() -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = run_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod {}", dir.display()))?;
    Ok(dir)
}

pub fn pid_file_path(port: u16) -> PathBuf {
    run_dir().join(format!("mlx-serve-{port}.pid"))
}

pub fn control_socket_path(port: u16) -> PathBuf {
    run_dir().join(format!("mlx-serve-{port}.sock"))
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

/// The daemon's PID file; removed on drop if it still names this process.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes `<home>/run/mlx-serve-<port>.pid`. The daemon calls it after binding the
    /// port, so any older file for this port is stale and is replaced.
    pub fn create(port: u16) -> Result<PidFile> {
        ensure_run_dir()?;
        let path = pid_file_path(port);
        let tmp = path.with_extension(format!("pid.{}", std::process::id()));
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write PID file {}", path.display()))?;
        Ok(PidFile { path })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read_pid(&self.path) == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok().filter(|p| *p > 0)
}

/// True while `pid` exists and is not a zombie (an exited child nobody reaped yet).
fn process_alive(pid: i32) -> bool {
    let exists = match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    };
    exists && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    // Linux only; elsewhere launchd reaps orphans promptly.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).is_some_and(|s| s == "Z")
}

/// What a PID file says about a port.
pub enum Probe {
    /// No PID file.
    NotRunning,
    /// The PID file named a process that is gone, or one that is not our server; the
    /// file has been removed.
    Stale { pid: i32 },
    /// Our daemon; `status` is None when it is alive but did not answer in time.
    Running { pid: i32, status: Option<ServerStatus> },
}

/// Checks the server recorded for `port`, removing a stale PID file.
pub fn probe(port: u16) -> Probe {
    let path = pid_file_path(port);
    if !path.exists() {
        return Probe::NotRunning;
    }
    let pid = read_pid(&path).unwrap_or(0);
    let socket = control_socket_path(port);
    if pid > 0 && process_alive(pid) {
        match control::request_at(&socket, &Request::Status, PROBE_TIMEOUT) {
            Ok(v) => {
                let status: Option<ServerStatus> = serde_json::from_value(v).ok();
                if status.as_ref().is_none_or(|s| s.pid as i32 == pid) {
                    return Probe::Running { pid, status };
                }
            }
            // Alive with its socket present: a busy or wedged daemon, not a stranger.
            Err(_) if socket.exists() => return Probe::Running { pid, status: None },
            // Alive without a socket: the pid was reused by another program.
            Err(_) => {}
        }
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&socket);
    Probe::Stale { pid }
}

/// Ports with a PID file in `<home>/run`, ascending.
fn ports_with_pid_files() -> Vec<u16> {
    let mut ports: Vec<u16> = std::fs::read_dir(run_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("mlx-serve-")?.strip_suffix(".pid")?.parse().ok()
        })
        .collect();
    ports.sort_unstable();
    ports
}

/// Running servers (stale PID files are cleaned on the way).
pub fn running() -> Vec<(u16, i32, Option<ServerStatus>)> {
    ports_with_pid_files()
        .into_iter()
        .filter_map(|port| match probe(port) {
            Probe::Running { pid, status } => Some((port, pid, status)),
            _ => None,
        })
        .collect()
}

/// The server a command without `--port` means: the configured port if a server runs
/// there, else the only running server.
pub fn target_port(flag: Option<u16>, config: &Config) -> Result<u16> {
    if let Some(port) = flag {
        return Ok(port);
    }
    let live = running();
    if live.iter().any(|(port, _, _)| *port == config.server.port) {
        return Ok(config.server.port);
    }
    match live.as_slice() {
        [] => bail!("mlx-serve is not running (home {}); start it with `mlx-serve start`", home_dir().display()),
        [(port, _, _)] => Ok(*port),
        many => {
            let ports: Vec<String> = many.iter().map(|(p, _, _)| p.to_string()).collect();
            bail!("several mlx-serve servers are running (ports {}); choose one with --port", ports.join(", "))
        }
    }
}

/// `mlx-serve start` without `--foreground`: starts the daemon detached and waits until
/// it is ready. `forward` are the CLI flags to pass on (the daemon re-reads config and env).
pub fn start_background(config: &Config, forward: &[OsString]) -> Result<()> {
    config.validate()?;
    let port = config.server.port;
    let host = &config.server.host;
    if port != 0 {
        match probe(port) {
            Probe::Running { pid, .. } => bail!(
                "mlx-serve is already running on port {port} (pid {pid}); see `mlx-serve status`, \
                 or stop it with `mlx-serve stop --port {port}`"
            ),
            Probe::Stale { pid } => eprintln!("removed a stale PID file (pid {pid} is no longer an mlx-serve server)"),
            Probe::NotRunning => {}
        }
        check_port_free(host, port)?;
    }
    let logs = logs_dir();
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let log_path = logs.join(format!("mlx-serve-{port}.log"));
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_start = log.seek(SeekFrom::End(0))?;
    let exe = std::env::current_exe().context("cannot find the mlx-serve executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["start", "--foreground"]).args(forward).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log.try_clone()?);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
    }
    let mut child = cmd.spawn().context("cannot start the mlx-serve daemon")?;
    let pid = child.id() as i32;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let _ = log.flush();
            bail!(
                "mlx-serve exited during start-up ({status}). From {}:\n{}",
                log_path.display(),
                log_tail(&log_path, log_start, 20)
            );
        }
        let actual_port = if port != 0 { Some(port) } else { port_of_pid(pid) };
        if let Some(actual) = actual_port.filter(|p| read_pid(&pid_file_path(*p)) == Some(pid)) {
            if http_ready(host, actual) {
                println!("mlx-serve {} is running at {} (pid {pid})", env!("CARGO_PKG_VERSION"), client_url(host, actual));
                println!("logs: {}", log_path.display());
                println!("stop it with: mlx-serve stop --port {actual}");
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "mlx-serve (pid {pid}) is not ready after {} s; it keeps starting in the background. See {}",
                START_TIMEOUT.as_secs(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The port whose PID file names `pid` (for `--port 0`).
fn port_of_pid(pid: i32) -> Option<u16> {
    ports_with_pid_files().into_iter().find(|p| read_pid(&pid_file_path(*p)) == Some(pid))
}

fn check_port_free(host: &str, port: u16) -> Result<()> {
    let addrs: Vec<_> = (host, port).to_socket_addrs().with_context(|| format!("cannot resolve {host}"))?.collect();
    let Some(addr) = addrs.first() else { bail!("no address for {host}") };
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "port {port} on {host} is already in use by another program (no mlx-serve from {} runs there); \
             choose another with --port or MLX_SERVE_PORT",
            home_dir().display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

/// `GET /ready` answered 200 (a minimal HTTP/1.1 exchange: the CLI has no HTTP client).
fn http_ready(host: &str, port: u16) -> bool {
    let url = client_url(host, port);
    let authority = url.trim_start_matches("http://");
    let Some(addr) = authority.to_socket_addrs().ok().and_then(|mut a| a.next()) else { return false };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /ready HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200"
}

/// The last `lines` lines written to `path` after byte `from`.
fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let text = std::fs::read(path).ok().map(|b| String::from_utf8_lossy(&b[(from as usize).min(b.len())..]).into_owned());
    let text = text.unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `mlx-serve stop`.
pub fn stop_command(config: &Config, port: Option<u16>, all: bool, force: bool, timeout: Option<u64>) -> Result<()> {
    let timeout = timeout
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(config.server.shutdown_timeout_seconds) + STOP_MARGIN);
    let ports = if all {
        let ports = ports_with_pid_files();
        if ports.is_empty() {
            println!("no mlx-serve is running (home {})", home_dir().display());
        }
        ports
    } else {
        match target_port(port, config) {
            Ok(p) => vec![p],
            Err(_) => {
                let p = port.unwrap_or(config.server.port);
                vec![p]
            }
        }
    };
    let mut failed = Vec::new();
    for port in ports {
        if let Err(e) = stop_one(port, force, timeout) {
            eprintln!("{e:#}");
            failed.push(port);
        }
    }
    if !failed.is_empty() {
        bail!("could not stop mlx-serve on port(s) {failed:?}");
    }
    Ok(())
}

fn stop_one(port: u16, force: bool, timeout: Duration) -> Result<()> {
    let pid = match probe(port) {
        Probe::NotRunning => {
            println!("mlx-serve is not running on port {port}");
            return Ok(());
        }
        Probe::Stale { pid } => {
            println!("mlx-serve is not running on port {port} (removed a stale PID file for pid {pid})");
            return Ok(());
        }
        Probe::Running { pid, .. } => pid,
    };
    // SIGTERM is the daemon's graceful shutdown: finish accepted requests, stop workers.
    kill(Pid::from_raw(pid), Signal::SIGTERM).with_context(|| format!("cannot signal pid {pid}"))?;
    if wait_for_exit(pid, timeout) {
        cleanup(port, pid);
        println!("stopped mlx-serve on port {port} (pid {pid})");
        return Ok(());
    }
    if !force {
        bail!(
            "mlx-serve on port {port} (pid {pid}) is still running {} s after SIGTERM; \
             `mlx-serve stop --port {port} --force` kills it",
            timeout.as_secs()
        );
    }
    // A daemon started by `mlx-serve start` leads its own process group (setsid), which
    // holds its workers too: kill them together. Otherwise kill the daemon alone.
    if getpgid(Some(Pid::from_raw(pid))).ok() == Some(Pid::from_raw(pid)) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    } else {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if !wait_for_exit(pid, Duration::from_secs(5)) {
        bail!("mlx-serve on port {port} (pid {pid}) survived SIGKILL");
    }
    cleanup(port, pid);
    println!("killed mlx-serve on port {port} (pid {pid}) after {} s", timeout.as_secs());
    Ok(())
}

fn wait_for_exit(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !process_alive(pid)
}

/// Removes what a killed daemon could not (its PID file and socket).
fn cleanup(port: u16, pid: i32) {
    if read_pid(&pid_file_path(port)) == Some(pid) {
        let _ = std::fs::remove_file(pid_file_path(port));
        let _ = std::fs::remove_file(control_socket_path(port));
    }
}

/// `mlx-serve status`: exit code 3 when nothing runs (LSB init-script convention).
pub fn status_command(port: Option<u16>, json: bool) -> Result<()> {
    let servers: Vec<(u16, i32, Option<ServerStatus>)> = match port {
        Some(p) => match probe(p) {
            Probe::Running { pid, status } => vec![(p, pid, status)],
            _ => Vec::new(),
        },
        None => running(),
    };
    if json {
        let list: Vec<serde_json::Value> = servers
            .iter()
            .map(|(port, pid, status)| match status {
                Some(s) => serde_json::to_value(s).unwrap_or_default(),
                None => serde_json::json!({"pid": pid, "port": port, "responding": false}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if servers.is_empty() {
        match port {
            Some(p) => println!("mlx-serve is not running on port {p}"),
            None => println!("mlx-serve is not running (home {})", home_dir().display()),
        }
    } else {
        for (port, pid, status) in &servers {
            match status {
                Some(s) => {
                    println!("mlx-serve {} running at {}", s.version, s.url);
                    println!("  pid      {}", s.pid);
                    println!("  port     {}", s.port);
                    println!("  uptime   {}", human_duration(s.uptime_seconds));
                    println!("  ready    {}", if s.ready { "yes" } else { "no" });
                    let models = if s.loaded_models.is_empty() { "(none loaded)".to_owned() } else { s.loaded_models.join(", ") };
                    println!("  models   {models}");
                    println!("  home     {}", s.home.display());
                }
                None => println!("mlx-serve on port {port} (pid {pid}) is running but did not answer on its control socket"),
            }
        }
    }
    if servers.is_empty() {
        std::process::exit(3);
    }
    Ok(())
}

/// `1h 02m 03s`-style durations for tables.
pub fn human_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// Binary-prefixed sizes (`512.0 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
