//! Staging folders: a pull or a quantization writes into `<store>/.<what>-<name>-<pid>/`
//! and the finished model is renamed into place, so a failed or killed one leaves no half
//! model. Names with a leading dot are never listed as models (`Store::list`).

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
            .map_err(|e| StoreError::Failed(format!("cannot create {}: {e}", path.display())))?;
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

/// Moves a complete folder to `<store>/<name>`, replacing an older copy.
pub fn install(store: &Store, from: &Path, name: &str) -> Result<PathBuf, StoreError> {
    let dest = store.path_of(name)?;
    let old = store.dir().join(format!(".deleting-{name}-{}", std::process::id()));
    let replacing = dest.exists();
    if replacing {
        std::fs::rename(&dest, &old)
            .map_err(|e| StoreError::Failed(format!("cannot replace {}: {e}", dest.display())))?;
    }
    std::fs::rename(from, &dest)
        .map_err(|e| StoreError::Failed(format!("cannot move the model into {}: {e}", dest.display())))?;
    if replacing {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(dest)
}
