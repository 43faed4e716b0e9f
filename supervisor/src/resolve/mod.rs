//! Name resolution: from the model name a client typed to a model the pool runs.
//!
//! Names go through `store::names`: installed model, alias, the last part of an alias's
//! repo, repo id, then for a bare name the repo the store remembers for it or a Hub model
//! search (only with `models.auto_download`: a search leads to a download). A missing
//! model may be downloaded first (`autodownload.rs`); then the pool hands out its entry.
//! The HTTP API and the control socket both resolve through here, so `ctl load bge-m3`
//! and a request for `bge-m3` mean the same model.
//!
//! Nothing is made for a request that will be refused: a request to the endpoint of the
//! other model type is refused before a download or quantization starts (from the
//! installed base's files, or from the repo's small files before its weights). A failed
//! Hub search or download is remembered for a minute (`store::downloads`), and requests
//! in that time get its error with the time left. A model deleted while a request was on
//! its way is a 404, as if the request had come a moment later.

mod autodownload;

use std::sync::Arc;

use mlx_serve_protocol::ModelKind;

use crate::config::Config;
use crate::runner::{EntryError, ModelEntry, Pool};
use crate::store::aliases::{self, NameSource, Resolved};
use crate::store::downloads::Downloads;
use crate::store::{kind_hint, names, StoreError};

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
    #[error(
        "The model `{0}` does not exist. `GET /v1/models` lists installed models; `mlx-serve pull {0}` installs it."
    )]
    NotFound(String),
    /// Installed, but its files cannot be used.
    #[error("{0}")]
    Unusable(String),
    #[error("model `{model}` cannot serve this endpoint; {}", kind_hint(*kind))]
    WrongKind { model: String, kind: ModelKind },
    /// A download is under way (started now, or still running after the wait).
    #[error("{0}")]
    Downloading(String),
    /// A Hub search or download failed (just now).
    #[error(transparent)]
    DownloadFailed(StoreError),
    /// The search or download failed less than a minute ago; not tried again before
    /// `retry_in` seconds.
    #[error("{error} {}", retry_note(*retry_in))]
    RecentlyFailed { error: StoreError, retry_in: u64 },
    /// An `owner/name` repo id whose store name is taken by a model from elsewhere (another
    /// repo, a local folder).
    #[error("{0}")]
    OtherOwner(String),
    /// `ctl evict/restart` of a model without a runner.
    #[error("model {0} is not loaded (see `mlx-serve ctl workers`)")]
    NotLoaded(String),
}

/// What a client may learn of a failed Hub request: the Hub's HTTP status when it
/// answered one, else that it could not be reached (the network error, which names hosts
/// and addresses, stays in the log).
fn public_cause(why: &str) -> String {
    let status = why.match_indices("HTTP ").find_map(|(at, _)| {
        let code = why.get(at + 5..at + 8)?;
        code.bytes().all(|b| b.is_ascii_digit()).then_some(code)
    });
    match status {
        Some(code) => format!("the Hub answered HTTP {code}"),
        None => "the Hub could not be reached".to_owned(),
    }
}

/// When a failure remembered for `retry_in` more seconds happened, and how to retry sooner.
pub fn retry_note(retry_in: u64) -> String {
    let ago = crate::store::downloads::RETRY_FAILED_AFTER.as_secs().saturating_sub(retry_in);
    format!(
        "(this failed {ago} s ago; it is tried again on a request after {retry_in} s, or at once by `mlx-serve pull` / POST /api/pull)"
    )
}

/// A store error of a search or download, with a model of the wrong type as the request's
/// own error.
fn download_error(requested: &str, e: StoreError) -> ResolveError {
    match e {
        StoreError::WrongKind { kind, .. } => ResolveError::WrongKind { model: requested.to_owned(), kind },
        StoreError::InvalidName(_) => ResolveError::InvalidName(e),
        e => ResolveError::DownloadFailed(e),
    }
}

