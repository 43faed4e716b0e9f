//! Where mlx-serve keeps its files, in one place: the home folder and what lives under it,
//! the config file, the daemon's PID files and control sockets, the worker binary and the
//! worker sockets. Everything here is a path computed from the environment; nothing is
//! created except the private `run/` folder, which must be ours with mode 0700.
//!
//! ```text
//! $MLX_SERVE_HOME (default ~/.mlx-serve)
//! ├─ config.yaml                  (MLX_SERVE_CONFIG overrides the path)
//! ├─ models/<name>/               the store (models.directory overrides it)
//! ├─ cache/embeddings.redb        the embedding cache's disk tier, when on
//! │                               (embedding_cache.disk_path overrides it)
//! ├─ run/  (0700, ours)           mlx-serve-<port>.pid, mlx-serve-<port>.sock (0600),
//! │                               w<pid>-<n>.sock, one per worker while it starts
//! └─ logs/                        mlx-serve-<port>.log (background start), service.log
//! ```
//!
//! Sockets live only in `run/`, never in a shared folder such as `/tmp`: whoever can
//! create or replace a socket there could pose as a worker or as the daemon. `run/` is
//! checked before use (not a symbolic link, owned by this user, no access for others).

use std::path::{Path, PathBuf};

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

/// `<home>/run`: PID files, the control socket, worker sockets.
pub fn run_dir() -> PathBuf {
    home_dir().join("run")
}

/// `<home>/logs`.
pub fn logs_dir() -> PathBuf {
    home_dir().join("logs")
}

/// Creates `<home>/run` with mode 0700 if missing and checks it is private (it holds the
/// control and worker sockets): see [`private_dir`].
pub fn ensure_run_dir() -> std::io::Result<PathBuf> {
    let dir = run_dir();
    private_dir(&dir)?;
    Ok(dir)
}

/// Makes sure `dir` is a folder only we can use: created with mode 0700 when missing;
/// otherwise it must be a real folder (`lstat`: a symbolic link is refused, wherever it
/// points) owned by this process's user. A folder of ours that others may enter is
/// narrowed to 0700. Anything else is an error that says what is wrong.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(refuse(format!(
            "{} is a symbolic link; it must be a folder of its own (remove the link)",
            dir.display()
        )));
    }
    if !meta.is_dir() {
        return Err(refuse(format!("{} is not a folder", dir.display())));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "{} belongs to uid {}, not to this user (uid {me}); another user could pose as the server there: \
             remove the folder or give it to this user",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
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

/// The folder for worker sockets: `<home>/run`, checked private ([`private_dir`]). Socket
/// names are short (`w<pid>-<n>.sock`): Unix socket paths are limited to ~104 bytes, the
/// same bound the control socket beside them already has.
pub fn worker_socket_dir() -> std::io::Result<PathBuf> {
    ensure_run_dir()
}
