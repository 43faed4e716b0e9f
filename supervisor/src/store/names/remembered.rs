//! `<store>/.names.json`: which repo a bare name means, once a Hub search chose it, so the
//! name keeps meaning that repo (a later search could answer otherwise as download counts
//! move) until the user says otherwise:
//!
//! - `mlx-serve pull OWNER/NAME` re-points NAME to that repo;
//! - `mlx-serve remove NAME` forgets it (the next use searches again);
//! - an alias in `models.aliases` is tried before this file, so it overrides it.
//!
//! ```json
//! {"names": {"tiny-embedder": {"repo": "acme/tiny-embedder", "how": "search",
//!   "at": "2026-11-25T12:49:01Z", "downloads": 5000, "endpoint": "https://huggingface.co"}}}
//! ```
//!
//! Written whole to a temporary file and renamed over the old one, under an flock, so
//! two processes never leave a torn file or lose each other's names. The leading dot keeps
//! it out of the model list (and no model can be named so).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::store::staging::io_problem;
use crate::store::{Store, StoreError};

pub const FILE: &str = ".names.json";

/// What the store remembers about one bare name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// The repo id the name means.
    pub repo: String,
    /// `search` (the most downloaded repo of that name the Hub search found) or `pull`
    /// (the user pulled that repo by its id).
    pub how: String,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The repo's downloads as the search reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloads: Option<u64>,
    /// The Hub that was searched (`HF_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct NamesFile {
    #[serde(default)]
    names: BTreeMap<String, Remembered>,
}

fn path(store: &Store) -> PathBuf {
    store.dir().join(FILE)
}

/// Every remembered name. A missing or unreadable file is an empty table (the names are
/// found again by searching).
pub fn all(store: &Store) -> BTreeMap<String, Remembered> {
    std::fs::read_to_string(path(store))
        .ok()
        .and_then(|t| serde_json::from_str::<NamesFile>(&t).ok())
        .map(|f| f.names)
        .unwrap_or_default()
}

/// The repo `name` means: the entry of that exact name, else one that differs only in case.
pub fn get(store: &Store, name: &str) -> Option<Remembered> {
    let names = all(store);
    names.get(name).or_else(|| names.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)).cloned()
}

/// The names remembered as meaning `repo`.
pub fn names_of(store: &Store, repo: &str) -> Vec<(String, Remembered)> {
    all(store).into_iter().filter(|(_, r)| r.repo.eq_ignore_ascii_case(repo)).collect()
}

/// Remembers that `name` means `entry.repo`.
pub fn set(store: &Store, name: &str, entry: Remembered) -> Result<(), StoreError> {
    update(store, |names| {
        names.insert(name.to_owned(), entry);
    })
}

/// Forgets `name` (in any case); true if it was remembered.
pub fn forget(store: &Store, name: &str) -> Result<bool, StoreError> {
    let mut found = false;
    update(store, |names| {
        let before = names.len();
        names.retain(|k, _| !k.eq_ignore_ascii_case(name));
        found = names.len() != before;
    })?;
    Ok(found)
}

/// Read, change, write back, holding `<store>/.locks/names.lock` throughout.
fn update(store: &Store, change: impl FnOnce(&mut BTreeMap<String, Remembered>)) -> Result<(), StoreError> {
    let file = path(store);
    let failed =
        |e: std::io::Error| StoreError::Failed(format!("cannot update {}: {}", file.display(), io_problem(&e)));
    let locks = store.dir().join(".locks");
    std::fs::create_dir_all(&locks).map_err(failed)?;
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(locks.join("names.lock"))
        .map_err(failed)?;
    // Held for a read and a small write: blocking here is brief.
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| failed(e.into()))?;
    let mut names = all(store);
    change(&mut names);
    let text = serde_json::to_string_pretty(&NamesFile { names }).expect("names serialize") + "\n";
    let tmp = store.dir().join(format!("{FILE}.tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, &file)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(repo: &str) -> Remembered {
        Remembered {
            repo: repo.into(),
            how: "search".into(),
            at: "2026-01-01T00:00:00Z".into(),
            downloads: Some(5),
            endpoint: None,
        }
    }

    #[test]
    fn set_get_forget_across_threads() {
        let dir = std::env::temp_dir().join(format!("mlx-serve-names-test-{}", std::process::id()));
        let store = Store::new(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        assert!(get(&store, "x").is_none());
        // Sixteen writers at once: none loses another's name, the file stays whole.
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || set(&store, &format!("name{i}"), entry(&format!("o/name{i}"))).unwrap())
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(all(&store).len(), 16);
        assert_eq!(get(&store, "NAME3").unwrap().repo, "o/name3");
        assert_eq!(names_of(&store, "O/NAME4").len(), 1);
        assert!(forget(&store, "Name3").unwrap());
        assert!(!forget(&store, "name3").unwrap());
        assert_eq!(all(&store).len(), 15);
        let _ = std::fs::remove_dir_all(dir);
    }
}
