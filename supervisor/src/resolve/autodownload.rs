//! Installing a model a request names but the store lacks: names with a repo become a
//! pull, and `-4bit`/`-8bit` variants of an installed model are made from its folder.
//!
//! `models.auto_download` on: a missing model that names a repo (directly, through an
//! alias, or found by a Hub search) starts one shared download (`store::downloads`). With
//! `auto_download_on_request` the request waits up to `auto_download_timeout` seconds for
//! it; without, it gets an immediate 503 that says the download started. Progress is in
//! `/api/ps` and `/v1/models` (`downloads`).
//!
//! A request for an endpoint of one model type never installs a model of the other: the
//! type of an installed base is read before its variant is made, and a download checks
//! the type from the repo's small files before its weights (`PullRequest::expect_kind`).

use std::sync::Arc;
use std::time::Duration;

use mlx_serve_protocol::{model_dir, ModelKind};

use super::{download_error, ResolveError, Resolver};
use crate::config::Config;
use crate::runner::Pool;
use crate::store::aliases::Resolved;
use crate::store::downloads::{Downloads, Started};
use crate::store::pull::{PullRequest, Source};
use crate::store::{quantize, StoreError};

impl Resolver<'_> {
    /// The pull that installs `target`: for a quantized variant of an installed model,
    /// from that model's folder; otherwise from its repo.
    pub fn pull_request(&self, target: &Resolved, revision: Option<String>) -> Option<PullRequest> {
        let quantize = target.quantize.map(|bits| quantize::Spec { bits, group_size: 64 });
        let name = match quantize {
            Some(q) => target.name.strip_suffix(&format!("-{}bit", q.bits)).unwrap_or(&target.name).to_owned(),
            None => target.name.clone(),
        };
        let installed_base = quantize.and_then(|_| self.pool.store().find(&name));
        let source = match (installed_base, &target.repo) {
            // Made from what is installed: no second download, the revision the user has.
            (Some(dir), _) => Source::Folder(dir),
            (None, Some(repo)) => Source::Hub(repo.clone()),
            (None, None) => return None,
        };
        Some(PullRequest {
            source,
            name,
            revision: revision.unwrap_or_else(|| "main".into()),
            kind: None,
            expect_kind: None,
            quantize,
            worker_bin: self.config.paths.worker_binary().to_owned(),
        })
    }

    /// Makes sure `target` is installed, downloading it when config allows; `Ok` means the
    /// store has it now. With `kind`, a model of the other type is refused before anything
    /// is made for it.
    pub async fn ensure_installed(
        &self,
        requested: &str,
        target: &Resolved,
        kind: Option<ModelKind>,
    ) -> Result<(), ResolveError> {
        let cfg = &self.config.models;
        let not_found = || ResolveError::NotFound(requested.to_owned());
        let Some(mut req) = self.pull_request(target, None) else { return Err(not_found()) };
        if !cfg.auto_download {
            return Err(not_found());
        }
        req.expect_kind = kind;
        if let (Some(want), Source::Folder(dir)) = (kind, &req.source) {
            let dir = dir.clone();
            let facts = tokio::task::spawn_blocking(move || model_dir::inspect(&dir)).await.ok().and_then(Result::ok);
            if let Some(facts) = facts.filter(|f| f.kind != want) {
                return Err(ResolveError::WrongKind { model: requested.to_owned(), kind: facts.kind });
            }
        }
        let repo = match &req.source {
            Source::Hub(r) => r.clone(),
            Source::Folder(_) => format!("the installed {}", req.name),
        };
        // Twice at most: a download this request joined may have been started by a request
        // for the other type, and refused for that one only.
        for _ in 0..2 {
            let download = match self.downloads.start(req.clone()) {
                Started::New(d) | Started::Joined(d) => d,
                Started::RecentlyFailed { error, retry_in } => {
                    return Err(match download_error(requested, error) {
                        ResolveError::DownloadFailed(error) => {
                            ResolveError::RecentlyFailed { error, retry_in: retry_in.as_secs().max(1) }
                        }
                        other => other,
                    })
                }
            };
            if !cfg.auto_download_on_request {
                return Err(ResolveError::Downloading(format!(
                    "model `{requested}` is not installed; its download from {repo} started. Retry in a while; \
                     GET /api/ps shows the progress (models.auto_download_on_request is false)"
                )));
            }
            let timeout = Duration::from_secs(cfg.auto_download_timeout);
            match tokio::time::timeout(timeout, download.wait()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(StoreError::WrongKind { kind: found, .. })) if kind.is_none_or(|k| k == found) => continue,
                Ok(Err(e)) => return Err(download_error(requested, e)),
                Err(_) => {
                    let p = download.snapshot();
                    return Err(ResolveError::Downloading(format!(
                        "model `{requested}` is still downloading from {repo} ({} of {} bytes) after models.auto_download_timeout ({}s); retry later",
                        p.completed(),
                        p.total(),
                        timeout.as_secs()
                    )));
                }
            }
        }
        Err(not_found())
    }
}

/// Loads a `models.preload` model at start: resolves it as a request would (a bare name
/// may be searched for on the Hub), downloads it first when it is missing and
/// `models.auto_download` allows, then starts its worker. Runs in its own task; failures
/// are logged.
pub async fn preload(pool: Pool, downloads: Arc<Downloads>, config: Arc<Config>, requested: String) {
    let resolver = Resolver::new(&pool, &downloads, &config);
    let loaded = async {
        let target = resolver.resolve(&requested).await?;
        if pool.store().find(&target.name).is_none() {
            let Some(req) = resolver.pull_request(&target, None).filter(|_| config.models.auto_download) else {
                return Err(
                    "not installed (and not downloadable: models.auto_download is off or the name has no repo)".into(),
                );
            };
            // Waits however long it takes (auto_download_timeout is a request's patience).
            let download = match downloads.start(req) {
                Started::New(d) | Started::Joined(d) => d,
                Started::RecentlyFailed { error, .. } => return Err(error.into()),
            };
            download.wait().await?;
        }
        let entry = pool.get(&target.name).await?;
        entry.runner.mark_preloaded();
        entry.runner.load().await?;
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    };
    if let Err(e) = loaded.await {
        tracing::error!(model = %requested, "cannot preload: {e}");
    }
}
