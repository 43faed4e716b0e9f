//! Which files of a repo or folder make a model we can run: the small files below, the
//! safetensors weights, and sentence-transformers module folders. Pickle weights are never
//! fetched (which files are pickle: `mlx_serve_protocol::model_files`, the rules both
//! binaries share), and a repo that has nothing else is refused with a message that says
//! how to convert it. The one exception are task heads shipped as `torch.save` files
//! (`mlx_serve_protocol::torch_heads`): fetched, and converted by `torch_heads.rs`.

use mlx_serve_protocol::{model_files, torch_heads};

use crate::store::{validate_name, StoreError};

/// Small files a model folder may need, besides `*.safetensors`.
const WANTED_FILES: &[&str] = &[
    "config.json",
    model_files::SHARD_INDEX,
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
    // A Stanford-format ColBERT checkpoint's settings (`mlx_serve_protocol::stanford_colbert`).
    mlx_serve_protocol::stanford_colbert::METADATA,
    "router_config.json",
];

/// Files a sentence-transformers `Router`'s module folder may hold besides its config and
/// weights: a `SparseStaticEmbedding` keeps its own tokenizer there (protocol `st_router.rs`).
const ROUTER_MODULE_FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt"];

/// Whether a repo file (path relative to the repo root) is one we fetch: the files above,
/// top-level safetensors, and the config and weights of sentence-transformers module
/// folders (`1_Pooling/config.json`, `2_Dense/model.safetensors`).
pub fn wanted(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.iter().any(|p| validate_name(p).is_err()) {
        return false;
    }
    match parts.as_slice() {
        [file] => WANTED_FILES.contains(file) || file.ends_with(".safetensors") || torch_heads::is_torch_head(file),
        [dir, file] => {
            let module_dir = dir
                .split_once('_')
                .is_some_and(|(n, rest)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty());
            // A Router's module folder: `<route>_<n>_<Class>` (`query_0_SparseStaticEmbedding`).
            let p: Vec<&str> = dir.splitn(3, '_').collect();
            let route_dir = p.len() == 3
                && !p[0].is_empty()
                && p[0].bytes().all(|b| b.is_ascii_lowercase())
                && !p[1].is_empty()
                && p[1].bytes().all(|b| b.is_ascii_digit())
                && !p[2].is_empty();
            ((module_dir || route_dir) && (*file == "config.json" || file.ends_with(".safetensors")))
                || (route_dir && ROUTER_MODULE_FILES.contains(file))
        }
        _ => false,
    }
}

/// Pickle weights (`model_files::is_pickle`) at the top of the repo: what a repo without
/// safetensors usually has instead.
fn is_top_level_pickle(path: &str) -> bool {
    !path.contains('/') && model_files::is_pickle(path)
}

/// Picks the files to fetch, refusing repos without safetensors weights.
pub fn select(source: &str, files: &[String]) -> Result<Vec<String>, StoreError> {
    if !files.iter().any(|f| f == "config.json") {
        return Err(StoreError::Refused(format!(
            "{source} has no config.json: it is not a model in Hugging Face layout"
        )));
    }
    if !files.iter().any(|f| !f.contains('/') && f.ends_with(".safetensors")) {
        let pickles: Vec<&str> = files.iter().map(String::as_str).filter(|f| is_top_level_pickle(f)).collect();
        return Err(StoreError::Refused(if pickles.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_needed_files_are_fetched() {
        for yes in [
            "config.json",
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "1_Pooling/config.json",
            "2_Dense/model.safetensors",
            "vocab.txt",
            "sparse_linear.pt",
            "colbert_linear.pt",
            "artifact.metadata",
            "router_config.json",
            "query_0_SparseStaticEmbedding/config.json",
            "query_0_SparseStaticEmbedding/model.safetensors",
            "query_0_SparseStaticEmbedding/tokenizer.json",
            "query_0_SparseStaticEmbedding/tokenizer_config.json",
            "document_1_SpladePooling/config.json",
        ] {
            assert!(wanted(yes), "{yes}");
        }
        for no in [
            "pytorch_model.bin",
            "other_linear.pt",
            "1_Pooling/sparse_linear.pt",
            "1_Pooling/tokenizer.json",
            "query_0_SparseStaticEmbedding/pytorch_model.bin",
            "onnx/model.onnx",
            "onnx/model.safetensors",
            "README.md",
            "../config.json",
            "1_Pooling/../../x",
            "a/b/c.json",
            ".gitattributes",
        ] {
            assert!(!wanted(no), "{no}");
        }
    }

    #[test]
    fn pickle_only_repos_are_refused() {
        let files = vec!["config.json".to_string(), "pytorch_model.bin".into(), "tokenizer.json".into()];
        let StoreError::Refused(message) = select("acme/old", &files).unwrap_err() else { panic!("not refused") };
        assert!(message.contains("only pickle weights (pytorch_model.bin)"), "{message}");
        let files = vec!["config.json".to_string(), "model.safetensors".into(), "pytorch_model.bin".into()];
        assert_eq!(select("acme/new", &files).unwrap(), vec!["config.json".to_string(), "model.safetensors".into()]);
    }
}
