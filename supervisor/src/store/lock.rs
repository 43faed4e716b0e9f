//! One install of a thing at a time, across processes: `mlx-serve pull` in two terminals,
//! or a pull beside the daemon's auto-download of the same model.
//!
//! An exclusive `flock` on `<store>/.locks/<key>.lock`, held for the whole pull or
//! quantization and released when the process ends, however it ends (the kernel drops
//! flocks with the file descriptor). The one that waits reports it, then proceeds and
//! usually finds the model already there (a hub pull checks the installed revision first).
//! Hub pulls lock their repo, which also keeps two downloads of the same file out of
//! hf-hub's cache at once (hf-hub gives up on its own blob lock after 5 s).
//!
//! The file is removed when its holder lets go, so requests for made-up repo ids leave
//! nothing behind. Removing a lock file is safe only with a check on taking it: a process
//! that opened the file before it was removed may lock the removed file, while a newer one
//! locks a new file at the same path. So a lock counts only if the path still names the
//! file that was locked (same device and inode); otherwise it is taken again.

use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::staging::io_problem;
use super::{Store, StoreError};

/// How often a waiting process tries the lock again.
const POLL: Duration = Duration::from_millis(200);

/// A held lock; released (and its file removed) on drop.
pub struct InstallLock {
    path: PathBuf,
    _lock: Flock<std::fs::File>,
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        // Removed while still locked; the flock goes with the descriptor right after.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `path` still names the open `file`.
fn still_named(path: &std::path::Path, file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn lock_path(store: &Store, key: &str) -> PathBuf {
    // Repo ids have one '/', which is not allowed in a file name.
    store.dir().join(".locks").join(format!("{}.lock", key.replace('/', "--")))
}

/// Takes the lock for `key` (a repo id or a store name), waiting as long as another
/// process holds it; `waiting` is called once if it has to wait. Cancel by dropping the
/// future.
pub async fn acquire(store: &Store, key: &str, waiting: impl FnOnce()) -> Result<InstallLock, StoreError> {
    let path = lock_path(store, key);
    let failed = |e: std::io::Error| StoreError::Failed(format!("cannot lock {}: {}", path.display(), io_problem(&e)));
    let open = || -> Result<std::fs::File, StoreError> {
        std::fs::create_dir_all(path.parent().unwrap()).map_err(failed)?;
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(failed)
    };
    let mut file = open()?;
    let mut waiting = Some(waiting);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) if still_named(&path, &lock) => return Ok(InstallLock { path, _lock: lock }),
            // The holder before us removed this file as we waited: lock the current one.
            Ok(stale) => {
                drop(stale);
                file = open()?;
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                file = f;
                if let Some(w) = waiting.take() {
                    w();
                }
                tokio::time::sleep(POLL).await;
            }
            Err((_, errno)) => return Err(failed(std::io::Error::from(errno))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_for_the_first() {
        let dir = std::env::temp_dir().join(format!("mlx-serve-lock-test-{}", std::process::id()));
        let store = Store::new(dir.clone());
        let first = acquire(&store, "acme/model", || panic!("the first one should not wait")).await.unwrap();
        let waited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let w = waited.clone();
        let store2 = store.clone();
        let second = tokio::spawn(async move {
            acquire(&store2, "acme/model", move || w.store(true, std::sync::atomic::Ordering::SeqCst)).await.map(|_| ())
        });
        // The second holder is blocked until the first lets go: poll until it says it waits.
        while !waited.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!second.is_finished());
        drop(first);
        second.await.unwrap().unwrap();
        // Released: no file is left behind.
        assert_eq!(std::fs::read_dir(dir.join(".locks")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