/// A repo id is served only by a model pulled from that repo: the store names a model by
/// its repo's last part, so `attacker/minilm` would otherwise be served by `BAAI/minilm`'s
/// model or by a local folder named `minilm`. Checked for the model and, for a quantized
/// variant, the base it would be made from (repo ids compare case-insensitively, as the
/// Hub's do).
fn same_repo(store: &crate::store::Store, requested: &str, target: &Resolved) -> Result<(), ResolveError> {
    let Some(repo) = &target.repo else { return Ok(()) };
    let base = aliases::split_variant(&target.name).map(|(b, _)| b);
    for name in std::iter::once(target.name.as_str()).chain(base) {
        let Some(dir) = store.find(name) else { continue };
        let from = crate::store::metadata::ModelMetadata::read(&dir).and_then(|m| m.repo);
        if from.as_deref().is_some_and(|f| f.eq_ignore_ascii_case(repo)) {
            continue;
        }
        let origin = match from {
            Some(other) => format!("pulled from {other}"),
            None => "not pulled from a repo (a local folder)".to_owned(),
        };
        return Err(ResolveError::OtherOwner(format!(
            "`{requested}` is not installed: the installed model `{name}` is {origin}. \
             A repo id is only served by a model pulled from it; `mlx-serve pull {repo} --name OTHER` installs it \
             under another name"
        )));
    }
    Ok(())
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

    /// Resolves a requested name against the store, the alias table and the names the
    /// store remembers; never asks the Hub.
    pub fn resolve_name(&self, requested: &str) -> Result<Resolved, ResolveError> {
        let store = self.pool.store();
        let target = names::resolve_local(requested, &self.config.models.aliases, store, |n| store.find(n).is_some())
            .map(|r| r.target)
            .map_err(ResolveError::InvalidName)?;
        if target.source == NameSource::RepoId {
            same_repo(store, requested, &target)?;
        }
        Ok(target)
    }

    /// Resolves a requested name, searching the Hub for a bare name nothing local knows
    /// when `models.auto_download` is on. One search at a time; a failed one is remembered.
    pub async fn resolve(&self, requested: &str) -> Result<Resolved, ResolveError> {
        let local = self.resolve_name(requested)?;
        if local.source != NameSource::Unknown || !self.config.models.auto_download {
            return Ok(local);
        }
        let base = aliases::split_variant(&local.name).map_or(local.name.as_str(), |(b, _)| b).to_owned();
        let _one_search = self.downloads.searching().await;
        if let Some((error, left)) = self.downloads.name_failure(&base) {
            return Err(ResolveError::RecentlyFailed { error, retry_in: left.as_secs().max(1) });
        }
        let store = self.pool.store();
        let installed = |n: &str| store.find(n).is_some();
        match names::resolve(requested, &self.config.models.aliases, store, installed, true).await {
            Ok(r) => {
                if let Some(text) = &r.explanation {
                    tracing::info!(model = requested, "{text}");
                }
                Ok(r.target)
            }
            Err(e) => {
                tracing::warn!(model = requested, "cannot resolve: {e}");
                // The Hub could not be asked (offline, down): to the client the model is
                // still one this server does not have, so a 404, saying why nothing more
                // was found (a 502 would blame a Hub the request never named).
                let e = match e {
                    StoreError::Failed(why) => StoreError::NotFound(format!(
                        "model `{requested}` does not exist here (not installed, not an alias), and the Hub could not be \
                         searched for it ({}; the server log has the details)",
                        public_cause(&why)
                    )),
                    e => e,
                };
                self.downloads.remember_name_failure(&base, e.clone());
                Err(download_error(requested, e))
            }
        }
    }

    /// The pool entry for `model`, downloading it first when it is missing and config
    /// allows; with `kind`, checks the model is of the kind the endpoint serves, before
    /// anything is downloaded or quantized for it.
    pub async fn entry(&self, model: &str, kind: Option<ModelKind>) -> Result<Arc<ModelEntry>, ResolveError> {
        if model.is_empty() {
            return Err(ResolveError::Missing);
        }
        let target = self.resolve(model).await?;
        let mut entry = self.pool.get(&target.name).await;
        if matches!(entry, Err(EntryError::NotFound)) {
            self.ensure_installed(model, &target, kind).await?;
            entry = self.pool.get(&target.name).await;
        }
        let entry = match entry {
            Ok(e) => e,
            Err(EntryError::NotFound) => return Err(ResolveError::NotFound(model.to_owned())),
            // Its folder went away between the lookup and the load: a delete won the race.
            Err(EntryError::Unusable(_)) if self.pool.store().find(&target.name).is_none() => {
                return Err(ResolveError::NotFound(model.to_owned()))
            }
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
