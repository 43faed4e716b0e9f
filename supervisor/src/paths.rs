//! Where mlx-serve keeps its files, in one place: the home folder and what lives under it,
//! the config file, the daemon's PID files and control sockets, the worker binary and the
//! worker sockets. Everything here is a path computed from the environment; nothing is
//! created except the two private folders that must exist with the right mode.
//!
//! ```text
//! $MLX_SERVE_HOME (default ~/.mlx-serve)
//! ├─ config.yaml                  (MLX_SERVE_CONFIG overrides the path)
//! ├─ models/<name>/               the store (models.directory overrides it)
//! ├─ run/  (0700)                 mlx-serve-<port>.pid, mlx-serve-<port>.sock (0600)
//! └─ logs/                        mlx-serve-<port>.log (background start), service.log
//! $TMPDIR/mlx-serve-<uid>/ (0700) w<pid>-<n>.sock, one per worker while it starts
//! ```

use std::path::PathBuf;

/// `MLX_SERVE_HOME`, default `~/.mlx-serve`.
pub fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("MLX_SERVE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    user_home().join(".mlx-serve")
}

/// The user's home folder (`HOME`), for files other programs expect there.
pub fn user_home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// The config file: `MLX_SERVE_CONFIG` or `<home>/config.yaml`.
pub fn config_path() -> PathBuf {
    std::env::var_os("MLX_SERVE_CONFIG")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join("config.yaml"))
}

/// `<home>/run`: PID files and control sockets.
pub fn run_dir() -> PathBuf {
    home_dir().join("run")
}

/// `<home>/logs`.
pub fn logs_dir() -> PathBuf {
    home_dir().join("logs")
}

/// Creates `<home>/run` with mode 0700 (it holds the control sockets).
pub fn ensure_run_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = run_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// The PID file of the daemon listening on `port`.
pub fn pid_file_path(port: u16) -> PathBuf {
    run_dir().join(format!("mlx-serve-{port}.pid"))
}

/// The control socket of the daemon listening on `port`.
pub fn control_socket_path(port: u16) -> PathBuf {
    run_dir().join(format!("mlx-serve-{port}.sock"))
}

/// The log a background-started daemon on `port` writes to.
pub fn daemon_log_path(port: u16) -> PathBuf {
    logs_dir().join(format!("mlx-serve-{port}.log"))
}

/// Locates `mlx-serve-worker`: `MLX_SERVE_WORKER_BIN`, else beside this executable.
pub fn worker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MLX_SERVE_WORKER_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("mlx-serve-worker")
}

/// A private folder for worker sockets: `$TMPDIR/mlx-serve-<uid>` (0700). Short on
/// purpose: Unix socket paths are limited to ~104 bytes.
pub fn worker_socket_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-serve-{}", nix::unistd::getuid()));
    let _ = std::fs::create_dir_all(&dir);
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    dir
}
