//! Installing a model a request names but the store lacks: aliases and repo ids become a
//! pull, and `-4bit`/`-8bit` variants of an installed model without a repo are made from
//! its folder.
//!
//! `models.auto_download` on: a missing model that names a repo (directly or through an
//! alias) starts one shared download (`store::downloads`). With
//! `auto_download_on_request` the request waits up to `auto_download_timeout` seconds for
//! it; without, it gets an immediate 503 that says the download started. Progress is in
//! `/api/ps` and `/v1/models` (`downloads`).

use std::sync::Arc;
use std::time::Duration;

use super::{ResolveError, Resolver};
use crate::config::Config;
use crate::paths;
use crate::runner::Pool;
use crate::store::aliases::Resolved;
use crate::store::downloads::{Downloads, Started};
use crate::store::pull::{PullRequest, Source};
use crate::store::quantize;

impl Resolver<'_> {
    /// The pull that installs `target`: from its repo, or for a quantized variant of an
    /// installed model without one, from that model's folder.
    pub fn pull_request(&self, target: &Resolved, revision: Option<String>) -> Option<PullRequest> {
        let quantize = target.quantize.map(|bits| quantize::Spec { bits, group_size: 64 });
        let name = match quantize {
            Some(q) => target.name.strip_suffix(&format!("-{}bit", q.bits)).unwrap_or(&target.name).to_owned(),
            None => target.name.clone(),
        };
        let source = match (&target.repo, quantize) {
            (Some(repo), _) => Source::Hub(repo.clone()),
            (None, Some(_)) => Source::Folder(self.pool.store().find(&name)?),
            (None, None) => return None,
        };
        Some(PullRequest {
            source,
            name,
            revision: revision.unwrap_or_else(|| "main".into()),
            kind: None,
            quantize,
            worker_bin: paths::worker_binary(),
        })
    }

    /// Makes sure `target` is installed, downloading it when config allows; `Ok` means the
    /// store has it now.
    pub async fn ensure_installed(&self, requested: &str, target: &Resolved) -> Result<(), ResolveError> {
        let cfg = &self.config.models;
        let not_found = || ResolveError::NotFound(requested.to_owned());
        let Some(req) = self.pull_request(target, None) else { return Err(not_found()) };
        if !cfg.auto_download {
            return Err(not_found());
        }
        let repo = match &req.source {
            Source::Hub(r) => r.clone(),
            Source::Folder(p) => p.display().to_string(),
        };
        let download = match self.downloads.start(req) {
            Started::New(d) | Started::Joined(d) => d,
            Started::PreviousFailed(e) => return Err(ResolveError::DownloadFailed(e)),
        };
        if !cfg.auto_download_on_request {
            return Err(ResolveError::Downloading(format!(
                "model `{requested}` is not installed; its download from {repo} started. Retry in a while; \
                 GET /api/ps shows the progress (models.auto_download_on_request is false)"
            )));
        }
        let timeout = Duration::from_secs(cfg.auto_download_timeout);
        match tokio::time::timeout(timeout, download.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ResolveError::DownloadFailed(e)),
            Err(_) => {
                let p = download.snapshot();
                Err(ResolveError::Downloading(format!(
                    "model `{requested}` is still downloading from {repo} ({} of {} bytes) after models.auto_download_timeout ({}s); retry later",
                    p.completed(),
                    p.total(),
                    timeout.as_secs()
                )))
            }
        }
    }
}

/// Loads a `models.preload` model at start: resolves aliases and repo ids, downloads it
/// first when it is missing and `models.auto_download` allows, then starts its worker.
/// Runs in its own task; failures are logged.
pub async fn preload(pool: Pool, downloads: Arc<Downloads>, config: Arc<Config>, requested: String) {
    let resolver = Resolver::new(&pool, &downloads, &config);
    let loaded = async {
        let target = resolver.resolve_name(&requested)?;
        if pool.store().find(&target.name).is_none() {
            let Some(req) = resolver.pull_request(&target, None).filter(|_| config.models.auto_download) else {
                return Err("not installed (and not downloadable: models.auto_download is off or it names no repo)".to_owned().into());
            };
            let download = match downloads.start(req) {
                Started::New(d) | Started::Joined(d) => d,
                Started::PreviousFailed(e) => return Err(e.into()),
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
