//! Importing a local folder in Hugging Face layout (`mlx-serve pull ./dir`): the wanted
//! files are copied into the staging folder and checked like a download.

use std::path::Path;

use super::{check_complete, check_model, files, finish, torch_heads, PullEvent, PullOutcome, PullRequest, Reporter};
use crate::store::matryoshka;
use crate::store::metadata::{self, ModelMetadata};
use crate::store::staging::Staging;
use crate::store::{Store, StoreError};

pub(super) async fn pull_folder(
    store: &Store,
    req: &PullRequest,
    dir: &Path,
    installed_name: &str,
    report: Reporter,
) -> Result<PullOutcome, StoreError> {
    let source = dir.display().to_string();
    let dir = std::fs::canonicalize(dir).map_err(|e| StoreError::NotFound(format!("{source}: {e}")))?;
    if !dir.is_dir() {
        return Err(StoreError::NotFound(format!("{source} is not a folder")));
    }
    if store.find(installed_name).is_some() {
        return Err(StoreError::Refused(format!(
            "a model named {installed_name} is already installed; choose another --name or `mlx-serve remove {installed_name}` first"
        )));
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| StoreError::Failed(format!("{source}: {e}")))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            for sub in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                names.push(format!("{name}/{}", sub.file_name().to_string_lossy()));
            }
        } else {
            names.push(name);
        }
    }
    let files = files::select(&source, &names)?;
    let partial = Staging::create(store, &format!(".partial-{installed_name}-"))?;
    report(PullEvent::Status(format!("copying from {}", dir.display())));
    let mut checked = false;
    for file in &files {
        if file.ends_with(".safetensors") && !checked {
            check_model(&partial.path, &source, req).await?;
            checked = true;
        }
        let from = dir.join(file);
        if mlx_serve_protocol::torch_heads::is_torch_head(file) {
            report(PullEvent::Status(format!("converting {file} to safetensors")));
            torch_heads::convert(&from, &partial.path, file).await?;
            continue;
        }
        let to = partial.path.join(file);
        let total = std::fs::metadata(&from).map(|m| m.len()).unwrap_or(0);
        report(PullEvent::File { file: file.clone(), completed: 0, total });
        let (f, t) = (from.clone(), to.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(t.parent().unwrap())?;
            std::fs::copy(f, t)
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))?
        .map_err(|e| StoreError::Failed(format!("cannot copy {}: {e}", from.display())))?;
        report(PullEvent::File { file: file.clone(), completed: total, total });
        if file.ends_with(".safetensors") {
            metadata::check_safetensors(&to, file)?;
        }
    }
    let facts = check_model(&partial.path, &source, req).await?;
    check_complete(&partial.path, &source, &facts)?;
    let meta = ModelMetadata {
        source_type: "folder".into(),
        source: dir.display().to_string(),
        // A folder pulled before keeps saying which repo it came from.
        repo: ModelMetadata::read(&dir).and_then(|m| m.repo),
        revision: ModelMetadata::read(&dir).and_then(|m| m.revision),
        // Its model card, or what a folder pulled before recorded.
        matryoshka: std::fs::read_to_string(dir.join("README.md"))
            .ok()
            .and_then(|card| matryoshka::from_card(&card))
            .or_else(|| ModelMetadata::read(&dir).and_then(|m| m.matryoshka)),
        ..Default::default()
    };
    finish(store, req, partial, installed_name, &facts, meta, report).await
}
