//! `quantize`: an MLX-quantized copy of a stored model, `NAME-4bit` / `NAME-8bit`.
//!
//! The supervisor never links MLX, so the work is done by `mlx-serve-worker quantize
//! --src DIR --dst DIR --bits B --group-size G [--recipe R] --eval FILE`
//! (worker/src/quantize/), which prints one JSON report line
//! (`mlx_serve_protocol::quantization::QuantizeReport`): sizes, exactly what was quantized
//! and how, and the copy's quality against the original on the built-in set
//! (`quality_set.rs`, tokenized here). The worker writes into a `.quantizing-*` folder of
//! the store; metadata is added there and the folder is renamed into place, so a failed or
//! killed quantization leaves no half model. A model that is quantized already is refused
//! before the worker starts; the worker's error is logged in full and reported in one line.

use std::path::{Path, PathBuf};

use mlx_serve_protocol::model_dir;
use mlx_serve_protocol::quantization::QuantizeReport;

use super::metadata::{self, ModelMetadata};
use super::quality_set;
use super::staging::{install, Staging};
use super::{Store, StoreError};

/// Bits and group size (MLX affine quantization supports 32, 64 and 128 per group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub bits: u8,
    pub group_size: u32,
}

impl Spec {
    pub fn new(bits: u8, group_size: u32) -> Result<Spec, StoreError> {
        if !matches!(bits, 4 | 8) {
            return Err(StoreError::Invalid(format!("bits must be 4 or 8, not {bits}")));
        }
        if !matches!(group_size, 32 | 64 | 128) {
            return Err(StoreError::Invalid(format!("group size must be 32, 64 or 128, not {group_size}")));
        }
        Ok(Spec { bits, group_size })
    }

    /// Parses `4bit`, `8bit`, `4` or `8` (the `--quantize` values).
    pub fn parse_bits(s: &str) -> Result<u8, StoreError> {
        match s.trim().trim_end_matches("bit").trim_end_matches('-') {
            "4" => Ok(4),
            "8" => Ok(8),
            _ => Err(StoreError::Invalid(format!("quantization must be 4bit or 8bit, not {s:?}"))),
        }
    }

    /// `NAME-4bit`.
    pub fn variant_name(&self, name: &str) -> String {
        format!("{name}-{}bit", self.bits)
    }
}

/// The quantized variant `spec.variant_name(name)` of the installed model `name` (folder
/// `src`), described from its metadata or, for a folder placed by hand, its own files;
/// `recipe` as [`into_store`] takes it.
pub async fn installed_variant(
    store: &Store,
    worker_bin: &Path,
    src: &Path,
    name: &str,
    spec: Spec,
    recipe: Option<&str>,
) -> Result<(PathBuf, ModelMetadata), StoreError> {
    let mut base = ModelMetadata::read(src).unwrap_or_default();
    if base.kind.is_empty() {
        let facts = model_dir::inspect(src).map_err(|e| StoreError::Refused(format!("{name}: {e}")))?;
        base.kind = facts.kind.as_str().into();
        base.architecture = facts.architecture;
        base.dtype = metadata::dominant_dtype(src).unwrap_or_default();
    }
    base.source_type = "quantize".into();
    base.source = name.to_owned();
    into_store(store, worker_bin, src, &spec.variant_name(name), spec, recipe, &base).await
}

/// Refuses to quantize a model whose config.json already has a `quantization` block.
fn check_not_quantized(src: &Path, name: &str) -> Result<(), StoreError> {
    let config: serde_json::Value = std::fs::read_to_string(src.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    match config.get("quantization").filter(|q| !q.is_null()) {
        Some(q) => Err(StoreError::Refused(format!(
            "{} is quantized already ({}-bit); quantize the original model instead",
            src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| name.to_owned()),
            q["bits"]
        ))),
        None => Ok(()),
    }
}

