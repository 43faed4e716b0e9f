//! Name resolution: from the model name a client typed to a model the pool runs.
//!
//! Aliases, repo ids and `-4bit` variants name a store folder (`store::aliases`); a
//! missing one may be downloaded first when `models.auto_download` allows
//! (`autodownload.rs`); then the pool hands out its entry. The HTTP API and the control
//! socket both resolve through here, so `ctl load bge-m3` and a request for `bge-m3` mean
//! the same model.

mod autodownload;

use std::sync::Arc;

use mlx_serve_protocol::ModelKind;

use crate::config::Config;
use crate::runner::{EntryError, ModelEntry, Pool};
use crate::store::aliases::{self, Resolved};
use crate::store::downloads::Downloads;
use crate::store::StoreError;

pub use autodownload::preload;

/// Why a model name does not lead to a usable model. The API maps each to its status and
/// error code (`api/error.rs`); the messages are the ones clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("`model` is required")]
    Missing,
    /// Not a name we would ever read from disk (`..`, separators).
    #[error(transparent)]
    InvalidName(StoreError),
    #[error("The model `{0}` does not exist. `GET /v1/models` lists installed models; `mlx-serve pull {0}` installs it.")]
    NotFound(String),
    /// Installed, but its files cannot be used.
    #[error("{0}")]
    Unusable(String),
    #[error("model `{model}` cannot serve this endpoint; {}", kind_hint(*kind))]
    WrongKind { model: String, kind: ModelKind },
    /// A download is under way (started now, or still running after the wait).
    #[error("{0}")]
    Downloading(String),
    #[error(transparent)]
    DownloadFailed(StoreError),
    /// `ctl evict/restart` of a model without a runner.
    #[error("model {0} is not loaded (see `mlx-serve ctl workers`)")]
    NotLoaded(String),
}

fn kind_hint(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Embedding => "it is an embedding model: use /v1/embeddings",
        ModelKind::Reranker => "it is a reranker: use /v1/rerank",
    }
}

/// The daemon's view of models by name: the pool, the downloads in flight, the config.
pub struct Resolver<'a> {
    pub pool: &'a Pool,
    pub downloads: &'a Arc<Downloads>,
    pub config: &'a Config,
}

impl<'a> Resolver<'a> {
    pub fn new(pool: &'a Pool, downloads: &'a Arc<Downloads>, config: &'a Config) -> Resolver<'a> {
        Resolver { pool, downloads, config }
    }

    /// Resolves a requested name against the store and the alias table.
    pub fn resolve_name(&self, requested: &str) -> Result<Resolved, ResolveError> {
        let store = self.pool.store();
        aliases::resolve(requested, &self.config.models.aliases, |n| store.find(n).is_some())
            .map_err(ResolveError::InvalidName)
    }

    /// The pool entry for `model`, downloading it first when it is missing and config
    /// allows; with `kind`, checks the model is of the kind the endpoint serves.
    pub async fn entry(&self, model: &str, kind: Option<ModelKind>) -> Result<Arc<ModelEntry>, ResolveError> {
        if model.is_empty() {
            return Err(ResolveError::Missing);
        }
        let target = self.resolve_name(model)?;
        let mut entry = self.pool.get(&target.name).await;
        if matches!(entry, Err(EntryError::NotFound)) {
            self.ensure_installed(model, &target).await?;
            entry = self.pool.get(&target.name).await;
        }
        let entry = match entry {
            Ok(e) => e,
            Err(EntryError::NotFound) => return Err(ResolveError::NotFound(model.to_owned())),
            Err(EntryError::Unusable(reason)) => return Err(ResolveError::Unusable(reason)),
        };
        match kind {
            Some(kind) if entry.facts.kind != kind => {
                Err(ResolveError::WrongKind { model: model.to_owned(), kind: entry.facts.kind })
            }
            _ => Ok(entry),
        }
    }

    /// A model the pool already runs (by store name or repo id); never downloads.
    pub fn known_entry(&self, model: &str) -> Result<Arc<ModelEntry>, ResolveError> {
        if let Some(e) = self.pool.entry(model) {
            return Ok(e);
        }
        let installed = self.pool.store().find(model);
        let entries = self.pool.entries();
        match installed.and_then(|dir| entries.into_iter().find(|e| e.dir == dir)) {
            Some(e) => Ok(e),
            None => Err(ResolveError::NotLoaded(model.to_owned())),
        }
    }
}
