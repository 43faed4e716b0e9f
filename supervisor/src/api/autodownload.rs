//! From the model name in a request to an installed store name: aliases, repo ids,
//! `-4bit`/`-8bit` variants, and auto-download of what is missing.
//!
//! `models.auto_download` on: a missing model that names a repo (directly or through an
//! alias) starts one shared download. With `auto_download_on_request` the request waits
//! up to `auto_download_timeout` seconds for it; without, it gets an immediate 503 that
//! says the download started. Progress is in `/api/ps` and `/v1/models` (`downloads`).

use std::time::Duration;

use axum::http::StatusCode;

use super::{ApiError, AppState};
use crate::aliases::{self, Resolved};
use crate::downloads::Started;
use crate::pull::{PullError, PullErrorKind, PullRequest, Source};
use crate::quantize;

/// Seconds a client is told to wait before asking again for a model being downloaded.
const RETRY_AFTER_DOWNLOAD: u64 = 10;

/// Resolves a requested name against the store and the alias table.
pub fn resolve_name(state: &AppState, requested: &str) -> Result<Resolved, ApiError> {
    let store = state.pool.store();
    aliases::resolve(requested, &state.config.models.aliases, |n| store.find(n).is_some())
        .map_err(|e| ApiError::invalid_param("model", e).with_code("invalid_model_name"))
}

/// The pull that installs `target`: from its repo, or for a quantized variant of an
/// installed model without one, from that model's folder.
pub fn pull_request(state: &AppState, target: &Resolved, revision: Option<String>) -> Option<PullRequest> {
    let quantize = target.quantize.map(|bits| quantize::Spec { bits, group_size: 64 });
    let name = match quantize {
        Some(q) => target.name.strip_suffix(&format!("-{}bit", q.bits)).unwrap_or(&target.name).to_owned(),
        None => target.name.clone(),
    };
    let source = match (&target.repo, quantize) {
        (Some(repo), _) => Source::Hub(repo.clone()),
        (None, Some(_)) => Source::Folder(state.pool.store().find(&name)?),
        (None, None) => return None,
    };
    Some(PullRequest {
        source,
        name,
        revision: revision.unwrap_or_else(|| "main".into()),
        kind: None,
        quantize,
        worker_bin: crate::worker::default_worker_binary(),
    })
}

/// An API error for a failed pull.
pub fn pull_error(e: &PullError) -> ApiError {
    match e.kind {
        PullErrorKind::NotFound => ApiError::not_found(e.message.clone()).with_code("model_not_found"),
        PullErrorKind::Refused => ApiError::invalid_param("model", e.message.clone()).with_code("model_unsupported"),
        PullErrorKind::Failed => {
            let mut err = ApiError::internal(e.message.clone()).with_code("download_failed");
            err.status = StatusCode::BAD_GATEWAY;
            err
        }
    }
}

/// Makes sure `target` is installed, downloading it when config allows; `Ok` means the
/// store has it now.
pub async fn ensure_installed(state: &AppState, requested: &str, target: &Resolved) -> Result<(), ApiError> {
    let cfg = &state.config.models;
    let Some(req) = pull_request(state, target, None) else { return Err(ApiError::model_not_found(requested)) };
    if !cfg.auto_download {
        return Err(ApiError::model_not_found(requested));
    }
    let repo = match &req.source {
        Source::Hub(r) => r.clone(),
        Source::Folder(p) => p.display().to_string(),
    };
    let download = match state.downloads.start(req) {
        Started::New(d) | Started::Joined(d) => d,
        Started::PreviousFailed(e) => return Err(pull_error(&e)),
    };
    if !cfg.auto_download_on_request {
        return Err(ApiError::unavailable(
            format!(
                "model `{requested}` is not installed; its download from {repo} started. Retry in a while; \
                 GET /api/ps shows the progress (models.auto_download_on_request is false)"
            ),
            RETRY_AFTER_DOWNLOAD,
        )
        .with_code("model_downloading"));
    }
    let timeout = Duration::from_secs(cfg.auto_download_timeout);
    match tokio::time::timeout(timeout, download.wait()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(pull_error(&e)),
        Err(_) => {
            let p = download.snapshot();
            Err(ApiError::unavailable(
                format!(
                    "model `{requested}` is still downloading from {repo} ({} of {} bytes) after models.auto_download_timeout ({}s); retry later",
                    p.completed(),
                    p.total(),
                    timeout.as_secs()
                ),
                RETRY_AFTER_DOWNLOAD,
            )
            .with_code("model_downloading"))
        }
    }
}

/// Loads a `models.preload` model at start: resolves aliases and repo ids, downloads it
/// first when it is missing and `models.auto_download` allows, then starts its worker.
pub async fn preload(state: super::SharedState, requested: String) {
    let loaded = async {
        let target = resolve_name(&state, &requested).map_err(|e| e.message)?;
        if state.pool.store().find(&target.name).is_none() {
            let Some(req) = pull_request(&state, &target, None).filter(|_| state.config.models.auto_download) else {
                return Err("not installed (and not downloadable: models.auto_download is off or it names no repo)".into());
            };
            let download = match state.downloads.start(req) {
                Started::New(d) | Started::Joined(d) => d,
                Started::PreviousFailed(e) => return Err(e.message),
            };
            download.wait().await.map_err(|e| e.message)?;
        }
        let entry = state.pool.get(&target.name).await.map_err(|e| format!("{e:?}"))?;
        entry.runner.mark_preloaded();
        entry.runner.load().await.map_err(|e| e.to_string())
    };
    if let Err(e) = loaded.await {
        tracing::error!(model = %requested, "cannot preload: {e}");
    }
}
