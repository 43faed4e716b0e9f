//! The model store: `<models dir>/<name>/` folders in Hugging Face layout, and everything
//! that puts models there.
//!
//! A folder placed there by hand is as good as a pulled one: its type, pooling and limits
//! come from its own files (`mlx_serve_protocol::model_dir`). Names from requests never
//! reach the filesystem unchecked ([`validate_name`]).
//!
//! - `aliases.rs`: the names users type (aliases, repo ids, `-4bit` variants) → store names.
//! - `names/`: bare names nothing local knows → a Hugging Face repo, by a Hub search,
//!   remembered in the store.
//! - `hub_api.rs`: Hub endpoint, token, refusals (gated, private, missing) and retries.
//! - `pull/`: a model from the Hugging Face Hub or a local folder into the store.
//! - `quantize.rs`: an MLX-quantized copy, made by the worker binary; `quality_set.rs`:
//!   the texts its quality is measured on.
//! - `staging.rs`: the temporary folders both write into, and the rename into place.
//! - `lock.rs`: one install of a repo or name at a time, across processes.
//! - `torch_pickle.rs`: the tensors of a `torch.save` file, read without running pickle code.
//! - `metadata.rs`: `mlx-serve.json` and what we read from safetensors headers;
//!   `matryoshka.rs`: whether the model declares Matryoshka training (what `dimensions` means).
//! - `downloads.rs`: the daemon's shared downloads in flight, with progress, and the
//!   failures it remembers for a while.

pub mod aliases;
pub mod downloads;
pub mod hub_api;
pub mod lock;
pub mod matryoshka;
pub mod metadata;
pub mod names;
pub mod pull;
mod quality_set;
pub mod quantize;
pub mod redact;
mod staging;
pub mod torch_pickle;

use std::path::{Path, PathBuf};

use mlx_serve_protocol::model_dir::{self, ModelFacts};
use mlx_serve_protocol::ModelKind;
use unicode_normalization::UnicodeNormalization;

/// What can go wrong putting a model into the store (or naming one). `Clone`: a failed
/// download is reported to everyone who waited for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("invalid model name {0:?}: use letters, digits, '-', '_' and '.', without path separators or '..'")]
    InvalidName(String),
    /// A bad argument (quantization bits, group size).
    #[error("{0}")]
    Invalid(String),
    /// The repo or folder does not exist (or is private without a token).
    #[error("{0}")]
    NotFound(String),
    /// It exists but we will not install it (pickle only, unsupported, corrupt layout).
    #[error("{0}")]
    Refused(String),
    /// A gated or private repo, without a token or with one that has no access (the
    /// message says how to set `HF_TOKEN`).
    #[error("{0}")]
    Denied(String),
    /// A bare name that several repos answer to (the message lists them, each with the
    /// `mlx-serve pull` line that picks it).
    #[error("{0}")]
    Ambiguous(String),
    /// The model is of the other type than the one the request needs (found before its
    /// weights were fetched).
    #[error("model `{model}` cannot serve this endpoint; {}", kind_hint(*kind))]
    WrongKind { model: String, kind: ModelKind },
    /// Network, disk or worker failure.
    #[error("{0}")]
    Failed(String),
}

impl StoreError {
    /// The message for an API client: a failure's own words (network errors, paths) stay
    /// in the log; every URL loses its credentials.
    pub fn public_message(&self) -> String {
        match self {
            StoreError::Failed(_) => {
                "the model could not be downloaded or prepared (the server log has the details)".into()
            }
            e => redact::redact(&e.to_string()),
        }
    }
}

/// Where a model of `kind` is served.
pub fn kind_hint(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Embedding => "it is an embedding model: use /v1/embeddings",
        ModelKind::Reranker => "it is a reranker: use /v1/rerank",
        ModelKind::Classifier => "it is a classifier: use /predict",
    }
}

/// An installed model.
#[derive(Debug, Clone)]
pub struct InstalledModel {
    pub name: String,
    pub path: PathBuf,
    pub facts: Result<ModelFacts, String>,
    pub size_bytes: u64,
    /// Seconds since the Unix epoch of the folder's newest file.
    pub modified: u64,
}