/// The worker's error in one line, without file paths of the store: the last line that is
/// not part of a backtrace, or what the OS said when the disk filled up. MLX reports a
/// failed write without the OS's reason (`[write] Unable to write N bytes to file`,
/// mlx/io); a write fails for want of space or quota nearly always, so it is reported as
/// that, with `free`, the space left on the store's disk once the worker gave up.
fn worker_error(stderr: &str, store: &Store, free: Option<u64>) -> String {
    if stderr.contains("No space left on device") || stderr.contains("os error 28") {
        return "the disk holding the model store is full; free some space and try again".into();
    }
    if stderr.contains("Unable to write ") {
        let free = free.map(|f| format!(", {} free once it gave up", indicatif::HumanBytes(f))).unwrap_or_default();
        return format!(
            "the disk holding the model store is full or over quota (MLX could not write the quantized copy{free}); \
             free some space and try again"
        );
    }
    if stderr.contains("File too large") || stderr.contains("os error 27") {
        return "a file size limit was reached writing the quantized copy (ulimit -f)".into();
    }
    let line = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            !l.starts_with("Stack backtrace")
                && !l.starts_with("at ")
                && !l.chars().next().is_some_and(|c| c.is_ascii_digit())
        })
        .find(|l| l.starts_with("Error:"))
        .or_else(|| stderr.lines().map(str::trim).rfind(|l| !l.is_empty()))
        .unwrap_or("no message")
        .trim_start_matches("Error:")
        .trim();
    line.replace(&store.dir().display().to_string(), "<models>")
}

/// Bytes free for us on the disk holding `dir`.
// The statvfs counts are u64 on Linux and narrower on macOS: the casts are for the latter.
#[allow(clippy::unnecessary_cast)]
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// Recipes `mlx-serve quantize --recipe` offers (worker/src/quantize/plan.rs); `None` is
/// the worker's default for the bits (mixed at 4, uniform at 8).
pub const RECIPES: [&str; 2] = ["mixed", "uniform"];

