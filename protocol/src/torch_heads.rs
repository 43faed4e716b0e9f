//! Task heads that a model's authors ship beside its safetensors as `torch.save` files,
//! and where the store keeps them once converted: the one list both binaries read.
//!
//! BAAI/bge-m3 ships its lexical and multi-vector heads as `sparse_linear.pt` and
//! `colbert_linear.pt` (each a `torch.nn.Linear` `state_dict`: `weight`, `bias`), loaded by
//! FlagEmbedding's `BGEM3FlagModel`. `pull` reads their tensors without running pickle
//! code and stores them as `heads/<stem>.safetensors`: inside a folder, because every
//! top-level `*.safetensors` is model weights (`model_files::weight_files`).

use std::path::{Path, PathBuf};

/// The `.pt` files `pull` converts; any other pickle stays refused.
pub const TORCH_HEADS: &[&str] = &["sparse_linear.pt", "colbert_linear.pt"];

/// The folder of a stored model that holds converted heads.
pub const HEADS_DIR: &str = "heads";

/// True for a repo path (relative to the repo root) that is one of [`TORCH_HEADS`].
pub fn is_torch_head(path: &str) -> bool {
    TORCH_HEADS.contains(&path)
}

/// Where the converted `<stem>.pt` lives inside the model folder, relative to it.
pub fn converted(pt: &str) -> String {
    format!("{HEADS_DIR}/{}.safetensors", pt.trim_end_matches(".pt"))
}

/// The converted head `stem` (`sparse_linear`, `colbert_linear`) of the model in `dir`, if
/// the store has it.
pub fn head_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    let p = dir.join(HEADS_DIR).join(format!("{stem}.safetensors"));
    p.is_file().then_some(p)
}
