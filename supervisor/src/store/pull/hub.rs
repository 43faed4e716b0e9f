//! Pulling from the Hugging Face Hub through `hf-hub`: the file list at a revision, each
//! wanted file downloaded (or taken from hf-hub's cache) into the staging folder, and
//! verified — size, sha256 where the hub gives it, safetensors layout.
//!
//! Hub access (endpoint, token, what a 401/403/404 means, retries of transient failures)
//! is `store::hub_api`; the download cache is hf-hub's, in `$HF_HOME/hub`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hf_hub::api::tokio::{ApiError as HubError, ApiRepo, Progress};
use hf_hub::{Repo, RepoType};
use serde::Deserialize;

use super::{check_complete, check_model, files, finish, torch_heads, PullEvent, PullOutcome, PullRequest, Reporter};
use crate::store::hub_api::{self, endpoint};
use crate::store::matryoshka;
use crate::store::metadata::{self, ModelMetadata};
use crate::store::staging::{io_problem, Staging};
use crate::store::{Store, StoreError};

/// What the hub says about one repo file (`GET /api/models/{repo}/revision/{rev}?blobs=true`).
#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    sha256: Option<String>,
    size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: String,
    siblings: Vec<Sibling>,
    /// The model card's tags (the Hub answers them with the file list).
    #[serde(default)]
    tags: Vec<String>,
}

/// hf-hub progress → [`PullEvent::File`]. hf-hub clones it for every chunk, so the byte
/// count is shared.
#[derive(Clone)]
struct FileProgress {
    file: String,
    total: u64,
    done: Arc<AtomicU64>,
    report: Reporter,
}

impl Progress for FileProgress {
    async fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
        (self.report)(PullEvent::File { file: self.file.clone(), completed: 0, total: self.total });
    }
    async fn update(&mut self, size: usize) {
        let completed = self.done.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
        (self.report)(PullEvent::File { file: self.file.clone(), completed, total: self.total });
    }
    async fn finish(&mut self) {}
}

/// A download error of hf-hub as a [`StoreError`]: refusals through `hub_api::refusal`,
/// a full or read-only disk said plainly, anything else with its causes.
fn hub_error(repo: &str, what: &str, e: &HubError) -> StoreError {
    match e {
        HubError::RequestError(re) if re.status().is_some_and(|s| s.is_client_error()) => {
            hub_api::refusal(re.status().unwrap().as_u16(), None, repo, what)
        }
        HubError::IoError(io) => StoreError::Failed(format!(
            "{what} into the Hugging Face cache ({}) failed: {}",
            hf_hub::Cache::from_env().path().display(),
            io_problem(io)
        )),
        _ => {
            StoreError::Failed(format!("{what} from {} failed: {}", hub_api::shown_endpoint(), hub_api::error_chain(e)))
        }
    }
}

/// Whether a download error is worth another try: a transient HTTP status, a dropped or
/// refused connection, or hf-hub's lock on the blob held by another download.
fn retryable(e: &HubError) -> bool {
    match e {
        HubError::RequestError(re) => re.status().map(|s| hub_api::transient(s.as_u16())).unwrap_or(false),
        HubError::LockAcquisition(_) => true,
        // hf-hub 0.4.3 does not check the status of the CDN's answer after the hub's
        // redirect (api/tokio.rs, `metadata`): a 429 or 5xx there surfaces as this.
        HubError::MissingHeader(h) => *h == reqwest::header::CONTENT_RANGE,
        _ => false,
    }
}

