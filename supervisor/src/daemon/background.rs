//! `mlx-serve start` without `--foreground`: re-executes this binary as `start
//! --foreground` in a new session (setsid, so closing the terminal does not send it
//! SIGHUP), stdio to `<home>/logs/mlx-serve-<port>.log`, then waits for its PID file and
//! for `GET /ready`.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::pidfile::{port_of_pid, probe, read_pid, Probe};
use super::DaemonError;
use crate::config::Config;
use crate::control::client_url;

/// How long `start` waits for the daemon to answer `/ready`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A daemon started in the background and ready.
pub struct BackgroundStart {
    pub pid: i32,
    pub port: u16,
    pub url: String,
    pub log_path: PathBuf,
    /// A stale PID file for the port was removed first (pid it named).
    pub removed_stale: Option<i32>,
}

/// Starts the daemon detached and waits until it is ready. `forward` are the CLI flags to
/// pass on (the daemon re-reads config and environment), `env` variables to add (secrets,
/// which must not show on its command line).
pub fn start_background(
    config: &Config,
    forward: &[OsString],
    env: &[(OsString, OsString)],
) -> Result<BackgroundStart, DaemonError> {
    config.validate()?;
    let port = config.server.port;
    let host = &config.server.host;
    let mut removed_stale = None;
    if port != 0 {
        match probe(&config.paths, port) {
            Probe::Running { pid, .. } => {
                return Err(DaemonError::Failed(format!(
                    "mlx-serve is already running on port {port} (pid {pid}); see `mlx-serve status`, \
                     or stop it with `mlx-serve stop --port {port}`"
                )))
            }
            Probe::Stale { pid } => removed_stale = Some(pid),
            Probe::NotRunning => {}
        }
        check_port_free(config, port)?;
    }
    let paths = &config.paths;
    let logs = paths.logs_dir();
    std::fs::create_dir_all(&logs).map_err(|e| DaemonError::io(format!("cannot create {}", logs.display()), e))?;
    let log_path = paths.daemon_log(port);
    let open_error = |e| DaemonError::io(format!("cannot open {}", log_path.display()), e);
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(open_error)?;
    let log_start = log.seek(SeekFrom::End(0)).map_err(open_error)?;
    let exe = std::env::current_exe().map_err(|e| DaemonError::io("cannot find the mlx-serve executable", e))?;
    let mut cmd = Command::new(exe);
    let (out, err) = (log.try_clone().map_err(open_error)?, log.try_clone().map_err(open_error)?);
    cmd.args(["start", "--foreground"])
        .args(forward)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
    }
    let mut child = cmd.spawn().map_err(|e| DaemonError::io("cannot start the mlx-serve daemon", e))?;
    let pid = child.id() as i32;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| DaemonError::io("cannot wait for the daemon", e))? {
            let _ = log.flush();
            return Err(DaemonError::Failed(format!(
                "mlx-serve exited during start-up ({status}). From {}:\n{}",
                log_path.display(),
                log_tail(&log_path, log_start, 20)
            )));
        }
        let actual_port = if port != 0 { Some(port) } else { port_of_pid(paths, pid) };
        if let Some(actual) = actual_port.filter(|p| read_pid(&paths.pid_file(*p)) == Some(pid)) {
            if http_ready(host, actual) {
                let url = client_url(host, actual);
                return Ok(BackgroundStart { pid, port: actual, url, log_path, removed_stale });
            }
        }
        if Instant::now() > deadline {
            return Err(DaemonError::Failed(format!(
                "mlx-serve (pid {pid}) is not ready after {} s; it keeps starting in the background. See {}",
                START_TIMEOUT.as_secs(),
                log_path.display()
            )));
        }
        // Polling a child we do not otherwise hear from; each round checks exit, PID file
        // and /ready, so the delay only bounds how soon we notice.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_port_free(config: &Config, port: u16) -> Result<(), DaemonError> {
    let host = config.server.host.as_str();
    let addrs: Vec<_> =
        (host, port).to_socket_addrs().map_err(|e| DaemonError::io(format!("cannot resolve {host}"), e))?.collect();
    let Some(addr) = addrs.first() else { return Err(DaemonError::Failed(format!("no address for {host}"))) };
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(DaemonError::Failed(format!(
            "port {port} on {host} is already in use by another program (no mlx-serve from {} runs there); \
             choose another with --port or MLX_SERVE_PORT",
            config.paths.home().display()
        ))),
        Err(e) => Err(DaemonError::io(format!("cannot listen on {addr}"), e)),
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
    let text =
        std::fs::read(path).ok().map(|b| String::from_utf8_lossy(&b[(from as usize).min(b.len())..]).into_owned());
    let text = text.unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
