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
//! - A pull holds the install lock of its repo (or, from a folder, of its name) for its
//!   whole run (`store::lock`): a second pull of the same model waits, then finds it
//!   installed.
//!
//! - Task heads shipped as `torch.save` files (bge-m3's `sparse_linear.pt`,
//!   `colbert_linear.pt`) are read without running pickle code and stored as safetensors
//!   under `heads/` (`torch_heads.rs`); a file that is more than tensors fails the pull.
//!
//! `hub.rs` pulls from the Hub, `folder.rs` imports a folder, `files.rs` picks the files;
//! both sources end in [`finish`] here (metadata, optional quantization, install).

pub(crate) mod files;
mod folder;
mod hub;
mod torch_heads;
mod worker_check;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mlx_serve_protocol::model_dir;
use mlx_serve_protocol::ModelKind;

use crate::store::lock;
use crate::store::metadata::{self, ModelMetadata};
use crate::store::quantize;
use crate::store::staging::{install, io_problem, Staging};
use crate::store::{validate_name, Store, StoreError};

pub use files::wanted;

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
    /// Refuse the model, before its weights are fetched, unless it is of this type (a
    /// request to an endpoint of one type must not install a model of the other).
    pub expect_kind: Option<ModelKind>,
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
    File {
        file: String,
        completed: u64,
        total: u64,
    },
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

/// Checks the folder holds a model the worker runs exactly as described, with the type
/// asked for.
async fn check_model(dir: &Path, source: &str, req: &PullRequest) -> Result<model_dir::ModelFacts, StoreError> {
    if let Some(kind) = req.kind {
        // model_dir reads the declared type from mlx-serve.json.
        let declared = ModelMetadata { kind: kind.as_str().into(), ..Default::default() };
        declared.write(dir).map_err(|e| StoreError::Failed(io_problem(&e)))?;
    }
    let facts = model_dir::inspect(dir).map_err(|e| StoreError::Refused(format!("{source}: {e}")))?;
    worker_check::check(&req.worker_bin, dir, source).await?;
    match req.expect_kind {
        Some(want) if want != facts.kind => {
            Err(StoreError::WrongKind { model: req.installed_name(), kind: facts.kind })
        }
        _ => Ok(facts),
    }
}

/// What only the complete folder can show: an inference-free model's query weights and
/// tokenizer load (protocol `st_router.rs`).
fn check_complete(dir: &Path, source: &str, facts: &model_dir::ModelFacts) -> Result<(), StoreError> {
    crate::tokenize::StaticQueryEncoder::load(dir, facts)
        .map(|_| ())
        .map_err(|e| StoreError::Refused(format!("{source}: {}", e.to_string().replace(&*dir.to_string_lossy(), ""))))
}

/// Runs a pull to the end.
pub async fn pull(store: &Store, req: &PullRequest, report: Reporter) -> Result<PullOutcome, StoreError> {
    validate_name(&req.name)?;
    let installed_name = req.installed_name();
    validate_name(&installed_name)?;
    std::fs::create_dir_all(store.dir())
        .map_err(|e| StoreError::Failed(format!("cannot create {}: {}", store.dir().display(), io_problem(&e))))?;
    let key = match &req.source {
        Source::Hub(repo) => repo.clone(),
        Source::Folder(_) => installed_name.clone(),
    };
    let waiting = report.clone();
    let message = format!("waiting for another pull of {key} to finish");
    let _lock = lock::acquire(store, &key, move || waiting(PullEvent::Status(message))).await?;
    match (&req.source, req.quantize) {
        (Source::Hub(repo), _) => hub::pull_hub(store, req, repo, &installed_name, report).await,
        (Source::Folder(dir), Some(spec)) if dir.parent() == Some(store.dir()) => {
            quantize_installed(store, req, dir, spec, report).await
        }
        (Source::Folder(dir), _) => folder::pull_folder(store, req, dir, &installed_name, report).await,
    }
}

/// A quantized variant of a model in the store, made straight from its folder.
async fn quantize_installed(
    store: &Store,
    req: &PullRequest,
    dir: &Path,
    spec: quantize::Spec,
    report: Reporter,
) -> Result<PullOutcome, StoreError> {
    let installed_name = req.installed_name();
    if let Some(path) = store.find(&installed_name) {
        // Another pull made it while this one waited for the lock.
        let metadata = ModelMetadata::read(&path).unwrap_or_default();
        return Ok(PullOutcome { name: installed_name, path, up_to_date: true, metadata });
    }
    let facts = model_dir::inspect(dir).map_err(|e| StoreError::Refused(format!("{}: {e}", req.name)))?;
    if req.expect_kind.is_some_and(|k| k != facts.kind) {
        return Err(StoreError::WrongKind { model: installed_name, kind: facts.kind });
    }
    report(PullEvent::Status(format!("quantizing {} to {}-bit (group size {})", req.name, spec.bits, spec.group_size)));
    let (path, metadata) = quantize::installed_variant(store, &req.worker_bin, dir, &req.name, spec, None).await?;
    Ok(PullOutcome { name: installed_name, path, up_to_date: false, metadata })
}

/// Writes metadata, quantizes when asked, and moves the model into place.
async fn finish(
    store: &Store,
    req: &PullRequest,
    partial: Staging,
    installed_name: &str,
    facts: &model_dir::ModelFacts,
    mut meta: ModelMetadata,
    report: Reporter,
) -> Result<PullOutcome, StoreError> {
    report(PullEvent::Status("verifying sha256 digest".into()));
    meta.kind = facts.kind.as_str().into();
    meta.architecture = facts.architecture.clone();
    meta.dtype = metadata::dominant_dtype(&partial.path)?;
    meta.original_size = metadata::weights_size(&partial.path);
    meta.created = metadata::now_rfc3339();
    meta.name = installed_name.to_owned();
    meta.quantization =
        facts.config.get("quantization").and_then(|q| Some(metadata::quantization_label(q["bits"].as_u64()? as u8)));
    meta.write(&partial.path).map_err(|e| StoreError::Failed(format!("cannot write metadata: {}", io_problem(&e))))?;
    report(PullEvent::Status("writing manifest".into()));
    let (path, meta) = match req.quantize {
        Some(spec) => {
            report(PullEvent::Status(format!("quantizing to {}-bit (group size {})", spec.bits, spec.group_size)));
            quantize::into_store(store, &req.worker_bin, &partial.path, installed_name, spec, None, &meta).await?
        }
        None => (install(store, &partial.path, installed_name)?, meta),
    };
    drop(partial);
    Ok(PullOutcome { name: installed_name.to_owned(), path, up_to_date: false, metadata: meta })
}
