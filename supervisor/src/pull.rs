//! `pull`: a model from the Hugging Face Hub (through `hf-hub`) or a local folder in HF
//! layout into the store, optionally quantized on the way.
//!
//! - Only the files a model needs are fetched ([`wanted`]); a repo whose weights are
//!   pickle only is refused: mlx-serve loads safetensors and nothing else.
//! - The small files come first, so an unsupported architecture is refused before any
//!   weights are downloaded.
//! - Everything lands in `<store>/.partial-<name>-<pid>/` and is renamed into place when
//!   complete and verified (size, sha256 where the hub gives it, safetensors layout). A
//!   failed or interrupted pull leaves no model folder; the next pull removes stale
//!   partial folders and resumes from hf-hub's cache (`$HF_HOME/hub`, where the bytes
//!   already downloaded are kept in `.sync.part` files).
//! - Hub access follows the Hugging Face conventions: `HF_ENDPOINT`, `HF_HOME` (through
//!   `ApiBuilder::from_env`) and `HF_TOKEN` (read here: hf-hub 0.4 only reads the token
//!   file in `$HF_HOME`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hf_hub::api::tokio::{ApiBuilder, ApiError as HubError, Progress};
use hf_hub::{Repo, RepoType};
use mlx_serve_protocol::model_dir;
use mlx_serve_protocol::ModelKind;
use serde::Deserialize;

use crate::metadata::{self, ModelMetadata};
use crate::quantize;
use crate::store::{validate_name, Store};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Hugging Face repo id, `owner/name`.
    Hub(String),
    /// A folder in Hugging Face layout.
    Folder(PathBuf),
}

#[derive(Debug, Clone)]
pub struct PullRequest {
    pub source: Source,
    /// Store name of the unquantized model (the quantized one gets `-4bit`/`-8bit`).
    pub name: String,
    /// Branch, tag or commit (hub only).
    pub revision: String,
    /// Overrides the detected type.
    pub kind: Option<ModelKind>,
    pub quantize: Option<quantize::Spec>,
    /// `mlx-serve-worker`, which does the quantization.
    pub worker_bin: PathBuf,
}

impl PullRequest {
    /// The store name the pull installs.
    pub fn installed_name(&self) -> String {
        match self.quantize {
            Some(q) => q.variant_name(&self.name),
            None => self.name.clone(),
        }
    }
}

/// Progress of a pull.
#[derive(Debug, Clone)]
pub enum PullEvent {
    Status(String),
    /// Bytes of one file so far (`completed` counts what a resumed download already had).
    File { file: String, completed: u64, total: u64 },
}

