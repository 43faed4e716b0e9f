//! bge-m3's lexical (sparse) and multi-vector (ColBERT) heads on the final states of its
//! XLM-RoBERTa backbone, as FlagEmbedding's `BGEM3FlagModel` computes them
//! (FlagEmbedding 1.3, `inference/embedder/encoder_only/m3.py`):
//!
//! - sparse: `relu(sparse_linear(h))`, one weight per token; per sequence the largest
//!   weight of each token id, leaving out the ids of the cls/eos/pad/unk tokens and
//!   weights that are not > 0 (`_process_token_weights`).
//! - ColBERT: `colbert_linear(h)` on every token after the first (CLS), L2-normalized
//!   (`_dense_embedding` of `colbert_vecs`, `_process_colbert_vecs`).
//!
//! The dense output is the sentence-transformers pipeline (CLS + Normalize) and is not this
//! file's business. The heads are `heads/sparse_linear.safetensors` and
//! `heads/colbert_linear.safetensors`, converted at pull from the `.pt` files the model
//! ships (`mlx_serve_protocol::torch_heads`).

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use mlx_rs::{Array, Dtype};
use mlx_serve_protocol::model_dir::ModelFacts;
use mlx_serve_protocol::torch_heads;
use mlx_serve_protocol::TokenOutputs;
use serde_json::Value;

use crate::layers::Linear;
use crate::packing::Packing;
use crate::pooling::l2_normalize;

/// The extra heads of one model.
pub struct M3Heads {
    sparse: Option<Linear>,
    colbert: Option<Linear>,
    /// Output width of the ColBERT projection.
    colbert_dim: i32,
    /// Token ids whose weights the sparse output leaves out.
    unused: HashSet<u32>,
}

/// `prefix.weight` `[out, hidden]` and `prefix.bias` `[out]` of a converted head file, cast
/// to `compute`.
fn linear(path: &Path, hidden: i32, compute: Dtype) -> Result<(Linear, i32)> {
    let shown = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let mut t = Array::load_safetensors(path).map_err(|e| anyhow::anyhow!("cannot load {shown}: {e}"))?;
    let w = t.remove("weight").with_context(|| format!("{shown} has no `weight`"))?;
    if w.ndim() != 2 || w.dim(1) != hidden {
        bail!("{shown}: weight has shape {:?}, expected [out, {hidden}] for this model's hidden size", w.shape());
    }
    let out = w.dim(0);
    let bias = match t.remove("bias") {
        Some(b) if b.shape() != [out] => bail!("{shown}: bias has shape {:?}, expected [{out}]", b.shape()),
        Some(b) => Some(b.as_dtype(compute)?),
        None => None,
    };
    if let Some(extra) = t.keys().next() {
        bail!("{shown} has a tensor {extra:?} that a linear layer does not");
    }
    Ok((Linear::Dense { w_t: w.as_dtype(compute)?.t(), bias }, out))
}

/// A token's content in special_tokens_map.json: a string, or an object with `content`.
fn token_content(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("content").and_then(Value::as_str))
}

/// Ids of the cls/eos/pad/unk tokens (special_tokens_map.json, or tokenizer_config.json where
/// transformers 5 keeps them and writes no map → tokenizer.json's `added_tokens`), the ones
/// `_process_token_weights` leaves out.
fn unused_ids(dir: &Path) -> Result<HashSet<u32>> {
    let read = |name: &str| -> Result<Value> {
        let text = std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {name}"))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {name}"))
    };
    let optional = |name: &str| -> Result<Value> {
        if dir.join(name).is_file() {
            read(name)
        } else {
            Ok(Value::Null)
        }
    };
    let (map, config) = (optional("special_tokens_map.json")?, optional("tokenizer_config.json")?);
    let tokenizer = read("tokenizer.json")?;
    let added = tokenizer["added_tokens"].as_array().cloned().unwrap_or_default();
    let vocab = &tokenizer["model"]["vocab"];
    let mut ids = HashSet::new();
    for key in ["cls_token", "eos_token", "pad_token", "unk_token"] {
        let Some(content) = map.get(key).or_else(|| config.get(key)).and_then(token_content) else { continue };
        let id = added
            .iter()
            .find(|t| t["content"].as_str() == Some(content))
            .and_then(|t| t["id"].as_u64())
            .or_else(|| vocab.get(content).and_then(Value::as_u64))
            // A Unigram vocabulary is a list of [piece, score].
            .or_else(|| {
                vocab
                    .as_array()?
                    .iter()
                    .position(|p| p.get(0).and_then(Value::as_str) == Some(content))
                    .map(|i| i as u64)
            });
        match id {
            Some(id) => ids.insert(id as u32),
            None => bail!("the tokenizer's {key} is {content:?}, which tokenizer.json does not have"),
        };
    }
    Ok(ids)
}