/// Quantizes the model folder `src` into the store as `name` with `recipe` (`None`: the
/// worker's default for the bits), with metadata `base` (its source fields set by the
/// caller) plus the quantization and sizes. Returns the installed folder and its metadata.
pub async fn into_store(
    store: &Store,
    worker_bin: &Path,
    src: &Path,
    name: &str,
    spec: Spec,
    recipe: Option<&str>,
    base: &ModelMetadata,
) -> Result<(PathBuf, ModelMetadata), StoreError> {
    let failed = StoreError::Failed;
    check_not_quantized(src, name)?;
    if !worker_bin.is_file() {
        return Err(failed(format!(
            "quantization needs the worker binary, {} was not found (set MLX_SERVE_WORKER_BIN)",
            worker_bin.display()
        )));
    }
    let facts = model_dir::inspect(src).map_err(|e| failed(format!("{name}: {e}")))?;
    let eval = quality_set::tokenized(src, &facts).map_err(|e| failed(format!("tokenizing the quality check: {e}")))?;
    let staging = Staging::create(store, &format!(".quantizing-{name}-"))?;
    let dst = staging.path.join(name);
    let eval_path = staging.path.join("quality-set.json");
    let eval_json = serde_json::to_vec(&eval).map_err(|e| failed(e.to_string()))?;
    std::fs::write(&eval_path, eval_json).map_err(|e| failed(format!("cannot write {}: {e}", eval_path.display())))?;
    let mut cmd = tokio::process::Command::new(worker_bin);
    cmd.arg("quantize")
        .arg("--src")
        .arg(src)
        .arg("--dst")
        .arg(&dst)
        .args(["--bits", &spec.bits.to_string(), "--group-size", &spec.group_size.to_string()])
        .arg("--eval")
        .arg(&eval_path)
        // Its error, not a stack trace (the user's shell may set RUST_BACKTRACE).
        .env("RUST_BACKTRACE", "0");
    if let Some(recipe) = recipe {
        cmd.args(["--recipe", recipe]);
    }
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| failed(format!("cannot run {}: {e}", worker_bin.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        tracing::warn!(model = name, status = %out.status, "quantization failed: {}", stderr.trim());
        let free = free_bytes(store.dir());
        return Err(failed(format!("quantizing to {name} failed: {}", worker_error(&stderr, store, free))));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: QuantizeReport = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| failed(format!("quantizing to {name} failed: the worker printed no report")))?;
    let meta = ModelMetadata {
        name: name.to_owned(),
        quantization: Some(metadata::quantization_label(spec.bits)),
        original_size: report.original_size,
        quantized_size: Some(report.quantized_size),
        quantization_details: Some(report.details),
        quality: report.quality,
        created: metadata::now_rfc3339(),
        ..base.clone()
    };
    meta.write(&dst).map_err(|e| failed(format!("cannot write metadata: {}", super::staging::io_problem(&e))))?;
    let path = install(store, &dst, name)?;
    Ok((path, meta))
}

/// What `mlx-serve show` prints for a quantized model: how it was made and its measured
/// quality, a few lines.
pub fn summary(meta: &ModelMetadata) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(d) = &meta.quantization_details {
        lines.push(format!(
            "{} ({} recipe), group size {}, scales {}",
            meta.quantization.as_deref().unwrap_or("?"),
            d.recipe,
            d.group_size,
            d.scales_dtype
        ));
        if !d.note.is_empty() {
            lines.push(format!("  {}", d.note));
        }
        for g in &d.quantized {
            lines.push(format!("  {}-bit: {} matrices", g.bits, g.tensors.len()));
        }
        for k in &d.kept {
            let names =
                if k.tensors.len() <= 3 { k.tensors.join(", ") } else { format!("{} tensors", k.tensors.len()) };
            lines.push(format!("  kept: {names} ({})", k.why));
        }
    }
    if meta.original_size > 0 {
        if let Some(q) = meta.quantized_size {
            lines.push(format!(
                "size: {q} of {} bytes ({:.1}%)",
                meta.original_size,
                100.0 * q as f64 / meta.original_size as f64
            ));
        }
    }
    if let Some(q) = &meta.quality {
        let mut parts = Vec::new();
        if let (Some(mean), Some(min)) = (q.mean_cosine, q.min_cosine) {
            parts.push(format!("cosine to the original mean {mean:.5}, worst {min:.5} ({} texts)", q.sequences));
        }
        if let (Some(mean), Some(max)) = (q.mean_score_diff, q.max_score_diff) {
            parts.push(format!("score difference mean {mean:.2e}, largest {max:.2e} ({} pairs)", q.sequences));
        }
        parts.push(format!(
            "ranking agreement recall@10 {:.3}, nDCG@10 {:.3} ({} queries x {} documents)",
            q.recall_at_10, q.ndcg_at_10, q.queries, q.documents
        ));
        lines.push(format!("quality: {}", parts.join("; ")));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(Spec::parse_bits("4bit"), Ok(4));
        assert_eq!(Spec::parse_bits("8"), Ok(8));
        assert!(Spec::parse_bits("3bit").is_err());
        assert!(Spec::new(4, 48).is_err());
        assert_eq!(Spec::new(8, 64).unwrap().variant_name("m"), "m-8bit");
    }

    #[test]
    fn worker_errors_are_one_line_without_store_paths() {
        let store = Store::new("/home/u/.mlx-serve/models".into());
        let stderr = "Error: cannot read /home/u/.mlx-serve/models/m/model.safetensors: bad header\n\nStack backtrace:\n   0: anyhow::error\n      at /rust/src/x.rs:1\n";
        assert_eq!(worker_error(stderr, &store, None), "cannot read <models>/m/model.safetensors: bad header");
        let full = "Error: writing\n\nCaused by:\n    No space left on device (os error 28)\n";
        assert!(worker_error(full, &store, None).contains("disk holding the model store is full"));
        // MLX's own write error, which gives no reason.
        let mlx = "Error: writing /home/u/.mlx-serve/models/x/model.safetensors\n\nCaused by:\n    \"[write] Unable to write 21832091 bytes to file. at io.cpp:135\"\n";
        let msg = worker_error(mlx, &store, Some(4096));
        assert!(
            msg.contains("disk holding the model store is full or over quota") && msg.contains("4.00 KiB free"),
            "{msg}"
        );
    }
}