pub type Reporter = Arc<dyn Fn(PullEvent) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct PullOutcome {
    pub name: String,
    pub path: PathBuf,
    /// The installed model already had this revision; nothing was downloaded.
    pub up_to_date: bool,
    pub metadata: ModelMetadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullErrorKind {
    /// The repo or folder does not exist (or is private without a token).
    NotFound,
    /// It exists but we will not install it (pickle only, unsupported, bad name).
    Refused,
    /// Network, disk or worker failure.
    Failed,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PullError {
    pub kind: PullErrorKind,
    pub message: String,
}

fn refused(message: impl Into<String>) -> PullError {
    PullError { kind: PullErrorKind::Refused, message: message.into() }
}

fn failed(message: impl Into<String>) -> PullError {
    PullError { kind: PullErrorKind::Failed, message: message.into() }
}

/// Small files a model folder may need, besides `*.safetensors`.
const WANTED_FILES: &[&str] = &[
    "config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

/// Weight formats that unpickle arbitrary Python objects when loaded; never fetched.
const PICKLE_EXTENSIONS: &[&str] = &["bin", "pt", "pth", "ckpt", "pkl", "pickle"];

/// Whether a repo file (path relative to the repo root) is one we fetch: the files above,
/// top-level safetensors, and the config and weights of sentence-transformers module
/// folders (`1_Pooling/config.json`, `2_Dense/model.safetensors`).
pub fn wanted(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.iter().any(|p| validate_name(p).is_err()) {
        return false;
    }
    match parts.as_slice() {
        [file] => WANTED_FILES.contains(file) || file.ends_with(".safetensors"),
        [dir, file] => {
            let module_dir = dir.split_once('_').is_some_and(|(n, rest)| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty()
            });
            module_dir && (*file == "config.json" || file.ends_with(".safetensors"))
        }
        _ => false,
    }
}

fn is_top_level_pickle(path: &str) -> bool {
    !path.contains('/')
        && Path::new(path).extension().and_then(|e| e.to_str()).is_some_and(|e| PICKLE_EXTENSIONS.contains(&e))
}

/// Picks the files to fetch, refusing repos without safetensors weights.
fn select(source: &str, files: &[String]) -> Result<Vec<String>, PullError> {
    if !files.iter().any(|f| f == "config.json") {
        return Err(refused(format!("{source} has no config.json: it is not a model in Hugging Face layout")));
    }
    if !files.iter().any(|f| !f.contains('/') && f.ends_with(".safetensors")) {
        let pickles: Vec<&str> = files.iter().map(String::as_str).filter(|f| is_top_level_pickle(f)).collect();
        return Err(refused(if pickles.is_empty() {
            format!("{source} has no safetensors weights (model.safetensors); mlx-serve loads safetensors only")
        } else {
            format!(
                "{source} has only pickle weights ({}); mlx-serve loads safetensors only, because pickle files can run code when loaded. \
                 Use a repo that has model.safetensors, or convert it with transformers: \
                 AutoModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True), then `mlx-serve pull dir`",
                pickles.join(", ")
            )
        }));
    }
    let mut chosen: Vec<String> = files.iter().filter(|f| wanted(f)).cloned().collect();
    // Small files first: the architecture check needs them, and fails before the weights.
    chosen.sort_by_key(|f| (f.ends_with(".safetensors"), f.clone()));
    Ok(chosen)
}

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

fn hub_error(repo: &str, endpoint: &str, what: &str, e: HubError) -> PullError {
    if let HubError::RequestError(re) = &e {
        match re.status().map(|s| s.as_u16()) {
            Some(401) | Some(403) | Some(404) => {
                return PullError {
                    kind: PullErrorKind::NotFound,
                    message: format!(
                        "{what}: {repo} was not found on {endpoint} (HTTP {}); check the name, or set HF_TOKEN for a private or gated repo",
                        re.status().unwrap().as_u16()
                    ),
                };
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
    failed(format!("{what} from {endpoint} failed: {msg}"))
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

/// A folder `.partial-<name>-<pid>` in the store, removed on drop unless kept.
struct Partial {
    path: PathBuf,
}

impl Partial {
    fn create(store: &Store, name: &str) -> Result<Partial, PullError> {
        let prefix = format!(".partial-{name}-");
        remove_stale(store, &prefix);
        let path = store.dir().join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| failed(format!("cannot create {}: {e}", path.display())))?;
        Ok(Partial { path })
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes `<prefix><pid>` folders of the store whose process is gone (a killed pull or
/// quantization). Folders of live processes, this one included, are in use.
pub fn remove_stale(store: &Store, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(store.dir()) else { return };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(prefix).and_then(|p| p.parse::<i32>().ok()) else { continue };
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Moves a complete folder to `<store>/<name>`, replacing an older copy.
pub fn install(store: &Store, from: &Path, name: &str) -> Result<PathBuf, PullError> {
    let dest = store.path_of(name).map_err(refused)?;
    let old = store.dir().join(format!(".deleting-{name}-{}", std::process::id()));
    let replacing = dest.exists();
    if replacing {
        std::fs::rename(&dest, &old).map_err(|e| failed(format!("cannot replace {}: {e}", dest.display())))?;
    }
    std::fs::rename(from, &dest).map_err(|e| failed(format!("cannot move the model into {}: {e}", dest.display())))?;
    if replacing {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(dest)
}

/// Checks the folder holds a model the worker can run, with the type asked for.
fn check_model(dir: &Path, source: &str, kind: Option<ModelKind>) -> Result<model_dir::ModelFacts, PullError> {
    if let Some(kind) = kind {
        // model_dir reads the declared type from mlx-serve.json.
        let declared = ModelMetadata { kind: kind.as_str().into(), ..Default::default() };
        declared.write(dir).map_err(|e| failed(e.to_string()))?;
    }
    model_dir::inspect(dir).map_err(|e| refused(format!("{source}: {e}")))
}

/// Runs a pull to the end.
pub async fn pull(store: &Store, req: &PullRequest, report: Reporter) -> Result<PullOutcome, PullError> {
    validate_name(&req.name).map_err(refused)?;
    let installed_name = req.installed_name();
    validate_name(&installed_name).map_err(refused)?;
    std::fs::create_dir_all(store.dir()).map_err(|e| failed(format!("cannot create {}: {e}", store.dir().display())))?;
    match &req.source {
        Source::Hub(repo) => pull_hub(store, req, repo, &installed_name, report).await,
        Source::Folder(dir) => pull_folder(store, req, dir, &installed_name, report).await,
    }
}

async fn pull_hub(
    store: &Store,
    req: &PullRequest,
    repo_id: &str,
    installed_name: &str,
    report: Reporter,
) -> Result<PullOutcome, PullError> {
    let endpoint = endpoint();
    report(PullEvent::Status("pulling manifest".into()));
    let mut builder = ApiBuilder::from_env().with_progress(false);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| failed(format!("cannot set up the Hugging Face client: {e}")))?;
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
    let files = select(repo_id, &names)?;
    let partial = Partial::create(store, installed_name)?;
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
        link_or_copy(&cached, &dest).map_err(|e| failed(format!("cannot store {file}: {e}")))?;
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
async fn verify(cached: &Path, stored: &Path, file: &str, sibling: Option<&Sibling>) -> Result<(), PullError> {
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
                return Some(e);
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
            Err(failed(format!("downloaded {file} is corrupt: it {p}; run the pull again")))
        }
    }
}

async fn pull_folder(
    store: &Store,
    req: &PullRequest,
    dir: &Path,
    installed_name: &str,
    report: Reporter,
) -> Result<PullOutcome, PullError> {
    let source = dir.display().to_string();
    let dir = std::fs::canonicalize(dir).map_err(|e| PullError {
        kind: PullErrorKind::NotFound,
        message: format!("{source}: {e}"),
    })?;
    if !dir.is_dir() {
        return Err(PullError { kind: PullErrorKind::NotFound, message: format!("{source} is not a folder") });
    }
    if store.find(installed_name).is_some() {
        return Err(refused(format!(
            "a model named {installed_name} is already installed; choose another --name or `mlx-serve remove {installed_name}` first"
        )));
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| failed(format!("{source}: {e}")))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            for sub in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                names.push(format!("{name}/{}", sub.file_name().to_string_lossy()));
            }
        } else {
            names.push(name);
        }
    }
    let files = select(&source, &names)?;
    let partial = Partial::create(store, installed_name)?;
    report(PullEvent::Status(format!("copying from {}", dir.display())));
    let mut checked = false;
    for file in &files {
        if file.ends_with(".safetensors") && !checked {
            check_model(&partial.path, &source, req.kind)?;
            checked = true;
        }
        let from = dir.join(file);
        let to = partial.path.join(file);
        let total = std::fs::metadata(&from).map(|m| m.len()).unwrap_or(0);
        report(PullEvent::File { file: file.clone(), completed: 0, total });
        let (f, t) = (from.clone(), to.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(t.parent().unwrap())?;
            std::fs::copy(f, t)
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(format!("cannot copy {}: {e}", from.display())))?;
        report(PullEvent::File { file: file.clone(), completed: total, total });
        if file.ends_with(".safetensors") {
            metadata::safetensors_header(&to).map_err(refused)?;
        }
    }
    let facts = check_model(&partial.path, &source, req.kind)?;
    let meta = ModelMetadata {
        source_type: "folder".into(),
        source: dir.display().to_string(),
        // A folder pulled before keeps saying which repo it came from.
        repo: ModelMetadata::read(&dir).and_then(|m| m.repo),
        revision: ModelMetadata::read(&dir).and_then(|m| m.revision),
        ..Default::default()
    };
    finish(store, req, partial, installed_name, &facts, meta, report).await
}

/// Writes metadata, quantizes when asked, and moves the model into place.
async fn finish(
    store: &Store,
    req: &PullRequest,
    partial: Partial,
    installed_name: &str,
    facts: &model_dir::ModelFacts,
    mut meta: ModelMetadata,
    report: Reporter,
) -> Result<PullOutcome, PullError> {
    report(PullEvent::Status("verifying sha256 digest".into()));
    meta.kind = facts.kind.as_str().into();
    meta.architecture = facts.architecture.clone();
    meta.dtype = metadata::dominant_dtype(&partial.path).map_err(refused)?;
    meta.original_size = metadata::weights_size(&partial.path);
    meta.created = metadata::now_rfc3339();
    meta.quantization = facts
        .config
        .get("quantization")
        .and_then(|q| Some(metadata::Quantization { bits: q["bits"].as_u64()? as u8, group_size: q["group_size"].as_u64()? as u32 }));
    meta.write(&partial.path).map_err(|e| failed(format!("cannot write metadata: {e}")))?;
    report(PullEvent::Status("writing manifest".into()));
    let (path, meta) = match req.quantize {
        Some(spec) => {
            report(PullEvent::Status(format!("quantizing to {}-bit (group size {})", spec.bits, spec.group_size)));
            quantize::into_store(store, &req.worker_bin, &partial.path, installed_name, spec, &meta)
                .await
                .map_err(failed)?
        }
        None => (install(store, &partial.path, installed_name)?, meta),
    };
    drop(partial);
    Ok(PullOutcome { name: installed_name.to_owned(), path, up_to_date: false, metadata: meta })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_needed_files_are_fetched() {
        for yes in ["config.json", "model.safetensors", "model-00001-of-00002.safetensors", "1_Pooling/config.json", "2_Dense/model.safetensors", "vocab.txt"] {
            assert!(wanted(yes), "{yes}");
        }
        for no in ["pytorch_model.bin", "onnx/model.onnx", "onnx/model.safetensors", "README.md", "../config.json", "1_Pooling/../../x", "a/b/c.json", ".gitattributes"] {
            assert!(!wanted(no), "{no}");
        }
    }

    #[test]
    fn pickle_only_repos_are_refused() {
        let files = vec!["config.json".to_string(), "pytorch_model.bin".into(), "tokenizer.json".into()];
        let e = select("acme/old", &files).unwrap_err();
        assert_eq!(e.kind, PullErrorKind::Refused);
        assert!(e.message.contains("only pickle weights (pytorch_model.bin)"), "{}", e.message);
        let files = vec!["config.json".to_string(), "model.safetensors".into(), "pytorch_model.bin".into()];
        assert_eq!(select("acme/new", &files).unwrap(), vec!["config.json".to_string(), "model.safetensors".into()]);
    }
}