impl M3Heads {
    /// The converted heads of the model in `dir`, if it has any. Only an XLM-RoBERTa
    /// embedding model carries them (bge-m3).
    pub fn load(facts: &ModelFacts, dir: &Path, hidden: i32, compute: Dtype) -> Result<Option<M3Heads>> {
        let sparse_file = torch_heads::head_file(dir, "sparse_linear");
        let colbert_file = torch_heads::head_file(dir, "colbert_linear");
        if sparse_file.is_none() && colbert_file.is_none() {
            return Ok(None);
        }
        if facts.family.as_str() != "xlm_roberta" {
            bail!(
                "the {} heads are bge-m3's; this model's family is {}",
                torch_heads::HEADS_DIR,
                facts.family.as_str()
            );
        }
        let sparse = match sparse_file {
            Some(p) => {
                let (l, out) = linear(&p, hidden, compute)?;
                if out != 1 {
                    bail!("sparse_linear has {out} outputs; bge-m3's has one weight per token");
                }
                Some(l)
            }
            None => None,
        };
        let (colbert, colbert_dim) = match colbert_file {
            Some(p) => {
                let (l, out) = linear(&p, hidden, compute)?;
                (Some(l), out)
            }
            None => (None, 0),
        };
        Ok(Some(M3Heads { sparse, colbert, colbert_dim, unused: unused_ids(dir)? }))
    }

    /// What these heads can add to an embedding.
    pub fn outputs(&self) -> TokenOutputs {
        TokenOutputs { sparse: self.sparse.is_some(), colbert: self.colbert.is_some() }
    }

    pub fn colbert_dim(&self) -> i32 {
        self.colbert_dim
    }

    /// `relu(sparse_linear(h))`: one float32 weight per token, `[total]`.
    pub fn token_weights(&self, hidden: &Array) -> Result<Option<Array>> {
        let Some(l) = &self.sparse else { return Ok(None) };
        let w = mlx_rs::nn::relu(&l.forward(hidden)?)?;
        Ok(Some(w.reshape(&[-1])?.as_dtype(Dtype::Float32)?))
    }

    /// Normalized `colbert_linear(h)` of every token but each sequence's first, float32
    /// `[total - batch, colbert_dim]`, sequence after sequence.
    pub fn colbert(&self, hidden: &Array, packing: &Packing) -> Result<Option<Array>> {
        let Some(l) = &self.colbert else { return Ok(None) };
        let rows: Vec<i32> = (0..packing.len()).flat_map(|i| packing.offsets[i] + 1..packing.offsets[i + 1]).collect();
        if rows.is_empty() {
            return Ok(Some(Array::zeros::<f32>(&[0, self.colbert_dim])?));
        }
        let picked = hidden.take_axis(Array::from_slice(&rows, &[rows.len() as i32]), 0)?;
        Ok(Some(l2_normalize(&l.forward(&picked)?.as_dtype(Dtype::Float32)?)?))
    }

    /// Per sequence, the largest weight of each token id, ascending by id, without the
    /// unused ids and weights that are not > 0.
    pub fn lexical(&self, tokens: &[u32], offsets: &[u32], weights: &[f32]) -> Vec<Vec<(u32, f32)>> {
        offsets
            .windows(2)
            .map(|w| {
                let (s, e) = (w[0] as usize, w[1] as usize);
                let mut best = std::collections::BTreeMap::<u32, f32>::new();
                for (&id, &x) in tokens[s..e].iter().zip(&weights[s..e]) {
                    if x > 0.0 && !self.unused.contains(&id) {
                        let slot = best.entry(id).or_insert(0.0);
                        if x > *slot {
                            *slot = x;
                        }
                    }
                }
                best.into_iter().collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers 5 writes no special_tokens_map.json: the tokens come from
    /// tokenizer_config.json then; a map, where there is one, names them first.
    #[test]
    fn unused_ids_come_from_the_map_or_the_tokenizer_config() {
        let dir = std::env::temp_dir().join(format!("mlx-serve-bge-m3-unused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vocab = serde_json::json!({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4});
        let tokenizer = serde_json::json!({"added_tokens": [], "model": {"vocab": vocab}});
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        let config = serde_json::json!({"cls_token": "[CLS]", "pad_token": {"content": "[PAD]"}, "unk_token": "[UNK]"});
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        assert_eq!(unused_ids(&dir).unwrap(), HashSet::from([0, 1, 2]));
        let map = serde_json::json!({"cls_token": "[CLS]", "eos_token": "[SEP]"});
        std::fs::write(dir.join("special_tokens_map.json"), map.to_string()).unwrap();
        assert_eq!(unused_ids(&dir).unwrap(), HashSet::from([0, 1, 2, 3]));
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "[BOS]"}"#).unwrap();
        std::fs::remove_file(dir.join("special_tokens_map.json")).unwrap();
        let err = unused_ids(&dir).unwrap_err().to_string();
        assert!(err.contains("eos_token") && err.contains("[BOS]"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
