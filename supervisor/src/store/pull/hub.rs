//! Pulling from the Hugging Face Hub through `hf-hub`: the file list at a revision, each
//! wanted file downloaded (or taken from hf-hub's cache) into the staging folder, and
//! verified — size, sha256 where the hub gives it, safetensors layout.
//!
//! Hub access follows the Hugging Face conventions: `HF_ENDPOINT`, `HF_HOME` (through
//! `ApiBuilder::from_env`) and `HF_TOKEN` (read here: hf-hub 0.4 only reads the token file
//! in `$HF_HOME`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hf_hub::api::tokio::{ApiBuilder, ApiError as HubError, Progress};
use hf_hub::{Repo, RepoType};
use serde::Deserialize;

use super::{check_model, files, finish, PullEvent, PullOutcome, PullRequest, Reporter};
use crate::store::metadata::{self, ModelMetadata};
use crate::store::staging::Staging;
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

fn hub_error(repo: &str, endpoint: &str, what: &str, e: HubError) -> StoreError {
    if let HubError::RequestError(re) = &e {
        match re.status().map(|s| s.as_u16()) {
            Some(401) | Some(403) | Some(404) => {
                return StoreError::NotFound(format!(
                    "{what}: {repo} was not found on {endpoint} (HTTP {}); check the name, or set HF_TOKEN for a private or gated repo",
                    re.status().unwrap().as_u16()
                ));
            }
            _ => {}
        }
    }
    // reqwest's Display hides the cause ("error decoding response body"); show the chain.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    StoreError::Failed(format!("{what} from {endpoint} failed: {msg}"))
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| "https://huggingface.co".into())
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
    let endpoint = endpoint();
    report(PullEvent::Status("pulling manifest".into()));
    let mut builder = ApiBuilder::from_env().with_progress(false);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| StoreError::Failed(format!("cannot set up the Hugging Face client: {e}")))?;
    let repo = api.repo(Repo::with_revision(repo_id.to_owned(), RepoType::Model, req.revision.clone()));
    let info: RepoInfo = async {
        repo.info_request().query(&[("blobs", "true")]).send().await?.error_for_status()?.json().await
    }
    .await
    .map_err(|e| hub_error(repo_id, &endpoint, "reading the file list", HubError::RequestError(e)))?;

    if let Some(existing) = store.find(installed_name).and_then(|p| ModelMetadata::read(&p).map(|m| (p, m))) {
        if existing.1.revision.as_deref() == Some(info.sha.as_str()) && existing.1.repo.as_deref() == Some(repo_id) {
            report(PullEvent::Status(format!("{installed_name} is up to date")));
            return Ok(PullOutcome { name: installed_name.to_owned(), path: existing.0, up_to_date: true, metadata: existing.1 });
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
            check_model(&partial.path, repo_id, req.kind)?;
            checked = true;
        }
        let sibling = info.siblings.iter().find(|s| &s.rfilename == file);
        let progress =
            FileProgress { file: file.clone(), total: 0, done: Arc::new(AtomicU64::new(0)), report: report.clone() };
        report(PullEvent::Status(format!("pulling {file}")));
        let cached = match snapshot.join(file) {
            // Already in hf-hub's cache at this commit (an earlier pull, or Python's hub).
            p if p.is_file() => p,
            _ => repo
                .download_with_progress(file, progress)
                .await
                .map_err(|e| hub_error(repo_id, &endpoint, &format!("downloading {file}"), e))?,
        };
        let dest = partial.path.join(file);
        link_or_copy(&cached, &dest).map_err(|e| StoreError::Failed(format!("cannot store {file}: {e}")))?;
        verify(&cached, &dest, file, sibling).await?;
    }
    let facts = check_model(&partial.path, repo_id, req.kind)?;
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
            if let Err(e) = metadata::safetensors_header(&path) {
                return Some(e.to_string());
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
