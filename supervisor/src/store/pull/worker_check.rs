//! Asking the worker, before any weight is fetched, whether it computes a model exactly as
//! the model's files describe (`mlx-serve-worker check`): the worker owns each
//! architecture's typed config, so it alone knows which fields its code honours. A config
//! field, module or head it would ignore is refused here, by name, instead of loading and
//! answering with vectors of another function.

use std::path::Path;

use serde::Deserialize;

use crate::store::StoreError;

#[derive(Deserialize)]
struct Verdict {
    ok: bool,
    #[serde(default)]
    reason: String,
}

/// Refuses the model folder `dir` (what pull has of it so far: config and module files)
/// unless `worker_bin check` accepts it.
pub async fn check(worker_bin: &Path, dir: &Path, source: &str) -> Result<(), StoreError> {
    let out = tokio::process::Command::new(worker_bin)
        .arg("check")
        .arg("--model")
        .arg(dir)
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            tracing::warn!(worker = %worker_bin.display(), "cannot run the worker to check a model: {e}");
            StoreError::Failed(
                "cannot run mlx-serve-worker to check the model (is it installed beside mlx-serve?)".into(),
            )
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict: Option<Verdict> = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok());
    match verdict {
        Some(v) if v.ok => Ok(()),
        Some(v) => Err(StoreError::Refused(format!("{source}: {}", v.reason))),
        None => {
            tracing::warn!(status = %out.status, "model check failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            Err(StoreError::Failed("the worker could not check the model (see the server log)".into()))
        }
    }
}