/// Checks that a model name is one path component we are willing to create or read:
/// no separators, no `..`, no leading dot, no control characters, not too long.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bad = name.is_empty()
        || name.len() > 200
        || name.starts_with('.')
        || name.contains("..")
        || name.chars().any(|c| c == '/' || c == '\\' || c == '\0' || c.is_control());
    if bad {
        Err(StoreError::InvalidName(name.to_owned()))
    } else {
        Ok(())
    }
}

/// The store folder name for a Hugging Face repo id: its last component
/// (`sentence-transformers/all-MiniLM-L6-v2` → `all-MiniLM-L6-v2`).
pub fn name_for_repo(repo: &str) -> &str {
    repo.rsplit('/').next().unwrap_or(repo)
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn folder_size_and_mtime(dir: &Path) -> (u64, u64) {
    let mut size = 0;
    let mut mtime = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                size += md.len();
                if let Ok(m) = md.modified() {
                    let secs = m.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                    mtime = mtime.max(secs);
                }
            }
        }
    }
    (size, mtime)
}

fn describe(name: String, path: PathBuf) -> InstalledModel {
    let (size_bytes, modified) = folder_size_and_mtime(&path);
    InstalledModel { facts: model_dir::inspect(&path).map_err(|e| e.to_string()), name, path, size_bytes, modified }
}

impl Store {
    pub fn new(dir: PathBuf) -> Self {
        Store { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Folder of model `name` (whether or not it exists).
    pub fn path_of(&self, name: &str) -> Result<PathBuf, StoreError> {
        validate_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Finds an installed model by name or by repo id (`org/name`), as the folder's own
    /// spelling. A non-ASCII name matches the folder whose name is the same text in
    /// Unicode NFC: macOS file systems treat `café` typed precomposed (NFC) and decomposed
    /// (NFD) as one name, Linux ones as two; compared in NFC, a name means one model on
    /// both, and the pool never runs one model twice under two spellings.
    pub fn find(&self, requested: &str) -> Option<PathBuf> {
        let name = if requested.matches('/').count() == 1 { name_for_repo(requested) } else { requested };
        let path = self.path_of(name).ok()?;
        if name.is_ascii() {
            return path.join("config.json").is_file().then_some(path);
        }
        let wanted: String = name.nfc().collect();
        let mut folders = self.folders();
        // The exact spelling first, when two folders differ only in normalization (Linux).
        folders.sort_by_key(|(n, _)| n != name);
        folders.into_iter().find(|(n, _)| n.nfc().eq(wanted.chars())).map(|(_, p)| p)
    }

    /// Every folder with a config.json, sorted by name. Temporary download folders
    /// (leading dot) are skipped.
    pub fn list(&self) -> Vec<InstalledModel> {
        let mut models: Vec<InstalledModel> =
            self.folders().into_iter().map(|(name, path)| describe(name, path)).collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models
    }

    /// One installed model by store name or repo id (sizes walk only its own folder).
    pub fn installed(&self, requested: &str) -> Option<InstalledModel> {
        let path = self.find(requested)?;
        let name = path.file_name()?.to_str()?.to_owned();
        Some(describe(name, path))
    }

    /// Names and facts of every model, without walking their files for sizes.
    pub fn facts(&self) -> Vec<(String, Result<ModelFacts, String>)> {
        self.folders()
            .into_iter()
            .map(|(name, path)| (name, model_dir::inspect(&path).map_err(|e| e.to_string())))
            .collect()
    }

    /// (name, path) of every folder with a config.json; temporary ones (leading dot) skipped.
    fn folders(&self) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let ok = validate_name(&name).is_ok() && e.path().join("config.json").is_file();
                ok.then(|| (name, e.path()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "..", "../x", "a/b", "a\\b", ".hidden", "x\0y", "a/../b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["all-MiniLM-L6-v2", "bge-small-en-v1.5-4bit", "Qwen3_Embedding"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
        assert_eq!(name_for_repo("BAAI/bge-m3"), "bge-m3");
    }
}