/// Downloads `file` into hf-hub's cache, resuming and retrying transient failures
/// (`hub_api::wait_before_retry`); returns its path in the cache.
async fn download(
    repo: &ApiRepo,
    repo_id: &str,
    file: &str,
    report: &Reporter,
) -> Result<std::path::PathBuf, StoreError> {
    let what = format!("downloading {file}");
    let mut attempt = 1;
    loop {
        // A fresh byte count per attempt: hf-hub reports a resumed file's bytes again.
        let progress =
            FileProgress { file: file.to_owned(), total: 0, done: Arc::new(AtomicU64::new(0)), report: report.clone() };
        match repo.download_with_progress(file, progress).await {
            Ok(p) => return Ok(p),
            Err(e) if retryable(&e) => match hub_api::wait_before_retry(attempt, None) {
                Some(wait) => {
                    let e = hub_api::error_chain(&e);
                    tracing::warn!(repo = repo_id, attempt, "{what}: {e}; trying again in {:.1}s", wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                None => return Err(hub_api::gave_up(&what, attempt, &hub_api::error_chain(&e), None)),
            },
            Err(e) => return Err(hub_error(repo_id, &what, &e)),
        }
    }
}

/// The file list and commit of `repo_id` at `revision` (`GET /api/models/{repo}/revision/{rev}?blobs=true`).
async fn repo_info(api: &hf_hub::api::tokio::Api, repo: &Repo, repo_id: &str) -> Result<RepoInfo, StoreError> {
    let what = "reading the file list";
    let url = format!("{}/api/{}", endpoint(), repo.api_url());
    let resp = hub_api::get(api, &url, &[("blobs", "true")], what).await?;
    let status = resp.status().as_u16();
    if status >= 400 {
        let code = resp.headers().get("x-error-code").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if code.as_deref() == Some("RevisionNotFound") {
            return Err(StoreError::NotFound(format!(
                "{what}: {repo_id} has no revision {:?} on {} (HTTP {status}); --revision takes a branch, tag or commit of the repo",
                repo.revision(),
                hub_api::shown_endpoint()
            )));
        }
        return Err(hub_api::refusal(status, code.as_deref(), repo_id, what));
    }
    resp.json().await.map_err(|e| {
        StoreError::Failed(format!("{what} from {} failed: {}", hub_api::shown_endpoint(), hub_api::error_chain(&e)))
    })
}

/// Hard-links (same filesystem: no second copy on disk) or copies `from` to `to`.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let from = std::fs::canonicalize(from)?;
    if std::fs::hard_link(&from, to).is_err() {
        std::fs::copy(&from, to)?;
    }
    Ok(())
}

fn sha256_hex(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

pub(super) async fn pull_hub(
    store: &Store,
    req: &PullRequest,
    repo_id: &str,
    installed_name: &str,
    report: Reporter,
) -> Result<PullOutcome, StoreError> {
    report(PullEvent::Status("pulling manifest".into()));
    let api = hub_api::api()?;
    let hub_repo = Repo::with_revision(repo_id.to_owned(), RepoType::Model, req.revision.clone());
    let info = repo_info(&api, &hub_repo, repo_id).await?;
    let repo = api.repo(hub_repo);

    if let Some(existing) = store.find(installed_name).and_then(|p| ModelMetadata::read(&p).map(|m| (p, m))) {
        if existing.1.revision.as_deref() == Some(info.sha.as_str()) && existing.1.repo.as_deref() == Some(repo_id) {
            report(PullEvent::Status(format!("{installed_name} is up to date")));
            return Ok(PullOutcome {
                name: installed_name.to_owned(),
                path: existing.0,
                up_to_date: true,
                metadata: existing.1,
            });
        }
    }

    let names: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let files = files::select(repo_id, &names)?;
    let partial = Staging::create(store, &format!(".partial-{installed_name}-"))?;
    // hf-hub's cache layout (the Python hub's too): models--{owner}--{name}/snapshots/{commit}/{file}.
    let snapshot = hf_hub::Cache::from_env()
        .path()
        .join(format!("models--{}", repo_id.replace('/', "--")))
        .join("snapshots")
        .join(&info.sha);
    let mut checked = false;
    for file in &files {
        if file.ends_with(".safetensors") && !checked {
            check_model(&partial.path, repo_id, req).await?;
            checked = true;
        }
        let sibling = info.siblings.iter().find(|s| &s.rfilename == file);
        report(PullEvent::Status(format!("pulling {file}")));
        let cached = match snapshot.join(file) {
            // Already in hf-hub's cache at this commit (an earlier pull, or Python's hub).
            p if p.is_file() => p,
            _ => download(&repo, repo_id, file, &report).await?,
        };
        if mlx_serve_protocol::torch_heads::is_torch_head(file) {
            verify(&cached, &cached, file, sibling).await?;
            report(PullEvent::Status(format!("converting {file} to safetensors")));
            torch_heads::convert(&cached, &partial.path, file).await?;
            continue;
        }
        let dest = partial.path.join(file);
        link_or_copy(&cached, &dest)
            .map_err(|e| StoreError::Failed(format!("cannot store {file}: {}", io_problem(&e))))?;
        verify(&cached, &dest, file, sibling).await?;
    }
    let facts = check_model(&partial.path, repo_id, req).await?;
    check_complete(&partial.path, repo_id, &facts)?;
    finish(
        store,
        req,
        partial,
        installed_name,
        &facts,
        ModelMetadata {
            source_type: "huggingface".into(),
            source: repo_id.to_owned(),
            repo: Some(repo_id.to_owned()),
            revision: Some(info.sha.clone()),
            matryoshka: matryoshka::from_hub(repo_id, &info.tags),
            ..Default::default()
        },
        report,
    )
    .await
}

/// Size and sha256 (when the hub gives them) of a downloaded file, and the safetensors
/// layout. A bad file is dropped from hf-hub's cache too, so the next pull fetches it again.
async fn verify(cached: &Path, stored: &Path, file: &str, sibling: Option<&Sibling>) -> Result<(), StoreError> {
    let size = std::fs::metadata(stored).map(|m| m.len()).unwrap_or(0);
    let want_size = sibling.and_then(|s| s.lfs.as_ref().and_then(|l| l.size).or(s.size));
    let want_sha = sibling.and_then(|s| s.lfs.as_ref()).and_then(|l| l.sha256.clone());
    let path = stored.to_path_buf();
    let shown = file.to_owned();
    let is_weights = file.ends_with(".safetensors");
    let problem = tokio::task::spawn_blocking(move || -> Option<String> {
        if let Some(want) = want_size {
            if size != want {
                return Some(format!("has {size} bytes, the hub says {want}"));
            }
        }
        if let Some(want) = want_sha {
            match sha256_hex(&path) {
                Ok(got) if got.eq_ignore_ascii_case(&want) => {}
                Ok(got) => return Some(format!("sha256 {got} does not match the hub's {want}")),
                Err(e) => return Some(e.to_string()),
            }
        }
        if is_weights {
            if let Err(e) = metadata::check_safetensors(&path, &shown) {
                return Some(format!("fails the safetensors check ({e})"));
            }
        }
        None
    })
    .await
    .unwrap_or_else(|e| Some(e.to_string()));
    match problem {
        None => Ok(()),
        Some(p) => {
            if let Ok(blob) = std::fs::canonicalize(cached) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(cached);
            Err(StoreError::Failed(format!("downloaded {file} is corrupt: it {p}; run the pull again")))
        }
    }
}
