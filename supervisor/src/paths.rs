//! Where mlx-serve keeps its files, in one place: the home folder and what lives under it,
//! the config file, the daemon's PID files and control sockets, the worker binary and the
//! worker sockets. [`Paths::from_env`] reads the environment once; everything else is
//! computed from that value, which travels with the [`Config`](crate::config::Config), so
//! a daemon run in-process can be pointed at a folder of its own ([`Paths::under`]).
//! Nothing is created here except the private `run/` folder, which must be ours with
//! mode 0700.
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

/// The places mlx-serve uses, fixed when the value is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    home: PathBuf,
    user_home: PathBuf,
    config_file: PathBuf,
    worker_binary: PathBuf,
}

impl Default for Paths {
    /// What the environment says ([`Paths::from_env`]): a `Config` made without one still
    /// finds the files the command line would.
    fn default() -> Paths {
        Paths::from_env()
    }
}

impl Paths {
    /// From the environment: `MLX_SERVE_HOME` (default `~/.mlx-serve`), `HOME`,
    /// `MLX_SERVE_CONFIG` (default `<home>/config.yaml`) and `MLX_SERVE_WORKER_BIN`
    /// (default `mlx-serve-worker` beside this executable).
    pub fn from_env() -> Paths {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let user_home = var("HOME").unwrap_or_else(|| PathBuf::from("."));
        let home = var("MLX_SERVE_HOME").unwrap_or_else(|| user_home.join(".mlx-serve"));
        let config_file = var("MLX_SERVE_CONFIG").unwrap_or_else(|| home.join("config.yaml"));
        let worker_binary = var("MLX_SERVE_WORKER_BIN")
            .unwrap_or_else(|| std::env::current_exe().unwrap_or_default().with_file_name("mlx-serve-worker"));
        Paths { home, user_home, config_file, worker_binary }
    }

    /// Everything under `home` (the user's home too), with `worker_binary`: a daemon that
    /// reads no environment, for tests.
    pub fn under(home: &Path, worker_binary: &Path) -> Paths {
        Paths {
            home: home.to_owned(),
            user_home: home.to_owned(),
            config_file: home.join("config.yaml"),
            worker_binary: worker_binary.to_owned(),
        }
    }

    /// `MLX_SERVE_HOME`, default `~/.mlx-serve`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The user's home folder (`HOME`), for files other programs expect there.
    pub fn user_home(&self) -> &Path {
        &self.user_home
    }

    /// The config file: `MLX_SERVE_CONFIG` or `<home>/config.yaml`.
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    /// `mlx-serve-worker`: `MLX_SERVE_WORKER_BIN`, else beside this executable.
    pub fn worker_binary(&self) -> &Path {
        &self.worker_binary
    }

    /// `path` with a leading `~` read as the user's home (YAML does not expand it).
    pub fn expand_tilde(&self, path: &Path) -> PathBuf {
        match path.strip_prefix("~") {
            Ok(rest) => self.user_home.join(rest),
            Err(_) => path.to_owned(),
        }
    }

    /// `<home>/run`: PID files, the control socket, worker sockets.
    pub fn run_dir(&self) -> PathBuf {
        self.home.join("run")
    }

    /// `<home>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.home.join("logs")
    }

    /// Creates `<home>/run` with mode 0700 if missing and checks it is private (it holds
    /// the control and worker sockets): see [`private_dir`]. Worker sockets go there too:
    /// their names are short (`w<pid>-<n>.sock`) because Unix socket paths are limited to
    /// about 104 bytes, the same bound the control socket beside them has.
    pub fn ensure_run_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.run_dir();
        private_dir(&dir)?;
        Ok(dir)
    }

    /// The PID file of the daemon listening on `port`.
    pub fn pid_file(&self, port: u16) -> PathBuf {
        self.run_dir().join(format!("mlx-serve-{port}.pid"))
    }

    /// The control socket of the daemon listening on `port`.
    pub fn control_socket(&self, port: u16) -> PathBuf {
        self.run_dir().join(format!("mlx-serve-{port}.sock"))
    }

    /// The log a background-started daemon on `port` writes to.
    pub fn daemon_log(&self, port: u16) -> PathBuf {
        self.logs_dir().join(format!("mlx-serve-{port}.log"))
    }
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
