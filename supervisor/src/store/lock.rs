//! One install of a thing at a time, across processes: `mlx-serve pull` in two terminals,
//! or a pull beside the daemon's auto-download of the same model.
//!
//! An exclusive `flock` on `<store>/.locks/<key>.lock`, held for the whole pull or
//! quantization and released when the process ends, however it ends (the kernel drops
//! flocks with the file descriptor). The one that waits reports it, then proceeds and
//! usually finds the model already there (a hub pull checks the installed revision first).
//! Hub pulls lock their repo, which also keeps two downloads of the same file out of
//! hf-hub's cache at once (hf-hub gives up on its own blob lock after 5 s).

use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::staging::io_problem;
use super::{Store, StoreError};

/// How often a waiting process tries the lock again.
const POLL: Duration = Duration::from_millis(200);

/// A held lock; released on drop.
pub struct InstallLock {
    _lock: Flock<std::fs::File>,
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
    std::fs::create_dir_all(path.parent().unwrap()).map_err(failed)?;
    let mut file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(failed)?;
    let mut waiting = Some(waiting);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(InstallLock { _lock: lock }),
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
        let _ = std::fs::remove_dir_all(dir);
    }
}
