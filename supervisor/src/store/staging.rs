//! Staging folders: a pull or a quantization writes into `<store>/.<what>-<name>-<pid>/`
//! and the finished model is renamed into place, so a failed or killed one leaves no half
//! model. Names with a leading dot are never listed as models (`Store::list`).
//!
//! Two installs of one name may race (two `mlx-serve pull` processes, a pull and the
//! daemon's auto-download): each has its own staging folder, and the last rename wins
//! with a complete model either way.

use std::path::{Path, PathBuf};

use super::{Store, StoreError};

/// A folder `<store>/<prefix><pid>`, removed on drop (after a successful install it holds
/// nothing any more).
pub struct Staging {
    pub path: PathBuf,
}

impl Staging {
    /// Creates the folder for `prefix` (`.partial-NAME-`, `.quantizing-NAME-`), first
    /// removing the ones of processes that are gone.
    pub fn create(store: &Store, prefix: &str) -> Result<Staging, StoreError> {
        remove_stale(store, prefix);
        let path = store.dir().join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| StoreError::Failed(format!("cannot create {}: {}", path.display(), io_problem(&e))))?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes `<prefix><pid>` folders of the store whose process is gone (a killed pull or
/// quantization). Folders of live processes, this one included, are in use.
fn remove_stale(store: &Store, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(store.dir()) else { return };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(prefix).and_then(|p| p.parse::<i32>().ok()) else { continue };
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// An I/O error in words a user can act on: a full disk, a read-only or unwritable
/// folder, a file size limit; otherwise the error itself.
pub fn io_problem(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::StorageFull => format!("the disk is full ({e}); free some space and try again"),
        ErrorKind::ReadOnlyFilesystem => format!("the file system is read-only ({e})"),
        ErrorKind::PermissionDenied => format!("no permission to write there ({e})"),
        ErrorKind::FileTooLarge => format!("a file size limit was reached ({e})"),
        _ => e.to_string(),
    }
}

/// Moves a complete folder to `<store>/<name>`, replacing an older copy. When another
/// install of the same name lands in between, this one replaces it (both are complete).
pub fn install(store: &Store, from: &Path, name: &str) -> Result<PathBuf, StoreError> {
    let dest = store.path_of(name)?;
    let old = store.dir().join(format!(".deleting-{name}-{}", std::process::id()));
    let failed = |e: std::io::Error| {
        StoreError::Failed(format!("cannot move the model into {}: {}", dest.display(), io_problem(&e)))
    };
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(&old);
        let replacing = dest.exists();
        if replacing {
            match std::fs::rename(&dest, &old) {
                Ok(()) => {}
                // Another install moved it away first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(failed(e)),
            }
        }
        match std::fs::rename(from, &dest) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&old);
                return Ok(dest);
            }
            // Another install put its copy there after our check: replace that one.
            Err(e) if dest.exists() => tracing::debug!("{}: {e}; replacing the other install", dest.display()),
            Err(e) => return Err(failed(e)),
        }
    }
    let _ = std::fs::remove_dir_all(&old);
    Err(StoreError::Failed(format!(
        "cannot move the model into {}: other installs of {name} keep replacing it",
        dest.display()
    )))
}
