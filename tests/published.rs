//! The published JSON files of the models people run (tests/fixtures/published/<owner>/<repo>,
//! sources in its README.md), each given its verdict by the real `mlx-serve-worker check`:
//! it loads as the family, output dimension, token limit and pooling its files describe, or
//! it is refused naming the field. The refused ones are also pulled from the fake hub: the
//! pull fails naming that field, before any weight is downloaded (docs/models.md,
//! "Architectures", lists them).

use std::path::{Path, PathBuf};

use mlx_serve_tests::fake_hub::{error_line, folder_files, FakeHub};
use mlx_serve_tests::fixtures;
use mlx_serve_tests::worker_process::worker_bin;
use serde_json::Value;

enum Verdict {
    /// `check` accepts it: family, kind, output dimension (0 for a reranker), max tokens,
    /// pooling.
    Ok(&'static str, &'static str, u64, u64, &'static str),
    /// `check` refuses it with a reason naming `field`; `fixture` (tests/fixtures/models)
    /// lends the tokenizer and weight files the fake hub lists beside the published JSON.
    Refused { field: &'static str, fixture: &'static str },
}
use Verdict::{Ok, Refused};

/// Repo → verdict. Each value of an accepted row comes from the repo's files: the family
/// from `model_type`, the dimension from the Pooling / Dense configs, max tokens from
/// sentence_bert_config.json's `max_seq_length` (else the position table, capped at 8192),
/// pooling from 1_Pooling/config.json (a reranker's from its `*ForSequenceClassification`).
const PUBLISHED: &[(&str, Verdict)] = &[
    // nomic_bert. `rotary_scaling_factor: null` turns the custom code's dynamic NTK off, so
    // 8192 tokens are plain RoPE, as computed.
    ("nomic-ai/nomic-embed-text-v1", Ok("nomic_bert", "embedding", 768, 8192, "mean")),
    ("nomic-ai/nomic-embed-text-v1.5", Ok("nomic_bert", "embedding", 768, 8192, "mean")),
    ("Snowflake/snowflake-arctic-embed-m-long", Ok("nomic_bert", "embedding", 768, 2048, "cls")),
    // Mixture-of-experts blocks (worker/src/models/nomic_moe.rs); max_seq_length 512.
    ("nomic-ai/nomic-embed-text-v2-moe", Ok("nomic_bert", "embedding", 768, 512, "mean")),
    // gemma3_text
    ("google/embeddinggemma-300m", Ok("gemma3_text", "embedding", 768, 2048, "mean")),
    // max_seq_length 32768, capped at 8192 (DEFAULT_MAX_TOKENS_CAP).
    ("microsoft/harrier-oss-v1-270m", Ok("gemma3_text", "embedding", 640, 8192, "last_token")),
    // modernbert
    ("Alibaba-NLP/gte-modernbert-base", Ok("modernbert", "embedding", 768, 8192, "cls")),
    ("ibm-granite/granite-embedding-english-r2", Ok("modernbert", "embedding", 768, 8192, "cls")),
    ("Alibaba-NLP/gte-reranker-modernbert-base", Ok("modernbert", "reranker", 0, 8192, "cross_encoder")),
    // new (Alibaba GTE; new-impl's custom code is reimplemented, its fixed NTK RoPE included:
    // `rope_scaling: {type: ntk, factor: F}`, base × F, angles × F^(-2/head_dim) at every length;
    // tests/families.rs `new_ntk_*` checks it).
    ("Alibaba-NLP/gte-multilingual-base", Ok("new", "embedding", 768, 8192, "cls")),
    ("Alibaba-NLP/gte-base-en-v1.5", Ok("new", "embedding", 768, 8192, "cls")),
    ("Alibaba-NLP/gte-large-en-v1.5", Ok("new", "embedding", 1024, 8192, "cls")),
    // Its config.json was not found; written with gte-multilingual-base's encoder fields.
    ("Alibaba-NLP/gte-multilingual-reranker-base", Ok("new", "reranker", 0, 8192, "cross_encoder")),
    // mpnet, distilbert
    ("sentence-transformers/all-mpnet-base-v2", Ok("mpnet", "embedding", 768, 384, "mean")),
    ("sentence-transformers/multi-qa-mpnet-base-dot-v1", Ok("mpnet", "embedding", 768, 512, "cls")),
    ("sentence-transformers/msmarco-distilbert-base-v4", Ok("distilbert", "embedding", 768, 512, "mean")),
    ("sentence-transformers/multi-qa-distilbert-cos-v1", Ok("distilbert", "embedding", 768, 512, "mean")),
    // qwen2. FINDING: gte-Qwen2-instruct's config.json maps AutoModel to its own
    // modeling_qwen.Qwen2Model, which mlx-serve does not reimplement, so the repo behind the
    // `gte-qwen2` alias is refused as custom code (tests/fixtures/published/README.md).
    ("Alibaba-NLP/gte-Qwen2-1.5B-instruct", Refused { field: "auto_map", fixture: "tiny-qwen2-embed" }),
    // jina: custom code. v2's auto_map names JinaBERT (ALiBi); v3's modules.json starts with
    // its own `custom_st.Transformer` (LoRA adapters per task; its auto_map is custom too).
    ("jinaai/jina-embeddings-v2-base-en", Refused { field: "auto_map", fixture: "tiny-bert-embed" }),
    ("jinaai/jina-embeddings-v3", Refused { field: "custom_st.Transformer", fixture: "tiny-xlmr-embed" }),
    // The Ollama library's names (supervisor/src/store/aliases.rs).
    ("mixedbread-ai/mxbai-embed-large-v1", Ok("bert", "embedding", 1024, 512, "cls")),
    ("sentence-transformers/all-MiniLM-L6-v2", Ok("bert", "embedding", 384, 256, "mean")),
    ("sentence-transformers/all-MiniLM-L12-v2", Ok("bert", "embedding", 384, 128, "mean")),
    ("Snowflake/snowflake-arctic-embed-xs", Ok("bert", "embedding", 384, 512, "cls")),
    ("Snowflake/snowflake-arctic-embed-s", Ok("bert", "embedding", 384, 512, "cls")),
    ("Snowflake/snowflake-arctic-embed-m", Ok("bert", "embedding", 768, 512, "cls")),
    ("Snowflake/snowflake-arctic-embed-l", Ok("bert", "embedding", 1024, 512, "cls")),
    ("Snowflake/snowflake-arctic-embed-l-v2.0", Ok("xlm_roberta", "embedding", 1024, 8192, "cls")),
    ("BAAI/bge-m3", Ok("xlm_roberta", "embedding", 1024, 8192, "cls")),
    ("BAAI/bge-large-en-v1.5", Ok("bert", "embedding", 1024, 512, "cls")),
    ("ibm-granite/granite-embedding-30m-english", Ok("xlm_roberta", "embedding", 384, 512, "cls")),
    ("ibm-granite/granite-embedding-278m-multilingual", Ok("xlm_roberta", "embedding", 768, 512, "cls")),
    ("sentence-transformers/paraphrase-multilingual-mpnet-base-v2", Ok("xlm_roberta", "embedding", 768, 128, "mean")),
];

fn published_root() -> PathBuf {
    fixtures::repo_root().join("tests/fixtures/published")
}

/// `mlx-serve-worker check --model DIR`: its one JSON line.
fn check(dir: &Path) -> Value {
    let out = std::process::Command::new(worker_bin()).arg("check").arg("--model").arg(dir).output().unwrap();
    assert!(out.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{}: {e}: {:?}", dir.display(), out.stdout))
}

#[test]
fn the_table_covers_every_published_folder() {
    let mut folders = Vec::new();
    for owner in std::fs::read_dir(published_root()).unwrap().flatten().filter(|e| e.path().is_dir()) {
        for repo in std::fs::read_dir(owner.path()).unwrap().flatten() {
            assert!(repo.path().join("config.json").is_file(), "{}: no config.json", repo.path().display());
            folders.push(format!("{}/{}", owner.file_name().to_string_lossy(), repo.file_name().to_string_lossy()));
        }
    }
    folders.sort();
    let mut rows: Vec<String> = PUBLISHED.iter().map(|(repo, _)| repo.to_string()).collect();
    rows.sort();
    assert_eq!(folders, rows);
}

#[test]
fn every_published_config_loads_as_its_files_say_or_is_refused_by_field() {
    let mut wrong = Vec::new();
    for (repo, verdict) in PUBLISHED {
        let got = check(&published_root().join(repo));
        let ok = got["ok"].as_bool();
        match verdict {
            Ok(family, kind, dim, max_tokens, pooling) => {
                let facts = (
                    got["family"].as_str(),
                    got["kind"].as_str(),
                    got["output_dim"].as_u64(),
                    got["max_tokens"].as_u64(),
                    got["pooling"].as_str(),
                );
                if ok != Some(true)
                    || facts != (Some(*family), Some(*kind), Some(*dim), Some(*max_tokens), Some(*pooling))
                {
                    wrong.push(format!("{repo}: want ok {family} {kind} {dim} {max_tokens} {pooling}, got {got}"));
                }
            }
            Refused { field, .. } => {
                let reason = got["reason"].as_str().unwrap_or("");
                if ok != Some(false) || !reason.contains(field) {
                    wrong.push(format!("{repo}: want refused naming {field}, got {got}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A refused repo on the fake hub: its published JSON files over a tiny fixture's tokenizer
/// and weights (so the pull has everything it would download), and the sha256 of those
/// weights, to tell a weight download in the hub's log.
fn hub_files(repo: &str, fixture: &str) -> (Vec<(String, Vec<u8>)>, String) {
    let published = folder_files(&published_root().join(repo));
    let mut files: Vec<(String, Vec<u8>)> = folder_files(&fixtures::model_dir(fixture))
        .into_iter()
        .filter(|(path, _)| {
            path.starts_with("tokenizer") || path == "special_tokens_map.json" || path.ends_with(".safetensors")
        })
        .collect();
    let weights = files.iter().find(|f| f.0 == "model.safetensors").expect("fixture weights");
    let sha =
        ring::digest::digest(&ring::digest::SHA256, &weights.1).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    files.extend(published);
    (files, sha)
}

#[test]
fn refused_published_configs_are_refused_at_pull_before_any_weight() {
    let hub = FakeHub::start();
    let refused: Vec<(&str, &str, &str)> = PUBLISHED
        .iter()
        .filter_map(|(repo, v)| match v {
            Refused { field, fixture } => Some((*repo, *field, *fixture)),
            Ok(..) => None,
        })
        .collect();
    assert!(!refused.is_empty());
    let mut shas = Vec::new();
    for (repo, _, fixture) in &refused {
        let (files, sha) = hub_files(repo, fixture);
        hub.add_repo(repo, files);
        shas.push(sha);
    }
    let home = tempfile::tempdir().unwrap();
    for ((repo, field, _), sha) in refused.iter().zip(&shas) {
        let out = hub.mlx_serve(home.path(), &["pull", repo], &[]);
        let line = error_line(&out);
        assert!(line.contains(field), "{repo}: {line}");
        // The small files were read (the verdict came from them) ...
        let requests = hub.requests();
        assert!(
            requests.iter().any(|r| r.contains(&format!("{repo}/resolve/")) && r.contains("config.json")),
            "{repo}: {requests:?}"
        );
        // ... and no weight was: neither by name on the hub nor by hash on its CDN (a
        // one-byte range probe is how hf-hub reads the size).
        let weights = format!("{repo}/resolve/main/model.safetensors");
        let fetched: Vec<&String> = requests
            .iter()
            .filter(|r| (r.contains(&weights) || r.contains(sha.as_str())) && !r.ends_with("bytes=0-0"))
            .collect();
        assert!(fetched.is_empty(), "{repo}: weights were downloaded: {fetched:?}");
        eprintln!("{repo}: {line}");
    }
    // Nothing was installed.
    let store = home.path().join("models");
    let installed: Vec<_> =
        std::fs::read_dir(&store).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(installed.iter().all(|n| n.to_string_lossy().starts_with('.')), "{installed:?}");
}
